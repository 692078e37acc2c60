//! WebVision 1.0's data path at full scale on generated data (`runner bench scale`): the
//! synthetic dataset in WebVision's shape (`dataset.synthetic.train_samples`), then ingest →
//! lda → score and the train stage's sampler setup, each stage in a child process so that its
//! own wall time, CPU time and peak resident memory are measured.
//!
//! In: [`ScaleSettings`] (a recipe, the training-sample count, a work folder). Out: per stage
//! a [`Usage`] (`wait4` on the child: `ru_utime + ru_stime`, `ru_maxrss`; its anonymous memory
//! sampled from `/proc`), and in the child a one-line outcome. The stages run through the pipeline's own builders
//! ([`crate::stage::spec`]), into `<work>/n<samples>/{ingest,lda,score}`; the generated
//! dataset lives in the ingest folder (where the ingest stage generates it) and is reused by
//! later calls with the same settings.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::BenchError;
use crate::loader::LoaderConfig;
use crate::recipe::{self, Recipe};
use crate::stage::stages::{spec, BuildContext, TrainData};
use crate::stage::StageKind;

/// A stage of the measurement, each run in its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleStage {
    /// The synthetic dataset: lists, page files, images.
    Generate,
    Ingest,
    Lda,
    Score,
    /// The train stage up to its first batches: the score table, the kept samples and their
    /// weights, the sampler, two batches.
    Sampler,
}

impl ScaleStage {
    pub const ALL: [ScaleStage; 5] = [
        ScaleStage::Generate,
        ScaleStage::Ingest,
        ScaleStage::Lda,
        ScaleStage::Score,
        ScaleStage::Sampler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScaleStage::Generate => "generate",
            ScaleStage::Ingest => "ingest",
            ScaleStage::Lda => "lda",
            ScaleStage::Score => "score",
            ScaleStage::Sampler => "sampler",
        }
    }

    pub fn from_name(name: &str) -> Option<ScaleStage> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What is measured: the recipe (its `dataset.synthetic` sized for `samples`), where.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// A recipe with `dataset.format = "synthetic"` and `dataset.synthetic.train_samples`
    /// (`recipes/scale.toml`).
    pub recipe: PathBuf,
    /// `--set` overrides, as `runner` takes them.
    pub sets: Vec<String>,
    /// Training samples; the recipe's class-size bounds and validation images per class are
    /// scaled by `samples` / its `train_samples`, so that every size has the same shape.
    pub samples: usize,
    pub work: PathBuf,
}

/// What one child process used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub wall: Duration,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size, bytes (`ru_maxrss`). It counts the pages of files the process
    /// maps, as LMDB maps its store: the store's pages read are resident until the kernel
    /// reclaims them, which it can at any time (they are clean copies of the file).
    pub max_rss: u64,
    /// Peak anonymous resident memory, bytes (`RssAnon`, sampled): the memory the process
    /// itself holds.
    pub max_anon: u64,
}

impl ScaleSettings {
    /// The recipe for this size.
    pub fn recipe(&self) -> Result<Recipe, BenchError> {
        let patterns = [self.recipe.display().to_string()];
        let mut recipes = recipe::load(&patterns, &self.sets)?;
        let mut recipe = recipes
            .pop()
            .ok_or_else(|| BenchError::Scale(format!("{}: no recipe", self.recipe.display())))?;
        let synthetic = &mut recipe.dataset.synthetic;
        let Some(full) = synthetic.train_samples else {
            return Err(BenchError::Scale(format!(
                "{}: needs dataset.format = \"synthetic\" with dataset.synthetic.train_samples",
                self.recipe.display()
            )));
        };
        let scale =
            |n: usize| ((n as f64 * self.samples as f64 / full as f64).round() as usize).max(1);
        synthetic.min_per_class = scale(synthetic.min_per_class);
        synthetic.max_per_class = scale(synthetic.max_per_class).max(synthetic.min_per_class);
        synthetic.val_per_class = scale(synthetic.val_per_class);
        synthetic.train_samples = Some(self.samples);
        Ok(recipe)
    }

    /// `<work>/n<samples>/<stage>`.
    pub fn dir(&self, stage: StageKind) -> PathBuf {
        self.work
            .join(format!("n{}", self.samples))
            .join(stage.name())
    }
}

/// Runs `stage` in this process and says what it made, in one line.
pub fn run_stage(stage: ScaleStage, settings: &ScaleSettings) -> Result<String, BenchError> {
    let recipe = settings.recipe()?;
    let ingest = settings.dir(StageKind::Ingest);
    let progress = std::io::stderr().is_terminal();
    match stage {
        ScaleStage::Generate => {
            std::fs::create_dir_all(&ingest).map_err(BenchError::io(&ingest))?;
            let generated =
                crate::dataset::synthetic::generate(&recipe.dataset.synthetic, &ingest)?;
            Ok(format!("dataset in {}", generated.root.display()))
        }
        ScaleStage::Ingest => {
            remove(&ingest.join(crate::store::STORE_DIR))?;
            build(&recipe, StageKind::Ingest, &[], &ingest, progress)?;
            let store = crate::store::Store::open(&ingest)?;
            Ok(format!(
                "{} train + {} val images stored",
                store.len(crate::sample::Split::Train),
                store.len(crate::sample::Split::Val)
            ))
        }
        ScaleStage::Lda | ScaleStage::Score => {
            let (kind, reads) = match stage {
                ScaleStage::Lda => (StageKind::Lda, &[StageKind::Ingest][..]),
                _ => (StageKind::Score, &[StageKind::Ingest, StageKind::Lda][..]),
            };
            let out = settings.dir(kind);
            remove(&out)?;
            let upstream: Vec<(StageKind, PathBuf)> =
                reads.iter().map(|&k| (k, settings.dir(k))).collect();
            build(&recipe, kind, &upstream, &out, progress)?;
            let summary = std::fs::read_to_string(out.join("summary.json"))
                .map_err(BenchError::io(out.join("summary.json")))?;
            let summary: serde_json::Value = serde_json::from_str(&summary)
                .map_err(|e| BenchError::Scale(format!("{}: {e}", out.display())))?;
            Ok(match kind {
                StageKind::Lda => format!(
                    "{} topics over {} words, {} documents, {:.0} tokens, {:.0} tokens/s",
                    summary["topics"],
                    summary["vocabulary"],
                    summary["train_docs"],
                    summary["train_tokens"].as_f64().unwrap_or(0.0),
                    summary["tokens_per_second"].as_f64().unwrap_or(0.0)
                ),
                _ => format!(
                    "{} samples, {} kept, noise AUC {}",
                    summary["samples"], summary["kept"], summary["noise"]["auc"]
                ),
            })
        }
        ScaleStage::Sampler => {
            let data = TrainData::load(
                &recipe,
                &ingest,
                &settings.dir(StageKind::Lda),
                &settings.dir(StageKind::Score),
            )
            .map_err(|e| BenchError::Scale(e.to_string()))?;
            let cfg = LoaderConfig::for_training(&recipe.train, recipe.train.batch_per_device);
            let mut loader = data.loader(&cfg, 0)?;
            let mut images = 0;
            for _ in 0..2 {
                let batch = loader
                    .next()
                    .ok_or_else(|| BenchError::Scale("the loader ended early".into()))??;
                images += batch.ids.len();
            }
            Ok(format!(
                "{} of {} samples kept, {:?} sampler, {images} images in 2 batches",
                data.samples.len(),
                data.table.len(),
                recipe.train.sampler
            ))
        }
    }
}

fn remove(dir: &Path) -> Result<(), BenchError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::io(dir)(e)),
        _ => Ok(()),
    }
}

/// Builds stage `kind` of `recipe` into `out` through the pipeline's own builder.
fn build(
    recipe: &Recipe,
    kind: StageKind,
    upstream: &[(StageKind, PathBuf)],
    out: &Path,
    progress: bool,
) -> Result<(), BenchError> {
    std::fs::create_dir_all(out).map_err(BenchError::io(out))?;
    let upstream: BTreeMap<StageKind, PathBuf> = upstream.iter().cloned().collect();
    let cx = BuildContext {
        recipe,
        upstream: &upstream,
        init: None,
        out,
        progress,
        parallel: None,
    };
    (spec(kind).build)(&cx).map_err(|e| BenchError::Scale(format!("{}: {e}", kind.name())))
}

/// How often [`measure`] samples the child's anonymous memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// How often a stage run by [`run_stage_watched`] samples its own anonymous memory: a stage of
/// a small dataset may be over before [`measure`] looks once.
const SELF_SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// The line a child ends its output with: its own peak anonymous memory in bytes.
const PEAK_ANON_LINE: &str = "peak-anon-bytes ";

/// [`run_stage`], with this process's anonymous memory sampled every
/// [`SELF_SAMPLE_EVERY`] meanwhile; its outcome line, then a line with the peak that
/// [`measure`] reads.
pub fn run_stage_watched(
    stage: ScaleStage,
    settings: &ScaleSettings,
) -> Result<String, BenchError> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let sample =
        || std::fs::read_to_string("/proc/self/status").map_or(0, |text| anonymous_bytes(&text));
    let (outcome, peak) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut peak = sample();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(SELF_SAMPLE_EVERY);
                peak = peak.max(sample());
            }
            peak
        });
        let outcome = run_stage(stage, settings);
        let last = sample();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (outcome, watcher.join().unwrap_or(0).max(last))
    });
    Ok(format!("{}\n{PEAK_ANON_LINE}{peak}", outcome?))
}

/// Runs `command` to its end and measures it: its wall time, and from `wait4` its CPU time and
/// peak resident memory; its peak anonymous memory sampled from `/proc/<pid>/status` every
/// [`SAMPLE_EVERY`], or the peak the child reported itself if higher ([`run_stage_watched`]);
/// and what it wrote to standard output. A command that fails is an error
/// with its exit status.
pub fn measure(command: &mut Command) -> Result<(Usage, String), BenchError> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Scale(format!("cannot start {command:?}: {e}")))?;
    // The outcome is a line: read it on a thread so that a full pipe never stalls the child.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut output = String::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_string(&mut output);
        }
        output
    });
    let pid = child.id() as libc::pid_t;
    let status_file = format!("/proc/{pid}/status");
    let mut max_anon = 0u64;
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            max_anon = max_anon.max(anonymous_bytes(&text));
        }
        // SAFETY: waits for our own child; `status` and `usage` are written when it returns it.
        match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, usage.as_mut_ptr()) } {
            0 => std::thread::sleep(SAMPLE_EVERY),
            done if done == pid => break,
            _ => {
                return Err(BenchError::Scale(format!(
                    "wait4 on {command:?}: {}",
                    std::io::Error::last_os_error()
                )))
            }
        }
    }
    let wall = started.elapsed();
    let output = reader.join().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(BenchError::Scale(format!(
            "{command:?} failed (wait status {status})"
        )));
    }
    // SAFETY: wait4 returned the child, so it filled `usage`.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    // A child that watched itself (run_stage_watched) says its own peak on its last line.
    let (output, own_peak) = match output.rsplit_once(PEAK_ANON_LINE) {
        Some((before, peak)) => (before.to_string(), peak.trim().parse().unwrap_or(0)),
        None => (output, 0),
    };
    let usage = Usage {
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        // Linux reports kilobytes.
        max_rss: usage.ru_maxrss as u64 * 1024,
        max_anon: max_anon.max(own_peak),
    };
    Ok((usage, output))
}

/// `RssAnon` of a `/proc/<pid>/status` text, in bytes (0 when it is not there).
fn anonymous_bytes(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
