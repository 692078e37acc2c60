//! Losses for the classifier and topic-regression heads, and their weighted total. In: logits
//! (N×K) and labels, λ weights or target vectors. Out: a scalar loss tensor whose gradient flows
//! back through candle's autograd; all are built from candle ops, so they run on any device.

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
    #[error(
        "total_loss: {task} has {got} head losses, expected 1 (main) or 3 (main, aux 4a, aux 4d)"
    )]
    HeadCount { task: &'static str, got: usize },
    #[error("total_loss: neither classification nor regression losses given")]
    NoTask,
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
    // Labels on a GPU are not copied back to be checked (a copy stalls the stream): the
    // trainer checks them on the host before they go up.
    let host_labels = match labels.device().is_cpu() {
        true => labels.to_vec1::<u32>()?,
        false => Vec::new(),
    };
    if let Some((row, &label)) = host_labels
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

/// The training objective from per-head losses: `Σ_task w_task · Σ_head w_head · loss`, heads
/// ordered (main, aux after 4a, aux after 4d) weighing `(1, aux_weights[0], aux_weights[1])`
/// (GoogLeNet's 1, 0.3, 0.3), tasks (classification, regression) weighing `task_weights` (the
/// original's 0.75, 0.25) when both are trained and 1 when only one is. Each slice holds the
/// main head's loss alone, or all three.
pub fn total_loss(
    classification: Option<&[Tensor]>,
    regression: Option<&[Tensor]>,
    task_weights: [f64; 2],
    aux_weights: [f64; 2],
) -> Result<Tensor> {
    let head_weights = [1.0, aux_weights[0], aux_weights[1]];
    let both = classification.is_some() && regression.is_some();
    let mut total: Option<Tensor> = None;
    for (task, losses, task_weight) in [
        ("classification", classification, task_weights[0]),
        ("regression", regression, task_weights[1]),
    ] {
        let Some(losses) = losses else { continue };
        if losses.len() != 1 && losses.len() != 3 {
            return Err(LossError::HeadCount {
                task,
                got: losses.len(),
            }
            .into());
        }
        let task_weight = if both { task_weight } else { 1.0 };
        for (loss, head_weight) in losses.iter().zip(head_weights) {
            let term = loss.affine(task_weight * head_weight, 0.0)?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
    }
    total.ok_or_else(|| LossError::NoTask.into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::gradcheck::{assert_gradient_matches, random_values};
    use candle_core::Device;

    #[test]
    fn weighted_cross_entropy_gradient_matches_finite_differences() {
        for (rows, classes, seed) in [(4, 5, 1), (1, 3, 2), (7, 2, 3)] {
            let logits = (random_values((rows, classes), seed).unwrap() * 3.0).unwrap();
            let labels: Vec<u32> = (0..rows).map(|r| ((r * 7 + 1) % classes) as u32).collect();
            let labels = Tensor::new(labels, &Device::Cpu).unwrap();
            let weights = random_values(rows, seed + 10).unwrap().abs().unwrap();
            assert_gradient_matches(
                |x| weighted_softmax_cross_entropy(x, &labels, &weights),
                &logits,
                1e-6,
            )
            .unwrap();
        }
    }

    #[test]
    fn weighted_cross_entropy_gradient_is_lambda_times_p_minus_onehot_over_n() {
        let logits = random_values((3, 4), 5).unwrap();
        let labels = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        let weights = Tensor::new(&[0.5f64, 1.0, 0.25], &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&logits).unwrap();
        let loss = weighted_softmax_cross_entropy(var.as_tensor(), &labels, &weights).unwrap();
        let grad = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let p = candle_nn::ops::softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (row, (label, lambda)) in [(2, 0.5), (0, 1.0), (3, 0.25)].into_iter().enumerate() {
            for class in 0..4 {
                let onehot = if class == label { 1.0 } else { 0.0 };
                let want = lambda * (p[row][class] - onehot) / 3.0;
                assert!((grad[row][class] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn sigmoid_cross_entropy_gradient_matches_finite_differences() {
        for (rows, dims, seed) in [(3, 4, 1), (1, 6, 2), (5, 1, 3)] {
            let logits = (random_values((rows, dims), seed).unwrap() * 4.0).unwrap();
            let targets =
                ((random_values((rows, dims), seed + 5).unwrap() + 1.0).unwrap() * 0.5).unwrap();
            assert_gradient_matches(|x| sigmoid_cross_entropy(x, &targets), &logits, 1e-6).unwrap();
        }
    }

    #[test]
    fn sigmoid_cross_entropy_gradient_at_zero_is_half_minus_target() {
        let zeros = Tensor::zeros((2, 2), DType::F64, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[0.0f64, 1.0], [0.25, 0.5]], &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&zeros).unwrap();
        let loss = sigmoid_cross_entropy(var.as_tensor(), &targets).unwrap();
        // Value: 4 · log 2 / 2 rows.
        assert!((loss.to_vec0::<f64>().unwrap() - 2.0 * 2f64.ln()).abs() < 1e-12);
        let grad = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(grad, vec![vec![0.25, -0.25], vec![0.125, 0.0]]);
    }

    #[test]
    fn sigmoid_cross_entropy_is_finite_for_huge_logits() {
        let logits = Tensor::new(&[[1e4f32, -1e4]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[0.0f32, 0.0]], &Device::Cpu).unwrap();
        let loss = sigmoid_cross_entropy(&logits, &targets)
            .unwrap()
            .to_vec0::<f32>()
            .unwrap();
        assert_eq!(loss, 1e4);
    }

    #[test]
    fn total_loss_weighs_heads_and_tasks() {
        let scalar = |v: f64| Tensor::new(v, &Device::Cpu).unwrap();
        let cls = [scalar(2.0), scalar(4.0), scalar(8.0)];
        let reg = [scalar(1.0), scalar(10.0), scalar(100.0)];
        let value = |t: Tensor| t.to_vec0::<f64>().unwrap();
        // 0.75·(2 + 0.3·4 + 0.3·8) + 0.25·(1 + 0.3·10 + 0.3·100)
        let both = total_loss(Some(&cls), Some(&reg), [0.75, 0.25], [0.3, 0.3]).unwrap();
        assert!((value(both) - (0.75 * 5.6 + 0.25 * 34.0)).abs() < 1e-12);
        let alone = total_loss(Some(&cls[..1]), None, [0.75, 0.25], [0.3, 0.3]).unwrap();
        assert_eq!(value(alone), 2.0);
        let msg = total_loss(Some(&cls[..2]), None, [0.75, 0.25], [0.3, 0.3])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("classification has 2 head losses"), "{msg}");
        assert!(total_loss(None, None, [0.75, 0.25], [0.3, 0.3]).is_err());
    }

    #[test]
    fn bad_inputs_name_the_operand_and_row() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let weights = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
        let msg = weighted_softmax_cross_entropy(&logits, &labels, &weights)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("label 3 in row 1 is out of range for 3 classes"),
            "{msg}"
        );
        let short = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let msg = weighted_softmax_cross_entropy(&logits, &short, &weights)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("labels has shape [1], expected [2]"), "{msg}");
        let msg = sigmoid_cross_entropy(&logits, &weights)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("targets has shape [2], expected [2, 3]"),
            "{msg}"
        );
    }
}
