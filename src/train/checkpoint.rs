//! Training checkpoints: one safetensors file per saved step holding the network's tensors
//! (`model.<name>`), the optimiser's momentum buffers (`momentum.<name>`) and, in the
//! header metadata, the loop state ([`TrainState`]: step, seed, lr scale, rollbacks…).
//!
//! In: named f32 tensors and a state. Out: `checkpoint-<step>.safetensors` in the run folder,
//! written to a temporary file and renamed, so a crash never leaves a torn checkpoint.
//!
//! A copy, a full disk or a bad block can still damage one: the header also records the size of
//! the tensor data and its BLAKE3 checksum, [`load`] verifies both, and [`load_latest`] falls
//! back to the newest intact checkpoint, logging each damaged one it skips.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

/// Key prefixes of the two tensor groups in a checkpoint.
pub const MODEL_PREFIX: &str = "model.";
pub const MOMENTUM_PREFIX: &str = "momentum.";
const STATE_KEY: &str = "websieve.train_state";
const FILE_PREFIX: &str = "checkpoint-";
const FILE_SUFFIX: &str = ".safetensors";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: not a safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("checkpoint {path}: tensor `{name}` is {dtype:?}, only F32 is stored")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
    #[error("checkpoint {path}: header has no valid `{STATE_KEY}` entry: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {source}")]
    Candle {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("checkpoint {path}: {found} bytes, but it was written with {expected}: truncated or damaged")]
    Size {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("checkpoint {path}: the tensors do not match the checksum written with them: damaged")]
    Checksum { path: PathBuf },
    #[error("{}: no intact checkpoint ({}); remove them to train from the start", dir.display(), damaged.join("; "))]
    NoneIntact {
        dir: PathBuf,
        /// Each damaged checkpoint's error, newest first.
        damaged: Vec<String>,
    },
}

/// The training loop's state besides tensors; everything resume needs to replay the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Updates applied so far; also the index of the next batch (the sampler position).
    pub step: u64,
    /// Seed of the per-step dropout RNG (its state at step s is derived from (seed, s)).
    pub seed: u64,
    /// Product of the rollback lr factors applied so far (1 without rollbacks).
    pub lr_scale: f64,
    pub rollbacks: u32,
    /// The best epoch on the holdout so far (`train.holdout`), whose weights are in
    /// [`BEST_CHECKPOINT`]. Absent without a holdout, so such checkpoints read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEpoch>,
}

/// The checkpoint of the best epoch on the holdout (its weights only), beside the others.
pub const BEST_CHECKPOINT: &str = "best.safetensors";

/// An epoch evaluated on the holdout: the first with the highest top-1 is the best.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: u64,
    /// The step that ended it.
    pub step: u64,
    /// Its accuracy on the holdout, as fractions.
    pub top1: f64,
    pub top5: f64,
}

/// The header's one metadata entry: the state and the integrity record beside it. One entry,
/// because safetensors writes its metadata map in hash order, and two entries would make the
/// same checkpoint's bytes differ from run to run.
#[derive(Serialize, Deserialize)]
struct StateEntry {
    #[serde(flatten)]
    state: TrainState,
    /// Absent from checkpoints written before it was kept.
    #[serde(flatten)]
    integrity: Option<Integrity>,
}

#[derive(Serialize, Deserialize)]
struct Integrity {
    /// Bytes of tensor data after the header.
    data_bytes: usize,
    /// See [`checksum`].
    blake3: String,
}

/// A loaded checkpoint: tensors by full key and the loop state.
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub state: TrainState,
}

impl Checkpoint {
    /// The tensors under `prefix`, with the prefix removed.
    pub fn group(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t.clone())))
            .collect()
    }
}

/// An f32 tensor's bytes, as safetensors serialises them.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The file a checkpoint of `step` has in `dir`.
pub fn path_for(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{step:08}{FILE_SUFFIX}"))
}

/// Checkpoints in `dir`, oldest step first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let step = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix(FILE_PREFIX)?
                .strip_suffix(FILE_SUFFIX)?
                .parse()
                .ok()
        });
        if let Some(step) = step {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The checkpoint with the highest step in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(dir)?.pop().map(|(_, path)| path))
}

/// BLAKE3 over the tensors in name order (each: name, shape, data, lengths first), and the
/// bytes of their data: independent of where the file puts each tensor.
fn checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
) -> (String, usize) {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by_key(|(name, _, _)| *name);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0;
    for (name, shape, data) in sorted {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(shape.len() as u64).to_le_bytes());
        for dim in shape {
            hasher.update(&(*dim as u64).to_le_bytes());
        }
        hasher.update(&(data.len() as u64).to_le_bytes());
        hasher.update(data);
        bytes += data.len();
    }
    (hasher.finalize().to_hex().to_string(), bytes)
}

/// Writes `tensors` and `state` to `path` atomically (temporary file, fsync, rename).
pub fn save<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, &'a Tensor)>,
    state: &TrainState,
) -> Result<(), CheckpointError> {
    let candle = |source| CheckpointError::Candle {
        path: path.to_path_buf(),
        source,
    };
    let mut views = Vec::new();
    for (name, tensor) in tensors {
        let values: Vec<f32> = tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle)?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = tensor.dims().to_vec();
        views.push((name, F32View { shape, bytes }));
    }
    let (blake3, data_bytes) = checksum(
        views
            .iter()
            .map(|(name, v)| (name.as_str(), v.shape.as_slice(), v.bytes.as_slice())),
    );
    let entry = StateEntry {
        state: *state,
        integrity: Some(Integrity { data_bytes, blake3 }),
    };
    let entry = serde_json::to_string(&entry).expect("train state serialises");
    let metadata = HashMap::from([(STATE_KEY.to_string(), entry)]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let temporary = path.with_extension("safetensors.tmp");
    let io = |source| CheckpointError::Io {
        path: temporary.clone(),
        source,
    };
    let mut file = fs::File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a checkpoint written by [`save`], placing its tensors on `device`; a file whose size
/// or checksum disagrees with its header is refused ([`CheckpointError::Size`],
/// [`CheckpointError::Checksum`]).
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |e: safetensors::SafeTensorError| CheckpointError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(expected) = written_size(&bytes) {
        if bytes.len() != expected {
            return Err(CheckpointError::Size {
                path: path.to_path_buf(),
                found: bytes.len(),
                expected,
            });
        }
    }
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let state_error = |reason: String| CheckpointError::State {
        path: path.to_path_buf(),
        reason,
    };
    let entry = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| state_error("missing".into()))?;
    let entry: StateEntry = serde_json::from_str(entry).map_err(|e| state_error(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(format)?;
    if let Some(Integrity {
        blake3: written, ..
    }) = &entry.integrity
    {
        let views = file.tensors();
        let (found, _) = checksum(
            views
                .iter()
                .map(|(name, v)| (name.as_str(), v.shape(), v.data())),
        );
        if found != *written {
            return Err(CheckpointError::Checksum {
                path: path.to_path_buf(),
            });
        }
    }
    let mut tensors = HashMap::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: view.dtype(),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let tensor = Tensor::from_vec(values, view.shape(), device).map_err(|source| {
            CheckpointError::Candle {
                path: path.to_path_buf(),
                source,
            }
        })?;
        tensors.insert(name.to_string(), tensor);
    }
    Ok(Checkpoint {
        tensors,
        state: entry.state,
    })
}

/// The file size [`save`] wrote, from the header alone: `SafeTensors::read_metadata` refuses a
/// truncated file before the sizes can be compared. `None` for a header without the record.
fn written_size(bytes: &[u8]) -> Option<usize> {
    let header_len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let header: serde_json::Value = serde_json::from_slice(header).ok()?;
    let entry = header["__metadata__"][STATE_KEY].as_str()?;
    let data_bytes = serde_json::from_str::<StateEntry>(entry)
        .ok()?
        .integrity?
        .data_bytes;
    Some(8 + header_len + data_bytes)
}

/// The newest checkpoint in `dir` that loads intact, with its path; each damaged newer one is
/// skipped with a warning naming it and why. `Ok(None)` when `dir` has no checkpoint,
/// [`CheckpointError::NoneIntact`] when it has only damaged ones.
pub fn load_latest(
    dir: &Path,
    device: &Device,
) -> Result<Option<(PathBuf, Checkpoint)>, CheckpointError> {
    let mut damaged = Vec::new();
    for (_, path) in list(dir)?.into_iter().rev() {
        match load(&path, device) {
            Ok(checkpoint) => return Ok(Some((path, checkpoint))),
            Err(error) => {
                tracing::warn!(checkpoint = %path.display(), %error, "skipping a damaged checkpoint");
                damaged.push(error.to_string());
            }
        }
    }
    match damaged.is_empty() {
        true => Ok(None),
        false => Err(CheckpointError::NoneIntact {
            dir: dir.to_path_buf(),
            damaged,
        }),
    }
}

/// Deletes all but the `keep` most recent checkpoints in `dir`.
pub fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let found = list(dir)?;
    for (_, path) in &found[..found.len().saturating_sub(keep)] {
        fs::remove_file(path).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            seed: 9,
            lr_scale: 0.5,
            rollbacks: 1,
            best: None,
        }
    }

    #[test]
    fn round_trip_is_exact_and_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let values = vec![1.0f32, -0.0, f32::MIN_POSITIVE, 3.25e-7, f32::MAX, -2.5];
        let a = Tensor::from_vec(values.clone(), (2, 3), &Device::Cpu).unwrap();
        let path = path_for(dir.path(), 12);
        let state = TrainState {
            // A value that only an exact round trip keeps.
            best: Some(BestEpoch {
                epoch: 1,
                step: 10,
                top1: 0.1 + 0.2,
                top5: 0.7,
            }),
            ..state(12)
        };
        save(&path, [("model.a".to_string(), &a)], &state).unwrap();
        let loaded = load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.state, state);
        let b = &loaded.group(MODEL_PREFIX)["a"];
        assert_eq!(b.dims(), &[2, 3]);
        let back: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(!path.with_extension("safetensors.tmp").exists());
    }

    #[test]
    fn latest_and_prune_order_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
        for step in [100, 9, 1000, 0] {
            save(
                &path_for(dir.path(), step),
                [("x".to_string(), &t)],
                &state(step),
            )
            .unwrap();
        }
        assert_eq!(
            latest(dir.path()).unwrap(),
            Some(path_for(dir.path(), 1000))
        );
        prune(dir.path(), 2).unwrap();
        let steps: Vec<u64> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![100, 1000]);
    }

    #[test]
    fn damaged_checkpoints_are_refused_and_the_newest_intact_one_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap();
        for step in [1, 2, 3] {
            save(
                &path_for(dir.path(), step),
                [("x".to_string(), &t)],
                &state(step),
            )
            .unwrap();
        }
        let damage = |step, how: &dyn Fn(&mut Vec<u8>)| {
            let path = path_for(dir.path(), step);
            let mut bytes = fs::read(&path).unwrap();
            how(&mut bytes);
            fs::write(&path, bytes).unwrap();
        };
        damage(3, &|b| b.truncate(b.len() - 10));
        damage(2, &|b| *b.last_mut().unwrap() ^= 1);
        let load_step = |step| load(&path_for(dir.path(), step), &Device::Cpu);
        assert!(
            matches!(load_step(3), Err(CheckpointError::Size { .. })),
            "truncated"
        );
        assert!(
            matches!(load_step(2), Err(CheckpointError::Checksum { .. })),
            "bit flip"
        );
        let (path, loaded) = load_latest(dir.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!((path, loaded.state), (path_for(dir.path(), 1), state(1)));

        damage(1, &|b| b.truncate(b.len() / 2));
        let err = load_latest(dir.path(), &Device::Cpu).err().unwrap();
        let CheckpointError::NoneIntact { damaged, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(damaged.len(), 3, "{err}");
        let dir_text = dir.path().display().to_string();
        insta::assert_snapshot!(err.to_string().replace(&dir_text, "<dir>"));
        let empty = tempfile::tempdir().unwrap();
        assert!(load_latest(empty.path(), &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn a_file_without_state_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.safetensors");
        let t = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w", t)]), &path).unwrap();
        let err = load(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(
            err.contains("plain.safetensors") && err.contains("missing"),
            "{err}"
        );
    }
}
