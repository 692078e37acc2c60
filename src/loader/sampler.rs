//! Which samples make up training batch `k`: a pure function of (seed, samples, weights, k).
//!
//! `shuffle` walks a fresh permutation each epoch (batches run across epoch boundaries);
//! the other kinds draw with replacement, each batch from its own random stream, with
//! per-sample probabilities: uniform (`replacement`, the original), 1/n_c (`balanced`: every
//! class equally often), max(n_c, n_max/2)/n_c (`half-balanced`: each class as often as if it
//! had been oversampled to at least half the largest, the original's later fix), or the
//! given weights (`weighted`, the score stage's λ). `curriculum` draws uniformly, with
//! replacement, from the samples ranked in the most plausible share of their class by the
//! given weights (the text scores); the share grows linearly from its start to 1 as images are
//! seen.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::LoaderError;
use crate::recipe::params::SamplerKind;

/// The random stream of batch `k` (sample draws, then crops and mirrors).
pub fn batch_rng(seed: u64, k: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(k);
    rng
}

pub struct Sampler {
    kind: SamplerKind,
    len: usize,
    /// Cumulative sampling weights (for the kinds that draw with replacement by weight).
    cumulative: Option<Vec<f64>>,
    /// The curriculum's order of the samples (for [`SamplerKind::Curriculum`]).
    curriculum: Option<CurriculumOrder>,
    seed: u64,
}

/// Sample positions most plausible first: by the share of its class ranked above a sample
/// (`enters_at`, ascending), then by position.
struct CurriculumOrder {
    positions: Vec<u32>,
    enters_at: Vec<f32>,
}

impl CurriculumOrder {
    fn new(labels: &[u32], scores: &[f32]) -> Self {
        let classes = *labels.iter().max().expect("not empty") as usize + 1;
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); classes];
        for (position, &label) in labels.iter().enumerate() {
            members[label as usize].push(position as u32);
        }
        let mut ranked: Vec<(f32, u32)> = Vec::with_capacity(labels.len());
        for members in &mut members {
            // Highest score first; `sort_by` is stable, so ties stay in position order.
            members.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
            let n = members.len() as f32;
            ranked.extend(
                members
                    .iter()
                    .enumerate()
                    .map(|(rank, &position)| (rank as f32 / n, position)),
            );
        }
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (enters_at, positions) = ranked.into_iter().unzip();
        Self {
            positions,
            enters_at,
        }
    }

    /// How many samples (from the front of `positions`) are drawn from at `share`.
    fn admitted(&self, share: f64) -> usize {
        self.enters_at
            .partition_point(|&e| f64::from(e) < share)
            .max(1)
    }
}

/// The last epoch permutation a worker built (they are walked in order, so one is enough).
#[derive(Default)]
pub struct EpochCache {
    epoch: Option<u64>,
    permutation: Arc<Vec<u32>>,
}

impl Sampler {
    pub fn new(
        kind: SamplerKind,
        labels: &[u32],
        weights: Option<&[f32]>,
        seed: u64,
    ) -> Result<Sampler, LoaderError> {
        if labels.is_empty() {
            return Err(LoaderError::NoSamples);
        }
        let per_sample: Option<Vec<f64>> = match kind {
            SamplerKind::Balanced | SamplerKind::HalfBalanced => {
                let classes = *labels.iter().max().expect("not empty") as usize + 1;
                let mut counts = vec![0f64; classes];
                labels.iter().for_each(|&l| counts[l as usize] += 1.0);
                let largest = counts.iter().cloned().fold(0.0, f64::max);
                let class_share = |n: f64| {
                    if kind == SamplerKind::Balanced {
                        1.0
                    } else {
                        n.max(largest / 2.0)
                    }
                };
                Some(
                    labels
                        .iter()
                        .map(|&l| class_share(counts[l as usize]) / counts[l as usize])
                        .collect(),
                )
            }
            SamplerKind::Shuffle | SamplerKind::Replacement | SamplerKind::Curriculum { .. } => {
                None
            }
            SamplerKind::Weighted => {
                let weights = checked_weights(weights, labels.len(), |w| w >= 0.0)?;
                Some(weights.iter().map(|&w| f64::from(w)).collect())
            }
        };
        let curriculum = match kind {
            SamplerKind::Curriculum { .. } => {
                let scores = checked_weights(weights, labels.len(), |_| true)?;
                Some(CurriculumOrder::new(labels, scores))
            }
            _ => None,
        };
        let cumulative = per_sample.map(|w| {
            w.iter()
                .scan(0.0, |sum, w| {
                    *sum += w;
                    Some(*sum)
                })
                .collect::<Vec<f64>>()
        });
        if cumulative
            .as_ref()
            .is_some_and(|c| c.last().copied().unwrap_or(0.0) <= 0.0)
        {
            return Err(LoaderError::Weights("all weights are zero".into()));
        }
        Ok(Sampler {
            kind,
            len: labels.len(),
            cumulative,
            curriculum,
            seed,
        })
    }

    /// Sample positions of batch `k` of `batch_size`, drawn from `rng` = [`batch_rng`]`(seed, k)`.
    pub fn batch(
        &self,
        k: u64,
        batch_size: usize,
        rng: &mut ChaCha8Rng,
        cache: &mut EpochCache,
    ) -> Vec<usize> {
        match (&self.cumulative, self.kind) {
            (_, SamplerKind::Curriculum { start, ramp_epochs }) => {
                let order = self.curriculum.as_ref().expect("built with the kind");
                let epochs = (k * batch_size as u64) as f64 / self.len as f64;
                let share = start + (1.0 - start) * (epochs / ramp_epochs).min(1.0);
                let admitted = order.admitted(share);
                (0..batch_size)
                    .map(|_| order.positions[rng.random_range(0..admitted)] as usize)
                    .collect()
            }
            (_, SamplerKind::Shuffle) => {
                let first = k * batch_size as u64;
                (first..first + batch_size as u64)
                    .map(|position| {
                        let epoch = position / self.len as u64;
                        if cache.epoch != Some(epoch) {
                            cache.permutation = Arc::new(self.permutation(epoch));
                            cache.epoch = Some(epoch);
                        }
                        cache.permutation[(position % self.len as u64) as usize] as usize
                    })
                    .collect()
            }
            (Some(cumulative), _) => {
                let total = *cumulative.last().expect("not empty");
                (0..batch_size)
                    .map(|_| {
                        let target = rng.random_range(0.0..total);
                        cumulative
                            .partition_point(|&c| c <= target)
                            .min(self.len - 1)
                    })
                    .collect()
            }
            (None, _) => (0..batch_size)
                .map(|_| rng.random_range(0..self.len))
                .collect(),
        }
    }

    fn permutation(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.len as u32).collect();
        // Stream numbers above 2^63 are never batch indices.
        order.shuffle(&mut batch_rng(self.seed, (1 << 63) | epoch));
        order
    }
}

/// `weights`, one per sample, each finite and `ok`.
fn checked_weights(
    weights: Option<&[f32]>,
    samples: usize,
    ok: impl Fn(f32) -> bool,
) -> Result<&[f32], LoaderError> {
    let weights =
        weights.ok_or_else(|| LoaderError::Weights("this sampler needs weights".into()))?;
    if weights.len() != samples {
        return Err(LoaderError::Weights(format!(
            "{} weights for {samples} samples",
            weights.len(),
        )));
    }
    if let Some(i) = weights.iter().position(|&w| !w.is_finite() || !ok(w)) {
        return Err(LoaderError::Weights(format!(
            "weight {i} is {}",
            weights[i]
        )));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw_counts(
        kind: SamplerKind,
        labels: &[u32],
        weights: Option<&[f32]>,
        batches: u64,
    ) -> Vec<u64> {
        let sampler = Sampler::new(kind, labels, weights, 7).unwrap();
        let mut counts = vec![0u64; labels.len()];
        let mut cache = EpochCache::default();
        for k in 0..batches {
            for i in sampler.batch(k, 64, &mut batch_rng(7, k), &mut cache) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn shuffle_visits_every_sample_once_per_epoch() {
        let labels = vec![0u32; 96];
        // 3 batches of 64 = exactly two epochs of 96.
        assert_eq!(
            draw_counts(SamplerKind::Shuffle, &labels, None, 3),
            vec![2; 96]
        );
    }

    #[test]
    fn weighted_never_draws_zero_weights() {
        let labels = vec![0u32; 4];
        let counts = draw_counts(
            SamplerKind::Weighted,
            &labels,
            Some(&[0.0, 1.0, 0.0, 3.0]),
            50,
        );
        assert_eq!((counts[0], counts[2]), (0, 0));
        let share = counts[3] as f64 / (counts[1] + counts[3]) as f64;
        assert!((share - 0.75).abs() < 0.03, "share {share}");
    }

    /// Within each class the more plausible half is drawn from first, the rest only once
    /// the share has grown past their rank; after the ramp every sample is drawn.
    #[test]
    fn the_curriculum_starts_with_each_class_s_best_share_and_grows_to_all() {
        // Class 0: 4 samples, class 1: 6; scores unrelated to position, one tie.
        let labels = [0, 1, 1, 0, 1, 0, 1, 1, 0, 1];
        let scores = [0.9, 0.1, 0.8, 0.2, 0.5, 0.7, 0.3, 0.5, 0.4, 0.9];
        let kind = SamplerKind::Curriculum {
            start: 0.5,
            ramp_epochs: 10.0,
        };
        let sampler = Sampler::new(kind, &labels, Some(&scores), 7).unwrap();
        let mut cache = EpochCache::default();
        let drawn = |ks: std::ops::Range<u64>, cache: &mut EpochCache| {
            let mut seen = std::collections::BTreeSet::new();
            for k in ks {
                seen.extend(sampler.batch(k, 10, &mut batch_rng(7, k), cache));
            }
            seen
        };
        // Batch 0 (share 0.5): class 0's best two (0.9 at 0, 0.7 at 5), class 1's best three
        // (0.9 at 9, 0.8 at 2, and of the tied 0.5s the earlier position, 4).
        let first = drawn(0..1, &mut cache);
        assert!(first.is_subset(&[0, 5, 9, 2, 4].into()), "{first:?}");
        assert!(drawn(0..2, &mut cache).len() >= 4);
        // One epoch in (share 0.55) the samples ranked at half their class enter: class 0's
        // third (0.4 at 8), class 1's fourth (the later 0.5, at 7); the worst not yet.
        let second = drawn(1..2, &mut cache);
        assert!(
            second.is_subset(&[0, 5, 9, 2, 4, 8, 7].into()),
            "{second:?}"
        );
        // After 10 epochs (100 images of 10 samples) every sample is drawn.
        assert_eq!(drawn(10..60, &mut cache).len(), 10);
        // Deterministic for the batch and seed.
        let again = Sampler::new(kind, &labels, Some(&scores), 7).unwrap();
        assert_eq!(
            again.batch(3, 10, &mut batch_rng(7, 3), &mut EpochCache::default()),
            sampler.batch(3, 10, &mut batch_rng(7, 3), &mut cache)
        );
        assert!(Sampler::new(kind, &labels, None, 7).is_err());
        assert!(Sampler::new(kind, &labels, Some(&[f32::NAN; 10]), 7).is_err());
    }

    #[test]
    fn bad_weights_are_refused() {
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[1.0]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[1.0, f32::NAN]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[0.0, 0.0]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Shuffle, &[], None, 0).is_err());
    }
}
