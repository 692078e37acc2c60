//! Evaluation: the `eval` stage's library. In: per-crop logits from the model (plain `f32`
//! rows or a candle `Tensor`), with each sample's id and label. Out: per-sample probabilities
//! ([`Predictions`]), their ensemble over runs, top-1/top-5 overall and per class
//! ([`EvalMetrics`]), a terminal table, and the files of a run's eval folder
//! ([`write_outputs`]): `predictions.tsv`, `probabilities.bin`, `metrics.json`,
//! `per_class.tsv`, `confusion.png`.
//!
//! Split over the ranks of a data-parallel run, [`evaluate_sharded`] scores each sample once,
//! on one rank, and sums the ranks' hits.
//!
//! A sample's probabilities are the mean over its crops of the softmax of each crop's logits
//! (Caffe's multi-crop testing averages probabilities, not logits); an ensemble is the mean
//! of its members' probabilities.
//!
//! Ranking is deterministic: classes are ordered by probability, highest first, and equal
//! probabilities by class index, lowest first (numpy's `argsort(-p, kind="stable")`). A sample
//! is top-k correct when its label is among the first k of that order, so a tie at the k-th
//! place never counts twice.

mod confusion;
mod files;
mod metrics;
mod predictions;
mod sharded;

use std::path::PathBuf;

pub use confusion::{confusion_png_size, write_confusion_png, ConfusionMatrix};
pub use files::{
    load_predictions, write_outputs, METRICS_FILE, PROBABILITIES_FILE, PROBABILITIES_MAGIC,
};
pub use metrics::{metrics, render_table, ClassHits, ClassMetrics, EvalMetrics};
pub use predictions::{ensemble, evaluate, Evaluation, Predictions};
pub use sharded::evaluate_sharded;

/// Everything that can go wrong while evaluating, each naming what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "logits: {found} values do not make whole samples of {crops} crop(s) × {classes} classes"
    )]
    LogitsShape {
        found: usize,
        crops: usize,
        classes: usize,
    },
    #[error("logits tensor has shape {found:?}, expected [images, {classes}]")]
    TensorShape { found: Vec<usize>, classes: usize },
    #[error("{field}: {found} entries for {images} images ({samples} samples): expected one per image or one per sample")]
    PerSampleLength {
        field: &'static str,
        found: usize,
        images: usize,
        samples: usize,
    },
    #[error("image {image} of the batch: {field} is {found} but the sample's first crop has {expected}: a sample's crops must be consecutive")]
    CropsDisagree {
        image: usize,
        field: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("sample {id}: label {label} is out of range for {classes} classes")]
    LabelOutOfRange { id: u64, label: u32, classes: usize },
    #[error("sample {id}, crop {crop}, class {class}: logit is {value} (not finite)")]
    NonFiniteLogit {
        id: u64,
        crop: usize,
        class: usize,
        value: f32,
    },
    #[error("sample {id} appears twice in the evaluated split")]
    DuplicateId { id: u64 },
    #[error("ensemble of no runs")]
    EmptyEnsemble,
    #[error("ensemble member {member}: {found} classes, member 0 has {expected}")]
    EnsembleClasses {
        member: usize,
        expected: usize,
        found: usize,
    },
    #[error("ensemble member {member}: {detail} (every member must predict the same samples)")]
    EnsembleIds { member: usize, detail: String },
    #[error("ensemble member {member}: sample {id} has label {found}, member 0 says {expected}")]
    EnsembleLabels {
        member: usize,
        id: u64,
        expected: u32,
        found: u32,
    },
    #[error("no samples to evaluate")]
    NoSamples,
    #[error("{found} class names for {expected} classes")]
    ClassNames { expected: usize, found: usize },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {field}: {detail}", path.display())]
    Format {
        path: PathBuf,
        field: &'static str,
        detail: String,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: drawing the confusion matrix: {detail}", path.display())]
    Plot { path: PathBuf, detail: String },
    #[error("logits tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("batch {batch}: {source}")]
    Predict {
        batch: usize,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("rank {rank}: its share of the samples: {source}")]
    Rank {
        rank: usize,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the ranks scored {found} samples of {expected}: each must be scored exactly once")]
    ShardCoverage { expected: usize, found: u64 },
    #[error("{samples} samples: the ranks sum their counts as f32, exact below 2^24")]
    TooManyToShard { samples: usize },
    #[error("collective: {0}")]
    Collective(#[from] crate::runtime::RuntimeError),
}

impl EvalError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EvalError {
        let path = path.into();
        move |source| EvalError::Io { path, source }
    }
}
