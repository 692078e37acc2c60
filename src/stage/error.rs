//! Errors of planning and running stages, typed end to end: a stage's failure keeps the error
//! type of the module that failed. Each message carries its cause inline (no `source()`), so
//! `runner` prints every cause once.

use std::path::PathBuf;

use super::cache::CacheError;
use super::kind::StageKind;
use crate::eval::EvalError;
use crate::lda::LdaError;
use crate::loader::LoaderError;
use crate::runtime::RuntimeError;
use crate::score::ScoreError;
use crate::store::{IngestError, StoreError};
use crate::train::TrainError;

/// Errors of running a recipe's stages.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage `{stage}` of run {run}: {failure}")]
    Failed {
        stage: StageKind,
        run: String,
        failure: Box<StageFailure>,
    },
    #[error("run {run}: train.init = {init:?} names no finished run or checkpoint file (looked for {})", looked.display())]
    MissingInit {
        run: String,
        init: String,
        looked: PathBuf,
    },
    #[error("run folder {}: {cause}", path.display())]
    RunFolder {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("run folder {} is in use by another runner ({holder}); wait for it to finish, or give this run another name or --runs folder", path.display())]
    RunFolderBusy { path: PathBuf, holder: String },
    #[error("run {run}: {}", problems.join("; "))]
    Preflight { run: String, problems: Vec<String> },
    #[error("run {run}, rank {rank}: rank 0 could not build the stages before training; its error is on its output and in the run folder's status.json")]
    RankZeroFailed { run: String, rank: usize },
    #[error("runs {} wait for one another (train.init, eval.ensemble): none of them can go first", runs.join(", "))]
    WaitCycle { runs: Vec<String> },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Why a stage failed: the error of the module that did the work.
#[derive(Debug, thiserror::Error)]
pub enum StageFailure {
    #[error("{0}")]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error("{0}")]
    Ingest(#[from] IngestError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lda(#[from] LdaError),
    #[error("{0}")]
    Score(#[from] ScoreError),
    #[error("{0}")]
    Probe(#[from] crate::probe::ProbeError),
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("{0}")]
    Eval(#[from] EvalError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {cause}", path.display())]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("the store {} has no validation samples (dataset.val = false?)", store.display())]
    NoValidationSamples { store: PathBuf },
    #[error("the model has no classification head to evaluate")]
    NoClassificationHead,
    #[error("eval.ensemble names run {member:?}, which has not been evaluated ({} is missing)", looked.display())]
    EnsembleMember { member: String, looked: PathBuf },
    #[error("the stage finished without writing {}", path.display())]
    MissingOutput { path: PathBuf },
    #[error(
        "no training sample has page text (the lda stage found no word in {}), so every text \
         score is the same and {} would act on ties: train on the labels as given \
         (clean.rule = \"none\", labels.mode = \"hard\", sampler \"shuffle\", no regression head)",
        lda.display(), settings.join(", ")
    )]
    NoText {
        lda: PathBuf,
        settings: Vec<&'static str>,
    },
}

impl StageFailure {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StageFailure + '_ {
        move |cause| StageFailure::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}
