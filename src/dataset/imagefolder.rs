//! `imagefolder`: one folder per class. Either `root/train/<class>/…` (and `root/val/<class>/…`)
//! or, without a `train` folder, `root/<class>/…` (training only). Classes are the training
//! folders in name order. A sidecar `<image stem>.txt` beside an image is its page text
//! (the description); `.txt` and `.json` files are never taken for images.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{
    ClassInfo, CleanList, DatasetError, DatasetIndex, DatasetSample, FieldRepairs, PageTexts,
};
use crate::sample::{SampleText, Source};

pub fn read(root: &Path, val: bool, mut texts: PageTexts) -> Result<DatasetIndex, DatasetError> {
    let train_root = if root.join("train").is_dir() {
        root.join("train")
    } else {
        root.to_path_buf()
    };
    let class_dirs = sorted_entries(&train_root, true)?;
    let classes: Vec<ClassInfo> = class_dirs
        .iter()
        .map(|dir| {
            let id = file_name(dir);
            ClassInfo {
                name: id.clone(),
                id,
            }
        })
        .collect();
    let train = read_split(root, &train_root, &classes, &mut texts)?;
    let val_root = root.join("val");
    let val = if val && val_root.is_dir() {
        read_split(root, &val_root, &classes, &mut texts)?
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

/// The training images `keep` holds as `train_filelist_clean.txt`, one `<path> <label>` a
/// line (paths relative to the root, labels the 0-based class folders in name order): the
/// layout has no list of its own.
pub fn clean_lists(root: &Path, keep: &HashSet<&str>) -> Result<Vec<CleanList>, DatasetError> {
    let text = read(root, false, PageTexts::default())?
        .train
        .iter()
        .filter(|s| keep.contains(s.path.as_str()))
        .map(|s| format!("{} {}\n", s.path, s.label))
        .collect();
    Ok(vec![CleanList {
        name: "train_filelist_clean.txt",
        text,
    }])
}

fn read_split(
    root: &Path,
    split_root: &Path,
    classes: &[ClassInfo],
    texts: &mut PageTexts,
) -> Result<Vec<DatasetSample>, DatasetError> {
    let mut samples = Vec::new();
    for dir in sorted_entries(split_root, true)? {
        let id = file_name(&dir);
        let label = classes
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| DatasetError::Line {
                path: dir.clone(),
                line: 0,
                field: "class folder",
                message: format!("`{id}` is not a training class"),
            })? as u32;
        for file in sorted_entries(&dir, false)? {
            let is_sidecar = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("txt" | "json")
            );
            if is_sidecar {
                continue;
            }
            let sidecar = file.with_extension("txt");
            let description = if sidecar.is_file() {
                Some(
                    std::fs::read_to_string(&sidecar)
                        .map_err(DatasetError::io(&sidecar))?
                        .trim()
                        .to_string(),
                )
            } else {
                None
            };
            samples.push(DatasetSample {
                path: file
                    .strip_prefix(root)
                    .unwrap_or(&file)
                    .to_string_lossy()
                    .into_owned(),
                file,
                label,
                source: Source::Other,
                query: 0,
                text: texts.put(&SampleText {
                    title: None,
                    description,
                    tags: Vec::new(),
                })?,
            });
        }
    }
    Ok(samples)
}

/// Folders (`dirs`) or files of `dir`, sorted by name; hidden entries are left out.
fn sorted_entries(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>, DatasetError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(DatasetError::io(dir))? {
        let path = entry.map_err(DatasetError::io(dir))?.path();
        if !file_name(&path).starts_with('.') && path.is_dir() == dirs {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
