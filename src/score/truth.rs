//! The truth file of a dataset with known noise: a TSV with a header naming at least
//! `path`, `given_label` and `true_label` (-1 = out-of-set), matched to samples by path. A
//! sample is noisy when the file's two labels differ: both are in the file's own numbering,
//! so a run that keeps a subset of the classes (relabelled) reads the same file. Paths are
//! held as 64-bit BLAKE3 digests (9 bytes an entry instead of the path: WebVision lists
//! 2.4M; two of them share a digest with probability about 2.4M² / 2⁶⁵ ≈ 2·10⁻⁷).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use super::ScoreError;

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
    let file = std::fs::File::open(path).map_err(|s| ScoreError::io(path, s))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let bad = |line: usize, field: &str, message: String| ScoreError::BadField {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let first = lines
        .next()
        .transpose()
        .map_err(|s| ScoreError::io(path, s))?
        .unwrap_or_default();
    let header: Vec<&str> = first.split('\t').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| bad(1, name, format!("missing from the header {header:?}")))
    };
    let (path_col, given_col, true_col) = (
        column("path")?,
        column("given_label")?,
        column("true_label")?,
    );
    let mut truth = Truth::default();
    for (n, line) in lines.enumerate() {
        let line_no = n + 2;
        let line = line.map_err(|s| ScoreError::io(path, s))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let get = |col: usize, name: &str| {
            fields
                .get(col)
                .copied()
                .ok_or_else(|| bad(line_no, name, format!("missing ({} fields)", fields.len())))
        };
        let number = |col: usize, name: &str| -> Result<i64, ScoreError> {
            let raw = get(col, name)?;
            raw.parse()
                .map_err(|_| bad(line_no, name, format!("not an integer: {raw:?}")))
        };
        let given = number(given_col, "given_label")?;
        let true_label = number(true_col, "true_label")?;
        truth
            .noisy
            .insert(path_key(get(path_col, "path")?), given != true_label);
    }
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
