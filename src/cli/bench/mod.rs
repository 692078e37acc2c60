//! `runner bench …`: each benchmark's arguments, the reference it is compared with (run in
//! Python from `../shared/bench` or `scripts/bench`, or read from its output), and the table
//! it prints. The measurements themselves are the library's ([`websieve::bench`]).

mod ingest;
mod lda;
mod loader;
mod ops;
mod scale;
mod train;

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Subcommand;
use websieve::recipe::params::{Precision, StoreEncoding};

#[derive(Subcommand)]
pub enum Bench {
    /// Custom pooling and LRN ops against candle's own ops (forward, forward + backward).
    Ops(ops::OpsBenchArgs),
    /// Ingest images/s and bytes per image against the reference PIL + lmdb script.
    Ingest(ingest::IngestBenchArgs),
    /// Loader images/s (training crops + mirror) from raw and JPEG stores.
    Loader(loader::LoaderBenchArgs),
    /// LDA tokens/s and quality against gensim on one corpus; noise detection on a dataset.
    Lda(lda::LdaBenchArgs),
    /// Training images/s (forward + backward + update) of GoogLeNet, against PyTorch on the CPU.
    Train(train::TrainBenchArgs),
    /// WebVision's data path at full scale on generated data: per stage wall time, CPU time
    /// and peak memory, each in its own process, at several sizes.
    Scale(scale::ScaleBenchArgs),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ops(args) => ops::run(&args),
        Bench::Ingest(args) => ingest::run(&args),
        Bench::Loader(args) => loader::run(&args),
        Bench::Lda(args) => lda::run(&args),
        Bench::Train(args) => train::run(&args),
        Bench::Scale(args) => scale::run(&args),
    }
}

/// `--device`: `cpu` or `cuda:<ordinal>`.
fn device(name: &str) -> anyhow::Result<Device> {
    match name.strip_prefix("cuda:") {
        None if name == "cpu" => Ok(Device::Cpu),
        Some(ordinal) => Ok(Device::new_cuda(ordinal.parse().context("cuda ordinal")?)?),
        None => bail!("--device {name}: expected cpu or cuda:<ordinal>"),
    }
}

/// A precision as recipes (`train.precision`) and `torch_googlenet.py` name it.
fn parse_precision(name: &str) -> Result<Precision, String> {
    match name {
        "f32" | "fp32" => Ok(Precision::F32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err("expected f32, tf32 or bf16".into()),
    }
}

/// An element type, named as a precision: tf32 is a mode of matrix products, not a type.
fn parse_dtype(name: &str) -> Result<DType, String> {
    match parse_precision(name) {
        Ok(Precision::Tf32) | Err(_) => Err("expected f32 or bf16".into()),
        Ok(precision) => Ok(precision.activations()),
    }
}

/// How the benchmark tables name a store encoding.
fn encoding_name(encoding: StoreEncoding) -> String {
    match encoding {
        StoreEncoding::Raw => "raw".to_string(),
        StoreEncoding::Jpeg { quality } => format!("jpeg q{quality}"),
    }
}

/// Runs `python` with `args` and returns its standard output; a failure carries its stderr.
fn run_python(python: &Path, args: &[&OsStr]) -> anyhow::Result<String> {
    let out = std::process::Command::new(python)
        .args(args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}",
            python.display(),
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
