//! Planning: a recipe's stages up to `--until`, each with the key that addresses its output in
//! the cache (a hash of its settings, the keys of the stages it reads and its format version)
//! and whether that output is already there.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use super::cache::Cache;
use super::error::StageError;
use super::folder::RunFolder;
use super::kind::StageKind;
use super::stages::{spec, InitRef, FINAL_CHECKPOINT};
use crate::recipe::Recipe;

/// One stage as it would run for a recipe.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub kind: StageKind,
    pub key: String,
    /// Everything the key hashes.
    pub inputs: serde_json::Value,
    pub cached: bool,
    /// A killed earlier attempt left a partial folder.
    pub partial: bool,
}

/// A recipe's stages up to `until`, with their cache state.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub run: String,
    pub until: StageKind,
    pub stages: Vec<PlannedStage>,
    /// `train.init` resolved once, before any stage runs (a run may init from its own
    /// earlier result, whose pointers the run then rewrites).
    #[serde(skip)]
    pub init: Option<InitRef>,
}

impl Plan {
    pub fn stage(&self, kind: StageKind) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.kind == kind)
    }

    /// Why each stage would or would not run, one line each, for `runner plan`.
    pub fn describe(&self) -> String {
        let mut out = format!("{}\n", self.run);
        let mut upstream_runs = false;
        for s in &self.stages {
            let (status, why) = if s.cached {
                ("cached", "output with these inputs exists".to_string())
            } else if upstream_runs {
                ("run", "an upstream stage runs first".to_string())
            } else if s.partial {
                (
                    "resume",
                    "a killed earlier attempt left a partial output".to_string(),
                )
            } else {
                ("run", "no output with these inputs yet".to_string())
            };
            upstream_runs |= !s.cached;
            out.push_str(&format!(
                "  {:<7} {}  {:<7} {}\n",
                s.kind.name(),
                s.key,
                status,
                why
            ));
        }
        out
    }
}

/// The key of a stage: the [`short_hash`] of its inputs as JSON.
pub fn key_of(inputs: &serde_json::Value) -> String {
    short_hash(&serde_json::to_vec(inputs).expect("JSON values serialize"))
}

/// The first 16 hex digits of the BLAKE3 hash: stage keys and checkpoint content keys.
pub fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

/// The stages of `recipe` up to and including `until`; `runs` holds the run folders that
/// `train.init` may name.
pub fn plan(
    cache: &Cache,
    runs: &Path,
    recipe: &Recipe,
    until: StageKind,
) -> Result<Plan, StageError> {
    let init = resolve_init(runs, recipe)?;
    let mut stages: Vec<PlannedStage> = Vec::new();
    for kind in StageKind::ALL.into_iter().take_while(|k| *k <= until) {
        let spec = spec(kind);
        let upstream: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .filter(|s| spec.reads.contains(&s.kind))
            .map(|s| (s.kind.name().to_string(), json!(s.key)))
            .collect();
        let inputs = json!({
            "stage": kind.name(),
            "format_version": spec.format_version,
            "settings": (spec.settings)(recipe, init.as_ref()),
            "upstream": upstream,
        });
        let key = key_of(&inputs);
        stages.push(PlannedStage {
            kind,
            cached: cache.is_complete(kind.name(), &key),
            partial: cache.partial_dir(kind.name(), &key).exists(),
            key,
            inputs,
        });
    }
    Ok(Plan {
        run: recipe.name.clone(),
        until,
        stages,
        init,
    })
}

/// `train.init` names a finished run (its final checkpoint) or a checkpoint file.
fn resolve_init(runs: &Path, recipe: &Recipe) -> Result<Option<InitRef>, StageError> {
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
            key: short_hash(&bytes),
            checkpoint: as_file,
        }));
    }
    let folder = RunFolder::new(runs.join(init));
    let looked = folder.file(RunFolder::STAGES);
    let train = folder
        .stage_dirs()
        .ok()
        .and_then(|dirs| dirs.get(&StageKind::Train).cloned())
        .ok_or_else(|| missing(looked.clone()))?;
    let key = train
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| missing(looked))?;
    Ok(Some(InitRef {
        key,
        checkpoint: train.join(FINAL_CHECKPOINT),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_sensitive() {
        let a = json!({"a": 1, "b": [1, 2]});
        assert_eq!(key_of(&a), key_of(&json!({"a": 1, "b": [1, 2]})));
        assert_ne!(key_of(&a), key_of(&json!({"a": 1, "b": [2, 1]})));
        assert_eq!(key_of(&a).len(), 16);
    }
}
