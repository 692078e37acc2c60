//! `clothing1m`: the Clothing1M layout (Xiao et al. 2015): 1M clothing images from shopping
//! sites, labelled by their surrounding text, 14 classes.
//!
//! ```text
//! category_names_eng.txt        one class name a line          label = 0-based line
//! noisy_label_kv.txt            <image path> <label>            the noisy labels
//! clean_label_kv.txt            <image path> <label>            labels checked by people
//! noisy_train_key_list.txt      <image path>                    the training images
//! clean_test_key_list.txt       <image path>                    the validation images
//! ```
//!
//! In: the root. Out: training samples with their noisy labels, validation samples (the clean
//! test list) with their clean labels, and a truth file written into the work folder: every
//! training image that also has a clean label, with both (the verification labels as the
//! noise truth for the score stage's AUC). There is no page text.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::lines::ListFile;
use super::{index_with_truth, ClassInfo, CleanList, DatasetError, DatasetIndex, DatasetSample};
use crate::sample::Source;

/// Reads the training list (noisy labels) and, if `val`, the clean test list; writes the truth
/// file into `work_dir`.
pub fn read(root: &Path, val: bool, work_dir: &Path) -> Result<DatasetIndex, DatasetError> {
    let names = ListFile::read(root.join("category_names_eng.txt"))?;
    let classes: Vec<ClassInfo> = names
        .lines()
        .map(|line| ClassInfo {
            id: line.text.trim().to_string(),
            name: line.text.trim().to_string(),
        })
        .collect();
    let noisy = labels(root, "noisy_label_kv.txt", classes.len())?;
    let clean = labels(root, "clean_label_kv.txt", classes.len())?;
    let train = keyed(root, "noisy_train_key_list.txt", &noisy)?;
    let val = match val {
        true => keyed(root, "clean_test_key_list.txt", &clean)?,
        false => Vec::new(),
    };
    // The training images with a clean label too: their noise is known.
    let truth = train
        .iter()
        .filter_map(|sample| {
            let &true_label = clean.get(&sample.path)?;
            Some((sample.path.clone(), sample.label, i64::from(true_label)))
        })
        .collect();
    index_with_truth(classes, train, val, truth, work_dir)
}

/// `<image path> <label>` lines: label by path.
fn labels(root: &Path, name: &str, classes: usize) -> Result<HashMap<String, u32>, DatasetError> {
    let file = ListFile::read(root.join(name))?;
    file.lines()
        .map(|line| {
            let (path, label) = line.pair::<u32>("path", "label")?;
            if label as usize >= classes {
                return Err(line.error(
                    "label",
                    format!("{label} but category_names_eng.txt has {classes} classes"),
                ));
            }
            Ok((path.to_string(), label))
        })
        .collect()
}

/// The images a key list names, with their labels from `labels`.
fn keyed(
    root: &Path,
    name: &str,
    labels: &HashMap<String, u32>,
) -> Result<Vec<DatasetSample>, DatasetError> {
    let file = ListFile::read(root.join(name))?;
    file.lines()
        .map(|line| {
            let (path, _) = line.head_rest("path")?;
            let label = *labels
                .get(path)
                .ok_or_else(|| line.error("path", format!("`{path}` has no label")))?;
            Ok(DatasetSample {
                path: path.to_string(),
                file: line.file_in_root(root, "", path)?,
                label,
                source: Source::Other,
                query: 0,
                text: super::TextRef::EMPTY,
            })
        })
        .collect()
}

/// The training keys `keep` holds, as `noisy_train_key_list_clean.txt` (its labels stay in
/// `noisy_label_kv.txt`).
pub fn clean_lists(root: &Path, keep: &HashSet<&str>) -> Result<Vec<CleanList>, DatasetError> {
    let file = ListFile::read(root.join("noisy_train_key_list.txt"))?;
    let mut text = String::new();
    for line in file.lines() {
        let (path, _) = line.head_rest("path")?;
        if keep.contains(path) {
            text.push_str(path);
            text.push('\n');
        }
    }
    Ok(vec![CleanList {
        name: "noisy_train_key_list_clean.txt",
        text,
    }])
}
