//! STUB: being written.
fn main() {}
