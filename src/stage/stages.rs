//! One description per stage kind — what it reads, which settings enter its key, which files
//! it must leave, whether it resumes, and how it runs — and the glue from a recipe's settings
//! and upstream stage folders to the stage modules (`store`, `lda`, `score`, `train`,
//! `eval`). The graph, the cache keys, `plan` and execution all read [`spec`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::json;

use super::error::{StageError, StageFailure};
use super::kind::StageKind;
use crate::loader::{self, LoaderConfig};
use crate::model::GoogLeNet;
use crate::recipe::{CleanRule, CropSet, DatasetFormat, Devices, LabelParams, Recipe, SamplerKind};
use crate::runtime::{
    connect_collective, on_thread_ranks, resolve_device, visible_gpu_count, Collective,
    DeviceChoice, RuntimeError, World,
};
use crate::sample::{Batch, SampleText, Source, Split};
use crate::store::{self, Store};
use crate::text::{DocumentSource, TextError};
use crate::{dataset, eval, lda, probe, score, train};

/// Everything a stage's build gets.
pub struct BuildContext<'a> {
    pub recipe: &'a Recipe,
    /// The folders of the stages it reads.
    pub upstream: &'a BTreeMap<StageKind, PathBuf>,
    pub init: Option<&'a InitRef>,
    /// The partial folder to build into.
    pub out: &'a Path,
    pub progress: bool,
    /// Set when this process is one rank of several: the train stage trains data-parallel
    /// with it; only rank 0 writes.
    pub parallel: Option<&'a Parallel>,
}

/// This process's share of a data-parallel run: its device and the collective joining it
/// to the other ranks (connected once per run, before any stage, so that the ranks can agree
/// on the data stages' outcome).
pub struct Parallel {
    pub world: World,
    pub device: Device,
    pub collective: std::cell::RefCell<Box<dyn Collective>>,
}

/// How long a rank waits for the others to reach the rendezvous.
const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl Parallel {
    /// The ranks of the launcher's world (torchrun, Slurm or `runner`'s own workers) on the
    /// devices `recipe` trains on; `None` for a single process.
    pub fn connect(recipe: &Recipe) -> Result<Option<Parallel>, RuntimeError> {
        let world = World::from_env()?;
        if !world.is_distributed() {
            return Ok(None);
        }
        let device = train_device(recipe)?;
        let collective = connect_collective(&world, &device, RENDEZVOUS_TIMEOUT)?;
        Ok(Some(Parallel {
            world,
            device,
            collective: std::cell::RefCell::new(collective),
        }))
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    /// Rank 0's `flags`, on every rank (the others pass anything of the same length).
    pub fn broadcast_flags(&self, flags: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        let tensor = candle_core::Tensor::new(flags, &self.device)?;
        let shared = self.collective.borrow_mut().broadcast(&tensor, 0)?;
        Ok(shared.to_vec1::<f32>()?)
    }
}

/// The processes that train together: the launcher's world size, or for a run `runner`
/// will fan out itself, the GPUs it will use. Enters the train stage's key: the global
/// batch is `batch_per_device` × this, and the summation order of gradients follows it.
pub fn train_world_size(recipe: &Recipe) -> usize {
    match World::from_env() {
        Ok(world) if world.is_distributed() => world.world_size,
        _ => local_workers(recipe),
    }
}

/// How many worker processes `runner` starts on this machine for `recipe`: one per GPU of
/// `train.devices`; one on the CPU.
pub fn local_workers(recipe: &Recipe) -> usize {
    match &recipe.train.devices {
        Devices::Cpu => 1,
        Devices::CudaAll => visible_gpu_count().max(1),
        Devices::Cuda(ids) => ids.len(),
    }
}

impl BuildContext<'_> {
    fn dir(&self, kind: StageKind) -> &Path {
        self.upstream
            .get(&kind)
            .expect("the plan passes every stage it reads")
    }
}

/// What a stage is, for the graph, the cache and the runner.
pub struct StageSpec {
    pub kind: StageKind,
    /// The stages whose output it reads (and whose keys enter its key), where the recipe
    /// runs them.
    pub reads: &'static [StageKind],
    /// Whether a recipe runs the stage at all (the probe runs only for image signals).
    pub runs_for: fn(&Recipe) -> bool,
    /// Keeps what a killed attempt left in its partial folder and goes on from there.
    pub resumes: bool,
    /// Files the finished folder must hold; the rename into place waits for all of them.
    pub outputs: &'static [&'static str],
    /// The recipe's settings that enter the key. Settings that cannot change the output
    /// (loader threads, checkpoint interval, ensemble members) stay out, so changing them
    /// reuses the cache. `init` is the train stage's starting point (see [`InitRef`]).
    pub settings: fn(&Recipe, Option<&InitRef>) -> serde_json::Value,
    /// What the stage reads from outside the cache (the dataset's files), summarised for its
    /// key, so that changed data is never served from the cache.
    pub reads_outside: Option<OutsideInputs>,
    pub build: fn(&BuildContext) -> Result<(), StageFailure>,
    /// Bumped when the output's format or algorithm changes, so old outputs are not reused.
    pub format_version: u32,
}

/// Summarises what a stage reads from outside the cache, for its key.
pub type OutsideInputs = fn(&Recipe) -> Result<serde_json::Value, StageFailure>;

const SPECS: [StageSpec; 6] = [
    StageSpec {
        kind: StageKind::Ingest,
        reads: &[],
        runs_for: |_| true,
        resumes: true,
        outputs: &[store::STORE_DIR, store::REPORT_FILE],
        // A generated dataset's ingest also keeps its truth file (recorded in the store
        // header since then): that enters its key, so that no older store lacking it is reused.
        settings: |r, _| match r.dataset.format {
            DatasetFormat::Synthetic => json!({ "dataset": r.dataset, "truth": store::TRUTH_FILE }),
            _ => json!({ "dataset": r.dataset }),
        },
        reads_outside: Some(dataset_fingerprint),
        build: build_ingest,
        format_version: 1,
    },
    StageSpec {
        kind: StageKind::Lda,
        reads: &[StageKind::Ingest],
        runs_for: |_| true,
        resumes: false,
        outputs: &[lda::TOPICS_TRAIN_FILE, lda::SUMMARY_FILE],
        settings: |r, _| json!({ "text": r.text, "lda": r.lda }),
        reads_outside: None,
        build: build_lda,
        format_version: 1,
    },
    StageSpec {
        kind: StageKind::Probe,
        reads: &[StageKind::Ingest],
        runs_for: |r| r.clean.signals.reads_probe(),
        resumes: true,
        outputs: &[probe::PROBE_FILE, probe::SUMMARY_FILE],
        settings: |r, _| json!({ "probe": r.probe, "model": probe_model(r), "train": probe_train_key(r) }),
        reads_outside: None,
        build: build_probe,
        format_version: 1,
    },
    StageSpec {
        kind: StageKind::Score,
        reads: &[StageKind::Ingest, StageKind::Lda, StageKind::Probe],
        runs_for: |_| true,
        resumes: false,
        outputs: &[score::SCORES_FILE],
        settings: |r, _| json!({ "clean": r.clean, "labels": r.labels }),
        reads_outside: None,
        build: build_score,
        format_version: 1,
    },
    StageSpec {
        kind: StageKind::Train,
        reads: &[StageKind::Ingest, StageKind::Lda, StageKind::Score],
        runs_for: |_| true,
        resumes: true,
        outputs: &[FINAL_CHECKPOINT, MODEL_SHAPE_FILE, train::STEP_METRICS_FILE],
        settings: train_settings,
        reads_outside: None,
        build: build_train,
        format_version: 1,
    },
    StageSpec {
        kind: StageKind::Eval,
        reads: &[StageKind::Ingest, StageKind::Train],
        runs_for: |_| true,
        resumes: false,
        outputs: &[eval::METRICS_FILE, eval::PROBABILITIES_FILE],
        settings: |r, _| json!({ "crops": r.eval.crops, "batch_size": r.eval.batch_size }),
        reads_outside: None,
        build: build_eval,
        format_version: 1,
    },
];

/// The description of `kind`.
pub fn spec(kind: StageKind) -> &'static StageSpec {
    &SPECS[kind as usize]
}

/// The dataset root's [`fingerprint`](crate::dataset::fingerprint); a generated dataset has
/// none (its settings determine it). A root that is not there still plans (`runner plan` on
/// a machine without the data), under a key no build can have made; `preflight` refuses to
/// run it.
fn dataset_fingerprint(recipe: &Recipe) -> Result<serde_json::Value, StageFailure> {
    let of = |root: &Path| -> Result<serde_json::Value, StageFailure> {
        Ok(match root.exists() {
            false => json!("the dataset root does not exist"),
            true => json!(crate::dataset::fingerprint::fingerprint(root)?),
        })
    };
    let mut data = match &recipe.dataset.root {
        Some(root) => of(root)?,
        None => serde_json::Value::Null,
    };
    // The second validation set's images and label file, beside the dataset's (only when
    // there is one: the keys of recipes without it stay as they were).
    if let Some(second) = &recipe.dataset.second_val {
        let labels = match &second.labels {
            Some(labels) => of(labels)?,
            None => serde_json::Value::Null,
        };
        let second = json!({ "images": of(&second.root)?, "labels": labels });
        data = json!({ "dataset": data, "second_val": second });
    }
    Ok(data)
}

fn train_settings(recipe: &Recipe, init: Option<&InitRef>) -> serde_json::Value {
    let mut train = train_key(&recipe.train);
    let map = train.as_object_mut().expect("train params are a table");
    map.insert("init".into(), json!(init.map(|i| &i.key)));
    // How many processes share each global batch changes the summation order.
    let world_size = train_world_size(recipe);
    map.insert("world_size".into(), json!(world_size));
    map.insert(
        "global_batch".into(),
        json!(recipe.train.batch_per_device * world_size),
    );
    json!({ "model": recipe.model, "train": train })
}

/// The settings of `train` that can change a trained network: not the loader's threads or
/// the checkpoint interval, nor which GPUs (only whether GPUs).
fn train_key(train: &crate::recipe::TrainParams) -> serde_json::Value {
    let mut key = serde_json::to_value(train).expect("params serialize");
    let map = key.as_object_mut().expect("train params are a table");
    map.remove("workers");
    map.remove("checkpoint_every");
    map.insert(
        "devices".into(),
        json!(match train.devices {
            Devices::Cpu => "cpu",
            _ => "cuda",
        }),
    );
    key
}

/// The network each probe fold trains: the recipe's, at `probe.width`, classification only.
fn probe_model(recipe: &Recipe) -> crate::recipe::ModelParams {
    crate::recipe::ModelParams {
        width: recipe.probe.width.unwrap_or(recipe.model.width),
        classification: true,
        regression: false,
        ..recipe.model.clone()
    }
}

/// How each probe fold trains: the recipe's optimiser, schedule, batch and augmentation for
/// `probe.epochs`, on a fresh permutation each epoch (the score-driven samplers read what
/// the probe feeds), without holdout or `init`. One process: the probe runs before the ranks
/// of a data-parallel run meet.
fn probe_train(recipe: &Recipe) -> crate::recipe::TrainParams {
    crate::recipe::TrainParams {
        length: crate::recipe::TrainLength::Epochs(recipe.probe.epochs),
        sampler: SamplerKind::Shuffle,
        holdout: None,
        init: None,
        ..recipe.train.clone()
    }
}

fn probe_train_key(recipe: &Recipe) -> serde_json::Value {
    train_key(&probe_train(recipe))
}

/// What must hold before `recipe` starts: its input files exist and its devices are usable.
/// Every problem is reported at once (a user without the data and without a GPU learns both).
pub fn preflight(recipe: &Recipe, until: StageKind) -> Result<(), StageError> {
    let mut problems = Vec::new();
    if let Some(root) = &recipe.dataset.root {
        if !root.exists() {
            problems.push(format!("dataset.root {} does not exist", root.display()));
        }
    }
    if let Some(second) = &recipe.dataset.second_val {
        let labels = second.labels.iter();
        for (key, path) in
            std::iter::once(("root", &second.root)).chain(labels.map(|l| ("labels", l)))
        {
            if !path.exists() {
                problems.push(format!(
                    "dataset.second_val.{key} {} does not exist",
                    path.display()
                ));
            }
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
            problems,
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
pub struct InitRef {
    /// Goes into the train stage's key: the init run's train key, or the file's content hash.
    pub key: String,
    pub checkpoint: PathBuf,
}

/// The checkpoint a finished train stage leaves for `init` and evaluation.
pub const FINAL_CHECKPOINT: &str = "final.safetensors";

/// What a finished train stage records for evaluation and `init`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModelShape {
    num_classes: usize,
    topics: usize,
    /// The best epoch on the holdout, whose weights are in [`train::BEST_CHECKPOINT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    best: Option<train::BestEpoch>,
}

const MODEL_SHAPE_FILE: &str = "model.json";

fn build_ingest(cx: &BuildContext) -> Result<(), StageFailure> {
    store::ingest(&cx.recipe.dataset, cx.out, cx.progress)?;
    Ok(())
}

/// Every sample of `split` in id order, with its metadata; an error with the id it failed at.
fn for_each_meta(
    store: &Store,
    split: Split,
    f: &mut dyn FnMut(u64, store::SampleMeta),
) -> Result<(), (u64, store::StoreError)> {
    let reader = store.reader().map_err(|e| (0, e))?;
    for id in 0..store.len(split) {
        f(id, reader.meta(split, id).map_err(|e| (id, e))?);
        if (id + 1) % RELEASE_MAPPED_EVERY == 0 {
            store.release_mapped_pages();
        }
    }
    store.release_mapped_pages();
    Ok(())
}

/// Samples between [`Store::release_mapped_pages`] calls of a pass over the store's metadata:
/// at WebVision's 2.5 kB of metadata a sample, about 160 MB of mapped pages.
const RELEASE_MAPPED_EVERY: u64 = 65_536;

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
        for_each_meta(self.0, split, &mut |id, meta| {
            f(id, meta.source, &meta.text)
        })
        .map_err(|(id, e)| TextError::Source {
            split: split.as_str(),
            id,
            message: e.to_string(),
        })
    }
}

/// The store as the score stage's paths.
struct StorePaths<'a>(&'a Store);

impl score::SamplePaths for StorePaths<'_> {
    fn for_each_path(&self, f: &mut dyn FnMut(u64, &str)) -> Result<(), score::ScoreError> {
        for_each_meta(self.0, Split::Train, &mut |id, meta| f(id, &meta.path)).map_err(|(id, e)| {
            score::ScoreError::Path {
                id,
                message: e.to_string(),
            }
        })
    }
}

fn build_lda(cx: &BuildContext) -> Result<(), StageFailure> {
    let store = Store::open(cx.dir(StageKind::Ingest))?;
    let r = cx.recipe;
    lda::run_stage(
        &StoreDocuments(&store),
        &r.text,
        &r.lda,
        cx.out,
        cx.progress,
    )?;
    Ok(())
}

/// Settings of `recipe` read by `stage` that act on the text score or the topic vectors.
fn text_settings(recipe: &Recipe, stage: StageKind) -> Vec<&'static str> {
    let mut settings = Vec::new();
    // With image signals the score has evidence besides the text.
    let text_only = recipe.clean.signals.is_text_only();
    if stage == StageKind::Score && text_only {
        if matches!(
            recipe.clean.rule,
            CleanRule::Threshold(_) | CleanRule::Fraction(_)
        ) {
            settings.push("clean.rule");
        }
        if matches!(recipe.labels, LabelParams::Soft { .. }) {
            settings.push("labels.mode = \"soft\"");
        }
    }
    if stage == StageKind::Train {
        if recipe.model.regression {
            settings.push("the regression head");
        }
        if text_only && matches!(recipe.train.sampler, SamplerKind::Curriculum { .. }) {
            settings.push("train.sampler = \"curriculum\"");
        }
    }
    settings
}

/// Refuses the settings of `cx.recipe` read by `stage` that act on the text score when the
/// lda stage found no page text (a dataset without any).
fn refuse_text_settings_without_text(
    cx: &BuildContext,
    stage: StageKind,
) -> Result<(), StageFailure> {
    let settings = text_settings(cx.recipe, stage);
    if settings.is_empty() {
        return Ok(());
    }
    let path = cx.dir(StageKind::Lda).join(lda::SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(StageFailure::io(&path))?;
    let summary: serde_json::Value =
        serde_json::from_str(&text).map_err(|cause| StageFailure::Json {
            path: path.clone(),
            cause,
        })?;
    match summary["vocabulary"].as_u64() {
        Some(0) => Err(StageFailure::NoText {
            lda: cx.dir(StageKind::Lda).to_path_buf(),
            settings,
        }),
        _ => Ok(()),
    }
}

fn build_score(cx: &BuildContext) -> Result<(), StageFailure> {
    refuse_text_settings_without_text(cx, StageKind::Score)?;
    let store = Store::open(cx.dir(StageKind::Ingest))?;
    let topics = lda::open_topics(&cx.dir(StageKind::Lda).join(lda::TOPICS_TRAIN_FILE))?;
    // Each image's standing in its query's results, from the lists the store was ingested
    // from (their content is in the ingest key).
    let standing = match cx.recipe.clean.signals.reads_search() {
        true => dataset::search_standing(&cx.recipe.dataset, cx.dir(StageKind::Ingest))?,
        false => None,
    };
    let mut labels = Vec::with_capacity(store.len(Split::Train) as usize);
    let mut search = Vec::new();
    let mut unlisted = None;
    for_each_meta(&store, Split::Train, &mut |id, meta| {
        labels.push(meta.label);
        if let Some(standing) = &standing {
            match standing.get(&meta.path) {
                Some(&s) => search.push(s),
                None => {
                    unlisted.get_or_insert((id, meta.path.clone()));
                }
            }
        }
    })
    .map_err(|(_, e)| e)?;
    if let Some((id, path)) = unlisted {
        return Err(score::ScoreError::Path {
            id,
            message: format!("{path} is in the store but not in the dataset's lists"),
        }
        .into());
    }
    let class_names = store.header().class_names();
    let image = |id: u64| store.reader().ok()?.image(Split::Train, id).ok();
    let probe = match cx.upstream.get(&StageKind::Probe) {
        Some(dir) => Some(probe::ProbeTable::load(dir)?),
        None => None,
    };
    let inputs = score::ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &StorePaths(&store),
        class_names: &class_names,
        image: Some(&image),
        probe: probe.as_ref().map(|p| p.rows()),
        search: standing.as_ref().map(|_| search.as_slice()),
    };
    // A dataset that knows its noise (the generated one) left its truth file with the store;
    // used unless the recipe names one.
    let mut clean = cx.recipe.clean.clone();
    if clean.truth.is_none() {
        clean.truth = store.truth_file();
    }
    let summary = score::run_stage(&inputs, &clean, &cx.recipe.labels, cx.out)?;
    tracing::info!(samples = summary.samples, kept = summary.kept, "scored");
    for weak in summary
        .agreement
        .iter()
        .filter(|a| a.agreement < score::LOW_AGREEMENT)
    {
        tracing::warn!(
            signal = %weak.signal,
            agreement = weak.agreement,
            "a weighed signal's ranks hardly agree with the other signals' (below {}): it may \
             carry no evidence on this dataset; check its AUC against a truth file, or weigh it 0 \
             in clean.signals",
            score::LOW_AGREEMENT
        );
    }
    if let Some(noise) = &summary.noise {
        tracing::info!(
            auc = noise.auc,
            precision = %score::or_na(noise.precision),
            recall = %score::or_na(noise.recall),
            "noise detection against the truth file"
        );
    }
    Ok(())
}

fn build_probe(cx: &BuildContext) -> Result<(), StageFailure> {
    let recipe = cx.recipe;
    let store = Arc::new(Store::open(cx.dir(StageKind::Ingest))?);
    let mut labels = Vec::with_capacity(store.len(Split::Train) as usize);
    for_each_meta(&store, Split::Train, &mut |_, meta| labels.push(meta.label))
        .map_err(|(_, e)| e)?;
    let classes = store.header().classes.len();
    let (model, train) = (probe_model(recipe), probe_train(recipe));
    let device = train_device(recipe)?;
    let cfg = LoaderConfig::for_training(&train, train.batch_per_device);
    let predict_cfg = loader::EvalConfig {
        crops: CropSet::Center,
        ..eval_config(recipe)
    };
    let progress = cx.progress;
    let fold_model = |_fold: usize,
                      samples: &[(u64, u32)],
                      predict: &[u64],
                      dir: &Path|
     -> Result<probe::FoldOutput, probe::BoxError> {
        let iterations = train::iterations(train.length, samples.len() as u64, cfg.batch_size);
        let rank = |collective: &mut dyn Collective| -> Result<GoogLeNet, StageFailure> {
            let mut batches = |start: u64| -> Result<train::BatchStream<'static>, train::BoxError> {
                let loader =
                    loader::train_batches(store.clone(), samples.to_vec(), None, &cfg, start)?;
                Ok(Box::new(loader.map(|b| b.map_err(train::BoxError::from))))
            };
            let (lambda, topics) = (|_| Some(1.0), |_| None);
            let targets = train::SampleTargets {
                lambda: &lambda,
                topics: &topics,
            };
            let job = train::TrainJob {
                model: &model,
                train: &train,
                num_classes: classes,
                topics: 0,
                iterations,
                out_dir: dir,
                init: None,
                resume: true,
                stop_after: None,
                progress,
                holdout: None,
            };
            let (_, net) =
                train::train_distributed(&job, &mut batches, &targets, &device, collective)?;
            Ok(net)
        };
        let net = on_thread_ranks(train.cpu_ranks, &rank)?;
        probe_outputs(&store, predict, &net, &device, &predict_cfg)
    };
    let summary = probe::run_stage(
        &labels,
        classes,
        &recipe.probe,
        train.seed,
        &fold_model,
        cx.out,
    )?;
    for fold in &summary.folds {
        tracing::info!(
            fold = fold.fold,
            samples = fold.samples,
            agrees_with_label = fold.agrees_with_label,
            "probe fold"
        );
    }
    Ok(())
}

/// The class probabilities and pooled features of `net` for the training samples `ids`, in
/// that order (one center crop each).
fn probe_outputs(
    store: &Arc<Store>,
    ids: &[u64],
    net: &GoogLeNet,
    device: &Device,
    cfg: &loader::EvalConfig,
) -> Result<probe::FoldOutput, probe::BoxError> {
    let mut output = probe::FoldOutput {
        probabilities: Vec::new(),
        features: Vec::new(),
    };
    for batch in loader::eval_batches(store.clone(), Split::Train, ids.to_vec(), cfg)? {
        let batch = batch?;
        let images = batch.images(device)?;
        let (heads, features) = net.forward_eval_features(&images)?;
        let logits = heads.classes.ok_or(StageFailure::NoClassificationHead)?;
        let probabilities = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        output
            .probabilities
            .extend(probabilities.flatten_all()?.to_vec1::<f32>()?);
        output.features.extend(
            features
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(output)
}

/// What training samples from, as the train stage sets it up before its first step: the
/// store, the score table, the kept samples (id, label) less the holdout, the held-out ones,
/// the sampling weights (`sampler = "weighted"`: λ; `"curriculum"`: the text score), and the
/// topic vectors, read by sample where they lie (for regression heads).
pub struct TrainData {
    pub store: Arc<Store>,
    pub table: score::ScoreTable,
    pub samples: Vec<(u64, u32)>,
    pub held_out: Vec<(u64, u32)>,
    pub weights: Option<Vec<f32>>,
    pub topics: Option<crate::npy::NpyFile>,
}

impl TrainData {
    /// From the folders of the ingest, LDA and score stages.
    pub fn load(
        recipe: &Recipe,
        ingest: &Path,
        lda_dir: &Path,
        score_dir: &Path,
    ) -> Result<TrainData, StageFailure> {
        let store = Arc::new(Store::open(ingest)?);
        let table = score::ScoreTable::load(score_dir)?;
        let kept: Vec<(u64, u32)> = table
            .rows()
            .iter()
            .filter(|r| r.kept)
            .map(|r| (r.id, r.label))
            .collect();
        let train::holdout::Parted {
            train: samples,
            held_out,
        } = match recipe.train.holdout {
            Some(h) => train::holdout::split(&kept, h.share, recipe.train.seed),
            None => train::holdout::Parted {
                train: kept,
                held_out: Vec::new(),
            },
        };
        let weight_of = |weight: fn(&score::ScoreRow) -> f64| {
            let row = |id: u64| table.get(id).expect("samples come from the score table");
            Some(
                samples
                    .iter()
                    .map(|&(id, _)| weight(row(id)) as f32)
                    .collect(),
            )
        };
        let weights = match recipe.train.sampler {
            SamplerKind::Weighted => weight_of(|r| r.lambda),
            SamplerKind::Curriculum { .. } => weight_of(|r| r.score),
            _ => None,
        };
        let topics = match recipe.model.regression {
            true => Some(lda::open_topics(&lda_dir.join(lda::TOPICS_TRAIN_FILE))?),
            false => None,
        };
        Ok(TrainData {
            store,
            table,
            samples,
            held_out,
            weights,
            topics,
        })
    }

    /// The training batches from batch `start` on.
    pub fn loader(
        &self,
        cfg: &LoaderConfig,
        start: u64,
    ) -> Result<loader::TrainLoader, loader::LoaderError> {
        loader::train_batches(
            self.store.clone(),
            self.samples.clone(),
            self.weights.clone(),
            cfg,
            start,
        )
    }
}

fn build_train(cx: &BuildContext) -> Result<(), StageFailure> {
    refuse_text_settings_without_text(cx, StageKind::Train)?;
    let recipe = cx.recipe;
    let data = TrainData::load(
        recipe,
        cx.dir(StageKind::Ingest),
        cx.dir(StageKind::Lda),
        cx.dir(StageKind::Score),
    )?;
    let TrainData {
        store,
        table,
        samples,
        held_out,
        topics,
        ..
    } = &data;
    let soft = matches!(recipe.labels, LabelParams::Soft { .. });
    let mut shape = ModelShape {
        num_classes: store.header().classes.len(),
        topics: topics.as_ref().map_or(0, |t| t.cols()),
        best: None,
    };
    let world_size = cx.parallel.map_or(1, |p| p.world.world_size);
    let device = match cx.parallel {
        Some(p) => p.device.clone(),
        None => train_device(recipe)?,
    };
    // Every rank streams the global batch and trains on its rows of it.
    let cfg = LoaderConfig::for_training(&recipe.train, recipe.train.batch_per_device * world_size);
    let iterations = train::iterations(recipe.train.length, samples.len() as u64, cfg.batch_size);
    // The holdout is seen through the center crop in training-sized batches: settings that
    // enter this stage's key.
    let holdout_cfg = loader::EvalConfig {
        crops: CropSet::Center,
        samples_per_batch: recipe.train.batch_per_device,
        ..eval_config(recipe)
    };
    let holdout_ids: Vec<u64> = held_out.iter().map(|&(id, _)| id).collect();
    let epoch_ends = match recipe.train.holdout {
        Some(h) => Some(train::holdout::epoch_ends(
            samples.len() as u64,
            cfg.batch_size,
            h.eval_every,
            iterations,
        )?),
        None => None,
    };
    let num_classes = shape.num_classes;
    let topic_count = shape.topics;
    let (out_dir, init, progress) = (cx.out, cx.init.map(|i| i.checkpoint.as_path()), cx.progress);
    // One rank's training; what it builds is its own (its loader, its closures), what it reads
    // is shared with the other ranks of this process.
    let train_rank =
        |collective: &mut dyn Collective| -> Result<train::TrainSummary, StageFailure> {
            let mut batches = |start: u64| -> Result<train::BatchStream<'static>, train::BoxError> {
                let loader = data.loader(&cfg, start)?;
                Ok(Box::new(loader.map(|b| b.map_err(train::BoxError::from))))
            };
            let lambda = |id: u64| match soft {
                true => table.get(id).map(|r| r.lambda as f32),
                false => Some(1.0),
            };
            let topic = |id: u64| topics.as_ref()?.row(id as usize).ok();
            let targets = train::SampleTargets {
                lambda: &lambda,
                topics: &topic,
            };
            let predict_holdout = |net: &GoogLeNet, ids: &[u64]| {
                let images = EvalImages {
                    store,
                    split: Split::Train,
                    cfg: &holdout_cfg,
                };
                predictions(&images, ids.to_vec(), net, &device, num_classes, false)
                    .map_err(train::BoxError::from)
            };
            let holdout = epoch_ends.clone().map(|epoch_ends| train::HoldoutJob {
                ids: &holdout_ids,
                epoch_ends,
                predict: &predict_holdout,
            });
            let job = train::TrainJob {
                model: &recipe.model,
                train: &recipe.train,
                num_classes,
                topics: topic_count,
                iterations,
                out_dir,
                init,
                resume: true,
                stop_after: None,
                progress,
                holdout,
            };
            let (summary, _) =
                train::train_distributed(&job, &mut batches, &targets, &device, collective)?;
            Ok(summary)
        };
    let summary = match cx.parallel {
        None => on_thread_ranks(recipe.train.cpu_ranks, &train_rank)?,
        Some(p) => {
            let mut collective = p.collective.borrow_mut();
            let summary = train_rank(&mut **collective)?;
            if p.rank() != 0 {
                return Ok(());
            }
            summary
        }
    };
    let final_path = cx.out.join(FINAL_CHECKPOINT);
    if final_path.exists() {
        std::fs::remove_file(&final_path).map_err(StageFailure::io(&final_path))?;
    }
    std::fs::hard_link(&summary.final_checkpoint, &final_path)
        .or_else(|_| std::fs::copy(&summary.final_checkpoint, &final_path).map(drop))
        .map_err(StageFailure::io(&final_path))?;
    shape.best = summary.best;
    let shape_path = cx.out.join(MODEL_SHAPE_FILE);
    std::fs::write(
        &shape_path,
        serde_json::to_string_pretty(&shape).expect("JSON serializes"),
    )
    .map_err(StageFailure::io(&shape_path))?;
    Ok(())
}

/// The eval stage's folder for the second validation set (the same files as the first's).
pub const SECOND_VAL_EVAL_DIR: &str = "second_val";
/// The eval stage's folder for the best epoch on the holdout: its evaluation on the
/// validation split (and in its own `second_val/` on the second set), and [`BEST_EPOCH_FILE`].
pub const BEST_EVAL_DIR: &str = "best";
/// Which epoch the best one is and its accuracy on the holdout ([`train::BestEpoch`]).
pub const BEST_EPOCH_FILE: &str = "epoch.json";

/// Evaluates the final weights on the validation split, and on the second validation set
/// when the recipe has one (into [`SECOND_VAL_EVAL_DIR`]); with a holdout, the best epoch's
/// weights on both too (into [`BEST_EVAL_DIR`]).
fn build_eval(cx: &BuildContext) -> Result<(), StageFailure> {
    let recipe = cx.recipe;
    let ingest = cx.dir(StageKind::Ingest);
    let train_dir = cx.dir(StageKind::Train);
    let shape_path = train_dir.join(MODEL_SHAPE_FILE);
    let text = std::fs::read_to_string(&shape_path).map_err(StageFailure::io(&shape_path))?;
    let shape: ModelShape = serde_json::from_str(&text).map_err(|cause| StageFailure::Json {
        path: shape_path,
        cause,
    })?;
    let device = train_device(recipe)?;
    let mut checkpoints = vec![(FINAL_CHECKPOINT, cx.out.to_path_buf())];
    if let Some(best) = &shape.best {
        let dir = cx.out.join(BEST_EVAL_DIR);
        std::fs::create_dir_all(&dir).map_err(StageFailure::io(&dir))?;
        let path = dir.join(BEST_EPOCH_FILE);
        let text = serde_json::to_string_pretty(best).expect("JSON serializes");
        std::fs::write(&path, text).map_err(StageFailure::io(&path))?;
        checkpoints.push((train::BEST_CHECKPOINT, dir));
    }
    let cfg = eval_config(recipe);
    for (checkpoint, out) in checkpoints {
        let model = train::load_for_eval(
            &train_dir.join(checkpoint),
            &recipe.model,
            shape.num_classes,
            shape.topics,
            &device,
        )?;
        let mut sets = vec![(ingest.to_path_buf(), out.clone())];
        if recipe.dataset.second_val.is_some() {
            sets.push((
                ingest.join(store::SECOND_VAL_DIR),
                out.join(SECOND_VAL_EVAL_DIR),
            ));
        }
        for (store_dir, out) in sets {
            let store = Arc::new(Store::open(&store_dir)?);
            let val = store.len(Split::Val);
            if val == 0 {
                return Err(StageFailure::NoValidationSamples { store: store_dir });
            }
            let images = EvalImages {
                store: &store,
                split: Split::Val,
                cfg: &cfg,
            };
            let ids = (0..val).collect();
            let predictions = predictions(
                &images,
                ids,
                &model,
                &device,
                shape.num_classes,
                cx.progress,
            )?;
            let class_names = store.header().class_names();
            let metrics = eval::metrics(&predictions, &class_names)?;
            eval::write_outputs(&out, &predictions, &metrics, &class_names)?;
        }
    }
    Ok(())
}

/// How the eval stage makes its batches: the recipe's crops and eval batch size.
fn eval_config(recipe: &Recipe) -> loader::EvalConfig {
    loader::EvalConfig {
        crop: recipe.train.augmentation.crop,
        crops: recipe.eval.crops,
        mean_rgb: recipe.train.augmentation.mean_rgb,
        samples_per_batch: recipe.eval.batch_size,
        workers: recipe.train.workers,
        precision: recipe.train.precision,
    }
}

/// Where the images to predict come from, and how they are cut into batches.
struct EvalImages<'a> {
    store: &'a Arc<Store>,
    split: Split,
    cfg: &'a loader::EvalConfig,
}

/// The predictions of `model` for the samples `ids` of `images`.
fn predictions(
    images: &EvalImages,
    ids: Vec<u64>,
    model: &GoogLeNet,
    device: &Device,
    num_classes: usize,
    progress: bool,
) -> Result<eval::Predictions, StageFailure> {
    let cfg = images.cfg;
    let resize = images.store.header().resize;
    let crops = loader::crop_boxes(cfg.crops, resize, resize, cfg.crop).len();
    let samples = ids.len() as u64;
    let batches = loader::eval_batches(images.store.clone(), images.split, ids, cfg)?;
    let predictions = eval::evaluate(
        batches,
        num_classes,
        crops,
        samples,
        progress,
        |batch: &Batch| {
            let images = batch.images(device)?;
            let logits = model
                .forward_eval(&images)?
                .classes
                .ok_or(StageFailure::NoClassificationHead)?;
            Ok::<_, train::BoxError>(
                logits
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            )
        },
    )?;
    Ok(predictions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_execution_order_and_reads_only_earlier_stages() {
        for (i, kind) in StageKind::ALL.into_iter().enumerate() {
            let s = spec(kind);
            assert_eq!(s.kind, kind, "SPECS[{i}]");
            assert!(
                s.reads.iter().all(|r| *r < kind),
                "{kind} reads a later stage"
            );
        }
    }
}
