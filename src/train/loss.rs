//! Losses for the classifier and topic-regression heads. In: logits (N×K) and labels, λ
//! weights or target vectors. Out: a scalar loss tensor whose gradient flows back through
//! candle's autograd; both are built from candle ops, so they run on any device.

use candle_core::{DType, Result, Tensor, D};

/// Inputs a loss cannot use; wrapped into `candle_core::Error`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LossError {
    #[error("{loss}: {operand} has shape {got:?}, expected {expected}")]
    BadShape {
        loss: &'static str,
        operand: &'static str,
        got: Vec<usize>,
        expected: String,
    },
    #[error("{loss}: {operand} has dtype {got:?}, expected {expected}")]
    BadDType {
        loss: &'static str,
        operand: &'static str,
        got: DType,
        expected: &'static str,
    },
    #[error("{loss}: label {label} in row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        loss: &'static str,
        row: usize,
        label: u32,
        classes: usize,
    },
}

impl From<LossError> for candle_core::Error {
    fn from(e: LossError) -> Self {
        candle_core::Error::wrap(e)
    }
}

const WEIGHTED_CE: &str = "weighted_softmax_cross_entropy";
const SIGMOID_CE: &str = "sigmoid_cross_entropy";

/// `mean_n(−λ_n · log softmax(logits_n)[y_n])`: the original's soft-label loss, whose gradient
/// is `λ(p − onehot(y))/N`. `logits` N×K float, `labels` N u32, `weights` N float (λ; ones give
/// plain cross-entropy). The mean is over all N rows, whatever their λ.
pub fn weighted_softmax_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let (rows, classes) = logits.dims2().map_err(|_| LossError::BadShape {
        loss: WEIGHTED_CE,
        operand: "logits",
        got: logits.dims().to_vec(),
        expected: "N×K".into(),
    })?;
    expect_shape(WEIGHTED_CE, "labels", labels, &[rows])?;
    expect_shape(WEIGHTED_CE, "weights", weights, &[rows])?;
    if labels.dtype() != DType::U32 {
        return Err(LossError::BadDType {
            loss: WEIGHTED_CE,
            operand: "labels",
            got: labels.dtype(),
            expected: "u32",
        }
        .into());
    }
    if let Some((row, &label)) = labels
        .to_vec1::<u32>()?
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(LossError::LabelOutOfRange {
            loss: WEIGHTED_CE,
            row,
            label,
            classes,
        }
        .into());
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let log_p_label = log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let weighted = (log_p_label * weights.to_dtype(logits.dtype())?)?;
    weighted.sum_all()?.affine(-1.0 / rows as f64, 0.0)
}

/// Caffe's SigmoidCrossEntropyLoss with its default normalisation, BATCH_SIZE: the sum over
/// all N×K elements of `−t·log σ(x) − (1−t)·log(1−σ(x))`, divided by N (not by N·K). Its
/// gradient is `(σ(x) − t)/N`. `targets` in [0, 1], same shape as `logits` (N×K).
pub fn sigmoid_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, _) = logits.dims2().map_err(|_| LossError::BadShape {
        loss: SIGMOID_CE,
        operand: "logits",
        got: logits.dims().to_vec(),
        expected: "N×K".into(),
    })?;
    expect_shape(SIGMOID_CE, "targets", targets, logits.dims())?;
    let targets = targets.to_dtype(logits.dtype())?;
    // Stable form max(x, 0) − x·t + log(1 + e^−|x|), with max(x, 0) written as (x + |x|)/2: the
    // two |x| kinks then cancel in autograd, so the gradient at x = 0 is exactly σ(0) − t
    // (a relu would drop the ½ there, e.g. for a zero-initialised head).
    let abs = logits.abs()?;
    let positive_part = ((logits + &abs)? * 0.5)?;
    let softplus_tail = (abs.neg()?.exp()? + 1.0)?.log()?;
    let per_element = ((positive_part - (logits * targets)?)? + softplus_tail)?;
    per_element.sum_all()?.affine(1.0 / rows as f64, 0.0)
}

fn expect_shape(
    loss: &'static str,
    operand: &'static str,
    t: &Tensor,
    expected: &[usize],
) -> std::result::Result<(), LossError> {
    if t.dims() == expected {
        Ok(())
    } else {
        Err(LossError::BadShape {
            loss,
            operand,
            got: t.dims().to_vec(),
            expected: format!("{expected:?}"),
        })
    }
}
