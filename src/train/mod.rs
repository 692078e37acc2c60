//! Training: losses, SGD with momentum and weight decay, schedules, checkpoints and resume: the `train` stage. In: batches, labels, λ, topic vectors, and the held-out samples' predictions. Out: checkpoints (the last and the best on the holdout) and metrics.
//!
//! [`train`] runs the loop: for each batch the network's 3 heads (main, after 4a, after 4d)
//! give a loss per task (λ-weighted softmax cross-entropy, sigmoid cross-entropy on the topic
//! vector), summed with head weights (1, aux₀, aux₁) × task weights; the lr comes from the
//! schedule; SGD updates the weights. It writes `metrics.jsonl`, a checkpoint every
//! `checkpoint_every` steps and at the end, and guards against divergence. A resumed run
//! (from the newest intact checkpoint: damaged ones are skipped) replays the interrupted one
//! bit for bit on CPU: the batch stream restarts at the next batch and dropout masks come
//! from an RNG derived from (seed, step).
//!
//! This file sets a run up (resume, `init`, the first checkpoint); the rest lives in
//! `error` (the stage's errors), `loss` (the loss terms and [`loss::step_loss`], their
//! weighted total), `step` (one step, [`train_step`], which `runner bench train` times too),
//! `run` (the loop: targets, divergence policy, checkpoints, the holdout's evaluation),
//! `holdout` (which samples are held out, which epochs are evaluated), `metrics`
//! (`metrics.jsonl`), `optim`, `schedule` and `checkpoint`.
//!
//! With a holdout (`train.holdout`), the end of every `eval_every`-th epoch evaluates top-1
//! and top-5 on it (an `"event": "holdout"` line in `metrics.jsonl`), and the first epoch with
//! the highest top-1 is kept in `best.safetensors` beside the last checkpoint; the best so far
//! is part of the checkpointed state, so a resumed run chooses as the straight one does.

pub mod checkpoint;
mod error;
pub mod holdout;
pub mod loss;
mod metrics;
pub mod optim;
mod run;
pub mod schedule;
mod step;
mod update;

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::eval::Predictions;
use crate::model::GoogLeNet;
use crate::recipe::params::{ModelParams, Precision, TrainLength, TrainParams};
use crate::runtime::{Collective, SingleProcess};
use crate::sample::Batch;
pub use checkpoint::{BestEpoch, BEST_CHECKPOINT};
use checkpoint::{TrainState, MODEL_PREFIX};
pub use error::{BoxError, TrainError};
pub use loss::{step_loss, StepLoss, Targets};
pub use metrics::STEP_METRICS_FILE;
use optim::{DivergenceGuard, Sgd};
use run::{run_steps, Trainer};
pub use step::{train_step, StepInput, StepOutcome};

/// A loss above this multiple of its running mean counts as a spike (divergence).
pub const SPIKE_FACTOR: f64 = 5.0;

/// Batches in order, starting at the batch index the factory was asked for.
pub type BatchStream<'a> = Box<dyn Iterator<Item = Result<Batch, BoxError>> + 'a>;

/// λ and topic vector of each sample, looked up by sample id (`Batch::ids`).
pub struct SampleTargets<'a> {
    /// Loss weight of a sample: its λ for soft labels, 1 for hard labels.
    pub lambda: &'a dyn Fn(u64) -> Option<f32>,
    /// The sample's topic vector; only asked for when the model has regression heads.
    pub topics: &'a dyn Fn(u64) -> Option<Vec<f32>>,
}

/// What one training run needs besides batches and targets.
pub struct TrainJob<'a> {
    pub model: &'a ModelParams,
    pub train: &'a TrainParams,
    pub num_classes: usize,
    /// Length of the topic vector (0 without regression heads).
    pub topics: usize,
    /// Total updates of the run; see [`iterations`] for epoch-based lengths.
    pub iterations: u64,
    /// The run folder: checkpoints and `metrics.jsonl` go here.
    pub out_dir: &'a Path,
    /// Weights to start from (`train.init` resolved to a checkpoint file); ignored on resume.
    pub init: Option<&'a Path>,
    /// Continue from the newest checkpoint in `out_dir` if there is one.
    pub resume: bool,
    /// Stop after this step (with a checkpoint) although `iterations` is larger, as an
    /// interruption would: the schedule still spans `iterations`.
    pub stop_after: Option<u64>,
    pub progress: bool,
    /// Samples held out of training to compare epochs on (`train.holdout`).
    pub holdout: Option<HoldoutJob<'a>>,
}

/// Evaluation on the holdout during training: at the end of each epoch of `epoch_ends`, every
/// rank predicts its share of `ids` (see [`crate::eval::evaluate_sharded`]); rank 0 logs the
/// top-1/top-5 in `metrics.jsonl` and keeps the best epoch's weights in [`BEST_CHECKPOINT`].
pub struct HoldoutJob<'a> {
    /// The held-out samples, the same list on every rank.
    pub ids: &'a [u64],
    /// Step → the epoch it ends, for the epochs evaluated ([`holdout::epoch_ends`]).
    pub epoch_ends: std::collections::BTreeMap<u64, u64>,
    /// The network's predictions of some of `ids` (this rank's share).
    pub predict: HoldoutPredict<'a>,
}

/// The network's predictions of the held-out samples with these ids.
pub type HoldoutPredict<'a> = &'a dyn Fn(&GoogLeNet, &[u64]) -> Result<Predictions, BoxError>;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_checkpoint: PathBuf,
    pub last_loss: f64,
    pub rollbacks: u32,
    /// The best epoch on the holdout, its weights in `out_dir`'s [`BEST_CHECKPOINT`].
    pub best: Option<BestEpoch>,
}

/// Updates a run of `length` takes with `train_samples` samples and batches of `batch`.
pub fn iterations(length: TrainLength, train_samples: u64, batch: usize) -> u64 {
    match length {
        TrainLength::Iterations(n) => n,
        TrainLength::Epochs(e) => (e * train_samples).div_ceil(batch.max(1) as u64),
    }
}

/// Builds the network of `model` and loads the weights of `checkpoint` for evaluation.
pub fn load_for_eval(
    checkpoint: &Path,
    model: &ModelParams,
    num_classes: usize,
    topics: usize,
    device: &Device,
) -> Result<GoogLeNet, TrainError> {
    let net = GoogLeNet::new(model, num_classes, topics, 0, device)?;
    let loaded = checkpoint::load(checkpoint, device)?;
    net.load(&loaded.group(MODEL_PREFIX))?;
    Ok(net)
}

/// TensorFloat-32 for f32 matrix products and convolutions on CUDA (no effect on the CPU).
pub fn set_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
    crate::model::conv::set_tf32(on);
}

/// Trains the network of `job.model` on the batches `batches(k)` streams from batch k on.
/// Returns when `job.iterations` (or `job.stop_after`) steps are done, with a final
/// checkpoint in `job.out_dir`. A single process: [`train_distributed`] with
/// [`SingleProcess`].
pub fn train<'b>(
    job: &TrainJob,
    batches: &mut dyn FnMut(u64) -> Result<BatchStream<'b>, BoxError>,
    targets: &SampleTargets,
    device: &Device,
) -> Result<TrainSummary, TrainError> {
    train_distributed(job, batches, targets, device, &mut SingleProcess).map(|(summary, _)| summary)
}

/// Data-parallel [`train`]: this process is rank `collective.rank()` of
/// `collective.world_size()`. Returns the summary and the trained network.
///
/// - Sharding: `batches(k)` yields the GLOBAL batch k (what one process would train on), the
///   same on every rank; rank r trains on its rows of it, [`crate::runtime::shard_rows`]:
///   `n / W` rows each, the first `n mod W` ranks one more. A batch needs at least `W` rows.
/// - Scaling: each loss is a mean over its rows, so a rank scales its loss and loss terms by
///   `n_rank / n_global` before the backward pass; the sum over ranks is the global mean.
/// - One `all_reduce_sum` per step of one flat f32 bucket: the gradients in the order of
///   `net.vars()`, flattened, then the loss and its terms. The update, clipping, the
///   non-finite check and the divergence guard all see the reduced values, so every rank
///   decides the same and the weights stay bitwise equal across ranks (the collectives
///   hand every rank the same bits). Every rank starts from the same weights (same seed, or
///   the same `init`/resume checkpoint).
/// - Dropout: masks follow the global row ([`GoogLeNet::forward_train_rows`]), so each rank
///   draws exactly the masks one process draws for its rows, and an N-way run computes the
///   1-way run's gradients up to f32 summation order.
/// - Only rank 0 writes checkpoints and metrics; every rank reads the same checkpoint on
///   resume and rollback. With one rank nothing is reduced: the path is [`train`]'s as before.
pub fn train_distributed<'b>(
    job: &TrainJob,
    batches: &mut dyn FnMut(u64) -> Result<BatchStream<'b>, BoxError>,
    targets: &SampleTargets,
    device: &Device,
    collective: &mut dyn Collective,
) -> Result<(TrainSummary, GoogLeNet), TrainError> {
    let (rank, world_size) = (collective.rank(), collective.world_size());
    set_tf32(job.train.precision == Precision::Tf32);
    if rank == 0 {
        fs::create_dir_all(job.out_dir).map_err(|source| TrainError::Io {
            path: job.out_dir.to_path_buf(),
            source,
        })?;
    }
    let net = GoogLeNet::new(
        job.model,
        job.num_classes,
        job.topics,
        job.train.seed,
        device,
    )?;
    let sgd = Sgd::new(net.vars().to_vec(), &job.train.optimizer)?;
    let mut trainer = Trainer {
        job,
        targets,
        device,
        net,
        sgd,
        guard: DivergenceGuard::new(SPIKE_FACTOR),
        state: TrainState {
            step: 0,
            seed: job.train.seed,
            lr_scale: 1.0,
            rollbacks: 0,
            best: None,
        },
        metrics_path: job.out_dir.join(STEP_METRICS_FILE),
        checkpoint: None,
        rank,
        world_size,
    };
    // Rank 0 made the folder; another rank may look before it exists.
    let latest = || match job.out_dir.exists() {
        true => checkpoint::latest(job.out_dir),
        false => Ok(None),
    };
    // The newest intact checkpoint: a damaged newer one (a torn copy, a full disk) is skipped.
    let resume_from = match job.resume && job.out_dir.exists() {
        true => checkpoint::load_latest(job.out_dir, device)?,
        false => None,
    };
    let existing = match resume_from {
        Some(_) => None,
        None => latest()?,
    };
    if world_size > 1 {
        // Every rank has looked at the folder before rank 0 writes its first checkpoint.
        barrier(collective, device)?;
    }
    if let Some((path, loaded)) = resume_from {
        trainer.restore(&loaded)?;
        trainer.checkpoint = Some(path.clone());
        trainer.truncate_metrics(trainer.state.step)?;
        tracing::info!(step = trainer.state.step, checkpoint = %path.display(), "resuming");
    } else {
        if let Some(found) = existing {
            return Err(TrainError::ExistingRun { checkpoint: found });
        }
        if let Some(init) = job.init {
            let loaded = checkpoint::load(init, device)?;
            let fresh = trainer.net.load_for_init(&loaded.group(MODEL_PREFIX))?;
            tracing::info!(checkpoint = %init.display(), "initialised weights");
            if !fresh.is_empty() {
                tracing::info!(
                    tensors = fresh.len(),
                    "regression heads the checkpoint lacks start from fresh weights"
                );
            }
        }
        trainer.truncate_metrics(0)?;
        // Step 0 is the rollback target until the first periodic checkpoint.
        trainer.save_checkpoint()?;
    }
    let end = job
        .stop_after
        .map_or(job.iterations, |s| s.min(job.iterations));
    let summary = run_steps(&mut trainer, batches, end, collective)?;
    Ok((summary, trainer.net))
}

/// Returns when every rank has called it: a one-value all-reduce.
fn barrier(collective: &mut dyn Collective, device: &Device) -> Result<(), TrainError> {
    collective.all_reduce_sum(&Tensor::zeros(1, DType::F32, device)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_up_to_whole_batches() {
        assert_eq!(iterations(TrainLength::Iterations(7), 100, 32), 7);
        assert_eq!(iterations(TrainLength::Epochs(2), 100, 32), 7);
        assert_eq!(iterations(TrainLength::Epochs(1), 64, 32), 2);
    }
}
