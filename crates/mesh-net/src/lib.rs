//! mesh-net (being written).
