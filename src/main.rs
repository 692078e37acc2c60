//! `runner`: the command line of websieve. Thin: parses arguments, sets up logging, and calls
//! the library. Errors print as `error: ` and their chain of causes, each once, and exit with
//! status 2.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};
use websieve::recipe::{self, Recipe};
use websieve::runtime::World;
use websieve::stage::{RunContext, RunEnd, RunFolder, RunLog, StageKind, Workspace, RUN_LOG_ONLY};

const EXAMPLES: &str = "\
Examples:
  runner recipes/quickstart.toml                 run a recipe end to end
  runner 'recipes/ablation/*.toml'               run every recipe a glob matches, in sorted order
  runner 'recipes/ablation/*.toml' --jobs 2      two runs at once; a failed run stops none
  runner recipes/softlabel.toml --set train.optimizer.lr=0.02 --until score
  runner plan recipes/softlabel.toml             which stages are cached, what would run and why
  runner validate recipes/*.toml                 check recipes without running anything
  runner report runs/clean runs/softlabel        one table of settings and results
  runner export runs/clean                       per-sample verdicts and the cleaned file list
  runner schema -o schemas/recipe.schema.json    write the recipe JSON Schema";

/// Train image classifiers on noisy web data, declared in TOML recipes.
#[derive(Parser)]
#[command(name = "runner", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check recipes (types, ranges, inheritance, sweeps) and what a run checks before it
    /// starts (data present, devices usable), without running anything.
    Validate(PlanArgs),
    /// Show each run's stage graph: which stages are cached, what would run and why.
    Plan(PlanArgs),
    /// Print (or write) the recipe JSON Schema used by editors to complete and check recipes.
    Schema {
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// A table of runs' settings and results; runs without results are listed with their state.
    Report(ReportArgs),
    /// Write a run's per-sample verdicts (scores, rank in class, kept, λ) as CSV and JSON
    /// lines, a per-class summary, and the cleaned training list in the dataset's own format.
    Export(ExportArgs),
    /// Benchmarks that print throughput next to a reference measured in the same run.
    #[command(subcommand)]
    Bench(cli::bench::Bench),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  runner report runs/clean runs/softlabel\n  runner report runs/ablation   # every run below it, e.g. a sweep's points\n  runner report runs/imagenette --group-by-seed --format md\n  runner report runs/imagenette --html report   # then open report/index.html"
)]
struct ReportArgs {
    /// Run folders (with recipe.resolved.toml), or folders holding runs.
    #[arg(required = true, value_name = "RUNS")]
    runs: Vec<PathBuf>,
    /// How to write the table.
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormatArg,
    /// Fold runs that differ only in train.seed into one row: mean ± standard deviation.
    #[arg(long)]
    group_by_seed: bool,
    /// Also write one static page (index.html and its PNGs) into this folder: the table,
    /// training curves, score histograms, the lowest-scored images with their page text,
    /// confusion matrices and per-class tables.
    #[arg(long, value_name = "DIR")]
    html: Option<PathBuf>,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  runner export runs/clean               # into runs/clean/export/\n  runner export runs/clean -o verdicts/"
)]
struct ExportArgs {
    /// The run folder (it must have got through the score stage).
    #[arg(value_name = "RUN")]
    run: PathBuf,
    /// Write here instead of RUN/export/.
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormatArg {
    Text,
    Md,
    Csv,
    Json,
}

/// `--until`: a stage name.
fn parse_stage(name: &str) -> Result<StageKind, String> {
    StageKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = StageKind::ALL.iter().map(|k| k.name()).collect();
        format!("no stage {name:?}: one of {}", names.join(", "))
    })
}

#[derive(Args)]
struct RecipeArgs {
    /// Recipe files or globs (quote a glob to let runner expand it).
    #[arg(required = true, value_name = "RECIPE")]
    recipes: Vec<String>,
    /// Override a setting, type-checked like the file: --set train.optimizer.lr=0.02
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    recipes: RecipeArgs,
    /// Last stage to run.
    #[arg(long, value_parser = parse_stage, default_value = "eval")]
    until: StageKind,
    #[command(flatten)]
    places: Places,
}

#[derive(Args)]
struct RunArgs {
    /// Recipe files or globs (quote a glob to let runner expand it).
    #[arg(value_name = "RECIPE")]
    recipes: Vec<String>,
    /// Override a setting, type-checked like the file: --set train.optimizer.lr=0.02
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Last stage to run.
    #[arg(long, value_parser = parse_stage, default_value = "eval")]
    until: StageKind,
    /// Validate and show the plan, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Build this stage and every later one again, even where the cache has them (their
    /// cached outputs are replaced).
    #[arg(long, value_parser = parse_stage, value_name = "STAGE")]
    rebuild: Option<StageKind>,
    /// Worker processes to start on this machine, one rank each (as torchrun's option).
    /// Default: one per GPU of train.devices, one on the CPU. Not used when a launcher
    /// (torchrun, srun) started this process.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    nproc_per_node: Option<u16>,
    /// Runs to go at once, each in its own process sharing this machine's cores (recipes
    /// and sweep points; runs that share a stage wait for one another to build it).
    #[arg(short, long, value_name = "N", default_value_t = 1, overrides_with = "jobs",
          value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Run only the recipe (or sweep point) of this name: how `--jobs` starts each run.
    #[arg(long, value_name = "NAME", hide = true)]
    only: Option<String>,
    #[command(flatten)]
    places: Places,
}

#[derive(Args)]
struct Places {
    /// Stage cache folder, shared between runs.
    #[arg(long, env = "WEBSIEVE_CACHE", default_value = "cache")]
    cache: PathBuf,
    /// Run folders go here.
    #[arg(long, env = "WEBSIEVE_RUNS", default_value = "runs")]
    runs: PathBuf,
}

impl Places {
    fn workspace(&self) -> Workspace {
        Workspace::new(&self.cache, &self.runs)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // candle asks the OS for the CPU count on every parallel op unless this is set; setting it
    // once made the small net's training step 1.5× faster (see BENCHMARKS.md).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    // candle splits each element-wise op over a pool of its own that waits at a barrier; on
    // 2 cores that made the full net's training step 1.3× slower at 1 rank and 1.3× slower
    // at 2 thread ranks (train.cpu_ranks), whose ops queued for the one shared pool
    // (BENCHMARKS.md, "runner bench train"). Our own ops use rayon; this keeps candle's inline.
    // Set here, before any thread starts.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
    init_logging(cli.quiet);
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain_text(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by ": " as `{:#}` joins them, but each cause once: most
/// library errors already show their source in their own message (`{path}: {source}`).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// glibc hands blocks over 128 kB to `mmap` and trims freed heap tops back to the OS, so a
/// stage that allocates and frees many such blocks (LMDB's 196 kB overflow pages per raw
/// image, decoded and resized images) takes fresh, zero-filled pages again and again, page
/// faults that contend for the process's memory map across threads. Keeping blocks up to
/// 32 MB on the heap and up to 512 MB of freed heap raised a raw ingest on 2 cores from a
/// median of 3205 to 3777 img/s in paired runs (BENCHMARKS.md).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    // Colour only for a person at a terminal who has not asked for none (no-color.org): in
    // files and pipes escape codes are noise.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let human = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .compact()
        .with_filter(
            EnvFilter::try_from_env("WEBSIEVE_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default))
                .add_directive(
                    format!("{RUN_LOG_ONLY}=off")
                        .parse()
                        .expect("static directive"),
                ),
        );
    let json = fmt::layer()
        .json()
        .with_writer(|| RunLog)
        .with_filter(EnvFilter::new("info"));
    tracing_subscriber::registry().with(human).with(json).init();
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Validate(args)) => {
            let recipes = load(&args.recipes)?;
            // The same checks a run makes before it starts (data present, devices usable).
            let ws = args.places.workspace();
            let problems: Vec<String> = recipes
                .iter()
                .filter_map(|r| ws.preflight(r, args.until).err())
                .map(|e| e.to_string())
                .collect();
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            for r in &recipes {
                println!("ok  {}  ({})", r.name, r.path.display());
            }
            Ok(())
        }
        Some(Command::Plan(args)) => {
            let recipes = load(&args.recipes)?;
            let ws = args.places.workspace();
            for r in &recipes {
                print!("{}", ws.plan(r, args.until)?.describe());
            }
            Ok(())
        }
        Some(Command::Schema { out }) => {
            let schema = recipe::schema_json();
            match out {
                Some(path) => std::fs::write(&path, schema)
                    .with_context(|| format!("writing {}", path.display())),
                None => {
                    print!("{schema}");
                    Ok(())
                }
            }
        }
        Some(Command::Report(args)) => {
            use websieve::report::{report_with, ReportFormat, ReportOptions};
            let format = match args.format {
                ReportFormatArg::Text => ReportFormat::Text,
                ReportFormatArg::Md => ReportFormat::Markdown,
                ReportFormatArg::Csv => ReportFormat::Csv,
                ReportFormatArg::Json => ReportFormat::Json,
            };
            let options = ReportOptions {
                format,
                group_by_seed: args.group_by_seed,
            };
            print!("{}", report_with(&args.runs, &options)?);
            if let Some(dir) = &args.html {
                let runs = websieve::report::find_runs(&args.runs)?
                    .iter()
                    .map(|dir| websieve::report::load_run(dir))
                    .collect::<Result<Vec<_>, _>>()?;
                let page = websieve::report::write_html(&runs, &options, dir)?;
                println!("report page: {}", page.display());
            }
            Ok(())
        }
        Some(Command::Export(args)) => {
            let done = websieve::export::export(&args.run, args.out.as_deref())?;
            println!(
                "{} samples, {} kept: {} in {}",
                done.samples,
                done.kept,
                done.files.join(", "),
                done.dir.display()
            );
            Ok(())
        }
        Some(Command::Bench(bench)) => cli::bench::run(bench),
        None => run(cli.run),
    }
}

fn load(args: &RecipeArgs) -> anyhow::Result<Vec<Recipe>> {
    Ok(recipe::load(&args.recipes, &args.sets)?)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.recipes.is_empty() {
        bail!("no recipe given: try `runner recipes/quickstart.toml`, or `runner --help`");
    }
    let mut recipes = recipe::load(&args.recipes, &args.sets)?;
    if let Some(only) = &args.only {
        recipes.retain(|r| &r.name == only);
        if recipes.is_empty() {
            bail!("--only {only}: no recipe of that name");
        }
    }
    let ws = args.places.workspace();
    if args.dry_run {
        for r in &recipes {
            print!("{}", ws.plan(r, args.until)?.describe());
        }
        return Ok(());
    }
    for r in &recipes {
        ws.preflight(r, args.until)?;
    }
    if !World::from_env()?.is_distributed() {
        let trains = args.until >= StageKind::Train;
        let workers = args.nproc_per_node.map(usize::from).unwrap_or_else(|| {
            recipes
                .iter()
                .filter(|_| trains)
                .map(websieve::stage::local_workers)
                .max()
                .unwrap_or(1)
        });
        if workers > 1 {
            tracing::info!(workers, "starting one worker process per rank");
            let program = std::env::current_exe().context("finding the runner binary")?;
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            websieve::launch::run_local_workers(workers, &program, &args)?;
            return Ok(());
        }
    }
    let ctx = RunContext {
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        progress: true,
        rebuild_from: args.rebuild,
    };
    if let [recipe] = recipes.as_slice() {
        // One run of several, started by `--jobs`: skipped like the others when finished.
        if args.only.is_some() && ws.is_finished(recipe, args.until) {
            announce(&RunEnd::Skipped {
                run: recipe.name.clone(),
            });
            return Ok(());
        }
        // One run: its error is the command's.
        let outcome = ws.run(recipe, args.until, &ctx)?;
        announce(&RunEnd::Finished(Box::new(outcome)));
        return Ok(());
    }
    let ends: Vec<(String, Result<(), String>)> = if args.jobs > 1 {
        run_as_jobs(&recipes, usize::from(args.jobs))?
    } else {
        ws.run_each(&recipes, args.until, &ctx, &mut announce)?
            .into_iter()
            .map(|end| match end {
                RunEnd::Failed { run, error } => (run, Err(error)),
                other => (other.run().to_string(), Ok(())),
            })
            .collect()
    };
    print_comparison(&ws, &recipes);
    let failed: Vec<&(String, Result<(), String>)> =
        ends.iter().filter(|(_, r)| r.is_err()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut message = format!("{} of {} runs failed:", failed.len(), ends.len());
    for (run, result) in failed {
        if let Err(error) = result {
            message.push_str(&format!("\n  {run}: {error}"));
        }
    }
    bail!("{message}")
}

/// The report of the runs of this call, side by side (as `runner report` prints it), and its
/// page in `<runs>/report/`.
fn print_comparison(ws: &Workspace, recipes: &[Recipe]) {
    let runs: Vec<websieve::report::RunSummary> = recipes
        .iter()
        .map(|r| ws.run_folder(&r.name))
        .filter(|folder| RunFolder::is_run(folder.dir()))
        .filter_map(|folder| websieve::report::load_run(folder.dir()).ok())
        .collect();
    if runs.len() > 1 {
        let options = websieve::report::ReportOptions::default();
        println!("\n{}", websieve::report::render_report(&runs, &options));
        match websieve::report::write_html(&runs, &options, &ws.runs.join("report")) {
            Ok(page) => println!("report page: {}", page.display()),
            Err(e) => eprintln!("warning: the report page was not written: {e:#}"),
        }
    }
}

/// Says how a run ended: its table when it evaluated, where its folder is.
fn announce(end: &RunEnd) {
    match end {
        RunEnd::Finished(outcome) => {
            if let Some(table) = &outcome.table {
                println!("{}\n{table}", outcome.run);
            }
            if let Some(kept) = &outcome.kept_earlier_run {
                tracing::info!(run = %outcome.run, kept = %kept.display(), "the earlier run of another recipe under this name was kept");
            }
            tracing::info!(run = %outcome.run, dir = %outcome.run_dir.display(), "run finished");
        }
        RunEnd::Skipped { run } => {
            tracing::info!(run = %run, "already finished, every stage cached: skipped")
        }
        RunEnd::Failed { run, error } => {
            tracing::error!(run = %run, "run failed: {error}")
        }
    }
}

/// Each recipe in its own `runner` process (this command line with `--only NAME`), `jobs`
/// at once; returns how each ended.
fn run_as_jobs(
    recipes: &[Recipe],
    jobs: usize,
) -> anyhow::Result<Vec<(String, Result<(), String>)>> {
    if recipes
        .iter()
        .any(|r| websieve::stage::local_workers(r) > 1)
    {
        bail!("--jobs runs one process per run: it cannot be combined with runs on several GPUs (train.devices); run those one after another");
    }
    let program = std::env::current_exe().context("finding the runner binary")?;
    let own: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let args_for = |name: &str| {
        let mut args = own.clone();
        args.extend(["--jobs".into(), "1".into(), "--only".into(), name.into()]);
        args
    };
    let names: Vec<String> = recipes.iter().map(|r| r.name.clone()).collect();
    let waits = websieve::stage::order::waits_for(recipes)?;
    tracing::info!(runs = names.len(), jobs, "running several at once");
    let ends =
        websieve::launch::run_jobs(
            &program,
            &names,
            &waits,
            &args_for,
            jobs,
            &mut |end| match &end.result {
                Ok(()) => tracing::info!(run = %end.name, "run finished"),
                Err(error) => tracing::error!(run = %end.name, "run failed: {error}"),
            },
        );
    Ok(ends.into_iter().map(|end| (end.name, end.result)).collect())
}
