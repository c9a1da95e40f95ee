//! The `mesh` command line.
fn main() {}
