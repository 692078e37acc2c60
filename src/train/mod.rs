//! Training: losses, SGD with momentum and weight decay, schedules, checkpoints and resume: the `train` stage. In: batches, labels, λ, topic vectors. Out: checkpoints and metrics.
//!
//! [`train`] runs the loop: for each batch the network's 3 heads (main, after 4a, after 4d)
//! give a loss per task (λ-weighted softmax cross-entropy, sigmoid cross-entropy on the topic
//! vector), summed with head weights (1, aux₀, aux₁) × task weights; the lr comes from the
//! schedule; SGD updates the weights. It writes `metrics.jsonl`, a checkpoint every
//! `checkpoint_every` steps and at the end, and guards against divergence. A resumed run
//! (from the newest intact checkpoint: damaged ones are skipped) replays the interrupted one bit for bit on CPU: the batch stream restarts at the next
//! batch and dropout masks come from an RNG derived from (seed, step).

pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod schedule;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::model::{GoogLeNet, HeadOutput, ModelError, HEAD_NAMES};
use crate::recipe::params::{ModelParams, OnDivergence, Precision, TrainLength, TrainParams};
use crate::runtime::{Collective, RuntimeError, SingleProcess};
use crate::sample::{Batch, Pixels};
use checkpoint::{Checkpoint, CheckpointError, TrainState, MODEL_PREFIX, MOMENTUM_PREFIX};
use loss::{sigmoid_cross_entropy, weighted_softmax_cross_entropy};
use optim::{DivergenceGuard, OptimError, Sgd, SgdState};
use schedule::learning_rate;

/// A loss above this multiple of its running mean counts as a spike (divergence).
pub const SPIKE_FACTOR: f64 = 5.0;
/// Checkpoints kept in the run folder (the newest is the rollback target).
const CHECKPOINTS_KEPT: usize = 2;
/// The training stage's metrics, one JSON line per logged step.
pub const STEP_METRICS_FILE: &str = "metrics.jsonl";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Batches in order, starting at the batch index the factory was asked for.
pub type BatchStream<'a> = Box<dyn Iterator<Item = Result<Batch, BoxError>> + 'a>;

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
}

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
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_checkpoint: PathBuf,
    pub last_loss: f64,
    pub rollbacks: u32,
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

/// The dropout RNG of `step`: a ChaCha stream per step, so resume needs only (seed, step).
fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng
}

/// Losses of one step: the weighted total and each (head, task) term unweighted, named
/// `<head>/<task>` (e.g. `loss1/regression`).
pub struct StepLoss {
    pub total: Tensor,
    pub terms: Vec<(String, Tensor)>,
}

/// A batch's targets as tensors: labels `[n]` u32, λ `[n]` f32, topic vectors `[n, K]` f32.
pub struct Targets {
    pub labels: Tensor,
    pub lambdas: Tensor,
    pub topics: Option<Tensor>,
}

/// The training loss: per head and task, λ-weighted softmax cross-entropy or sigmoid
/// cross-entropy, summed with head weights (1, aux₀, aux₁) × task weights. The task weights
/// apply only when both tasks are on (one task alone weighs 1, so the lr keeps its meaning).
pub fn step_loss(
    model: &ModelParams,
    heads: &[HeadOutput; 3],
    targets: &Targets,
) -> Result<StepLoss, TrainError> {
    let [class_weight, topic_weight] = match (model.classification, model.regression) {
        (true, true) => model.task_weights,
        _ => [1.0, 1.0],
    };
    let [aux0, aux1] = model.aux_weights;
    let mut total: Option<Tensor> = None;
    let mut terms = Vec::new();
    let mut add = |name: String, term: Tensor, weight: f64| -> Result<(), TrainError> {
        let weighted = term.affine(weight, 0.0)?;
        total = Some(match total.take() {
            Some(sum) => (sum + weighted)?,
            None => weighted,
        });
        terms.push((name, term));
        Ok(())
    };
    // The loss in f32 whatever the activations' dtype (mixed precision).
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    for ((head, name), weight) in heads.iter().zip(HEAD_NAMES).zip([1.0, aux0, aux1]) {
        if let Some(logits) = &head.classes {
            let term =
                weighted_softmax_cross_entropy(&f32(logits)?, &targets.labels, &targets.lambdas)?;
            add(
                format!("{name}/classification"),
                term,
                weight * class_weight,
            )?;
        }
        if let (Some(logits), Some(topics)) = (&head.topics, &targets.topics) {
            let term = sigmoid_cross_entropy(&f32(logits)?, topics)?;
            add(format!("{name}/regression"), term, weight * topic_weight)?;
        }
    }
    Ok(StepLoss {
        total: total.expect("the model has at least one task"),
        terms,
    })
}

/// One step's forward and backward pass, before the update: the gradients, and the loss, its
/// terms and the gradients' squared norms, fetched from the device in a single copy (each
/// copy waits for the device to finish all queued work).
pub struct Computed {
    pub grads: candle_core::backprop::GradStore,
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    /// [`Sgd::gradient_squares`], fetched.
    pub squares: Vec<f64>,
}

/// The forward pass of `net` on `images` (dropout from `rng`), the loss and its backward pass.
pub fn forward_backward(
    net: &GoogLeNet,
    sgd: &Sgd,
    model: &ModelParams,
    images: &Tensor,
    targets: &Targets,
    rng: &ChaCha8Rng,
) -> Result<Computed, TrainError> {
    let (grads, loss) = scaled_backward(net, model, images, targets, rng, 0, None)?;
    let mut fetched = vec![loss.total.to_dtype(DType::F64)?.reshape(1)?];
    for (_, term) in &loss.terms {
        fetched.push(term.to_dtype(DType::F64)?.reshape(1)?);
    }
    fetched.extend(sgd.gradient_squares(&grads)?);
    computed(grads, loss, &fetched)
}

/// The forward pass on rows `first_row..` of the step's batch, the loss (and its terms)
/// multiplied by `scale` when given, and the backward pass of the scaled total.
fn scaled_backward(
    net: &GoogLeNet,
    model: &ModelParams,
    images: &Tensor,
    targets: &Targets,
    rng: &ChaCha8Rng,
    first_row: usize,
    scale: Option<f64>,
) -> Result<(candle_core::backprop::GradStore, StepLoss), TrainError> {
    let heads = net.forward_train_rows(images, rng, first_row)?;
    let mut loss = step_loss(model, &heads, targets)?;
    if let Some(scale) = scale {
        loss.total = loss.total.affine(scale, 0.0)?;
        for (_, term) in &mut loss.terms {
            *term = term.affine(scale, 0.0)?;
        }
    }
    let grads = loss.total.backward()?;
    Ok((grads, loss))
}

/// Fetches `parts` (the loss, one value per term, then the gradient squares) in one copy.
fn computed(
    grads: candle_core::backprop::GradStore,
    loss: StepLoss,
    parts: &[Tensor],
) -> Result<Computed, TrainError> {
    let fetched = Tensor::cat(parts, 0)?.to_vec1::<f64>()?;
    let (terms, squares) = fetched[1..].split_at(loss.terms.len());
    Ok(Computed {
        grads,
        loss: fetched[0],
        terms: loss
            .terms
            .into_iter()
            .map(|(name, _)| name)
            .zip(terms.iter().copied())
            .collect(),
        squares: squares.to_vec(),
    })
}

/// Rows `[r·n/W, (r+1)·n/W)` of a batch of `n` rows for rank `r` of `W`, rounded so that
/// the first `n mod W` ranks take one row more: `(start, len)`.
pub fn shard_rows(n: usize, rank: usize, world_size: usize) -> (usize, usize) {
    let (base, extra) = (n / world_size, n % world_size);
    (
        rank * base + rank.min(extra),
        base + usize::from(rank < extra),
    )
}

/// This rank's rows of the global `batch` (see [`shard_rows`]), with the index of the first;
/// the whole batch, untouched, for a single process.
fn shard(batch: Batch, rank: usize, world_size: usize) -> (usize, Batch) {
    if world_size == 1 {
        return (0, batch);
    }
    let [n, c, h, w] = batch.shape;
    let (start, len) = shard_rows(n, rank, world_size);
    let rows = start..start + len;
    let pixels = rows.start * c * h * w..rows.end * c * h * w;
    let shard = Batch {
        ids: batch.ids[rows.clone()].to_vec(),
        labels: batch.labels[rows].to_vec(),
        pixels: match batch.pixels {
            Pixels::F32(p) => Pixels::F32(p[pixels].to_vec()),
            Pixels::Bf16(p) => Pixels::Bf16(p[pixels].to_vec()),
        },
        shape: [len, c, h, w],
    };
    (start, shard)
}

/// One data-parallel step, after [`scaled_backward`] of this rank's shard with the loss
/// scaled by `n_rank / n_global`: ONE `all_reduce_sum` of a flat f32 bucket (every present
/// gradient, flattened in the order of `net.vars()`, then the loss and its terms), split back
/// into the gradient store. The squares come from the reduced gradients, so every rank clips
/// and checks the same values.
fn all_reduce_step(
    net: &GoogLeNet,
    sgd: &Sgd,
    (mut grads, loss): (candle_core::backprop::GradStore, StepLoss),
    collective: &mut dyn Collective,
) -> Result<Computed, TrainError> {
    let present: Vec<(&Tensor, Tensor)> = net
        .vars()
        .iter()
        .filter_map(|(_, var)| {
            grads
                .get(var.as_tensor())
                .map(|g| (var.as_tensor(), g.clone()))
        })
        .collect();
    let mut bucket = Vec::with_capacity(present.len() + 1 + loss.terms.len());
    for (_, grad) in &present {
        bucket.push(grad.to_dtype(DType::F32)?.flatten_all()?);
    }
    bucket.push(loss.total.to_dtype(DType::F32)?.reshape(1)?);
    for (_, term) in &loss.terms {
        bucket.push(term.to_dtype(DType::F32)?.reshape(1)?);
    }
    let summed = collective.all_reduce_sum(&Tensor::cat(&bucket, 0)?)?;
    let mut offset = 0;
    for (var, grad) in present {
        let len = grad.elem_count();
        let reduced = summed
            .narrow(0, offset, len)?
            .reshape(grad.shape())?
            .to_dtype(grad.dtype())?;
        grads.insert(var, reduced);
        offset += len;
    }
    let tail = summed.narrow(0, offset, 1 + loss.terms.len())?;
    let mut parts = vec![tail.to_dtype(DType::F64)?];
    parts.extend(sgd.gradient_squares(&grads)?);
    computed(grads, loss, &parts)
}

struct Trainer<'a> {
    job: &'a TrainJob<'a>,
    targets: &'a SampleTargets<'a>,
    device: &'a Device,
    net: GoogLeNet,
    sgd: Sgd,
    guard: DivergenceGuard,
    state: TrainState,
    metrics_path: PathBuf,
    /// The newest checkpoint written or resumed from: the rollback target, and the final one.
    checkpoint: Option<PathBuf>,
    /// This process's rank and the world size: only rank 0 writes to `job.out_dir`.
    rank: usize,
    world_size: usize,
}

impl<'a> Trainer<'a> {
    fn targets(&self, batch: &Batch) -> Result<Targets, TrainError> {
        let step = self.state.step;
        let classes = self.job.num_classes;
        let mut lambdas = Vec::with_capacity(batch.ids.len());
        for (&id, &label) in batch.ids.iter().zip(&batch.labels) {
            if self.job.model.classification && label as usize >= classes {
                return Err(TrainError::LabelOutOfRange {
                    step,
                    id,
                    label,
                    classes,
                });
            }
            lambdas.push((self.targets.lambda)(id).ok_or(TrainError::MissingLambda { step, id })?);
        }
        let n = batch.ids.len();
        let topics = if self.job.model.regression {
            let mut values = Vec::with_capacity(n * self.job.topics);
            for &id in &batch.ids {
                let vector =
                    (self.targets.topics)(id).ok_or(TrainError::MissingTopics { step, id })?;
                if vector.len() != self.job.topics {
                    return Err(TrainError::TopicLength {
                        step,
                        id,
                        found: vector.len(),
                        expected: self.job.topics,
                    });
                }
                values.extend(vector);
            }
            Some(Tensor::from_vec(values, (n, self.job.topics), self.device)?)
        } else {
            None
        };
        Ok(Targets {
            labels: Tensor::from_vec(batch.labels.clone(), n, self.device)?,
            lambdas: Tensor::from_vec(lambdas, n, self.device)?,
            topics,
        })
    }

    /// Writes the checkpoint of this step on rank 0; the other ranks only name its path.
    fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        let path = checkpoint::path_for(self.job.out_dir, self.state.step);
        self.checkpoint = Some(path.clone());
        if self.rank != 0 {
            return Ok(());
        }
        let model = self
            .net
            .named_tensors()
            .map(|(name, var)| (format!("{MODEL_PREFIX}{name}"), var.as_tensor()));
        let sgd = self.sgd.state();
        let momentum = sgd
            .momentum
            .iter()
            .map(|(name, t)| (format!("{MOMENTUM_PREFIX}{name}"), t));
        checkpoint::save(&path, model.chain(momentum), &self.state)?;
        checkpoint::prune(self.job.out_dir, CHECKPOINTS_KEPT)?;
        Ok(())
    }

    fn restore(&mut self, loaded: &Checkpoint) -> Result<(), TrainError> {
        self.net.load(&loaded.group(MODEL_PREFIX))?;
        self.sgd.load_state(&SgdState {
            step: loaded.state.step,
            momentum: loaded.group(MOMENTUM_PREFIX),
        })?;
        self.state = loaded.state;
        // The guard's running mean is not checkpointed: it starts afresh, as after a rollback.
        self.guard.reset();
        Ok(())
    }

    /// Appends `line` to the metrics on rank 0; the other ranks write nothing.
    fn append_metrics(&self, line: serde_json::Value) -> Result<(), TrainError> {
        if self.rank != 0 {
            return Ok(());
        }
        let io = |source| TrainError::Io {
            path: self.metrics_path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.metrics_path)
            .map_err(io)?;
        writeln!(file, "{line}").map_err(io)
    }

    /// Keeps the metrics lines up to `step` (those a resumed run does not redo).
    fn truncate_metrics(&self, step: u64) -> Result<(), TrainError> {
        if self.rank != 0 {
            return Ok(());
        }
        let io = |source| TrainError::Io {
            path: self.metrics_path.clone(),
            source,
        };
        let text = match fs::read_to_string(&self.metrics_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        fs::write(&self.metrics_path, kept).map_err(io)
    }

    /// Handles a divergence per `on_divergence`: an error, or the state of the newest
    /// checkpoint with the lr scaled down.
    fn on_divergence(&mut self, cause: String) -> Result<(), TrainError> {
        let step = self.state.step;
        match self.job.train.on_divergence {
            OnDivergence::Stop => Err(TrainError::Diverged(cause)),
            OnDivergence::Rollback {
                lr_factor,
                max_rollbacks,
            } => {
                let rollbacks = self.state.rollbacks + 1;
                if rollbacks > max_rollbacks {
                    return Err(TrainError::TooManyRollbacks {
                        rollbacks: self.state.rollbacks,
                        cause,
                    });
                }
                let lr_scale = self.state.lr_scale * lr_factor;
                let path = self
                    .checkpoint
                    .clone()
                    .expect("a checkpoint is written or resumed from before the first step");
                self.restore(&checkpoint::load(&path, self.device)?)?;
                self.state.lr_scale = lr_scale;
                self.state.rollbacks = rollbacks;
                tracing::warn!(cause, to_step = self.state.step, lr_scale, "rolled back");
                self.append_metrics(json!({
                    "step": self.state.step, "event": "rollback", "diverged_at": step,
                    "cause": cause, "lr_scale": lr_scale,
                }))
            }
        }
    }
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
///   same on every rank; rank r trains on its rows of it, [`shard_rows`]: `n / W` rows each,
///   the first `n mod W` ranks one more. A batch needs at least `W` rows.
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
            trainer.net.load(&loaded.group(MODEL_PREFIX))?;
            tracing::info!(checkpoint = %init.display(), "initialised weights");
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

fn run_steps<'b>(
    trainer: &mut Trainer,
    batches: &mut dyn FnMut(u64) -> Result<BatchStream<'b>, BoxError>,
    end: u64,
    collective: &mut dyn Collective,
) -> Result<TrainSummary, TrainError> {
    let job = trainer.job;
    let bar = match job.progress {
        true => crate::progress::bar(job.iterations, "train", "step"),
        false => indicatif::ProgressBar::hidden(),
    };
    let mut open = |step| batches(step).map_err(|source| TrainError::Loader { step, source });
    let mut stream = open(trainer.state.step)?;
    let mut last_loss = f64::NAN;
    while trainer.state.step < end {
        let step = trainer.state.step;
        bar.set_position(step);
        let started = Instant::now();
        let batch = match stream.next() {
            Some(batch) => batch.map_err(|source| TrainError::Loader { step, source })?,
            None => {
                return Err(TrainError::StreamEnded {
                    step,
                    iterations: job.iterations,
                })
            }
        };
        let input_size = trainer.net.input_size();
        let [n, c, h, w] = batch.shape;
        if c != 3 || h != input_size || w != input_size || batch.pixels.len() != n * c * h * w {
            return Err(TrainError::BatchShape {
                step,
                found: batch.shape,
                pixels: batch.pixels.len(),
                input_size,
            });
        }
        let world_size = trainer.world_size;
        if world_size > 1 && n < world_size {
            return Err(TrainError::ShardTooSmall {
                step,
                rows: n,
                world_size,
            });
        }
        let (first_row, batch) = shard(batch, trainer.rank, world_size);
        let targets = trainer.targets(&batch)?;
        let images = batch.images(trainer.device)?;
        let rng = &step_rng(trainer.state.seed, step);
        let (net, sgd, model) = (&trainer.net, &trainer.sgd, job.model);
        let computed = if world_size == 1 {
            forward_backward(net, sgd, model, &images, &targets, rng)?
        } else {
            let scale = batch.shape[0] as f64 / n as f64;
            let step = scaled_backward(net, model, &images, &targets, rng, first_row, Some(scale))?;
            all_reduce_step(net, sgd, step, collective)?
        };
        let total = computed.loss;
        let lr = learning_rate(
            &job.train.schedule,
            job.train.optimizer.lr,
            step,
            job.iterations,
        ) * trainer.state.lr_scale;
        let update = match trainer.guard.check(step, total) {
            Err(divergence) => Err(divergence.to_string()),
            Ok(()) => match trainer.sgd.apply(&computed.grads, lr, &computed.squares) {
                Ok(stats) => Ok(stats),
                Err(e @ OptimError::NonFiniteGradient { .. }) => Err(e.to_string()),
                Err(e) => return Err(e.into()),
            },
        };
        let stats = match update {
            Ok(stats) => stats,
            Err(cause) => {
                trainer.on_divergence(cause)?;
                stream = open(trainer.state.step)?;
                continue;
            }
        };
        trainer.state.step += 1;
        last_loss = total;
        let mut losses = serde_json::Map::new();
        for (name, value) in &computed.terms {
            losses.insert(name.clone(), json!(*value as f32));
        }
        let seconds = started.elapsed().as_secs_f64();
        trainer.append_metrics(json!({
            "step": trainer.state.step, "lr": lr, "loss": total, "losses": losses,
            "grad_norm": stats.grad_norm, "clipped": stats.clipped,
            "images_per_s": n as f64 / seconds,
        }))?;
        let step = trainer.state.step;
        if step.is_multiple_of(job.train.checkpoint_every.max(1)) || step == end {
            trainer.save_checkpoint()?;
        }
    }
    bar.finish_and_clear();
    // Written at the last step, or (a resumed, finished run) the one it resumed from.
    let final_checkpoint = trainer
        .checkpoint
        .clone()
        .expect("a checkpoint is written or resumed from before the first step");
    Ok(TrainSummary {
        steps: trainer.state.step,
        final_checkpoint,
        last_loss,
        rollbacks: trainer.state.rollbacks,
    })
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

    #[test]
    fn shards_cover_the_batch_the_first_ranks_taking_the_remainder() {
        let shards: Vec<_> = (0..4).map(|r| shard_rows(6, r, 4)).collect();
        assert_eq!(shards, [(0, 2), (2, 2), (4, 1), (5, 1)]);
        assert_eq!(shard_rows(8, 1, 2), (4, 4));
        assert_eq!(shard_rows(5, 0, 1), (0, 5));
    }

    #[test]
    fn step_rngs_differ_by_step_and_repeat_by_seed() {
        use rand::Rng;
        let draw = |seed, step| step_rng(seed, step).random::<u64>();
        assert_eq!(draw(1, 5), draw(1, 5));
        assert_ne!(draw(1, 5), draw(1, 6));
        assert_ne!(draw(1, 5), draw(2, 5));
    }
}
