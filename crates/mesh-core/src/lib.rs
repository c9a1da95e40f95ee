//! mesh-core (being written).
