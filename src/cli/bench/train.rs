//! `runner bench train`: training throughput (images/s for forward + backward + SGD update) of
//! GoogLeNet on random images, per precision and with or without the topic-regression heads,
//! with each step split into its phases (forward + backward, update), as the library measures
//! it ([`websieve::bench::train`]). The reference is PyTorch eager on the same net
//! (`../shared/bench/torch_googlenet.py --json`, run just before on the same machine) for the
//! ratio, or, without one, the eval forward pass measured in the same run (what backward and
//! the update cost on top of inference).

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::PossibleValue;
use clap::ValueEnum;
use websieve::bench::train::{cases, measure, CaseSettings, StepCounts, CLASSES};
use websieve::recipe::params::{Arch, Precision};

use super::{device, parse_precision};

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
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = parse_precision)]
    pub precision: Vec<Precision>,
    /// Topic counts of the regression heads, comma-separated; 0 is the 3-head classifier.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub topics: Vec<usize>,
    #[arg(long, value_enum, default_value = "googlenet")]
    pub arch: ArchArg,
    /// PyTorch's figures (`torch_googlenet.py --json`) to print ratios against.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `--arch`: a [`Arch`], spelt as recipes spell `model.arch`.
#[derive(Debug, Clone, Copy)]
pub struct ArchArg(Arch);

impl ValueEnum for ArchArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[ArchArg(Arch::Googlenet), ArchArg(Arch::GooglenetBn)]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self.0 {
            Arch::Googlenet => "googlenet",
            Arch::GooglenetBn => "googlenet-bn",
        }))
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

/// One configuration's figures, as printed and written by `--json`.
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

/// PyTorch's img/s for the BVLC net ("caffe") at `precision` with `topics` regression heads.
fn reference_rate(reference: &serde_json::Value, precision: &str, topics: usize) -> Option<f64> {
    reference.as_array()?.iter().find_map(|row| {
        let matches = row["model"] == "caffe"
            && row["precision"] == precision
            && row["topics"].as_u64() == Some(topics as u64);
        matches.then(|| row["img_per_s"].as_f64()).flatten()
    })
}

pub(super) fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    let device = device(&args.device)?;
    let reference: Option<serde_json::Value> = match &args.reference {
        Some(path) => Some(serde_json::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
        )?),
        None => None,
    };
    println!(
        "bench train: {:?} on {}, {} timed steps after {} warm-up, {CLASSES} classes",
        args.arch.0, args.device, args.steps, args.warmup
    );
    let cases = cases(&CaseSettings {
        arch: args.arch.0,
        precisions: args.precision.clone(),
        topics: args.topics.clone(),
        full_batch: args.full_batch,
        small_batch: args.small_batch,
    });
    let steps = StepCounts {
        warmup: args.warmup,
        timed: args.steps,
    };
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
        let timing = measure(case, &device, steps)?;
        let precision = torch_name(case.precision);
        let row = Row {
            network: case.name.to_string(),
            precision,
            topics: case.topics,
            batch: case.batch,
            forward_img_per_s: timing.forward_img_per_s,
            train_img_per_s: timing.train_img_per_s,
            forward_backward_ms: timing.forward_backward_ms,
            update_ms: timing.update_ms,
            reference_img_per_s: reference
                .as_ref()
                .filter(|_| case.is_full() && case.batch == 128)
                .and_then(|r| reference_rate(r, precision, case.topics)),
        };
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
