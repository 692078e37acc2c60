//! The truth file of a dataset with known noise: a TSV with a header naming at least
//! `path`, `given_label` and `true_label` (-1 = out-of-set), matched to samples by path. A
//! sample is noisy when the file's two labels differ: both are in the file's own numbering,
//! so a run that keeps a subset of the classes (relabelled) reads the same file. Paths are
//! held as 64-bit BLAKE3 digests (9 bytes an entry instead of the path: WebVision lists
//! 2.4M; two of them share a digest with probability about 2.4M² / 2⁶⁵ ≈ 2·10⁻⁷).

use std::collections::HashMap;
use std::path::Path;

use super::ScoreError;
use crate::tsv::{self, Header, TsvError};

/// Whether each listed sample is noisy (given label ≠ true label), by path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Truth {
    noisy: HashMap<u64, bool>,
}

fn path_key(path: &str) -> u64 {
    let path = path.strip_prefix("./").unwrap_or(path);
    let hash = blake3::hash(path.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Truth {
    pub fn len(&self) -> usize {
        self.noisy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.noisy.is_empty()
    }

    /// `Some(true)` when the sample at `path` has a given label that differs from its true
    /// one, `None` when the truth file does not list its path.
    pub fn noisy(&self, path: &str) -> Option<bool> {
        self.noisy.get(&path_key(path)).copied()
    }

    /// [`Truth::noisy`] of each path.
    pub fn noisy_by_sample(&self, paths: &[String]) -> Vec<Option<bool>> {
        paths.iter().map(|path| self.noisy(path)).collect()
    }
}

pub fn read_truth(path: &Path) -> Result<Truth, ScoreError> {
    let mut truth = Truth::default();
    let columns = ["path", "given_label", "true_label"];
    tsv::for_each_row(path, Header::Naming(&columns), |row| {
        let label = |i: usize| -> Result<i64, TsvError> {
            let raw = row.raw(i)?;
            raw.parse()
                .map_err(|_| row.error(i, format!("not an integer: {raw:?}")))
        };
        let noisy = label(1)? != label(2)?;
        truth.noisy.insert(path_key(row.raw(0)?), noisy);
        Ok(())
    })?;
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_matches_by_path_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.tsv");
        std::fs::write(
            &path,
            "path\tgiven_label\ttrue_label\tnoise_kind\na/1.jpg\t0\t0\tclean\na/2.jpg\t0\t3\tcross\nb/3.jpg\t1\t-1\tood\n",
        )
        .unwrap();
        let truth = read_truth(&path).unwrap();
        let paths: Vec<String> = ["a/1.jpg", "./a/2.jpg", "b/3.jpg", "c/4.jpg"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            truth.noisy_by_sample(&paths),
            [Some(false), Some(true), Some(true), None]
        );

        std::fs::write(&path, "path\tgiven_label\ttrue_label\na/1.jpg\t0\tseven\n").unwrap();
        let err = read_truth(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("truth.tsv:2: field true_label: not an integer: \"seven\""),
            "{err}"
        );
        std::fs::write(&path, "path\tlabel\n").unwrap();
        let err = read_truth(&path).unwrap_err().to_string();
        assert!(
            err.contains("truth.tsv:1: field given_label: missing from the header"),
            "{err}"
        );
    }
}
