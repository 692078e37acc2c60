//! `jsonl`: `root/train.jsonl` (and `root/val.jsonl`), one JSON object per line:
//! `{"path": "img/1.jpg", "label": "cat" | 3, "title"?, "description"?, "tags"?, "text"?}`.
//! `path` is relative to the root; `text` is taken as the description when there is none.
//! Classes: `root/classes.txt` (`<id> [name]` per line) when present, else the distinct training
//! labels sorted (numerically when all are numbers).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::lines::{file_in_root, ListFile};
use super::{
    ClassInfo, CleanList, DatasetError, DatasetIndex, DatasetSample, FieldRepairs, PageTexts,
};
use crate::sample::{SampleText, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    path: String,
    label: Label,
    title: Option<String>,
    description: Option<String>,
    text: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Label {
    Name(String),
    Number(u64),
}

impl Label {
    fn key(&self) -> String {
        match self {
            Label::Name(name) => name.clone(),
            Label::Number(n) => n.to_string(),
        }
    }
}

pub fn read(root: &Path, val: bool, mut texts: PageTexts) -> Result<DatasetIndex, DatasetError> {
    let train = read_records(&ListFile::read(root.join("train.jsonl"))?)?;
    let classes_path = root.join("classes.txt");
    let classes = if classes_path.exists() {
        let file = ListFile::read(classes_path)?;
        file.lines()
            .map(|line| {
                let (id, name) = line.head_rest("class id")?;
                let name = if name.is_empty() { id } else { name };
                Ok(ClassInfo {
                    id: id.to_string(),
                    name: name.to_string(),
                })
            })
            .collect::<Result<Vec<_>, DatasetError>>()?
    } else {
        distinct_classes(train.iter().map(|(_, r)| r.label.key()))
    };
    let mut to_samples = |records: Vec<(usize, Record)>, path: &Path| {
        records
            .into_iter()
            .map(|(line, r)| sample(root, &classes, r, path, line, &mut texts))
            .collect::<Result<Vec<_>, _>>()
    };
    let train = to_samples(train, &root.join("train.jsonl"))?;
    let val_path = root.join("val.jsonl");
    let val = if val && val_path.exists() {
        to_samples(read_records(&ListFile::read(val_path.clone())?)?, &val_path)?
    } else {
        Vec::new()
    };
    Ok(DatasetIndex {
        classes,
        queries: Vec::new(),
        train,
        val,
        repaired: FieldRepairs::default(),
        truth: None,
        texts: texts.sealed()?,
    })
}

/// The lines of `train.jsonl` whose image `keep` holds, as `train_clean.jsonl`.
pub fn clean_lists(root: &Path, keep: &HashSet<&str>) -> Result<Vec<CleanList>, DatasetError> {
    let file = ListFile::read(root.join("train.jsonl"))?;
    let mut text = String::new();
    for (line, (_, record)) in file.lines().zip(read_records(&file)?) {
        if keep.contains(record.path.as_str()) {
            text.push_str(line.text.trim_end());
            text.push('\n');
        }
    }
    Ok(vec![CleanList {
        name: "train_clean.jsonl",
        text,
    }])
}

fn read_records(file: &ListFile) -> Result<Vec<(usize, Record)>, DatasetError> {
    file.lines()
        .map(|line| {
            let record = serde_json::from_str(line.text).map_err(|e| line.error("record", e))?;
            Ok((line.number, record))
        })
        .collect()
}

fn distinct_classes(keys: impl Iterator<Item = String>) -> Vec<ClassInfo> {
    let mut keys: Vec<String> = keys.collect();
    if keys.iter().all(|k| k.parse::<u64>().is_ok()) {
        keys.sort_by_key(|k| k.parse::<u64>().unwrap_or(0));
    } else {
        keys.sort();
    }
    keys.dedup();
    keys.into_iter()
        .map(|k| ClassInfo {
            id: k.clone(),
            name: k,
        })
        .collect()
}

fn sample(
    root: &Path,
    classes: &[ClassInfo],
    r: Record,
    path: &Path,
    line: usize,
    texts: &mut PageTexts,
) -> Result<DatasetSample, DatasetError> {
    let key = r.label.key();
    let label = classes
        .iter()
        .position(|c| c.id == key)
        .ok_or_else(|| DatasetError::Line {
            path: path.to_path_buf(),
            line,
            field: "label",
            message: format!("`{key}` is not a known class"),
        })? as u32;
    Ok(DatasetSample {
        file: file_in_root(path, line, root, "", &r.path)?,
        path: r.path,
        label,
        source: Source::Other,
        query: 0,
        text: texts.put(&SampleText {
            title: r.title,
            description: r.description.or(r.text),
            tags: r.tags,
        })?,
    })
}
