//! Evaluation shared by the ranks of a data-parallel run. In: the ids of the samples to
//! evaluate (the same list on every rank), the collective joining the ranks, and a function
//! that predicts a list of ids on this rank. Out, on every rank: the per-class hits of all the
//! samples.
//!
//! Each rank predicts one contiguous share of the ids ([`shard_rows`]: shares differ by at
//! most one sample, some may be empty), nothing padded, so every sample is scored exactly once
//! (PyTorch's `DistributedSampler` pads shards with repeated samples, which skews the
//! accuracy). The ranks then make exactly one collective call, whatever their share's length,
//! so ranks with shorter (or empty) shares never wait at a collective the others skip.

use std::error::Error;

use candle_core::{Device, Tensor};

use super::{ClassHits, EvalError, Predictions};
use crate::runtime::{shard_rows, Collective};

/// Counts travel as f32, exact up to 2²⁴: a class can hold no more samples than the ids.
const EXACT_F32_COUNTS: usize = 1 << 24;

/// The hits over `ids` of `num_classes` classes, this rank predicting its share with
/// `predict` (called once, with the share's ids, unless the share is empty).
pub fn evaluate_sharded<E: Into<Box<dyn Error + Send + Sync>>>(
    ids: &[u64],
    num_classes: usize,
    collective: &mut dyn Collective,
    device: &Device,
    predict: impl FnOnce(&[u64]) -> Result<Predictions, E>,
) -> Result<ClassHits, EvalError> {
    if ids.len() >= EXACT_F32_COUNTS {
        return Err(EvalError::TooManyToShard { samples: ids.len() });
    }
    let rank = collective.rank();
    let (start, len) = shard_rows(ids.len(), rank, collective.world_size());
    let shard = &ids[start..start + len];
    let local = match shard.is_empty() {
        true => ClassHits::zero(num_classes),
        false => {
            let predictions = predict(shard).map_err(|e| EvalError::Rank {
                rank,
                source: e.into(),
            })?;
            check_shard(rank, shard, num_classes, &predictions)?;
            ClassHits::of(&predictions)
        }
    };
    let counts: Vec<f32> = local
        .per_class()
        .iter()
        .flatten()
        .map(|&c| c as f32)
        .collect();
    let summed = collective
        .all_reduce_sum(&Tensor::from_vec(counts, num_classes * 3, device)?)?
        .to_vec1::<f32>()?;
    let hits = ClassHits::from_per_class(
        summed
            .chunks_exact(3)
            .map(|c| [c[0] as u64, c[1] as u64, c[2] as u64])
            .collect(),
    );
    if hits.samples() != ids.len() as u64 {
        return Err(EvalError::ShardCoverage {
            expected: ids.len(),
            found: hits.samples(),
        });
    }
    Ok(hits)
}

/// The predictions of a share hold each of its ids once, and nothing else.
fn check_shard(
    rank: usize,
    shard: &[u64],
    num_classes: usize,
    predictions: &Predictions,
) -> Result<(), EvalError> {
    let mut expected = shard.to_vec();
    let mut found = predictions.ids().to_vec();
    expected.sort_unstable();
    found.sort_unstable();
    let detail = match () {
        _ if predictions.num_classes() != num_classes => format!(
            "{} classes predicted, {num_classes} expected",
            predictions.num_classes()
        ),
        _ if found != expected => format!(
            "{} samples predicted for a share of {}, or other ids",
            found.len(),
            expected.len()
        ),
        _ => return Ok(()),
    };
    Err(EvalError::Rank {
        rank,
        source: detail.into(),
    })
}
