//! mesh-cloudinit (being written).
