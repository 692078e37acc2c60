//! One training step, as the trainer runs it and `runner bench train` times it. In: this
//! rank's rows of the step's batch as tensors, their targets, the step's dropout stream and
//! lr. Out: the network's weights updated by SGD (or left alone when the step diverged), the
//! loss and its terms, the update's statistics. With several ranks, one all-reduce per step
//! makes every rank take the same update (see [`super::train_distributed`]).

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::loss::{step_loss, StepLoss, Targets};
use super::optim::{DivergenceGuard, OptimError, Sgd, StepStats};
use super::TrainError;
use crate::model::GoogLeNet;
use crate::recipe::params::ModelParams;
use crate::runtime::{shard_rows, Collective};
use crate::sample::{Batch, Pixels};

/// The dropout RNG of `step`: a ChaCha stream per step, so resume needs only (seed, step).
pub(super) fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng
}

/// This rank's rows of the global `batch` (see [`shard_rows`]), with the index of the first;
/// the whole batch, untouched, for a single process.
pub(super) fn shard(batch: Batch, rank: usize, world_size: usize) -> (usize, Batch) {
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

/// This rank's share of one step.
pub struct StepInput<'a> {
    /// This rank's rows of the step's batch.
    pub images: &'a Tensor,
    pub targets: &'a Targets,
    /// The step's dropout stream ([`step_rng`]).
    pub rng: &'a ChaCha8Rng,
    /// The row of the global batch that `images` starts at, and the global batch's rows.
    pub first_row: usize,
    pub global_rows: usize,
    /// The step's index (for the divergence guard) and learning rate.
    pub step: u64,
    pub lr: f64,
}

/// What a step did.
pub struct StepOutcome {
    /// The loss (the global batch's, over every rank) and each term, named as in
    /// [`StepLoss::terms`].
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    /// The update's statistics, or why the step diverged (a NaN or spiking loss, a non-finite
    /// gradient): then the weights are unchanged.
    pub update: Result<StepStats, String>,
    /// When the loss and gradient norms reached the host: the end of the forward and
    /// backward pass (and the all-reduce), since that copy waits for the device.
    pub fetched_at: Instant,
}

/// One training step: forward and backward pass on this rank's rows, the all-reduce when
/// there are several ranks, the divergence guard on the loss, and the SGD update at `input.lr`.
pub fn train_step(
    net: &GoogLeNet,
    sgd: &mut Sgd,
    guard: &mut DivergenceGuard,
    model: &ModelParams,
    input: &StepInput,
    collective: &mut dyn Collective,
) -> Result<StepOutcome, TrainError> {
    let computed = if collective.world_size() == 1 {
        let (grads, loss) = scaled_backward(net, model, input, None)?;
        let mut parts = vec![loss.total.to_dtype(DType::F64)?.reshape(1)?];
        for (_, term) in &loss.terms {
            parts.push(term.to_dtype(DType::F64)?.reshape(1)?);
        }
        parts.extend(sgd.gradient_squares(&grads)?);
        computed(grads, loss, &parts)?
    } else {
        let rows = input.images.dim(0)?;
        let scale = rows as f64 / input.global_rows as f64;
        let step = scaled_backward(net, model, input, Some(scale))?;
        all_reduce_step(net, sgd, step, collective)?
    };
    let fetched_at = Instant::now();
    let update = match guard.check(input.step, computed.loss) {
        Err(divergence) => Err(divergence.to_string()),
        Ok(()) => match sgd.apply(&computed.grads, input.lr, &computed.squares) {
            Ok(stats) => Ok(stats),
            Err(e @ OptimError::NonFiniteGradient { .. }) => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        },
    };
    Ok(StepOutcome {
        loss: computed.loss,
        terms: computed.terms,
        update,
        fetched_at,
    })
}

/// A step's forward and backward pass, before the update: the gradients, and the loss, its
/// terms and the gradients' squared norms, fetched from the device in a single copy (each
/// copy waits for the device to finish all queued work).
struct Computed {
    grads: GradStore,
    loss: f64,
    terms: Vec<(String, f64)>,
    /// [`Sgd::gradient_squares`], fetched.
    squares: Vec<f64>,
}

/// The forward pass on `input`'s rows (dropout from its stream as for those rows of the
/// global batch), the loss (and its terms) multiplied by `scale` when given, and the backward
/// pass of the scaled total.
fn scaled_backward(
    net: &GoogLeNet,
    model: &ModelParams,
    input: &StepInput,
    scale: Option<f64>,
) -> Result<(GradStore, StepLoss), TrainError> {
    let heads = net.forward_train_rows(input.images, input.rng, input.first_row)?;
    let mut loss = step_loss(model, &heads, input.targets)?;
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
fn computed(grads: GradStore, loss: StepLoss, parts: &[Tensor]) -> Result<Computed, TrainError> {
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

/// One data-parallel step, after [`scaled_backward`] of this rank's shard with the loss
/// scaled by `n_rank / n_global`: ONE `all_reduce_sum_parts` of every present gradient (in
/// the order of `net.vars()`, in f32), the batch-norm running statistics, then the loss and
/// its terms; the gradients go back into the gradient store, the statistics' mean into the
/// network. The squares come from the reduced gradients, so every rank clips and checks the
/// same values.
fn all_reduce_step(
    net: &GoogLeNet,
    sgd: &Sgd,
    (mut grads, loss): (GradStore, StepLoss),
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
    let buffers = net.buffers();
    let mut parts = Vec::with_capacity(present.len() + buffers.len() + 1 + loss.terms.len());
    for (_, grad) in &present {
        parts.push(grad.to_dtype(DType::F32)?);
    }
    for (_, buffer) in buffers {
        parts.push(buffer.as_tensor().to_dtype(DType::F32)?);
    }
    parts.push(loss.total.to_dtype(DType::F32)?.reshape(1)?);
    for (_, term) in &loss.terms {
        parts.push(term.to_dtype(DType::F32)?.reshape(1)?);
    }
    let mut summed = collective.all_reduce_sum_parts(&parts)?;
    let tail = Tensor::cat(&summed.split_off(present.len() + buffers.len()), 0)?;
    // Each rank moved its batch-norm statistics towards its own rows: every replica takes
    // their mean, so all hold the same (as if the batch's statistics were the shards' mean).
    let ranks = collective.world_size() as f64;
    for ((_, buffer), sum) in buffers.iter().zip(summed.split_off(present.len())) {
        buffer.set(&sum.affine(1.0 / ranks, 0.0)?.to_dtype(buffer.dtype())?)?;
    }
    for ((var, grad), reduced) in present.into_iter().zip(summed) {
        grads.insert(var, reduced.to_dtype(grad.dtype())?);
    }
    let mut parts = vec![tail.to_dtype(DType::F64)?];
    parts.extend(sgd.gradient_squares(&grads)?);
    computed(grads, loss, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_rngs_differ_by_step_and_repeat_by_seed() {
        use rand::Rng;
        let draw = |seed, step| step_rng(seed, step).random::<u64>();
        assert_eq!(draw(1, 5), draw(1, 5));
        assert_ne!(draw(1, 5), draw(1, 6));
        assert_ne!(draw(1, 5), draw(2, 5));
    }

    /// A training step's loss and every gradient on CUDA equal the CPU's: in f32 every element
    /// within 1e-4 of its tensor's largest value; in bf16 (mixed precision, emulated on the
    /// CPU: f32 products of bf16-rounded operands, rounded) the loss within 1e-3 and each
    /// gradient within 0.15 in L2 norm. Elementwise, a ReLU that flips on a rounded input
    /// changes single elements completely, and the two devices round at different points (the
    /// H200 gave 1.1e-4 and 7.2e-2 on 2026-12-04; bf16 against f32 differs by 1e-2 to 3e-1 per
    /// layer at this width and batch). Same init (drawn on the host), same dropout masks, same
    /// batch.
    #[test]
    fn cuda_training_step_matches_the_cpu() {
        use crate::model::ops::gradcheck::{cuda_device, relative_error};
        use candle_core::Device;
        use rand::Rng;
        let Some(cuda) = cuda_device() else { return };
        let model = ModelParams {
            regression: true,
            input_size: 64,
            width: 0.25,
            ..crate::recipe::Recipe::default().model
        };
        let (classes, topics, batch) = (10, 6, 4);
        let step = |device: &Device, dtype: DType| {
            let net = GoogLeNet::new(&model, classes, topics, 3, device).unwrap();
            let mut pixels = ChaCha8Rng::seed_from_u64(5);
            let pixels: Vec<f32> = (0..batch * 3 * 64 * 64)
                .map(|_| pixels.random_range(-100.0..100.0))
                .collect();
            let images = Tensor::from_vec(pixels, (batch, 3, 64, 64), device)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let targets = Targets {
                labels: Tensor::new(&[0u32, 3, 7, 9], device).unwrap(),
                lambdas: Tensor::new(&[1f32, 0.5, 1.0, 0.25], device).unwrap(),
                topics: Some(Tensor::full(1.0 / topics as f32, (batch, topics), device).unwrap()),
            };
            let rng = ChaCha8Rng::seed_from_u64(11);
            let heads = net.forward_train(&images, &rng).unwrap();
            let loss = step_loss(&model, &heads, &targets).unwrap().total;
            let grads = loss.backward().unwrap();
            let named: Vec<(String, Tensor)> = net
                .vars()
                .iter()
                .map(|(name, var)| (name.clone(), grads.get(var).unwrap().clone()))
                .collect();
            (loss, named)
        };
        for (dtype, loss_tolerance, tolerance) in
            [(DType::F32, 1e-4, 1e-4), (DType::BF16, 1e-3, 0.15)]
        {
            let (cpu_loss, cpu_grads) = step(&Device::Cpu, dtype);
            let (loss, grads) = step(&cuda, dtype);
            let loss_error = relative_error(&cpu_loss, &loss).unwrap();
            let l2_error = |a: &Tensor, b: &Tensor| {
                let a = a.to_dtype(DType::F64).unwrap();
                let b = b
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
                let error = norm(&(&a - &b).unwrap()).to_vec0::<f64>().unwrap();
                error / norm(&a).to_vec0::<f64>().unwrap().max(1e-30)
            };
            let mut worst = (0.0, String::new());
            for ((name, a), (_, b)) in cpu_grads.iter().zip(&grads) {
                let error = match dtype {
                    DType::F32 => relative_error(a, b).unwrap(),
                    _ => l2_error(a, b),
                };
                if error > worst.0 {
                    worst = (error, name.clone());
                }
            }
            eprintln!(
                "googlenet step {dtype:?}: loss rel. error {loss_error:.2e}, worst gradient \
                 {} rel. error {:.2e}",
                worst.1, worst.0
            );
            assert!(loss_error <= loss_tolerance, "{dtype:?} loss {loss_error}");
            assert!(worst.0 <= tolerance, "{dtype:?} {}: {}", worst.1, worst.0);
        }
    }
}
