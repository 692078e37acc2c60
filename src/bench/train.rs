//! Training throughput of GoogLeNet on random images: images/s of the trainer's own step
//! ([`crate::train::train_step`]: forward + backward + SGD update) split into its phases
//! (forward + backward, update), and of the eval forward pass, per precision and with or
//! without the topic-regression heads. In: the cases to measure, a device, warm-up and timed
//! steps. Out: seconds per phase, and the network's parameter count (to check that a reference
//! implementation measured beside it trains the same network).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::BenchError;
use crate::model::GoogLeNet;
use crate::recipe::params::{Arch, ModelParams, Precision, SgdParams};
use crate::recipe::Recipe;
use crate::runtime::{on_thread_ranks, shard_rows, Collective};
use crate::train::optim::{DivergenceGuard, Sgd};
use crate::train::{set_tf32, train_step, StepInput, Targets, TrainError, SPIKE_FACTOR};

/// Classes of the full network's classifier (ImageNet's).
pub const FULL_CLASSES: usize = 1000;
/// Classes of the small network's classifier: the experiments' (imagenette, 10 classes).
pub const SMALL_CLASSES: usize = 10;

/// One network, batch and precision to measure.
#[derive(Debug, Clone)]
pub struct TrainCase {
    pub name: &'static str,
    pub model: ModelParams,
    pub batch: usize,
    pub classes: usize,
    pub precision: Precision,
    /// Topic count of the regression heads; 0 for the 3-head classifier.
    pub topics: usize,
}

impl TrainCase {
    /// The published network: width 1, 224 px.
    pub fn is_full(&self) -> bool {
        self.model.width == 1.0 && self.model.input_size == 224
    }
}

/// Which cases [`cases`] lists.
#[derive(Debug, Clone)]
pub struct CaseSettings {
    pub arch: Arch,
    pub precisions: Vec<Precision>,
    /// Topic counts for the full network; 0 is the 3-head classifier.
    pub topics: Vec<usize>,
    /// Batch of the full network (width 1, 224 px).
    pub full_batch: usize,
    /// Batch of the small network (width 1/8, 64 px, [`SMALL_CLASSES`], no regression heads,
    /// as `recipes/imagenette/noisy.toml`); 0 skips it.
    pub small_batch: usize,
}

/// Per precision: the full network with each topic count, then the small one.
pub fn cases(settings: &CaseSettings) -> Vec<TrainCase> {
    let model = |width, input_size, topics| ModelParams {
        arch: settings.arch,
        regression: topics > 0,
        input_size,
        width,
        ..Recipe::default().model
    };
    let mut cases = Vec::new();
    for &precision in &settings.precisions {
        for &topics in settings.topics.iter().filter(|_| settings.full_batch > 0) {
            cases.push(TrainCase {
                name: "width 1, 224 px",
                model: model(1.0, 224, topics),
                batch: settings.full_batch,
                classes: FULL_CLASSES,
                precision,
                topics,
            });
        }
        if settings.small_batch > 0 {
            cases.push(TrainCase {
                name: "width 1/8, 64 px",
                model: model(0.125, 64, 0),
                batch: settings.small_batch,
                classes: SMALL_CLASSES,
                precision,
                topics: 0,
            });
        }
    }
    cases
}

/// Steps each measurement takes.
#[derive(Debug, Clone, Copy)]
pub struct StepCounts {
    /// Untimed steps first (cuDNN algorithm choice, allocator warm-up).
    pub warmup: usize,
    pub timed: usize,
}

/// One case's figures.
#[derive(Debug, Clone, Copy)]
pub struct TrainTiming {
    pub forward_img_per_s: f64,
    pub train_img_per_s: f64,
    /// Mean milliseconds per timed step of the forward and backward pass, and of the update.
    pub forward_backward_ms: f64,
    pub update_ms: f64,
    /// Learnable values of the network.
    pub params: usize,
}

/// Mean seconds per call of `step` over `steps.timed` calls, after `steps.warmup` calls.
fn time(
    device: &Device,
    steps: StepCounts,
    mut step: impl FnMut() -> Result<(), BenchError>,
) -> Result<f64, BenchError> {
    for _ in 0..steps.warmup {
        step()?;
    }
    device.synchronize()?;
    let started = Instant::now();
    for _ in 0..steps.timed {
        step()?;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64() / steps.timed.max(1) as f64)
}

/// Times `case` on `device`: the eval forward pass, and the trainer's step on one random
/// batch (lr 1e-3, the recipe's other SGD defaults). With `cpu_ranks` > 1, as `ranks`
/// threads of one thread each sharing every batch (`train.cpu_ranks`); rank 0's timing.
pub fn measure(
    case: &TrainCase,
    device: &Device,
    steps: StepCounts,
    cpu_ranks: usize,
) -> Result<TrainTiming, BenchError> {
    on_thread_ranks(cpu_ranks, &|collective| {
        measure_rank(case, device, steps, collective)
    })
}

/// [`measure`] as one rank of `collective`: its rows of the batch, the whole batch's rate.
fn measure_rank(
    case: &TrainCase,
    device: &Device,
    steps: StepCounts,
    collective: &mut dyn Collective,
) -> Result<TrainTiming, BenchError> {
    set_tf32(case.precision == Precision::Tf32);
    let (model, batch) = (&case.model, case.batch);
    let (first_row, rows) = shard_rows(batch, collective.rank(), collective.world_size());
    let net = GoogLeNet::new(model, case.classes, case.topics, 0, device)?;
    let sgd_params = SgdParams {
        lr: 1e-3,
        ..Recipe::default().train.optimizer
    };
    let mut sgd = Sgd::new(net.vars().to_vec(), &sgd_params).map_err(TrainError::from)?;
    let side = model.input_size as usize;
    let images = Tensor::randn(0f32, 50.0, (rows, 3, side, side), device)?
        .to_dtype(case.precision.activations())?;
    let labels: Vec<u32> = (first_row..first_row + rows)
        .map(|i| i as u32 % case.classes as u32)
        .collect();
    let topics = match case.topics {
        0 => None,
        k => Some(candle_nn::ops::softmax_last_dim(&Tensor::randn(
            0f32,
            1.0,
            (rows, k),
            device,
        )?)?),
    };
    let targets = Targets {
        labels: Tensor::from_vec(labels, rows, device)?,
        lambdas: Tensor::ones(rows, DType::F32, device)?,
        topics,
    };
    let forward = time(device, steps, || {
        net.forward_eval(&images)?;
        Ok(())
    })?;
    let rng = ChaCha8Rng::seed_from_u64(0);
    let mut guard = DivergenceGuard::new(SPIKE_FACTOR);
    let (mut backward_s, mut update_s, mut calls) = (0.0, 0.0, 0);
    let train = time(device, steps, || {
        let input = StepInput {
            images: &images,
            targets: &targets,
            rng: &rng,
            first_row,
            global_rows: batch,
            step: calls,
            lr: sgd_params.lr,
        };
        let started = Instant::now();
        let outcome = train_step(&net, &mut sgd, &mut guard, model, &input, collective)?;
        outcome.update.map_err(TrainError::Diverged)?;
        device.synchronize()?;
        // The phases of the timed steps only: the warm-up steps pick cuDNN algorithms.
        if calls >= steps.warmup as u64 {
            backward_s += (outcome.fetched_at - started).as_secs_f64();
            update_s += outcome.fetched_at.elapsed().as_secs_f64();
        }
        calls += 1;
        Ok(())
    })?;
    let timed = steps.timed.max(1) as f64;
    Ok(TrainTiming {
        forward_img_per_s: batch as f64 / forward,
        train_img_per_s: batch as f64 / train,
        forward_backward_ms: 1e3 * backward_s / timed,
        update_ms: 1e3 * update_s / timed,
        params: net.vars().iter().map(|(_, v)| v.elem_count()).sum(),
    })
}
