//! The content-addressed stage cache: `<cache>/<stage>/<key>/` holds a finished stage's
//! output, where `key` hashes everything the stage read. A stage builds in
//! `<key>.partial/` and is renamed into place only on success, so a crashed stage never
//! looks complete; a file lock on `<key>.lock` makes a second runner wait for the first and
//! then reuse its result.
//!
//! Failpoint: [`ABORT_BEFORE_RENAME_ENV`](crate::failpoint::ABORT_BEFORE_RENAME_ENV) aborts
//! between a stage's last write and its rename into place (see [`crate::failpoint`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::failpoint;

/// Errors of the cache itself (a stage's own failure passes through in the builder's type).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("stage cache {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("stage cache {} is not writable ({cause}): make it writable, or give runner another --cache folder", path.display())]
    NotWritable { path: PathBuf, cause: io::Error },
    #[error("stage cache {}: the stage finished without writing {missing}", dir.display())]
    MissingOutput { dir: PathBuf, missing: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |cause| match cause.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            CacheError::NotWritable {
                path: path.to_path_buf(),
                cause,
            }
        }
        _ => CacheError::Io {
            path: path.to_path_buf(),
            cause,
        },
    }
}

/// How a stage treats what a killed earlier attempt left in its partial folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Start from an empty folder.
    Discard,
    /// Keep it: the stage resumes (ingest, training).
    Resume,
}

/// What `Cache::ensure` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The output was already complete.
    Hit,
    /// This call built it.
    Built,
}

/// The file in each stage folder that lists the inputs its key hashes.
pub const STAGE_MANIFEST: &str = "stage.json";

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a finished stage output.
    pub fn dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    /// The folder an unfinished build of that output works in.
    pub fn partial_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(format!("{key}.partial"))
    }

    pub fn is_complete(&self, stage: &str, key: &str) -> bool {
        self.dir(stage, key).is_dir()
    }

    /// Returns the finished output folder of `stage`/`key`, building it with `build` (which
    /// writes into the partial folder it is given) when it is not there yet. `inputs` is
    /// saved beside the output as `stage.json`, for people asking what made it. The rename
    /// into place commits the whole folder, and only once every file of `outputs` is in it.
    pub fn ensure<E: From<CacheError>>(
        &self,
        stage: &str,
        key: &str,
        inputs: &serde_json::Value,
        partial: Partial,
        outputs: &[&str],
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(PathBuf, Outcome), E> {
        let done = self.dir(stage, key);
        if done.is_dir() {
            return Ok((done, Outcome::Hit));
        }
        let stage_root = self.root.join(stage);
        fs::create_dir_all(&stage_root).map_err(io_err(&stage_root))?;
        let _lock = self.lock(stage, key)?;
        if done.is_dir() {
            // Another runner finished it while we waited for the lock.
            return Ok((done, Outcome::Hit));
        }
        let work = self.partial_dir(stage, key);
        if partial == Partial::Discard && work.exists() {
            fs::remove_dir_all(&work).map_err(io_err(&work))?;
        }
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let manifest = work.join(STAGE_MANIFEST);
        let text = serde_json::to_string_pretty(inputs).expect("JSON values serialize");
        fs::write(&manifest, text).map_err(io_err(&manifest))?;
        build(&work)?;
        if let Some(missing) = outputs.iter().find(|name| !work.join(name).exists()) {
            return Err(CacheError::MissingOutput {
                dir: work,
                missing: missing.to_string(),
            }
            .into());
        }
        failpoint::abort_if(failpoint::ABORT_BEFORE_RENAME_ENV, stage);
        fs::rename(&work, &done).map_err(io_err(&done))?;
        if let Ok(dir) = File::open(&stage_root) {
            // Make the rename durable before anyone is told the stage is done.
            let _ = dir.sync_all();
        }
        Ok((done, Outcome::Built))
    }

    /// Removes the finished output of `stage`/`key`, so that the next `ensure` builds it
    /// again (`runner --rebuild`). Taken under the stage's lock: no runner is building it
    /// meanwhile.
    pub fn discard(&self, stage: &str, key: &str) -> Result<(), CacheError> {
        let done = self.dir(stage, key);
        if !done.exists() {
            return Ok(());
        }
        let _lock = self.lock(stage, key)?;
        // Renamed first, so that the output vanishes at once rather than file by file.
        let trash = self.root.join(stage).join(format!("{key}.discarded"));
        if trash.exists() {
            fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        }
        fs::rename(&done, &trash).map_err(io_err(&done))?;
        fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    /// An exclusive lock on `stage`/`key`, waiting (and saying so) while another process
    /// holds it. Released when the returned file is dropped, or by the OS if we die.
    fn lock(&self, stage: &str, key: &str) -> Result<File, CacheError> {
        let path = self.root.join(stage).join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    stage,
                    key,
                    "another runner is building this stage; waiting for it"
                );
                file.lock().map_err(io_err(&path))?;
                Ok(file)
            }
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A builder's error type, as the stage layer's own: a build's failure, or the cache's.
    #[derive(Debug)]
    enum TestError {
        Build(String),
        Cache(CacheError),
    }

    impl From<io::Error> for TestError {
        fn from(e: io::Error) -> Self {
            TestError::Build(e.to_string())
        }
    }

    impl From<CacheError> for TestError {
        fn from(e: CacheError) -> Self {
            TestError::Cache(e)
        }
    }

    type R = Result<(), TestError>;

    #[test]
    fn second_call_is_a_hit_and_does_not_build() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        let inputs = serde_json::json!({"x": 1});
        let (dir, outcome) = cache
            .ensure("s", "k", &inputs, Partial::Discard, &[], |d| -> R {
                Ok(fs::write(d.join("out"), "1")?)
            })
            .unwrap();
        assert_eq!(outcome, Outcome::Built);
        assert_eq!(fs::read_to_string(dir.join("out")).unwrap(), "1");
        assert!(dir.join("stage.json").is_file());
        let (_, outcome) = cache
            .ensure("s", "k", &inputs, Partial::Discard, &[], |_| -> R {
                panic!("must not rebuild")
            })
            .unwrap();
        assert_eq!(outcome, Outcome::Hit);
    }

    #[test]
    fn a_failed_build_is_not_complete_and_is_rebuilt_from_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        let inputs = serde_json::json!({});
        let err = cache.ensure("s", "k", &inputs, Partial::Discard, &[], |d| -> R {
            fs::write(d.join("half"), "x")?;
            Err(io::Error::other("killed").into())
        });
        assert!(
            matches!(&err, Err(TestError::Build(m)) if m == "killed"),
            "{err:?}"
        );
        assert!(!cache.is_complete("s", "k"));
        let (dir, _) = cache
            .ensure("s", "k", &inputs, Partial::Discard, &[], |d| -> R {
                assert!(!d.join("half").exists(), "a discarding stage starts empty");
                Ok(fs::write(d.join("out"), "2")?)
            })
            .unwrap();
        assert!(!dir.join("half").exists());
    }

    #[test]
    fn a_resuming_stage_sees_what_the_killed_attempt_left() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        let inputs = serde_json::json!({});
        let _ = cache.ensure("s", "k", &inputs, Partial::Resume, &[], |d| -> R {
            fs::write(d.join("progress"), "half")?;
            Err(io::Error::other("killed").into())
        });
        cache
            .ensure("s", "k", &inputs, Partial::Resume, &[], |d| -> R {
                assert_eq!(fs::read_to_string(d.join("progress"))?, "half");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn concurrent_builders_build_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        let builds = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let cache = cache.clone();
                let builds = builds.clone();
                s.spawn(move || {
                    cache
                        .ensure(
                            "s",
                            "k",
                            &serde_json::json!({}),
                            Partial::Discard,
                            &[],
                            |d| -> R {
                                builds.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(50));
                                Ok(fs::write(d.join("out"), "x")?)
                            },
                        )
                        .unwrap();
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_build_that_misses_a_declared_output_is_not_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        let inputs = serde_json::json!({});
        let err = cache
            .ensure(
                "s",
                "k",
                &inputs,
                Partial::Resume,
                &["report.json"],
                |d| -> R { Ok(fs::write(d.join("data"), "x")?) },
            )
            .unwrap_err();
        assert!(
            matches!(&err, TestError::Cache(CacheError::MissingOutput { missing, .. }) if missing == "report.json"),
            "{err:?}"
        );
        assert!(!cache.is_complete("s", "k"));
        let (dir, _) = cache
            .ensure(
                "s",
                "k",
                &inputs,
                Partial::Resume,
                &["report.json"],
                |d| -> R { Ok(fs::write(d.join("report.json"), "{}")?) },
            )
            .unwrap();
        assert!(dir.join("data").is_file() && dir.join("report.json").is_file());
    }
}
