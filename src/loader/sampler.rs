//! Which samples make up training batch `k`: a pure function of (seed, samples, weights, k).
//!
//! `shuffle` walks a fresh permutation each epoch (batches run across epoch boundaries);
//! the other kinds draw with replacement, each batch from its own random stream, with
//! per-sample probabilities: uniform (`replacement`, the original), 1/n_c (`balanced`: every
//! class equally often), max(n_c, n_max/2)/n_c (`half-balanced`: each class as often as if it
//! had been oversampled to at least half the largest, the original's later fix), or the
//! given weights (`weighted`, the score stage's λ).

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
    seed: u64,
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
            SamplerKind::Shuffle | SamplerKind::Replacement => None,
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
            SamplerKind::Weighted => {
                let weights = weights.ok_or_else(|| {
                    LoaderError::Weights("the weighted sampler needs weights".into())
                })?;
                if weights.len() != labels.len() {
                    return Err(LoaderError::Weights(format!(
                        "{} weights for {} samples",
                        weights.len(),
                        labels.len()
                    )));
                }
                if let Some(i) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
                    return Err(LoaderError::Weights(format!(
                        "weight {i} is {}",
                        weights[i]
                    )));
                }
                Some(weights.iter().map(|&w| f64::from(w)).collect())
            }
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

    #[test]
    fn bad_weights_are_refused() {
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[1.0]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[1.0, f32::NAN]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Weighted, &[0, 1], Some(&[0.0, 0.0]), 0).is_err());
        assert!(Sampler::new(SamplerKind::Shuffle, &[], None, 0).is_err());
    }
}
