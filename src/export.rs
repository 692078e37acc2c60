//! Per-sample verdicts for other tools: `runner export RUN`.
//!
//! In: a run folder whose run got through the score stage (`stages.json` names its store and
//! scores; `recipe.resolved.toml` its dataset). Out, in the export folder (`RUN/export/` by
//! default):
//!
//! - `samples.csv` and `samples.jsonl`: one row per training sample, in store order: `id`,
//!   `path` (as the dataset lists it), `label` and `wnid` (the given label), `source`,
//!   `text_score` (the page text's agreement with its class), the image's standing in its
//!   query's search results (`search`) and the probe's image signals (`confidence`, `margin`,
//!   `knn`) where the recipe weighs them (empty otherwise), `combined_score`
//!   (what the cleaning ranks by: the text score alone, or the weighted mean of the signals'
//!   ranks within the class), `rank` (1 = the most plausible of its class, by combined score:
//!   the reverse of the order the cleaning discards in), `class_samples`, `kept` (the cleaning's verdict) and `lambda` (the
//!   soft label's loss weight);
//! - `classes.csv`: per class its label, wnid, name, samples, kept, discarded, mean score and,
//!   where a truth file is known, noisy samples and the score's noise-detection AUC (and each
//!   signal's, with several signals);
//! - the cleaned training list in the dataset's own format ([`crate::dataset::clean_lists`]:
//!   `train_filelist_clean.txt` and its line-aligned `train_meta_list_clean.txt` for WebVision),
//!   so that other tools train on websieve's cleaning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::{self, DatasetError};
use crate::recipe::{self, RecipeError};
use crate::sample::Split;
use crate::score::{self, ScoreError, ScoreRow, ScoreSummary, ScoreTable, Signal};
use crate::stage::{RunFolder, StageError, StageKind};
use crate::store::{Store, StoreError};
use crate::table::csv_line;

pub const SAMPLES_CSV: &str = "samples.csv";
pub const SAMPLES_JSONL: &str = "samples.jsonl";
pub const CLASSES_CSV: &str = "classes.csv";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{}: the run has no score stage: run it at least `--until score`", run.display())]
    NotScored { run: PathBuf },
    #[error("{}: {scores} scored samples, but the store {} holds {stored} training samples", score_dir.display(), store.display())]
    Mismatch {
        score_dir: PathBuf,
        scores: usize,
        store: PathBuf,
        stored: u64,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One training sample's verdict: a row of `samples.csv` and a line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleVerdict {
    pub id: u64,
    pub path: String,
    pub label: u32,
    pub wnid: String,
    pub source: String,
    pub text_score: f64,
    /// The image's standing in its query's search results (1 the first result, 1/n the last
    /// of n); empty (`null`) unless the score weighs it.
    pub search: Option<f64>,
    /// The probe's out-of-fold probability of the given label, its margin over the best
    /// other class, and the k-NN label agreement; empty (`null`) without image signals.
    pub confidence: Option<f64>,
    pub margin: Option<f64>,
    pub knn: Option<f64>,
    /// What the cleaning ranks by: the text score alone, or the signals combined.
    pub combined_score: f64,
    /// 1 = the most plausible sample of its class.
    pub rank: usize,
    pub class_samples: usize,
    pub kept: bool,
    pub lambda: f64,
}

impl SampleVerdict {
    const COLUMNS: [&'static str; 15] = [
        "id",
        "path",
        "label",
        "wnid",
        "source",
        "text_score",
        "search",
        "confidence",
        "margin",
        "knn",
        "combined_score",
        "rank",
        "class_samples",
        "kept",
        "lambda",
    ];

    fn csv_fields(&self) -> Vec<String> {
        let optional = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        vec![
            self.id.to_string(),
            self.path.clone(),
            self.label.to_string(),
            self.wnid.clone(),
            self.source.clone(),
            self.text_score.to_string(),
            optional(self.search),
            optional(self.confidence),
            optional(self.margin),
            optional(self.knn),
            self.combined_score.to_string(),
            self.rank.to_string(),
            self.class_samples.to_string(),
            u8::from(self.kept).to_string(),
            self.lambda.to_string(),
        ]
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub samples: usize,
    pub kept: usize,
    /// Every file written, by name.
    pub files: Vec<String>,
}

/// Exports the verdicts of the run in `run_dir` into `out` (`run_dir/export` when `None`).
pub fn export(run_dir: &Path, out: Option<&Path>) -> Result<ExportSummary, ExportError> {
    let folder = RunFolder::new(run_dir);
    let stages = folder.stage_dirs()?;
    let (Some(ingest), Some(score_dir)) = (
        stages.get(&StageKind::Ingest),
        stages.get(&StageKind::Score),
    ) else {
        return Err(ExportError::NotScored {
            run: run_dir.to_path_buf(),
        });
    };
    let recipe = recipe::load_file(&folder.file(RunFolder::RECIPE), &[])?.remove(0);
    let store = Store::open(ingest)?;
    let table = ScoreTable::load(score_dir)?;
    let summary_path = score_dir.join(score::SUMMARY_FILE);
    let summary: ScoreSummary = read_json(&summary_path)?;
    let stored = store.len(Split::Train);
    if table.len() as u64 != stored {
        return Err(ExportError::Mismatch {
            score_dir: score_dir.clone(),
            scores: table.len(),
            store: store.dir().to_path_buf(),
            stored,
        });
    }
    let signals = score::Signals::load(score_dir)?;
    let verdicts = verdicts(&store, table.rows(), signals.as_ref())?;
    let dir = out.map_or_else(|| folder.file(RunFolder::EXPORT), Path::to_path_buf);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), ExportError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        files.push(name.to_string());
        Ok(())
    };
    write(SAMPLES_CSV, samples_csv(&verdicts))?;
    write(SAMPLES_JSONL, samples_jsonl(&verdicts))?;
    write(CLASSES_CSV, classes_csv(&summary, &store))?;
    let keep: HashSet<&str> = verdicts
        .iter()
        .filter(|v| v.kept)
        .map(|v| v.path.as_str())
        .collect();
    for list in dataset::clean_lists(&recipe.dataset, ingest, &keep)? {
        write(list.name, list.text)?;
    }
    Ok(ExportSummary {
        dir,
        samples: verdicts.len(),
        kept: keep.len(),
        files,
    })
}

/// The verdict of every row, with the store's path, wnid and source for its id, and each
/// signal where the score combined several.
fn verdicts(
    store: &Store,
    rows: &[ScoreRow],
    signals: Option<&score::Signals>,
) -> Result<Vec<SampleVerdict>, ExportError> {
    let labels: Vec<u32> = rows.iter().map(|r| r.label).collect();
    let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
    let classes = &store.header().classes;
    // Ascending by score within each class: the last is rank 1.
    let mut rank = vec![0usize; rows.len()];
    let mut class_samples = vec![0usize; rows.len()];
    for members in score::by_class_ascending(&scores, &labels, classes.len()) {
        for (position, &i) in members.iter().enumerate() {
            rank[i] = members.len() - position;
            class_samples[i] = members.len();
        }
    }
    let reader = store.reader()?;
    rows.iter()
        .map(|row| {
            let meta = reader.meta(Split::Train, row.id)?;
            let i = row.id as usize;
            let signal = |signal| Some(signals?.get(signal)?[i]);
            Ok(SampleVerdict {
                id: row.id,
                path: meta.path,
                label: row.label,
                wnid: classes[row.label as usize].id.clone(),
                source: meta.source.as_str().to_string(),
                text_score: signal(Signal::Text).unwrap_or(row.score),
                search: signal(Signal::Search),
                confidence: signal(Signal::Confidence),
                margin: signal(Signal::Margin),
                knn: signal(Signal::Knn),
                combined_score: row.score,
                rank: rank[i],
                class_samples: class_samples[i],
                kept: row.kept,
                lambda: row.lambda,
            })
        })
        .collect()
}

fn samples_csv(verdicts: &[SampleVerdict]) -> String {
    let header: Vec<String> = SampleVerdict::COLUMNS.map(String::from).to_vec();
    let mut out = csv_line(&header);
    for v in verdicts {
        out.push_str(&csv_line(&v.csv_fields()));
    }
    out
}

fn samples_jsonl(verdicts: &[SampleVerdict]) -> String {
    verdicts
        .iter()
        .map(|v| serde_json::to_string(v).expect("verdicts serialize") + "\n")
        .collect()
}

fn classes_csv(summary: &ScoreSummary, store: &Store) -> String {
    let mut header = [
        "label",
        "wnid",
        "name",
        "samples",
        "kept",
        "discarded",
        "mean_score",
        "noisy",
        "auc",
    ]
    .map(String::from)
    .to_vec();
    let names = score::measured_names(summary.classes.iter().map(|c| c.signals.as_slice()));
    header.extend(names.iter().map(|name| format!("auc_{name}")));
    let mut out = csv_line(&header);
    let optional = |v: Option<String>| v.unwrap_or_default();
    for c in &summary.classes {
        let mut fields = vec![
            c.label.to_string(),
            store.header().classes[c.label as usize].id.clone(),
            c.name.clone(),
            c.samples.to_string(),
            c.kept.to_string(),
            (c.samples - c.kept).to_string(),
            c.mean_score.to_string(),
            optional(c.noisy.map(|n| n.to_string())),
            optional(c.auc.map(|a| format!("{a:.4}"))),
        ];
        fields.extend(
            names
                .iter()
                .map(|name| optional(c.signal_auc(name).map(|a| format!("{a:.4}")))),
        );
        out.push_str(&csv_line(&fields));
    }
    out
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ExportError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ExportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}
