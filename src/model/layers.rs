//! The layers GoogLeNet is built from: convolution (+ batch norm) + ReLU, fully connected,
//! the inception block, the auxiliary and main heads, and dropout drawn from our own stream.
//!
//! In: weights as `Var`s (f32 masters; [`super::googlenet`] creates them with Caffe's fillers
//! and names them) and activations in f32 or bf16. Out: each layer's output in the
//! activations' dtype; the heads' class and topic logits ([`HeadOutput`]).

use candle_core::{DType, ModuleT, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::conv::{conv2d, conv2d_bias_relu};
use crate::model::ops::{avg_pool2d, max_pool2d};

const AUX_DROPOUT: f64 = 0.7;
const MAIN_DROPOUT: f64 = 0.4;
const BN_EPS: f64 = 1e-5;
/// Share of the current batch in the running statistics after each training step.
const BN_MOMENTUM: f64 = 0.1;

/// One head's outputs: logits over classes and/or logits of the topic vector (pre-sigmoid).
#[derive(Debug, Clone)]
pub struct HeadOutput {
    pub classes: Option<Tensor>,
    pub topics: Option<Tensor>,
}

/// Whether a forward pass trains (dropout on, batch statistics) or evaluates.
pub(super) enum Pass {
    /// `rng`: the step's dropout stream; `first_row`: the global batch row of the images' first
    /// row; `layer`: dropout layers drawn so far.
    Train {
        rng: Box<ChaCha8Rng>,
        first_row: usize,
        layer: u128,
    },
    Eval,
}

/// Words of the dropout stream each dropout layer owns (far more than a batch draws).
const DROPOUT_LAYER_WORDS: u128 = 1 << 40;

impl Pass {
    pub(super) fn is_train(&self) -> bool {
        matches!(self, Pass::Train { .. })
    }

    /// Inverted dropout with a mask drawn from our own seeded RNG (candle's CPU RNG cannot be
    /// seeded, and resume must replay the same masks). Each layer draws from its own stretch
    /// of the stream and each row from its global row's place in it, so a data-parallel
    /// shard draws exactly the masks one process draws for the same rows.
    fn dropout(&mut self, x: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        let Pass::Train {
            rng,
            first_row,
            layer,
        } = self
        else {
            return Ok(x.clone());
        };
        let per_row = (x.elem_count() / x.dim(0)?.max(1)) as u128;
        let mut rng = (**rng).clone();
        // Two 32-bit words per f64 draw.
        rng.set_word_pos(*layer * DROPOUT_LAYER_WORDS + *first_row as u128 * per_row * 2);
        *layer += 1;
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}

pub(super) struct Conv {
    pub(super) weight: Var,
    pub(super) bias: Option<Var>,
    pub(super) bn: Option<BatchNorm>,
    pub(super) stride: usize,
    pub(super) pad: usize,
}

impl Conv {
    pub(super) fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(super) fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if let (Some(bias), None, DType::F32) = (&self.bias, &self.bn, x.dtype()) {
            // In f32, convolution, bias and ReLU as one op (on the CPU one pass over the
            // output), with a cheap backward.
            return conv2d_bias_relu(x, &self.weight, bias, self.pad, self.stride);
        }
        let y =
            with_weight_in_dtype_of(x, &self.weight, |x, w| conv2d(x, w, self.pad, self.stride))?;
        match (&self.bias, &self.bn) {
            // Bias and ReLU fused: one pass forward, and a cheap backward.
            (Some(bias), None) => crate::model::ops::bias_relu(&y, &bias.to_dtype(y.dtype())?),
            (bias, bn) => {
                let mut y = y;
                if let Some(bias) = bias {
                    y = y.broadcast_add(&bias.to_dtype(y.dtype())?.reshape((1, (), 1, 1))?)?;
                }
                if let Some(bn) = bn {
                    y = bn.forward(&y, train)?;
                }
                y.relu()
            }
        }
    }
}

/// Batch norm over (n, h, w) per channel: candle's, with its running statistics in buffers
/// the network names (they go into checkpoints) and γ, β learned.
pub(super) struct BatchNorm(candle_nn::BatchNorm);

impl BatchNorm {
    /// All four are f32 `Var`s of one value per channel; the layer shares their storage, so
    /// training updates the named buffers and the optimiser the named weights.
    pub(super) fn new(
        gamma: &Var,
        beta: &Var,
        running_mean: &Var,
        running_var: &Var,
    ) -> candle_core::Result<Self> {
        Ok(Self(candle_nn::BatchNorm::new_with_momentum(
            gamma.dim(0)?,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            BN_EPS,
            BN_MOMENTUM,
        )?))
    }

    /// In f32 whatever the activations' dtype: the running statistics and γ, β are f32, and
    /// bf16 sums over a batch lose too much (candle would also apply γ, β in bf16).
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // One value per channel has no variance, and candle's unbiased running variance
        // would divide by zero (PyTorch refuses such batches too).
        if train && x.elem_count() <= x.dim(1)? {
            candle_core::bail!(
                "batch norm: a training batch of {:?} has one value per channel; train with \
                 more rows or larger images",
                x.dims()
            );
        }
        self.0
            .forward_t(&x.to_dtype(DType::F32)?, train)?
            .to_dtype(x.dtype())
    }
}

pub(super) struct Linear {
    pub(super) weight: Var,
    pub(super) bias: Var,
}

impl Linear {
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = with_weight_in_dtype_of(x, &self.weight, |x, w| x.matmul(&w.t()?))?;
        y.broadcast_add(&self.bias.to_dtype(y.dtype())?)
    }
}

/// `op(x, w)` in the activations' dtype, the (f32 master) weight cast to it: mixed precision,
/// whose cast passes the gradient back to the f32 weight. candle's CPU backend has no bf16
/// matrix product or convolution, so there the op runs in f32 on the bf16-rounded operands
/// and its result is rounded to bf16 (emulated bf16, for tests on machines without a GPU).
fn with_weight_in_dtype_of(
    x: &Tensor,
    w: &Tensor,
    op: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    if w.dtype() == dtype {
        return op(x, w);
    }
    let w = w.to_dtype(dtype)?;
    if x.device().is_cpu() && dtype == DType::BF16 {
        return op(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?)?.to_dtype(dtype);
    }
    op(x, &w)
}

pub(super) struct Inception {
    pub(super) b1: Conv,
    pub(super) b3r: Conv,
    pub(super) b3: Conv,
    pub(super) b5r: Conv,
    pub(super) b5: Conv,
    pub(super) proj: Conv,
}

impl Inception {
    pub(super) fn out_channels(&self) -> usize {
        self.b1.out_channels()
            + self.b3.out_channels()
            + self.b5.out_channels()
            + self.proj.out_channels()
    }

    pub(super) fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let branch1 = self.b1.forward(x, train)?;
        let branch3 = self.b3.forward(&self.b3r.forward(x, train)?, train)?;
        let branch5 = self.b5.forward(&self.b5r.forward(x, train)?, train)?;
        let pooled = max_pool2d(x, 3, 1, 1, true)?;
        let branch_pool = self.proj.forward(&pooled, train)?;
        Tensor::cat(&[branch1, branch3, branch5, branch_pool], 1)
    }
}

/// A classifier (fc → ReLU → dropout 0.7 → fc) or topic regressor of the same shape.
pub(super) struct AuxBranch {
    pub(super) fc: Linear,
    pub(super) out: Linear,
}

impl AuxBranch {
    pub(super) fn forward(
        &self,
        features: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.fc.forward(features)?.relu()?;
        self.out.forward(&pass.dropout(&hidden, AUX_DROPOUT)?)
    }
}

/// avg-pool 5×5/3 → 1×1 conv 128 → ReLU, then each task's branch.
pub(super) struct AuxHead {
    pub(super) pool_kernel: usize,
    pub(super) conv: Conv,
    pub(super) classifier: Option<AuxBranch>,
    pub(super) regressor: Option<AuxBranch>,
}

impl AuxHead {
    pub(super) fn forward(&self, x: &Tensor, pass: &mut Pass) -> candle_core::Result<HeadOutput> {
        let pooled = avg_pool2d(x, self.pool_kernel, 3, 0, true)?;
        let features = self
            .conv
            .forward(&pooled, pass.is_train())?
            .flatten_from(1)?;
        let classes = match &self.classifier {
            Some(branch) => Some(branch.forward(&features, pass)?),
            None => None,
        };
        let topics = match &self.regressor {
            Some(branch) => Some(branch.forward(&features, pass)?),
            None => None,
        };
        Ok(HeadOutput { classes, topics })
    }
}

/// Global average pool → dropout 0.4 → fc, per task.
pub(super) struct MainHead {
    pub(super) classifier: Option<Linear>,
    pub(super) regressor: Option<Linear>,
}

impl MainHead {
    /// The heads' outputs and the pooled features they read (one row per image).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<(HeadOutput, Tensor)> {
        let features = x.mean_keepdim((2, 3))?.flatten_from(1)?;
        let mut task = |layer: &Option<Linear>| -> candle_core::Result<Option<Tensor>> {
            match layer {
                Some(fc) => Ok(Some(fc.forward(&pass.dropout(&features, MAIN_DROPOUT)?)?)),
                None => Ok(None),
            }
        };
        let output = HeadOutput {
            classes: task(&self.classifier)?,
            topics: task(&self.regressor)?,
        };
        Ok((output, features))
    }
}
