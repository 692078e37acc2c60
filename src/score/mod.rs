//! Per-sample scores from topic vectors (and, when the recipe weighs them, the probe's image
//! signals and each image's standing in its query's search results): similarity to the
//! class mean, cleaning rules, λ soft labels, reports: the `score` stage.
//!
//! In: topic vectors and paths, each read in passes in id order ([`TopicRows`]: a `.npy`
//! file is never held whole; [`SamplePaths`]), labels, optionally the probe's rows, the
//! search standings, the images and a truth file. Memory: the class means and a few arrays
//! of a few bytes per sample (label, score, λ, kept, noisy). Out, in the stage folder:
//! `scores.tsv` (id, path, label, score, λ, kept: what training reads back through
//! [`ScoreTable`]), `signals.tsv` (each signal beside the combined score, when more than the
//! text counts), `classes.tsv` (with a truth file, each class's AUC, and each signal's),
//! `summary.json` (with several signals, also how well each agrees with the others),
//! `score_histogram.png` (the discard cut drawn, the noise AUC in its title), and
//! `lowest/<class>.png` contact sheets of the lowest-scored images of each class (of the
//! [`SHEET_CLASSES`] lowest-scored classes, when there are more), captioned with each
//! signal's rank in the class.

mod rules;
mod signals;
mod table;
mod truth;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use rules::{
    auc_low_is_positive, by_class_ascending, calibrate, class_means, class_ranks, combine, kept,
    lambdas, oracle_kept, scores, similarity,
};
pub use signals::{
    measured_names, Signal, SignalAgreement, SignalAuc, SignalRanks, Signals, LOW_AGREEMENT,
    SIGNALS_FILE, SIGNAL_NAMES,
};
pub use table::{ScoreRow, ScoreTable, SCORES_FILE};
pub use truth::{read_truth, Truth};

use crate::npy::{NpyError, NpyFile};
use crate::plot::{self, PlotError};
use crate::probe::ProbeRow;
use crate::recipe::params::{CleanParams, CleanRule, LabelParams, SignalWeights, Similarity};
use crate::tsv::TsvError;

pub const CLASSES_FILE: &str = "classes.tsv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const HISTOGRAM_FILE: &str = "score_histogram.png";
pub const LOWEST_DIR: &str = "lowest";
/// Images per contact sheet, and their side in pixels: a sheet is about 0.3 MB.
pub const SHEET_IMAGES: usize = 24;
const SHEET_CELL: u32 = 96;
/// Contact sheets written at most: WebVision's 1000 classes would take 300 MB.
pub const SHEET_CLASSES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tsv(#[from] TsvError),
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("inputs disagree: {0}")]
    Inputs(String),
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A path source (the store) failed; its message names what and where.
    #[error("reading the path of sample {id}: {message}")]
    Path { id: u64, message: String },
    #[error("clean.rule = \"oracle\" needs a truth file, and the dataset brought none: set `clean.truth`")]
    OracleWithoutTruth,
}

impl ScoreError {
    fn io(path: &Path, source: std::io::Error) -> ScoreError {
        ScoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Image loader by sample id (decoded RGB), for the contact sheets.
pub type ImageFn<'a> = &'a (dyn Fn(u64) -> Option<image::RgbImage> + Sync);

/// θ of every training sample, visited in id order: a `.npy` file a chunk at a time, or rows
/// in memory.
pub trait TopicRows: Sync {
    fn rows(&self) -> usize;
    fn for_each_row(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), ScoreError>;
}

impl TopicRows for Vec<Vec<f32>> {
    fn rows(&self) -> usize {
        self.len()
    }

    fn for_each_row(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), ScoreError> {
        self.iter().enumerate().for_each(|(i, row)| f(i, row));
        Ok(())
    }
}

impl TopicRows for NpyFile {
    fn rows(&self) -> usize {
        NpyFile::rows(self)
    }

    fn for_each_row(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), ScoreError> {
        Ok(NpyFile::for_each_row(self, f)?)
    }
}

/// Every training sample's path as the dataset lists it, visited in id order: from the store,
/// or in memory.
pub trait SamplePaths: Sync {
    fn for_each_path(&self, f: &mut dyn FnMut(u64, &str)) -> Result<(), ScoreError>;
}

impl SamplePaths for Vec<String> {
    fn for_each_path(&self, f: &mut dyn FnMut(u64, &str)) -> Result<(), ScoreError> {
        self.iter()
            .enumerate()
            .for_each(|(i, path)| f(i as u64, path));
        Ok(())
    }
}

/// What the stage reads: one entry per training sample, index = sample id.
pub struct ScoreInputs<'a> {
    pub topics: &'a dyn TopicRows,
    pub labels: &'a [u32],
    pub paths: &'a dyn SamplePaths,
    pub class_names: &'a [String],
    pub image: Option<ImageFn<'a>>,
    /// The image evidence of every sample (the `probe` stage), in id order: read when
    /// `clean.signals` weighs an image signal.
    pub probe: Option<&'a [ProbeRow]>,
    /// Every sample's standing in its query's search results, in id order: read when
    /// `clean.signals` weighs it.
    pub search: Option<&'a [f64]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    pub label: u32,
    pub name: String,
    pub samples: usize,
    pub kept: usize,
    pub mean_score: f64,
    pub median_score: f64,
    /// With a truth file: noisy samples of the class, how many were discarded, and the AUC
    /// of the score at telling noisy from clean within the class.
    pub noisy: Option<usize>,
    pub noisy_discarded: Option<usize>,
    pub auc: Option<f64>,
    /// With signals besides the text: the AUC of each signal alone within the class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalAuc>,
}

impl ClassSummary {
    /// The AUC of the signal `name` (one of [`SIGNAL_NAMES`]) within the class, where known.
    pub fn signal_auc(&self, name: &str) -> Option<f64> {
        self.signals
            .iter()
            .find(|s| s.signal == name)
            .and_then(|s| s.auc)
    }
}

/// Noise detection against the truth file (noisy = true label differs from the given one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseMetrics {
    /// Samples found in the truth file (by path) and samples not found (left out).
    pub matched: usize,
    pub unmatched: usize,
    pub noisy: usize,
    pub discarded: usize,
    pub noisy_discarded: usize,
    /// Share of discarded samples that are noisy; `None` (undefined) when nothing was
    /// discarded.
    pub precision: Option<f64>,
    /// Share of noisy samples discarded; `None` (undefined) when nothing was discarded, as
    /// with rule "none", where there is no cleaning to judge, or when no sample is noisy.
    pub recall: Option<f64>,
    /// Low score as a detector of noise, over all matched samples.
    pub auc: Option<f64>,
    /// Mean of the per-class AUCs (classes with both clean and noisy samples).
    pub macro_auc: Option<f64>,
    /// With signals besides the text: the AUC of each signal measured, alone (text, search,
    /// confidence, margin, knn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalAuc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub similarity: Similarity,
    pub samples: usize,
    pub kept: usize,
    pub classes: Vec<ClassSummary>,
    pub noise: Option<NoiseMetrics>,
    /// With two or more weighed signals: how well each agrees with the others (no truth
    /// file needed; [`Signals::agreement`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreement: Vec<SignalAgreement>,
}

impl ScoreSummary {
    /// Reads a score stage's `summary.json`.
    pub fn load(dir: &Path) -> Result<ScoreSummary, ScoreError> {
        let path = dir.join(SUMMARY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|s| ScoreError::io(&path, s))?;
        serde_json::from_str(&text).map_err(|source| ScoreError::Json { path, source })
    }
}

/// The `score` stage.
pub fn run_stage(
    inputs: &ScoreInputs,
    clean: &CleanParams,
    labels: &LabelParams,
    dir: &Path,
) -> Result<ScoreSummary, ScoreError> {
    check_inputs(inputs)?;
    std::fs::create_dir_all(dir).map_err(|s| ScoreError::io(dir, s))?;
    let classes = inputs.class_names.len();
    let mut score = scores(
        inputs.topics,
        inputs.labels,
        classes,
        clean.similarity,
        clean.mean,
    )?;
    calibrate(&mut score, inputs.labels, classes, clean.calibration);
    let signals = match clean.signals.is_text_only() {
        true => None,
        false => {
            let probe = match clean.signals.reads_probe() {
                true => Some(inputs.probe.ok_or_else(|| {
                    ScoreError::Inputs("clean.signals weighs image signals, but no probe".into())
                })?),
                false => None,
            };
            let search = match clean.signals.reads_search() {
                true => Some(inputs.search.map(<[f64]>::to_vec).ok_or_else(|| {
                    ScoreError::Inputs(
                        "clean.signals weighs the search standing, but the dataset lists none"
                            .into(),
                    )
                })?),
                false => None,
            };
            let signals = Signals::new(score, search, probe)?;
            score = signals.combined(&clean.signals, inputs.labels, classes);
            Some(signals)
        }
    };
    let noisy = match &clean.truth {
        Some(path) => {
            let truth = read_truth(path)?;
            let mut noisy = Vec::with_capacity(score.len());
            inputs
                .paths
                .for_each_path(&mut |_, path| noisy.push(truth.noisy(path)))?;
            if noisy.len() != score.len() {
                return Err(ScoreError::Inputs(format!(
                    "{} topic vectors, {} paths",
                    score.len(),
                    noisy.len()
                )));
            }
            Some(noisy)
        }
        None => None,
    };
    let keep = match (clean.rule, &noisy) {
        (CleanRule::Oracle, Some(noisy)) => oracle_kept(noisy),
        (CleanRule::Oracle, None) => return Err(ScoreError::OracleWithoutTruth),
        _ => kept(&score, inputs.labels, classes, clean),
    };
    let lambda = lambdas(&score, inputs.labels, classes, labels);
    let rows: Vec<ScoreRow> = (0..score.len())
        .map(|i| ScoreRow {
            id: i as u64,
            label: inputs.labels[i],
            score: score[i],
            lambda: lambda[i],
            kept: keep[i],
        })
        .collect();
    let table = ScoreTable::new(rows);
    table.save(dir, inputs.paths)?;

    let class_summaries =
        summarise_classes(inputs, &score, &keep, noisy.as_deref(), signals.as_ref());
    let summary = ScoreSummary {
        similarity: clean.similarity,
        samples: score.len(),
        kept: keep.iter().filter(|&&k| k).count(),
        noise: noisy.as_deref().map(|n| NoiseMetrics {
            signals: signals
                .as_ref()
                .map(|s| s.aucs(n, &(0..s.len()).collect::<Vec<_>>()))
                .unwrap_or_default(),
            ..noise_metrics(&score, &keep, n, &class_summaries)
        }),
        classes: class_summaries,
        agreement: signals
            .as_ref()
            .map(|s| s.agreement(&clean.signals, inputs.labels, classes))
            .unwrap_or_default(),
    };
    if let Some(signals) = &signals {
        signals.save(dir, &score)?;
    }
    write_classes(&dir.join(CLASSES_FILE), &summary.classes)?;
    let json = serde_json::to_string_pretty(&summary).map_err(|source| ScoreError::Json {
        path: dir.join(SUMMARY_FILE),
        source,
    })?;
    std::fs::write(dir.join(SUMMARY_FILE), json + "\n")
        .map_err(|s| ScoreError::io(&dir.join(SUMMARY_FILE), s))?;
    write_histogram(
        &dir.join(HISTOGRAM_FILE),
        &score,
        noisy.as_deref(),
        &summary,
        &clean.signals,
        discard_cut(&score, &keep, inputs.labels, clean.rule).as_ref(),
    )?;
    if let Some(image) = inputs.image {
        write_contact_sheets(
            &dir.join(LOWEST_DIR),
            inputs,
            image,
            &score,
            signals.as_ref(),
            noisy.as_deref(),
            &summary.classes,
        )?;
    }
    Ok(summary)
}

fn check_inputs(inputs: &ScoreInputs) -> Result<(), ScoreError> {
    let n = inputs.topics.rows();
    if inputs.labels.len() != n {
        return Err(ScoreError::Inputs(format!(
            "{n} topic vectors, {} labels",
            inputs.labels.len(),
        )));
    }
    if let Some((id, &label)) = inputs
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= inputs.class_names.len())
    {
        return Err(ScoreError::Inputs(format!(
            "sample {id} has label {label} but there are {} classes",
            inputs.class_names.len()
        )));
    }
    Ok(())
}

fn summarise_classes(
    inputs: &ScoreInputs,
    score: &[f64],
    keep: &[bool],
    noisy: Option<&[Option<bool>]>,
    signals: Option<&Signals>,
) -> Vec<ClassSummary> {
    by_class_ascending(score, inputs.labels, inputs.class_names.len())
        .into_iter()
        .enumerate()
        .map(|(label, members)| {
            let n = members.len();
            let known: Vec<(f64, bool)> = noisy
                .map(|noisy| {
                    members
                        .iter()
                        .filter_map(|&i| noisy[i].map(|x| (score[i], x)))
                        .collect()
                })
                .unwrap_or_default();
            ClassSummary {
                label: label as u32,
                name: inputs.class_names[label].clone(),
                samples: n,
                kept: members.iter().filter(|&&i| keep[i]).count(),
                mean_score: members.iter().map(|&i| score[i]).sum::<f64>() / n.max(1) as f64,
                median_score: if n == 0 { 0.0 } else { score[members[n / 2]] },
                noisy: noisy.map(|_| known.iter().filter(|k| k.1).count()),
                noisy_discarded: noisy.map(|noisy| {
                    members
                        .iter()
                        .filter(|&&i| noisy[i] == Some(true) && !keep[i])
                        .count()
                }),
                auc: noisy.and_then(|_| {
                    let (s, p): (Vec<f64>, Vec<bool>) = known.into_iter().unzip();
                    auc_low_is_positive(&s, &p)
                }),
                signals: match (noisy, signals) {
                    (Some(noisy), Some(signals)) => signals.aucs(noisy, &members),
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

fn noise_metrics(
    score: &[f64],
    keep: &[bool],
    noisy: &[Option<bool>],
    classes: &[ClassSummary],
) -> NoiseMetrics {
    let matched: Vec<usize> = (0..score.len()).filter(|&i| noisy[i].is_some()).collect();
    let is_noisy = |i: usize| noisy[i] == Some(true);
    let discarded = matched.iter().filter(|&&i| !keep[i]).count();
    let noisy_count = matched.iter().filter(|&&i| is_noisy(i)).count();
    let noisy_discarded = matched.iter().filter(|&&i| is_noisy(i) && !keep[i]).count();
    let s: Vec<f64> = matched.iter().map(|&i| score[i]).collect();
    let p: Vec<bool> = matched.iter().map(|&i| is_noisy(i)).collect();
    let per_class: Vec<f64> = classes.iter().filter_map(|c| c.auc).collect();
    NoiseMetrics {
        matched: matched.len(),
        unmatched: score.len() - matched.len(),
        noisy: noisy_count,
        discarded,
        noisy_discarded,
        precision: (discarded > 0).then(|| noisy_discarded as f64 / discarded as f64),
        recall: (discarded > 0 && noisy_count > 0)
            .then(|| noisy_discarded as f64 / noisy_count as f64),
        auc: auc_low_is_positive(&s, &p),
        macro_auc: (!per_class.is_empty())
            .then(|| per_class.iter().sum::<f64>() / per_class.len() as f64),
        signals: Vec::new(),
    }
}

/// A metric that may be undefined, as logs and tables show it: its value, or "n/a".
pub fn or_na(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

fn write_classes(path: &Path, classes: &[ClassSummary]) -> Result<(), ScoreError> {
    let opt = |x: Option<usize>| x.map_or(String::new(), |v| v.to_string());
    let auc = |a: Option<f64>| a.map_or(String::new(), |a| format!("{a:.4}"));
    // With several signals, each signal's AUC within the class follows the score's.
    let names = measured_names(classes.iter().map(|c| c.signals.as_slice()));
    let mut out = String::from(
        "label\tname\tsamples\tkept\tmean_score\tmedian_score\tnoisy\tnoisy_discarded\tauc",
    );
    for name in &names {
        out.push_str(&format!("\tauc_{name}"));
    }
    out.push('\n');
    for c in classes {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:.6}\t{:.6}\t{}\t{}\t{}",
            c.label,
            c.name,
            c.samples,
            c.kept,
            c.mean_score,
            c.median_score,
            opt(c.noisy),
            opt(c.noisy_discarded),
            auc(c.auc),
        ));
        for name in &names {
            out.push_str(&format!("\t{}", auc(c.signal_auc(name))));
        }
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|s| ScoreError::io(path, s))
}

/// Where the rule cuts, for the histogram: the threshold; for a share of each class, the
/// median over classes of the highest discarded score; none for rules without a score cut.
fn discard_cut(score: &[f64], keep: &[bool], labels: &[u32], rule: CleanRule) -> Option<plot::Cut> {
    match rule {
        CleanRule::Threshold(at) => Some(plot::Cut {
            at,
            label: format!("discard below {at}"),
        }),
        CleanRule::Fraction(share) => {
            let mut highest: std::collections::BTreeMap<u32, f64> = Default::default();
            for i in (0..score.len()).filter(|&i| !keep[i]) {
                let h = highest.entry(labels[i]).or_insert(f64::NEG_INFINITY);
                *h = h.max(score[i]);
            }
            let mut cuts: Vec<f64> = highest.into_values().collect();
            cuts.sort_by(f64::total_cmp);
            let at = *cuts.get(cuts.len() / 2)?;
            Some(plot::Cut {
                at,
                label: format!("median class cut (lowest {}% of each class)", share * 100.0),
            })
        }
        CleanRule::None | CleanRule::Oracle => None,
    }
}

fn write_histogram(
    path: &Path,
    score: &[f64],
    noisy: Option<&[Option<bool>]>,
    summary: &ScoreSummary,
    weights: &SignalWeights,
    cut: Option<&plot::Cut>,
) -> Result<(), ScoreError> {
    let kind = match summary.similarity {
        Similarity::Dot => "dot",
        Similarity::Cosine => "cosine",
    };
    let what = match weights.is_text_only() {
        true => format!("{kind} similarity to the class mean"),
        false => {
            let names: Vec<&str> = Signal::weighed(weights).map(Signal::name).collect();
            format!("mean rank in the class of {}", names.join(", "))
        }
    };
    let title = match summary.noise.as_ref().and_then(|n| n.auc) {
        Some(auc) => format!("{what} · noise AUC {auc:.3}"),
        None => what,
    };
    let series: Vec<(String, Vec<f64>)> = match noisy {
        None => vec![("all samples".into(), score.to_vec())],
        Some(noisy) => [(false, "clean (truth)"), (true, "noisy (truth)")]
            .into_iter()
            .map(|(want, name)| {
                (
                    name.to_string(),
                    (0..score.len())
                        .filter(|&i| noisy[i] == Some(want))
                        .map(|i| score[i])
                        .collect(),
                )
            })
            .collect(),
    };
    let borrowed: Vec<(&str, &[f64])> = series
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    Ok(plot::histogram(path, &title, &borrowed, 40, cut)?)
}

fn write_contact_sheets(
    dir: &Path,
    inputs: &ScoreInputs,
    image: ImageFn,
    score: &[f64],
    signals: Option<&Signals>,
    noisy: Option<&[Option<bool>]>,
    classes: &[ClassSummary],
) -> Result<(), ScoreError> {
    let ranks = signals.map(|s| s.ranks(inputs.labels, inputs.class_names.len()));
    std::fs::create_dir_all(dir).map_err(|s| ScoreError::io(dir, s))?;
    let mut shown: Vec<&ClassSummary> = classes.iter().collect();
    shown.sort_by(|a, b| a.mean_score.total_cmp(&b.mean_score));
    shown.truncate(SHEET_CLASSES);
    let shown: std::collections::BTreeSet<usize> = shown.iter().map(|c| c.label as usize).collect();
    for (label, members) in by_class_ascending(score, inputs.labels, inputs.class_names.len())
        .into_iter()
        .enumerate()
        .filter(|(label, _)| shown.contains(label))
    {
        let cells: Vec<plot::Cell> = members
            .par_iter()
            .take(SHEET_IMAGES)
            .filter_map(|&i| {
                let truth = match noisy.and_then(|n| n[i]) {
                    Some(true) => " noisy",
                    Some(false) => " clean",
                    None => "",
                };
                let ranks = ranks
                    .as_ref()
                    .map_or(String::new(), |r| format!("\n{}", r.caption(i)));
                image(i as u64).map(|img| plot::Cell {
                    image: img,
                    caption: format!("#{i} {:.3}{truth}{ranks}", score[i]),
                })
            })
            .collect();
        let name = sanitize(&inputs.class_names[label]);
        let legend = ranks
            .as_ref()
            .map_or(String::new(), |r| format!("\n{}", r.legend()));
        let title = format!(
            "class {label} {}: lowest scores{legend}",
            inputs.class_names[label]
        );
        plot::contact_sheet(
            &dir.join(format!("{label:04}_{name}.png")),
            &title,
            &cells,
            6,
            SHEET_CELL,
        )?;
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}
