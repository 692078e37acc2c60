//! What each stage does: the glue from a recipe's settings and upstream stage folders to the
//! stage modules (`store`, `lda`, `score`, `train`, `eval`).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use candle_core::{DType, Device};

use super::{StageError, StageKind, Workspace};
use crate::loader::{self, LoaderConfig};
use crate::recipe::{LabelParams, Recipe, SamplerKind};
use crate::runtime::{resolve_device, visible_gpu_count, DeviceChoice, RuntimeError, World};
use crate::sample::{Batch, SampleText, Source, Split};
use crate::store::{self, Store};
use crate::text::{DocumentSource, TextError};
use crate::{eval, lda, score, train};

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
/// Every problem is reported at once (a user without the data and without a GPU learns both).
pub(super) fn preflight(recipe: &Recipe, until: StageKind) -> Result<(), StageError> {
    let mut problems = Vec::new();
    if let Some(root) = &recipe.dataset.root {
        if !root.exists() {
            problems.push(format!("dataset.root {} does not exist", root.display()));
        }
    }
    if let Some(truth) = &recipe.clean.truth {
        if until >= StageKind::Score && !truth.is_file() {
            problems.push(format!("clean.truth {} does not exist", truth.display()));
        }
    }
    if until >= StageKind::Train {
        if let Err(e) = train_device_choice(recipe) {
            problems.push(e.to_string());
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(StageError::Preflight {
            run: recipe.name.clone(),
            message: problems.join("; "),
        }),
    }
}

/// The device this process trains and evaluates on, from `train.devices` and the launcher's
/// environment (torchrun, Slurm, or none).
fn train_device_choice(recipe: &Recipe) -> Result<DeviceChoice, RuntimeError> {
    let world = World::from_env()?;
    resolve_device(&recipe.train.devices, &world, visible_gpu_count())
}

fn train_device(recipe: &Recipe) -> Result<Device, RuntimeError> {
    train_device_choice(recipe)?.open()
}

/// A training run's starting weights (`train.init`).
#[derive(Debug, Clone)]
pub(crate) struct InitRef {
    /// Goes into the train stage's key: the init run's train key, or the file's content hash.
    pub key: String,
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
    recipe: &Recipe,
    kind: StageKind,
    upstream: &[(StageKind, PathBuf)],
    init: Option<&InitRef>,
    out: &Path,
    progress: bool,
) -> Result<(), StageError> {
    let dir = |k: StageKind| {
        upstream
            .iter()
            .find(|(u, _)| *u == k)
            .map(|(_, d)| d.as_path())
            .expect("the plan passes every stage a stage reads")
    };
    let result: Result<(), BoxError> = match kind {
        StageKind::Ingest => store::ingest(&recipe.dataset, out, progress)
            .map(drop)
            .map_err(Into::into),
        StageKind::Lda => run_lda(recipe, dir(StageKind::Ingest), out, progress),
        StageKind::Score => run_score(recipe, dir(StageKind::Ingest), dir(StageKind::Lda), out),
        StageKind::Train => {
            let dirs = [StageKind::Ingest, StageKind::Lda, StageKind::Score].map(dir);
            run_train(recipe, dirs, init, out, progress)
        }
        StageKind::Eval => run_eval(
            recipe,
            dir(StageKind::Ingest),
            dir(StageKind::Train),
            out,
            progress,
        ),
    };
    result.map_err(|source| StageError::Failed {
        stage: kind,
        run: recipe.name.clone(),
        source,
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The store as the LDA stage's document source.
struct StoreDocuments<'a>(&'a Store);

impl DocumentSource for StoreDocuments<'_> {
    fn len(&self, split: Split) -> u64 {
        self.0.len(split)
    }

    fn for_each(
        &self,
        split: Split,
        f: &mut dyn FnMut(u64, Source, &SampleText),
    ) -> Result<(), TextError> {
        let source_error = |id: u64, e: &dyn std::fmt::Display| TextError::Source {
            split: split.as_str(),
            id,
            message: e.to_string(),
        };
        let reader = self.0.reader().map_err(|e| source_error(0, &e))?;
        for id in 0..self.0.len(split) {
            let meta = reader.meta(split, id).map_err(|e| source_error(id, &e))?;
            f(id, meta.source, &meta.text);
        }
        Ok(())
    }
}

fn run_lda(recipe: &Recipe, ingest: &Path, out: &Path, progress: bool) -> Result<(), BoxError> {
    let store = Store::open(ingest)?;
    lda::run_stage(
        &StoreDocuments(&store),
        &recipe.text,
        &recipe.lda,
        out,
        progress,
    )?;
    Ok(())
}

fn run_score(recipe: &Recipe, ingest: &Path, lda_dir: &Path, out: &Path) -> Result<(), BoxError> {
    let store = Store::open(ingest)?;
    let topics = lda::read_topics(&lda_dir.join(lda::TOPICS_TRAIN_FILE))?;
    let reader = store.reader()?;
    let (mut labels, mut paths) = (Vec::new(), Vec::new());
    for id in 0..store.len(Split::Train) {
        let meta = reader.meta(Split::Train, id)?;
        labels.push(meta.label);
        paths.push(meta.path);
    }
    let class_names = store.header().class_names();
    let image = |id: u64| store.reader().ok()?.image(Split::Train, id).ok();
    let inputs = score::ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &paths,
        class_names: &class_names,
        image: Some(&image),
    };
    // A generated dataset knows its noise: use its truth file unless the recipe names one.
    let mut clean = recipe.clean.clone();
    let generated_truth = ingest.join(SYNTHETIC_TRUTH_FILE);
    if clean.truth.is_none() && generated_truth.is_file() {
        clean.truth = Some(generated_truth);
    }
    let summary = score::run_stage(&inputs, &clean, &recipe.labels, out)?;
    tracing::info!(samples = summary.samples, kept = summary.kept, "scored");
    if let Some(noise) = &summary.noise {
        tracing::info!(
            auc = noise.auc,
            precision = noise.precision,
            recall = noise.recall,
            "noise detection against the truth file"
        );
    }
    Ok(())
}

/// The truth file the synthetic dataset writes beside its store.
const SYNTHETIC_TRUTH_FILE: &str = "truth.tsv";

/// What a finished train stage records for evaluation and `init`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModelShape {
    num_classes: usize,
    topics: usize,
}

const MODEL_SHAPE_FILE: &str = "model.json";

fn run_train(
    recipe: &Recipe,
    [ingest, lda_dir, score_dir]: [&Path; 3],
    init: Option<&InitRef>,
    out: &Path,
    progress: bool,
) -> Result<(), BoxError> {
    let store = Arc::new(Store::open(ingest)?);
    let table = score::ScoreTable::load(score_dir)?;
    let kept: Vec<&score::ScoreRow> = table.rows().iter().filter(|r| r.kept).collect();
    let samples: Vec<(u64, u32)> = kept.iter().map(|r| (r.id, r.label)).collect();
    let soft = matches!(recipe.labels, LabelParams::Soft { .. });
    let weights = (recipe.train.sampler == SamplerKind::Weighted)
        .then(|| kept.iter().map(|r| r.lambda as f32).collect::<Vec<_>>());
    let topics = if recipe.model.regression {
        lda::read_topics(&lda_dir.join(lda::TOPICS_TRAIN_FILE))?
    } else {
        Vec::new()
    };
    let shape = ModelShape {
        num_classes: store.header().classes.len(),
        topics: topics.first().map_or(0, Vec::len),
    };
    let cfg = LoaderConfig {
        batch_size: recipe.train.batch_per_device,
        crop: recipe.train.augmentation.crop,
        mirror: recipe.train.augmentation.mirror,
        mean_rgb: recipe.train.augmentation.mean_rgb,
        sampler: recipe.train.sampler,
        workers: recipe.train.workers,
        seed: recipe.train.seed,
        precision: recipe.train.precision,
    };
    let mut batches = |start: u64| -> Result<train::BatchStream<'static>, BoxError> {
        let loader =
            loader::train_batches(store.clone(), samples.clone(), weights.clone(), &cfg, start)?;
        Ok(Box::new(loader.map(|b| b.map_err(BoxError::from))))
    };
    let lambda = |id: u64| match soft {
        true => table.get(id).map(|r| r.lambda as f32),
        false => Some(1.0),
    };
    let topic = |id: u64| topics.get(id as usize).cloned();
    let targets = train::SampleTargets {
        lambda: &lambda,
        topics: &topic,
    };
    let job = train::TrainJob {
        model: &recipe.model,
        train: &recipe.train,
        num_classes: shape.num_classes,
        topics: shape.topics,
        iterations: train::iterations(recipe.train.length, samples.len() as u64, cfg.batch_size),
        out_dir: out,
        init: init.map(|i| i.checkpoint.as_path()),
        resume: true,
        stop_after: None,
        progress,
    };
    let summary = train::train(&job, &mut batches, &targets, &train_device(recipe)?)?;
    let final_path = final_checkpoint(out);
    if final_path.exists() {
        std::fs::remove_file(&final_path)?;
    }
    std::fs::hard_link(&summary.final_checkpoint, &final_path)
        .or_else(|_| std::fs::copy(&summary.final_checkpoint, &final_path).map(drop))?;
    std::fs::write(
        out.join(MODEL_SHAPE_FILE),
        serde_json::to_string_pretty(&shape)?,
    )?;
    Ok(())
}

fn run_eval(
    recipe: &Recipe,
    ingest: &Path,
    train_dir: &Path,
    out: &Path,
    progress: bool,
) -> Result<(), BoxError> {
    let store = Arc::new(Store::open(ingest)?);
    let val = store.len(Split::Val);
    if val == 0 {
        return Err(format!(
            "the store {} has no validation samples (dataset.val = false?)",
            ingest.display()
        )
        .into());
    }
    let shape: ModelShape =
        serde_json::from_str(&std::fs::read_to_string(train_dir.join(MODEL_SHAPE_FILE))?)?;
    let device = train_device(recipe)?;
    let model = train::load_for_eval(
        &final_checkpoint(train_dir),
        &recipe.model,
        shape.num_classes,
        shape.topics,
        &device,
    )?;
    let crop = recipe.train.augmentation.crop;
    let resize = store.header().resize;
    let crops = loader::crop_boxes(recipe.eval.crops, resize, resize, crop).len();
    let batches = loader::eval_batches(
        store.clone(),
        Split::Val,
        &loader::EvalConfig {
            crop,
            crops: recipe.eval.crops,
            mean_rgb: recipe.train.augmentation.mean_rgb,
            samples_per_batch: recipe.eval.batch_size,
            workers: recipe.train.workers,
            precision: recipe.train.precision,
        },
    )?;
    let predictions = eval::evaluate(
        batches,
        shape.num_classes,
        crops,
        val,
        progress,
        |batch: &Batch| {
            let images = batch.images(&device)?;
            let logits = model
                .forward_eval(&images)?
                .classes
                .ok_or("the model has no classification head")?;
            Ok::<_, BoxError>(
                logits
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            )
        },
    )?;
    let class_names = store.header().class_names();
    let metrics = eval::metrics(&predictions, &class_names)?;
    eval::write_outputs(out, &predictions, &metrics, &class_names)?;
    Ok(())
}
