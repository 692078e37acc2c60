//! The recipe file as written: every key optional, unknown keys rejected. One file of an
//! `extends` chain, a `--set` override and a sweep point each deserialize into this shape on
//! their own (so each error points into the text that caused it); the merged table is then
//! validated into [`super::Recipe`]. The JSON Schema in `schemas/` is generated from here.
//!
//! Integers are read as i64 whatever the setting's type: ranges (≥ 1, 1..=100) are checked
//! in validation only, so that a value out of range gets one message whichever side it is on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// A websieve recipe: the settings of one run (or, with `[sweep]`, of several).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "websieve recipe")]
pub struct RawRecipe {
    /// The run's name, and so its folder `runs/<name>/`; by default the file's path below
    /// `recipes/` without `.toml`. Only the file named on the command line sets it: a name in
    /// an extended file is not inherited. Sweep points append `/<key>=<value>,...`.
    pub name: Option<String>,
    /// Another recipe this one inherits from, relative to this file's folder. Tables merge
    /// key by key; this file's values win; arrays are replaced, not appended.
    pub extends: Option<String>,
    pub dataset: Option<RawDataset>,
    pub text: Option<RawText>,
    pub lda: Option<RawLda>,
    pub clean: Option<RawClean>,
    pub probe: Option<RawProbe>,
    pub labels: Option<RawLabels>,
    pub model: Option<RawModel>,
    pub train: Option<RawTrain>,
    pub eval: Option<RawEval>,
    /// A grid of runs: each key is a dotted setting (e.g. "train.optimizer.lr"), each value the
    /// list of values to try. One run per combination, named `<recipe>/<key>=<value>,...`.
    #[schemars(with = "Option<BTreeMap<String, Vec<serde_json::Value>>>")]
    pub sweep: Option<BTreeMap<String, Vec<toml::Value>>>,
}

/// Where the images and their text come from and how they are stored.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// Dataset layout. Default: "webvision".
    pub format: Option<RawDatasetFormat>,
    /// Dataset root folder (or the .jsonl file), relative to the recipe's folder. Required
    /// unless format = "synthetic".
    pub root: Option<String>,
    /// WebVision sources to read. Default: ["google", "flickr"].
    pub sources: Option<Vec<RawSource>>,
    /// Resize target in pixels. Default: 256.
    pub resize: Option<i64>,
    /// "squash" (both sides to `resize`, the original) or "shorter-side". Default: "squash".
    pub resize_mode: Option<RawResizeMode>,
    /// Store images as "raw" RGB (the original) or "jpeg". Default: "raw".
    pub encoding: Option<RawEncoding>,
    /// JPEG quality when encoding = "jpeg". Default: 90.
    pub jpeg_quality: Option<i64>,
    /// Also ingest the validation split. Default: true.
    pub val: Option<bool>,
    /// Keep at most this many training images per class.
    pub max_per_class: Option<i64>,
    /// The classes to keep, in every split: "all", "first:N" (the first N classes of the
    /// dataset's class list, e.g. WebVision's synsets.txt: mini-WebVision is "first:50"), or a
    /// list of class ids (WordNet ids, folder names). Kept classes are labelled 0.. in the
    /// dataset's class order. Default: "all".
    pub classes: Option<RawClasses>,
    pub second_val: Option<RawSecondVal>,
    pub expect: Option<RawExpect>,
    pub synthetic: Option<RawSynthetic>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawDatasetFormat {
    Webvision,
    Imagefolder,
    Jsonl,
    Synthetic,
    /// Clothing1M's lists (noisy_label_kv.txt, clean_label_kv.txt, the key lists).
    Clothing1m,
    /// Food-101N's lists (meta/classes.txt, meta/imagelist.tsv, meta/verified_*.tsv).
    Food101n,
}

/// A second validation set, ImageNet-style (e.g. ILSVRC2012 val for mini-WebVision),
/// mapped to the dataset's classes by class id and evaluated beside the first. Images of
/// classes the run does not keep are passed over.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecondVal {
    /// How tables name it, e.g. "ILSVRC2012 val" ("second val" when unset).
    pub name: Option<String>,
    /// The images' folder, relative to the recipe's folder: the images `labels` lists, or
    /// without `labels` one folder per class id (`<root>/<wnid>/*.JPEG`).
    pub root: Option<String>,
    /// A label file, relative to the recipe's folder: `<image path below root> <class id>`
    /// per line.
    pub labels: Option<String>,
}

/// Counts the dataset must list once cut to `classes` and `sources`; checked before any
/// image is ingested (a WebVision 2.0 download read as 1.0 is caught here).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    /// Classes.
    pub classes: Option<i64>,
    /// Training images listed.
    pub train: Option<i64>,
    /// Validation images listed.
    pub val: Option<i64>,
    /// Images of the second validation set.
    pub second_val: Option<i64>,
}

/// "all", "first:N", or a list of class ids.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawClasses {
    Spec(String),
    Ids(Vec<String>),
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawSource {
    Google,
    Flickr,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawResizeMode {
    Squash,
    ShorterSide,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawEncoding {
    Raw,
    Jpeg,
}

/// The generated WebVision-like dataset (format = "synthetic").
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSynthetic {
    /// Number of classes. Default: 10.
    pub classes: Option<i64>,
    /// Training images of the smallest class. Default: 40.
    pub min_per_class: Option<i64>,
    /// Training images of the largest class. Default: 120.
    pub max_per_class: Option<i64>,
    /// Validation images per class. Default: 20.
    pub val_per_class: Option<i64>,
    /// Share of wrongly labelled training images. Default: 0.3.
    pub noise: Option<f64>,
    /// Image side in pixels. Default: 64.
    pub image_size: Option<i64>,
    /// Seed of everything generated. Default: 0.
    pub seed: Option<i64>,
    /// Training images in all, in WebVision 1.0's shape: class sizes log-normal (median
    /// about 0.83 of the mean) clipped to min_per_class..max_per_class, Google pages with
    /// title + description and Flickr pages with tags too, about 60 words a page over a
    /// vocabulary of 300,000 words. Unset: the quickstart's small shape (geometric class
    /// sizes between min_per_class and max_per_class, about 15 words a page).
    pub train_samples: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawTextField {
    Title,
    Description,
    Tags,
}

/// From page text to bag-of-words documents.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawText {
    /// Fields of Google pages. Default: ["title", "description"].
    pub google_fields: Option<Vec<RawTextField>>,
    /// Fields of Flickr pages. Default: ["title", "description", "tags"].
    pub flickr_fields: Option<Vec<RawTextField>>,
    /// Fields of sources without a search engine. Default: ["title", "description", "tags"].
    pub other_fields: Option<Vec<RawTextField>>,
    /// Drop English stop words. Default: true.
    pub english_stop_words: Option<bool>,
    /// Drop web words (wikipedia, google, flickr, photo, image, ...). Default: true.
    pub web_stop_words: Option<bool>,
    /// More words to drop. Default: [].
    pub extra_stop_words: Option<Vec<String>>,
    /// Porter stemming. Default: true.
    pub stemming: Option<bool>,
    /// Minimum corpus count of a vocabulary word. Default: 5.
    pub min_count: Option<i64>,
    /// Maximum share of documents a vocabulary word may appear in. Default: 0.5.
    pub max_doc_freq: Option<f64>,
    /// Vocabulary size cap: of the words that pass the filters above, the most frequent (by
    /// corpus count) are kept. LDA holds four topics × words f32 matrices, so this bounds its
    /// memory. Default: 100000 (gensim's `keep_n`).
    pub max_words: Option<i64>,
}

/// Online variational Bayes LDA (Hoffman, Blei & Bach 2010).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLda {
    /// Number of topics. Default: 500.
    pub topics: Option<i64>,
    /// Passes over the training documents. Default: 1.
    pub passes: Option<i64>,
    /// Documents per update (gensim's chunksize). Default: 2000.
    pub batch_size: Option<i64>,
    /// "symmetric" or "auto" (learned). Default: "symmetric".
    pub alpha: Option<RawAlpha>,
    /// The symmetric α; default 1/topics.
    pub alpha_value: Option<f64>,
    /// Topic-word prior η; default 1/topics.
    pub eta: Option<f64>,
    /// Learning-rate offset τ0. Default: 1.0.
    pub tau0: Option<f64>,
    /// Learning-rate decay κ in [0.5, 1]. Default: 0.5 (gensim's).
    pub kappa: Option<f64>,
    /// Most E-step iterations per document. Default: 50.
    pub e_step_iterations: Option<i64>,
    /// The E-step stops when γ's mean change falls below this. Default: 0.001.
    pub e_step_tolerance: Option<f64>,
    /// Seed of λ's random start. Default: 0.
    pub seed: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawAlpha {
    Symmetric,
    Auto,
}

/// Scores and cleaning.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClean {
    /// "dot" (the original code) or "cosine" (its write-up). Default: "cosine", which detects
    /// noise better at every topic count measured (BENCHMARKS.md); `recipes/base.toml` keeps
    /// the original's "dot".
    pub similarity: Option<RawSimilarity>,
    /// Each class's mean topic vector: "all" its samples (the original), or "trimmed": all
    /// but the lowest-scored `trim` share, estimated again `trim_rounds` times. Default: "all".
    pub mean: Option<RawClassMean>,
    /// Share of each class left out of a trimmed mean, lowest scores first. Default: 0.3.
    pub trim: Option<f64>,
    /// Times a trimmed mean is estimated again from the previous one's scores. Default: 2.
    pub trim_rounds: Option<i64>,
    /// "none", or "class-z": each score as robust standard deviations from its class's median,
    /// so that a threshold or a sigmoid λ means the same in every class. Default: "none".
    pub calibration: Option<RawCalibration>,
    /// "none", "threshold" or "fraction". Default: "none".
    pub rule: Option<RawCleanRule>,
    /// Discard samples scoring below this (rule = "threshold").
    pub threshold: Option<f64>,
    /// Share of each class to discard, lowest scores first (rule = "fraction").
    pub fraction: Option<f64>,
    /// Classes with fewer samples than this are lenient. Default: 0 (none).
    pub small_class: Option<i64>,
    /// Lenient classes discard this multiple of what the rule says. Default: 0.5.
    pub small_class_factor: Option<f64>,
    /// Truth TSV (path, given_label, true_label, ...) for noise-detection metrics.
    pub truth: Option<String>,
    /// The evidence a sample's score combines, each with its weight. Without it, the text
    /// alone (`{ text = 1 }`), scored as the original did. With an image signal (`confidence`,
    /// `knn`: the `probe` stage), each signal is ranked within its class and the score is
    /// the weighted mean of the ranks (0 = lowest of the class, 1 = highest); as with the
    /// search standing (`search`).
    pub signals: Option<RawSignals>,
}

/// Weights of the signals a sample's score combines; a signal weighs 0 unless set (the text
/// 1 when no signal is set).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSignals {
    /// Similarity of the page text's topic vector to its class's mean.
    pub text: Option<f64>,
    /// The image's standing in its query's search results: 1 for the first result, falling
    /// to 1/n for the last of n (webvision and synthetic lists, which keep each query's
    /// results in the order the engine returned them). Search engines rank relevant images
    /// first, so the wrong ones gather at the bottom.
    pub search: Option<f64>,
    /// Out-of-fold predicted probability of the given label (a network that never trained
    /// on the sample: the `probe` stage).
    pub confidence: Option<f64>,
    /// Share of the sample's nearest neighbours, in the probe network's features, that carry
    /// its label.
    pub knn: Option<f64>,
}

/// The image evidence (the `probe` stage, run when `clean.signals` weighs an image signal):
/// the samples are dealt into folds within each class; a network trained on all folds but
/// one predicts the held-out fold, so no sample is judged by a network that saw it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// Folds. Default: 4.
    pub folds: Option<i64>,
    /// Epochs each fold's network trains (the recipe's model, optimiser, schedule and
    /// augmentation; shuffled, no holdout). Default: 10.
    pub epochs: Option<i64>,
    /// Width multiplier of the probe's network. Unset: `model.width`.
    pub width: Option<f64>,
    /// Neighbours a sample's k-NN label agreement counts, within its fold. Default: 10.
    pub neighbours: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawCalibration {
    None,
    ClassZ,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawClassMean {
    All,
    Trimmed,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawSimilarity {
    Dot,
    Cosine,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawCleanRule {
    None,
    Threshold,
    Fraction,
    /// Keep only what the truth file says is labelled correctly (an upper bound for
    /// experiments; needs `clean.truth` or the synthetic dataset).
    Oracle,
}

/// Hard labels, or soft labels that weight each sample's loss by λ.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLabels {
    /// "hard" or "soft". Default: "hard".
    pub mode: Option<RawLabelMode>,
    /// λ mapping for soft labels: "ratio" (min(1, s/s0), the original), "rank" or "sigmoid".
    /// Default: "ratio".
    pub lambda: Option<RawLambdaMap>,
    /// s0 of the ratio map. Default: 0.1.
    pub s0: Option<f64>,
    /// λ of the lowest-ranked sample of a class (rank map). Default: 0.2.
    pub lambda_min: Option<f64>,
    /// Score at which the sigmoid map gives 0.5. Default: 0.1.
    pub sigmoid_center: Option<f64>,
    /// Width of the sigmoid map. Default: 0.05.
    pub sigmoid_scale: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawLabelMode {
    Hard,
    Soft,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawLambdaMap {
    Ratio,
    Rank,
    Sigmoid,
}

/// The network.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// "googlenet" (BVLC, with LRN) or "googlenet-bn". Default: "googlenet".
    pub arch: Option<RawArch>,
    /// Heads: any of "classification", "regression" (topic-vector regression, the 2-headed
    /// net). Default: ["classification"].
    pub heads: Option<Vec<RawHead>>,
    /// Weights of the classification and regression tasks. Default: [0.75, 0.25].
    pub task_weights: Option<[f64; 2]>,
    /// Weights of the auxiliary heads after 4a and 4d. Default: [0.3, 0.3].
    pub aux_weights: Option<[f64; 2]>,
    /// Input side in pixels; must equal train.augmentation.crop. Default: 224.
    pub input_size: Option<i64>,
    /// Width multiplier of every layer. Default: 1.0.
    pub width: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawArch {
    Googlenet,
    GooglenetBn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawHead {
    Classification,
    Regression,
}

/// Optimisation.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    /// "cpu", "cuda" (all GPUs) or "cuda:0,1". Default: "cpu".
    pub devices: Option<String>,
    /// Images per device in each step. Default: 80.
    pub batch_per_device: Option<i64>,
    /// Training length in iterations (exclusive with `epochs`).
    pub iterations: Option<i64>,
    /// Training length in epochs over the kept samples (exclusive with `iterations`).
    pub epochs: Option<i64>,
    /// "shuffle", "replacement" (the original), "half-balanced", "balanced", "weighted" or
    /// "curriculum". Default: "replacement".
    pub sampler: Option<RawSampler>,
    /// The curriculum's schedule (with sampler = "curriculum").
    pub curriculum: Option<RawCurriculum>,
    /// "f32", "tf32" (f32 tensors, TensorFloat-32 matrix products and convolutions on CUDA;
    /// plain f32 on the CPU) or "bf16" (bf16 activations, f32 weights, momentum and loss).
    /// Default: "f32".
    pub precision: Option<RawPrecision>,
    /// Checkpoint every this many iterations. Default: 10000.
    pub checkpoint_every: Option<i64>,
    /// Start from another run's final weights: a run name or a checkpoint file.
    pub init: Option<String>,
    /// Loader threads. Default: 4.
    pub workers: Option<i64>,
    /// On the CPU: ranks of data parallelism in this process, one thread each, sharing every
    /// batch (`batch_per_device` stays the whole batch); set it to the cores you give the run.
    /// The same training up to float rounding. Default: 1.
    pub cpu_ranks: Option<i64>,
    /// Seed of the weights, sampling, augmentation, dropout and the holdout. Default: 0.
    pub seed: Option<i64>,
    /// Share of each class's training samples held out of training, to choose the best epoch
    /// on (never the validation set): in [0, 0.5). Default: 0 (none).
    pub holdout: Option<f64>,
    /// With a holdout: evaluate on it at the end of every this many epochs (every epoch
    /// unless set), keeping the best epoch's weights beside the last. Needs `holdout`.
    pub eval_every: Option<i64>,
    pub optimizer: Option<RawOptimizer>,
    pub schedule: Option<RawSchedule>,
    pub augmentation: Option<RawAugmentation>,
    pub divergence: Option<RawDivergence>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawSampler {
    Shuffle,
    Replacement,
    HalfBalanced,
    Balanced,
    Weighted,
    Curriculum,
}

/// `sampler = "curriculum"`: batches draw from each class's most plausible samples by text
/// score first, then from more of them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCurriculum {
    /// The share of every class drawn from at the start, in (0, 1]; without it, 0.5 (no
    /// schema default: the table is only read with its sampler).
    pub start: Option<f64>,
    /// Epochs (of the kept samples' worth of images) over which the share grows linearly to
    /// 1; without it, half of `train.epochs`.
    pub ramp_epochs: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawPrecision {
    F32,
    Tf32,
    Bf16,
}

/// SGD with momentum and weight decay (Caffe's rule).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOptimizer {
    /// Only "sgd". Default: "sgd".
    pub kind: Option<RawOptimizerKind>,
    /// Base learning rate. Default: 0.01.
    pub lr: Option<f64>,
    /// Momentum. Default: 0.9.
    pub momentum: Option<f64>,
    /// L2 weight decay (not on biases). Default: 0.0002.
    pub weight_decay: Option<f64>,
    /// Bias learning-rate multiplier (biases are not decayed). Default: 2.0.
    pub bias_lr_mult: Option<f64>,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawOptimizerKind {
    Sgd,
}

/// Learning-rate schedule, in iterations.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// "fixed", "step", "multistep", "poly" or "cosine". Default: "poly".
    pub policy: Option<RawPolicy>,
    /// step and multistep: lr multiplier per step. Default: 0.1.
    pub gamma: Option<f64>,
    /// step: iterations per step.
    pub step_size: Option<i64>,
    /// multistep: the iterations at which the lr drops.
    pub steps: Option<Vec<i64>>,
    /// poly: exponent. Default: 0.5 (BVLC GoogLeNet's quick solver).
    pub power: Option<f64>,
    /// cosine: the final lr. Default: 0.
    pub min_lr: Option<f64>,
    /// Linear warm-up length. Default: 0.
    pub warmup_iterations: Option<i64>,
    /// Warm-up starts at lr × this. Default: 0.1.
    pub warmup_start_factor: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawPolicy {
    Fixed,
    Step,
    Multistep,
    Poly,
    Cosine,
}

/// Training-time augmentation.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAugmentation {
    /// Random square crop side. Default: 224.
    pub crop: Option<i64>,
    /// Random horizontal mirror. Default: true.
    pub mirror: Option<bool>,
    /// Mean subtracted per channel, in RGB order, 0..255. Default: [123.68, 116.779, 103.939],
    /// ImageNet's (Caffe's BGR means reordered to RGB).
    pub mean_rgb: Option<[f32; 3]>,
}

/// What to do when the loss becomes NaN/Inf or spikes.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDivergence {
    /// "stop" or "rollback". Default: "stop".
    pub action: Option<RawDivergenceAction>,
    /// rollback: the lr is multiplied by this. Default: 0.5.
    pub lr_factor: Option<f64>,
    /// rollback: give up after this many. Default: 3.
    pub max_rollbacks: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawDivergenceAction {
    Stop,
    Rollback,
}

/// Evaluation on the validation split.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEval {
    /// "center", "four" (corners), "eight" (corners and mirrors) or "ten" (corners, center,
    /// and mirrors). Default: "center".
    pub crops: Option<RawCrops>,
    /// What to report: "top1", "top5". Default: ["top1", "top5"].
    pub metrics: Option<Vec<RawMetric>>,
    /// Other runs (by name) whose probabilities are averaged with this run's.
    pub ensemble: Option<Vec<String>>,
    /// Samples per evaluation batch. Default: 50.
    pub batch_size: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawCrops {
    Center,
    Four,
    Eight,
    Ten,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawMetric {
    Top1,
    Top5,
}
