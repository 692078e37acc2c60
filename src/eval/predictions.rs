//! From per-crop logits to per-sample probabilities, and the ensemble mean over runs.

use std::collections::{HashMap, HashSet};
use std::error::Error;

use candle_core::{DType, Tensor};

use super::EvalError;
use crate::sample::Batch;

/// Per-sample class probabilities of one evaluated split (or of an ensemble), in the order the
/// samples were evaluated. Each row sums to 1 (up to rounding).
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    num_classes: usize,
    ids: Vec<u64>,
    labels: Vec<u32>,
    /// `[ids.len(), num_classes]`, row-major.
    probs: Vec<f32>,
}

impl Predictions {
    /// The caller has checked that the parts fit: one label per id, `num_classes`
    /// probabilities per id, labels in range, no id twice.
    pub(super) fn from_parts(
        num_classes: usize,
        ids: Vec<u64>,
        labels: Vec<u32>,
        probs: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(ids.len(), labels.len());
        debug_assert_eq!(ids.len() * num_classes, probs.len());
        Predictions {
            num_classes,
            ids,
            labels,
            probs,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// All probabilities, `[len, num_classes]` row-major.
    pub fn probabilities(&self) -> &[f32] {
        &self.probs
    }

    /// The probabilities of sample `i` (its position, not its id).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// The `k` most probable classes of sample `i`, best first; equal probabilities go by
    /// class index, lowest first. Fewer than `k` when there are fewer classes.
    pub fn top_k(&self, i: usize, k: usize) -> Vec<usize> {
        top_k(self.row(i), k)
    }
}

/// The indices of the `k` largest values, largest first, ties by lowest index. One pass with a
/// small sorted buffer: k is 1 or 5 and rows have up to ~1000 classes.
pub(super) fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (class, &p) in row.iter().enumerate() {
        // A later class ranks after every earlier one with the same probability.
        let at = best.partition_point(|&b| row[b] >= p);
        if at < k {
            best.insert(at, class);
            best.truncate(k);
        }
    }
    best
}

/// Accumulates the evaluation of one run: per-crop logits in, per-sample probabilities out.
///
/// Batches hold whole samples, each sample's `crops_per_sample` crops consecutive
/// (sample-major), as the loader's eval batches do.
#[derive(Debug)]
pub struct Evaluation {
    num_classes: usize,
    crops_per_sample: usize,
    ids: Vec<u64>,
    labels: Vec<u32>,
    probs: Vec<f32>,
    seen: HashSet<u64>,
}

impl Evaluation {
    /// # Panics
    /// When `num_classes` or `crops_per_sample` is 0.
    pub fn new(num_classes: usize, crops_per_sample: usize) -> Self {
        assert!(num_classes > 0, "evaluation needs at least one class");
        assert!(crops_per_sample > 0, "evaluation needs at least one crop");
        Evaluation {
            num_classes,
            crops_per_sample,
            ids: Vec::new(),
            labels: Vec::new(),
            probs: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Adds one batch. `logits` is `[images, num_classes]` row-major with
    /// `images = samples × crops_per_sample`. `ids` and `labels` have one entry per image (as
    /// [`Batch`] carries them; the crops of a sample must agree) or one per sample.
    /// On error nothing of the batch is kept.
    pub fn add_batch(
        &mut self,
        ids: &[u64],
        labels: &[u32],
        logits: &[f32],
    ) -> Result<(), EvalError> {
        let (classes, crops) = (self.num_classes, self.crops_per_sample);
        if !logits.len().is_multiple_of(classes * crops) {
            return Err(EvalError::LogitsShape {
                found: logits.len(),
                crops,
                classes,
            });
        }
        let images = logits.len() / classes;
        let samples = images / crops;
        let ids = per_sample("ids", ids, images, crops)?;
        let labels = per_sample("labels", labels, images, crops)?;

        let mut batch_ids = HashSet::with_capacity(samples);
        let mut probs = Vec::with_capacity(samples * classes);
        for (s, (&id, &label)) in ids.iter().zip(&labels).enumerate() {
            if label as usize >= classes {
                return Err(EvalError::LabelOutOfRange { id, label, classes });
            }
            if self.seen.contains(&id) || !batch_ids.insert(id) {
                return Err(EvalError::DuplicateId { id });
            }
            let sample_logits = &logits[s * crops * classes..(s + 1) * crops * classes];
            probs.extend(crop_mean_softmax(id, sample_logits, classes)?);
        }
        self.seen.extend(batch_ids);
        self.ids.extend(ids);
        self.labels.extend(labels);
        self.probs.extend(probs);
        Ok(())
    }

    /// [`add_batch`](Self::add_batch) with the model's logits as a tensor `[images, classes]`
    /// on any device and of any float dtype.
    pub fn add_tensor(
        &mut self,
        ids: &[u64],
        labels: &[u32],
        logits: &Tensor,
    ) -> Result<(), EvalError> {
        if logits.rank() != 2 || logits.dim(1)? != self.num_classes {
            return Err(EvalError::TensorShape {
                found: logits.dims().to_vec(),
                classes: self.num_classes,
            });
        }
        let values = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.add_batch(ids, labels, &values)
    }

    /// Samples added so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn finish(self) -> Predictions {
        Predictions::from_parts(self.num_classes, self.ids, self.labels, self.probs)
    }
}

/// One value per sample from a field given per image (checking that a sample's crops agree) or
/// already per sample.
fn per_sample<T: Copy + PartialEq + Into<u64>>(
    field: &'static str,
    values: &[T],
    images: usize,
    crops: usize,
) -> Result<Vec<T>, EvalError> {
    let samples = images / crops;
    if values.len() == samples {
        return Ok(values.to_vec());
    }
    if values.len() != images {
        return Err(EvalError::PerSampleLength {
            field,
            found: values.len(),
            images,
            samples,
        });
    }
    for (image, &value) in values.iter().enumerate() {
        let expected = values[image - image % crops];
        if value != expected {
            return Err(EvalError::CropsDisagree {
                image,
                field,
                expected: expected.into(),
                found: value.into(),
            });
        }
    }
    Ok(values.iter().step_by(crops).copied().collect())
}

/// The mean over crops of each crop's softmax. `logits` is `[crops, classes]`. Computed in f64
/// with the max subtracted, so large logits neither overflow nor lose the small classes.
fn crop_mean_softmax(id: u64, logits: &[f32], classes: usize) -> Result<Vec<f32>, EvalError> {
    let mut mean = vec![0f64; classes];
    let crops = logits.len() / classes;
    for (crop, row) in logits.chunks_exact(classes).enumerate() {
        if let Some((class, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(EvalError::NonFiniteLogit {
                id,
                crop,
                class,
                value,
            });
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        for (m, e) in mean.iter_mut().zip(exps) {
            *m += e / sum;
        }
    }
    Ok(mean
        .into_iter()
        .map(|m| (m / crops as f64) as f32)
        .collect())
}

/// Runs `predict` over every batch and accumulates the result: the loop of the `eval` stage.
/// `predict` returns the batch's logits `[images, num_classes]` row-major. `total_samples`
/// sizes the progress bar, shown only when `progress` is set.
pub fn evaluate<B, LoadError, P, PredictError>(
    batches: B,
    num_classes: usize,
    crops_per_sample: usize,
    total_samples: u64,
    progress: bool,
    mut predict: P,
) -> Result<Predictions, EvalError>
where
    B: IntoIterator<Item = Result<Batch, LoadError>>,
    LoadError: Into<Box<dyn Error + Send + Sync>>,
    P: FnMut(&Batch) -> Result<Vec<f32>, PredictError>,
    PredictError: Into<Box<dyn Error + Send + Sync>>,
{
    let bar = progress.then(|| crate::progress::bar(total_samples, "eval", "img"));
    let mut evaluation = Evaluation::new(num_classes, crops_per_sample);
    for (index, batch) in batches.into_iter().enumerate() {
        let at_batch = |source: Box<dyn Error + Send + Sync>| EvalError::Predict {
            batch: index,
            source,
        };
        let batch = batch.map_err(|e| at_batch(e.into()))?;
        let logits = predict(&batch).map_err(|e| at_batch(e.into()))?;
        let before = evaluation.len();
        evaluation.add_batch(&batch.ids, &batch.labels, &logits)?;
        if let Some(bar) = &bar {
            bar.inc((evaluation.len() - before) as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(evaluation.finish())
}

/// The mean of the members' probabilities, in member 0's sample order. Every member must cover
/// the same samples (in any order) with the same labels and classes.
pub fn ensemble(members: &[Predictions]) -> Result<Predictions, EvalError> {
    let first = members.first().ok_or(EvalError::EmptyEnsemble)?;
    let classes = first.num_classes;
    // For every member, the row holding each of member 0's samples.
    let rows = members
        .iter()
        .enumerate()
        .map(|(member, other)| align(first, member, other))
        .collect::<Result<Vec<_>, _>>()?;
    let n = members.len() as f64;
    let mut probs = Vec::with_capacity(first.probs.len());
    let mut sum = vec![0f64; classes];
    for i in 0..first.len() {
        sum.fill(0.0);
        for (member, rows) in members.iter().zip(&rows) {
            for (s, &p) in sum.iter_mut().zip(member.row(rows[i])) {
                *s += p as f64;
            }
        }
        probs.extend(sum.iter().map(|s| (s / n) as f32));
    }
    Ok(Predictions::from_parts(
        classes,
        first.ids.clone(),
        first.labels.clone(),
        probs,
    ))
}

/// Where `other` (ensemble member number `member`) holds each sample of `first`, checking that
/// it has the same classes, samples and labels.
fn align(first: &Predictions, member: usize, other: &Predictions) -> Result<Vec<usize>, EvalError> {
    if other.num_classes != first.num_classes {
        return Err(EvalError::EnsembleClasses {
            member,
            expected: first.num_classes,
            found: other.num_classes,
        });
    }
    let index: HashMap<u64, usize> = other
        .ids
        .iter()
        .enumerate()
        .map(|(j, &id)| (id, j))
        .collect();
    let rows = first
        .ids
        .iter()
        .zip(&first.labels)
        .map(|(&id, &label)| {
            let &j = index.get(&id).ok_or_else(|| EvalError::EnsembleIds {
                member,
                detail: format!("has no sample {id}"),
            })?;
            if other.labels[j] != label {
                return Err(EvalError::EnsembleLabels {
                    member,
                    id,
                    expected: label,
                    found: other.labels[j],
                });
            }
            Ok(j)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if other.len() != first.len() {
        let known: HashSet<u64> = first.ids.iter().copied().collect();
        let extra = other.ids.iter().find(|id| !known.contains(id));
        return Err(EvalError::EnsembleIds {
            member,
            detail: format!(
                "has {} samples, member 0 has {}; sample {} is not in member 0",
                other.len(),
                first.len(),
                extra.expect("more samples, all of member 0's among them")
            ),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_probability_then_lowest_index() {
        let row = [0.1, 0.3, 0.1, 0.3, 0.2];
        assert_eq!(top_k(&row, 1), vec![1]);
        assert_eq!(top_k(&row, 3), vec![1, 3, 4]);
        assert_eq!(top_k(&row, 5), vec![1, 3, 4, 0, 2]);
        assert_eq!(top_k(&row, 9), vec![1, 3, 4, 0, 2]);
    }

    #[test]
    fn softmax_survives_huge_logits() {
        let p = crop_mean_softmax(0, &[1000.0, 0.0, -1000.0], 3).unwrap();
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn per_sample_fields_accept_both_layouts() {
        assert_eq!(
            per_sample("ids", &[7u64, 7, 9, 9], 4, 2).unwrap(),
            vec![7, 9]
        );
        assert_eq!(per_sample("ids", &[7u64, 9], 4, 2).unwrap(), vec![7, 9]);
        let err = per_sample("ids", &[7u64, 7, 9, 8], 4, 2).unwrap_err();
        assert!(matches!(
            err,
            EvalError::CropsDisagree {
                image: 3,
                expected: 9,
                found: 8,
                ..
            }
        ));
        assert!(matches!(
            per_sample("labels", &[1u32, 2, 3], 4, 2),
            Err(EvalError::PerSampleLength { found: 3, .. })
        ));
    }

    #[test]
    fn a_failed_batch_leaves_nothing_behind() {
        let mut e = Evaluation::new(2, 1);
        e.add_batch(&[1], &[0], &[0.0, 1.0]).unwrap();
        let err = e
            .add_batch(&[2, 1], &[0, 1], &[0.0, 1.0, 2.0, 3.0])
            .unwrap_err();
        assert!(matches!(err, EvalError::DuplicateId { id: 1 }));
        assert_eq!(e.len(), 1);
    }
}
