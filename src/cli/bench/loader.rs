//! `runner bench loader`: training batches per second from a store (random crop + mirror,
//! shuffled) into f32 and bf16 batches, from raw and JPEG stores, pinned to 1 and 2 cores (one
//! worker per core; the consuming thread shares the cores, see
//! [`websieve::bench::cores`]). The stores are ingested from a WebVision-layout dataset first
//! (not timed).

use std::path::PathBuf;

use websieve::bench::cores;
use websieve::bench::loader::{BatchSettings, BenchStore};
use websieve::recipe::params::{Precision, StoreEncoding};

use super::encoding_name;

#[derive(Debug, clap::Args)]
pub struct LoaderBenchArgs {
    /// WebVision-layout dataset to ingest into the benchmark stores.
    #[arg(long, default_value = "../shared/data/imagenette-web")]
    pub root: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    #[arg(long, default_value_t = 224)]
    pub crop: u32,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Batches timed per configuration (after one warm-up batch).
    #[arg(long, default_value_t = 40)]
    pub batches: usize,
    /// Core counts to measure (one worker per core).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub cores: Vec<usize>,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
}

pub(super) fn run(args: &LoaderBenchArgs) -> anyhow::Result<()> {
    cores::check(&args.cores)?;
    println!(
        "loader bench: {} batches of {} ({}px crops + mirror, shuffled) from {}px squashed stores of {}",
        args.batches,
        args.batch,
        args.crop,
        args.size,
        args.root.display()
    );
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>10} {:>14}",
        "store", "batch", "cores", "img/s", "MB/s out", "img/s per core"
    );
    let settings = BatchSettings {
        batch: args.batch,
        crop: args.crop,
        batches: args.batches,
    };
    for encoding in [
        StoreEncoding::Raw,
        StoreEncoding::Jpeg {
            quality: args.quality,
        },
    ] {
        let store = BenchStore::ingest(&args.root, args.size, encoding)?;
        let name = encoding_name(encoding);
        for precision in [Precision::F32, Precision::Bf16] {
            for &cores in &args.cores {
                let seconds = store.time_batches(settings, precision, cores)?;
                let images = (args.batches * args.batch) as f64;
                let bytes_per_value = match precision {
                    Precision::F32 | Precision::Tf32 => 4.0,
                    Precision::Bf16 => 2.0,
                };
                let out_bytes = images * 3.0 * f64::from(args.crop * args.crop) * bytes_per_value;
                println!(
                    "{:<10} {:>6} {:>6} {:>10.0} {:>10.0} {:>14.0}",
                    name,
                    format!("{precision:?}").to_lowercase(),
                    cores,
                    images / seconds,
                    out_bytes / seconds / 1e6,
                    images / seconds / cores as f64
                );
            }
        }
    }
    Ok(())
}
