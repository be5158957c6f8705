//! The chatlake command line: wires the registry together and runs pipelines.
pub fn main() {}
