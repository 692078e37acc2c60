//! The training loop end to end on CPU with a small GoogLeNet (width 1/8, 64 px) on generated
//! images whose class is a coloured pattern: learning, resume equality, divergence handling,
//! `init`, and loading for evaluation.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use websieve::eval::{Evaluation, Predictions};
use websieve::model::GoogLeNet;
use websieve::recipe::params::{
    Arch, Augmentation, LrPolicy, ModelParams, OnDivergence, Precision, SamplerKind, Schedule,
    SgdParams, TrainLength, TrainParams,
};
use websieve::recipe::Recipe;
use websieve::runtime::ThreadGroupMember;
use websieve::sample::{Batch, Pixels};
use websieve::train::checkpoint::{self, BestEpoch, MODEL_PREFIX};
use websieve::train::{
    holdout, load_for_eval, train, train_distributed, BatchStream, BoxError, HoldoutJob,
    HoldoutPredict, SampleTargets, TrainError, TrainJob, TrainSummary, BEST_CHECKPOINT,
    STEP_METRICS_FILE,
};

const SIZE: usize = 64;
const CLASSES: usize = 4;
const TOPICS: usize = 3;

fn model(regression: bool) -> ModelParams {
    model_with(Arch::Googlenet, regression)
}

fn model_with(arch: Arch, regression: bool) -> ModelParams {
    ModelParams {
        arch,
        regression,
        input_size: SIZE as u32,
        width: 0.125,
        ..Recipe::default().model
    }
}

fn params(lr: f64, batch: usize, checkpoint_every: u64) -> TrainParams {
    let defaults = Recipe::default().train;
    TrainParams {
        batch_per_device: batch,
        optimizer: SgdParams {
            lr,
            ..defaults.optimizer
        },
        schedule: Schedule {
            policy: LrPolicy::Poly { power: 0.5 },
            warmup_start_factor: 1.0,
            ..defaults.schedule
        },
        length: TrainLength::Iterations(0),
        augmentation: Augmentation {
            crop: SIZE as u32,
            mirror: false,
            mean_rgb: [0.0; 3],
        },
        sampler: SamplerKind::Shuffle,
        precision: Precision::F32,
        checkpoint_every,
        on_divergence: OnDivergence::Stop,
        workers: 1,
        seed: 17,
        ..defaults
    }
}

/// One image of `class`: a stripe pattern whose colour and orientation encode the class,
/// with pixel noise, mean-subtracted on Caffe's 0..255 scale.
fn image(class: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let colour = [
        [1.0, 0.2, 0.2],
        [0.2, 1.0, 0.2],
        [0.2, 0.2, 1.0],
        [1.0, 1.0, 0.2],
    ][class];
    let phase = rng.random_range(0..8);
    let mut pixels = vec![0f32; 3 * SIZE * SIZE];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let along = if class.is_multiple_of(2) { y } else { x };
            let on = ((along + phase) / 4) % 2 == 0;
            for c in 0..3 {
                let value = if on { 200.0 * colour[c] } else { 40.0 };
                let noise = rng.random_range(-20.0..20.0);
                pixels[(c * SIZE + y) * SIZE + x] = value + noise - 110.0;
            }
        }
    }
    pixels
}

/// `count` images, classes in turn; sample id = index.
struct Images {
    pixels: Vec<Vec<f32>>,
    labels: Vec<u32>,
}

fn images(count: usize) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let labels: Vec<u32> = (0..count).map(|i| (i % CLASSES) as u32).collect();
    let pixels = labels
        .iter()
        .map(|&l| image(l as usize, &mut rng))
        .collect();
    Images { pixels, labels }
}

/// Batch k of a run: epochs are seeded permutations, so any batch index can start a stream.
/// Pixels in the element type of `precision`, as the loader hands them out.
fn stream(data: &Images, batch: usize, precision: Precision, start: u64) -> BatchStream<'_> {
    let n = data.labels.len();
    let order = move |epoch: u64| {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch));
        order
    };
    Box::new((start..).map(move |k| {
        let first = k as usize * batch;
        let ids: Vec<u64> = (first..first + batch)
            .map(|i| order((i / n) as u64)[i % n] as u64)
            .collect();
        let labels = ids.iter().map(|&i| data.labels[i as usize]).collect();
        let pixels: Vec<f32> = ids
            .iter()
            .flat_map(|&i| data.pixels[i as usize].clone())
            .collect();
        let pixels = match precision {
            Precision::Bf16 => Pixels::Bf16(pixels.into_iter().map(half::bf16::from_f32).collect()),
            Precision::F32 | Precision::Tf32 => Pixels::F32(pixels),
        };
        Ok::<_, BoxError>(Batch {
            ids,
            labels,
            pixels,
            shape: [batch, 3, SIZE, SIZE],
        })
    }))
}

fn topic_vector(id: u64) -> Vec<f32> {
    (0..TOPICS)
        .map(|t| (id as usize + t).is_multiple_of(TOPICS) as u8 as f32)
        .collect()
}

struct Run<'a> {
    model: ModelParams,
    params: TrainParams,
    iterations: u64,
    stop_after: Option<u64>,
    resume: bool,
    init: Option<&'a Path>,
    /// Images held out of training, evaluated every this many epochs.
    holdout: Option<(&'a Images, u64)>,
}

/// The network's predictions of the images `ids` of `data` (whole images, one crop each), as
/// the train stage gives them for its holdout.
fn predict(net: &GoogLeNet, data: &Images, ids: &[u64]) -> Result<Predictions, BoxError> {
    let pixels: Vec<f32> = ids
        .iter()
        .flat_map(|&i| data.pixels[i as usize].clone())
        .collect();
    let images = Tensor::from_vec(pixels, (ids.len(), 3, SIZE, SIZE), &Device::Cpu)?;
    let logits = net
        .forward_eval(&images)?
        .classes
        .expect("a classification head");
    let labels: Vec<u32> = ids.iter().map(|&i| data.labels[i as usize]).collect();
    let mut evaluation = Evaluation::new(CLASSES, 1);
    evaluation.add_tensor(ids, &labels, &logits)?;
    Ok(evaluation.finish())
}

/// The held-out images of a run over `data` in global batches of `batch`: all of `held`
/// (ids `0..`), evaluated every `every` epochs.
fn holdout_job<'a>(
    data: &Images,
    held_ids: &'a [u64],
    every: u64,
    batch: usize,
    iterations: u64,
    predict: HoldoutPredict<'a>,
) -> HoldoutJob<'a> {
    HoldoutJob {
        ids: held_ids,
        epoch_ends: holdout::epoch_ends(data.labels.len() as u64, batch, every, iterations)
            .unwrap(),
        predict,
    }
}

fn run(data: &Images, dir: &Path, r: &Run) -> Result<TrainSummary, TrainError> {
    let (batch, precision) = (r.params.batch_per_device, r.params.precision);
    let held_ids: Vec<u64> = match r.holdout {
        Some((held, _)) => (0..held.labels.len() as u64).collect(),
        None => Vec::new(),
    };
    let predict_held = |net: &GoogLeNet, ids: &[u64]| predict(net, r.holdout.unwrap().0, ids);
    let job = TrainJob {
        model: &r.model,
        train: &r.params,
        num_classes: CLASSES,
        topics: if r.model.regression { TOPICS } else { 0 },
        iterations: r.iterations,
        out_dir: dir,
        init: r.init,
        resume: r.resume,
        stop_after: r.stop_after,
        progress: false,
        holdout: r.holdout.map(|(_, every)| {
            holdout_job(data, &held_ids, every, batch, r.iterations, &predict_held)
        }),
    };
    let lambda = |id: u64| Some(if id.is_multiple_of(5) { 0.5 } else { 1.0 });
    let topics = |id: u64| Some(topic_vector(id));
    let targets = SampleTargets {
        lambda: &lambda,
        topics: &topics,
    };
    train(
        &job,
        &mut |start| Ok(stream(data, batch, precision, start)),
        &targets,
        &Device::Cpu,
    )
}

fn accuracy(net: &GoogLeNet, data: &Images) -> f64 {
    let pixels: Vec<f32> = data.pixels.concat();
    let n = data.labels.len();
    let images = Tensor::from_vec(pixels, (n, 3, SIZE, SIZE), &Device::Cpu).unwrap();
    let logits = net.forward_eval(&images).unwrap().classes.unwrap();
    let predicted: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let right = predicted
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| p == l)
        .count();
    right as f64 / n as f64
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join(STEP_METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64().filter(|_| v["event"].is_null()))
        .collect()
}

fn tensors_bits(path: &Path) -> HashMap<String, Vec<u32>> {
    let loaded = checkpoint::load(path, &Device::Cpu).unwrap();
    loaded
        .tensors
        .iter()
        .map(|(k, t)| {
            let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), values.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

/// Trains the small net on `count` images, full passes in batches of 32; returns the losses
/// and the training accuracy of the final weights (eval mode).
fn fit(count: usize, steps: u64, lr: f64, precision: Precision) -> (Vec<f64>, f64) {
    let data = images(count);
    let dir = tempfile::tempdir().unwrap();
    let train_params = TrainParams {
        precision,
        ..params(lr, 32, 1000)
    };
    let summary = run(
        &data,
        dir.path(),
        &short_run(model(false), train_params, steps),
    )
    .unwrap();
    assert_eq!(summary.steps, steps);
    let net = load_for_eval(
        &summary.final_checkpoint,
        &model(false),
        CLASSES,
        0,
        &Device::Cpu,
    )
    .unwrap();
    (losses(dir.path()), accuracy(&net, &data))
}

/// The "must show": width 1/8, 64 px, 64 images, 100% training accuracy on CPU.
#[test]
fn small_googlenet_overfits_64_images() {
    let steps = 80;
    let (losses, accuracy) = fit(64, steps, 0.01, Precision::F32);
    assert_eq!(losses.len(), steps as usize);
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.1 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
    assert_eq!(accuracy, 1.0, "losses: {losses:?}");
}

/// Mixed precision (bf16 activations, f32 weights, momentum and loss; emulated on the CPU)
/// learns, and its checkpoints hold f32 weights that evaluate in f32. At the f32 test's lr of
/// 0.01 the emulated run spikes near step 70 (candle's CPU sums bf16 in bf16 wherever our ops
/// do not), so it runs at half that lr: the loss falls about 7× in 80 steps.
#[test]
fn small_googlenet_learns_in_bf16() {
    let steps = 80;
    let (losses, accuracy) = fit(64, steps, 0.005, Precision::Bf16);
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.25 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
    assert!(accuracy >= 0.75, "accuracy {accuracy}, losses: {losses:?}");
    eprintln!("bf16: loss {first:.3} → {last:.3}, training accuracy {accuracy}");
}

fn short_run(model: ModelParams, params: TrainParams, iterations: u64) -> Run<'static> {
    Run {
        model,
        params,
        iterations,
        stop_after: None,
        resume: false,
        init: None,
        holdout: None,
    }
}

#[test]
fn resume_replays_the_straight_run_bit_for_bit() {
    // LRN and batch norm (running statistics are checkpointed too).
    for arch in [Arch::Googlenet, Arch::GooglenetBn] {
        resume_equals_straight(arch);
    }
}

/// Dropout on, the 2-headed net, a poly schedule over the whole run, a checkpoint between.
fn resume_equals_straight(arch: Arch) {
    let data = images(16);
    let (n, every) = (3, 2);
    let whole = || short_run(model_with(arch, true), params(0.01, 4, every), 2 * n);
    let straight = tempfile::tempdir().unwrap();
    let done = run(&data, straight.path(), &whole()).unwrap();

    let interrupted = tempfile::tempdir().unwrap();
    let first = Run {
        stop_after: Some(n),
        ..whole()
    };
    assert_eq!(run(&data, interrupted.path(), &first).unwrap().steps, n);
    let second = Run {
        resume: true,
        ..whole()
    };
    let resumed = run(&data, interrupted.path(), &second).unwrap();
    assert_eq!(resumed.steps, 2 * n);

    let (a, b) = (
        tensors_bits(&done.final_checkpoint),
        tensors_bits(&resumed.final_checkpoint),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.keys().any(|k| k.starts_with("momentum.")));
    assert_eq!(
        a.keys().any(|k| k.ends_with("running_var")),
        arch == Arch::GooglenetBn
    );
    for (name, bits) in &a {
        assert!(&b[name] == bits, "{arch:?}: {name} differs after resume");
    }
    assert_eq!(losses(straight.path()), losses(interrupted.path()));

    // Starting afresh over a run's checkpoints would mix two runs: refused.
    let err = run(&data, interrupted.path(), &whole()).unwrap_err();
    assert!(matches!(err, TrainError::ExistingRun { .. }), "{err}");
}

/// The lines of a run's `metrics.jsonl`, without the throughput (a timing).
fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(STEP_METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut line: serde_json::Value = serde_json::from_str(l).unwrap();
            line.as_object_mut().unwrap().remove("images_per_s");
            line
        })
        .collect()
}

/// A holdout evaluated at the end of each epoch: one `holdout` line per epoch in
/// `metrics.jsonl`, the first epoch with the highest top-1 kept in `best.safetensors`; a run
/// interrupted after the second evaluation and resumed logs, chooses and keeps exactly what
/// the straight run does.
#[test]
fn a_holdout_keeps_its_best_epoch_and_resume_chooses_the_same() {
    let (data, held) = (images(16), images(9));
    // 16 images in batches of 4: epochs end at steps 4, 8, 12; checkpoints at 3, 6, 9, 12.
    let whole = || Run {
        holdout: Some((&held, 1)),
        ..short_run(model(false), params(0.01, 4, 3), 12)
    };
    let straight = tempfile::tempdir().unwrap();
    let done = run(&data, straight.path(), &whole()).unwrap();
    let lines = metrics_lines(straight.path());
    let evaluated: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "holdout").collect();
    let epochs: Vec<(u64, u64)> = evaluated
        .iter()
        .map(|l| (l["step"].as_u64().unwrap(), l["epoch"].as_u64().unwrap()))
        .collect();
    assert_eq!(epochs, [(4, 1), (8, 2), (12, 3)]);
    assert!(evaluated.iter().all(|l| l["holdout_samples"] == 9));
    let top1: Vec<f64> = evaluated
        .iter()
        .map(|l| l["holdout_top1"].as_f64().unwrap())
        .collect();
    let highest = top1.iter().cloned().fold(f64::MIN, f64::max);
    let first_highest = top1.iter().position(|&t| t == highest).unwrap();
    let best = done.best.expect("a best epoch");
    assert_eq!((best.epoch, best.top1), (first_highest as u64 + 1, highest));
    let marked: Vec<bool> = evaluated.iter().map(|l| l["best"] == true).collect();
    assert!(marked[first_highest] && marked[0]);
    // The best file holds that epoch's weights and says so.
    let best_path = straight.path().join(BEST_CHECKPOINT);
    let saved = checkpoint::load(&best_path, &Device::Cpu).unwrap();
    assert_eq!(saved.state.best, Some(best));
    assert_eq!(saved.state.step, best.step);

    let interrupted = tempfile::tempdir().unwrap();
    let first = Run {
        stop_after: Some(9),
        ..whole()
    };
    assert_eq!(run(&data, interrupted.path(), &first).unwrap().steps, 9);
    let second = Run {
        resume: true,
        ..whole()
    };
    let resumed = run(&data, interrupted.path(), &second).unwrap();
    assert_eq!(resumed.best, done.best);
    assert_eq!(metrics_lines(interrupted.path()), lines);
    assert_eq!(
        tensors_bits(&best_path),
        tensors_bits(&interrupted.path().join(BEST_CHECKPOINT))
    );
    assert_eq!(
        tensors_bits(&done.final_checkpoint),
        tensors_bits(&resumed.final_checkpoint)
    );
}

/// A torn newest checkpoint (a copy cut short, a full disk) does not stop the rerun: it resumes
/// from the previous one and replays the run to the same weights.
#[test]
fn a_truncated_latest_checkpoint_resumes_from_the_one_before() {
    let data = images(8);
    let whole = || short_run(model(false), params(0.01, 4, 2), 4);
    let straight = tempfile::tempdir().unwrap();
    let done = run(&data, straight.path(), &whole()).unwrap();

    let interrupted = tempfile::tempdir().unwrap();
    let first = Run {
        stop_after: Some(3),
        ..whole()
    };
    run(&data, interrupted.path(), &first).unwrap();
    let newest = checkpoint::path_for(interrupted.path(), 3);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() - 100]).unwrap();
    let second = Run {
        resume: true,
        ..whole()
    };
    let resumed = run(&data, interrupted.path(), &second).unwrap();
    assert_eq!(resumed.steps, 4);
    assert_eq!(
        tensors_bits(&done.final_checkpoint),
        tensors_bits(&resumed.final_checkpoint)
    );
    assert_eq!(losses(straight.path()), losses(interrupted.path()));
}

#[test]
fn metrics_log_every_head_and_task() {
    let data = images(8);
    let dir = tempfile::tempdir().unwrap();
    run(
        &data,
        dir.path(),
        &short_run(model(true), params(0.01, 4, 100), 2),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join(STEP_METRICS_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["step"], 1);
    assert_eq!(first["lr"], 0.01);
    assert!(first["images_per_s"].as_f64().unwrap() > 0.0);
    let mut terms: Vec<&String> = first["losses"].as_object().unwrap().keys().collect();
    terms.sort();
    assert_eq!(
        terms,
        [
            "loss1/classification",
            "loss1/regression",
            "loss2/classification",
            "loss2/regression",
            "loss3/classification",
            "loss3/regression",
        ]
    );
    // The total is the weighted sum: heads (1, 0.3, 0.3) × tasks (0.75, 0.25).
    let term = |name: &str| first["losses"][name].as_f64().unwrap();
    let total: f64 = [("loss3", 1.0), ("loss1", 0.3), ("loss2", 0.3)]
        .iter()
        .map(|(h, w)| {
            w * (0.75 * term(&format!("{h}/classification"))
                + 0.25 * term(&format!("{h}/regression")))
        })
        .sum();
    assert!((total - first["loss"].as_f64().unwrap()).abs() < 1e-5 * total);
}

#[test]
fn divergence_stops_naming_the_step() {
    let data = images(8);
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &data,
        dir.path(),
        &short_run(model(false), params(1e6, 4, 100), 6),
    )
    .expect_err("lr 1e6 diverges");
    let message = err.to_string();
    assert!(matches!(err, TrainError::Diverged(_)), "{message}");
    assert!(message.contains("at step"), "{message}");
}

#[test]
fn rollback_lowers_the_lr_and_finishes() {
    let data = images(8);
    let dir = tempfile::tempdir().unwrap();
    let mut p = params(1e6, 4, 100);
    p.on_divergence = OnDivergence::Rollback {
        lr_factor: 1e-8,
        max_rollbacks: 2,
    };
    let summary = run(&data, dir.path(), &short_run(model(false), p, 4)).unwrap();
    assert!(summary.rollbacks >= 1);
    assert!(summary.last_loss.is_finite());
    let metrics = std::fs::read_to_string(dir.path().join(STEP_METRICS_FILE)).unwrap();
    assert!(metrics.contains("\"event\":\"rollback\""), "{metrics}");
    // The rolled-back run's checkpoint keeps the lowered lr for a later resume.
    let state = checkpoint::load(&summary.final_checkpoint, &Device::Cpu)
        .unwrap()
        .state;
    assert!(state.lr_scale <= 1e-8 && state.rollbacks == summary.rollbacks);
}

#[test]
fn init_copies_weights_and_load_for_eval_reproduces_them() {
    let data = images(8);
    let source = tempfile::tempdir().unwrap();
    let trained = run(
        &data,
        source.path(),
        &short_run(model(false), params(0.01, 4, 100), 2),
    )
    .unwrap();
    // lr 0: the run's final weights are exactly the ones it started from.
    let target = tempfile::tempdir().unwrap();
    let mut p = params(0.0, 4, 100);
    p.seed = 99;
    let init = Run {
        init: Some(&trained.final_checkpoint),
        ..short_run(model(false), p, 1)
    };
    let copied = run(&data, target.path(), &init).unwrap();
    let (a, b) = (
        tensors_bits(&trained.final_checkpoint),
        tensors_bits(&copied.final_checkpoint),
    );
    for (name, bits) in a.iter().filter(|(k, _)| k.starts_with(MODEL_PREFIX)) {
        assert!(&b[name] == bits, "{name} not copied by init");
    }
    // Momentum is not inherited: it starts at zero and lr 0 keeps it there.
    assert!(b
        .iter()
        .filter(|(k, _)| k.starts_with("momentum."))
        .all(|(_, bits)| bits.iter().all(|&x| f32::from_bits(x) == 0.0)));
    let net = load_for_eval(
        &trained.final_checkpoint,
        &model(false),
        CLASSES,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let loaded = checkpoint::load(&trained.final_checkpoint, &Device::Cpu).unwrap();
    let weights = loaded.group(MODEL_PREFIX);
    for (name, var) in net.vars() {
        let expected: Vec<f32> = weights[name].flatten_all().unwrap().to_vec1().unwrap();
        let found: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(expected, found, "{name}");
    }
}

#[test]
fn a_label_beyond_the_classes_is_named_with_its_sample() {
    let mut data = images(8);
    data.labels[3] = CLASSES as u32;
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &data,
        dir.path(),
        &short_run(model(false), params(0.01, 8, 100), 1),
    )
    .err()
    .unwrap();
    insta::assert_snapshot!(err.to_string(), @"train: step 0: sample 3 has label 4, but there are 4 classes");
}

/// Final weights by name (model tensors only).
type Weights = HashMap<String, Vec<f32>>;

/// What every rank of a thread-ranks run ended with, and the run's folder.
struct RanksRun {
    weights: Vec<Weights>,
    bests: Vec<Option<BestEpoch>>,
    dir: tempfile::TempDir,
}

/// `world` ranks as threads on the CPU training `model`, each fed the global batches of
/// `global_batch`, into one folder; with `held`, those images held out and evaluated at the
/// end of every epoch.
fn run_ranks(
    model: ModelParams,
    data: &Images,
    world: usize,
    global_batch: usize,
    steps: u64,
    held: Option<&Images>,
) -> RanksRun {
    let dir = tempfile::tempdir().unwrap();
    let r = short_run(model, params(DATA_PARALLEL_LR, global_batch, 1000), steps);
    let held_ids: Vec<u64> = (0..held.map_or(0, |h| h.labels.len() as u64)).collect();
    let ranks: Vec<(Weights, Option<BestEpoch>)> = std::thread::scope(|scope| {
        let ranks: Vec<_> = ThreadGroupMember::group(world)
            .into_iter()
            .map(|member| {
                let (r, out_dir, held_ids) = (&r, dir.path(), &held_ids);
                scope.spawn(move || {
                    // A rank left waiting at a collective fails the test rather than hang it.
                    let mut member = member.with_timeout(Duration::from_secs(60));
                    let predict_held =
                        |net: &GoogLeNet, ids: &[u64]| predict(net, held.unwrap(), ids);
                    let job = TrainJob {
                        model: &r.model,
                        train: &r.params,
                        num_classes: CLASSES,
                        topics: TOPICS,
                        iterations: r.iterations,
                        out_dir,
                        init: None,
                        resume: false,
                        stop_after: None,
                        progress: false,
                        holdout: held.map(|_| {
                            holdout_job(data, held_ids, 1, global_batch, steps, &predict_held)
                        }),
                    };
                    let lambda = |id: u64| Some(if id.is_multiple_of(5) { 0.5 } else { 1.0 });
                    let topics = |id: u64| Some(topic_vector(id));
                    let targets = SampleTargets {
                        lambda: &lambda,
                        topics: &topics,
                    };
                    let precision = r.params.precision;
                    let (summary, net) = train_distributed(
                        &job,
                        &mut |start| Ok(stream(data, global_batch, precision, start)),
                        &targets,
                        &Device::Cpu,
                        &mut member,
                    )
                    .unwrap();
                    assert_eq!(summary.steps, steps);
                    let weights = net
                        .named_tensors()
                        .map(|(name, var)| {
                            let values = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                            (format!("{MODEL_PREFIX}{name}"), values)
                        })
                        .collect::<Weights>();
                    (weights, summary.best)
                })
            })
            .collect();
        ranks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (weights, bests) = ranks.into_iter().unzip();
    RanksRun {
        weights,
        bests,
        dir,
    }
}

/// A holdout of 5 images on 3 ranks (shares of 2, 2 and 1) and of 3 on 4 (one share empty),
/// evaluated at the end of both epochs: every rank finishes (none waits at a collective the
/// others skip), they agree on the best epoch, and each evaluation scored each image once.
#[test]
fn ranks_with_uneven_holdout_shares_evaluate_it_once_and_stay_in_step() {
    let data = images(12);
    for (held, world) in [(5, 3), (3, 4)] {
        let held_images = images(held);
        // 12 images in global batches of 6: epochs end at steps 2 and 4.
        let run = run_ranks(model(true), &data, world, 6, 4, Some(&held_images));
        assert!(run.bests[0].is_some());
        assert!(
            run.bests.iter().all(|b| *b == run.bests[0]),
            "{:?}",
            run.bests
        );
        let evaluated: Vec<serde_json::Value> = metrics_lines(run.dir.path())
            .into_iter()
            .filter(|l| l["event"] == "holdout")
            .collect();
        assert_eq!(evaluated.len(), 2, "{world} ranks");
        for line in evaluated {
            assert_eq!(line["holdout_samples"], held, "{world} ranks: {line}");
        }
    }
}

/// With batch norm each rank normalises over its own rows and moves its running statistics
/// towards them; the ranks then average the statistics, so every replica (and the checkpoint)
/// holds the same: after 3 steps on 2 and 3 ranks every tensor, statistics included, is
/// bitwise equal on every rank, and the statistics moved from their initial 0 and 1.
#[test]
fn data_parallel_batch_norm_keeps_one_set_of_running_statistics() {
    let data = images(24);
    for world in [2, 3] {
        let run = run_ranks(
            model_with(Arch::GooglenetBn, false),
            &data,
            world,
            6,
            3,
            None,
        );
        let ranks = &run.weights;
        let statistics: Vec<&String> = ranks[0]
            .keys()
            .filter(|name| name.contains("running_"))
            .collect();
        assert!(statistics.len() > 20, "{statistics:?}");
        for name in statistics {
            let start = if name.ends_with("running_mean") {
                0.0
            } else {
                1.0
            };
            assert!(
                ranks[0][name].iter().any(|v| *v != start),
                "{name} did not move"
            );
            for (rank, other) in ranks.iter().enumerate().skip(1) {
                assert!(
                    ranks[0][name] == other[name],
                    "{world} ranks: rank {rank}'s {name}"
                );
            }
        }
        for other in &ranks[1..] {
            assert!(ranks[0] == *other, "{world} ranks differ");
        }
    }
}

/// How far `a`'s training moved from `b`'s, both from `init`: the L2 norm over all weights of
/// `a − b` over that of `b − init`. A difference in what the gradient is (a shard dropped or
/// weighted wrongly, a dropout mask drawn for the wrong sample) is a fraction of the update
/// itself; f32 summation order alone is a few parts in a million of it.
fn update_difference(a: &Weights, b: &Weights, init: &Weights) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut apart, mut moved) = (0f64, 0f64);
    for (name, x) in a {
        for ((p, q), i) in x.iter().zip(&b[name]).zip(&init[name]) {
            apart += (*p as f64 - *q as f64).powi(2);
            moved += (*q as f64 - *i as f64).powi(2);
        }
    }
    (apart / moved).sqrt()
}

/// The data-parallel tests' lr: small, so that the runs stay in the regime where f32 summation
/// order (shards summed, then all-reduced) seldom flips a ReLU or a max-pool's choice.
const DATA_PARALLEL_LR: f64 = 1e-3;

/// The final weights of a one-process run at `global_batch`.
fn single_process_weights(data: &Images, global_batch: usize, steps: u64) -> Weights {
    let dir = tempfile::tempdir().unwrap();
    let params = params(DATA_PARALLEL_LR, global_batch, 1000);
    let single = run(data, dir.path(), &short_run(model(true), params, steps)).unwrap();
    checkpoint::load(&single.final_checkpoint, &Device::Cpu)
        .unwrap()
        .group(MODEL_PREFIX)
        .iter()
        .map(|(k, t)| {
            (
                format!("{MODEL_PREFIX}{k}"),
                t.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

/// 2- and 4-way training (threads as ranks, an uneven split included) equals 1-way training at
/// the same global batch, on the 2-headed net with dropout: every rank ends with bitwise-equal
/// weights, and they moved as the one process's did.
///
/// After one step the only difference is the order of the gradient's f32 sums (the forward is
/// the same per image at any batch): measured 1e-6 to 7e-6 of the update ([`update_difference`]),
/// bound 1e-4. Over 20 steps the sums' rounding now and then flips a ReLU or a max-pool's
/// choice, and the runs jump apart by that one pixel's share: 4 ranks at batch 8 measured
/// 1.4e-6 of the update after 11 steps, 4.9e-4 after 12, 2.8e-3 after 20; bound 1e-2. Training
/// at another global batch, what a gradient averaged wrongly over shards amounts to, differs
/// by 0.4 to 0.5.
#[test]
fn data_parallel_ranks_agree_bitwise_and_equal_the_single_process() {
    let data = images(32);
    // The weights before any step depend on the seed only, not on the batch.
    let init = single_process_weights(&data, 8, 0);
    for (world, global_batch) in [(2, 8), (4, 8), (4, 6)] {
        for (steps, bound) in [(1, 1e-4), (20, 1e-2)] {
            let reference = single_process_weights(&data, global_batch, steps);
            let run = run_ranks(model(true), &data, world, global_batch, steps, None);
            let ranks = &run.weights;
            assert_eq!(losses(run.dir.path()).len(), steps as usize);
            for other in &ranks[1..] {
                assert!(ranks[0] == *other, "{world} ranks differ");
            }
            let difference = update_difference(&ranks[0], &reference, &init);
            eprintln!(
                "{world} ranks, batch {global_batch}, {steps} steps: {difference:.2e} of the update"
            );
            assert!(
                difference <= bound,
                "{world} ranks, batch {global_batch}, {steps} steps: {difference:.2e} of the update"
            );
        }
    }
}
