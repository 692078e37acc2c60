//! `runner bench train`: training throughput (images/s for forward + backward + SGD update) of
//! GoogLeNet on random images, per precision and with or without the topic-regression heads,
//! with each step split into its phases (forward + backward, update), as the library measures
//! it ([`websieve::bench::train`]).
//!
//! On the CPU the reference is PyTorch eager on the same networks, run in the same call
//! (`scripts/bench/torch_train.py`, the full BVLC net and the experiments' small one, parameter
//! counts checked equal): per `--threads` count, `--repeats` rounds of ours then PyTorch, each
//! side a child process pinned to that many cores (ours with `RAYON_NUM_THREADS`, PyTorch with
//! `torch.set_num_threads`), the best round of each side in the table. On CUDA the reference
//! is `../shared/bench/torch_googlenet.py --json` run before (`--reference`) or, without one,
//! the eval forward pass measured in the same run (what backward and the update cost on top
//! of inference).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::builder::PossibleValue;
use clap::ValueEnum;
use websieve::bench::cores::{self, on_cores};
use websieve::bench::train::{cases, measure, CaseSettings, StepCounts, TrainCase};
use websieve::recipe::params::{Arch, Precision};

use super::{device, parse_precision, run_python};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// `cpu` or `cuda:<ordinal>`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On the CPU, ranks of threads sharing each batch, as `train.cpu_ranks` (measured here;
    /// the comparison with PyTorch gives ours as many ranks as threads).
    #[arg(long, default_value_t = 1)]
    pub cpu_ranks: usize,
    /// Batch size for the full GoogLeNet at 224 px; 0 skips it.
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
    /// CUDA: PyTorch's figures (`torch_googlenet.py --json`) to print ratios against.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// CPU: thread counts, comma-separated; each is measured in its own processes, pinned to
    /// that many cores.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// CPU: rounds of ours then PyTorch per thread count; the table gives each side's best.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// CPU: Python with torch, for the PyTorch side.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// CPU: the PyTorch side's script.
    #[arg(long, default_value = "scripts/bench/torch_train.py")]
    pub torch_script: PathBuf,
    /// CPU: only our side (no PyTorch runs; the table has no ratios then).
    #[arg(long)]
    pub skip_torch: bool,
    /// Measure in this process and print one JSON row per case (what the CPU comparison's
    /// child processes run).
    #[arg(long, hide = true)]
    pub measure_here: bool,
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

/// One configuration's figures, as printed, written by `--json` and read back from a child.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    network: String,
    precision: String,
    topics: usize,
    batch: usize,
    /// CPU threads (and cores) of the measurement; none on CUDA.
    threads: Option<usize>,
    params: usize,
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

/// Measures every case in this process.
fn measure_cases(
    args: &TrainBenchArgs,
    cases: &[TrainCase],
    threads: Option<usize>,
) -> anyhow::Result<Vec<Row>> {
    let device = device(&args.device)?;
    let steps = StepCounts {
        warmup: args.warmup,
        timed: args.steps,
    };
    cases
        .iter()
        .map(|case| {
            let timing = measure(case, &device, steps, args.cpu_ranks)?;
            Ok(Row {
                network: case.name.to_string(),
                precision: torch_name(case.precision).to_string(),
                topics: case.topics,
                batch: case.batch,
                threads,
                params: timing.params,
                forward_img_per_s: timing.forward_img_per_s,
                train_img_per_s: timing.train_img_per_s,
                forward_backward_ms: timing.forward_backward_ms,
                update_ms: timing.update_ms,
                reference_img_per_s: None,
            })
        })
        .collect()
}

/// Whether `torch_train.py` builds this case's network: the BVLC net (LRN), f32, no
/// regression heads.
fn torch_has(args: &TrainBenchArgs, case: &TrainCase) -> bool {
    args.arch.0 == Arch::Googlenet && case.precision == Precision::F32 && case.topics == 0
}

/// Our rows from a child process of this binary on `threads` rayon threads.
fn ours_in_child(args: &TrainBenchArgs, threads: usize) -> anyhow::Result<Vec<Row>> {
    let list = |items: Vec<String>| items.join(",");
    let arch = args
        .arch
        .to_possible_value()
        .expect("every arch has a name");
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", "train", "--measure-here", "--device", "cpu"])
        .args(["--full-batch", &args.full_batch.to_string()])
        .args(["--small-batch", &args.small_batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--arch", arch.get_name()])
        .args([
            "--precision",
            &list(
                args.precision
                    .iter()
                    .map(|p| torch_name(*p).into())
                    .collect(),
            ),
        ])
        .args([
            "--topics",
            &list(args.topics.iter().map(usize::to_string).collect()),
        ])
        .args(["--cpu-ranks", &threads.to_string()])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .context("running our side in a child process")?;
    if !out.status.success() {
        bail!(
            "our side on {threads} thread(s) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<Vec<Row>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|row| Row {
            threads: Some(threads),
            ..row
        })
        .collect())
}

/// PyTorch's (params, img/s) for each case it builds, in order, on `threads` threads.
fn torch_rates(
    args: &TrainBenchArgs,
    cases: &[&TrainCase],
    threads: usize,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut argv: Vec<String> = vec![args.torch_script.display().to_string()];
    for case in cases {
        let m = &case.model;
        let spec = format!(
            "{},{},{},{}",
            m.width, m.input_size, case.batch, case.classes
        );
        argv.extend(["--network".into(), spec]);
    }
    argv.extend([
        "--threads".into(),
        threads.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
        "--steps".into(),
        args.steps.to_string(),
    ]);
    let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_ref()).collect();
    let out = run_python(&args.python, &argv)?;
    out.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line)?;
            match (row["params"].as_u64(), row["img_per_s"].as_f64()) {
                (Some(params), Some(rate)) => Ok((params as usize, rate)),
                _ => bail!("{}: unexpected row {line}", args.torch_script.display()),
            }
        })
        .collect()
}

/// CPU: per thread count, `repeats` rounds of ours then PyTorch, each side pinned to that many
/// cores; per case the best round of each side.
fn compare_on_cpu(args: &TrainBenchArgs, cases: &[TrainCase]) -> anyhow::Result<Vec<Row>> {
    cores::check(&args.threads)?;
    let wants_torch = |case: &TrainCase| !args.skip_torch && torch_has(args, case);
    let torch_cases: Vec<&TrainCase> = cases.iter().filter(|c| wants_torch(c)).collect();
    if !torch_cases.is_empty() && !args.torch_script.exists() {
        bail!(
            "{}: not found (run from the repository root, or --torch-script, or --skip-torch)",
            args.torch_script.display()
        );
    }
    let mut rows = Vec::new();
    for &threads in &args.threads {
        let mut ours_best: Vec<Option<Row>> = vec![None; cases.len()];
        let mut torch_best: Vec<Option<f64>> = vec![None; cases.len()];
        for round in 1..=args.repeats.max(1) {
            let ours = on_cores(threads, || ours_in_child(args, threads))?;
            let mut torch = match torch_cases.is_empty() {
                true => Vec::new(),
                false => on_cores(threads, || torch_rates(args, &torch_cases, threads))?,
            }
            .into_iter();
            for (i, (case, row)) in cases.iter().zip(ours).enumerate() {
                let torch = wants_torch(case).then(|| torch.next()).flatten();
                if let Some((params, _)) = torch.filter(|&(params, _)| params != row.params) {
                    bail!(
                        "{}: PyTorch's network has {params} parameters, ours {}: not the same \
                         network",
                        case.name,
                        row.params
                    );
                }
                let torch_rate = torch.map(|(_, rate)| rate);
                println!(
                    "  {threads} thread(s), round {round}: {}, ours {:.2} img/s, PyTorch {}",
                    case.name,
                    row.train_img_per_s,
                    torch_rate.map_or("—".into(), |r| format!("{r:.2} img/s"))
                );
                if ours_best[i]
                    .as_ref()
                    .is_none_or(|b| b.train_img_per_s < row.train_img_per_s)
                {
                    ours_best[i] = Some(row);
                }
                torch_best[i] = torch_best[i].into_iter().chain(torch_rate).reduce(f64::max);
            }
        }
        rows.extend(
            ours_best
                .into_iter()
                .zip(torch_best)
                .filter_map(|(row, torch)| {
                    row.map(|row| Row {
                        reference_img_per_s: torch,
                        ..row
                    })
                }),
        );
    }
    Ok(rows)
}

pub(super) fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    let cases = cases(&CaseSettings {
        arch: args.arch.0,
        precisions: args.precision.clone(),
        topics: args.topics.clone(),
        full_batch: args.full_batch,
        small_batch: args.small_batch,
    });
    if args.measure_here {
        for row in measure_cases(args, &cases, None)? {
            println!("{}", serde_json::to_string(&row)?);
        }
        return Ok(());
    }
    println!(
        "bench train: {:?} on {}, {} timed steps after {} warm-up",
        args.arch.0, args.device, args.steps, args.warmup
    );
    let rows = match device(&args.device)?.is_cpu() {
        true => compare_on_cpu(args, &cases)?,
        false => with_reference(args, measure_cases(args, &cases, None)?, &cases)?,
    };
    println!(
        "{:<18} {:>5} {:>6} {:>5} {:>7} {:>10} {:>9} {:>11} {:>9} {:>9} {:>11} {:>7}",
        "network",
        "prec",
        "topics",
        "batch",
        "threads",
        "params",
        "fwd img/s",
        "train img/s",
        "f+b ms",
        "update ms",
        "torch img/s",
        "ratio"
    );
    for row in &rows {
        // Without PyTorch's figure, the ratio is against the forward pass alone.
        let ratio = row.train_img_per_s / row.reference_img_per_s.unwrap_or(row.forward_img_per_s);
        println!(
            "{:<18} {:>5} {:>6} {:>5} {:>7} {:>10} {:>9.1} {:>11.2} {:>9.1} {:>9.2} {:>11} {:>7.3}",
            row.network,
            row.precision,
            row.topics,
            row.batch,
            row.threads.map_or("—".into(), |t| t.to_string()),
            row.params,
            row.forward_img_per_s,
            row.train_img_per_s,
            row.forward_backward_ms,
            row.update_ms,
            row.reference_img_per_s
                .map_or("—".to_string(), |r| format!("{r:.2}")),
            ratio
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// CUDA: each row's PyTorch figure from `--reference` (batch 128, the full net), if given.
fn with_reference(
    args: &TrainBenchArgs,
    rows: Vec<Row>,
    cases: &[TrainCase],
) -> anyhow::Result<Vec<Row>> {
    let Some(path) = &args.reference else {
        return Ok(rows);
    };
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
    )?;
    Ok(rows
        .into_iter()
        .zip(cases)
        .map(|(row, case)| Row {
            reference_img_per_s: (case.is_full() && case.batch == 128)
                .then(|| reference_rate(&reference, &row.precision, case.topics))
                .flatten(),
            ..row
        })
        .collect())
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
