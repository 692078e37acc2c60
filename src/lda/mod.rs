//! Online variational Bayes LDA (Hoffman, Blei & Bach 2010) and topic inference: the `lda`
//! stage. In: documents from a [`DocumentSource`]. Out, in the stage folder: the model
//! (`lambda.npy` [K, V], `vocab.txt`, `model.json`), `topics_train.npy` / `topics_val.npy`
//! ([N, K] f32, row = sample id), `topics.txt` (top words) and `summary.json`.
//!
//! Documents are streamed: one pass builds the vocabulary, each training pass feeds
//! mini-batches to the trainer, a last pass infers θ for every sample and writes it out row by
//! row. Memory stays O(K·V + batch) whatever the corpus size: [`TOPIC_WORD_MATRICES`]
//! [K, V] f32 matrices at most, with V capped by `text.max_words` ([`topic_word_bytes`] is
//! what recipe validation holds to its memory budget).

mod estep;
mod math;
mod model;
mod online;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use estep::EStepSettings;
pub use model::{Inferencer, LdaModel, LAMBDA_FILE, MODEL_FILE, VOCAB_FILE};
pub use online::{BatchStats, OnlineLda, OnlineSettings};

use crate::npy::{NpyError, NpyWriter};
use crate::recipe::params::{Alpha, LdaParams, TextParams};
use crate::sample::Split;
use crate::text::{DocumentSource, SparseDoc, TextError, Tokenizer, VocabBuilder, Vocabulary};

pub const TOPICS_TRAIN_FILE: &str = "topics_train.npy";
pub const TOPICS_VAL_FILE: &str = "topics_val.npy";
pub const SUMMARY_FILE: &str = "summary.json";
pub const TOPIC_WORDS_FILE: &str = "topics.txt";

/// Fewer updates than this over the whole run and online LDA has barely moved from its
/// random start (the original made about 4 over 2.4M documents).
pub const MIN_USEFUL_UPDATES: u64 = 20;

/// Documents per inference batch (memory only; results do not depend on it).
const INFER_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LdaError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    BadModel { path: PathBuf, message: String },
    #[error(
        "the vocabulary is empty: no word of the {docs} training documents occurs at least \
         min_count = {min_count} times in at most max_doc_freq = {max_doc_freq} of them"
    )]
    EmptyVocabulary {
        docs: u64,
        min_count: u32,
        max_doc_freq: f64,
    },
    #[error(
        "cannot allocate LDA's [{topics} topics, {words} words] f32 matrices ({} each): {source}",
        crate::units::memory_text(matrix_bytes(*topics, *words))
    )]
    Memory {
        topics: usize,
        words: usize,
        #[source]
        source: std::collections::TryReserveError,
    },
}

/// [K, V] f32 matrices the stage holds at once at most: λ, and in each update the batch's
/// exp(E[log β]) in two layouts and its word statistics, each up to [K, V] ([`OnlineLda::new`]
/// reserves all four; inference later needs λ and two more).
pub const TOPIC_WORD_MATRICES: u128 = 4;

/// Bytes of LDA's topic-word matrices for `topics` topics over `words` words.
pub fn topic_word_bytes(topics: usize, words: usize) -> u128 {
    TOPIC_WORD_MATRICES * matrix_bytes(topics, words)
}

fn matrix_bytes(topics: usize, words: usize) -> u128 {
    topics as u128 * words as u128 * std::mem::size_of::<f32>() as u128
}

impl LdaError {
    fn memory(topics: usize, words: usize, source: std::collections::TryReserveError) -> LdaError {
        LdaError::Memory {
            topics,
            words,
            source,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> LdaError {
        LdaError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What the stage did, also written to `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LdaSummary {
    pub topics: usize,
    pub vocabulary: usize,
    pub train_docs: u64,
    pub val_docs: u64,
    /// Training documents with no vocabulary word (their θ is α / Σα).
    pub empty_train_docs: u64,
    pub train_tokens: f64,
    pub passes: usize,
    pub updates: u64,
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub final_alpha: Vec<f64>,
    pub top_words: Vec<Vec<String>>,
}

/// The trainer settings a recipe's `[lda]` means for a corpus of `corpus_docs` documents.
pub fn online_settings(params: &LdaParams, corpus_docs: u64) -> OnlineSettings {
    let k = params.topics;
    let (alpha, learn_alpha) = match params.alpha {
        Alpha::Symmetric(a) => (a.unwrap_or(1.0 / k as f64), false),
        Alpha::Learned => (1.0 / k as f64, true),
    };
    OnlineSettings {
        topics: k,
        alpha: vec![alpha; k],
        learn_alpha,
        eta: params.eta.unwrap_or(1.0 / k as f64),
        tau0: params.tau0,
        kappa: params.kappa,
        e_step: EStepSettings {
            iterations: params.e_step_iterations,
            tolerance: params.e_step_tolerance as f32,
        },
        corpus_docs,
    }
}

/// Number of updates `passes` over `docs` documents in batches of `batch` make.
pub fn planned_updates(docs: u64, batch: usize, passes: usize) -> u64 {
    docs.div_ceil(batch.max(1) as u64) * passes as u64
}

/// The `lda` stage: vocabulary, online training, model, θ for every train and val sample.
pub fn run_stage(
    docs: &dyn DocumentSource,
    text: &TextParams,
    params: &LdaParams,
    dir: &Path,
    progress: bool,
) -> Result<LdaSummary, LdaError> {
    std::fs::create_dir_all(dir).map_err(|source| LdaError::io(dir, source))?;
    let tokenizer = Tokenizer::new(text);
    let train_docs = docs.len(Split::Train);
    let Some(vocab) = build_vocabulary(docs, &tokenizer, text)? else {
        tracing::warn!(
            docs = train_docs,
            "lda: no training sample has page text: every topic vector is uniform, so text \
             scores cannot rank samples"
        );
        return write_text_free(docs, params.topics, dir);
    };
    tracing::info!(
        words = vocab.len(),
        docs = train_docs,
        "lda: vocabulary built"
    );

    let updates = planned_updates(train_docs, params.batch_size, params.passes);
    if updates < MIN_USEFUL_UPDATES {
        tracing::warn!(
            updates,
            "lda: {} passes over {} documents in batches of {} make only {} updates; online LDA \
             needs many more to move from its random start (the original made about 4 over 2.4M \
             documents): lower batch_size or raise passes",
            params.passes,
            train_docs,
            params.batch_size,
            updates
        );
    }

    let started = Instant::now();
    let mut lda = OnlineLda::new(
        online_settings(params, train_docs),
        vocab.len(),
        params.seed,
    )?;
    let bar =
        progress.then(|| crate::progress::bar(train_docs * params.passes as u64, "lda", "doc"));
    let mut tokens = 0.0;
    for _ in 0..params.passes {
        let mut batch = Vec::with_capacity(params.batch_size);
        let mut feed = |batch: &mut Vec<SparseDoc>| {
            let (_, stats) = lda.update(batch);
            tokens += stats.tokens;
            if let Some(bar) = &bar {
                bar.inc(batch.len() as u64);
            }
            batch.clear();
        };
        docs.for_each(Split::Train, &mut |_, source, sample| {
            batch.push(vocab.doc(&tokenizer.tokens(source, sample)));
            if batch.len() == params.batch_size {
                feed(&mut batch);
            }
        })?;
        if !batch.is_empty() {
            feed(&mut batch);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let settings = lda.settings().clone();
    let (lambda, alpha, updates) = lda.into_parts();
    let model = LdaModel::new(vocab, lambda, alpha, settings.eta, settings.e_step, updates);
    model.save(dir)?;

    let inferencer = model.inferencer()?;
    let empty_train_docs = write_topics(
        docs,
        Split::Train,
        &tokenizer,
        &model,
        &inferencer,
        &dir.join(TOPICS_TRAIN_FILE),
        progress,
    )?;
    write_topics(
        docs,
        Split::Val,
        &tokenizer,
        &model,
        &inferencer,
        &dir.join(TOPICS_VAL_FILE),
        progress,
    )?;

    let summary = LdaSummary {
        topics: model.topics(),
        vocabulary: model.vocab().len(),
        train_docs,
        val_docs: docs.len(Split::Val),
        empty_train_docs,
        train_tokens: tokens,
        passes: params.passes,
        updates,
        train_seconds,
        tokens_per_second: tokens / train_seconds.max(1e-9),
        final_alpha: model.alpha().to_vec(),
        top_words: model.top_words(10),
    };
    write_json(&dir.join(SUMMARY_FILE), &summary)?;
    write_topic_words(&dir.join(TOPIC_WORDS_FILE), &summary.top_words)?;
    Ok(summary)
}

/// The vocabulary of the training documents; `None` when no document has a single word (a
/// dataset without page text), which is not the error a too strict filter is.
fn build_vocabulary(
    docs: &dyn DocumentSource,
    tokenizer: &Tokenizer,
    text: &TextParams,
) -> Result<Option<Vocabulary>, LdaError> {
    let mut builder = VocabBuilder::default();
    docs.for_each(Split::Train, &mut |_, source, sample| {
        builder.add_doc(&tokenizer.tokens(source, sample))
    })?;
    if builder.distinct_words() == 0 {
        return Ok(None);
    }
    let vocab = builder.build(text.min_count, text.max_doc_freq, text.max_words);
    if vocab.is_empty() {
        return Err(LdaError::EmptyVocabulary {
            docs: docs.len(Split::Train),
            min_count: text.min_count,
            max_doc_freq: text.max_doc_freq,
        });
    }
    Ok(Some(vocab))
}

/// The stage's outputs for documents without a word: θ = 1/K for every sample (what the
/// model's prior gives a document without words), no model, an empty vocabulary.
fn write_text_free(
    docs: &dyn DocumentSource,
    topics: usize,
    dir: &Path,
) -> Result<LdaSummary, LdaError> {
    let uniform = vec![1.0 / topics as f32; topics];
    for (split, file) in [
        (Split::Train, TOPICS_TRAIN_FILE),
        (Split::Val, TOPICS_VAL_FILE),
    ] {
        let n = docs.len(split);
        let mut writer = NpyWriter::create(&dir.join(file), &[n as usize, topics])?;
        for _ in 0..n {
            writer.write_row(&uniform)?;
        }
        writer.finish()?;
    }
    let train_docs = docs.len(Split::Train);
    let summary = LdaSummary {
        topics,
        vocabulary: 0,
        train_docs,
        val_docs: docs.len(Split::Val),
        empty_train_docs: train_docs,
        train_tokens: 0.0,
        passes: 0,
        updates: 0,
        train_seconds: 0.0,
        tokens_per_second: 0.0,
        final_alpha: vec![1.0 / topics as f64; topics],
        top_words: Vec::new(),
    };
    write_json(&dir.join(SUMMARY_FILE), &summary)?;
    write_topic_words(&dir.join(TOPIC_WORDS_FILE), &summary.top_words)?;
    Ok(summary)
}

/// Streams θ of every sample of a split to `path` ([N, K]); returns how many were empty.
fn write_topics(
    docs: &dyn DocumentSource,
    split: Split,
    tokenizer: &Tokenizer,
    model: &LdaModel,
    inferencer: &Inferencer,
    path: &Path,
    progress: bool,
) -> Result<u64, LdaError> {
    let n = docs.len(split);
    let mut writer = NpyWriter::create(path, &[n as usize, model.topics()])?;
    let bar = progress.then(|| crate::progress::bar(n, &format!("θ {}", split.as_str()), "doc"));
    let mut batch = Vec::with_capacity(INFER_BATCH);
    let mut empty = 0u64;
    let mut failure: Option<NpyError> = None;
    let flush = |batch: &mut Vec<SparseDoc>, writer: &mut NpyWriter| -> Result<(), NpyError> {
        for theta in inferencer.infer(batch) {
            writer.write_row(&theta)?;
        }
        if let Some(bar) = &bar {
            bar.inc(batch.len() as u64);
        }
        batch.clear();
        Ok(())
    };
    docs.for_each(split, &mut |_, source, sample| {
        // After a write error the rest is only skipped: the visitor cannot stop early.
        if failure.is_some() {
            return;
        }
        let doc = model.vocab().doc(&tokenizer.tokens(source, sample));
        empty += doc.is_empty() as u64;
        batch.push(doc);
        if batch.len() == INFER_BATCH {
            failure = flush(&mut batch, &mut writer).err();
        }
    })?;
    if let Some(err) = failure {
        return Err(err.into());
    }
    flush(&mut batch, &mut writer)?;
    writer.finish()?;
    Ok(empty)
}

fn write_topic_words(path: &Path, top_words: &[Vec<String>]) -> Result<(), LdaError> {
    let mut out = String::new();
    for (k, words) in top_words.iter().enumerate() {
        out.push_str(&format!("{k}\t{}\n", words.join(" ")));
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .map_err(|source| LdaError::io(path, source))
}

/// Opens a `topics_*.npy` file ([samples, topics]) to read its rows where they lie: a pass
/// over all of them, or one sample's, without holding the matrix (2.4M × 500 is 4.8 GB).
pub fn open_topics(path: &Path) -> Result<crate::npy::NpyFile, LdaError> {
    let file = crate::npy::NpyFile::open(path)?;
    if file.shape().len() != 2 {
        return Err(LdaError::BadModel {
            path: path.to_path_buf(),
            message: format!(
                "expected a [samples, topics] array, found shape {:?}",
                file.shape()
            ),
        });
    }
    Ok(file)
}

/// Reads a `topics_*.npy` file back whole, as one θ per sample: for small corpora (tests,
/// benchmarks); the stages read through [`open_topics`].
pub fn read_topics(path: &Path) -> Result<Vec<Vec<f32>>, LdaError> {
    let file = open_topics(path)?;
    let mut rows = Vec::with_capacity(file.rows());
    file.for_each_row(|_, row| rows.push(row.to_vec()))?;
    Ok(rows)
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LdaError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| LdaError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|source| LdaError::io(path, source))
}
