//! The files of an eval folder, and reading its predictions back for an ensemble.
//!
//! - `predictions.tsv`: a header, then per sample `id  label  top5  top5_probs`, the two last
//!   comma-separated, best first (for people and scripts).
//! - `probabilities.bin`: every probability, for ensembles computed later from saved runs.
//!   All numbers little-endian:
//!
//!   | offset          | content                                              |
//!   |-----------------|------------------------------------------------------|
//!   | 0               | magic `b"WSPROB\0\x01"` (format version 1)           |
//!   | 8               | `u64` samples n                                      |
//!   | 16              | `u64` classes c                                      |
//!   | 24              | n × `u64` sample ids                                 |
//!   | 24 + 8n         | n × `u32` labels                                     |
//!   | 24 + 12n        | n × c × `f32` probabilities, row-major (sample, class) |
//!
//!   In numpy: `np.fromfile(f, "<f4", offset=24 + 12 * n).reshape(n, c)`.
//! - `metrics.json`: [`EvalMetrics`]. `per_class.tsv`: its per-class part.
//! - `confusion.png`: see [`write_confusion_png`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{write_confusion_png, ConfusionMatrix, EvalError, EvalMetrics, Predictions};

pub const PROBABILITIES_FILE: &str = "probabilities.bin";
/// [`EvalMetrics`] as JSON.
pub const METRICS_FILE: &str = "metrics.json";
pub const PROBABILITIES_MAGIC: [u8; 8] = *b"WSPROB\0\x01";
const HEADER_LEN: usize = 24;

/// Writes every output of an evaluation into `dir` (created if missing).
pub fn write_outputs(
    dir: &Path,
    p: &Predictions,
    m: &EvalMetrics,
    class_names: &[String],
) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
    write_with(&dir.join("predictions.tsv"), |w| {
        write_predictions_tsv(w, p)
    })?;
    write_with(&dir.join(PROBABILITIES_FILE), |w| write_probabilities(w, p))?;
    write_with(&dir.join("per_class.tsv"), |w| write_per_class_tsv(w, m))?;
    let json = dir.join(METRICS_FILE);
    let text = serde_json::to_string_pretty(m).map_err(|source| EvalError::Json {
        path: json.clone(),
        source,
    })?;
    std::fs::write(&json, text + "\n").map_err(EvalError::io(&json))?;
    write_confusion_png(
        &dir.join("confusion.png"),
        &ConfusionMatrix::from_predictions(p),
        class_names,
    )
}

fn write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), EvalError> {
    let mut w = BufWriter::new(File::create(path).map_err(EvalError::io(path))?);
    write(&mut w)
        .and_then(|()| w.flush())
        .map_err(EvalError::io(path))
}

fn write_predictions_tsv(w: &mut impl Write, p: &Predictions) -> std::io::Result<()> {
    writeln!(w, "id\tlabel\ttop5\ttop5_probs")?;
    for (i, (id, label)) in p.ids().iter().zip(p.labels()).enumerate() {
        let top = p.top_k(i, 5);
        let classes: Vec<String> = top.iter().map(usize::to_string).collect();
        let probs: Vec<String> = top.iter().map(|&c| format!("{:.6}", p.row(i)[c])).collect();
        writeln!(
            w,
            "{id}\t{label}\t{}\t{}",
            classes.join(","),
            probs.join(",")
        )?;
    }
    Ok(())
}

fn write_probabilities(w: &mut impl Write, p: &Predictions) -> std::io::Result<()> {
    w.write_all(&PROBABILITIES_MAGIC)?;
    w.write_all(&(p.len() as u64).to_le_bytes())?;
    w.write_all(&(p.num_classes() as u64).to_le_bytes())?;
    for id in p.ids() {
        w.write_all(&id.to_le_bytes())?;
    }
    for label in p.labels() {
        w.write_all(&label.to_le_bytes())?;
    }
    // In blocks: one write per value is slow in debug builds at WebVision's 50 M values.
    for block in p.probabilities().chunks(1 << 16) {
        let bytes: Vec<u8> = block.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}

fn write_per_class_tsv(w: &mut impl Write, m: &EvalMetrics) -> std::io::Result<()> {
    writeln!(w, "class\tname\tsamples\ttop1\ttop5")?;
    let fraction = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for c in &m.per_class {
        let (top1, top5) = (fraction(c.top1), fraction(c.top5));
        writeln!(w, "{}\t{}\t{}\t{top1}\t{top5}", c.class, c.name, c.samples)?;
    }
    Ok(())
}

/// Reads the predictions that [`write_outputs`] saved in `dir` (its `probabilities.bin`),
/// checking the header, the size, the labels, the ids and the probabilities.
pub fn load_predictions(dir: &Path) -> Result<Predictions, EvalError> {
    let path = dir.join(PROBABILITIES_FILE);
    let bytes = std::fs::read(&path).map_err(EvalError::io(&path))?;
    let bad = |field: &'static str, detail: String| EvalError::Format {
        path: path.clone(),
        field,
        detail,
    };
    if bytes.len() < HEADER_LEN || bytes[..8] != PROBABILITIES_MAGIC {
        return Err(bad(
            "magic",
            format!(
                "not a websieve probabilities file (expected \"{}\" at offset 0)",
                PROBABILITIES_MAGIC.escape_ascii()
            ),
        ));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (n, classes) = (u64_at(8), u64_at(16));
    let expected = usize::try_from(n)
        .ok()
        .zip(usize::try_from(classes).ok())
        .and_then(|(n, c)| n.checked_mul(12 + 4 * c)?.checked_add(HEADER_LEN));
    if classes == 0 || expected != Some(bytes.len()) {
        return Err(bad(
            "size",
            format!(
                "{} bytes, but the header says {n} samples × {classes} classes",
                bytes.len()
            ),
        ));
    }
    let (n, classes) = (n as usize, classes as usize);
    let ids: Vec<u64> = (0..n).map(|i| u64_at(HEADER_LEN + 8 * i)).collect();
    let label_at = HEADER_LEN + 8 * n;
    let labels: Vec<u32> = bytes[label_at..label_at + 4 * n]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let probs: Vec<f32> = bytes[label_at + 4 * n..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let mut seen = HashSet::with_capacity(n);
    for (row, (&id, &label)) in ids.iter().zip(&labels).enumerate() {
        if !seen.insert(id) {
            return Err(bad("ids", format!("row {row}: sample {id} appears twice")));
        }
        if label as usize >= classes {
            return Err(bad(
                "labels",
                format!("row {row}: label {label} out of range for {classes} classes"),
            ));
        }
        let probs = &probs[row * classes..(row + 1) * classes];
        if let Some(class) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(bad(
                "probabilities",
                format!(
                    "row {row}, class {class}: {} is not a probability",
                    probs[class]
                ),
            ));
        }
    }
    Ok(Predictions::from_parts(classes, ids, labels, probs))
}
