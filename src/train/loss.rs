//! Losses for the classifier and topic-regression heads, and a training step's weighted total
//! over the network's heads ([`step_loss`]). In: logits (N×K) and labels, λ weights or target
//! vectors. Out: scalar loss tensors whose gradient flows back through candle's autograd; all
//! are built from candle ops, so they run on any device.

use candle_core::{DType, Result, Tensor, D};

use crate::model::{HeadOutput, HEAD_NAMES};
use crate::recipe::params::ModelParams;

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
    #[error("step_loss: no head gives class logits or topic logits with targets")]
    NoTask,
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
    // Labels must be below K. The trainer checks them on the host before they go up (a copy
    // back would stall the stream), so only a debug build looks again, on the CPU.
    if cfg!(debug_assertions) && labels.device().is_cpu() {
        if let Some((row, label)) = labels
            .to_vec1::<u32>()?
            .into_iter()
            .enumerate()
            .find(|&(_, l)| l as usize >= classes)
        {
            panic!(
                "{WEIGHTED_CE}: label {label} in row {row} is out of range for {classes} classes"
            );
        }
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

/// The training objective: per head and task, λ-weighted softmax cross-entropy or sigmoid
/// cross-entropy, summed with head weights (1, aux₀, aux₁) for the heads in [`HEAD_NAMES`]
/// order (GoogLeNet's 1, 0.3, 0.3) × task weights (the original's 0.75, 0.25). The task
/// weights apply only when both tasks are on (one task alone weighs 1, so the lr keeps its
/// meaning). A head without a task's output adds no term for it.
pub fn step_loss(
    model: &ModelParams,
    heads: &[HeadOutput; 3],
    targets: &Targets,
) -> Result<StepLoss> {
    let [class_weight, topic_weight] = match (model.classification, model.regression) {
        (true, true) => model.task_weights,
        _ => [1.0, 1.0],
    };
    let [aux0, aux1] = model.aux_weights;
    let mut total: Option<Tensor> = None;
    let mut terms = Vec::new();
    let mut add = |name: String, term: Tensor, weight: f64| -> Result<()> {
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
    let total = total.ok_or(LossError::NoTask)?;
    Ok(StepLoss { total, terms })
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
    fn step_loss_weighs_heads_and_tasks() {
        let dev = Device::Cpu;
        let logits = |shape: (usize, usize), seed, scale: f64| {
            (random_values(shape, seed).unwrap() * scale)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let head = |seed, scale| HeadOutput {
            classes: Some(logits((2, 3), seed, scale)),
            topics: Some(logits((2, 4), seed + 10, scale)),
        };
        let heads = [head(1, 1.0), head(2, 3.0), head(3, 9.0)];
        let targets = Targets {
            labels: Tensor::new(&[2u32, 0], &dev).unwrap(),
            lambdas: Tensor::new(&[1f32, 0.5], &dev).unwrap(),
            topics: Some(Tensor::new(&[[0.1f32, 0.2, 0.3, 0.4], [0.25; 4]], &dev).unwrap()),
        };
        let value = |t: &Tensor| t.to_vec0::<f32>().unwrap();
        let classification = |h: &HeadOutput| {
            let loss = weighted_softmax_cross_entropy(
                h.classes.as_ref().unwrap(),
                &targets.labels,
                &targets.lambdas,
            );
            value(&loss.unwrap())
        };
        let regression = |h: &HeadOutput| {
            let loss =
                sigmoid_cross_entropy(h.topics.as_ref().unwrap(), targets.topics.as_ref().unwrap());
            value(&loss.unwrap())
        };
        let [main, aux1, aux2] = &heads;
        let model = ModelParams {
            regression: true,
            ..crate::recipe::Recipe::default().model
        };
        // 0.75·(main + 0.3·aux₁ + 0.3·aux₂) over classification + 0.25·(…) over regression.
        let both = step_loss(&model, &heads, &targets).unwrap();
        let want = 0.75
            * (classification(main) + 0.3 * classification(aux1) + 0.3 * classification(aux2))
            + 0.25 * (regression(main) + 0.3 * regression(aux1) + 0.3 * regression(aux2));
        assert!(
            (value(&both.total) - want).abs() < 1e-5 * want.abs(),
            "{} vs {want}",
            value(&both.total)
        );
        let names: Vec<&str> = both.terms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "loss3/classification",
                "loss3/regression",
                "loss1/classification",
                "loss1/regression",
                "loss2/classification",
                "loss2/regression"
            ]
        );
        // One task alone weighs 1, and a head without its output adds nothing.
        let classes_only = ModelParams {
            regression: false,
            ..model.clone()
        };
        let none = || HeadOutput {
            classes: None,
            topics: None,
        };
        let main_alone = [
            HeadOutput {
                topics: None,
                ..main.clone()
            },
            none(),
            none(),
        ];
        let alone = step_loss(&classes_only, &main_alone, &targets).unwrap();
        assert_eq!(value(&alone.total), classification(main));
        assert!(step_loss(&model, &[none(), none(), none()], &targets).is_err());
    }

    #[test]
    fn bad_inputs_name_the_operand() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let weights = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
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

    /// The trainer checks labels before a step; a debug build checks direct calls on the CPU.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "label 3 in row 1 is out of range for 3 classes")]
    fn a_label_beyond_the_classes_is_named_with_its_row() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let weights = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
        let _ = weighted_softmax_cross_entropy(&logits, &labels, &weights);
    }
}
