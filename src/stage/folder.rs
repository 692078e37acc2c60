//! The run-folder contract: `runs/<name>/` and every file in it, written and read here only.
//!
//! | file                   | what                                                            |
//! |------------------------|-----------------------------------------------------------------|
//! | `recipe.resolved.toml` | every setting, loadable: `runner runs/<name>/recipe.resolved.toml` |
//! | `command.txt`          | the command line                                                |
//! | `version.json`         | websieve version and commit; the recipe file's git state        |
//! | `log.jsonl`            | the run's log as JSON lines, with run-started/-finished events  |
//! | `status.json`          | running, finished or failed; each stage's key, reuse, duration   |
//! | `stages.json`          | the stage folders a finished run used (read by `train.init` and ensembles) |
//! | `metrics.jsonl`        | training metrics per logged step (a copy of the train stage's)  |
//! | `metrics.json`         | evaluation of the last epoch (a copy of the eval stage's)       |
//! | `metrics_second_val.json` | evaluation on the second validation set, when there is one   |
//! | `best_epoch.json`      | with a holdout: the best epoch on it, and its holdout accuracy  |
//! | `metrics_best.json`    | with a holdout: the best epoch's evaluation (`metrics_best_second_val.json` on the second set) |
//! | `ensemble/`            | the ensemble's evaluation, when the recipe names one            |
//! | `export/`              | per-sample verdicts and the cleaned lists (`runner export`)     |
//!
//! A run folder is locked (`.<name>.lock` beside it) while a runner writes it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StageError;
use super::kind::StageKind;
use crate::eval::{self, EvalMetrics};
use crate::recipe::Recipe;
use crate::score::ScoreSummary;
use crate::train::BestEpoch;

/// One run's folder.
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
}

/// Whether a run is going on, finished, or failed (as `status.json` has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started and not ended: still going, or killed.
    Running,
    Finished,
    Failed,
}

/// One stage as a run used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub key: String,
    pub dir: PathBuf,
    /// Found in the cache rather than built by this run.
    pub reused: bool,
    pub seconds: f64,
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    /// The last stage the run was asked for (`--until`).
    pub until: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub stages: Vec<StageRecord>,
    /// The failing stage's error, for a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunStatus {
    pub fn new(until: StageKind) -> Self {
        RunStatus {
            state: RunState::Running,
            until: until.name().to_string(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stages: Vec::new(),
            error: None,
        }
    }

    /// One line for people: "finished", "stopped after score (--until score)", "failed in
    /// train: …", "running (or killed)".
    pub fn describe(&self) -> String {
        let last = self.stages.last().map(|s| s.stage.as_str());
        match self.state {
            RunState::Finished if self.until == StageKind::Eval.name() => "finished".into(),
            RunState::Finished => format!("stopped after {} (--until {})", self.until, self.until),
            RunState::Failed => format!(
                "failed: {}",
                self.error.as_deref().unwrap_or("no error recorded")
            ),
            RunState::Running => match last {
                Some(stage) => format!("running or killed (last finished stage: {stage})"),
                None => "running or killed (no stage finished)".into(),
            },
        }
    }
}

/// Holds a run folder's lock; released when dropped (or by the OS when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunFolder {
    pub const RECIPE: &'static str = "recipe.resolved.toml";
    pub const COMMAND: &'static str = "command.txt";
    pub const VERSION: &'static str = "version.json";
    pub const LOG: &'static str = "log.jsonl";
    pub const STATUS: &'static str = "status.json";
    pub const STAGES: &'static str = "stages.json";
    pub const TRAIN_METRICS: &'static str = crate::train::STEP_METRICS_FILE;
    pub const EVAL_METRICS: &'static str = eval::METRICS_FILE;
    /// The score stage's summary (noise detection against a truth file, when known).
    pub const SCORE_SUMMARY: &'static str = "score_summary.json";
    pub const ENSEMBLE: &'static str = "ensemble";
    /// The evaluation on `dataset.second_val`, when the recipe has one.
    pub const SECOND_VAL_METRICS: &'static str = "metrics_second_val.json";
    /// With `train.holdout`: which epoch was best on it ([`BestEpoch`]).
    pub const BEST_EPOCH: &'static str = "best_epoch.json";
    /// With `train.holdout`: the best epoch's evaluation, on each validation set.
    pub const BEST_METRICS: &'static str = "metrics_best.json";
    pub const BEST_SECOND_VAL_METRICS: &'static str = "metrics_best_second_val.json";
    /// What `runner export` writes by default (see [`crate::export`]).
    pub const EXPORT: &'static str = "export";

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunFolder { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A folder is a run folder when it holds a resolved recipe.
    pub fn is_run(dir: &Path) -> bool {
        dir.join(Self::RECIPE).is_file()
    }

    fn err(&self, name: &str) -> impl FnOnce(io::Error) -> StageError {
        let path = self.file(name);
        move |cause| StageError::RunFolder { path, cause }
    }

    /// Takes the run's lock, refusing (not waiting) when another runner holds it: two runners
    /// writing one run folder would interleave its log.
    pub fn lock(&self) -> Result<RunLock, StageError> {
        let name = self
            .dir
            .file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|cause| StageError::RunFolder {
            path: parent.to_path_buf(),
            cause,
        })?;
        let path = parent.join(format!(".{name}.lock"));
        let io = |cause| StageError::RunFolder {
            path: path.clone(),
            cause,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(StageError::RunFolderBusy {
                    path: self.dir.clone(),
                    holder: match holder.trim() {
                        "" => "unknown process".into(),
                        h => h.to_string(),
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        write!(file, "pid {}", std::process::id()).map_err(io)?;
        Ok(RunLock { _file: file })
    }

    /// Before a run writes this folder: when it holds a run of a different recipe, that run
    /// is kept by renaming its folder to `<name>.<n>` (the first free n), returned.
    pub fn keep_other_run(&self, resolved: &str) -> Result<Option<PathBuf>, StageError> {
        let Ok(previous) = fs::read_to_string(self.file(Self::RECIPE)) else {
            return Ok(None);
        };
        if previous == resolved {
            return Ok(None);
        }
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let kept = (1..)
            .map(|n| self.dir.with_file_name(format!("{name}.{n}")))
            .find(|p| !p.exists())
            .expect("some number is free");
        fs::rename(&self.dir, &kept).map_err(|cause| StageError::RunFolder {
            path: self.dir.clone(),
            cause,
        })?;
        Ok(Some(kept))
    }

    /// Writes the files a run starts with: resolved recipe, command line, version, status,
    /// and a fresh log (returned open for the run's JSON log).
    pub fn start(
        &self,
        recipe: &Recipe,
        command_line: &str,
        status: &RunStatus,
    ) -> Result<File, StageError> {
        fs::create_dir_all(&self.dir).map_err(|cause| StageError::RunFolder {
            path: self.dir.clone(),
            cause,
        })?;
        let version =
            serde_json::to_string_pretty(&version_info(&recipe.path)).expect("JSON serializes");
        for (name, text) in [
            (Self::RECIPE, recipe.resolved_toml()),
            (Self::COMMAND, format!("{command_line}\n")),
            (Self::VERSION, version),
        ] {
            fs::write(self.file(name), text).map_err(self.err(name))?;
        }
        self.write_status(status)?;
        File::create(self.file(Self::LOG)).map_err(self.err(Self::LOG))
    }

    pub fn write_status(&self, status: &RunStatus) -> Result<(), StageError> {
        let text = serde_json::to_string_pretty(status).expect("JSON serializes");
        write_atomic(&self.file(Self::STATUS), text.as_bytes()).map_err(self.err(Self::STATUS))
    }

    /// The run's state; a folder from before `status.json` existed counts as finished when
    /// it has evaluation results.
    pub fn status(&self) -> Result<Option<RunStatus>, StageError> {
        let path = self.file(Self::STATUS);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| self.err(Self::STATUS)(io::Error::other(e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(Self::STATUS)(e)),
        }
    }

    /// The stage folders of the last finished run, by stage.
    pub fn stage_dirs(&self) -> Result<BTreeMap<StageKind, PathBuf>, StageError> {
        let text = fs::read_to_string(self.file(Self::STAGES)).map_err(self.err(Self::STAGES))?;
        let stages: StagesFile =
            serde_json::from_str(&text).map_err(|e| self.err(Self::STAGES)(io::Error::other(e)))?;
        Ok(stages
            .stages
            .into_iter()
            .filter_map(|(name, s)| Some((StageKind::from_name(&name)?, s.dir)))
            .collect())
    }

    /// Points at the stage folders a finished run used. Written only when every stage is
    /// done, so a failed run never clobbers the pointers of the last good run.
    pub fn write_stage_dirs(&self, stages: &[StageRecord]) -> Result<(), StageError> {
        let file = StagesFile {
            stages: stages
                .iter()
                .map(|s| {
                    let dir = s.dir.canonicalize().unwrap_or_else(|_| s.dir.clone());
                    (
                        s.stage.clone(),
                        StagePointer {
                            dir,
                            reused: s.reused,
                        },
                    )
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).expect("JSON serializes");
        write_atomic(&self.file(Self::STAGES), text.as_bytes()).map_err(self.err(Self::STAGES))
    }

    /// Copies a stage's output file into the run folder under the same name.
    /// Copies a stage's file `name` into the run folder as `as_name`.
    pub fn copy_in(&self, stage_dir: &Path, name: &str, as_name: &str) -> Result<(), StageError> {
        fs::copy(stage_dir.join(name), self.file(as_name))
            .map(drop)
            .map_err(self.err(as_name))
    }

    /// The evaluation results of the last epoch, when the run evaluated.
    pub fn eval_metrics(&self) -> Result<Option<EvalMetrics>, StageError> {
        self.read_json(Self::EVAL_METRICS)
    }

    /// The last epoch's evaluation on the second validation set, when there is one.
    pub fn second_val_metrics(&self) -> Result<Option<EvalMetrics>, StageError> {
        self.read_json(Self::SECOND_VAL_METRICS)
    }

    /// The ensemble's evaluation (`eval.ensemble`: this run's predictions averaged with the
    /// members'), when the recipe names one and the run evaluated.
    pub fn ensemble_metrics(&self) -> Result<Option<EvalMetrics>, StageError> {
        self.read_json(&format!("{}/{}", Self::ENSEMBLE, Self::EVAL_METRICS))
    }

    /// The best epoch on the holdout, when the run had one and evaluated.
    pub fn best_epoch(&self) -> Result<Option<BestEpoch>, StageError> {
        self.read_json(Self::BEST_EPOCH)
    }

    /// The best epoch's evaluation on the validation split.
    pub fn best_metrics(&self) -> Result<Option<EvalMetrics>, StageError> {
        self.read_json(Self::BEST_METRICS)
    }

    /// The best epoch's evaluation on the second validation set.
    pub fn best_second_val_metrics(&self) -> Result<Option<EvalMetrics>, StageError> {
        self.read_json(Self::BEST_SECOND_VAL_METRICS)
    }

    /// The score stage's summary, when the run scored.
    pub fn score_summary(&self) -> Result<Option<ScoreSummary>, StageError> {
        self.read_json(Self::SCORE_SUMMARY)
    }

    /// Images the training saw (steps × global batch, from the last line of its metrics),
    /// when the run trained.
    pub fn images_seen(&self) -> Result<Option<u64>, StageError> {
        let path = self.file(Self::TRAIN_METRICS);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(Self::TRAIN_METRICS)(e)),
        };
        let last = text.lines().rev().find_map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).ok()?;
            record["images"].as_u64()
        });
        Ok(last)
    }

    /// The JSON file `name` of the folder, `None` when it is not there.
    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StageError> {
        match fs::read_to_string(self.file(name)) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| self.err(name)(io::Error::other(e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(name)(e)),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StagesFile {
    stages: BTreeMap<String, StagePointer>,
}

#[derive(Serialize, Deserialize)]
struct StagePointer {
    dir: PathBuf,
    reused: bool,
}

/// Writes through a temporary file and a rename, so readers see the old or the new content.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// `version.json`: what made this run.
#[derive(Debug, Serialize)]
struct VersionInfo {
    websieve: &'static str,
    /// The websieve commit the binary was built from (`-dirty` with uncommitted changes).
    websieve_commit: Option<&'static str>,
    recipe: PathBuf,
    /// HEAD of the repository holding the recipe file.
    recipe_repository_head: Option<String>,
    /// The recipe file in its repository: committed, modified, untracked, or outside git.
    recipe_git_state: RecipeGitState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum RecipeGitState {
    Committed,
    Modified,
    Untracked,
    #[serde(rename = "not in git")]
    NotInGit,
}

fn version_info(recipe: &Path) -> VersionInfo {
    let (head, state) = recipe_git_state(recipe);
    VersionInfo {
        websieve: env!("CARGO_PKG_VERSION"),
        websieve_commit: option_env!("WEBSIEVE_COMMIT"),
        recipe: recipe.to_path_buf(),
        recipe_repository_head: head,
        recipe_git_state: state,
    }
}

/// The HEAD of the repository holding `recipe`, and the file's state in it. Only the recipe
/// file itself counts: a run's recipe is "committed" even when other files are modified.
fn recipe_git_state(recipe: &Path) -> (Option<String>, RecipeGitState) {
    let dir = recipe
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let git = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse".as_ref(), "HEAD".as_ref()]) else {
        return (None, RecipeGitState::NotInGit);
    };
    let file = recipe.file_name().unwrap_or_default();
    let porcelain = git(&[
        "status".as_ref(),
        "--porcelain".as_ref(),
        "--".as_ref(),
        file,
    ]);
    let state = match porcelain.as_deref() {
        None => RecipeGitState::NotInGit,
        Some("") => RecipeGitState::Committed,
        Some(s) if s.starts_with("??") => RecipeGitState::Untracked,
        Some(_) => RecipeGitState::Modified,
    };
    (Some(head), state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn the_recipe_file_state_is_its_own_not_the_repositorys() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        git(repo, &["init", "-q"]);
        std::fs::write(repo.join("a.toml"), "x = 1\n").unwrap();
        git(repo, &["add", "a.toml"]);
        git(repo, &["commit", "-q", "-m", "a"]);
        std::fs::write(repo.join("b.toml"), "x = 2\n").unwrap();
        let (head, state) = recipe_git_state(&repo.join("a.toml"));
        assert_eq!(head.map(|h| h.len()), Some(40));
        assert_eq!(
            state,
            RecipeGitState::Committed,
            "b.toml's state is not a.toml's"
        );
        assert_eq!(
            recipe_git_state(&repo.join("b.toml")).1,
            RecipeGitState::Untracked
        );
        std::fs::write(repo.join("a.toml"), "x = 3\n").unwrap();
        assert_eq!(
            recipe_git_state(&repo.join("a.toml")).1,
            RecipeGitState::Modified
        );
        let outside = tempfile::tempdir().unwrap();
        assert_eq!(
            recipe_git_state(&outside.path().join("c.toml")),
            (None, RecipeGitState::NotInGit)
        );
    }

    #[test]
    fn a_second_lock_on_a_run_folder_is_refused_naming_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunFolder::new(tmp.path().join("x"));
        let held = run.lock().unwrap();
        let err = run.lock().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("in use by another runner")
                && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        run.lock().unwrap();
    }

    #[test]
    fn a_different_recipe_moves_the_earlier_run_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunFolder::new(tmp.path().join("x"));
        assert_eq!(run.keep_other_run("a = 1\n").unwrap(), None, "no run yet");
        std::fs::create_dir_all(run.dir()).unwrap();
        std::fs::write(run.file(RunFolder::RECIPE), "a = 1\n").unwrap();
        assert_eq!(run.keep_other_run("a = 1\n").unwrap(), None, "same recipe");
        let kept = run.keep_other_run("a = 2\n").unwrap().unwrap();
        assert_eq!(kept, tmp.path().join("x.1"));
        assert_eq!(
            std::fs::read_to_string(kept.join(RunFolder::RECIPE)).unwrap(),
            "a = 1\n"
        );
        std::fs::create_dir_all(run.dir()).unwrap();
        std::fs::write(run.file(RunFolder::RECIPE), "a = 2\n").unwrap();
        assert_eq!(
            run.keep_other_run("a = 3\n").unwrap(),
            Some(tmp.path().join("x.2"))
        );
    }
}
