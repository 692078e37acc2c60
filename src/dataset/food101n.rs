//! `food101n`: the Food-101N layout (Lee et al. 2018, CleanNet): 310k food images found on
//! the web for the 101 classes of Food-101, labelled by the query that found them, some
//! checked by people.
//!
//! ```text
//! meta/classes.txt            class_name                          header, then a class a line:
//!                                                                 label = 0-based line below it
//! meta/imagelist.tsv          class_name/key                      header, then every image,
//!                             apple_pie/<key>.jpg                 its class the folder
//! meta/verified_train.tsv     class_name/key  verification_label  header, then images checked
//!                             apple_pie/<key>.jpg  1              by people: 1 = the label is
//! meta/verified_val.tsv       (the same)                          right, 0 = it is wrong
//! images/<class>/<key>.jpg
//! ```
//!
//! In: the root. Out: training samples (the image list but the images of
//! `verified_val.tsv`), validation samples (those of `verified_val.tsv` verified right, so the
//! validation set's labels are checked and it never overlaps training), and a truth file
//! written into the work folder from `verified_train.tsv`: a right label's true label is the
//! given one, a wrong one's is -1 (not known), the noise truth for the score stage's AUC.
//! There is no page text. The usual classification test set, Food-101's, is a second
//! validation set (`dataset.second_val`: its class names are Food-101N's class ids).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::lines::{Line, ListFile};
use super::{index_with_truth, ClassInfo, CleanList, DatasetError, DatasetIndex, DatasetSample};
use crate::sample::Source;

/// The header line each list starts with (the release has them; lists without are read too).
const CLASSES_HEADER: &str = "class_name";
const IMAGELIST_HEADER: &str = "class_name/key";
const VERIFIED_HEADER: &str = "class_name/key\tverification_label";

/// Reads the image list and, if `val`, the verified validation images; writes the truth file
/// into `work_dir`.
pub fn read(root: &Path, val: bool, work_dir: &Path) -> Result<DatasetIndex, DatasetError> {
    let meta = root.join("meta");
    let names = ListFile::read(meta.join("classes.txt"))?;
    let classes: Vec<ClassInfo> = rows(&names, CLASSES_HEADER)
        .map(|line| {
            let id = line.text.trim().to_string();
            ClassInfo {
                name: id.replace('_', " "),
                id,
            }
        })
        .collect();
    let labels: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(label, class)| (class.id.as_str(), label as u32))
        .collect();
    let verified_val = verified(&meta.join("verified_val.tsv"), root, &labels)?;
    let held: HashSet<&str> = verified_val.iter().map(|(s, _)| s.path.as_str()).collect();
    let list = ListFile::read(meta.join("imagelist.tsv"))?;
    let mut train = Vec::new();
    for line in rows(&list, IMAGELIST_HEADER) {
        let (path, _) = line.head_rest("path")?;
        if !held.contains(path) {
            train.push(sample(&line, root, path, &labels)?);
        }
    }
    let val = match val {
        true => verified_val
            .into_iter()
            .filter_map(|(sample, right)| right.then_some(sample))
            .collect(),
        false => Vec::new(),
    };
    let truth = verified(&meta.join("verified_train.tsv"), root, &labels)?
        .into_iter()
        .map(|(sample, right)| {
            let true_label = if right { i64::from(sample.label) } else { -1 };
            (sample.path, sample.label, true_label)
        })
        .collect();
    index_with_truth(classes, train, val, truth, work_dir)
}

/// The lines of a list below its header line `header` (when it has one).
fn rows<'a>(file: &'a ListFile, header: &'a str) -> impl Iterator<Item = Line<'a>> + 'a {
    file.lines().filter(move |line| {
        !(line.number == 1 && line.text.split_whitespace().eq(header.split_whitespace()))
    })
}

/// The image `path` (`<class>/<key>.jpg`) of `line`, labelled by its folder.
fn sample(
    line: &Line,
    root: &Path,
    path: &str,
    labels: &HashMap<&str, u32>,
) -> Result<DatasetSample, DatasetError> {
    let Some((class, _)) = path.split_once('/') else {
        return Err(line.error("path", format!("`{path}` is not `<class>/<key>.jpg`")));
    };
    let label = *labels.get(class).ok_or_else(|| {
        line.error(
            "path",
            format!("class `{class}` is not in meta/classes.txt"),
        )
    })?;
    Ok(DatasetSample {
        path: path.to_string(),
        file: line.file_in_root(root, "images", path)?,
        label,
        source: Source::Other,
        query: 0,
        text: super::TextRef::EMPTY,
    })
}

/// The images of a `verified_*.tsv` list, each with whether its label was verified right.
fn verified(
    path: &Path,
    root: &Path,
    labels: &HashMap<&str, u32>,
) -> Result<Vec<(DatasetSample, bool)>, DatasetError> {
    let file = ListFile::read(path.to_path_buf())?;
    rows(&file, VERIFIED_HEADER)
        .map(|line| {
            let (path, verdict) = line.pair::<String>("path", "verification_label")?;
            let right = match verdict.as_str() {
                "1" => true,
                "0" => false,
                other => {
                    return Err(line.error(
                        "verification_label",
                        format!("`{other}`: expected 1 (label right) or 0 (label wrong)"),
                    ))
                }
            };
            Ok((sample(&line, root, path, labels)?, right))
        })
        .collect()
}

/// The training images `keep` holds, as `meta/imagelist_clean.tsv` (header, then a path a
/// line, in the image list's order).
pub fn clean_lists(root: &Path, keep: &HashSet<&str>) -> Result<Vec<CleanList>, DatasetError> {
    let list = ListFile::read(root.join("meta").join("imagelist.tsv"))?;
    let mut text = format!("{IMAGELIST_HEADER}\n");
    for line in rows(&list, IMAGELIST_HEADER) {
        let (path, _) = line.head_rest("path")?;
        if keep.contains(path) {
            text.push_str(path);
            text.push('\n');
        }
    }
    Ok(vec![CleanList {
        name: "imagelist_clean.tsv",
        text,
    }])
}
