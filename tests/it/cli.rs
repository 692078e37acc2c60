//! Driving the `runner` binary, for the tests of the stage graph (`stages`) and of faults
//! (`faults`): each test's cache and run folders live in its own temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `runner` command in `dir`'s own cache and run folders, warnings only on stderr.
pub fn runner_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args)
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("--runs")
        .arg(dir.join("runs"))
        .env("WEBSIEVE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `runner` in `dir` (see [`runner_command`]).
pub fn runner(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    runner_command(dir, args, env).output().unwrap()
}

/// Runs `runner` with `args` alone (a command that reads run folders: `report`, `export`),
/// which must succeed; its stdout.
pub fn runner_stdout(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runner {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The run's `stages.json`.
pub fn stages_json(dir: &Path, run: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("runs").join(run).join("stages.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The folder the run used for `stage`.
pub fn stage_dir(dir: &Path, run: &str, stage: &str) -> PathBuf {
    PathBuf::from(
        stages_json(dir, run)["stages"][stage]["dir"]
            .as_str()
            .unwrap(),
    )
}

/// A generated dataset of 10 classes with 10–20 images each and 4 validation images.
pub const TINY: [&str; 6] = [
    "--set",
    "dataset.synthetic.max_per_class=20",
    "--set",
    "dataset.synthetic.min_per_class=10",
    "--set",
    "dataset.synthetic.val_per_class=4",
];

/// LDA, training and evaluation small enough for a test: with [`TINY`], a run takes seconds.
pub const SMALL: [&str; 10] = [
    "--set",
    "lda.topics=8",
    "--set",
    "lda.batch_size=32",
    "--set",
    "train.iterations=6",
    "--set",
    "train.batch_per_device=8",
    "--set",
    "eval.batch_size=16",
];
