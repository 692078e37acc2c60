//! The validated settings of each stage: what a recipe means once defaults are filled in,
//! paths resolved and every value checked. Stages take these, never the raw TOML.
//!
//! Every struct is `Serialize` so that the stage cache can hash exactly the settings a stage
//! reads, and `runner` can write `recipe.resolved.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `train.precision`, defined beside the batches whose element type it sets.
pub use crate::sample::Precision;
use crate::sample::Source;

/// `[dataset]`: where the images and their text come from and how they are stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetParams {
    pub format: DatasetFormat,
    /// Dataset root, resolved against the recipe's folder. `None` for `synthetic`.
    pub root: Option<PathBuf>,
    /// WebVision sources to read; ignored by formats without sources.
    pub sources: Vec<Source>,
    /// Target size in pixels: both sides for `squash`, the shorter side for `shorter-side`.
    pub resize: u32,
    pub resize_mode: ResizeMode,
    pub encoding: StoreEncoding,
    /// Ingest the validation split as well (WebVision `val_filelist.txt`).
    pub val: bool,
    /// Keep at most this many training images per class (first in file-list order).
    pub max_per_class: Option<usize>,
    /// The classes kept (every split), relabelled 0.. in the dataset's class order. Left out
    /// of the serialized settings when it is every class, so that stage keys made before the
    /// setting existed still hold.
    #[serde(skip_serializing_if = "ClassSubset::is_all")]
    pub classes: ClassSubset,
    /// A second validation set (ILSVRC2012 val beside WebVision val), evaluated beside the
    /// first. Like every new setting, left out of the serialized settings when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_val: Option<SecondVal>,
    /// Counts the dataset must have, checked before any image is ingested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectedCounts>,
    pub synthetic: SyntheticParams,
}

/// `[dataset.second_val]`: an ImageNet-style validation folder whose images are mapped to the
/// dataset's classes by class id (wnid).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondVal {
    /// How tables name it, e.g. "ILSVRC2012 val".
    pub name: String,
    /// The images: listed by `labels`, or in one folder per class id (`root/<wnid>/…`).
    pub root: PathBuf,
    /// `<image path below root> <class id>` per line (ILSVRC2012's labels as wnids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
}

/// `[dataset.expect]`: what a dataset must list once cut to the recipe's classes and sources
/// (mini-WebVision: 50 classes, 65,944 training images, 2,500 + 2,500 validation images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedCounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_val: Option<usize>,
}

/// `dataset.classes`: which of a dataset's classes a run keeps. Serialized as a recipe
/// writes it: `"all"`, `"first:N"`, or the list of class ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassSubset {
    All,
    /// The first N classes of the dataset's class list (WebVision's `synsets.txt`).
    First(usize),
    /// These class ids (WordNet ids, folder names), in any order.
    Ids(Vec<String>),
}

impl ClassSubset {
    pub fn is_all(&self) -> bool {
        *self == ClassSubset::All
    }
}

impl Serialize for ClassSubset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClassSubset::All => s.serialize_str("all"),
            ClassSubset::First(n) => s.serialize_str(&format!("first:{n}")),
            ClassSubset::Ids(ids) => ids.serialize(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    Webvision,
    Imagefolder,
    Jsonl,
    Synthetic,
    /// Clothing1M's key and label lists; its clean labels are the noise truth.
    Clothing1m,
    /// Food-101N's `meta/` lists; its verification labels are the noise truth.
    Food101n,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Both sides to `resize` (the original pipeline's 256×256).
    Squash,
    /// Shorter side to `resize`, aspect ratio kept.
    ShorterSide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum StoreEncoding {
    /// Raw RGB u8, as the original store.
    Raw,
    /// JPEG at the given quality (1..=100).
    Jpeg { quality: u8 },
}

/// Settings of the generated WebVision-like dataset (`format = "synthetic"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticParams {
    pub classes: usize,
    /// Training images per class, smallest and largest (sizes follow a long tail between).
    pub min_per_class: usize,
    pub max_per_class: usize,
    pub val_per_class: usize,
    /// Share of training images whose label is wrong.
    pub noise: f64,
    /// Side of the generated images in pixels.
    pub image_size: u32,
    pub seed: u64,
    /// Training images in all, in WebVision 1.0's shape (`dataset::synthetic`): log-normal
    /// class sizes clipped to `min_per_class..=max_per_class`, page text of WebVision's length
    /// over a large vocabulary. `None`: the quickstart's small shape. Left out of the JSON
    /// (and so of cache keys) when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_samples: Option<usize>,
}

/// Which fields of a sample's page text make up its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextField {
    Title,
    Description,
    Tags,
}

/// `[text]`: from page text to bag-of-words documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextParams {
    pub google_fields: Vec<TextField>,
    pub flickr_fields: Vec<TextField>,
    /// Fields for sources without a search engine (imagefolder, jsonl, synthetic).
    pub other_fields: Vec<TextField>,
    /// Drop English stop words.
    pub english_stop_words: bool,
    /// Drop web words (wikipedia, google, flickr, photo, image, ...).
    pub web_stop_words: bool,
    pub extra_stop_words: Vec<String>,
    /// Porter stemming.
    pub stemming: bool,
    /// Minimum corpus count of a word to enter the vocabulary.
    pub min_count: u32,
    /// Maximum share of documents a word may appear in (0 < x ≤ 1).
    pub max_doc_freq: f64,
    /// At most this many words, the most frequent: LDA's memory is topics × words.
    pub max_words: usize,
}

impl TextParams {
    pub fn fields(&self, source: Source) -> &[TextField] {
        match source {
            Source::Google => &self.google_fields,
            Source::Flickr => &self.flickr_fields,
            Source::Other => &self.other_fields,
        }
    }
}

/// `[lda]`: online variational Bayes (Hoffman, Blei & Bach 2010).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LdaParams {
    pub topics: usize,
    pub passes: usize,
    /// Documents per M-step update (gensim's chunksize).
    pub batch_size: usize,
    pub alpha: Alpha,
    /// Topic-word prior; `None` means 1/K.
    pub eta: Option<f64>,
    /// Learning-rate offset τ0 (gensim's `offset`).
    pub tau0: f64,
    /// Learning-rate decay κ in (0.5, 1] (gensim's `decay`).
    pub kappa: f64,
    pub e_step_iterations: usize,
    pub e_step_tolerance: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Alpha {
    /// The same prior for every topic; `None` means 1/K.
    Symmetric(Option<f64>),
    /// Learned by Newton steps after each update (gensim's `alpha="auto"`).
    Learned,
}

/// `[clean]`: how a sample's score is computed and which samples are discarded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanParams {
    pub similarity: Similarity,
    /// How each class's mean topic vector is estimated (out of the key when `All`, as before
    /// it existed).
    #[serde(skip_serializing_if = "ClassMean::is_all")]
    pub mean: ClassMean,
    /// How scores are made comparable across classes (out of the key when `None`).
    #[serde(skip_serializing_if = "Calibration::is_none")]
    pub calibration: Calibration,
    pub rule: CleanRule,
    /// Classes with fewer training samples than this are lenient: they discard
    /// `small_class_factor` times what the rule would.
    pub small_class: usize,
    pub small_class_factor: f64,
    /// Truth file (path, given_label, true_label, ...) for noise-detection metrics.
    pub truth: Option<PathBuf>,
    /// What the score combines (out of the key when the text alone, as before it existed).
    #[serde(skip_serializing_if = "SignalWeights::is_text_only")]
    pub signals: SignalWeights,
}

/// `[clean.signals]`: the weight of each signal in a sample's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SignalWeights {
    /// Topic similarity to the class mean.
    pub text: f64,
    /// The image's standing in its query's search results (the dataset's lists).
    /// Out of the key when 0, as before it existed.
    #[serde(skip_serializing_if = "is_zero")]
    pub search: f64,
    /// Out-of-fold predicted probability of the given label (the `probe` stage).
    pub confidence: f64,
    /// k-NN label agreement in the probe network's features (the `probe` stage).
    pub knn: f64,
}

fn is_zero(weight: &f64) -> bool {
    *weight == 0.0
}

impl SignalWeights {
    pub const TEXT_ONLY: SignalWeights = SignalWeights {
        text: 1.0,
        search: 0.0,
        confidence: 0.0,
        knn: 0.0,
    };

    /// The text alone: the score is the topic similarity itself, not a rank.
    pub fn is_text_only(&self) -> bool {
        !self.reads_probe() && !self.reads_search()
    }

    /// Whether an image signal counts, so that the `probe` stage runs.
    pub fn reads_probe(&self) -> bool {
        self.confidence > 0.0 || self.knn > 0.0
    }

    /// Whether the search standing counts, so that the score stage reads the dataset's lists.
    pub fn reads_search(&self) -> bool {
        self.search > 0.0
    }
}

/// `[probe]`: the out-of-fold image evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeParams {
    /// Each sample's class is dealt over this many folds; fold f's network trains on the rest.
    pub folds: usize,
    pub epochs: u64,
    /// Width multiplier of the probe's network; `None`: the recipe's `model.width`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<f64>,
    pub neighbours: usize,
}

/// How a class's mean topic vector is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ClassMean {
    /// Over all of the class's samples.
    All,
    /// Over all but the lowest-scored `share` of the class, estimated again `rounds` times
    /// from the scores of the previous estimate: 20-40% of a web class is noise, which pulls
    /// the plain mean toward it.
    Trimmed { share: f64, rounds: u32 },
}

impl ClassMean {
    pub fn is_all(&self) -> bool {
        *self == ClassMean::All
    }
}

/// How a class's scores are put on a scale shared by every class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Calibration {
    /// The similarities as they are: a class whose pages share many words scores higher.
    None,
    /// `(s − median) / (1.4826 · MAD)` within the class: how far below its class's typical
    /// sample a sample lies, in robust standard deviations, so that one threshold (or a
    /// sigmoid λ) means the same in every class.
    ClassZ,
}

impl Calibration {
    pub fn is_none(&self) -> bool {
        *self == Calibration::None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    /// Dot product with the class mean (what the original code computed).
    Dot,
    /// Cosine similarity with the class mean (what its write-up describes).
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum CleanRule {
    /// Keep everything (scores are still computed).
    None,
    /// Discard samples scoring below this value.
    Threshold(f64),
    /// Discard this share of each class, lowest scores first.
    Fraction(f64),
    /// Keep only the samples the truth file says are labelled correctly: the upper bound of
    /// any cleaning, for experiments (it reads the answer, so it is never a method).
    Oracle,
}

/// `[labels]`: hard labels, or soft labels that weight each sample's loss by λ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum LabelParams {
    Hard,
    Soft { lambda: LambdaMap },
}

/// How a sample's score s becomes its loss weight λ ∈ [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum LambdaMap {
    /// `min(1, s / s0)`: the original (s0 = 0.1).
    Ratio { s0: f64 },
    /// Linear in the sample's rank within its class, from `min` (lowest) to 1 (highest).
    Rank { min: f64 },
    /// `1 / (1 + exp(-(s - center) / scale))`.
    Sigmoid { center: f64, scale: f64 },
}

/// `[model]`: the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelParams {
    pub arch: Arch,
    pub classification: bool,
    /// Regression heads predicting the LDA topic vector (the 2-headed variant).
    pub regression: bool,
    /// Weights of the classification and regression tasks.
    pub task_weights: [f64; 2],
    /// Weights of the two auxiliary heads (after 4a and 4d); the main head weighs 1.
    pub aux_weights: [f64; 2],
    pub input_size: u32,
    /// Multiplies every layer's width (1.0 = the published GoogLeNet).
    pub width: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// BVLC GoogLeNet (Inception v1) with LRN, as in Caffe.
    Googlenet,
    /// The same with batch norm after every convolution and no LRN.
    GooglenetBn,
}

/// `[train]`: optimisation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainParams {
    pub devices: Devices,
    pub batch_per_device: usize,
    pub optimizer: SgdParams,
    pub schedule: Schedule,
    pub length: TrainLength,
    pub augmentation: Augmentation,
    pub sampler: SamplerKind,
    pub precision: Precision,
    /// Save a checkpoint every this many iterations (and at the end).
    pub checkpoint_every: u64,
    /// Start from another run's final checkpoint (its run name or a checkpoint path).
    pub init: Option<String>,
    pub on_divergence: OnDivergence,
    /// Loader threads.
    pub workers: usize,
    /// On the CPU, ranks of data parallelism in this process, each a thread that computes
    /// alone on its share of every batch (`batch_per_device` is still the whole batch): the
    /// same training up to float rounding, and faster than one rank splitting each small
    /// operation over the threads. Out of the key when 1.
    #[serde(skip_serializing_if = "is_one")]
    pub cpu_ranks: usize,
    pub seed: u64,
    /// Training samples held out to choose the best epoch on; `None` without a holdout (its
    /// keys are then absent from the serialized settings, so earlier train keys hold).
    #[serde(flatten)]
    pub holdout: Option<Holdout>,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `train.holdout` and `train.eval_every`: a share of each class's training samples is kept
/// out of training (drawn from `train.seed`) and evaluated on at the end of every
/// `eval_every` epochs; the best epoch on it is kept beside the last. Never the val set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Holdout {
    /// Share of each class held out, in (0, 0.5): every class keeps most of its samples.
    #[serde(rename = "holdout")]
    pub share: f64,
    /// Epochs between evaluations on the holdout.
    pub eval_every: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "ids")]
pub enum Devices {
    Cpu,
    /// All visible CUDA GPUs.
    CudaAll,
    /// These CUDA GPUs.
    Cuda(Vec<usize>),
}

/// SGD with momentum and weight decay, Caffe's update rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Biases learn at this multiple of the lr and are not decayed (Caffe: 2).
    pub bias_lr_mult: f64,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
}

/// Learning-rate schedule in iterations, Caffe's `lr_policy` formulas, plus cosine and a
/// linear warm-up (Goyal et al. 2017).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub policy: LrPolicy,
    pub warmup_iterations: u64,
    /// Warm-up starts at `lr * warmup_start_factor`.
    pub warmup_start_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum LrPolicy {
    Fixed,
    /// lr · γ^floor(iter / step_size)
    Step {
        gamma: f64,
        step_size: u64,
    },
    /// lr · γ^(number of steps passed)
    Multistep {
        gamma: f64,
        steps: Vec<u64>,
    },
    /// lr · (1 − iter/max_iter)^power
    Poly {
        power: f64,
    },
    /// min_lr + (lr − min_lr) · (1 + cos(π · iter/max_iter)) / 2
    Cosine {
        min_lr: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainLength {
    Iterations(u64),
    Epochs(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Augmentation {
    /// Side of the random square crop.
    pub crop: u32,
    pub mirror: bool,
    /// Per-channel mean subtracted from every pixel, in RGB order (0..255 scale).
    pub mean_rgb: [f32; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Each epoch a fresh permutation.
    Shuffle,
    /// Uniform sampling with replacement (the original).
    Replacement,
    /// Oversample every class to at least half the largest class (the original's later fix).
    HalfBalanced,
    /// Every class equally often.
    Balanced,
    /// Sampling probability proportional to the score stage's λ.
    Weighted,
    /// A curriculum by text score: each batch draws uniformly from the most plausible `start`
    /// share of every class, a share that grows linearly to all of it over `ramp_epochs`
    /// epochs' worth of images.
    Curriculum { start: f64, ramp_epochs: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum OnDivergence {
    /// Stop with an error naming the step.
    Stop,
    /// Roll back to the last good checkpoint and multiply the lr by `lr_factor`.
    Rollback { lr_factor: f64, max_rollbacks: u32 },
}

/// `[eval]`: how the trained model is evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalParams {
    pub crops: CropSet,
    pub metrics: Vec<Metric>,
    /// Other runs (by name) whose probabilities are averaged with this run's.
    pub ensemble: Vec<String>,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CropSet {
    /// One center crop.
    Center,
    /// The four corner crops.
    Four,
    /// The four corner crops and their mirrors.
    Eight,
    /// 4 corners + center, each with its mirror (Krizhevsky et al.).
    Ten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Top1,
    Top5,
}

impl std::fmt::Display for Devices {
    /// As written in a recipe: "cpu", "cuda", "cuda:0,1".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Devices::Cpu => f.write_str("cpu"),
            Devices::CudaAll => f.write_str("cuda"),
            Devices::Cuda(ids) => {
                let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                write!(f, "cuda:{}", ids.join(","))
            }
        }
    }
}
