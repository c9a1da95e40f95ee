//! mesh-iso (being written).
