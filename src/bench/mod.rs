//! Benchmarks behind `runner bench …`: each prints its throughput next to a reference measured in the same run.

pub mod cores;
pub mod ingest;
pub mod lda;
pub mod loader;
pub mod ops;
pub mod train;

use crate::recipe::params::StoreEncoding;

/// How the benchmark tables name a store encoding.
fn encoding_name(encoding: StoreEncoding) -> String {
    match encoding {
        StoreEncoding::Raw => "raw".to_string(),
        StoreEncoding::Jpeg { quality } => format!("jpeg q{quality}"),
    }
}
