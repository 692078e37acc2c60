//! The variational E-step of one document (Hoffman et al. 2010, Algorithm 2's inner loop,
//! as gensim's `LdaModel.inference`), written so the loops over topics vectorise.
//!
//! `beta` rows are `exp(E[log β_w])` for the words a document can use, one row of K per word.
//! θ̃ = exp(ψ(γ)) is kept without the common factor exp(−ψ(Σγ)): both the γ update and the
//! sufficient statistics are invariant to scaling θ̃, so that factor is never computed.

use rayon::prelude::*;

use super::math::exp_digamma;

/// How long the E-step iterates on each document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EStepSettings {
    pub iterations: usize,
    /// Stop when the mean absolute change of γ falls below this (gensim's `gamma_threshold`).
    pub tolerance: f32,
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
    pub iterations: usize,
}

/// Guards 0/0 where every topic gives a word (almost) no mass.
const TINY: f32 = 1e-30;

/// Fits γ for one document whose words are `rows` (indices of `beta` rows) with `counts`.
/// The initial γ is α + N/K (deterministic: no per-document random state to thread through).
pub fn fit_doc(
    alpha: &[f32],
    rows: &[u32],
    counts: &[f32],
    beta: &[f32],
    settings: EStepSettings,
) -> DocFit {
    let k = alpha.len();
    let total: f32 = counts.iter().sum();
    let mut gamma: Vec<f32> = alpha.iter().map(|a| a + total / k as f32).collect();
    let mut theta: Vec<f32> = gamma.iter().map(|&g| exp_digamma(g)).collect();
    let mut weights = vec![0.0f32; rows.len()];
    set_weights(&theta, rows, counts, beta, &mut weights);
    let mut acc = vec![0.0f32; k];
    let mut iterations = 0;
    while iterations < settings.iterations && !rows.is_empty() {
        iterations += 1;
        acc.fill(0.0);
        for (&row, &w) in rows.iter().zip(&weights) {
            let b = &beta[row as usize * k..][..k];
            for (a, &bv) in acc.iter_mut().zip(b) {
                *a += w * bv;
            }
        }
        let mut change = 0.0f32;
        for ((g, &a), (&t, &acc_k)) in gamma.iter_mut().zip(alpha).zip(theta.iter().zip(&acc)) {
            let new = a + t * acc_k;
            change += (new - *g).abs();
            *g = new;
        }
        for (t, &g) in theta.iter_mut().zip(&gamma) {
            *t = exp_digamma(g);
        }
        set_weights(&theta, rows, counts, beta, &mut weights);
        if change / (k as f32) < settings.tolerance {
            break;
        }
    }
    DocFit {
        gamma,
        theta,
        weights,
        iterations,
    }
}

fn set_weights(theta: &[f32], rows: &[u32], counts: &[f32], beta: &[f32], weights: &mut [f32]) {
    let k = theta.len();
    for ((w, &row), &c) in weights.iter_mut().zip(rows).zip(counts) {
        *w = c / (dot(theta, &beta[row as usize * k..][..k]) + TINY);
    }
}

/// Dot product in 8 independent lanes, so it vectorises without reassociation licence.
#[inline]
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

/// `exp(E[log β_kw])` for the given words, as rows of K: ψ(λ_kw) − ψ(Σ_w λ_kw).
/// `lambda` is [K, V] row-major; `row_digamma[k]` = ψ(Σ_w λ_kw).
pub fn beta_rows(lambda: &[f32], vocab: usize, row_digamma: &[f64], words: &[u32]) -> Vec<f32> {
    let k = row_digamma.len();
    let factor: Vec<f32> = row_digamma.iter().map(|&d| (-d).exp() as f32).collect();
    let mut rows = vec![0.0f32; words.len() * k];
    rows.par_chunks_mut(k.max(1))
        .with_min_len(64)
        .zip(words.par_iter())
        .for_each(|(row, &w)| {
            for (t, (r, &f)) in row.iter_mut().zip(&factor).enumerate() {
                *r = exp_digamma(lambda[t * vocab + w as usize]) * f;
            }
        });
    rows
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
        let alpha = [0.5, 0.5];
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
}
