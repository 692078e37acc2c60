//! The holdout (`train.holdout`): a share of each class's training samples kept out of
//! training, to compare epochs on, so that the best epoch is never chosen on the validation
//! set. In: the training samples, the share and the seed; the run's length. Out: the samples
//! to train on and those held out ([`split`]), and the steps that end the epochs evaluated on
//! them ([`epoch_ends`]).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::TrainError;

/// The ChaCha stream the holdout is drawn from: batches and dropout use streams 0, 1, 2, … of
/// the same seed, one per batch or step; this one no run reaches.
const HOLDOUT_STREAM: u64 = u64::MAX;

/// The training samples (store id, label) as [`split`] parts them, each in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parted {
    pub train: Vec<(u64, u32)>,
    pub held_out: Vec<(u64, u32)>,
}

/// `samples` (store id, label) parted into those to train on and those held out: of each
/// class, `round(share × its samples)` drawn with `seed`. The same samples, share and seed
/// always hold out the same samples, whatever the number of ranks.
pub fn split(samples: &[(u64, u32)], share: f64, seed: u64) -> Parted {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &(_, label)) in samples.iter().enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(HOLDOUT_STREAM);
    let mut held = vec![false; samples.len()];
    for members in by_class.values_mut() {
        let count = (share * members.len() as f64).round() as usize;
        members.shuffle(&mut rng);
        members.iter().take(count).for_each(|&i| held[i] = true);
    }
    let (train, held_out): (Vec<_>, Vec<_>) = samples.iter().zip(held).partition(|(_, held)| !held);
    let strip = |part: Vec<(&(u64, u32), bool)>| -> Vec<(u64, u32)> {
        part.into_iter().map(|(s, _)| *s).collect()
    };
    Parted {
        train: strip(train),
        held_out: strip(held_out),
    }
}

/// The steps that end every `every`-th epoch of a run of `iterations` steps over
/// `epoch_samples` samples in global batches of `global_batch`, each with its epoch: epoch e
/// ends at step ⌈e · samples / batch⌉, as [`super::iterations`] counts epochs. A run too short
/// to end one of them is an error: it would have no best epoch.
pub fn epoch_ends(
    epoch_samples: u64,
    global_batch: usize,
    every: u64,
    iterations: u64,
) -> Result<BTreeMap<u64, u64>, TrainError> {
    let end = |epoch: u64| (epoch * epoch_samples).div_ceil(global_batch.max(1) as u64);
    let ends: BTreeMap<u64, u64> = (1..)
        .map(|k| k * every.max(1))
        .map(|epoch| (end(epoch), epoch))
        .take_while(|&(step, _)| step <= iterations)
        .collect();
    if ends.is_empty() {
        return Err(TrainError::NoHoldoutEpoch {
            every,
            epochs: iterations as f64 * global_batch as f64 / epoch_samples.max(1) as f64,
        });
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_holds_out_its_share_the_same_for_the_same_seed() {
        // Class 0: 10 samples, class 1: 4, class 2: 1 (too small to hold one out at 0.2).
        let samples: Vec<(u64, u32)> = (0..15u64)
            .map(|id| {
                (
                    id,
                    if id < 10 {
                        0
                    } else if id < 14 {
                        1
                    } else {
                        2
                    },
                )
            })
            .collect();
        let Parted { train, held_out } = split(&samples, 0.2, 7);
        let count = |part: &[(u64, u32)], class| part.iter().filter(|s| s.1 == class).count();
        let held_per_class = [0, 1, 2].map(|class| count(&held_out, class));
        assert_eq!(held_per_class, [2, 1, 0]);
        assert_eq!(train.len() + held_out.len(), samples.len());
        assert!(train.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
        assert!(held_out.iter().all(|s| !train.contains(s)));
        assert_eq!(split(&samples, 0.2, 7).held_out, held_out);
        assert_ne!(split(&samples, 0.2, 8).held_out, held_out, "another seed");
        assert_eq!(split(&samples, 0.0, 7).train, samples);
    }

    #[test]
    fn epochs_end_where_an_epoch_length_counts_them() {
        // 10 samples in batches of 4: epochs end at steps 3, 5, 8, 10, 13.
        let ends = epoch_ends(10, 4, 2, 13).unwrap();
        assert_eq!(ends.into_iter().collect::<Vec<_>>(), [(5, 2), (10, 4)]);
        for epochs in 1..6 {
            let last =
                super::super::iterations(crate::recipe::params::TrainLength::Epochs(epochs), 10, 4);
            assert_eq!(epoch_ends(10, 4, 1, last).unwrap()[&last], epochs);
        }
        let err = epoch_ends(10, 4, 3, 7).unwrap_err().to_string();
        assert!(err.contains("2.80 epochs"), "{err}");
    }
}
