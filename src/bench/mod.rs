//! Benchmarks behind `runner bench …`: each prints its throughput next to a reference measured in the same run.

pub mod cores;
pub mod ingest;
pub mod lda;
pub mod loader;
pub mod ops;
pub mod train;
