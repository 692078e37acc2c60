//! The variational E-step of one document (Hoffman et al. 2010, Algorithm 2's inner loop,
//! as gensim's `LdaModel.inference`), written so the loops over topics vectorise.
//!
//! `beta` rows are `exp(E[log β_w])` for the words a document can use, one row of K per word.
//! θ̃ = exp(ψ(γ)) is kept without the common factor exp(−ψ(Σγ)): both the γ update and the
//! sufficient statistics are invariant to scaling θ̃, so that factor is never computed.

use std::collections::TryReserveError;

use rayon::prelude::*;

use super::math::exp_digamma;

/// How long the E-step iterates on each document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EStepSettings {
    pub iterations: usize,
    /// Stop when the mean absolute change of γ falls below this (gensim's `gamma_threshold`).
    pub tolerance: f32,
}

/// The document-topic prior α, with exp(ψ(α)) computed once for all documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    pub alpha: Vec<f32>,
    exp_digamma: Vec<f32>,
}

impl Prior {
    pub fn new(alpha: Vec<f32>) -> Prior {
        let exp_digamma = alpha.iter().map(|&a| exp_digamma(a)).collect();
        Prior { alpha, exp_digamma }
    }
}

/// What the E-step leaves for one document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocFit {
    /// Variational Dirichlet parameter over topics.
    pub gamma: Vec<f32>,
    /// exp(ψ(γ)) (unnormalised, see the module doc).
    pub theta: Vec<f32>,
    /// count / φ-normaliser for each of the document's words.
    pub weights: Vec<f32>,
    /// The topics with θ̃ > 0 when they are few (else `None`: use all).
    pub active: Option<Vec<u32>>,
    pub iterations: usize,
}

/// Guards 0/0 where every topic gives a word (almost) no mass.
const TINY: f32 = 1e-30;

/// Fits γ for one document whose words are `rows` (indices of `beta` rows) with `counts`.
/// The initial γ is α + N/K (deterministic: no per-document random state to thread through).
/// Runs the same code compiled for AVX2 where the CPU has it: every operation is either
/// elementwise or summed in fixed lanes, so both builds give bit-identical results.
pub fn fit_doc(
    prior: &Prior,
    rows: &[u32],
    counts: &[f32],
    beta: &[f32],
    settings: EStepSettings,
) -> DocFit {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { fit_doc_avx2(prior, rows, counts, beta, settings) };
        }
    }
    fit_doc_portable(prior, rows, counts, beta, settings)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fit_doc_avx2(
    prior: &Prior,
    rows: &[u32],
    counts: &[f32],
    beta: &[f32],
    settings: EStepSettings,
) -> DocFit {
    fit_doc_portable(prior, rows, counts, beta, settings)
}

#[inline(always)]
fn fit_doc_portable(
    prior: &Prior,
    rows: &[u32],
    counts: &[f32],
    beta: &[f32],
    settings: EStepSettings,
) -> DocFit {
    let alpha = &prior.alpha[..];
    let k = alpha.len();
    let total: f32 = counts.iter().sum();
    let mut gamma: Vec<f32> = alpha.iter().map(|a| a + total / k as f32).collect();
    let mut theta: Vec<f32> = gamma.iter().map(|&g| exp_digamma(g)).collect();
    let mut topics = ActiveTopics::new(k);
    topics.refresh(&mut theta);
    let mut weights = vec![0.0f32; rows.len()];
    set_weights(&theta, &topics, rows, counts, beta, &mut weights);
    let mut acc = vec![0.0f32; k];
    let mut iterations = 0;
    while iterations < settings.iterations && !rows.is_empty() {
        iterations += 1;
        acc.fill(0.0);
        for (&row, &w) in rows.iter().zip(&weights) {
            let b = &beta[row as usize * k..][..k];
            match &topics.sparse {
                Some(active) => active
                    .iter()
                    .for_each(|&t| acc[t as usize] += w * b[t as usize]),
                None => acc.iter_mut().zip(b).for_each(|(a, &bv)| *a += w * bv),
            }
        }
        // A topic with θ̃ = 0 gets exactly α: its accumulator is 0 in both paths.
        let mut change = 0.0f32;
        for ((g, &a), (&t, &acc_k)) in gamma.iter_mut().zip(alpha).zip(theta.iter().zip(&acc)) {
            let new = a + t * acc_k;
            change += (new - *g).abs();
            *g = new;
        }
        match &topics.sparse {
            // Topics outside the list had θ̃ = 0, so their γ is exactly α: their new θ̃ is
            // exp(ψ(α)), precomputed. Same values as the dense loop, K fewer ψ per pass.
            Some(active) => {
                theta.copy_from_slice(&prior.exp_digamma);
                for &t in active {
                    theta[t as usize] = exp_digamma(gamma[t as usize]);
                }
            }
            None => {
                for (t, &g) in theta.iter_mut().zip(&gamma) {
                    *t = exp_digamma(g);
                }
            }
        }
        topics.refresh(&mut theta);
        set_weights(&theta, &topics, rows, counts, beta, &mut weights);
        if change / (k as f32) < settings.tolerance {
            break;
        }
    }
    DocFit {
        gamma,
        theta,
        weights,
        active: topics.sparse,
        iterations,
    }
}

/// Relative weight below which a topic's θ̃ is set to 0: far below f32 resolution of the
/// sums it enters, so results do not change, but the topic leaves the document's loops.
pub const PRUNE_RELATIVE: f32 = 1e-9;

/// The topics a document still uses. Once γ_k is near a small α_k, θ̃_k = exp(ψ(γ_k)) is
/// negligible (e^−83 at γ = 0.012); such topics are zeroed, and with few topics left the
/// loops run over those alone (at K = 500 a document typically keeps a few dozen).
struct ActiveTopics {
    k: usize,
    /// `Some(topics)` when few enough are active for indexed loops to beat dense ones.
    sparse: Option<Vec<u32>>,
    scratch: Vec<u32>,
}

impl ActiveTopics {
    fn new(k: usize) -> ActiveTopics {
        ActiveTopics {
            k,
            sparse: None,
            scratch: Vec::with_capacity(k),
        }
    }

    /// Zeroes negligible θ̃ and lists the topics left.
    #[inline(always)]
    fn refresh(&mut self, theta: &mut [f32]) {
        let max = theta.iter().fold(0.0f32, |m, &t| m.max(t));
        let floor = max * PRUNE_RELATIVE;
        for t in theta.iter_mut() {
            if *t < floor {
                *t = 0.0;
            }
        }
        let mut list = self
            .sparse
            .take()
            .unwrap_or_else(|| std::mem::take(&mut self.scratch));
        list.clear();
        list.extend((0..self.k as u32).filter(|&t| theta[t as usize] > 0.0));
        // Indexed loops do not vectorise: worth it below about a quarter of the topics.
        if list.len() * 4 < self.k {
            self.sparse = Some(list);
        } else {
            self.scratch = list;
        }
    }
}

#[inline(always)]
fn set_weights(
    theta: &[f32],
    topics: &ActiveTopics,
    rows: &[u32],
    counts: &[f32],
    beta: &[f32],
    weights: &mut [f32],
) {
    let k = theta.len();
    for ((w, &row), &c) in weights.iter_mut().zip(rows).zip(counts) {
        let b = &beta[row as usize * k..][..k];
        let norm = match &topics.sparse {
            Some(active) => active
                .iter()
                .map(|&t| theta[t as usize] * b[t as usize])
                .sum(),
            None => dot(theta, b),
        };
        *w = c / (norm + TINY);
    }
}

/// Dot product in 8 independent lanes, so it vectorises without reassociation licence.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Buffers of [`beta_rows`], kept between batches: fresh multi-megabyte buffers would be
/// zeroed page by page by the kernel on every update.
#[derive(Debug, Default)]
pub struct BetaBuffers {
    by_topic: Vec<f32>,
    pub rows: Vec<f32>,
}

impl BetaBuffers {
    /// Buffers with room for `len` values each ([K, U] for up to `len` = K·U), so that
    /// [`beta_rows`] never grows them.
    pub fn with_capacity(len: usize) -> Result<BetaBuffers, TryReserveError> {
        Ok(BetaBuffers {
            by_topic: reserved(len)?,
            rows: reserved(len)?,
        })
    }
}

/// An empty vector with room for exactly `len` values, or the allocator's refusal.
pub fn reserved(len: usize) -> Result<Vec<f32>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    Ok(v)
}

/// `exp(E[log β_kw])` for the given words, as rows of K in `buffers.rows`:
/// ψ(λ_kw) − ψ(Σ_w λ_kw). `lambda` is [K, V] row-major; `row_digamma[k]` = ψ(Σ_w λ_kw).
pub fn beta_rows(
    lambda: &[f32],
    vocab: usize,
    row_digamma: &[f64],
    words: &[u32],
    buffers: &mut BetaBuffers,
) {
    let k = row_digamma.len();
    let u = words.len();
    // Topic-major first: each topic reads one λ row (cache-resident) and exp(ψ) runs over a
    // contiguous slice, so it vectorises.
    let by_topic = &mut buffers.by_topic;
    by_topic.resize(k * u, 0.0);
    by_topic
        .par_chunks_mut(u.max(1))
        .enumerate()
        .for_each(|(t, out)| {
            let row = &lambda[t * vocab..(t + 1) * vocab];
            for (o, &w) in out.iter_mut().zip(words) {
                *o = row[w as usize];
            }
            exp_digamma_scaled(out, (-row_digamma[t]).exp() as f32);
        });
    // Transpose to [U, K] in blocks of words, so reads stay contiguous and writes in cache.
    const BLOCK: usize = 64;
    let rows = &mut buffers.rows;
    rows.resize(u * k, 0.0);
    rows.par_chunks_mut((BLOCK * k).max(1))
        .enumerate()
        .for_each(|(b, block)| {
            let first = b * BLOCK;
            let n = block.len() / k.max(1);
            for t in 0..k {
                let src = &by_topic[t * u + first..t * u + first + n];
                for (i, &x) in src.iter().enumerate() {
                    block[i * k + t] = x;
                }
            }
        });
}

/// `xs[i] ← exp(ψ(xs[i])) · scale`, compiled for AVX2 where the CPU has it (bit-identical).
pub fn exp_digamma_scaled(xs: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { exp_digamma_scaled_avx2(xs, scale) };
        }
    }
    exp_digamma_scaled_portable(xs, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_digamma_scaled_avx2(xs: &mut [f32], scale: f32) {
    exp_digamma_scaled_portable(xs, scale)
}

#[inline(always)]
fn exp_digamma_scaled_portable(xs: &mut [f32], scale: f32) {
    for x in xs {
        *x = exp_digamma(*x) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.25).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn gamma_sums_to_alpha_plus_length_and_empty_doc_keeps_prior() {
        // Two topics, three words: word 0 only in topic 0, word 2 only in topic 1.
        let beta = [0.9, 1e-6, 0.05, 0.05, 1e-6, 0.9];
        let alpha = Prior::new(vec![0.5, 0.5]);
        let s = EStepSettings {
            iterations: 200,
            tolerance: 1e-6,
        };
        let fit = fit_doc(&alpha, &[0, 2], &[3.0, 1.0], &beta, s);
        let sum: f32 = fit.gamma.iter().sum();
        assert!((sum - 5.0).abs() < 1e-3, "{sum}");
        assert!((fit.gamma[0] - 3.5).abs() < 1e-2 && (fit.gamma[1] - 1.5).abs() < 1e-2);
        let empty = fit_doc(&alpha, &[], &[], &beta, s);
        assert_eq!(empty.gamma, [0.5, 0.5]);
        assert_eq!(empty.iterations, 0);
    }

    /// The E-step in f64 with libm's exp and an exact ψ, no pruning: the textbook loop.
    fn reference_gamma(alpha: &[f64], rows: &[u32], counts: &[f64], beta: &[f64]) -> Vec<f64> {
        use crate::lda::math::digamma;
        let k = alpha.len();
        let total: f64 = counts.iter().sum();
        let mut gamma: Vec<f64> = alpha.iter().map(|a| a + total / k as f64).collect();
        for _ in 0..500 {
            let theta: Vec<f64> = gamma.iter().map(|&g| digamma(g).exp()).collect();
            let mut next = alpha.to_vec();
            for (&r, &c) in rows.iter().zip(counts) {
                let b = &beta[r as usize * k..][..k];
                let norm: f64 = theta.iter().zip(b).map(|(t, b)| t * b).sum();
                for t in 0..k {
                    next[t] += c * theta[t] * b[t] / norm;
                }
            }
            gamma = next;
        }
        gamma
    }

    #[test]
    fn pruned_e_step_matches_the_textbook_loop() {
        // 40 topics over 80 words; topic t favours words 2t and 2t+1. A document about
        // topics 3 and 17 leaves almost every other topic at exactly α (the sparse path).
        let (k, v) = (40, 80);
        let beta: Vec<f64> = (0..v)
            .flat_map(|w| (0..k).map(move |t| if w / 2 == t { 0.4 } else { 0.2 / v as f64 }))
            .collect();
        let alpha = vec![0.002; k];
        let rows = [6u32, 7, 34, 35, 50];
        let counts = [4.0, 2.0, 3.0, 1.0, 1.0];
        let want = reference_gamma(&alpha, &rows, &counts, &beta);
        let fit = fit_doc(
            &Prior::new(alpha.iter().map(|&a| a as f32).collect()),
            &rows,
            &counts.map(|c| c as f32),
            &beta.iter().map(|&b| b as f32).collect::<Vec<_>>(),
            EStepSettings {
                iterations: 500,
                tolerance: 1e-7,
            },
        );
        let active = fit.theta.iter().filter(|&&t| t > 0.0).count();
        assert!(
            active * 4 < k,
            "{active} active topics: the dense path was tested instead"
        );
        for (got, want) in fit.gamma.iter().zip(&want) {
            assert!(
                (*got as f64 - want).abs() < 1e-3 * want.max(1.0),
                "{:?} vs {want:?}",
                fit.gamma
            );
        }
    }
}
