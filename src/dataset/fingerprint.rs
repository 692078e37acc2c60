//! Dataset fingerprints: what the ingest stage's cache key holds besides its settings, so
//! that a dataset edited, rebuilt in place or swapped behind the same path is never served
//! from the cache.
//!
//! In: a dataset root (a folder, or a single `.jsonl` file). Out: a [`Fingerprint`]: the
//! content hash of every non-image file (file lists, metadata, class lists, sidecar text),
//! and per folder one hash of its images' names, sizes and modification times (as make and
//! cargo judge freshness: reading 2.4M images to hash them would cost as much as ingesting
//! them). Folders are scanned in parallel; hidden files (`.DS_Store`, editor swap files) are
//! left out. Symlinked folders inside the root are followed: users link datasets from
//! other disks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::DatasetError;
use crate::digest;

/// File extensions taken for images (compared case-insensitively).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// Deeper than any dataset layout; stops a symlink loop.
const MAX_DEPTH: usize = 32;

/// What a dataset root holds, by path relative to the root (`/`-separated; `.` for a root
/// that is itself a file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Non-image file → the first 16 hex digits of its BLAKE3 content hash.
    pub files: BTreeMap<String, String>,
    /// Folder holding images → `<count>:<hash of its images' names, sizes and mtimes>`.
    pub image_folders: BTreeMap<String, String>,
}

impl Fingerprint {
    pub fn images(&self) -> u64 {
        self.image_folders
            .values()
            .filter_map(|v| v.split_once(':')?.0.parse::<u64>().ok())
            .sum()
    }
}

/// The fingerprint of the dataset at `root`.
pub fn fingerprint(root: &Path) -> Result<Fingerprint, DatasetError> {
    let meta = std::fs::metadata(root).map_err(DatasetError::io(root))?;
    let mut out = Fingerprint::default();
    if meta.is_file() {
        out.files.insert(".".into(), content_hash(root)?);
        return Ok(out);
    }
    scan(root, "", 0, &mut out)?;
    Ok(out)
}

fn scan(dir: &Path, rel: &str, depth: usize, out: &mut Fingerprint) -> Result<(), DatasetError> {
    if depth > MAX_DEPTH {
        return Err(DatasetError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "folders nest deeper than {MAX_DEPTH} levels (a symlink loop?)"
            )),
        });
    }
    let io = DatasetError::io(dir);
    let mut folders = Vec::new();
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(DatasetError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `fs::metadata` follows symlinks, so a linked folder is scanned like a folder.
        let meta = std::fs::metadata(&path).map_err(DatasetError::io(&path))?;
        if meta.is_dir() {
            folders.push(name);
        } else if is_image(&name) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            images.push(format!("{name}\t{}\t{mtime}\n", meta.len()));
        } else {
            texts.push(name);
        }
    }
    let join = |name: &str| match rel {
        "" => name.to_string(),
        _ => format!("{rel}/{name}"),
    };
    if !images.is_empty() {
        images.sort_unstable();
        let hash = digest::short_hash(images.concat().as_bytes());
        out.image_folders
            .insert(rel_or_dot(rel), format!("{}:{hash}", images.len()));
    }
    let hashed = texts
        .par_iter()
        .map(|name| Ok((join(name), content_hash(&dir.join(name))?)))
        .collect::<Result<Vec<_>, DatasetError>>()?;
    out.files.extend(hashed);
    let below = folders
        .par_iter()
        .map(|name| {
            let mut sub = Fingerprint::default();
            scan(&dir.join(name), &join(name), depth + 1, &mut sub).map(|()| sub)
        })
        .collect::<Result<Vec<_>, DatasetError>>()?;
    for sub in below {
        out.files.extend(sub.files);
        out.image_folders.extend(sub.image_folders);
    }
    Ok(())
}

fn rel_or_dot(rel: &str) -> String {
    match rel {
        "" => ".".into(),
        _ => rel.into(),
    }
}

fn is_image(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

fn content_hash(path: &Path) -> Result<String, DatasetError> {
    digest::file_hash(path).map_err(DatasetError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn text_files_by_content_images_by_size_and_time() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "info/list.txt", b"a/1.jpg 0\n");
        write(root, "a/1.jpg", b"jpeg");
        write(root, "a/2.JPG", b"jpeg2");
        write(root, ".DS_Store", b"x");
        let first = fingerprint(root).unwrap();
        assert_eq!(first.files.keys().collect::<Vec<_>>(), ["info/list.txt"]);
        assert_eq!(first.image_folders.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(first.images(), 2);
        assert_eq!(fingerprint(root).unwrap(), first, "stable");

        // Same size, other content: a list is judged by content.
        write(root, "info/list.txt", b"a/1.jpg 1\n");
        let relabelled = fingerprint(root).unwrap();
        assert_ne!(relabelled.files, first.files);
        assert_eq!(relabelled.image_folders, first.image_folders);

        // An image removed, then restored: its folder's hash changes each time.
        std::fs::remove_file(root.join("a/1.jpg")).unwrap();
        let removed = fingerprint(root).unwrap();
        assert_eq!(removed.images(), 1);
        write(root, "a/1.jpg", b"jpeg");
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("a/1.jpg"))
            .unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1))
            .unwrap();
        assert_ne!(
            fingerprint(root).unwrap().image_folders,
            removed.image_folders
        );
        // Hidden files do not count.
        write(root, ".swp", b"y");
        assert_eq!(fingerprint(root).unwrap().files, relabelled.files);
    }

    #[test]
    fn a_single_file_root_is_hashed_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        let f = fingerprint(&file).unwrap();
        assert_eq!(f.files.keys().collect::<Vec<_>>(), ["."]);
        assert!(f.image_folders.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_folders_are_followed_and_loops_end_in_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("elsewhere");
        write(&data, "1.jpg", b"j");
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&data, root.join("linked")).unwrap();
        let f = fingerprint(&root).unwrap();
        assert_eq!(f.image_folders.keys().collect::<Vec<_>>(), ["linked"]);
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        let err = fingerprint(&root).unwrap_err().to_string();
        assert!(err.contains("symlink loop"), "{err}");
    }
}
