//! The training loop: batches in, one [`train_step`] per batch, metrics, checkpoints, and
//! the divergence policy (stop, or roll back to the newest checkpoint with a smaller lr), and
//! the evaluation on the holdout at the ends of epochs. In: a [`Trainer`] that
//! [`super::train_distributed`] set up, the batch stream factory. Out: the run's summary,
//! checkpoints (the best on the holdout too) and metrics lines in the run folder (rank 0
//! writes them).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::checkpoint::{
    self, BestEpoch, Checkpoint, TrainState, BEST_CHECKPOINT, MODEL_PREFIX, MOMENTUM_PREFIX,
};
use super::loss::Targets;
use super::optim::{DivergenceGuard, Sgd, SgdState};
use super::schedule::learning_rate;
use super::step::{shard, step_rng, train_step, StepInput};
use super::{metrics, BatchStream, BoxError, SampleTargets, TrainError, TrainJob, TrainSummary};
use crate::eval;
use crate::model::GoogLeNet;
use crate::recipe::params::OnDivergence;
use crate::runtime::Collective;
use crate::sample::Batch;

/// Checkpoints kept in the run folder (the newest is the rollback target).
const CHECKPOINTS_KEPT: usize = 2;

/// A run in progress: the network, the optimiser and the loop's state.
pub(super) struct Trainer<'a> {
    pub(super) job: &'a TrainJob<'a>,
    pub(super) targets: &'a SampleTargets<'a>,
    pub(super) device: &'a Device,
    pub(super) net: GoogLeNet,
    pub(super) sgd: Sgd,
    pub(super) guard: DivergenceGuard,
    pub(super) state: TrainState,
    pub(super) metrics_path: PathBuf,
    /// The newest checkpoint written or resumed from: the rollback target, and the final one.
    pub(super) checkpoint: Option<PathBuf>,
    /// This process's rank and the world size: only rank 0 writes to `job.out_dir`.
    pub(super) rank: usize,
    pub(super) world_size: usize,
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

    /// The network's tensors under their checkpoint names.
    fn model_tensors(&self) -> impl Iterator<Item = (String, &Tensor)> {
        self.net
            .named_tensors()
            .map(|(name, var)| (format!("{MODEL_PREFIX}{name}"), var.as_tensor()))
    }

    /// Writes the checkpoint of this step on rank 0; the other ranks only name its path.
    pub(super) fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        let path = checkpoint::path_for(self.job.out_dir, self.state.step);
        self.checkpoint = Some(path.clone());
        if self.rank != 0 {
            return Ok(());
        }
        let sgd = self.sgd.state();
        let model = self.model_tensors();
        let momentum = sgd
            .momentum
            .iter()
            .map(|(name, t)| (format!("{MOMENTUM_PREFIX}{name}"), t));
        checkpoint::save(&path, model.chain(momentum), &self.state)?;
        checkpoint::prune(self.job.out_dir, CHECKPOINTS_KEPT)?;
        Ok(())
    }

    /// Evaluates the holdout at the end of `epoch` on every rank; rank 0 logs it and, when
    /// it is the best so far, writes its weights to [`BEST_CHECKPOINT`]. Before the step's
    /// checkpoint, which then records it as the best so far.
    fn evaluate_holdout(
        &mut self,
        epoch: u64,
        collective: &mut dyn Collective,
    ) -> Result<(), TrainError> {
        let holdout = self.job.holdout.as_ref().expect("called with a holdout");
        let step = self.state.step;
        let net = &self.net;
        let hits = eval::evaluate_sharded(
            holdout.ids,
            self.job.num_classes,
            collective,
            self.device,
            |ids| (holdout.predict)(net, ids),
        )
        .map_err(|source| TrainError::Holdout {
            step,
            source: Box::new(source),
        })?;
        let (top1, top5) = (hits.top1(), hits.top5());
        // Ties keep the earlier epoch.
        let best = self.state.best.is_none_or(|b| top1 > b.top1);
        if best {
            self.state.best = Some(BestEpoch {
                epoch,
                step,
                top1,
                top5,
            });
            if self.rank == 0 {
                let path = self.job.out_dir.join(BEST_CHECKPOINT);
                checkpoint::save(&path, self.model_tensors(), &self.state)?;
            }
        }
        tracing::info!(epoch, top1, top5, best, "holdout");
        self.append_metrics(json!({
            "step": step, "event": "holdout", "epoch": epoch, "holdout_top1": top1,
            "holdout_top5": top5, "holdout_samples": hits.samples(), "best": best,
        }))
    }

    pub(super) fn restore(&mut self, loaded: &Checkpoint) -> Result<(), TrainError> {
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
        match self.rank {
            0 => metrics::append(&self.metrics_path, &line),
            _ => Ok(()),
        }
    }

    /// Keeps the metrics lines up to `step` on rank 0 (those a resumed run does not redo).
    pub(super) fn truncate_metrics(&self, step: u64) -> Result<(), TrainError> {
        match self.rank {
            0 => metrics::truncate(&self.metrics_path, step),
            _ => Ok(()),
        }
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
                // The best epoch's weights stay in their file: still the best evaluated.
                let best = self.state.best;
                self.restore(&checkpoint::load(&path, self.device)?)?;
                self.state.best = best;
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

/// Runs steps until step `end`; see [`super::train_distributed`].
pub(super) fn run_steps<'b>(
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
        let lr = learning_rate(
            &job.train.schedule,
            job.train.optimizer.lr,
            step,
            job.iterations,
        ) * trainer.state.lr_scale;
        let input = StepInput {
            images: &images,
            targets: &targets,
            rng: &step_rng(trainer.state.seed, step),
            first_row,
            global_rows: n,
            step,
            lr,
        };
        let (net, sgd, guard) = (&trainer.net, &mut trainer.sgd, &mut trainer.guard);
        let outcome = train_step(net, sgd, guard, job.model, &input, collective)?;
        let stats = match outcome.update {
            Ok(stats) => stats,
            Err(cause) => {
                trainer.on_divergence(cause)?;
                stream = open(trainer.state.step)?;
                continue;
            }
        };
        let total = outcome.loss;
        trainer.state.step += 1;
        last_loss = total;
        let mut losses = serde_json::Map::new();
        for (name, value) in &outcome.terms {
            losses.insert(name.clone(), json!(*value as f32));
        }
        let seconds = started.elapsed().as_secs_f64();
        trainer.append_metrics(json!({
            "step": trainer.state.step, "lr": lr, "loss": total, "losses": losses,
            "grad_norm": stats.grad_norm, "clipped": stats.clipped,
            "images_per_s": n as f64 / seconds, "images": trainer.state.step * n as u64,
        }))?;
        let step = trainer.state.step;
        if let Some(&epoch) = job.holdout.as_ref().and_then(|h| h.epoch_ends.get(&step)) {
            trainer.evaluate_holdout(epoch, collective)?;
        }
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
        best: trainer.state.best,
    })
}
