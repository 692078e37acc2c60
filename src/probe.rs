//! Image evidence of label noise: the `probe` stage. In: every training sample's given
//! label, and a way to train a network on some samples and predict others (the stage glue
//! does it with the recipe's network, optimiser and augmentation). Out, in the stage folder:
//! `probe.tsv` (id, fold, confidence, margin, knn: one row per training sample, in id order,
//! read back by the score stage through [`ProbeTable`]), `summary.json` (per fold: its
//! samples and how often its network's top-1 is the given label) and `fold-<f>/` (that
//! fold's training run and its rows, kept so that a killed stage resumes where it stopped).
//!
//! The samples of each class are dealt over `folds` folds in a seeded order; fold f's network
//! trains on every other fold and predicts fold f, so no sample is judged by a network that
//! trained on it (confident learning's out-of-sample probabilities). Per sample:
//! - confidence: the predicted probability of its given label;
//! - margin: that probability less the largest other one;
//! - knn: the share of its `neighbours` nearest samples of the same fold (cosine, in the
//!   network's pooled features) that carry its label. Neighbours come from the same fold:
//!   another fold's network gives features that are not comparable, and a network's
//!   features of samples it trained on would group memorised labels together.
//!
//! The neighbour search is exact, quadratic in a fold's size; folds above
//! [`MAX_NEIGHBOUR_FOLD`] samples are refused rather than left to run for hours.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::recipe::ProbeParams;
use crate::tsv::{self, Header, TsvError};

pub const PROBE_FILE: &str = "probe.tsv";
pub const SUMMARY_FILE: &str = "summary.json";
/// A finished fold's rows, inside its folder.
const FOLD_ROWS_FILE: &str = "rows.tsv";
const HEADER: &str = "id\tfold\tconfidence\tmargin\tknn";
/// Largest fold the exact neighbour search takes (its cost grows with the square).
pub const MAX_NEIGHBOUR_FOLD: usize = 200_000;
/// Mixed into the training seed for the deal into folds, so that it is not the stream the
/// loader draws its permutations from.
const FOLD_SALT: u64 = 0x70_72_6f_62_65;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tsv(#[from] TsvError),
    #[error("probe fold {fold}: {source}")]
    Fold {
        fold: usize,
        #[source]
        source: BoxError,
    },
    #[error(
        "probe fold {fold} holds {samples} samples: its exact neighbour search (quadratic) \
         takes at most {MAX_NEIGHBOUR_FOLD}; raise probe.folds"
    )]
    FoldTooLarge { fold: usize, samples: usize },
    #[error("probe fold {fold}: {message}")]
    Output { fold: usize, message: String },
}

impl ProbeError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProbeError + '_ {
        move |source| ProbeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a fold's network says about the samples it predicts, in the order asked.
pub struct FoldOutput {
    /// One row of `classes` probabilities per sample.
    pub probabilities: Vec<f32>,
    /// One row of `features.len() / samples` pooled features per sample.
    pub features: Vec<f32>,
}

/// Trains fold `fold`'s network on `train` (id, label) into the folder it is given, and
/// returns its outputs for `predict`.
pub type FoldModel<'a> =
    &'a dyn Fn(usize, &[(u64, u32)], &[u64], &Path) -> Result<FoldOutput, BoxError>;

/// One training sample's image evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRow {
    pub id: u64,
    pub fold: usize,
    pub confidence: f64,
    pub margin: f64,
    pub knn: f64,
}

/// How one fold's network did on the samples it held out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldSummary {
    pub fold: usize,
    pub samples: usize,
    /// Share of its held-out samples whose top-1 prediction is the given label.
    pub agrees_with_label: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub folds: Vec<FoldSummary>,
    pub neighbours: usize,
}

/// The fold of every sample: each class's samples, in a seeded order, dealt in turn over the
/// folds (each class starting where the previous one stopped), so that every fold holds
/// each class's share and fold sizes differ by at most one.
pub fn deal_folds(labels: &[u32], classes: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut members = vec![Vec::new(); classes];
    for (id, &label) in labels.iter().enumerate() {
        members[label as usize].push(id);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ FOLD_SALT);
    let mut fold_of = vec![0; labels.len()];
    let mut next = 0;
    for class in &mut members {
        class.shuffle(&mut rng);
        for &id in class.iter() {
            fold_of[id] = next;
            next = (next + 1) % folds;
        }
    }
    fold_of
}

/// The signals of the samples `ids` (given labels `labels`) from their fold's outputs.
pub fn fold_signals(
    fold: usize,
    ids: &[u64],
    labels: &[u32],
    output: &FoldOutput,
    neighbours: usize,
) -> Result<Vec<ProbeRow>, ProbeError> {
    let n = ids.len();
    let bad = |message: String| ProbeError::Output { fold, message };
    if n == 0 {
        return Ok(Vec::new());
    }
    if !output.probabilities.len().is_multiple_of(n) || !output.features.len().is_multiple_of(n) {
        return Err(bad(format!(
            "{} probabilities and {} features for {n} samples",
            output.probabilities.len(),
            output.features.len()
        )));
    }
    let classes = output.probabilities.len() / n;
    let dims = output.features.len() / n;
    let features = unit_rows(&output.features, dims);
    let agreement = neighbour_agreement(&features, dims, labels, neighbours);
    (0..n)
        .map(|i| {
            let p = &output.probabilities[i * classes..(i + 1) * classes];
            let label = labels[i] as usize;
            let given = *p.get(label).ok_or_else(|| {
                bad(format!(
                    "sample {} has label {label} beyond the {classes} classes",
                    ids[i]
                ))
            })? as f64;
            let other = p
                .iter()
                .enumerate()
                .filter(|&(c, _)| c != label)
                .map(|(_, &q)| q as f64)
                .fold(0.0, f64::max);
            Ok(ProbeRow {
                id: ids[i],
                fold,
                confidence: given,
                margin: given - other,
                knn: agreement[i],
            })
        })
        .collect()
}

/// Rows scaled to unit length (a zero row stays zero).
fn unit_rows(features: &[f32], dims: usize) -> Vec<f32> {
    let mut out = features.to_vec();
    if dims == 0 {
        return out;
    }
    for row in out.chunks_mut(dims) {
        let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
    }
    out
}

/// For each row, the share of its `k` most similar other rows (dot product of unit rows,
/// ties to the lower index) with the same label; 0 for a row alone.
fn neighbour_agreement(unit: &[f32], dims: usize, labels: &[u32], k: usize) -> Vec<f64> {
    let n = labels.len();
    let k = k.min(n.saturating_sub(1));
    (0..n)
        .into_par_iter()
        .map(|i| {
            if k == 0 {
                return 0.0;
            }
            let row = &unit[i * dims..(i + 1) * dims];
            let mut similar: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let other = &unit[j * dims..(j + 1) * dims];
                    (row.iter().zip(other).map(|(a, b)| a * b).sum(), j)
                })
                .collect();
            let nearer =
                |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            similar.select_nth_unstable_by(k - 1, nearer);
            let same = similar[..k]
                .iter()
                .filter(|&&(_, j)| labels[j] == labels[i])
                .count();
            same as f64 / k as f64
        })
        .collect()
}

/// The `probe` stage: each fold's network trained by `model` (resuming what a killed attempt
/// left in `dir`), its signals, `probe.tsv` and `summary.json`.
pub fn run_stage(
    labels: &[u32],
    classes: usize,
    params: &ProbeParams,
    seed: u64,
    model: FoldModel,
    dir: &Path,
) -> Result<ProbeSummary, ProbeError> {
    std::fs::create_dir_all(dir).map_err(ProbeError::io(dir))?;
    let fold_of = deal_folds(labels, classes, params.folds, seed);
    let mut rows = Vec::with_capacity(labels.len());
    let mut folds = Vec::with_capacity(params.folds);
    for fold in 0..params.folds {
        let held_out: Vec<u64> = (0..labels.len())
            .filter(|&i| fold_of[i] == fold)
            .map(|i| i as u64)
            .collect();
        if held_out.len() > MAX_NEIGHBOUR_FOLD {
            return Err(ProbeError::FoldTooLarge {
                fold,
                samples: held_out.len(),
            });
        }
        let fold_dir = dir.join(format!("fold-{fold}"));
        let rows_path = fold_dir.join(FOLD_ROWS_FILE);
        let fold_rows = match rows_path.exists() {
            true => read_rows(&rows_path)?,
            false => {
                let train: Vec<(u64, u32)> = (0..labels.len())
                    .filter(|&i| fold_of[i] != fold)
                    .map(|i| (i as u64, labels[i]))
                    .collect();
                let output = model(fold, &train, &held_out, &fold_dir)
                    .map_err(|source| ProbeError::Fold { fold, source })?;
                let given: Vec<u32> = held_out.iter().map(|&id| labels[id as usize]).collect();
                let fold_rows = fold_signals(fold, &held_out, &given, &output, params.neighbours)?;
                check_fold_rows(fold, &fold_rows, &held_out)?;
                write_rows(&rows_path, &fold_rows)?;
                fold_rows
            }
        };
        let agree = top1_agreements(&fold_rows);
        folds.push(FoldSummary {
            fold,
            samples: fold_rows.len(),
            agrees_with_label: match fold_rows.len() {
                0 => 0.0,
                n => agree as f64 / n as f64,
            },
        });
        rows.extend(fold_rows);
    }
    rows.sort_by_key(|r| r.id);
    write_rows(&dir.join(PROBE_FILE), &rows)?;
    let summary = ProbeSummary {
        folds,
        neighbours: params.neighbours,
    };
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(&summary).expect("the summary serializes");
    std::fs::write(&path, json + "\n").map_err(ProbeError::io(&path))?;
    Ok(summary)
}

/// A fold's rows must be its held-out samples, each once.
fn check_fold_rows(fold: usize, rows: &[ProbeRow], held_out: &[u64]) -> Result<(), ProbeError> {
    match rows.iter().map(|r| r.id).eq(held_out.iter().copied()) {
        true => Ok(()),
        false => Err(ProbeError::Output {
            fold,
            message: "the rows are not the fold's held-out samples".into(),
        }),
    }
}

/// Samples whose given label is the network's top-1 (a positive margin).
fn top1_agreements(rows: &[ProbeRow]) -> usize {
    rows.iter().filter(|r| r.margin > 0.0).count()
}

/// Writes `rows` as TSV through a temporary file renamed into place, so that a file that
/// exists is whole.
fn write_rows(path: &Path, rows: &[ProbeRow]) -> Result<(), ProbeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ProbeError::io(parent))?;
    }
    let partial = path.with_extension("tsv.partial");
    let io = ProbeError::io(&partial);
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::new(std::fs::File::create(&partial)?);
        writeln!(out, "{HEADER}")?;
        for r in rows {
            // `{}` round-trips f64, so a resumed stage reads back exactly what it wrote.
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}",
                r.id, r.fold, r.confidence, r.margin, r.knn
            )?;
        }
        out.into_inner()?.sync_all()
    };
    write().map_err(io)?;
    std::fs::rename(&partial, path).map_err(ProbeError::io(path))
}

/// A fold's rows, as its `rows.tsv` holds them (ids of that fold only).
fn read_rows(path: &Path) -> Result<Vec<ProbeRow>, ProbeError> {
    let mut rows = Vec::new();
    tsv::for_each_row(path, Header::Exactly(HEADER), |row| {
        rows.push(probe_row(row)?);
        Ok(())
    })?;
    Ok(rows)
}

fn probe_row(row: &tsv::Row) -> Result<ProbeRow, TsvError> {
    Ok(ProbeRow {
        id: row.parse(0)?,
        fold: row.parse(1)?,
        confidence: row.parse(2)?,
        margin: row.parse(3)?,
        knn: row.parse(4)?,
    })
}

/// `probe.tsv` read back: one row per training sample, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTable {
    rows: Vec<ProbeRow>,
}

impl ProbeTable {
    pub fn load(dir: &Path) -> Result<ProbeTable, ProbeError> {
        let path = dir.join(PROBE_FILE);
        let mut rows = Vec::new();
        tsv::for_each_row(&path, Header::Exactly(HEADER), |row| {
            tsv::expect_id(row, 0, rows.len())?;
            rows.push(probe_row(row)?);
            Ok(())
        })?;
        Ok(ProbeTable { rows })
    }

    pub fn rows(&self) -> &[ProbeRow] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_hold_each_class_evenly_and_follow_the_seed() {
        let labels: Vec<u32> = (0..103).map(|i| (i % 3) as u32).collect();
        let folds = deal_folds(&labels, 3, 4, 7);
        for fold in 0..4 {
            let size = folds.iter().filter(|&&f| f == fold).count();
            assert!((25..=26).contains(&size), "fold {fold} holds {size}");
            for class in 0..3 {
                let n = (0..103)
                    .filter(|&i| folds[i] == fold && labels[i] == class)
                    .count();
                assert!((8..=9).contains(&n), "fold {fold} class {class}: {n}");
            }
        }
        assert_eq!(folds, deal_folds(&labels, 3, 4, 7));
        assert_ne!(folds, deal_folds(&labels, 3, 4, 8));
    }

    #[test]
    fn signals_read_the_given_label_and_the_nearest_rows() {
        // Rows 0 and 1 point one way, 2 and 3 the other; row 2 carries row 0's label.
        let output = FoldOutput {
            probabilities: vec![0.7, 0.3, 0.2, 0.8, 0.5, 0.5, 0.1, 0.9],
            features: vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9],
        };
        let rows = fold_signals(2, &[10, 11, 12, 13], &[0, 0, 0, 1], &output, 1).unwrap();
        let conf: Vec<f64> = rows.iter().map(|r| r.confidence).collect();
        let margin: Vec<f64> = rows.iter().map(|r| r.margin).collect();
        let knn: Vec<f64> = rows.iter().map(|r| r.knn).collect();
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&conf, &[0.7, 0.2, 0.5, 0.9]), "{conf:?}");
        assert!(close(&margin, &[0.4, -0.6, 0.0, 0.8]), "{margin:?}");
        assert_eq!(knn, [1.0, 1.0, 0.0, 0.0]);
        assert!(rows.iter().all(|r| r.fold == 2));
    }

    #[test]
    fn no_sample_is_judged_by_a_network_that_trained_on_it_and_a_rerun_resumes() {
        let labels: Vec<u32> = (0..40).map(|i| (i % 4) as u32).collect();
        let dir = tempfile::tempdir().unwrap();
        let params = ProbeParams {
            folds: 3,
            epochs: 1,
            width: None,
            neighbours: 3,
        };
        let calls = std::sync::Mutex::new(Vec::new());
        // A "network" that predicts each sample's own label when it trained on it and
        // chance otherwise: leakage would show as confidence 1.
        let model = |fold: usize, train: &[(u64, u32)], predict: &[u64], _: &Path| {
            calls.lock().unwrap().push(fold);
            let seen: std::collections::HashSet<u64> = train.iter().map(|t| t.0).collect();
            let mut probabilities = Vec::new();
            for &id in predict {
                let mut p = vec![0.25f32; 4];
                if seen.contains(&id) {
                    p = vec![0.0; 4];
                    p[labels[id as usize] as usize] = 1.0;
                }
                probabilities.extend(p);
            }
            let features = predict.iter().flat_map(|&id| [id as f32, 1.0]).collect();
            Ok(FoldOutput {
                probabilities,
                features,
            })
        };
        let summary = run_stage(&labels, 4, &params, 1, &model, dir.path()).unwrap();
        let table = ProbeTable::load(dir.path()).unwrap();
        assert_eq!(table.rows().len(), 40);
        assert!(table.rows().iter().all(|r| r.confidence == 0.25));
        assert_eq!(summary.folds.iter().map(|f| f.samples).sum::<usize>(), 40);
        assert_eq!(*calls.lock().unwrap(), [0, 1, 2]);

        // A killed stage keeps its finished folds: only the missing one trains again.
        std::fs::remove_file(dir.path().join("fold-1").join(FOLD_ROWS_FILE)).unwrap();
        calls.lock().unwrap().clear();
        run_stage(&labels, 4, &params, 1, &model, dir.path()).unwrap();
        assert_eq!(*calls.lock().unwrap(), [1]);
        assert_eq!(ProbeTable::load(dir.path()).unwrap(), table);
    }
}
