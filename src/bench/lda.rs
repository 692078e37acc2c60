//! Our online LDA as the `lda` stage trains it (training seconds, λ, inference documents/s),
//! for `runner bench lda gensim` to set beside gensim's `LdaModel`; and noise detection:
//! the AUC of topic scores against a truth file on a WebVision-format dataset
//! (`runner bench lda noise`). In: bag-of-words documents and [`LdaParams`]; or a dataset, a
//! truth file and [`NoiseSettings`]. Out: timings and λ; noise metrics per similarity.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::BenchError;
use crate::lda::{online_settings, LdaError, OnlineLda};
use crate::recipe::params::{
    Calibration, ClassMean, CleanParams, CleanRule, LabelParams, LdaParams, Similarity, TextField,
    TextParams,
};
use crate::recipe::Recipe;
use crate::sample::Source;
use crate::score::{self, ScoreInputs};
use crate::text::{SparseDoc, Vocabulary};

/// Trains one model on `train` as the stage would (one batch after another), then infers θ
/// for the `test` documents: (training seconds, λ as K × V row-major, inference documents/s).
pub fn train_and_infer(
    params: &LdaParams,
    vocab: &Vocabulary,
    train: &[SparseDoc],
    test: &[SparseDoc],
) -> Result<(f64, Vec<f32>, f64), LdaError> {
    let started = Instant::now();
    let mut lda = OnlineLda::new(
        online_settings(params, train.len() as u64),
        vocab.len(),
        params.seed,
    )?;
    for _ in 0..params.passes {
        for batch in train.chunks(params.batch_size) {
            lda.update(batch);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let settings = lda.settings().clone();
    let (lambda, alpha, updates) = lda.into_parts();
    let model = crate::lda::LdaModel::new(
        vocab.clone(),
        lambda,
        alpha,
        settings.eta,
        settings.e_step,
        updates,
    );
    let started = Instant::now();
    let theta = model.infer(test)?;
    let infer_rate = theta.len() as f64 / started.elapsed().as_secs_f64();
    Ok((secs, model.lambda().to_vec(), infer_rate))
}

/// A WebVision-format dataset's training text, labels, paths and class names (through
/// [`crate::dataset::webvision::read`], both sources, so the `_all` lists in their order).
pub struct WebvisionText {
    pub docs: crate::text::MemorySource,
    pub labels: Vec<u32>,
    pub paths: Vec<String>,
    pub class_names: Vec<String>,
}

pub fn read_webvision_text(root: &Path) -> Result<WebvisionText, BenchError> {
    let index = crate::dataset::webvision::read(
        root,
        &[Source::Google, Source::Flickr],
        false,
        crate::dataset::PageTexts::in_dir(&std::env::temp_dir()),
    )?;
    let mut out = WebvisionText {
        docs: Default::default(),
        labels: Vec::with_capacity(index.train.len()),
        paths: Vec::with_capacity(index.train.len()),
        class_names: index.classes.iter().map(|c| c.name.clone()).collect(),
    };
    for sample in &index.train {
        out.docs.train.push((sample.source, index.text(sample)?));
        out.labels.push(sample.label);
        out.paths.push(sample.path.clone());
    }
    Ok(out)
}

/// `runner bench lda noise`: topic models of K topics over a dataset's text, each scored
/// against a truth file.
#[derive(Debug, Clone)]
pub struct NoiseSettings {
    /// Truth TSV (path, given_label, true_label, ...).
    pub truth: PathBuf,
    /// Folder for the stage outputs of every run.
    pub work: PathBuf,
    pub passes: usize,
    pub batch: usize,
    /// Share of each class discarded.
    pub discard: f64,
    pub min_count: u32,
    pub max_doc_freq: f64,
    /// LDA seeds 1..=N per K.
    pub seeds: u64,
}

/// The scorings a noise run compares (similarity, class mean, calibration), in the order of
/// [`NoiseRuns::metrics`]: the original's plain class mean, the trimmed one at its defaults,
/// and the plain one calibrated across classes.
pub const SCORINGS: [(Similarity, ClassMean, Calibration); 6] = [
    (Similarity::Dot, ClassMean::All, Calibration::None),
    (Similarity::Cosine, ClassMean::All, Calibration::None),
    (Similarity::Dot, TRIMMED, Calibration::None),
    (Similarity::Cosine, TRIMMED, Calibration::None),
    (Similarity::Dot, ClassMean::All, Calibration::ClassZ),
    (Similarity::Cosine, ClassMean::All, Calibration::ClassZ),
];
const TRIMMED: ClassMean = ClassMean::Trimmed {
    share: 0.3,
    rounds: 2,
};

/// Noise detection with K topics over every seed.
#[derive(Debug, Clone)]
pub struct NoiseRuns {
    /// `metrics[scoring][seed]`: AUC, macro AUC, share of the noisy removed, precision of
    /// the removal; `None` where undefined (e.g. nothing discarded).
    pub metrics: [Vec<[Option<f64>; 4]>; SCORINGS.len()],
    /// LDA training seconds, the mean over seeds.
    pub lda_seconds: f64,
}

/// Trains a K-topic model per seed on `data` as the `lda` stage does, and scores it with each
/// of [`SCORINGS`], discarding `settings.discard` of each class, against the truth file.
pub fn noise_runs(
    data: &WebvisionText,
    settings: &NoiseSettings,
    topics: usize,
) -> Result<NoiseRuns, BenchError> {
    let text = TextParams {
        other_fields: vec![TextField::Title, TextField::Description],
        min_count: settings.min_count,
        max_doc_freq: settings.max_doc_freq,
        max_words: usize::MAX,
        ..Recipe::default().text
    };
    let k = topics;
    let mut metrics: [Vec<[Option<f64>; 4]>; SCORINGS.len()] = Default::default();
    let mut seconds = 0.0;
    for seed in 1..=settings.seeds {
        let lda_dir = settings.work.join(format!("lda_k{k}_s{seed}"));
        let params = LdaParams {
            topics: k,
            passes: settings.passes,
            batch_size: settings.batch,
            seed,
            ..Recipe::default().lda
        };
        let summary = crate::lda::run_stage(&data.docs, &text, &params, &lda_dir, false)?;
        seconds += summary.train_seconds / settings.seeds as f64;
        let topics = crate::lda::read_topics(&lda_dir.join(crate::lda::TOPICS_TRAIN_FILE))?;
        for (i, (similarity, mean, calibration)) in SCORINGS.into_iter().enumerate() {
            let inputs = ScoreInputs {
                topics: &topics,
                labels: &data.labels,
                paths: &data.paths,
                class_names: &data.class_names,
                image: None,
                probe: None,
                search: None,
            };
            let clean = CleanParams {
                similarity,
                mean,
                calibration,
                rule: CleanRule::Fraction(settings.discard),
                small_class_factor: 1.0,
                truth: Some(settings.truth.clone()),
                ..Recipe::default().clean
            };
            let dir = settings
                .work
                .join(format!("score_k{k}_s{seed}_{similarity:?}_{i}").to_lowercase());
            let scored = score::run_stage(&inputs, &clean, &LabelParams::Hard, &dir)?;
            let noise = scored.noise.ok_or_else(|| {
                BenchError::NoNoiseMetrics(format!(
                    "{}: no noise metrics despite a truth file",
                    dir.display()
                ))
            })?;
            metrics[i].push([noise.auc, noise.macro_auc, noise.recall, noise.precision]);
        }
    }
    Ok(NoiseRuns {
        metrics,
        lda_seconds: seconds,
    })
}
