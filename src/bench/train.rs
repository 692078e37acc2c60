//! `runner bench train`: training throughput (images/s for forward + backward + SGD update)
//! of the full GoogLeNet at 224 px and the small one (width 1/8, 64 px), on random images.
//! The reference, measured in the same run on the same batches, is the eval forward pass
//! alone: the ratio says what backward and the update cost on top of inference.

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::GoogLeNet;
use crate::recipe::params::{Arch, ModelParams, SgdParams};
use crate::train::optim::Sgd;
use crate::train::{step_loss, Targets};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// `cpu` or `cuda:<ordinal>`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch size for the full GoogLeNet at 224 px.
    #[arg(long, default_value_t = 4)]
    pub full_batch: usize,
    /// Batch size for the small GoogLeNet (width 1/8, 64 px).
    #[arg(long, default_value_t = 32)]
    pub small_batch: usize,
    /// Timed steps per measurement (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "googlenet")]
    pub arch: BenchArch,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum BenchArch {
    Googlenet,
    GooglenetBn,
}

const CLASSES: usize = 1000;

fn device(name: &str) -> anyhow::Result<Device> {
    match name.strip_prefix("cuda:") {
        None if name == "cpu" => Ok(Device::Cpu),
        Some(ordinal) => Ok(Device::new_cuda(ordinal.parse().context("cuda ordinal")?)?),
        None => anyhow::bail!("--device {name}: expected cpu or cuda:<ordinal>"),
    }
}

/// Mean seconds per call of `step` over `steps` calls, after one warm-up call.
fn time(
    device: &Device,
    steps: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    step()?;
    device.synchronize()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64() / steps.max(1) as f64)
}

/// (eval forward images/s, training step images/s) for one network and batch size.
fn measure(
    model: &ModelParams,
    batch: usize,
    args: &TrainBenchArgs,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let net = GoogLeNet::new(model, CLASSES, 0, 0, device)?;
    let sgd_params = SgdParams {
        lr: 1e-3,
        momentum: 0.9,
        weight_decay: 2e-4,
        bias_lr_mult: 2.0,
        clip_grad_norm: None,
    };
    let mut sgd = Sgd::new(net.vars().to_vec(), &sgd_params)?;
    let side = model.input_size as usize;
    let images = Tensor::randn(0f32, 50.0, (batch, 3, side, side), device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % CLASSES as u32).collect();
    let targets = Targets {
        labels: Tensor::from_vec(labels, batch, device)?,
        lambdas: Tensor::ones(batch, candle_core::DType::F32, device)?,
        topics: None,
    };
    let forward = time(device, args.steps, || {
        net.forward_eval(&images)?;
        Ok(())
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let train = time(device, args.steps, || {
        let heads = net.forward_train(&images, &mut rng)?;
        let loss = step_loss(model, &heads, &targets)?;
        sgd.step(&loss.total.backward()?, 1e-3)?;
        Ok(())
    })?;
    Ok((batch as f64 / forward, batch as f64 / train))
}

pub fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    let device = device(&args.device)?;
    let arch = match args.arch {
        BenchArch::Googlenet => Arch::Googlenet,
        BenchArch::GooglenetBn => Arch::GooglenetBn,
    };
    let model = |width, input_size| ModelParams {
        arch,
        classification: true,
        regression: false,
        task_weights: [1.0, 0.0],
        aux_weights: [0.3, 0.3],
        input_size,
        width,
    };
    println!(
        "bench train: {:?} on {}, {} timed steps each, {CLASSES} classes",
        args.arch, args.device, args.steps
    );
    println!(
        "{:<22} {:>6} {:>16} {:>16} {:>14}",
        "network", "batch", "forward img/s", "train img/s", "train/forward"
    );
    let cases = [
        ("width 1, 224 px", model(1.0, 224), args.full_batch),
        ("width 1/8, 64 px", model(0.125, 64), args.small_batch),
    ];
    for (name, model, batch) in cases {
        let (forward, train) = measure(&model, batch, args, &device)?;
        println!(
            "{name:<22} {batch:>6} {forward:>16.1} {train:>16.1} {:>14.3}",
            train / forward
        );
    }
    Ok(())
}
