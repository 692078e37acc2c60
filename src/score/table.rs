//! `scores.tsv`: one row per training sample (id, path, label, score, λ, kept), written by
//! the `score` stage and read back by training.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::{SamplePaths, ScoreError};
use crate::tsv::{self, Header};

pub const SCORES_FILE: &str = "scores.tsv";
const HEADER: &str = "id\tpath\tlabel\tscore\tlambda\tkept";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRow {
    pub id: u64,
    pub label: u32,
    pub score: f64,
    /// Loss weight in [0, 1].
    pub lambda: f64,
    pub kept: bool,
}

/// What training reads back: per sample id (0..N) → label, score, λ, kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreTable {
    rows: Vec<ScoreRow>,
}

impl ScoreTable {
    /// Rows must be in id order 0..N.
    pub fn new(rows: Vec<ScoreRow>) -> ScoreTable {
        debug_assert!(rows.iter().enumerate().all(|(i, r)| r.id == i as u64));
        ScoreTable { rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&ScoreRow> {
        self.rows.get(id as usize)
    }

    pub fn rows(&self) -> &[ScoreRow] {
        &self.rows
    }

    /// Ids of the samples the cleaning kept.
    pub fn kept_ids(&self) -> Vec<u64> {
        self.rows.iter().filter(|r| r.kept).map(|r| r.id).collect()
    }

    /// Writes `scores.tsv`, each row as its path comes from `paths` (one pass, in id order).
    pub fn save(&self, dir: &Path, paths: &dyn SamplePaths) -> Result<(), ScoreError> {
        let path = dir.join(SCORES_FILE);
        let io = |s| ScoreError::io(&path, s);
        let mut out = BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        let mut failure = None;
        writeln!(out, "{HEADER}").map_err(io)?;
        let mut written = 0;
        paths.for_each_path(&mut |id, sample_path| {
            let Some(row) = self.rows.get(id as usize).filter(|_| failure.is_none()) else {
                return;
            };
            written += 1;
            // Scores keep full precision (`{}` round-trips f64) so reloading changes nothing.
            let line = writeln!(
                out,
                "{}\t{sample_path}\t{}\t{}\t{}\t{}",
                row.id, row.label, row.score, row.lambda, row.kept as u8
            );
            failure = line.err();
        })?;
        if let Some(e) = failure {
            return Err(io(e));
        }
        if written != self.rows.len() {
            return Err(ScoreError::Inputs(format!(
                "{} scores, {written} paths",
                self.rows.len()
            )));
        }
        out.flush().map_err(io)
    }

    pub fn load(dir: &Path) -> Result<ScoreTable, ScoreError> {
        let mut rows = Vec::new();
        tsv::for_each_row(&dir.join(SCORES_FILE), Header::Exactly(HEADER), |row| {
            tsv::expect_id(row, 0, rows.len())?;
            let lambda: f64 = row.parse(4)?;
            if !(0.0..=1.0).contains(&lambda) {
                return Err(row.error(4, format!("{lambda} is outside [0, 1]")));
            }
            rows.push(ScoreRow {
                id: rows.len() as u64,
                label: row.parse(2)?,
                score: row.parse(3)?,
                lambda,
                kept: match row.raw(5)? {
                    "1" => true,
                    "0" => false,
                    other => return Err(row.error(5, format!("expected 0 or 1, found {other:?}"))),
                },
            });
            Ok(())
        })?;
        Ok(ScoreTable::new(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            ScoreRow {
                id: 0,
                label: 2,
                score: 0.123456789012345,
                lambda: 1.0,
                kept: true,
            },
            ScoreRow {
                id: 1,
                label: 0,
                score: 1e-9,
                lambda: 0.25,
                kept: false,
            },
        ];
        let table = ScoreTable::new(rows);
        table
            .save(dir.path(), &vec!["a.jpg".to_string(), "b.jpg".to_string()])
            .unwrap();
        assert_eq!(ScoreTable::load(dir.path()).unwrap(), table);
        assert_eq!(table.kept_ids(), [0]);

        let path = dir.path().join(SCORES_FILE);
        std::fs::write(&path, format!("{HEADER}\n0\ta.jpg\t2\t0.5\t1.5\t1\n")).unwrap();
        let err = ScoreTable::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("scores.tsv:2: field lambda: 1.5 is outside [0, 1]"),
            "{err}"
        );
        std::fs::write(&path, format!("{HEADER}\n0\ta.jpg\tx\t0.5\t1\t1\n")).unwrap();
        let err = ScoreTable::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("scores.tsv:2: field label: cannot parse \"x\""),
            "{err}"
        );
    }
}
