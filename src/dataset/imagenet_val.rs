//! An ImageNet-style validation set (ILSVRC2012 val) as a second validation set, mapped to a
//! dataset's classes by class id (WordNet id).
//!
//! In: the images' root and either a label file (`<image path below root> <wnid>` per line:
//! the ILSVRC2012 labels as wnids) or, without one, one folder per class id
//! (`root/<wnid>/*.JPEG`, as `valprep.sh` arranges ILSVRC2012 val), and the classes a run
//! keeps. Out: one validation sample per image of a kept class, labelled as the run labels
//! that class; images of other classes are passed over.

use std::collections::HashMap;
use std::path::Path;

use super::lines::ListFile;
use super::{ClassInfo, DatasetError, DatasetSample};
use crate::sample::Source;

/// The images of `classes` under `root`, listed by `labels` or found in class folders.
pub fn read(
    root: &Path,
    labels: Option<&Path>,
    classes: &[ClassInfo],
) -> Result<Vec<DatasetSample>, DatasetError> {
    let label_of: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i as u32))
        .collect();
    let sample = |path: String, file, label| DatasetSample {
        path,
        file,
        label,
        source: Source::Other,
        query: 0,
        text: super::TextRef::EMPTY,
    };
    let mut samples = Vec::new();
    match labels {
        Some(list) => {
            let list = ListFile::read(list.to_path_buf())?;
            for line in list.lines() {
                let (name, wnid) = line.head_rest("path")?;
                if wnid.is_empty() || wnid.contains(char::is_whitespace) {
                    return Err(line.error(
                        "class id",
                        format!("expected `<image> <class id>`, got `{}`", line.text.trim()),
                    ));
                }
                if let Some(&label) = label_of.get(wnid) {
                    let file = line.file_in_root(root, "", name)?;
                    samples.push(sample(name.to_string(), file, label));
                }
            }
        }
        None => {
            for (label, class) in classes.iter().enumerate() {
                let dir = root.join(&class.id);
                if !dir.is_dir() {
                    continue;
                }
                let mut files: Vec<_> = std::fs::read_dir(&dir)
                    .map_err(DatasetError::io(&dir))?
                    .map(|e| e.map(|e| e.path()).map_err(DatasetError::io(&dir)))
                    .collect::<Result<_, _>>()?;
                files.retain(|f| {
                    f.is_file()
                        && !f
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                });
                files.sort();
                for file in files {
                    let name = file.file_name().unwrap_or_default().to_string_lossy();
                    let path = format!("{}/{name}", class.id);
                    samples.push(sample(path, file, label as u32));
                }
            }
        }
    }
    Ok(samples)
}
