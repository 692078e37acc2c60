//! Fault injection through the `runner` binary: runs killed as by `kill -9` at each stage
//! boundary (the failpoints of `websieve::failpoint`), a full disk, a cache folder it cannot
//! write, a damaged checkpoint. Every case ends as an uninterrupted run does (the stage folders
//! equal byte for byte, timings aside) or with a clear error and nothing lost.
//!
//! To add a case: cause the fault (a failpoint's variable, or damage done to a folder between
//! two runs), check how the run ends with [`killed`] or [`failed_saying`], then rerun and
//! compare with an uninterrupted run ([`reference`], [`assert_same_outputs`]).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Output;

use tempfile::TempDir;
use websieve::failpoint::{
    ABORT_AFTER_COMMITS_ENV, ABORT_AFTER_HEADER_ENV, ABORT_BEFORE_RENAME_ENV,
    DISK_FULL_AFTER_COMMITS_ENV, FREE_BYTES_ENV,
};

use websieve::sample::Split;
use websieve::store::{Store, STORE_DIR};

use crate::cli::{runner, runner_command, stage_dir, stages_json, SMALL, TINY};

const RUN: &str = "quickstart";

/// The quickstart recipe on the tiny dataset with small settings, up to `until`.
fn args(until: &str) -> Vec<&str> {
    let mut args = vec!["recipes/quickstart.toml", "--until", until];
    args.extend(TINY);
    args.extend(SMALL);
    args
}

/// A folder with an uninterrupted run up to `until`.
fn reference(until: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(dir.path(), &args(until), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The run died as `kill -9` leaves it: by a signal (the failpoints abort), not an error.
fn killed(out: &Output, failpoint: &str) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{failpoint} did not kill the run: {}",
        stderr(out)
    );
}

/// The run failed with an error that says each of `says`; returns stderr.
fn failed_saying(out: &Output, says: &[&str]) -> String {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for s in says {
        assert!(stderr.contains(s), "{s:?} not in: {stderr}");
    }
    stderr
}

/// The finished folders of `stage` in `dir`'s cache (its partial folders left out).
fn finished(dir: &Path, stage: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("cache").join(stage)) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.extension().is_none())
        .map(|p| p.display().to_string())
        .collect()
}

/// Timings differ from run to run: JSON keys of seconds and rates are left out.
fn is_timing(key: &str) -> bool {
    key.ends_with("seconds") || key.ends_with("per_second") || key.ends_with("per_s")
}

fn without_timings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !is_timing(k));
            map.values_mut().for_each(without_timings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_timings),
        _ => {}
    }
}

/// A file's bytes as compared: JSON and JSON lines without timings.
fn comparable(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let json_lines = |text: &str| -> String {
        text.lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                without_timings(&mut value);
                value.to_string() + "\n"
            })
            .collect()
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => json_lines(&String::from_utf8(bytes).unwrap()).into_bytes(),
        Some("json") => {
            let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            without_timings(&mut value);
            value.to_string().into_bytes()
        }
        _ => bytes,
    }
}

/// A store's header and records: LMDB's files are not compared, since a resumed ingest lays
/// out the same records in other pages (its commits differ).
fn store_records(stage_dir: &Path) -> Vec<u8> {
    let store = Store::open(stage_dir).unwrap();
    let reader = store.reader().unwrap();
    let mut records = serde_json::to_vec(store.header()).unwrap();
    for split in [Split::Train, Split::Val] {
        for id in 0..store.len(split) {
            records.extend(serde_json::to_vec(&reader.meta(split, id).unwrap()).unwrap());
            records.extend(reader.image(split, id).unwrap().into_raw());
        }
    }
    records
}

/// Every file of the run's stage folders, by `<stage>/<key>/<path>`, as compared; a store as
/// its records ([`store_records`]).
fn stage_outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let stages = stages_json(dir, RUN);
    let mut files = BTreeMap::new();
    for stage in stages["stages"].as_object().unwrap().keys() {
        let stage_dir = stage_dir(dir, RUN, stage);
        let name = format!(
            "{stage}/{}",
            stage_dir.file_name().unwrap().to_string_lossy()
        );
        let mut pending = vec![stage_dir.clone()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap() == STORE_DIR {
                    files.insert(format!("{name}/{STORE_DIR}"), store_records(&stage_dir));
                } else if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&stage_dir).unwrap().display();
                    files.insert(format!("{name}/{relative}"), comparable(&path));
                }
            }
        }
    }
    files
}

/// `dir`'s run left the same stage folders as the uninterrupted run in `reference`.
fn assert_same_outputs(reference: &Path, dir: &Path) {
    let (expected, found) = (stage_outputs(reference), stage_outputs(dir));
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        found.keys().collect::<Vec<_>>()
    );
    for (file, bytes) in &expected {
        assert!(&found[file] == bytes, "{file} differs");
    }
}

/// A run killed at every stage boundary in turn, each rerun going on from what the killed one
/// left, ends with the stage folders of a run never interrupted.
#[test]
fn a_run_killed_at_each_stage_boundary_ends_as_an_uninterrupted_run() {
    let reference = reference("eval");
    let dir = tempfile::tempdir().unwrap();
    let kills = [
        // Ingest: records committed, no header; then header, no report.
        (ABORT_AFTER_COMMITS_ENV, "1", "ingest"),
        (ABORT_AFTER_HEADER_ENV, "1", "ingest"),
        // Each stage between its last write and the rename into place.
        (ABORT_BEFORE_RENAME_ENV, "ingest", "ingest"),
        (ABORT_BEFORE_RENAME_ENV, "lda", "lda"),
        (ABORT_BEFORE_RENAME_ENV, "score", "score"),
        (ABORT_BEFORE_RENAME_ENV, "train", "train"),
        (ABORT_BEFORE_RENAME_ENV, "eval", "eval"),
    ];
    for (failpoint, value, stage) in kills {
        let out = runner(dir.path(), &args("eval"), &[(failpoint, value)]);
        killed(&out, &format!("{failpoint}={value}"));
        assert!(
            finished(dir.path(), stage).is_empty(),
            "{failpoint}={value}: {stage} looks finished"
        );
    }
    let out = runner(dir.path(), &args("eval"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_outputs(reference.path(), dir.path());
}

/// Killed once the store's header is committed but before its report is written: the store
/// is finished, the stage is not; the rerun writes the report and commits the stage.
#[test]
fn a_kill_between_the_store_header_and_the_ingest_report_is_finished_by_the_rerun() {
    let reference = reference("ingest");
    let dir = tempfile::tempdir().unwrap();
    let out = runner(
        dir.path(),
        &args("ingest"),
        &[(ABORT_AFTER_HEADER_ENV, "1")],
    );
    killed(&out, ABORT_AFTER_HEADER_ENV);
    let partial = std::fs::read_dir(dir.path().join("cache/ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "partial"))
        .expect("the killed ingest's partial folder");
    websieve::store::Store::open(&partial).expect("the store is finished");
    assert!(!partial.join(websieve::store::REPORT_FILE).exists());

    let out = runner(dir.path(), &args("ingest"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_outputs(reference.path(), dir.path());
}

/// A disk too small for the store is refused before the first write; a disk that fills up
/// mid-way is named instead of LMDB's `EIO`; the rerun, with room, finishes as usual.
#[test]
fn a_full_disk_is_named_with_the_space_the_store_needs_and_the_rerun_finishes() {
    let reference = reference("ingest");
    let dir = tempfile::tempdir().unwrap();
    let out = runner(dir.path(), &args("ingest"), &[(FREE_BYTES_ENV, "1000")]);
    let stderr_text = failed_saying(&out, &["no space left on", "1.00 kB free"]);
    let (before, rest) = stderr_text.trim().split_once(" on ").unwrap();
    let (_mount, after) = rest.split_once(" (").unwrap();
    insta::assert_snapshot!(format!("{before} on <mount> ({after}"));
    assert!(
        !dir.path()
            .join("cache/ingest")
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().path().join("store/data.mdb").exists()),
        "nothing is written to a disk without room"
    );

    let out = runner(
        dir.path(),
        &args("ingest"),
        &[(DISK_FULL_AFTER_COMMITS_ENV, "0")],
    );
    failed_saying(&out, &["no space left on", "the store needs about"]);
    assert!(finished(dir.path(), "ingest").is_empty());

    let out = runner(dir.path(), &args("ingest"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_outputs(reference.path(), dir.path());
}

/// Root writes whatever the modes say: as root, the runs of this test run as `nobody`.
const NOBODY: u32 = 65534;

/// A cache folder the runner cannot write: the stage it would build says so and which folder;
/// the finished stages in it are still read, and once it is writable the run goes on from them.
#[test]
fn a_cache_folder_it_cannot_write_is_named_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let as_root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
    if as_root {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let run = |until| {
        let mut cmd = runner_command(dir.path(), &args(until), &[]);
        if as_root {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        cmd.output().unwrap()
    };
    let out = run("ingest");
    assert!(out.status.success(), "{}", stderr(&out));
    let ingested = stage_outputs(dir.path());

    let cache = dir.path().join("cache");
    let set_mode = |mode| {
        for folder in [cache.clone(), cache.join("ingest")] {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_mode(0o555);
    let out = run("lda");
    let stderr_text = failed_saying(&out, &["is not writable", "--cache"]);
    let root_text = dir.path().display().to_string();
    insta::assert_snapshot!(stderr_text.trim().replace(&root_text, "<tmp>"));
    // What is finished is still there to read.
    let out = run("ingest");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stages_json(dir.path(), RUN)["stages"]["ingest"]["reused"],
        true
    );

    set_mode(0o755);
    let out = run("lda");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stages_json(dir.path(), RUN)["stages"]["ingest"]["reused"],
        true
    );
    let mut after = stage_outputs(dir.path());
    after.retain(|file, _| file.starts_with("ingest/"));
    assert_eq!(ingested, after);
}

/// A truncated newest checkpoint is skipped and training replays from the one before, to the
/// same result; with none intact, the error says so and the stages before are kept.
#[test]
fn a_truncated_checkpoint_is_skipped_and_the_run_ends_as_an_uninterrupted_one() {
    let reference = reference("eval");
    let truncate = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };
    let train_partial = |dir: &Path| {
        let out = runner(dir, &args("eval"), &[(ABORT_BEFORE_RENAME_ENV, "train")]);
        killed(&out, ABORT_BEFORE_RENAME_ENV);
        std::fs::read_dir(dir.join("cache/train"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "partial"))
            .unwrap()
    };
    let checkpoint =
        |partial: &Path, step: u64| websieve::train::checkpoint::path_for(partial, step);

    let dir = tempfile::tempdir().unwrap();
    let partial = train_partial(dir.path());
    truncate(&checkpoint(&partial, 6));
    let out = runner(dir.path(), &args("eval"), &[]);
    let stderr_text = stderr(&out);
    assert!(out.status.success(), "{stderr_text}");
    assert!(
        stderr_text.contains("skipping a damaged checkpoint")
            && stderr_text.contains("checkpoint-00000006.safetensors"),
        "{stderr_text}"
    );
    assert_same_outputs(reference.path(), dir.path());

    let dir = tempfile::tempdir().unwrap();
    let partial = train_partial(dir.path());
    for step in [0, 6] {
        truncate(&checkpoint(&partial, step));
    }
    let out = runner(dir.path(), &args("eval"), &[]);
    failed_saying(&out, &["no intact checkpoint", "remove them"]);
    for stage in ["ingest", "lda", "score"] {
        assert_eq!(finished(dir.path(), stage).len(), 1, "{stage} was lost");
    }
    for step in [0, 6] {
        std::fs::remove_file(checkpoint(&partial, step)).unwrap();
    }
    let out = runner(dir.path(), &args("eval"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_outputs(reference.path(), dir.path());
}
