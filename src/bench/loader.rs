//! `runner bench loader`: training batches per second from a store (random crop + mirror,
//! shuffled), with 1 and 2 worker threads, from raw and JPEG stores. The stores are ingested
//! from a WebVision-layout dataset first (not timed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::loader::{train_batches, LoaderConfig};
use crate::recipe::params::{SamplerKind, StoreEncoding};
use crate::sample::Split;
use crate::store::{ingest_with, IngestOptions, Store};

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
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
}

pub fn run(args: &LoaderBenchArgs) -> anyhow::Result<()> {
    println!(
        "loader bench: {} batches of {} ({}px crops + mirror, shuffled) from {}px squashed stores of {}",
        args.batches,
        args.batch,
        args.crop,
        args.size,
        args.root.display()
    );
    println!(
        "{:<12} {:>8} {:>10} {:>12} {:>14}",
        "store", "workers", "img/s", "MB/s out", "img/s/worker"
    );
    for encoding in [
        StoreEncoding::Raw,
        StoreEncoding::Jpeg {
            quality: args.quality,
        },
    ] {
        let stage = super::ingest::tempfile_dir("websieve-bench-loader")?;
        let store = Arc::new(build_store(args, encoding, &stage)?);
        let samples: Vec<(u64, u32)> = {
            let reader = store.reader()?;
            (0..store.len(Split::Train))
                .map(|id| Ok((id, reader.meta(Split::Train, id)?.label)))
                .collect::<anyhow::Result<_>>()?
        };
        let name = match encoding {
            StoreEncoding::Raw => "raw".to_string(),
            StoreEncoding::Jpeg { quality } => format!("jpeg q{quality}"),
        };
        for &workers in &args.workers {
            let cfg = LoaderConfig {
                batch_size: args.batch,
                crop: args.crop,
                mirror: true,
                mean_rgb: [123.0, 117.0, 104.0],
                sampler: SamplerKind::Shuffle,
                workers,
                seed: 1,
            };
            let mut loader = train_batches(store.clone(), samples.clone(), None, &cfg, 0)?;
            let warm = loader.next().expect("endless")?;
            loader.recycle(warm);
            let start = Instant::now();
            for _ in 0..args.batches {
                let batch = loader.next().expect("endless")?;
                loader.recycle(batch);
            }
            let seconds = start.elapsed().as_secs_f64();
            let images = (args.batches * args.batch) as f64;
            let out_bytes = images * 3.0 * f64::from(args.crop * args.crop) * 4.0;
            println!(
                "{:<12} {:>8} {:>10.0} {:>12.0} {:>14.0}",
                name,
                workers,
                images / seconds,
                out_bytes / seconds / 1e6,
                images / seconds / workers as f64
            );
        }
        drop(store);
        std::fs::remove_dir_all(&stage)?;
    }
    Ok(())
}

fn build_store(
    args: &LoaderBenchArgs,
    encoding: StoreEncoding,
    stage: &std::path::Path,
) -> anyhow::Result<Store> {
    let params = super::ingest::webvision_params(&args.root, args.size, encoding);
    ingest_with(&params, stage, &IngestOptions::default())?;
    Ok(Store::open(stage)?)
}
