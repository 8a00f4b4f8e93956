//! The `/init` binary: all logic lives in the library.
fn main() {}
