//! `runner bench train`: training throughput (images/s for forward + backward + SGD update) of
//! GoogLeNet on random images, per precision and with or without the topic-regression heads,
//! with each step split into its phases (forward + backward, update). The reference is
//! PyTorch eager on the same net (`../shared/bench/torch_googlenet.py --json`, run just
//! before on the same machine) for the ratio, or, without one, the eval forward pass measured
//! in the same run (what backward and the update cost on top of inference).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::GoogLeNet;
use crate::recipe::params::{Arch, ModelParams, Precision, SgdParams};
use crate::recipe::Recipe;
use crate::runtime::SingleProcess;
use crate::train::optim::{DivergenceGuard, Sgd};
use crate::train::{set_tf32, train_step, StepInput, Targets, TrainError, SPIKE_FACTOR};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// `cpu` or `cuda:<ordinal>`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch size for the full GoogLeNet at 224 px.
    #[arg(long, default_value_t = 4)]
    pub full_batch: usize,
    /// Batch size for the small GoogLeNet (width 1/8, 64 px); 0 skips it.
    #[arg(long, default_value_t = 32)]
    pub small_batch: usize,
    /// Timed steps per measurement (after the warm-up steps).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first (cuDNN algorithm choice, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Precisions to measure, comma-separated: f32, tf32, bf16.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<String>,
    /// Topic counts of the regression heads, comma-separated; 0 is the 3-head classifier.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub topics: Vec<usize>,
    #[arg(long, value_enum, default_value = "googlenet")]
    pub arch: BenchArch,
    /// PyTorch's figures (`torch_googlenet.py --json`) to print ratios against.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum BenchArch {
    Googlenet,
    GooglenetBn,
}

const CLASSES: usize = 1000;

pub(super) fn device(name: &str) -> anyhow::Result<Device> {
    match name.strip_prefix("cuda:") {
        None if name == "cpu" => Ok(Device::Cpu),
        Some(ordinal) => Ok(Device::new_cuda(ordinal.parse().context("cuda ordinal")?)?),
        None => anyhow::bail!("--device {name}: expected cpu or cuda:<ordinal>"),
    }
}

fn precision(name: &str) -> anyhow::Result<Precision> {
    match name {
        "f32" | "fp32" => Ok(Precision::F32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        other => anyhow::bail!("--precision {other}: expected f32, tf32 or bf16"),
    }
}

/// The name torch_googlenet.py gives a precision.
fn torch_name(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => "fp32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

/// Mean seconds per call of `step` over `steps` calls, after `warmup` calls.
fn time(
    device: &Device,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        step()?;
    }
    device.synchronize()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64() / steps.max(1) as f64)
}

/// One configuration's figures, in seconds per step.
#[derive(Debug, serde::Serialize)]
struct Row {
    network: String,
    precision: &'static str,
    topics: usize,
    batch: usize,
    forward_img_per_s: f64,
    train_img_per_s: f64,
    forward_backward_ms: f64,
    update_ms: f64,
    reference_img_per_s: Option<f64>,
}

struct Case<'a> {
    name: &'a str,
    model: ModelParams,
    batch: usize,
    precision: Precision,
    topics: usize,
}

fn measure(case: &Case, args: &TrainBenchArgs, device: &Device) -> anyhow::Result<Row> {
    set_tf32(case.precision == Precision::Tf32);
    let (model, batch) = (&case.model, case.batch);
    let net = GoogLeNet::new(model, CLASSES, case.topics, 0, device)?;
    let sgd_params = SgdParams {
        lr: 1e-3,
        ..Recipe::default().train.optimizer
    };
    let mut sgd = Sgd::new(net.vars().to_vec(), &sgd_params)?;
    let side = model.input_size as usize;
    let images = Tensor::randn(0f32, 50.0, (batch, 3, side, side), device)?
        .to_dtype(case.precision.activations())?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % CLASSES as u32).collect();
    let topics = match case.topics {
        0 => None,
        k => Some(candle_nn::ops::softmax_last_dim(&Tensor::randn(
            0f32,
            1.0,
            (batch, k),
            device,
        )?)?),
    };
    let targets = Targets {
        labels: Tensor::from_vec(labels, batch, device)?,
        lambdas: Tensor::ones(batch, DType::F32, device)?,
        topics,
    };
    let forward = time(device, args.warmup, args.steps, || {
        net.forward_eval(&images)?;
        Ok(())
    })?;
    let rng = ChaCha8Rng::seed_from_u64(0);
    let mut guard = DivergenceGuard::new(SPIKE_FACTOR);
    let (mut backward_s, mut update_s, mut calls) = (0.0, 0.0, 0);
    let train = time(device, args.warmup, args.steps, || {
        let input = StepInput {
            images: &images,
            targets: &targets,
            rng: &rng,
            first_row: 0,
            global_rows: batch,
            step: calls,
            lr: sgd_params.lr,
        };
        let started = Instant::now();
        let outcome = train_step(
            &net,
            &mut sgd,
            &mut guard,
            model,
            &input,
            &mut SingleProcess,
        )?;
        outcome.update.map_err(TrainError::Diverged)?;
        device.synchronize()?;
        // The phases of the timed steps only: the warm-up steps pick cuDNN algorithms.
        if calls >= args.warmup as u64 {
            backward_s += (outcome.fetched_at - started).as_secs_f64();
            update_s += outcome.fetched_at.elapsed().as_secs_f64();
        }
        calls += 1;
        Ok(())
    })?;
    let timed = args.steps.max(1) as f64;
    Ok(Row {
        network: case.name.to_string(),
        precision: torch_name(case.precision),
        topics: case.topics,
        batch,
        forward_img_per_s: batch as f64 / forward,
        train_img_per_s: batch as f64 / train,
        forward_backward_ms: 1e3 * backward_s / timed,
        update_ms: 1e3 * update_s / timed,
        reference_img_per_s: None,
    })
}

/// PyTorch's img/s for the BVLC net ("caffe") at `precision` with `topics` regression heads.
fn reference_rate(reference: &serde_json::Value, precision: &str, topics: usize) -> Option<f64> {
    reference.as_array()?.iter().find_map(|row| {
        let matches = row["model"] == "caffe"
            && row["precision"] == precision
            && row["topics"].as_u64() == Some(topics as u64);
        matches.then(|| row["img_per_s"].as_f64()).flatten()
    })
}

pub fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    let device = device(&args.device)?;
    let precisions = args
        .precision
        .iter()
        .map(|p| precision(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reference: Option<serde_json::Value> = match &args.reference {
        Some(path) => Some(serde_json::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
        )?),
        None => None,
    };
    let arch = match args.arch {
        BenchArch::Googlenet => Arch::Googlenet,
        BenchArch::GooglenetBn => Arch::GooglenetBn,
    };
    let model = |width, input_size, topics| ModelParams {
        arch,
        regression: topics > 0,
        input_size,
        width,
        ..Recipe::default().model
    };
    println!(
        "bench train: {:?} on {}, {} timed steps after {} warm-up, {CLASSES} classes",
        args.arch, args.device, args.steps, args.warmup
    );
    let mut cases = Vec::new();
    for &precision in &precisions {
        for &topics in &args.topics {
            cases.push(Case {
                name: "width 1, 224 px",
                model: model(1.0, 224, topics),
                batch: args.full_batch,
                precision,
                topics,
            });
        }
        if args.small_batch > 0 {
            cases.push(Case {
                name: "width 1/8, 64 px",
                model: model(0.125, 64, 0),
                batch: args.small_batch,
                precision,
                topics: 0,
            });
        }
    }
    println!(
        "{:<18} {:>5} {:>6} {:>6} {:>11} {:>11} {:>9} {:>9} {:>11} {:>7}",
        "network",
        "prec",
        "topics",
        "batch",
        "fwd img/s",
        "train img/s",
        "f+b ms",
        "update ms",
        "torch img/s",
        "ratio"
    );
    let mut rows = Vec::new();
    for case in &cases {
        let mut row = measure(case, args, &device)?;
        let full = case.model.width == 1.0 && case.model.input_size == 224;
        row.reference_img_per_s = reference
            .as_ref()
            .filter(|_| full && case.batch == 128)
            .and_then(|r| reference_rate(r, row.precision, row.topics));
        // Without PyTorch's figure, the ratio is against the forward pass alone.
        let ratio = row.train_img_per_s / row.reference_img_per_s.unwrap_or(row.forward_img_per_s);
        let torch = row
            .reference_img_per_s
            .map_or("—".to_string(), |r| format!("{r:.1}"));
        println!(
            "{:<18} {:>5} {:>6} {:>6} {:>11.1} {:>11.1} {:>9.2} {:>9.2} {:>11} {:>7.3}",
            row.network,
            row.precision,
            row.topics,
            row.batch,
            row.forward_img_per_s,
            row.train_img_per_s,
            row.forward_backward_ms,
            row.update_ms,
            torch,
            ratio
        );
        rows.push(row);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_rows_match_by_precision_and_topics() {
        let reference = serde_json::json!([
            {"model": "caffe", "precision": "fp32", "topics": 0, "img_per_s": 2139.1},
            {"model": "caffe", "precision": "bf16", "topics": 500, "img_per_s": 3513.7},
            {"model": "tv", "precision": "bf16", "topics": 0, "img_per_s": 3605.4},
        ]);
        assert_eq!(reference_rate(&reference, "fp32", 0), Some(2139.1));
        assert_eq!(reference_rate(&reference, "bf16", 500), Some(3513.7));
        assert_eq!(reference_rate(&reference, "bf16", 0), None);
    }
}
