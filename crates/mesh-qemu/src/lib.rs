//! mesh-qemu (being written).
