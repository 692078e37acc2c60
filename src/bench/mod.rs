//! The measurements behind `runner bench …`. In: a plain settings struct per benchmark (the
//! `runner` binary turns its command line into one). Out: timings, throughput and sizes per
//! configuration. The binary holds the rest of each benchmark: its arguments, the reference
//! implementations it runs in Python (`../shared/bench`, `scripts/bench`: PIL + lmdb, gensim,
//! PyTorch), and the tables it prints. Measurements that name a core count are pinned to
//! those cores ([`cores`]).

pub mod cores;
pub mod ingest;
pub mod lda;
pub mod loader;
pub mod ops;
pub mod scale;
pub mod train;

use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::lda::LdaError;
use crate::loader::LoaderError;
use crate::score::ScoreError;
use crate::store::{IngestError, StoreError};
use crate::train::TrainError;

/// Why a measurement could not be taken, with the library error underneath.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: cannot pin to {cores} core(s): this process may use {available}")]
    Cores { cores: usize, available: usize },
    #[error("bench: {call}: {source}")]
    Affinity {
        call: &'static str,
        source: std::io::Error,
    },
    #[error("bench: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bench: {path}: {detail}")]
    Encode { path: PathBuf, detail: String },
    #[error("bench: {0}")]
    NoNoiseMetrics(String),
    #[error("bench scale: {0}")]
    Scale(String),
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Lda(#[from] LdaError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("bench: {0}")]
    Candle(#[from] candle_core::Error),
}

impl BenchError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.into();
        |source| BenchError::Io { path, source }
    }
}

/// A fresh folder under the system temp dir; the caller removes it.
pub fn temp_dir(prefix: &str) -> Result<PathBuf, BenchError> {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{unique}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(BenchError::io(&dir))?;
    Ok(dir)
}
