//! What each stage does: the glue from a recipe's settings and upstream stage folders to the
//! stage modules (`store`, `lda`, `score`, `train`, `eval`).

use std::path::{Path, PathBuf};

use super::{StageError, StageKind, Workspace};
use crate::recipe::{Devices, Recipe};
use crate::store;

/// The stages whose output a stage reads (and whose keys its key includes).
pub(super) fn reads(kind: StageKind) -> &'static [StageKind] {
    match kind {
        StageKind::Ingest => &[],
        StageKind::Lda => &[StageKind::Ingest],
        StageKind::Score => &[StageKind::Ingest, StageKind::Lda],
        StageKind::Train => &[StageKind::Ingest, StageKind::Lda, StageKind::Score],
        StageKind::Eval => &[StageKind::Ingest, StageKind::Train],
    }
}

/// What must hold before `recipe` starts: its input files exist and its devices are usable.
pub(super) fn preflight(recipe: &Recipe, until: StageKind) -> Result<(), StageError> {
    let fail = |message: String| {
        Err(StageError::Preflight {
            run: recipe.name.clone(),
            message,
        })
    };
    if let Some(root) = &recipe.dataset.root {
        if !root.exists() {
            return fail(format!("dataset.root {} does not exist", root.display()));
        }
    }
    if let Some(truth) = &recipe.clean.truth {
        if until >= StageKind::Score && !truth.is_file() {
            return fail(format!("clean.truth {} does not exist", truth.display()));
        }
    }
    if until >= StageKind::Train && recipe.train.devices != Devices::Cpu {
        return fail(format!(
            "train.devices = \"{}\": training runs on the CPU only for now (the custom pooling and \
             LRN ops have no CUDA kernels yet); set train.devices = \"cpu\"",
            recipe.train.devices
        ));
    }
    Ok(())
}

/// A training run's starting weights (`train.init`).
#[derive(Debug, Clone)]
pub(super) struct InitRef {
    /// Goes into the train stage's key: the init run's train key, or the file's content hash.
    pub key: String,
    #[expect(
        dead_code,
        reason = "read by the train stage, which lands with issue 5"
    )]
    pub checkpoint: PathBuf,
}

/// `train.init` names a finished run (its final checkpoint) or a checkpoint file.
pub(super) fn resolve_init(ws: &Workspace, recipe: &Recipe) -> Result<Option<InitRef>, StageError> {
    let Some(init) = &recipe.train.init else {
        return Ok(None);
    };
    let missing = |looked: PathBuf| StageError::MissingInit {
        run: recipe.name.clone(),
        init: init.clone(),
        looked,
    };
    let as_file = PathBuf::from(init);
    if as_file.is_file() {
        let bytes = std::fs::read(&as_file).map_err(|_| missing(as_file.clone()))?;
        return Ok(Some(InitRef {
            key: blake3::hash(&bytes).to_hex()[..16].to_string(),
            checkpoint: as_file,
        }));
    }
    let stages = ws.run_dir(init).join("stages.json");
    let train = super::runs::read_stage_dirs(&stages)
        .ok()
        .and_then(|dirs| dirs.get(StageKind::Train.name()).cloned())
        .ok_or_else(|| missing(stages.clone()))?;
    let key = train
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| missing(stages.clone()))?;
    Ok(Some(InitRef {
        key,
        checkpoint: final_checkpoint(&train),
    }))
}

/// The checkpoint a finished train stage leaves for `init` and evaluation.
pub(super) fn final_checkpoint(train_dir: &Path) -> PathBuf {
    train_dir.join("final.safetensors")
}

/// Builds one stage into `out` (its partial folder), reading the upstream stage folders.
pub(super) fn execute(
    _ws: &Workspace,
    recipe: &Recipe,
    kind: StageKind,
    _upstream: &[(StageKind, PathBuf)],
    out: &Path,
    progress: bool,
) -> Result<(), StageError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| StageError::Failed {
        stage: kind,
        run: recipe.name.clone(),
        source,
    };
    match kind {
        StageKind::Ingest => {
            store::ingest(&recipe.dataset, out, progress).map_err(|e| failed(e.into()))?;
            Ok(())
        }
        _ => Err(StageError::NotImplemented { stage: kind }),
    }
}
