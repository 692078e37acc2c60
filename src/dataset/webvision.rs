//! The WebVision 2017 layout, as the real release and `imagenette-web` have it:
//!
//! ```text
//! info/synsets.txt                      <wnid> <lemmas>           label = 0-based line
//! info/queries_{google,flickr}.txt      <qid> <words joined by +>
//! info/queries_synsets_map.txt          <qid> <1-based synset line>
//! info/train_filelist_{google,flickr,all}.txt   <source>/qNNNN/<id>.jpg <label>
//! info/train_meta_list_{google,flickr,all}.txt  <source>/qNNNN.json <row>  (line-aligned)
//! info/val_filelist.txt                 <name> <label>           images in val_images_256/
//! meta/<source>/qNNNN.json              [{title, description, tags?}, ...]  row is 1-based
//! ```
//!
//! Google text is title + description; Flickr text is title + description + tags. A key the
//! page lacks (or `null`) is `None`, an empty string is `Some("")`. A number, bool or list where
//! text belongs is converted to text (or, an object, taken as missing) and counted in
//! [`DatasetIndex::repaired`], never fatal.
//!
//! Structural faults are errors naming file and line: a file list and meta list of different
//! lengths (compared before any line is read), a path that leaves the root (`..` climbing out,
//! an absolute path), a label beyond `synsets.txt`, a meta row out of range.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::lines::{Line, ListFile};
use super::{
    ClassInfo, CleanList, DatasetError, DatasetIndex, DatasetSample, FieldRepair, FieldRepairs,
    LabelMap, PageTexts, QueryInfo, Repair, TextRef,
};
use crate::recipe::params::ClassSubset;
use crate::sample::{SampleText, Source};

/// The folder of the validation images.
pub const VAL_IMAGES: &str = "val_images_256";

/// Reads the training lists of `sources` (the `all` lists when both are asked for, keeping
/// their order) and, if `val`, the validation list: every class; the page texts into `texts`.
pub fn read(
    root: &Path,
    sources: &[Source],
    val: bool,
    texts: PageTexts,
) -> Result<DatasetIndex, DatasetError> {
    read_with(root, sources, val, &ClassSubset::All, texts)
}

/// [`read`] of the classes `subset` keeps, relabelled 0.. in `synsets.txt` order. The lines
/// of other classes are passed over before their pages are read (mini-WebVision reads the
/// pages of 50 classes, not 1000).
pub fn read_with(
    root: &Path,
    sources: &[Source],
    val: bool,
    subset: &ClassSubset,
    mut texts: PageTexts,
) -> Result<DatasetIndex, DatasetError> {
    let info = root.join("info");
    let synsets = info.join("synsets.txt");
    let all_classes = read_classes(&synsets)?;
    let (classes, map) = LabelMap::new(&all_classes, subset, &synsets)?;
    let queries = read_queries(&info)?
        .into_iter()
        .filter_map(|q| {
            let label = map.get(q.label)?;
            Some(QueryInfo { label, ..q })
        })
        .collect();
    let (files, metas) = train_lists(root, sources)?;
    let mut pages = MetaCache {
        root,
        files: Vec::new(),
        repaired: FieldRepairs::default(),
    };
    let mut train = Vec::new();
    for (file_line, meta_line) in files.lines().zip(metas.lines()) {
        let (_, label) = file_line.pair::<u32>("path", "label")?;
        check_label(&file_line, label, all_classes.len())?;
        if let Some(label) = map.get(label) {
            let sample = train_sample(root, &file_line, &meta_line, &mut pages, &mut texts)?;
            train.push(DatasetSample { label, ..sample });
        }
    }
    let val = if val {
        read_val(root, all_classes.len(), &map)?
    } else {
        Vec::new()
    };
    Ok(DatasetIndex {
        classes,
        queries,
        train,
        val,
        repaired: pages.repaired,
        truth: None,
        texts: texts.sealed()?,
    })
}

/// The training file list and meta list of `sources` (the `all` lists when both are asked
/// for), checked to have as many lines.
fn train_lists(root: &Path, sources: &[Source]) -> Result<(ListFile, ListFile), DatasetError> {
    let info = root.join("info");
    let google = sources.contains(&Source::Google);
    let flickr = sources.contains(&Source::Flickr);
    let list = match (google, flickr) {
        (true, true) | (false, false) => "all",
        (true, false) => "google",
        (false, true) => "flickr",
    };
    let files = ListFile::read(info.join(format!("train_filelist_{list}.txt")))?;
    let metas = ListFile::read(info.join(format!("train_meta_list_{list}.txt")))?;
    let (file_lines, meta_lines) = (files.lines().count(), metas.lines().count());
    if file_lines != meta_lines {
        return Err(DatasetError::Misaligned {
            files: files.path.clone(),
            file_lines,
            metas: metas.path.clone(),
            meta_lines,
        });
    }
    Ok((files, metas))
}

/// The lines of the training lists of `sources` whose image `keep` holds, as
/// `train_filelist_clean.txt` and its line-aligned `train_meta_list_clean.txt`: lists in
/// this layout that other tools (and websieve, in place of the originals) read.
pub fn clean_lists(
    root: &Path,
    sources: &[Source],
    keep: &HashSet<&str>,
) -> Result<Vec<CleanList>, DatasetError> {
    let (files, metas) = train_lists(root, sources)?;
    let (mut file_list, mut meta_list) = (String::new(), String::new());
    for (file_line, meta_line) in files.lines().zip(metas.lines()) {
        let (path, _) = file_line.head_rest("path")?;
        if keep.contains(path) {
            file_list.push_str(file_line.text.trim_end());
            file_list.push('\n');
            meta_list.push_str(meta_line.text.trim_end());
            meta_list.push('\n');
        }
    }
    Ok(vec![
        CleanList {
            name: "train_filelist_clean.txt",
            text: file_list,
        },
        CleanList {
            name: "train_meta_list_clean.txt",
            text: meta_list,
        },
    ])
}

/// Each training image's standing in its query's search results, by path as listed: 1 for
/// the first of the n rows its meta file has, falling to 1/n for the last. WebVision keeps
/// each query's results in the order the engine returned them, and the meta list's row is
/// that order; n is the rows the lists name in that meta file, or its last row named if
/// higher (lists cut to part of a query's results). The lists of
/// `sources`, as [`read`] takes them.
pub fn search_standing(
    root: &Path,
    sources: &[Source],
) -> Result<HashMap<String, f64>, DatasetError> {
    let (files, metas) = train_lists(root, sources)?;
    // Each row's meta file as an index into `results`: the rows named in it, and the last.
    let mut rows = Vec::new();
    let mut meta_files: HashMap<String, usize> = HashMap::new();
    let mut results: Vec<(u32, u32)> = Vec::new();
    for (file_line, meta_line) in files.lines().zip(metas.lines()) {
        let (path, _) = file_line.head_rest("path")?;
        let (meta_path, row) = meta_line.pair::<u32>("meta file", "row")?;
        if row == 0 {
            return Err(meta_line.error("row", "is 1-based, got 0"));
        }
        let file = *meta_files.entry(meta_path.to_string()).or_insert_with(|| {
            results.push((0, 0));
            results.len() - 1
        });
        let (named, last) = &mut results[file];
        (*named, *last) = (*named + 1, (*last).max(row));
        rows.push((path.to_string(), file, row));
    }
    Ok(rows
        .into_iter()
        .map(|(path, file, row)| {
            let (named, last) = results[file];
            (path, 1.0 - (row - 1) as f64 / named.max(last) as f64)
        })
        .collect())
}

fn read_classes(path: &Path) -> Result<Vec<ClassInfo>, DatasetError> {
    let file = ListFile::read(path.to_path_buf())?;
    file.lines()
        .map(|line| {
            let (id, name) = line.head_rest("wnid")?;
            Ok(ClassInfo {
                id: id.to_string(),
                name: name.to_string(),
            })
        })
        .collect()
}

/// Queries with their class, when `queries_synsets_map.txt` is there (text from the Google
/// list, else the Flickr one).
fn read_queries(info: &Path) -> Result<Vec<QueryInfo>, DatasetError> {
    let map_path = info.join("queries_synsets_map.txt");
    if !map_path.exists() {
        return Ok(Vec::new());
    }
    let mut texts = HashMap::new();
    for name in ["queries_flickr.txt", "queries_google.txt"] {
        let path = info.join(name);
        if path.exists() {
            let file = ListFile::read(path)?;
            for line in file.lines() {
                let (id, text) = line.head_rest("query id")?;
                let id: u32 = id
                    .parse()
                    .map_err(|e| line.error("query id", format!("`{id}`: {e}")))?;
                texts.insert(id, text.replace('+', " "));
            }
        }
    }
    let map = ListFile::read(map_path)?;
    map.lines()
        .map(|line| {
            let (id, synset) = line.pair::<u32>("query id", "synset line")?;
            let id: u32 = id
                .parse()
                .map_err(|e| line.error("query id", format!("`{id}`: {e}")))?;
            let label = synset
                .checked_sub(1)
                .ok_or_else(|| line.error("synset line", "is 1-based, got 0"))?;
            Ok(QueryInfo {
                id,
                text: texts.get(&id).cloned().unwrap_or_default(),
                label,
            })
        })
        .collect()
}

/// The sample of a file-list line (its label as listed; checked by the caller) and its
/// meta-list line.
fn train_sample(
    root: &Path,
    file_line: &Line<'_>,
    meta_line: &Line<'_>,
    pages: &mut MetaCache<'_>,
    texts: &mut PageTexts,
) -> Result<DatasetSample, DatasetError> {
    let (path, label) = file_line.pair::<u32>("path", "label")?;
    let file = file_line.file_in_root(root, "", path)?;
    let (source, query) = source_and_query(path, file_line)?;
    let (meta_path, row) = meta_line.pair::<usize>("meta file", "row")?;
    let meta_stem = meta_path.strip_suffix(".json").unwrap_or(meta_path);
    if source_and_query(meta_stem, meta_line)? != (source, query) {
        return Err(meta_line.error(
            "meta file",
            format!(
                "`{meta_path}` does not match line {} of the file list (`{path}`)",
                file_line.number
            ),
        ));
    }
    let text = texts.put(&pages.text(meta_path, row, source, meta_line)?)?;
    Ok(DatasetSample {
        path: path.to_string(),
        file,
        label,
        source,
        query,
        text,
    })
}

fn check_label(line: &Line<'_>, label: u32, classes: usize) -> Result<(), DatasetError> {
    if label as usize >= classes {
        return Err(line.error(
            "label",
            format!("{label} but synsets.txt has {classes} classes"),
        ));
    }
    Ok(())
}

/// `google/q0012/x.jpg` or `google/q0012` → (Google, 12).
fn source_and_query(path: &str, line: &Line<'_>) -> Result<(Source, u32), DatasetError> {
    let mut parts = path.split('/');
    let source = match parts.next() {
        Some("google") => Source::Google,
        Some("flickr") => Source::Flickr,
        _ => {
            return Err(line.error(
                "path",
                format!("`{path}` does not start with google/ or flickr/"),
            ))
        }
    };
    let query = parts
        .next()
        .and_then(|q| q.strip_prefix('q'))
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or_else(|| line.error("path", format!("`{path}` has no qNNNN query folder")))?;
    Ok((source, query))
}

/// The validation images of the classes `map` keeps, relabelled.
fn read_val(
    root: &Path,
    classes: usize,
    map: &LabelMap,
) -> Result<Vec<DatasetSample>, DatasetError> {
    let list = ListFile::read(root.join("info").join("val_filelist.txt"))?;
    let mut val = Vec::new();
    for line in list.lines() {
        let (name, label) = line.pair::<u32>("path", "label")?;
        let file = line.file_in_root(root, VAL_IMAGES, name)?;
        check_label(&line, label, classes)?;
        if let Some(label) = map.get(label) {
            val.push(DatasetSample {
                path: name.to_string(),
                file,
                label,
                source: Source::Other,
                query: 0,
                text: TextRef::EMPTY,
            });
        }
    }
    Ok(val)
}

/// Page files held parsed at once. The lists of WebVision (and of the generated dataset) take
/// one query's page file after another, so each is parsed once; a list in another order
/// parses a file again when it comes back to it. Memory: a few page files, not the dataset's
/// 2.4M pages (parsed JSON takes several times its text).
const PAGE_FILES_HELD: usize = 4;

/// The meta JSON files last read, most recent last, and the fields repaired so far.
struct MetaCache<'a> {
    root: &'a Path,
    /// By the meta list's path: the file and its rows.
    files: Vec<(String, PathBuf, Vec<Value>)>,
    repaired: FieldRepairs,
}

impl MetaCache<'_> {
    fn text(
        &mut self,
        meta_path: &str,
        row: usize,
        source: Source,
        line: &Line<'_>,
    ) -> Result<SampleText, DatasetError> {
        match self.files.iter().position(|(name, ..)| name == meta_path) {
            Some(held) => {
                let entry = self.files.remove(held);
                self.files.push(entry);
            }
            None => {
                let file = line.file_in_root(self.root, "meta", meta_path)?;
                let rows = parse_array(&file)?;
                if self.files.len() == PAGE_FILES_HELD {
                    self.files.remove(0);
                }
                self.files.push((meta_path.to_string(), file, rows));
            }
        }
        let (_, file, rows) = self.files.last().expect("just pushed");
        let element = row
            .checked_sub(1)
            .and_then(|i| rows.get(i))
            .ok_or_else(|| {
                line.error(
                    "row",
                    format!("{row} is outside 1..={} of {}", rows.len(), file.display()),
                )
            })?;
        let repaired = &mut self.repaired;
        let mut repair = |field, found: &Value, repair| {
            repaired.add(FieldRepair::new(
                format!("meta/{meta_path}"),
                row,
                field,
                found,
                repair,
            ))
        };
        page_text(element, source, &mut repair).map_err(|message| DatasetError::Row {
            path: file.clone(),
            row,
            message,
        })
    }
}

fn parse_array(path: &PathBuf) -> Result<Vec<Value>, DatasetError> {
    let bytes = std::fs::read(path).map_err(DatasetError::io(path))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|source| DatasetError::Json {
        path: path.clone(),
        source,
    })?;
    match value {
        Value::Array(rows) => Ok(rows),
        _ => Err(DatasetError::Row {
            path: path.clone(),
            row: 0,
            message: "expected a JSON array".into(),
        }),
    }
}

/// A page's text. Web pages put numbers, bools and lists where text belongs: such a field is
/// converted ([`text_of`]) or, when nothing sensible is left, taken as missing, and handed to
/// `repaired` (field, value as found, what was done); it never fails the dataset.
fn page_text(
    element: &Value,
    source: Source,
    repaired: &mut dyn FnMut(&'static str, &Value, Repair),
) -> Result<SampleText, String> {
    let object = element.as_object().ok_or("expected a JSON object")?;
    let mut field = |key: &'static str| match object.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            let text = text_of(other);
            repaired(key, other, Repair::of(text.is_some()));
            text
        }
    };
    let title = field("title");
    let description = field("description");
    let tags = match (source, object.get("tags")) {
        (Source::Flickr, Some(Value::String(s))) => {
            s.split_whitespace().map(str::to_string).collect()
        }
        (Source::Flickr, Some(Value::Array(tags))) if tags.iter().all(Value::is_string) => {
            tags.iter().filter_map(scalar_text).collect()
        }
        (Source::Flickr, Some(other)) if !other.is_null() => {
            let tags: Vec<String> = match other {
                Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
                single => scalar_text(single).into_iter().collect(),
            };
            repaired("tags", other, Repair::of(!tags.is_empty()));
            tags
        }
        _ => Vec::new(),
    };
    Ok(SampleText {
        title,
        description,
        tags,
    })
}

/// A string, or a number or bool as its text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value where text is expected, as text: a number or bool as its text, a list of those and
/// strings joined by spaces (nulls left out); `None` for an object, or a list holding lists or
/// objects.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter(|v| !v.is_null())
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|words| words.join(" ")),
        other => scalar_text(other),
    }
}
