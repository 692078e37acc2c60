//! The truth file of a dataset with known noise: a TSV with a header naming at least
//! `path`, `given_label` and `true_label` (-1 = out-of-set), matched to samples by path. A
//! sample is noisy when the file's two labels differ: both are in the file's own numbering,
//! so a run that keeps a subset of the classes (relabelled) reads the same file.

use std::collections::HashMap;
use std::path::Path;

use super::ScoreError;

/// Whether each listed sample is noisy (given label ≠ true label), by path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Truth {
    noisy: HashMap<String, bool>,
}

impl Truth {
    pub fn len(&self) -> usize {
        self.noisy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.noisy.is_empty()
    }

    /// For each sample: `Some(true)` when its given label differs from its true one, `None`
    /// when the truth file does not list its path.
    pub fn noisy_by_sample(&self, paths: &[String]) -> Vec<Option<bool>> {
        paths
            .iter()
            .map(|path| {
                let key = path.strip_prefix("./").unwrap_or(path);
                self.noisy.get(key).copied()
            })
            .collect()
    }
}

pub fn read_truth(path: &Path) -> Result<Truth, ScoreError> {
    let text = std::fs::read_to_string(path).map_err(|s| ScoreError::io(path, s))?;
    let mut lines = text.lines();
    let bad = |line: usize, field: &str, message: String| ScoreError::BadField {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
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
            .insert(get(path_col, "path")?.to_string(), given != true_label);
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
