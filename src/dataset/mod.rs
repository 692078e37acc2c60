//! Dataset readers: WebVision 2017 layout, imagefolder, jsonl, Clothing1M, Food-101N and a
//! generated synthetic dataset.
//!
//! In: a dataset root (or, for `synthetic`, the settings and a folder to generate into).
//! Out: a [`DatasetIndex`]: the class list and every sample's file, label, source, query and
//! page text, in file-list order, cut to the recipe's classes (`dataset.classes`, relabelled
//! 0.. by [`LabelMap`]) and, for WebVision, to its sources. No image is opened here; the
//! ingest stage decodes them, and later stages see what the store holds, except two
//! readings of the lists themselves: each image's standing in its query's search results
//! ([`search_standing`], for the score stage) and the cleaned lists of `export`.
//! [`fingerprint`] summarises a root's files for the ingest stage's cache key.

pub mod clothing1m;
pub mod fingerprint;
pub mod food101n;
pub mod imagefolder;
pub mod imagenet_val;
pub mod jsonl;
mod lines;
pub mod synthetic;
pub mod texts;
pub mod webvision;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::recipe::params::{ClassSubset, DatasetFormat, DatasetParams};
use crate::sample::{SampleText, Source, Split};
pub use texts::{PageTexts, TextRef};

/// One class: its id (WordNet id or folder name) and a readable name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub id: String,
    pub name: String,
}

/// A search query of a WebVision dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryInfo {
    pub id: u32,
    /// The query words, `+` turned into spaces.
    pub text: String,
    /// 0-based class the query was made for.
    pub label: u32,
}

/// A sample as a dataset lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSample {
    /// As written in the file list (e.g. `flickr/q0001/1.jpg`, `val000001.jpg`).
    pub path: String,
    /// Where the image file is.
    pub file: PathBuf,
    pub label: u32,
    pub source: Source,
    /// WebVision query id; 0 where there is none.
    pub query: u32,
    /// Its page text, in the index's [`PageTexts`] ([`DatasetIndex::text`]).
    pub text: TextRef,
}

/// Everything a dataset lists, before any image is read.
#[derive(Debug)]
pub struct DatasetIndex {
    pub classes: Vec<ClassInfo>,
    pub queries: Vec<QueryInfo>,
    pub train: Vec<DatasetSample>,
    pub val: Vec<DatasetSample>,
    /// Page-text fields of the wrong JSON type, repaired rather than fatal.
    pub repaired: FieldRepairs,
    /// A TSV naming each training image's true label, for a dataset that knows its noise (the
    /// generated one); the ingest stage keeps it beside the store.
    pub truth: Option<PathBuf>,
    /// The samples' page texts.
    pub texts: PageTexts,
}

impl DatasetIndex {
    /// The page text of `sample`, one of this index's.
    pub fn text(&self, sample: &DatasetSample) -> Result<SampleText, DatasetError> {
        self.texts.get(sample.text)
    }

    pub fn samples(&self, split: Split) -> &[DatasetSample] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

/// The new label of each class under a [`ClassSubset`]: `None` for a class left out.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap(Vec<Option<u32>>);

impl LabelMap {
    /// The classes `subset` keeps of `classes` (listed in `listed_in`), in the dataset's
    /// order, and the map from their old labels; an error names the file and the class
    /// asked for that is not there.
    pub fn new(
        classes: &[ClassInfo],
        subset: &ClassSubset,
        listed_in: &Path,
    ) -> Result<(Vec<ClassInfo>, LabelMap), DatasetError> {
        let fail = |message: String| DatasetError::Classes {
            path: listed_in.to_path_buf(),
            message,
        };
        let keep: Vec<bool> = match subset {
            ClassSubset::All => vec![true; classes.len()],
            ClassSubset::First(n) if *n > classes.len() => {
                return Err(fail(format!(
                    "\"first:{n}\" but the dataset has {} classes",
                    classes.len()
                )))
            }
            ClassSubset::First(n) => (0..classes.len()).map(|c| c < *n).collect(),
            ClassSubset::Ids(ids) => {
                if let Some(missing) = ids.iter().find(|id| !classes.iter().any(|c| &c.id == *id)) {
                    return Err(fail(format!("{missing:?} is not one of its classes")));
                }
                classes.iter().map(|c| ids.contains(&c.id)).collect()
            }
        };
        let mut next = 0u32;
        let map = keep
            .iter()
            .map(|&k| {
                k.then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let kept = classes
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(c, _)| c.clone())
            .collect();
        Ok((kept, LabelMap(map)))
    }

    /// The new label of `label`; `None` when its class is left out (or unknown).
    pub fn get(&self, label: u32) -> Option<u32> {
        self.0.get(label as usize).copied().flatten()
    }

    /// The samples of kept classes, relabelled.
    fn samples(&self, samples: Vec<DatasetSample>) -> Vec<DatasetSample> {
        samples
            .into_iter()
            .filter_map(|s| {
                let label = self.get(s.label)?;
                Some(DatasetSample { label, ..s })
            })
            .collect()
    }
}

impl DatasetIndex {
    /// This index cut to the classes of `subset` (`listed_in`: where its classes come from,
    /// for messages): every split and the queries, relabelled.
    fn restrict(self, subset: &ClassSubset, listed_in: &Path) -> Result<Self, DatasetError> {
        let (classes, map) = LabelMap::new(&self.classes, subset, listed_in)?;
        Ok(DatasetIndex {
            classes,
            queries: self
                .queries
                .into_iter()
                .filter_map(|q| {
                    let label = map.get(q.label)?;
                    Some(QueryInfo { label, ..q })
                })
                .collect(),
            train: map.samples(self.train),
            val: map.samples(self.val),
            ..self
        })
    }
}

/// What was done with a page-text field of the wrong JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repair {
    /// Kept as text: a number or bool as its text, a list joined by spaces.
    Converted,
    /// Taken as missing: nothing sensible was left (an object, a list of objects).
    Dropped,
}

impl Repair {
    /// `Converted` when something was kept, else `Dropped`.
    pub fn of(kept: bool) -> Repair {
        match kept {
            true => Repair::Converted,
            false => Repair::Dropped,
        }
    }
}

/// One repaired field: where it is, what was there, what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRepair {
    /// Relative to the dataset root, e.g. `meta/google/q0001.json`.
    pub file: String,
    /// 1-based row of the file's JSON array.
    pub row: usize,
    pub field: String,
    /// The value as found (JSON), cut to [`FieldRepair::FOUND_CHARS`] characters.
    pub found: String,
    pub repair: Repair,
}

impl FieldRepair {
    /// Enough of a value to recognise it; a page's whole description is not needed.
    pub const FOUND_CHARS: usize = 60;

    pub fn new(
        file: String,
        row: usize,
        field: &str,
        found: &serde_json::Value,
        repair: Repair,
    ) -> FieldRepair {
        FieldRepair {
            file,
            row,
            field: field.to_string(),
            found: found.to_string().chars().take(Self::FOUND_CHARS).collect(),
            repair,
        }
    }
}

/// Every repaired field counted, the first [`FieldRepairs::LISTED`] listed (a dataset with
/// millions of pages may repair millions of fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRepairs {
    pub total: u64,
    pub first: Vec<FieldRepair>,
}

impl FieldRepairs {
    pub const LISTED: usize = 20;

    pub fn add(&mut self, repair: FieldRepair) {
        self.total += 1;
        if self.first.len() < Self::LISTED {
            self.first.push(repair);
        }
    }
}

/// A dataset that cannot be read: always names the file, and the line or row when there is one.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {field}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        field: &'static str,
        message: String,
    },
    #[error("{}:{line}: `{entry}` leaves the dataset root", path.display())]
    OutsideRoot {
        path: PathBuf,
        line: usize,
        entry: String,
    },
    #[error("{}: {file_lines} lines vs {}: {meta_lines} lines; the two lists must be line-aligned", files.display(), metas.display())]
    Misaligned {
        files: PathBuf,
        file_lines: usize,
        metas: PathBuf,
        meta_lines: usize,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: row {row}: {message}", path.display())]
    Row {
        path: PathBuf,
        row: usize,
        message: String,
    },
    #[error("[dataset] root is required for format `{format}`")]
    NoRoot { format: &'static str },
    #[error("synthetic dataset in {}: {message}", dir.display())]
    Synthetic { dir: PathBuf, message: String },
    #[error("{}: dataset.classes: {message}", path.display())]
    Classes { path: PathBuf, message: String },
    #[error("{}: dataset.second_val has no image of the {classes} class(es) the run keeps (matched by class id: a label file of `<image> <wnid>` lines, or `<wnid>/` folders)", root.display())]
    NoSecondVal { root: PathBuf, classes: usize },
    #[error("{dataset}: not the counts dataset.expect asks for: {}; another release of the dataset (WebVision 2.0 read as 1.0), other lists or another validation set?", .problems.join("; "))]
    Counts {
        dataset: String,
        /// One per count that differs: `train: 65944 expected, 981 listed`.
        problems: Vec<String>,
    },
}

impl DatasetError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
        move |source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The index of a dataset that knows the noise of some of its training images: `truth`
/// gives their path, given label and true label (-1: wrong, the right one not known), written
/// as the truth file into `work_dir` (the ingest keeps it beside the store). No page text.
fn index_with_truth(
    classes: Vec<ClassInfo>,
    train: Vec<DatasetSample>,
    val: Vec<DatasetSample>,
    truth: Vec<(String, u32, i64)>,
    work_dir: &Path,
) -> Result<DatasetIndex, DatasetError> {
    let mut text = String::from("path\tgiven_label\ttrue_label\n");
    for (path, given, true_label) in truth {
        text.push_str(&format!("{path}\t{given}\t{true_label}\n"));
    }
    let truth_path = work_dir.join(crate::store::TRUTH_FILE);
    std::fs::create_dir_all(work_dir).map_err(DatasetError::io(work_dir))?;
    std::fs::write(&truth_path, text).map_err(DatasetError::io(&truth_path))?;
    Ok(DatasetIndex {
        classes,
        queries: Vec::new(),
        train,
        val,
        repaired: FieldRepairs::default(),
        truth: Some(truth_path),
        texts: PageTexts::default(),
    })
}

/// A list of a cleaned training set in the dataset's own format, as `runner export` writes
/// it: the file name and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanList {
    pub name: &'static str,
    pub text: String,
}

/// The training lists of the dataset `params` describe, cut to the images (paths as listed)
/// that `keep` holds, in the dataset's own format: WebVision's file and meta lists, jsonl's
/// records, a file list for imagefolder. `work_dir` is where `synthetic` generated its files.
pub fn clean_lists(
    params: &DatasetParams,
    work_dir: &Path,
    keep: &HashSet<&str>,
) -> Result<Vec<CleanList>, DatasetError> {
    match params.format {
        DatasetFormat::Webvision => webvision::clean_lists(root(params)?, &params.sources, keep),
        DatasetFormat::Synthetic => {
            webvision::clean_lists(&work_dir.join(synthetic::DIR), &params.sources, keep)
        }
        DatasetFormat::Imagefolder => imagefolder::clean_lists(root(params)?, keep),
        DatasetFormat::Jsonl => jsonl::clean_lists(root(params)?, keep),
        DatasetFormat::Clothing1m => clothing1m::clean_lists(root(params)?, keep),
        DatasetFormat::Food101n => food101n::clean_lists(root(params)?, keep),
    }
}

/// Each training image's standing in its query's search results, by path as listed
/// ([`webvision::search_standing`]); `None` for formats whose lists keep no search order.
/// `work_dir` is where `synthetic` generated its files.
pub fn search_standing(
    params: &DatasetParams,
    work_dir: &Path,
) -> Result<Option<HashMap<String, f64>>, DatasetError> {
    match params.format {
        DatasetFormat::Webvision => {
            webvision::search_standing(root(params)?, &params.sources).map(Some)
        }
        DatasetFormat::Synthetic => {
            webvision::search_standing(&work_dir.join(synthetic::DIR), &params.sources).map(Some)
        }
        DatasetFormat::Imagefolder
        | DatasetFormat::Jsonl
        | DatasetFormat::Clothing1m
        | DatasetFormat::Food101n => Ok(None),
    }
}

/// The second validation set of `params` (none without `dataset.second_val`), mapped to the
/// classes `classes` (the run's, after `dataset.classes`) by class id.
pub fn read_second_val(
    params: &DatasetParams,
    classes: &[ClassInfo],
) -> Result<Vec<DatasetSample>, DatasetError> {
    let Some(second) = &params.second_val else {
        return Ok(Vec::new());
    };
    let samples = imagenet_val::read(&second.root, second.labels.as_deref(), classes)?;
    if samples.is_empty() {
        return Err(DatasetError::NoSecondVal {
            root: second.root.clone(),
            classes: classes.len(),
        });
    }
    Ok(samples)
}

/// Refuses a dataset that lists other counts than `params.expect` asks for: `index` (after
/// the class subset, the sources and the cap) and `second_val` images.
pub fn check_expected(
    params: &DatasetParams,
    index: &DatasetIndex,
    second_val: usize,
) -> Result<(), DatasetError> {
    let Some(expect) = &params.expect else {
        return Ok(());
    };
    let problems: Vec<String> = [
        ("classes", expect.classes, index.classes.len()),
        ("train", expect.train, index.train.len()),
        ("val", expect.val, index.val.len()),
        ("second_val", expect.second_val, second_val),
    ]
    .into_iter()
    .filter_map(|(what, expected, found)| {
        let expected = expected?;
        (expected != found).then(|| format!("{what}: {expected} expected, {found} listed"))
    })
    .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let dataset = match &params.root {
        Some(root) => root.display().to_string(),
        None => format!("the {} dataset", format_name(params.format)),
    };
    Err(DatasetError::Counts { dataset, problems })
}

/// The root a dataset format other than `synthetic` needs.
fn root(params: &DatasetParams) -> Result<&Path, DatasetError> {
    params.root.as_deref().ok_or(DatasetError::NoRoot {
        format: format_name(params.format),
    })
}

/// Reads the dataset `params` describe. `work_dir` is where `synthetic` generates its files.
pub fn read(params: &DatasetParams, work_dir: &Path) -> Result<DatasetIndex, DatasetError> {
    let root = || root(params);
    let subset = &params.classes;
    let texts = PageTexts::in_dir(work_dir);
    let mut index = match params.format {
        DatasetFormat::Webvision => {
            webvision::read_with(root()?, &params.sources, params.val, subset, texts)?
        }
        DatasetFormat::Imagefolder => {
            imagefolder::read(root()?, params.val, texts)?.restrict(subset, root()?)?
        }
        DatasetFormat::Jsonl => {
            jsonl::read(root()?, params.val, texts)?.restrict(subset, root()?)?
        }
        DatasetFormat::Clothing1m => {
            clothing1m::read(root()?, params.val, work_dir)?.restrict(subset, root()?)?
        }
        DatasetFormat::Food101n => {
            food101n::read(root()?, params.val, work_dir)?.restrict(subset, root()?)?
        }
        DatasetFormat::Synthetic => {
            let generated = synthetic::generate(&params.synthetic, work_dir)?;
            let index =
                webvision::read_with(&generated.root, &params.sources, params.val, subset, texts)?;
            DatasetIndex {
                truth: Some(generated.truth),
                ..index
            }
        }
    };
    if let Some(cap) = params.max_per_class {
        index.train = cap_per_class(std::mem::take(&mut index.train), index.classes.len(), cap);
    }
    Ok(index)
}

fn format_name(format: DatasetFormat) -> &'static str {
    match format {
        DatasetFormat::Webvision => "webvision",
        DatasetFormat::Imagefolder => "imagefolder",
        DatasetFormat::Jsonl => "jsonl",
        DatasetFormat::Synthetic => "synthetic",
        DatasetFormat::Clothing1m => "clothing1m",
        DatasetFormat::Food101n => "food101n",
    }
}

/// Keeps the first `cap` samples of each class, in list order.
fn cap_per_class(samples: Vec<DatasetSample>, classes: usize, cap: usize) -> Vec<DatasetSample> {
    let mut kept = vec![0usize; classes];
    samples
        .into_iter()
        .filter(|s| {
            let count = &mut kept[s.label as usize];
            *count += 1;
            *count <= cap
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_first_per_class_in_order() {
        let sample = |path: &str, label| DatasetSample {
            path: path.into(),
            file: path.into(),
            label,
            source: Source::Other,
            query: 0,
            text: TextRef::EMPTY,
        };
        let samples = vec![
            sample("a", 0),
            sample("b", 1),
            sample("c", 0),
            sample("d", 0),
            sample("e", 1),
        ];
        let kept: Vec<_> = cap_per_class(samples, 2, 2)
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(kept, ["a", "b", "c", "e"]);
    }
}
