//! Validation: a merged [`RawRecipe`] becomes a [`Recipe`]: defaults filled in, paths resolved,
//! ranges and combinations checked, and every size that drives an allocation (LDA's matrices,
//! training and eval batches, a stored image) held to [`MEMORY_BUDGET`]. Every problem is
//! reported (not just the first), each at the text that set the offending key.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::diag::{Diagnostic, Origin, RecipeError};
use super::load::SourceMap;
use super::params::*;
use super::raw::*;
use super::Recipe;
use crate::sample::Source;
use crate::units::memory_text;

/// The most memory one allocation a recipe sizes may need, whatever the machine: a fixed bound
/// that turns a mistyped size (`lda.topics = 100000000`) into a recipe error instead of an
/// abort mid-run. Real recipes stay far below it (the original's LDA matrices take 800 MB, a
/// training batch of 80 at 224 px 48 MB).
pub const MEMORY_BUDGET: u64 = 64 << 30;

struct Validator<'a> {
    sources: &'a SourceMap,
    errors: Vec<RecipeError>,
}

impl Validator<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        let diag = Diagnostic::placed(
            format!("`{key}`: {}", message.into()),
            self.sources.place(key),
        );
        self.errors.push(diag.into());
    }

    /// `value` (or `default`) checked against `ok`, which says what is allowed.
    fn check<T: Copy + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        default: T,
        ok: impl Fn(T) -> bool,
        allowed: &str,
    ) -> T {
        let v = value.unwrap_or(default);
        if !ok(v) {
            self.error(key, format!("{v} is out of range: expected {allowed}"));
        }
        v
    }

    fn positive(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        self.check(
            key,
            value,
            default,
            |v| v > 0.0 && v.is_finite(),
            "a number > 0",
        )
    }

    fn non_negative(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        self.check(
            key,
            value,
            default,
            |v| v >= 0.0 && v.is_finite(),
            "a number ≥ 0",
        )
    }

    /// A share of something that cannot be empty: in (0, 1].
    fn share(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        self.check(
            key,
            value,
            default,
            |v| v > 0.0 && v <= 1.0,
            "a share in (0, 1]",
        )
    }

    fn unit(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        self.check(
            key,
            value,
            default,
            |v| (0.0..=1.0).contains(&v),
            "a number in [0, 1]",
        )
    }

    /// A whole number in `range` that fits `T`, else `None` with the error recorded. Raw
    /// recipes read every integer as i64 and ranges are checked only here, so that every
    /// value outside a setting's range (-32 and 0 alike) gets the same message.
    fn whole_in<T: Whole>(&mut self, key: &str, v: i64, range: RangeInclusive<i64>) -> Option<T> {
        let fits = T::try_from(v).ok().filter(|_| range.contains(&v));
        if fits.is_none() {
            let allowed = match (range.start(), range.end()) {
                (min, &i64::MAX) => format!("a whole number ≥ {min}"),
                (min, max) => format!("a whole number in {min}..={max}"),
            };
            self.error(key, format!("{v} is out of range: expected {allowed}"));
        }
        fits
    }

    /// `value` (or `default`) in `range`.
    fn within<T: Whole>(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: T,
        range: RangeInclusive<i64>,
    ) -> T {
        let v = value.unwrap_or_else(|| default.to_i64().expect("defaults fit i64"));
        self.whole_in(key, v, range).unwrap_or(default)
    }

    /// `value` (or `default`) between `min` and the largest `T`.
    fn at_least<T: Whole>(&mut self, key: &str, value: Option<i64>, default: T, min: i64) -> T {
        self.within(key, value, default, min..=largest::<T>())
    }

    /// An error where `bytes`, which `what` needs, exceed [`MEMORY_BUDGET`]; at the one of
    /// `keys` (the settings that size it) set last, else at the first.
    fn within_budget(&mut self, keys: &[&str], bytes: u128, what: impl FnOnce() -> String) {
        if bytes <= u128::from(MEMORY_BUDGET) {
            return;
        }
        let key = self.sources.last_set(keys).unwrap_or(keys[0]);
        let message = format!(
            "{} would take {}, over the memory budget of {} (a fixed bound in websieve \
             against mistyped sizes, not this machine's memory)",
            what(),
            memory_text(bytes),
            memory_text(u128::from(MEMORY_BUDGET)),
        );
        self.error(key, message);
    }

    /// `value` resolved against the folder of the file that set `key`, made absolute (and
    /// canonical where it exists), so that a run means the same data from any working folder
    /// and its resolved recipe loads back from anywhere.
    fn path(&self, key: &str, value: &str) -> PathBuf {
        let path = self.sources.base_dir(key).join(value);
        path.canonicalize()
            .or_else(|_| std::path::absolute(&path))
            .unwrap_or(path)
    }
}

/// The unsigned integer types of settings.
trait Whole: Copy + TryFrom<i64> + num_traits::Bounded + num_traits::ToPrimitive {}

impl<T: Copy + TryFrom<i64> + num_traits::Bounded + num_traits::ToPrimitive> Whole for T {}

/// The largest `T` a recipe can write (TOML integers are i64).
fn largest<T: Whole>() -> i64 {
    T::max_value().to_i64().unwrap_or(i64::MAX)
}

/// Validates a merged raw recipe named `name`.
pub fn validate(name: String, raw: RawRecipe, sources: &SourceMap) -> Result<Recipe, RecipeError> {
    let mut v = Validator {
        sources,
        errors: Vec::new(),
    };
    let dataset = dataset(&mut v, raw.dataset.unwrap_or_default());
    let text = text(&mut v, raw.text.unwrap_or_default());
    let lda = lda(&mut v, raw.lda.unwrap_or_default());
    let clean = clean(&mut v, raw.clean.unwrap_or_default());
    let probe = probe(&mut v, raw.probe.unwrap_or_default());
    let labels = labels(&mut v, raw.labels.unwrap_or_default());
    let model = model(&mut v, raw.model.unwrap_or_default());
    let train = train(&mut v, raw.train.unwrap_or_default());
    let eval = eval(&mut v, raw.eval.unwrap_or_default());
    if model.input_size != train.augmentation.crop {
        v.error(
            "model.input_size",
            format!(
                "{} differs from train.augmentation.crop = {}: the network is fed the crops",
                model.input_size, train.augmentation.crop
            ),
        );
    }
    if train.augmentation.crop > dataset.resize {
        v.error(
            "train.augmentation.crop",
            format!(
                "{} is larger than dataset.resize = {}",
                train.augmentation.crop, dataset.resize
            ),
        );
    }
    memory(&mut v, &dataset, &text, &lda, &train, &eval);
    if clean.rule == CleanRule::Oracle
        && clean.truth.is_none()
        && !matches!(
            dataset.format,
            DatasetFormat::Synthetic | DatasetFormat::Clothing1m | DatasetFormat::Food101n
        )
    {
        v.error(
            "clean.rule",
            "\"oracle\" keeps what a truth file says is labelled correctly: set `clean.truth` \
             (the generated dataset, Clothing1M and Food-101N bring their own)",
        );
    }
    if clean.signals.reads_search()
        && !matches!(
            dataset.format,
            DatasetFormat::Webvision | DatasetFormat::Synthetic
        )
    {
        v.error(
            "clean.signals.search",
            "weighs where each image stood in its query's search results, which only webvision \
             (and synthetic) lists keep: set it to 0 for this dataset",
        );
    }
    if let Some(format) = match dataset.format {
        DatasetFormat::Clothing1m => Some("Clothing1M"),
        DatasetFormat::Food101n => Some("Food-101N"),
        _ => None,
    } {
        text_free(&mut v, format, &clean, &labels, &model, &train);
    }
    if train.cpu_ranks > 1 && train.devices != Devices::Cpu {
        v.error(
            "train.cpu_ranks",
            "ranks of threads are for the CPU (train.devices = \"cpu\"); GPUs get a process each",
        );
    }
    if train.cpu_ranks > train.batch_per_device {
        v.error(
            "train.cpu_ranks",
            format!(
                "{} ranks share each batch of train.batch_per_device = {}: every rank needs a row",
                train.cpu_ranks, train.batch_per_device
            ),
        );
    }
    // The ratio λ reads raw similarities; a score that is not one names why.
    let ratio_lambda = matches!(
        labels,
        LabelParams::Soft {
            lambda: LambdaMap::Ratio { .. }
        }
    );
    if ratio_lambda && !clean.signals.is_text_only() {
        v.error(
            "labels.lambda",
            "\"ratio\" (min(1, s / s0)) reads raw similarities; with several signals the score \
             is a weighted mean of ranks within the class, in [0, 1]: use \"rank\" or \"sigmoid\"",
        );
    }
    if ratio_lambda && clean.calibration == Calibration::ClassZ {
        v.error(
            "labels.lambda",
            "\"ratio\" (min(1, s / s0)) reads raw similarities; calibrated scores are robust \
             z-scores: use \"sigmoid\" (e.g. center = -2, scale = 0.5) or \"rank\"",
        );
    }
    if matches!(train.sampler, SamplerKind::Weighted) && matches!(labels, LabelParams::Hard) {
        v.error(
            "train.sampler",
            "\"weighted\" samples by λ, which needs labels.mode = \"soft\"",
        );
    }
    match v.errors.len() {
        0 => Ok(Recipe {
            name,
            path: PathBuf::new(),
            dataset,
            text,
            lda,
            clean,
            probe,
            labels,
            model,
            train,
            eval,
        }),
        1 => Err(v.errors.pop().expect("one error")),
        _ => Err(RecipeError::Many(v.errors)),
    }
}

/// Holds every size that drives an allocation to the budget.
/// A dataset whose lists carry no page text trains on its labels as given (or the oracle's):
/// every setting that reads the text score is refused where it is written.
fn text_free(
    v: &mut Validator,
    format: &str,
    clean: &CleanParams,
    labels: &LabelParams,
    model: &ModelParams,
    train: &TrainParams,
) {
    let why = format!("{format} lists carry no page text, so every text score is the same");
    // With image signals the rules and λ have evidence to go on: the text's ties rank alike.
    let text_only = clean.signals.is_text_only();
    if text_only && matches!(clean.rule, CleanRule::Threshold(_) | CleanRule::Fraction(_)) {
        v.error(
            "clean.rule",
            format!("discards by text score, but {why}: use \"none\" (the labels as given) or \"oracle\""),
        );
    }
    if text_only && matches!(labels, LabelParams::Soft { .. }) {
        v.error(
            "labels.mode",
            format!("\"soft\" weights each loss by the text score, but {why}: use \"hard\""),
        );
    }
    if model.regression {
        v.error(
            "model.heads",
            format!("\"regression\" regresses the page's topic vector, but {format} lists carry no page text"),
        );
    }
    if text_only
        && matches!(
            train.sampler,
            SamplerKind::Weighted | SamplerKind::Curriculum { .. }
        )
    {
        v.error(
            "train.sampler",
            format!(
                "draws by text score, but {why}: use \"shuffle\", \"replacement\" or \"balanced\""
            ),
        );
    }
}

fn memory(
    v: &mut Validator,
    dataset: &DatasetParams,
    text: &TextParams,
    lda: &LdaParams,
    train: &TrainParams,
    eval: &EvalParams,
) {
    v.within_budget(
        &["lda.topics", "text.max_words"],
        crate::lda::topic_word_bytes(lda.topics, text.max_words),
        || {
            format!(
                "LDA's {} f32 topic-word matrices for {} topics over up to text.max_words = {} \
                 words",
                crate::lda::TOPIC_WORD_MATRICES,
                lda.topics,
                text.max_words,
            )
        },
    );
    let dtype = train.precision.activations();
    let crop = train.augmentation.crop;
    let crop_bytes = u128::from(crop).pow(2) * 3 * dtype.size_in_bytes() as u128;
    v.within_budget(
        &["train.batch_per_device", "train.augmentation.crop"],
        train.batch_per_device as u128 * crop_bytes,
        || {
            format!(
                "a training batch of {} crops of {crop}×{crop}×3 {}",
                train.batch_per_device,
                dtype.as_str()
            )
        },
    );
    let crops = crate::loader::crop_boxes(eval.crops, dataset.resize, dataset.resize, crop).len();
    v.within_budget(
        &["eval.batch_size", "eval.crops"],
        eval.batch_size as u128 * crops as u128 * crop_bytes,
        || {
            format!(
                "an eval batch of {} samples × {crops} crops of {crop}×{crop}×3 {}",
                eval.batch_size,
                dtype.as_str()
            )
        },
    );
    let side = dataset.resize;
    v.within_budget(&["dataset.resize"], u128::from(side).pow(2) * 3, || {
        format!("one stored image of {side}×{side}×3 bytes (at least)")
    });
}

fn dataset(v: &mut Validator, raw: RawDataset) -> DatasetParams {
    let format = match raw.format.unwrap_or(RawDatasetFormat::Webvision) {
        RawDatasetFormat::Webvision => DatasetFormat::Webvision,
        RawDatasetFormat::Imagefolder => DatasetFormat::Imagefolder,
        RawDatasetFormat::Jsonl => DatasetFormat::Jsonl,
        RawDatasetFormat::Synthetic => DatasetFormat::Synthetic,
        RawDatasetFormat::Clothing1m => DatasetFormat::Clothing1m,
        RawDatasetFormat::Food101n => DatasetFormat::Food101n,
    };
    // A generated dataset has no root: one inherited from a base recipe is ignored.
    let root = match format {
        DatasetFormat::Synthetic => None,
        _ => raw.root.as_deref().map(|r| v.path("dataset.root", r)),
    };
    if root.is_none() && format != DatasetFormat::Synthetic {
        v.error(
            "dataset",
            "`root` is required unless format = \"synthetic\"",
        );
    }
    let sources = raw
        .sources
        .unwrap_or_else(|| vec![RawSource::Google, RawSource::Flickr])
        .into_iter()
        .map(|s| match s {
            RawSource::Google => Source::Google,
            RawSource::Flickr => Source::Flickr,
        })
        .collect::<Vec<_>>();
    if sources.is_empty() {
        v.error("dataset.sources", "needs at least one source");
    }
    let quality = v.within("dataset.jpeg_quality", raw.jpeg_quality, 90, 1..=100);
    let syn = raw.synthetic.unwrap_or_default();
    let min_per_class = v.at_least("dataset.synthetic.min_per_class", syn.min_per_class, 40, 2);
    let synthetic = SyntheticParams {
        classes: v.at_least("dataset.synthetic.classes", syn.classes, 10, 2),
        min_per_class,
        max_per_class: v.at_least(
            "dataset.synthetic.max_per_class",
            syn.max_per_class,
            120,
            min_per_class as i64,
        ),
        val_per_class: v.at_least("dataset.synthetic.val_per_class", syn.val_per_class, 20, 1),
        noise: v.check(
            "dataset.synthetic.noise",
            syn.noise,
            0.3,
            |n| (0.0..0.9).contains(&n),
            "[0, 0.9)",
        ),
        // Written as JPEGs, whose sides are at most 65535.
        image_size: v.within(
            "dataset.synthetic.image_size",
            syn.image_size,
            64,
            16..=65535,
        ),
        seed: v.at_least("dataset.synthetic.seed", syn.seed, 0, 0),
        train_samples: syn
            .train_samples
            .and_then(|n| v.whole_in("dataset.synthetic.train_samples", n, 1..=largest::<u32>())),
    };
    DatasetParams {
        format,
        root,
        sources,
        resize: v.at_least("dataset.resize", raw.resize, 256, 8),
        resize_mode: match raw.resize_mode.unwrap_or(RawResizeMode::Squash) {
            RawResizeMode::Squash => ResizeMode::Squash,
            RawResizeMode::ShorterSide => ResizeMode::ShorterSide,
        },
        encoding: match raw.encoding.unwrap_or(RawEncoding::Raw) {
            RawEncoding::Raw => StoreEncoding::Raw,
            RawEncoding::Jpeg => StoreEncoding::Jpeg { quality },
        },
        val: raw.val.unwrap_or(true),
        max_per_class: raw
            .max_per_class
            .and_then(|m| v.whole_in("dataset.max_per_class", m, 1..=largest::<usize>())),
        classes: classes(v, raw.classes),
        second_val: raw.second_val.and_then(|sv| second_val(v, sv)),
        expect: raw.expect.map(|e| expected_counts(v, e)),
        synthetic,
    }
}

fn expected_counts(v: &mut Validator, raw: RawExpect) -> ExpectedCounts {
    let mut count = |key: &str, value: Option<i64>, min: i64| {
        value.and_then(|n| v.whole_in(&format!("dataset.expect.{key}"), n, min..=i64::MAX))
    };
    ExpectedCounts {
        classes: count("classes", raw.classes, 1),
        train: count("train", raw.train, 0),
        val: count("val", raw.val, 0),
        second_val: count("second_val", raw.second_val, 0),
    }
}

fn second_val(v: &mut Validator, raw: RawSecondVal) -> Option<SecondVal> {
    let Some(root) = raw.root else {
        v.error("dataset.second_val", "`root` is required");
        return None;
    };
    Some(SecondVal {
        name: raw.name.unwrap_or_else(|| "second val".into()),
        root: v.path("dataset.second_val.root", &root),
        labels: raw.labels.map(|l| v.path("dataset.second_val.labels", &l)),
    })
}

fn classes(v: &mut Validator, raw: Option<RawClasses>) -> ClassSubset {
    const KEY: &str = "dataset.classes";
    match raw {
        None => ClassSubset::All,
        Some(RawClasses::Spec(spec)) if spec == "all" => ClassSubset::All,
        Some(RawClasses::Spec(spec)) => {
            match spec.strip_prefix("first:").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => ClassSubset::First(n),
                _ => {
                    v.error(
                        KEY,
                        format!(
                            "{spec:?}: expected \"all\", \"first:N\" (N ≥ 1) or a list of class ids"
                        ),
                    );
                    ClassSubset::All
                }
            }
        }
        Some(RawClasses::Ids(ids)) => {
            let mut seen = std::collections::HashSet::new();
            if ids.is_empty() {
                v.error(KEY, "an empty list keeps no class");
            } else if let Some(twice) = ids.iter().find(|id| !seen.insert(id.as_str())) {
                v.error(KEY, format!("{twice:?} is listed twice"));
            }
            ClassSubset::Ids(ids)
        }
    }
}

fn fields(raw: Option<Vec<RawTextField>>, default: &[TextField]) -> Vec<TextField> {
    raw.map(|f| {
        f.into_iter()
            .map(|f| match f {
                RawTextField::Title => TextField::Title,
                RawTextField::Description => TextField::Description,
                RawTextField::Tags => TextField::Tags,
            })
            .collect()
    })
    .unwrap_or_else(|| default.to_vec())
}

fn text(v: &mut Validator, raw: RawText) -> TextParams {
    use TextField::*;
    let max_doc_freq = v.share("text.max_doc_freq", raw.max_doc_freq, 0.5);
    TextParams {
        google_fields: fields(raw.google_fields, &[Title, Description]),
        flickr_fields: fields(raw.flickr_fields, &[Title, Description, Tags]),
        other_fields: fields(raw.other_fields, &[Title, Description, Tags]),
        english_stop_words: raw.english_stop_words.unwrap_or(true),
        web_stop_words: raw.web_stop_words.unwrap_or(true),
        extra_stop_words: raw.extra_stop_words.unwrap_or_default(),
        stemming: raw.stemming.unwrap_or(true),
        min_count: v.at_least("text.min_count", raw.min_count, 5, 1),
        max_doc_freq,
        max_words: v.at_least("text.max_words", raw.max_words, 100_000, 1),
    }
}

fn lda(v: &mut Validator, raw: RawLda) -> LdaParams {
    let alpha_value = raw
        .alpha_value
        .map(|a| v.positive("lda.alpha_value", Some(a), a));
    let alpha = match raw.alpha.unwrap_or(RawAlpha::Symmetric) {
        RawAlpha::Symmetric => Alpha::Symmetric(alpha_value),
        RawAlpha::Auto => {
            if alpha_value.is_some() {
                v.error("lda.alpha_value", "is only used with alpha = \"symmetric\"");
            }
            Alpha::Learned
        }
    };
    LdaParams {
        topics: v.at_least("lda.topics", raw.topics, 500, 2),
        passes: v.at_least("lda.passes", raw.passes, 1, 1),
        batch_size: v.at_least("lda.batch_size", raw.batch_size, 2000, 1),
        alpha,
        eta: raw.eta.map(|e| v.positive("lda.eta", Some(e), e)),
        tau0: v.non_negative("lda.tau0", raw.tau0, 1.0),
        kappa: v.check(
            "lda.kappa",
            raw.kappa,
            0.5,
            |k| (0.5..=1.0).contains(&k),
            "[0.5, 1]",
        ),
        e_step_iterations: v.at_least("lda.e_step_iterations", raw.e_step_iterations, 50, 1),
        e_step_tolerance: v.positive("lda.e_step_tolerance", raw.e_step_tolerance, 0.001),
        seed: v.at_least("lda.seed", raw.seed, 0, 0),
    }
}

fn clean(v: &mut Validator, raw: RawClean) -> CleanParams {
    let rule = match raw.rule.unwrap_or(RawCleanRule::None) {
        RawCleanRule::None => CleanRule::None,
        RawCleanRule::Threshold => match raw.threshold {
            Some(t) if t.is_finite() => CleanRule::Threshold(t),
            _ => {
                v.error(
                    "clean.rule",
                    "rule = \"threshold\" needs a finite `clean.threshold`",
                );
                CleanRule::None
            }
        },
        RawCleanRule::Fraction => match raw.fraction {
            Some(f) => CleanRule::Fraction(v.check(
                "clean.fraction",
                Some(f),
                f,
                |f| (0.0..1.0).contains(&f),
                "[0, 1)",
            )),
            None => {
                v.error("clean.rule", "rule = \"fraction\" needs `clean.fraction`");
                CleanRule::None
            }
        },
        RawCleanRule::Oracle => CleanRule::Oracle,
    };
    let mean = match raw.mean.unwrap_or(RawClassMean::All) {
        // `trim` and `trim_rounds` are read with "trimmed" only, as `threshold` and `fraction`
        // with their rules.
        RawClassMean::All => ClassMean::All,
        RawClassMean::Trimmed => ClassMean::Trimmed {
            share: v.check(
                "clean.trim",
                raw.trim,
                0.3,
                |t| (0.0..0.9).contains(&t),
                "[0, 0.9)",
            ),
            rounds: v.within("clean.trim_rounds", raw.trim_rounds, 2, 1..=10),
        },
    };
    CleanParams {
        similarity: match raw.similarity.unwrap_or(RawSimilarity::Cosine) {
            RawSimilarity::Dot => Similarity::Dot,
            RawSimilarity::Cosine => Similarity::Cosine,
        },
        mean,
        calibration: match raw.calibration.unwrap_or(RawCalibration::None) {
            RawCalibration::None => Calibration::None,
            RawCalibration::ClassZ => Calibration::ClassZ,
        },
        rule,
        small_class: v.at_least("clean.small_class", raw.small_class, 0, 0),
        small_class_factor: v.unit("clean.small_class_factor", raw.small_class_factor, 0.5),
        truth: raw.truth.as_deref().map(|t| v.path("clean.truth", t)),
        signals: signals(v, raw.signals),
    }
}

fn signals(v: &mut Validator, raw: Option<RawSignals>) -> SignalWeights {
    let Some(raw) = raw else {
        return SignalWeights::TEXT_ONLY;
    };
    let weight = |v: &mut Validator, key: &str, value: Option<f64>| match value {
        Some(w) => v.check(key, Some(w), 0.0, |w| w >= 0.0 && w.is_finite(), "[0, ∞)"),
        None => 0.0,
    };
    let weights = SignalWeights {
        text: weight(v, "clean.signals.text", raw.text),
        search: weight(v, "clean.signals.search", raw.search),
        confidence: weight(v, "clean.signals.confidence", raw.confidence),
        knn: weight(v, "clean.signals.knn", raw.knn),
    };
    if weights.text + weights.search + weights.confidence + weights.knn <= 0.0 {
        v.error(
            "clean.signals",
            "weighs no signal: give `text`, `search`, `confidence` or `knn` a weight above 0",
        );
        return SignalWeights::TEXT_ONLY;
    }
    if weights.is_text_only() {
        // The text alone is scored as it is, whatever its weight.
        return SignalWeights::TEXT_ONLY;
    }
    weights
}

fn probe(v: &mut Validator, raw: RawProbe) -> ProbeParams {
    ProbeParams {
        folds: v.within("probe.folds", raw.folds, 4, 2..=20),
        epochs: v.at_least("probe.epochs", raw.epochs, 10, 1),
        width: raw.width.map(|w| {
            v.check(
                "probe.width",
                Some(w),
                1.0,
                |w| w > 0.0 && w <= 4.0,
                "(0, 4]",
            )
        }),
        neighbours: v.within("probe.neighbours", raw.neighbours, 10, 1..=1000),
    }
}

fn labels(v: &mut Validator, raw: RawLabels) -> LabelParams {
    let lambda = match raw.lambda.unwrap_or(RawLambdaMap::Ratio) {
        RawLambdaMap::Ratio => LambdaMap::Ratio {
            s0: v.positive("labels.s0", raw.s0, 0.1),
        },
        RawLambdaMap::Rank => LambdaMap::Rank {
            min: v.unit("labels.lambda_min", raw.lambda_min, 0.2),
        },
        RawLambdaMap::Sigmoid => LambdaMap::Sigmoid {
            center: raw.sigmoid_center.unwrap_or(0.1),
            scale: v.positive("labels.sigmoid_scale", raw.sigmoid_scale, 0.05),
        },
    };
    match raw.mode.unwrap_or(RawLabelMode::Hard) {
        RawLabelMode::Hard => LabelParams::Hard,
        RawLabelMode::Soft => LabelParams::Soft { lambda },
    }
}

fn model(v: &mut Validator, raw: RawModel) -> ModelParams {
    let heads = raw.heads.unwrap_or_else(|| vec![RawHead::Classification]);
    let classification = heads.contains(&RawHead::Classification);
    if !classification {
        v.error("model.heads", "must include \"classification\"");
    }
    let task_weights = raw.task_weights.unwrap_or([0.75, 0.25]);
    let aux_weights = raw.aux_weights.unwrap_or([0.3, 0.3]);
    for (key, weights) in [
        ("model.task_weights", task_weights),
        ("model.aux_weights", aux_weights),
    ] {
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            v.error(key, format!("{weights:?}: weights must be finite and ≥ 0"));
        }
    }
    ModelParams {
        arch: match raw.arch.unwrap_or(RawArch::Googlenet) {
            RawArch::Googlenet => Arch::Googlenet,
            RawArch::GooglenetBn => Arch::GooglenetBn,
        },
        classification,
        regression: heads.contains(&RawHead::Regression),
        task_weights,
        aux_weights,
        input_size: v.at_least("model.input_size", raw.input_size, 224, 32),
        width: v.check(
            "model.width",
            raw.width,
            1.0,
            |w| w > 0.0 && w <= 4.0,
            "(0, 4]",
        ),
    }
}

fn devices(v: &mut Validator, raw: Option<String>) -> Devices {
    let text = raw.unwrap_or_else(|| "cpu".into());
    match text.as_str() {
        "cpu" => Devices::Cpu,
        "cuda" => Devices::CudaAll,
        other => match other.strip_prefix("cuda:").map(|ids| {
            ids.split(',')
                .map(|i| i.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
        }) {
            Some(Ok(ids)) if !ids.is_empty() => Devices::Cuda(ids),
            _ => {
                v.error(
                    "train.devices",
                    format!("{other:?}: expected \"cpu\", \"cuda\" or \"cuda:0,1\""),
                );
                Devices::Cpu
            }
        },
    }
}

fn sampler(
    v: &mut Validator,
    raw: Option<RawSampler>,
    curriculum: Option<RawCurriculum>,
    length: TrainLength,
) -> SamplerKind {
    let raw = raw.unwrap_or(RawSampler::Replacement);
    if curriculum.is_some() && !matches!(raw, RawSampler::Curriculum) {
        v.error(
            "train.curriculum",
            "a curriculum is read only with sampler = \"curriculum\"",
        );
    }
    match raw {
        RawSampler::Shuffle => SamplerKind::Shuffle,
        RawSampler::Replacement => SamplerKind::Replacement,
        RawSampler::HalfBalanced => SamplerKind::HalfBalanced,
        RawSampler::Balanced => SamplerKind::Balanced,
        RawSampler::Weighted => SamplerKind::Weighted,
        RawSampler::Curriculum => {
            let c = curriculum.unwrap_or_default();
            let start = v.share("train.curriculum.start", c.start, 0.5);
            let ramp_epochs = match (c.ramp_epochs, length) {
                (None, TrainLength::Epochs(epochs)) => epochs as f64 / 2.0,
                (None, TrainLength::Iterations(_)) => {
                    v.error(
                        "train.curriculum",
                        "`ramp_epochs` has no default when training is set in iterations",
                    );
                    1.0
                }
                (Some(r), _) => v.positive("train.curriculum.ramp_epochs", Some(r), 1.0),
            };
            SamplerKind::Curriculum { start, ramp_epochs }
        }
    }
}

fn train(v: &mut Validator, raw: RawTrain) -> TrainParams {
    let length = match (raw.iterations, raw.epochs) {
        (Some(i), None) => {
            TrainLength::Iterations(v.whole_in("train.iterations", i, 1..=i64::MAX).unwrap_or(1))
        }
        (None, Some(e)) => {
            TrainLength::Epochs(v.whole_in("train.epochs", e, 1..=i64::MAX).unwrap_or(1))
        }
        (None, None) => TrainLength::Iterations(2_400_000),
        (Some(_), Some(_)) => {
            v.error(
                "train.epochs",
                "set either `iterations` or `epochs`, not both",
            );
            TrainLength::Iterations(1)
        }
    };
    let opt = raw.optimizer.unwrap_or_default();
    let optimizer = SgdParams {
        lr: v.positive("train.optimizer.lr", opt.lr, 0.01),
        momentum: v.check(
            "train.optimizer.momentum",
            opt.momentum,
            0.9,
            |m| (0.0..1.0).contains(&m),
            "[0, 1)",
        ),
        weight_decay: v.non_negative("train.optimizer.weight_decay", opt.weight_decay, 0.0002),
        bias_lr_mult: v.non_negative("train.optimizer.bias_lr_mult", opt.bias_lr_mult, 2.0),
        clip_grad_norm: opt
            .clip_grad_norm
            .map(|c| v.positive("train.optimizer.clip_grad_norm", Some(c), c)),
    };
    let sched = raw.schedule.unwrap_or_default();
    let gamma = v.positive("train.schedule.gamma", sched.gamma, 0.1);
    let policy = match sched.policy.unwrap_or(RawPolicy::Poly) {
        RawPolicy::Fixed => LrPolicy::Fixed,
        RawPolicy::Step => match sched.step_size {
            Some(s) => match v.whole_in("train.schedule.step_size", s, 1..=i64::MAX) {
                Some(step_size) => LrPolicy::Step { gamma, step_size },
                None => LrPolicy::Fixed,
            },
            None => {
                v.error(
                    "train.schedule.policy",
                    "policy = \"step\" needs `step_size` ≥ 1",
                );
                LrPolicy::Fixed
            }
        },
        RawPolicy::Multistep => match sched.steps.map(|steps| {
            steps
                .into_iter()
                .map(|s| v.whole_in("train.schedule.steps", s, 0..=i64::MAX))
                .collect::<Option<Vec<u64>>>()
        }) {
            Some(Some(steps)) if steps.windows(2).all(|w| w[0] < w[1]) && !steps.is_empty() => {
                LrPolicy::Multistep { gamma, steps }
            }
            // A step out of range is reported already.
            Some(None) => LrPolicy::Fixed,
            _ => {
                v.error(
                    "train.schedule.policy",
                    "policy = \"multistep\" needs increasing `steps`",
                );
                LrPolicy::Fixed
            }
        },
        RawPolicy::Poly => LrPolicy::Poly {
            power: v.positive("train.schedule.power", sched.power, 0.5),
        },
        RawPolicy::Cosine => LrPolicy::Cosine {
            min_lr: v.non_negative("train.schedule.min_lr", sched.min_lr, 0.0),
        },
    };
    let schedule = Schedule {
        policy,
        warmup_iterations: v.at_least(
            "train.schedule.warmup_iterations",
            sched.warmup_iterations,
            0,
            0,
        ),
        warmup_start_factor: v.unit(
            "train.schedule.warmup_start_factor",
            sched.warmup_start_factor,
            0.1,
        ),
    };
    let aug = raw.augmentation.unwrap_or_default();
    let augmentation = Augmentation {
        crop: v.at_least("train.augmentation.crop", aug.crop, 224, 8),
        mirror: aug.mirror.unwrap_or(true),
        mean_rgb: aug.mean_rgb.unwrap_or([123.68, 116.779, 103.939]),
    };
    let div = raw.divergence.unwrap_or_default();
    let on_divergence = match div.action.unwrap_or(RawDivergenceAction::Stop) {
        RawDivergenceAction::Stop => OnDivergence::Stop,
        RawDivergenceAction::Rollback => OnDivergence::Rollback {
            lr_factor: v.check(
                "train.divergence.lr_factor",
                div.lr_factor,
                0.5,
                |f| f > 0.0 && f < 1.0,
                "(0, 1)",
            ),
            max_rollbacks: v.at_least("train.divergence.max_rollbacks", div.max_rollbacks, 3, 1),
        },
    };
    TrainParams {
        devices: devices(v, raw.devices),
        batch_per_device: v.at_least("train.batch_per_device", raw.batch_per_device, 80, 1),
        optimizer,
        schedule,
        length,
        augmentation,
        sampler: sampler(v, raw.sampler, raw.curriculum, length),
        precision: match raw.precision.unwrap_or(RawPrecision::F32) {
            RawPrecision::F32 => Precision::F32,
            RawPrecision::Tf32 => Precision::Tf32,
            RawPrecision::Bf16 => Precision::Bf16,
        },
        checkpoint_every: v.at_least("train.checkpoint_every", raw.checkpoint_every, 10_000, 1),
        init: raw.init,
        on_divergence,
        workers: v.at_least("train.workers", raw.workers, 4, 1),
        cpu_ranks: v.within("train.cpu_ranks", raw.cpu_ranks, 1, 1..=64),
        seed: v.at_least("train.seed", raw.seed, 0, 0),
        holdout: holdout(v, raw.holdout, raw.eval_every),
    }
}

fn holdout(v: &mut Validator, share: Option<f64>, eval_every: Option<i64>) -> Option<Holdout> {
    let share = v.check(
        "train.holdout",
        share,
        0.0,
        |h| (0.0..0.5).contains(&h),
        "a share in [0, 0.5)",
    );
    if share > 0.0 {
        let eval_every =
            eval_every.map_or(Some(1), |e| v.whole_in("train.eval_every", e, 1..=i64::MAX));
        return Some(Holdout {
            share,
            eval_every: eval_every.unwrap_or(1),
        });
    }
    if eval_every.is_some() {
        v.error(
            "train.eval_every",
            "needs `train.holdout` > 0: epochs are compared on held-out training samples, \
             never on the validation set",
        );
    }
    None
}

fn eval(v: &mut Validator, raw: RawEval) -> EvalParams {
    let metrics = raw
        .metrics
        .unwrap_or_else(|| vec![RawMetric::Top1, RawMetric::Top5])
        .into_iter()
        .map(|m| match m {
            RawMetric::Top1 => Metric::Top1,
            RawMetric::Top5 => Metric::Top5,
        })
        .collect();
    EvalParams {
        crops: match raw.crops.unwrap_or(RawCrops::Center) {
            RawCrops::Center => CropSet::Center,
            RawCrops::Four => CropSet::Four,
            RawCrops::Eight => CropSet::Eight,
            RawCrops::Ten => CropSet::Ten,
        },
        metrics,
        ensemble: raw.ensemble.unwrap_or_default(),
        batch_size: v.at_least("eval.batch_size", raw.batch_size, 50, 1),
    }
}

/// The checks a recipe's `[train.optimizer]` gets, for settings built in code rather than
/// loaded (`train::optim::Sgd::new`), so that one set of ranges and one wording hold for
/// both: the first problem's message, if any. The base lr is left out: SGD takes an lr per
/// step, and code may freeze weights with 0.
pub fn check_optimizer(params: &SgdParams) -> Result<(), String> {
    // No recipe text: the problem has no place to point at, only its message.
    let sources = SourceMap::new(Origin::Set(String::new()));
    let mut v = Validator {
        sources: &sources,
        errors: Vec::new(),
    };
    let optimizer = RawOptimizer {
        kind: None,
        lr: None,
        momentum: Some(params.momentum),
        weight_decay: Some(params.weight_decay),
        bias_lr_mult: Some(params.bias_lr_mult),
        clip_grad_norm: params.clip_grad_norm,
    };
    let raw = RawTrain {
        optimizer: Some(optimizer),
        ..RawTrain::default()
    };
    train(&mut v, raw);
    match v.errors.into_iter().next() {
        None => Ok(()),
        Some(RecipeError::Invalid(diagnostic)) => Err(diagnostic.message),
        Some(other) => Err(other.to_string()),
    }
}

/// What an empty recipe means: every section's defaults, filled in by the code that fills
/// them into every recipe. `dataset.root` has no default and stays `None` (a recipe must set
/// it unless `format = "synthetic"`); the name and path are empty.
pub fn defaults() -> Recipe {
    // No recipe text: nothing to point at (the one error, the missing root, is dropped).
    let sources = SourceMap::new(Origin::Set(String::new()));
    let mut v = Validator {
        sources: &sources,
        errors: Vec::new(),
    };
    let recipe = Recipe {
        name: String::new(),
        path: PathBuf::new(),
        dataset: dataset(&mut v, RawDataset::default()),
        text: text(&mut v, RawText::default()),
        lda: lda(&mut v, RawLda::default()),
        clean: clean(&mut v, RawClean::default()),
        probe: probe(&mut v, RawProbe::default()),
        labels: labels(&mut v, RawLabels::default()),
        model: model(&mut v, RawModel::default()),
        train: train(&mut v, RawTrain::default()),
        eval: eval(&mut v, RawEval::default()),
    };
    // The missing root is an empty recipe's only problem.
    debug_assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
    recipe
}
