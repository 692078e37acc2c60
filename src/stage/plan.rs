//! Planning: a recipe's stages up to `--until`, each with the key that addresses its output in
//! the cache (a hash of its settings, the keys of the stages it reads and its format version)
//! and whether that output is already there.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::cache::{Cache, STAGE_MANIFEST};
use super::error::StageError;
use super::folder::RunFolder;
use super::kind::StageKind;
use super::stages::{spec, InitRef, FINAL_CHECKPOINT};
use crate::digest;
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
    /// When the run's previous attempt used another output for this stage: what differs
    /// between its inputs and these ("info/train_filelist_all.txt changed", ...).
    pub changed: Vec<String>,
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
            if !s.changed.is_empty() {
                let shown = s.changed.len().min(MAX_CHANGES_SHOWN);
                let mut list = s.changed[..shown].join("; ");
                if s.changed.len() > shown {
                    list.push_str(&format!("; and {} more", s.changed.len() - shown));
                }
                out.push_str(&format!(
                    "{:>27}since run {} last ran: {list}\n",
                    "", self.run
                ));
            }
        }
        out
    }
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
    let previous = RunFolder::new(runs.join(&recipe.name))
        .stage_dirs()
        .unwrap_or_default();
    let mut stages: Vec<PlannedStage> = Vec::new();
    for kind in StageKind::ALL.into_iter().take_while(|k| *k <= until) {
        let spec = spec(kind);
        if !(spec.runs_for)(recipe) {
            continue;
        }
        let upstream: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .filter(|s| spec.reads.contains(&s.kind))
            .map(|s| (s.kind.name().to_string(), json!(s.key)))
            .collect();
        let mut inputs = json!({
            "stage": kind.name(),
            "format_version": spec.format_version,
            "settings": (spec.settings)(recipe, init.as_ref()),
            "upstream": upstream,
        });
        if let Some(read) = spec.reads_outside {
            inputs["data"] = read(recipe).map_err(|failure| StageError::Failed {
                stage: kind,
                run: recipe.name.clone(),
                failure: Box::new(failure),
            })?;
        }
        let key = digest::json_hash(&inputs);
        let cached = cache.is_complete(kind.name(), &key);
        let changed = match previous.get(&kind) {
            Some(dir) if !cached && !dir.ends_with(&key) => std::fs::read(dir.join(STAGE_MANIFEST))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .map(|old| input_changes(&old, &inputs))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        stages.push(PlannedStage {
            kind,
            cached,
            partial: cache.partial_dir(kind.name(), &key).exists(),
            key,
            inputs,
            changed,
        });
    }
    Ok(Plan {
        run: recipe.name.clone(),
        until,
        stages,
        init,
    })
}

/// How many differences `runner plan` lists per stage.
const MAX_CHANGES_SHOWN: usize = 5;

/// What differs between a stage's earlier inputs and `new`, in words: settings with their
/// old and new values, dataset files changed, added or removed, folders whose images
/// changed, upstream stages that changed.
fn input_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if old["format_version"] != new["format_version"] {
        out.push("the stage's output format (a websieve update)".into());
    }
    setting_changes("", &old["settings"], &new["settings"], &mut out);
    map_changes(&old["data"]["files"], &new["data"]["files"], "", &mut out);
    map_changes(
        &old["data"]["image_folders"],
        &new["data"]["image_folders"],
        "images in ",
        &mut out,
    );
    if let Some(upstream) = new["upstream"].as_object() {
        for (stage, key) in upstream {
            if old["upstream"][stage] != *key {
                out.push(format!("the {stage} stage's output"));
            }
        }
    }
    if out.is_empty() && old != new {
        out.push("its inputs".into());
    }
    out
}

/// Differing leaves of two settings trees, as `dataset.resize 256 → 128`.
fn setting_changes(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let missing = Value::Null;
            setting_changes(
                &path,
                a.get(key).unwrap_or(&missing),
                b.get(key).unwrap_or(&missing),
                out,
            );
        }
        return;
    }
    let show = |v: &Value| match v {
        Value::Null => "unset".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    out.push(format!("{path} {} → {}", show(old), show(new)));
}

/// Entries of two name → hash maps that differ: changed, added or removed.
fn map_changes(old: &Value, new: &Value, prefix: &str, out: &mut Vec<String>) {
    let (empty_a, empty_b) = (serde_json::Map::new(), serde_json::Map::new());
    let a = old.as_object().unwrap_or(&empty_a);
    let b = new.as_object().unwrap_or(&empty_b);
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let what = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(_), Some(_)) => "changed",
            (None, _) => "added",
            (_, None) => "removed",
        };
        out.push(format!("{prefix}{name} {what}"));
    }
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
            key: digest::short_hash(&bytes),
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
