//! `metrics.jsonl`, the training stage's per-step log. In: one JSON object per logged step
//! (lr, loss and its terms, gradient norm, images/s) or event (a rollback). Out: lines
//! appended to the file; on resume, the lines of the steps a run redoes are dropped first.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::TrainError;

/// The training stage's metrics, one JSON line per logged step.
pub const STEP_METRICS_FILE: &str = "metrics.jsonl";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends `line` to the metrics file at `path`.
pub(super) fn append(path: &Path, line: &serde_json::Value) -> Result<(), TrainError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    writeln!(file, "{line}").map_err(io_error(path))
}

/// Keeps the lines up to `step` (those a resumed run does not redo); no file is no lines.
pub(super) fn truncate(path: &Path, step: u64) -> Result<(), TrainError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    fs::write(path, kept).map_err(io_error(path))
}
