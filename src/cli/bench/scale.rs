//! `runner bench scale`: WebVision 1.0's data path on generated data at one or more sizes,
//! each stage measured in a child process (`runner bench scale --stage <stage>`, this binary
//! again): its wall time, CPU time and peak resident memory, and from the first size to the
//! last the ratio of each. The measurement is the library's ([`websieve::bench::scale`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use websieve::bench::scale::{self, ScaleSettings, ScaleStage, Usage};

#[derive(Debug, clap::Args)]
pub struct ScaleBenchArgs {
    /// A recipe with a synthetic dataset in WebVision's shape (`dataset.synthetic.train_samples`).
    #[arg(long, default_value = "recipes/scale.toml")]
    pub recipe: PathBuf,
    /// Settings to override, as `runner --set` takes them.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Training-sample counts to measure, smallest first.
    #[arg(long, value_delimiter = ',', default_value = "240000,2400000")]
    pub samples: Vec<usize>,
    /// Where the generated datasets and the stage folders go (tens of GB at 2.4M samples).
    #[arg(long, default_value = "/tmp/websieve-scale")]
    pub work: PathBuf,
    /// The stages to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "generate,ingest,lda,score,sampler"
    )]
    pub stages: Vec<String>,
    /// Run this one stage here, at the first size (what each measured child does).
    #[arg(long, hide = true)]
    pub stage: Option<String>,
}

fn stage(name: &str) -> anyhow::Result<ScaleStage> {
    ScaleStage::from_name(name).with_context(|| {
        let names: Vec<&str> = ScaleStage::ALL.iter().map(|s| s.name()).collect();
        format!("stage `{name}`: expected one of {}", names.join(", "))
    })
}

pub(super) fn run(args: &ScaleBenchArgs) -> anyhow::Result<()> {
    let settings = |samples| ScaleSettings {
        recipe: args.recipe.clone(),
        sets: args.sets.clone(),
        samples,
        work: args.work.clone(),
    };
    if let Some(name) = &args.stage {
        let samples = *args.samples.first().context("--samples is empty")?;
        println!(
            "{}",
            scale::run_stage_watched(stage(name)?, &settings(samples))?
        );
        return Ok(());
    }
    let stages = args
        .stages
        .iter()
        .map(|s| stage(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.samples.is_empty() {
        bail!("--samples is empty");
    }
    let exe = std::env::current_exe().context("this binary's path")?;
    let mut measured: Vec<Vec<Usage>> = Vec::new();
    for &samples in &args.samples {
        println!("\n{samples} training samples ({}):", load_average());
        println!(
            "{:<9} {:>9} {:>9} {:>9} {:>10} {:>10}  outcome",
            "stage", "wall s", "CPU s", "CPU/wall", "RSS MB", "anon MB"
        );
        let mut row = Vec::new();
        for &stage in &stages {
            let mut command = Command::new(&exe);
            command
                .args(["bench", "scale", "--stage", stage.name()])
                .arg("--recipe")
                .arg(&args.recipe)
                .arg("--work")
                .arg(&args.work)
                .arg("--samples")
                .arg(samples.to_string())
                .args(args.sets.iter().flat_map(|s| ["--set", s.as_str()]));
            let (usage, outcome) = scale::measure(&mut command)?;
            println!(
                "{:<9} {:>9.1} {:>9.1} {:>9.2} {:>10.0} {:>10.0}  {}",
                stage.name(),
                usage.wall.as_secs_f64(),
                usage.cpu.as_secs_f64(),
                usage.cpu.as_secs_f64() / usage.wall.as_secs_f64().max(1e-9),
                usage.max_rss as f64 / 1e6,
                usage.max_anon as f64 / 1e6,
                outcome.trim(),
            );
            row.push(usage);
        }
        measured.push(row);
    }
    if let (Some(first), Some(last), true) =
        (measured.first(), measured.last(), args.samples.len() > 1)
    {
        let (small, large) = (args.samples[0], args.samples[args.samples.len() - 1]);
        println!(
            "\n{large} / {small} samples = {:.1}x (after: {}):",
            large as f64 / small as f64,
            load_average()
        );
        println!(
            "{:<9} {:>9} {:>9} {:>10} {:>10}",
            "stage", "wall", "CPU", "RSS", "anon"
        );
        for ((stage, a), b) in stages.iter().zip(first).zip(last) {
            println!(
                "{:<9} {:>8.2}x {:>8.2}x {:>9.2}x {:>9.2}x",
                stage.name(),
                b.wall.as_secs_f64() / a.wall.as_secs_f64().max(1e-9),
                b.cpu.as_secs_f64() / a.cpu.as_secs_f64().max(1e-9),
                b.max_rss as f64 / a.max_rss.max(1) as f64,
                b.max_anon as f64 / a.max_anon.max(1) as f64
            );
        }
    }
    Ok(())
}

/// The load average, as `uptime` shows it: the cores are shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().take(3).collect();
            format!("load average {}", fields.join(", "))
        })
        .unwrap_or_else(|_| "load average unknown".into())
}
