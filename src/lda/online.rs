//! Online variational Bayes for LDA (Hoffman, Blei & Bach 2010; gensim's `LdaModel.update`):
//! each mini-batch is fitted by the E-step with the current topics, and the topic-word
//! parameter λ moves towards the estimate that batch implies, with weight
//! ρ_t = (τ0 + t)^(−κ). Memory is O(K·V + batch): λ, plus the batch's own words, in
//! [`super::TOPIC_WORD_MATRICES`] matrices of up to [K, V], all reserved up front.
//!
//! Same result for a given seed whatever the thread count: documents are fitted
//! independently, each word's statistics are summed over its documents in batch order,
//! and each topic row of λ is updated on its own.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::estep::{beta_rows, fit_doc, reserved, BetaBuffers, DocFit, EStepSettings, Prior};
use super::math::{digamma, dirichlet_expectation, trigamma, GammaSampler};
use super::LdaError;
use crate::text::SparseDoc;

/// Settings of the trainer (the numeric part of `LdaParams`, resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineSettings {
    pub topics: usize,
    /// α per topic at the start.
    pub alpha: Vec<f64>,
    pub learn_alpha: bool,
    pub eta: f64,
    pub tau0: f64,
    pub kappa: f64,
    pub e_step: EStepSettings,
    /// Documents in the corpus (D): each batch's statistics are scaled by D / batch size.
    pub corpus_docs: u64,
}

/// What one update saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchStats {
    pub docs: usize,
    pub tokens: f64,
    /// Mean E-step iterations over the batch's non-empty documents.
    pub mean_iterations: f64,
    pub rho: f64,
}

/// The trainer's state: λ [K, V] and α.
pub struct OnlineLda {
    settings: OnlineSettings,
    vocab: usize,
    lambda: Vec<f32>,
    /// ψ(Σ_w λ_kw) per topic, refreshed after every update.
    row_digamma: Vec<f64>,
    alpha: Vec<f64>,
    updates: u64,
    /// Word id → row in the current batch's β rows (u32::MAX when absent); reused.
    slot: Vec<u32>,
    beta: BetaBuffers,
    sstats: Vec<f32>,
}

impl OnlineLda {
    /// λ starts as Gamma(100, 1/100) draws (as Hoffman's and gensim's code), one seeded
    /// stream per topic row so that initialisation is parallel and still deterministic.
    ///
    /// Every [K, V] matrix the trainer keeps is reserved here: a corpus whose matrices do not
    /// fit fails now with [`LdaError::Memory`], not with an abort in some later update.
    pub fn new(settings: OnlineSettings, vocab: usize, seed: u64) -> Result<OnlineLda, LdaError> {
        let memory = |source| LdaError::memory(settings.topics, vocab, source);
        // A size past usize fails as the allocator's capacity overflow.
        let len = settings.topics.saturating_mul(vocab);
        let mut lambda = reserved(len).map_err(memory)?;
        let beta = BetaBuffers::with_capacity(len).map_err(memory)?;
        let sstats = reserved(len).map_err(memory)?;
        lambda.resize(len, 0.0);
        lambda
            .par_chunks_mut(vocab.max(1))
            .enumerate()
            .for_each(|(k, row)| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(k as u64);
                let mut gamma = GammaSampler::new(100.0, 0.01);
                for x in row {
                    *x = gamma.sample(&mut rng) as f32;
                }
            });
        let mut lda = OnlineLda::with_lambda(settings, vocab, lambda);
        lda.beta = beta;
        lda.sstats = sstats;
        Ok(lda)
    }

    /// A trainer starting from a given λ [K, V] (tests, warm starts).
    pub fn with_lambda(settings: OnlineSettings, vocab: usize, lambda: Vec<f32>) -> OnlineLda {
        assert_eq!(
            lambda.len(),
            settings.topics * vocab,
            "lambda must be [K, V]"
        );
        let alpha = settings.alpha.clone();
        let mut lda = OnlineLda {
            settings,
            vocab,
            lambda,
            row_digamma: Vec::new(),
            alpha,
            updates: 0,
            slot: vec![u32::MAX; vocab],
            beta: BetaBuffers::default(),
            sstats: Vec::new(),
        };
        lda.refresh_row_digamma();
        lda
    }

    pub fn lambda(&self) -> &[f32] {
        &self.lambda
    }

    pub fn alpha(&self) -> &[f64] {
        &self.alpha
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn settings(&self) -> &OnlineSettings {
        &self.settings
    }

    pub fn vocab_len(&self) -> usize {
        self.vocab
    }

    pub fn into_parts(self) -> (Vec<f32>, Vec<f64>, u64) {
        (self.lambda, self.alpha, self.updates)
    }

    /// One online update on a mini-batch; returns the E-step's γ per document and stats.
    /// An empty batch changes nothing (it would only pull λ towards η).
    pub fn update(&mut self, batch: &[SparseDoc]) -> (Vec<Vec<f32>>, BatchStats) {
        if batch.is_empty() {
            let stats = BatchStats {
                docs: 0,
                tokens: 0.0,
                mean_iterations: 0.0,
                rho: 0.0,
            };
            return (Vec::new(), stats);
        }
        let k = self.settings.topics;
        let (words, rows) = self.local_words(batch);
        beta_rows(
            &self.lambda,
            self.vocab,
            &self.row_digamma,
            &words,
            &mut self.beta,
        );
        let beta = &self.beta.rows;
        let prior = Prior::new(self.alpha.iter().map(|&a| a as f32).collect());
        let e_step = self.settings.e_step;
        let fits: Vec<DocFit> = batch
            .par_iter()
            .zip(rows.par_iter())
            .map(|(doc, rows)| fit_doc(&prior, rows, &doc.counts, beta, e_step))
            .collect();
        let mut sstats = std::mem::take(&mut self.sstats);
        word_statistics(&fits, &rows, beta, words.len(), k, &mut sstats);

        let rho = (self.settings.tau0 + self.updates as f64).powf(-self.settings.kappa);
        if self.settings.learn_alpha {
            self.update_alpha(&fits, rho);
        }
        self.m_step(&words, &sstats, rho, batch.len());
        self.sstats = sstats;
        self.updates += 1;

        let fitted: Vec<&DocFit> = fits.iter().filter(|f| f.iterations > 0).collect();
        let stats = BatchStats {
            docs: batch.len(),
            tokens: batch.iter().map(SparseDoc::tokens).sum(),
            mean_iterations: fitted.iter().map(|f| f.iterations as f64).sum::<f64>()
                / fitted.len().max(1) as f64,
            rho,
        };
        (fits.into_iter().map(|f| f.gamma).collect(), stats)
    }

    /// The batch's distinct words (first-seen order) and each document's words as rows.
    fn local_words(&mut self, batch: &[SparseDoc]) -> (Vec<u32>, Vec<Vec<u32>>) {
        let mut words = Vec::new();
        let rows = batch
            .iter()
            .map(|doc| {
                doc.ids
                    .iter()
                    .map(|&id| {
                        let slot = &mut self.slot[id as usize];
                        if *slot == u32::MAX {
                            *slot = words.len() as u32;
                            words.push(id);
                        }
                        *slot
                    })
                    .collect()
            })
            .collect();
        for &w in &words {
            self.slot[w as usize] = u32::MAX;
        }
        (words, rows)
    }

    /// λ ← (1 − ρ) λ + ρ (η + D/|batch| · sstats), row by row.
    fn m_step(&mut self, words: &[u32], sstats: &[f32], rho: f64, batch_docs: usize) {
        let k = self.settings.topics;
        let keep = (1.0 - rho) as f32;
        let prior = (rho * self.settings.eta) as f32;
        let gain = (rho * self.settings.corpus_docs as f64 / batch_docs.max(1) as f64) as f32;
        let vocab = self.vocab.max(1);
        // ψ(row sum) is taken while the row is still in cache.
        self.row_digamma = self
            .lambda
            .par_chunks_mut(vocab)
            .enumerate()
            .map(|(t, row)| {
                for x in row.iter_mut() {
                    *x = keep * *x + prior;
                }
                for (u, &w) in words.iter().enumerate() {
                    row[w as usize] += gain * sstats[u * k + t];
                }
                digamma(row.iter().map(|&x| x as f64).sum())
            })
            .collect();
    }

    fn refresh_row_digamma(&mut self) {
        self.row_digamma = self
            .lambda
            .par_chunks(self.vocab.max(1))
            .map(|row| digamma(row.iter().map(|&x| x as f64).sum()))
            .collect();
    }

    /// One Newton step on α from the batch's γ, damped by ρ (Minka's fixed point as in
    /// gensim's `update_dir_prior`); skipped when it would make any α non-positive.
    fn update_alpha(&mut self, fits: &[DocFit], rho: f64) {
        let n = fits.len() as f64;
        let k = self.alpha.len();
        let mut logphat = vec![0.0f64; k];
        for fit in fits {
            let gamma: Vec<f64> = fit.gamma.iter().map(|&g| g as f64).collect();
            for (l, e) in logphat.iter_mut().zip(dirichlet_expectation(&gamma)) {
                *l += e / n;
            }
        }
        let alpha_sum: f64 = self.alpha.iter().sum();
        let grad: Vec<f64> = (0..k)
            .map(|i| n * (digamma(alpha_sum) - digamma(self.alpha[i]) + logphat[i]))
            .collect();
        let c = n * trigamma(alpha_sum);
        let q: Vec<f64> = self.alpha.iter().map(|&a| -n * trigamma(a)).collect();
        let b = grad.iter().zip(&q).map(|(g, q)| g / q).sum::<f64>()
            / (1.0 / c + q.iter().map(|q| 1.0 / q).sum::<f64>());
        let step: Vec<f64> = grad.iter().zip(&q).map(|(g, q)| -(g - b) / q).collect();
        if self.alpha.iter().zip(&step).all(|(a, s)| a + rho * s > 0.0) {
            for (a, s) in self.alpha.iter_mut().zip(step) {
                *a += rho * s;
            }
        }
    }
}

/// Expected word-topic counts of the batch, [U, K] over its distinct words:
/// sstats[u, k] = β̃[u, k] · Σ_d θ̃_dk · weight_du, summed over documents in batch order.
fn word_statistics(
    fits: &[DocFit],
    rows: &[Vec<u32>],
    beta: &[f32],
    words: usize,
    k: usize,
    sstats: &mut Vec<f32>,
) {
    // Inverted index (document, position) per word, by counting sort: O(tokens).
    let mut starts = vec![0usize; words + 1];
    for doc_rows in rows {
        for &r in doc_rows {
            starts[r as usize + 1] += 1;
        }
    }
    for u in 0..words {
        starts[u + 1] += starts[u];
    }
    let mut fill = starts.clone();
    let mut postings = vec![(0u32, 0u32); starts[words]];
    for (d, doc_rows) in rows.iter().enumerate() {
        for (j, &r) in doc_rows.iter().enumerate() {
            postings[fill[r as usize]] = (d as u32, j as u32);
            fill[r as usize] += 1;
        }
    }
    sstats.clear();
    sstats.resize(words * k, 0.0);
    sstats
        .par_chunks_mut(k.max(1))
        .with_min_len(64)
        .enumerate()
        .for_each(|(u, row)| {
            for &(d, j) in &postings[starts[u]..starts[u + 1]] {
                let fit = &fits[d as usize];
                let w = fit.weights[j as usize];
                match &fit.active {
                    Some(active) => active
                        .iter()
                        .for_each(|&t| row[t as usize] += w * fit.theta[t as usize]),
                    None => row
                        .iter_mut()
                        .zip(&fit.theta)
                        .for_each(|(s, &t)| *s += w * t),
                }
            }
            for (s, &b) in row.iter_mut().zip(&beta[u * k..(u + 1) * k]) {
                *s *= b;
            }
        });
}
