//! The training stage's errors: every way a run stops, each naming the step, sample or file.

use std::path::PathBuf;

use super::checkpoint::CheckpointError;
use super::optim::OptimError;
use crate::eval::EvalError;
use crate::model::ModelError;
use crate::runtime::RuntimeError;

/// A batch stream's own error, whatever its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("train: {0}")]
    Optim(#[from] OptimError),
    #[error("train: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("train: {0}")]
    Collective(#[from] RuntimeError),
    #[error("train: step {step}: a batch of {rows} rows cannot be split over {world_size} ranks")]
    ShardTooSmall {
        step: u64,
        rows: usize,
        world_size: usize,
    },
    #[error("train: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("train: loader failed at step {step}: {source}")]
    Loader { step: u64, source: BoxError },
    #[error("train: the batch stream ended at step {step} of {iterations}")]
    StreamEnded { step: u64, iterations: u64 },
    #[error("train: step {step}: sample {id} has label {label}, but there are {classes} classes")]
    LabelOutOfRange {
        step: u64,
        id: u64,
        label: u32,
        classes: usize,
    },
    #[error("train: step {step}: sample {id} has no λ (soft-label weight)")]
    MissingLambda { step: u64, id: u64 },
    #[error("train: step {step}: sample {id} has no topic vector")]
    MissingTopics { step: u64, id: u64 },
    #[error(
        "train: step {step}: sample {id} has a topic vector of length {found}, expected {expected}"
    )]
    TopicLength {
        step: u64,
        id: u64,
        found: usize,
        expected: usize,
    },
    #[error("train: step {step}: batch shape {found:?} does not match pixels ({pixels} values) or the model's {input_size} px input")]
    BatchShape {
        step: u64,
        found: [usize; 4],
        pixels: usize,
        input_size: usize,
    },
    #[error(
        "train: diverged: {0}; lower train.optimizer.lr or set train.on_divergence to rollback"
    )]
    Diverged(String),
    #[error("train: diverged again after {rollbacks} rollbacks (train.on_divergence.max_rollbacks): {cause}")]
    TooManyRollbacks { rollbacks: u32, cause: String },
    #[error(
        "train: {checkpoint} is from an earlier run in this folder; resume it, or remove the \
         folder's checkpoints to start over"
    )]
    ExistingRun { checkpoint: PathBuf },
    #[error(
        "train: train.eval_every = {every} epochs, but the run trains {epochs:.2} epochs: no \
         epoch would be evaluated on the holdout"
    )]
    NoHoldoutEpoch { every: u64, epochs: f64 },
    #[error("train: step {step}: evaluating on the holdout: {source}")]
    Holdout { step: u64, source: Box<EvalError> },
}
