//! Loader throughput: training batches (random crop + mirror, shuffled) from a store into f32
//! or bf16 batches, pinned to N cores with one worker per core (the consuming thread shares
//! the cores, see [`super::cores`]). In: a WebVision-layout dataset, ingested first into a
//! temporary store (not timed), and the batch settings. Out: seconds per run of batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::cores::on_cores;
use super::BenchError;
use crate::loader::{train_batches, LoaderConfig};
use crate::recipe::params::{Precision, SamplerKind, StoreEncoding};
use crate::sample::Split;
use crate::store::{ingest_with, IngestOptions, Store};

/// What each timed run of batches looks like.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub batch: usize,
    pub crop: u32,
    /// Batches timed (after one warm-up batch).
    pub batches: usize,
}

/// A store ingested for the benchmark into a temporary folder, removed when dropped.
pub struct BenchStore {
    store: Arc<Store>,
    samples: Vec<(u64, u32)>,
    dir: PathBuf,
}

impl BenchStore {
    /// The training list of the WebVision dataset at `root`, squashed to `size`, stored as
    /// `encoding`.
    pub fn ingest(root: &Path, size: u32, encoding: StoreEncoding) -> Result<Self, BenchError> {
        let dir = super::temp_dir("websieve-bench-loader")?;
        let params = super::ingest::webvision_params(root, size, encoding);
        ingest_with(&params, &dir, &IngestOptions::default())?;
        let store = Arc::new(Store::open(&dir)?);
        let samples = {
            let reader = store.reader()?;
            (0..store.len(Split::Train))
                .map(|id| Ok((id, reader.meta(Split::Train, id)?.label)))
                .collect::<Result<_, BenchError>>()?
        };
        Ok(Self {
            store,
            samples,
            dir,
        })
    }

    /// Seconds to take `settings.batches` batches of `precision` (after a warm-up one,
    /// recycling each) with `cores` workers, pinned to `cores` cores.
    pub fn time_batches(
        &self,
        settings: BatchSettings,
        precision: Precision,
        cores: usize,
    ) -> Result<f64, BenchError> {
        let cfg = LoaderConfig {
            batch_size: settings.batch,
            crop: settings.crop,
            mirror: true,
            mean_rgb: [123.0, 117.0, 104.0],
            sampler: SamplerKind::Shuffle,
            workers: cores,
            seed: 1,
            precision,
        };
        on_cores(cores, || {
            let mut loader =
                train_batches(self.store.clone(), self.samples.clone(), None, &cfg, 0)?;
            let warm = loader.next().expect("endless")?;
            loader.recycle(warm);
            let start = Instant::now();
            for _ in 0..settings.batches {
                let batch = loader.next().expect("endless")?;
                loader.recycle(batch);
            }
            Ok(start.elapsed().as_secs_f64())
        })
    }
}

impl Drop for BenchStore {
    fn drop(&mut self) {
        // Best effort: a leftover temporary folder is no reason to fail a measurement.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
