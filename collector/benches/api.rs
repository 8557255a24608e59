//! The Kinesis API benchmark (being written).

fn main() {}
