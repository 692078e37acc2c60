//! `signals.tsv`: every noise signal of every sample (the text score and the probe's image
//! evidence) beside the score they combine into, written by the `score` stage when the recipe
//! weighs image signals, and read back by the reports (captions, per-class AUCs).

use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rules::{auc_low_is_positive, class_ranks, combine};
use super::ScoreError;
use crate::probe::ProbeRow;
use crate::recipe::params::SignalWeights;
use crate::tsv::{self, Header};

pub const SIGNALS_FILE: &str = "signals.tsv";
const HEADER: &str = "id\ttext\tconfidence\tmargin\tknn\tscore";

/// The signals by name, in the order of `signals.tsv` and of every AUC list.
pub const SIGNAL_NAMES: [&str; 4] = ["text", "confidence", "margin", "knn"];

/// How well one signal alone detects noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalAuc {
    pub signal: String,
    pub auc: Option<f64>,
}

/// Every signal of every sample, a column each, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    pub text: Vec<f64>,
    pub confidence: Vec<f64>,
    pub margin: Vec<f64>,
    pub knn: Vec<f64>,
}

impl Signals {
    pub fn new(text: Vec<f64>, probe: &[ProbeRow]) -> Result<Signals, ScoreError> {
        if probe.len() != text.len() {
            return Err(ScoreError::Inputs(format!(
                "{} topic vectors, {} probe rows",
                text.len(),
                probe.len()
            )));
        }
        let column = |f: fn(&ProbeRow) -> f64| probe.iter().map(f).collect();
        Ok(Signals {
            text,
            confidence: column(|r| r.confidence),
            margin: column(|r| r.margin),
            knn: column(|r| r.knn),
        })
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn columns(&self) -> [&[f64]; 4] {
        [&self.text, &self.confidence, &self.margin, &self.knn]
    }

    /// The score: the weighted mean of the within-class ranks of the weighed signals.
    pub fn combined(&self, weights: &SignalWeights, labels: &[u32], classes: usize) -> Vec<f64> {
        combine(
            &[
                (&self.text, weights.text),
                (&self.confidence, weights.confidence),
                (&self.knn, weights.knn),
            ],
            labels,
            classes,
        )
    }

    /// Each signal's within-class rank in [0, 1] (text, confidence, k-NN: what the score
    /// combines), per sample: what a caption shows, on one scale for every signal.
    pub fn ranks(&self, labels: &[u32], classes: usize) -> Vec<[f64; 3]> {
        let [text, confidence, knn] =
            [&self.text, &self.confidence, &self.knn].map(|c| class_ranks(c, labels, classes));
        (0..self.len())
            .map(|i| [text[i], confidence[i], knn[i]])
            .collect()
    }

    /// Each signal's AUC at detecting noise among the samples `among` (those the truth file
    /// knows).
    pub fn aucs(&self, noisy: &[Option<bool>], among: &[usize]) -> Vec<SignalAuc> {
        let known: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| noisy[i].is_some())
            .collect();
        let positive: Vec<bool> = known.iter().map(|&i| noisy[i] == Some(true)).collect();
        SIGNAL_NAMES
            .iter()
            .zip(self.columns())
            .map(|(name, values)| {
                let v: Vec<f64> = known.iter().map(|&i| values[i]).collect();
                SignalAuc {
                    signal: name.to_string(),
                    auc: auc_low_is_positive(&v, &positive),
                }
            })
            .collect()
    }

    /// Writes `signals.tsv` with the combined `score` as its last column. Values keep full
    /// precision (`{}` round-trips f64).
    pub fn save(&self, dir: &Path, score: &[f64]) -> Result<(), ScoreError> {
        let path = dir.join(SIGNALS_FILE);
        let io = |s| ScoreError::io(&path, s);
        let mut out = BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        writeln!(out, "{HEADER}").map_err(io)?;
        for (i, score) in score.iter().enumerate() {
            writeln!(
                out,
                "{i}\t{}\t{}\t{}\t{}\t{score}",
                self.text[i], self.confidence[i], self.margin[i], self.knn[i]
            )
            .map_err(io)?;
        }
        out.flush().map_err(io)
    }

    /// Reads a score stage's `signals.tsv`; `None` where the stage weighed text alone and
    /// wrote none.
    pub fn load(dir: &Path) -> Result<Option<Signals>, ScoreError> {
        let path = dir.join(SIGNALS_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let mut signals = Signals {
            text: Vec::new(),
            confidence: Vec::new(),
            margin: Vec::new(),
            knn: Vec::new(),
        };
        tsv::for_each_row(&path, Header::Exactly(HEADER), |row| {
            tsv::expect_id(row, 0, signals.len())?;
            signals.text.push(row.parse(1)?);
            signals.confidence.push(row.parse(2)?);
            signals.margin.push(row.parse(3)?);
            signals.knn.push(row.parse(4)?);
            Ok(())
        })?;
        Ok(Some(signals))
    }
}

/// A caption's line of signal ranks: "t 41 c 12 k 30" (percent of the class below).
pub fn rank_caption(ranks: [f64; 3]) -> String {
    let [t, c, k] = ranks.map(|r| (r * 100.0).round() as u32);
    format!("t {t} c {c} k {k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(values: &[(f64, f64, f64)]) -> Vec<ProbeRow> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(confidence, margin, knn))| ProbeRow {
                id: i as u64,
                fold: i % 2,
                confidence,
                margin,
                knn,
            })
            .collect()
    }

    #[test]
    fn save_then_load_gives_every_value_back() {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::new(
            vec![0.1, -0.3, 1.0 / 3.0],
            &probe(&[(0.9, 0.5, 1.0), (0.2, -0.6, 0.0), (0.45, 0.0, 0.3)]),
        )
        .unwrap();
        signals.save(dir.path(), &[0.5, 0.25, 0.75]).unwrap();
        assert_eq!(Signals::load(dir.path()).unwrap(), Some(signals));
        assert_eq!(Signals::load(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_bad_value_is_named_with_its_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SIGNALS_FILE),
            format!("{HEADER}\n0\t0.1\t0.2\t0.3\t0.4\t0.5\n1\t0.1\t0.2\tx\t0.4\t0.5\n"),
        )
        .unwrap();
        let err = Signals::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("signals.tsv:3: field margin: cannot parse \"x\""),
            "{err}"
        );
    }

    #[test]
    fn per_signal_aucs_read_only_the_samples_asked_for() {
        // Text ranks the noisy sample lowest; k-NN ranks it highest.
        let signals = Signals::new(
            vec![0.0, 1.0, 2.0, 3.0],
            &probe(&[
                (0.1, 0.0, 1.0),
                (0.2, 0.0, 0.0),
                (0.3, 0.0, 0.5),
                (0.4, 0.0, 0.5),
            ]),
        )
        .unwrap();
        let noisy = [Some(true), Some(false), Some(false), None];
        let aucs = signals.aucs(&noisy, &[0, 1, 2, 3]);
        let auc = |name: &str| aucs.iter().find(|a| a.signal == name).unwrap().auc;
        assert_eq!(auc("text"), Some(1.0));
        assert_eq!(auc("knn"), Some(0.0));
        assert_eq!(auc("margin"), Some(0.5));
        // Among samples 1 and 2 alone nobody is noisy: undefined.
        assert_eq!(signals.aucs(&noisy, &[1, 2])[0].auc, None);
    }

    #[test]
    fn ranks_are_within_each_class() {
        let signals = Signals::new(
            vec![5.0, 1.0, 100.0, 7.0],
            &probe(&[
                (0.5, 0.0, 0.5),
                (0.1, 0.0, 0.5),
                (0.9, 0.0, 0.1),
                (0.2, 0.0, 0.9),
            ]),
        )
        .unwrap();
        let ranks = signals.ranks(&[0, 0, 1, 1], 2);
        assert_eq!(ranks[0], [1.0, 1.0, 0.5]);
        assert_eq!(ranks[2], [1.0, 1.0, 0.0]);
        assert_eq!(rank_caption(ranks[3]), "t 0 c 0 k 100");
    }
}
