//! A trained topic model: λ [K, V], α, η and the vocabulary; saved as `lambda.npy`,
//! `vocab.txt` and `model.json`, and able to infer a topic vector θ for any document.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::estep::{beta_rows, fit_doc, BetaBuffers, EStepSettings, Prior};
use super::math::digamma;
use super::LdaError;
use crate::npy;
use crate::text::{SparseDoc, Vocabulary};

pub const LAMBDA_FILE: &str = "lambda.npy";
pub const VOCAB_FILE: &str = "vocab.txt";
pub const MODEL_FILE: &str = "model.json";

/// The scalar part of a saved model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelMeta {
    topics: usize,
    vocabulary: usize,
    alpha: Vec<f64>,
    eta: f64,
    e_step_iterations: usize,
    e_step_tolerance: f32,
    updates: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LdaModel {
    vocab: Vocabulary,
    /// [K, V] row-major: the variational topic-word parameter.
    lambda: Vec<f32>,
    alpha: Vec<f64>,
    eta: f64,
    e_step: EStepSettings,
    updates: u64,
}

impl LdaModel {
    pub fn new(
        vocab: Vocabulary,
        lambda: Vec<f32>,
        alpha: Vec<f64>,
        eta: f64,
        e_step: EStepSettings,
        updates: u64,
    ) -> LdaModel {
        assert_eq!(
            lambda.len(),
            alpha.len() * vocab.len(),
            "lambda must be [K, V]"
        );
        LdaModel {
            vocab,
            lambda,
            alpha,
            eta,
            e_step,
            updates,
        }
    }

    pub fn topics(&self) -> usize {
        self.alpha.len()
    }

    pub fn vocab(&self) -> &Vocabulary {
        &self.vocab
    }

    pub fn lambda(&self) -> &[f32] {
        &self.lambda
    }

    pub fn alpha(&self) -> &[f64] {
        &self.alpha
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The `n` most probable words of each topic.
    pub fn top_words(&self, n: usize) -> Vec<Vec<String>> {
        let v = self.vocab.len();
        self.lambda
            .chunks(v.max(1))
            .map(|row| {
                let mut ids: Vec<usize> = (0..v).collect();
                ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                ids.iter()
                    .take(n)
                    .map(|&i| self.vocab.word(i as u32).to_string())
                    .collect()
            })
            .collect()
    }

    /// Precomputes exp(E[log β]) for every word, for inferring many documents: two more
    /// [K, V] matrices, [`LdaError::Memory`] where they cannot be had.
    pub fn inferencer(&self) -> Result<Inferencer, LdaError> {
        let v = self.vocab.len();
        let row_digamma: Vec<f64> = self
            .lambda
            .chunks(v.max(1))
            .map(|row| digamma(row.iter().map(|&x| x as f64).sum()))
            .collect();
        let words: Vec<u32> = (0..v as u32).collect();
        let mut buffers = BetaBuffers::with_capacity(self.lambda.len())
            .map_err(|source| LdaError::memory(self.topics(), v, source))?;
        beta_rows(&self.lambda, v, &row_digamma, &words, &mut buffers);
        Ok(Inferencer {
            beta: buffers.rows,
            prior: Prior::new(self.alpha.iter().map(|&a| a as f32).collect()),
            e_step: self.e_step,
        })
    }

    /// Topic vectors θ = γ / Σγ of documents (each sums to 1).
    pub fn infer(&self, docs: &[SparseDoc]) -> Result<Vec<Vec<f32>>, LdaError> {
        Ok(self.inferencer()?.infer(docs))
    }

    pub fn save(&self, dir: &Path) -> Result<(), LdaError> {
        std::fs::create_dir_all(dir).map_err(|source| LdaError::io(dir, source))?;
        npy::write(
            &dir.join(LAMBDA_FILE),
            &[self.topics(), self.vocab.len()],
            &self.lambda,
        )?;
        self.vocab.save(&dir.join(VOCAB_FILE))?;
        let meta = ModelMeta {
            topics: self.topics(),
            vocabulary: self.vocab.len(),
            alpha: self.alpha.clone(),
            eta: self.eta,
            e_step_iterations: self.e_step.iterations,
            e_step_tolerance: self.e_step.tolerance,
            updates: self.updates,
        };
        super::write_json(&dir.join(MODEL_FILE), &meta)
    }

    pub fn load(dir: &Path) -> Result<LdaModel, LdaError> {
        let meta_path = dir.join(MODEL_FILE);
        let text = std::fs::read_to_string(&meta_path).map_err(|s| LdaError::io(&meta_path, s))?;
        let meta: ModelMeta = serde_json::from_str(&text).map_err(|source| LdaError::Json {
            path: meta_path.clone(),
            source,
        })?;
        let vocab = Vocabulary::load(&dir.join(VOCAB_FILE))?;
        let lambda_path = dir.join(LAMBDA_FILE);
        let lambda = npy::read(&lambda_path)?;
        let expected = [meta.topics, vocab.len()];
        if lambda.shape != expected
            || meta.alpha.len() != meta.topics
            || meta.vocabulary != vocab.len()
        {
            return Err(LdaError::BadModel {
                path: lambda_path,
                message: format!(
                    "shape {:?}, but model.json says {} topics (α has {}) over {} words and vocab.txt has {}",
                    lambda.shape,
                    meta.topics,
                    meta.alpha.len(),
                    meta.vocabulary,
                    vocab.len()
                ),
            });
        }
        let e_step = EStepSettings {
            iterations: meta.e_step_iterations,
            tolerance: meta.e_step_tolerance,
        };
        Ok(LdaModel::new(
            vocab,
            lambda.data,
            meta.alpha,
            meta.eta,
            e_step,
            meta.updates,
        ))
    }
}

/// Infers topic vectors with exp(E[log β]) precomputed for the whole vocabulary.
pub struct Inferencer {
    /// [V, K]
    beta: Vec<f32>,
    prior: Prior,
    e_step: EStepSettings,
}

impl Inferencer {
    /// γ of each document (parallel; each document on its own, so thread count is irrelevant).
    pub fn gamma(&self, docs: &[SparseDoc]) -> Vec<Vec<f32>> {
        docs.par_iter()
            .map(|doc| fit_doc(&self.prior, &doc.ids, &doc.counts, &self.beta, self.e_step).gamma)
            .collect()
    }

    /// θ = γ / Σγ of each document. An empty document gets α / Σα.
    pub fn infer(&self, docs: &[SparseDoc]) -> Vec<Vec<f32>> {
        self.gamma(docs)
            .into_iter()
            .map(|gamma| {
                let total: f64 = gamma.iter().map(|&g| g as f64).sum();
                gamma.iter().map(|&g| (g as f64 / total) as f32).collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LdaModel {
        let vocab = Vocabulary::new(["golf", "ball", "church"].map(String::from).to_vec());
        let lambda = vec![5.0, 4.0, 0.1, 0.1, 0.2, 6.0];
        let e_step = EStepSettings {
            iterations: 50,
            tolerance: 1e-3,
        };
        LdaModel::new(vocab, lambda, vec![0.5, 0.25], 0.1, e_step, 7)
    }

    #[test]
    fn save_load_round_trip_and_top_words() {
        let dir = tempfile::tempdir().unwrap();
        let m = model();
        m.save(dir.path()).unwrap();
        assert_eq!(LdaModel::load(dir.path()).unwrap(), m);
        assert_eq!(m.top_words(2), [["golf", "ball"], ["church", "ball"]]);
        let theta = m
            .infer(&[SparseDoc::from_pairs([(2, 3.0)]), SparseDoc::default()])
            .unwrap();
        assert!(theta[0][1] > 0.8, "{theta:?}");
        // An empty document gets α / Σα.
        assert!((theta[1][0] - 2.0 / 3.0).abs() < 1e-6 && (theta[1][1] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn load_names_the_file_whose_shape_disagrees() {
        let dir = tempfile::tempdir().unwrap();
        model().save(dir.path()).unwrap();
        std::fs::write(dir.path().join(VOCAB_FILE), "golf\nball\n").unwrap();
        let err = LdaModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "lambda.npy: shape [2, 3], but model.json says 2 topics (α has 2) over 3 words and vocab.txt has 2"
            ),
            "{err}"
        );
    }
}
