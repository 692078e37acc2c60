//! `signals.tsv`: every noise signal of every sample (the text score, the search standing,
//! the probe's image evidence: those the recipe weighs) beside the score they combine into,
//! written by the `score` stage when the recipe weighs more than the text, and read back by
//! the reports (captions, per-class AUCs) and `export`.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rules::{auc_low_is_positive, class_ranks, combine};
use super::ScoreError;
use crate::probe::ProbeRow;
use crate::recipe::params::SignalWeights;
use crate::tsv::{self, Header};

pub const SIGNALS_FILE: &str = "signals.tsv";

/// One kind of evidence about a sample's label; higher is more plausible for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    /// The page text's topic similarity to its class's mean.
    Text,
    /// The image's standing in its query's search results (1 the first result, 1/n the last).
    Search,
    /// The probe's out-of-fold probability of the given label.
    Confidence,
    /// That probability's margin over the best other class (shown, not weighed).
    Margin,
    /// The share of the sample's nearest neighbours in the probe's features with its label.
    Knn,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::Text,
        Signal::Search,
        Signal::Confidence,
        Signal::Margin,
        Signal::Knn,
    ];

    /// Its column in `signals.tsv` and its name in every AUC list.
    pub const fn name(self) -> &'static str {
        match self {
            Signal::Text => "text",
            Signal::Search => "search",
            Signal::Confidence => "confidence",
            Signal::Margin => "margin",
            Signal::Knn => "knn",
        }
    }

    /// What a caption calls it.
    fn caption(self) -> (&'static str, &'static str) {
        match self {
            Signal::Text => ("t", "text"),
            Signal::Search => ("s", "search standing"),
            Signal::Confidence => ("c", "confidence"),
            Signal::Margin => ("m", "margin"),
            Signal::Knn => ("k", "k-NN"),
        }
    }

    /// The signals `weights` weighs, in [`Signal::ALL`] order.
    pub fn weighed(weights: &SignalWeights) -> impl Iterator<Item = Signal> + '_ {
        Signal::ALL.into_iter().filter(|s| s.weight(weights) > 0.0)
    }

    fn weight(self, weights: &SignalWeights) -> f64 {
        match self {
            Signal::Text => weights.text,
            Signal::Search => weights.search,
            Signal::Confidence => weights.confidence,
            Signal::Margin => 0.0,
            Signal::Knn => weights.knn,
        }
    }

    fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The signals by name, in the order of `signals.tsv` and of every AUC list.
pub const SIGNAL_NAMES: [&str; 5] = [
    Signal::ALL[0].name(),
    Signal::ALL[1].name(),
    Signal::ALL[2].name(),
    Signal::ALL[3].name(),
    Signal::ALL[4].name(),
];

/// The names of [`SIGNAL_NAMES`] that `measured` holds, in that order: the AUC columns of a
/// table whose rows hold the AUC lists `measured`.
pub fn measured_names<'a>(
    measured: impl IntoIterator<Item = &'a [SignalAuc]>,
) -> Vec<&'static str> {
    let mut found = std::collections::BTreeSet::new();
    for list in measured {
        found.extend(list.iter().filter_map(|a| Signal::from_name(&a.signal)));
    }
    found.into_iter().map(Signal::name).collect()
}

/// How well one signal alone detects noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalAuc {
    pub signal: String,
    pub auc: Option<f64>,
}

/// Below this, a weighed signal's agreement with the others is worth a warning: on
/// imagenette-web every signal agrees at 0.24 or more; the search standing of a generated
/// dataset, whose lists keep no search order, at -0.04 to 0.05.
pub const LOW_AGREEMENT: f64 = 0.1;

/// One weighed signal's agreement with the others ([`Signals::agreement`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalAgreement {
    pub signal: String,
    pub agreement: f64,
}

/// Pearson's correlation; 0 where either side is constant.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (mean_a, mean_b) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - mean_a, y - mean_b);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    match aa > 0.0 && bb > 0.0 {
        true => ab / (aa * bb).sqrt(),
        false => 0.0,
    }
}

/// The signals measured for every sample, a column each in [`Signal::ALL`] order, in id
/// order; the text always.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    columns: Vec<(Signal, Vec<f64>)>,
}

impl Signals {
    /// The text score of every sample, with the search standing and the probe's rows where
    /// the recipe weighs them.
    pub fn new(
        text: Vec<f64>,
        search: Option<Vec<f64>>,
        probe: Option<&[ProbeRow]>,
    ) -> Result<Signals, ScoreError> {
        let n = text.len();
        let mut columns = vec![(Signal::Text, text)];
        if let Some(search) = search {
            check_rows(n, search.len(), "search standings")?;
            columns.push((Signal::Search, search));
        }
        if let Some(probe) = probe {
            check_rows(n, probe.len(), "probe rows")?;
            let column = |f: fn(&ProbeRow) -> f64| probe.iter().map(f).collect();
            columns.push((Signal::Confidence, column(|r| r.confidence)));
            columns.push((Signal::Margin, column(|r| r.margin)));
            columns.push((Signal::Knn, column(|r| r.knn)));
        }
        Ok(Signals { columns })
    }

    pub fn len(&self) -> usize {
        self.columns[0].1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column of `signal`, if measured.
    pub fn get(&self, signal: Signal) -> Option<&[f64]> {
        self.columns
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|(_, values)| values.as_slice())
    }

    /// The score: the weighted mean of the within-class ranks of the weighed signals.
    pub fn combined(&self, weights: &SignalWeights, labels: &[u32], classes: usize) -> Vec<f64> {
        let weighed: Vec<(&[f64], f64)> = self
            .columns
            .iter()
            .map(|(signal, values)| (values.as_slice(), signal.weight(weights)))
            .collect();
        combine(&weighed, labels, classes)
    }

    /// Each signal's within-class rank in [0, 1] (those a score may weigh), per sample: what a
    /// caption shows, on one scale for every signal.
    pub fn ranks(&self, labels: &[u32], classes: usize) -> SignalRanks {
        SignalRanks {
            columns: self
                .columns
                .iter()
                .filter(|(signal, _)| *signal != Signal::Margin)
                .map(|(signal, values)| (*signal, class_ranks(values, labels, classes)))
                .collect(),
        }
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
        self.columns
            .iter()
            .map(|(signal, values)| {
                let v: Vec<f64> = known.iter().map(|&i| values[i]).collect();
                SignalAuc {
                    signal: signal.name().to_string(),
                    auc: auc_low_is_positive(&v, &positive),
                }
            })
            .collect()
    }

    /// How well each weighed signal's within-class ranks agree with the mean of the other
    /// weighed signals' ranks (their correlation), when two or more are weighed. It needs no
    /// truth file: signals that each carry evidence about the same wrong labels agree, and
    /// one that carries none on this dataset (a list kept in no search order, say) agrees
    /// with nothing, near 0.
    pub fn agreement(
        &self,
        weights: &SignalWeights,
        labels: &[u32],
        classes: usize,
    ) -> Vec<SignalAgreement> {
        let ranks: Vec<(Signal, Vec<f64>)> = self
            .columns
            .iter()
            .filter(|(signal, _)| signal.weight(weights) > 0.0)
            .map(|(signal, values)| (*signal, class_ranks(values, labels, classes)))
            .collect();
        if ranks.len() < 2 {
            return Vec::new();
        }
        ranks
            .iter()
            .enumerate()
            .map(|(k, (signal, own))| {
                let others: Vec<f64> = (0..own.len())
                    .map(|i| {
                        let sum: f64 = ranks
                            .iter()
                            .enumerate()
                            .filter(|&(j, _)| j != k)
                            .map(|(_, (_, r))| r[i])
                            .sum();
                        sum / (ranks.len() - 1) as f64
                    })
                    .collect();
                SignalAgreement {
                    signal: signal.name().to_string(),
                    agreement: correlation(own, &others),
                }
            })
            .collect()
    }

    fn header(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(s, _)| s.name()).collect();
        format!("id\t{}\tscore", names.join("\t"))
    }

    /// Writes `signals.tsv` with the combined `score` as its last column. Values keep full
    /// precision (`{}` round-trips f64).
    pub fn save(&self, dir: &Path, score: &[f64]) -> Result<(), ScoreError> {
        let path = dir.join(SIGNALS_FILE);
        let io = |s| ScoreError::io(&path, s);
        let mut out = BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        writeln!(out, "{}", self.header()).map_err(io)?;
        for (i, score) in score.iter().enumerate() {
            write!(out, "{i}").map_err(io)?;
            for (_, values) in &self.columns {
                write!(out, "\t{}", values[i]).map_err(io)?;
            }
            writeln!(out, "\t{score}").map_err(io)?;
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
        let io = |s| ScoreError::io(&path, s);
        let mut first = String::new();
        std::io::BufReader::new(std::fs::File::open(&path).map_err(io)?)
            .read_line(&mut first)
            .map_err(io)?;
        let mut signals = Signals {
            columns: read_header(first.trim_end_matches(['\n', '\r']))
                .ok_or_else(|| {
                    ScoreError::from(tsv::TsvError::BadField {
                        path: path.clone(),
                        line: 1,
                        field: "header".into(),
                        message: format!(
                            "expected id, text, any of {:?} in that order, then score",
                            &SIGNAL_NAMES[1..]
                        ),
                    })
                })?
                .into_iter()
                .map(|s| (s, Vec::new()))
                .collect(),
        };
        let header = signals.header();
        tsv::for_each_row(&path, Header::Exactly(&header), |row| {
            tsv::expect_id(row, 0, signals.len())?;
            for (c, (_, values)) in signals.columns.iter_mut().enumerate() {
                values.push(row.parse(c + 1)?);
            }
            Ok(())
        })?;
        Ok(Some(signals))
    }
}

/// The signals a header names: `id`, `text`, others in [`Signal::ALL`] order, `score`.
fn read_header(line: &str) -> Option<Vec<Signal>> {
    let names: Vec<&str> = line.split('\t').collect();
    let ["id", inner @ .., "score"] = names.as_slice() else {
        return None;
    };
    let signals: Vec<Signal> = inner
        .iter()
        .map(|n| Signal::from_name(n))
        .collect::<Option<_>>()?;
    let ordered = signals.windows(2).all(|w| w[0] < w[1]);
    (signals.first() == Some(&Signal::Text) && ordered).then_some(signals)
}

fn check_rows(samples: usize, rows: usize, what: &str) -> Result<(), ScoreError> {
    match rows == samples {
        true => Ok(()),
        false => Err(ScoreError::Inputs(format!(
            "{samples} topic vectors, {rows} {what}"
        ))),
    }
}

/// Each weighable signal's within-class rank (0 the class's lowest, 1 its highest), per
/// sample, for captions.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRanks {
    columns: Vec<(Signal, Vec<f64>)>,
}

impl SignalRanks {
    /// A contact sheet's line for sample `i`: "t 41 s 80 c 12 k 30" (percent of the class
    /// below).
    pub fn caption(&self, i: usize) -> String {
        let parts: Vec<String> = self
            .columns
            .iter()
            .map(|(s, r)| format!("{} {}", s.caption().0, (r[i] * 100.0).round() as u32))
            .collect();
        parts.join(" ")
    }

    /// What the caption's letters mean.
    pub fn legend(&self) -> String {
        let (letters, names): (Vec<&str>, Vec<&str>) =
            self.columns.iter().map(|(s, _)| s.caption()).unzip();
        format!(
            "{}: % of the class below in {}",
            letters.join(", "),
            names.join(", ")
        )
    }

    /// The page's line for sample `i`: "text 0.41 · search standing 0.80 · …".
    pub fn described(&self, i: usize) -> String {
        let parts: Vec<String> = self
            .columns
            .iter()
            .map(|(s, r)| format!("{} {:.2}", s.caption().1, r[i]))
            .collect();
        parts.join(" · ")
    }
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
    fn save_then_load_gives_every_value_back_whichever_signals_were_measured() {
        let text = vec![0.1, -0.3, 1.0 / 3.0];
        let search = vec![1.0, 0.5, 1.0 / 3.0];
        let rows = probe(&[(0.9, 0.5, 1.0), (0.2, -0.6, 0.0), (0.45, 0.0, 0.3)]);
        for (search, probe) in [
            (Some(search.clone()), Some(rows.as_slice())),
            (Some(search.clone()), None),
            (None, Some(rows.as_slice())),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let signals = Signals::new(text.clone(), search, probe).unwrap();
            signals.save(dir.path(), &[0.5, 0.25, 0.75]).unwrap();
            assert_eq!(Signals::load(dir.path()).unwrap(), Some(signals));
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Signals::load(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn the_header_says_which_signals_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let signals = Signals::new(vec![0.5], Some(vec![1.0]), None).unwrap();
        signals.save(dir.path(), &[0.5]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SIGNALS_FILE)).unwrap();
        assert_eq!(text, "id\ttext\tsearch\tscore\n0\t0.5\t1\t0.5\n");
        for bad in [
            "id\tsearch\tscore",
            "id\ttext\tknn\tsearch\tscore",
            "id\ttext\tcolour\tscore",
        ] {
            std::fs::write(dir.path().join(SIGNALS_FILE), format!("{bad}\n")).unwrap();
            let err = Signals::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("signals.tsv:1: field header"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_value_is_named_with_its_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let header = "id\ttext\tconfidence\tmargin\tknn\tscore";
        std::fs::write(
            dir.path().join(SIGNALS_FILE),
            format!("{header}\n0\t0.1\t0.2\t0.3\t0.4\t0.5\n1\t0.1\t0.2\tx\t0.4\t0.5\n"),
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
        // Text ranks the noisy sample lowest; k-NN ranks it highest; search in the middle.
        let signals = Signals::new(
            vec![0.0, 1.0, 2.0, 3.0],
            Some(vec![0.5, 0.0, 1.0, 1.0]),
            Some(&probe(&[
                (0.1, 0.0, 1.0),
                (0.2, 0.0, 0.0),
                (0.3, 0.0, 0.5),
                (0.4, 0.0, 0.5),
            ])),
        )
        .unwrap();
        let noisy = [Some(true), Some(false), Some(false), None];
        let aucs = signals.aucs(&noisy, &[0, 1, 2, 3]);
        let names: Vec<&str> = aucs.iter().map(|a| a.signal.as_str()).collect();
        assert_eq!(names, SIGNAL_NAMES);
        let auc = |name: &str| aucs.iter().find(|a| a.signal == name).unwrap().auc;
        assert_eq!(auc("text"), Some(1.0));
        assert_eq!(auc("knn"), Some(0.0));
        assert_eq!(auc("margin"), Some(0.5));
        assert_eq!(auc("search"), Some(0.5));
        // Among samples 1 and 2 alone nobody is noisy: undefined.
        assert_eq!(signals.aucs(&noisy, &[1, 2])[0].auc, None);
        // Tables show the columns some row measured.
        let text_and_search = Signals::new(vec![0.0, 1.0], Some(vec![1.0, 0.5]), None).unwrap();
        let measured = text_and_search.aucs(&[Some(true), Some(false)], &[0, 1]);
        assert_eq!(
            measured_names([measured.as_slice(), &[]]),
            ["text", "search"]
        );
    }

    #[test]
    fn ranks_are_within_each_class_and_captions_name_what_was_measured() {
        let signals = Signals::new(
            vec![5.0, 1.0, 100.0, 7.0],
            None,
            Some(&probe(&[
                (0.5, 0.0, 0.5),
                (0.1, 0.0, 0.5),
                (0.9, 0.0, 0.1),
                (0.2, 0.0, 0.9),
            ])),
        )
        .unwrap();
        let ranks = signals.ranks(&[0, 0, 1, 1], 2);
        assert_eq!(ranks.caption(0), "t 100 c 100 k 50");
        assert_eq!(ranks.caption(2), "t 100 c 100 k 0");
        assert_eq!(ranks.caption(3), "t 0 c 0 k 100");
        assert_eq!(
            ranks.legend(),
            "t, c, k: % of the class below in text, confidence, k-NN"
        );
        let with_search = Signals::new(vec![1.0, 2.0], Some(vec![1.0, 0.5]), None).unwrap();
        let ranks = with_search.ranks(&[0, 0], 1);
        assert_eq!(ranks.caption(0), "t 0 s 100");
        assert_eq!(ranks.described(1), "text 1.00 · search standing 0.00");
    }

    #[test]
    fn a_signal_that_carries_no_evidence_agrees_with_none_of_the_others() {
        // Two signals that both see the truth (with their own noise), one that sees nothing.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 2_000;
        let labels: Vec<u32> = (0..n).map(|i| (i % 4) as u32).collect();
        let truth: Vec<f64> = (0..n).map(|_| f64::from(rng.random_bool(0.7))).collect();
        let mut seen = || -> Vec<f64> {
            truth
                .iter()
                .map(|t| t + rng.random_range(-0.8..0.8))
                .collect()
        };
        let (text, search) = (seen(), seen());
        let blind: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let probe: Vec<ProbeRow> = blind
            .iter()
            .enumerate()
            .map(|(i, &b)| ProbeRow {
                id: i as u64,
                fold: 0,
                confidence: b,
                margin: 0.0,
                knn: 0.0,
            })
            .collect();
        let signals = Signals::new(text, Some(search), Some(&probe)).unwrap();
        let weights = SignalWeights {
            text: 1.0,
            search: 1.0,
            confidence: 1.0,
            knn: 0.0,
        };
        let agreement = signals.agreement(&weights, &labels, 4);
        let of = |name: &str| {
            agreement
                .iter()
                .find(|a| a.signal == name)
                .unwrap()
                .agreement
        };
        assert_eq!(agreement.len(), 3, "the weighed signals: {agreement:?}");
        assert!(
            of("text") > LOW_AGREEMENT && of("search") > LOW_AGREEMENT,
            "{agreement:?}"
        );
        assert!(of("confidence").abs() < LOW_AGREEMENT, "{agreement:?}");
        // One weighed signal has nothing to agree with.
        assert!(signals
            .agreement(&SignalWeights::TEXT_ONLY, &labels, 4)
            .is_empty());
    }

    #[test]
    fn the_combined_score_weighs_the_search_standing_like_any_signal() {
        // Text and search disagree on samples 0 and 1; the heavier one decides.
        let signals = Signals::new(vec![1.0, 2.0], Some(vec![1.0, 0.5]), None).unwrap();
        let weights = |text, search| SignalWeights {
            text,
            search,
            confidence: 0.0,
            knn: 0.0,
        };
        let score = signals.combined(&weights(1.0, 3.0), &[0, 0], 1);
        assert!(score[0] > score[1], "{score:?}");
        let score = signals.combined(&weights(3.0, 1.0), &[0, 0], 1);
        assert!(score[0] < score[1], "{score:?}");
    }
}
