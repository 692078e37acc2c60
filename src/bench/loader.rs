//! `runner bench loader`: training batches per second from a store (random crop + mirror,
//! shuffled) into f32 and bf16 batches, from raw and JPEG stores, pinned to 1 and 2 cores (one
//! worker per core; the consuming thread shares the cores, see [`super::cores`]). The stores
//! are ingested from a WebVision-layout dataset first (not timed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::cores::on_cores;
use crate::loader::{train_batches, LoaderConfig};
use crate::recipe::params::{Precision, SamplerKind, StoreEncoding};
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
    /// Core counts to measure (one worker per core).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub cores: Vec<usize>,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
}

pub fn run(args: &LoaderBenchArgs) -> anyhow::Result<()> {
    super::cores::check(&args.cores)?;
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
        let name = super::encoding_name(encoding);
        for precision in [Precision::F32, Precision::Bf16] {
            for &cores in &args.cores {
                let cfg = LoaderConfig {
                    batch_size: args.batch,
                    crop: args.crop,
                    mirror: true,
                    mean_rgb: [123.0, 117.0, 104.0],
                    sampler: SamplerKind::Shuffle,
                    workers: cores,
                    seed: 1,
                    precision,
                };
                let seconds =
                    on_cores(cores, || time_batches(&store, &samples, &cfg, args.batches))?;
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
        drop(store);
        std::fs::remove_dir_all(&stage)?;
    }
    Ok(())
}

/// Seconds to take `batches` batches (after a warm-up one), recycling each.
fn time_batches(
    store: &Arc<Store>,
    samples: &[(u64, u32)],
    cfg: &LoaderConfig,
    batches: usize,
) -> anyhow::Result<f64> {
    let mut loader = train_batches(store.clone(), samples.to_vec(), None, cfg, 0)?;
    let warm = loader.next().expect("endless")?;
    loader.recycle(warm);
    let start = Instant::now();
    for _ in 0..batches {
        let batch = loader.next().expect("endless")?;
        loader.recycle(batch);
    }
    Ok(start.elapsed().as_secs_f64())
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
