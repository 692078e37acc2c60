//! `runner bench lda`: our online LDA against gensim's `LdaModel` (the same algorithm) on
//! the Debian corpus, side by side in one run, both scored by `lda_anchor.py`'s one
//! evaluator; and `runner bench lda noise`: noise-detection AUC of topic scores on a
//! WebVision-format dataset with a truth file (imagenette-web), read from its meta JSON.

use std::path::{Path, PathBuf};

use anyhow::Context;
use websieve::bench::lda::{
    noise_runs, read_webvision_text, train_and_infer, NoiseSettings, SCORINGS,
};
use websieve::recipe::params::{Calibration, ClassMean, LdaParams};
use websieve::recipe::Recipe;
use websieve::text::{SparseDoc, Vocabulary};

use super::run_python;

#[derive(Debug, clap::Args)]
pub struct LdaBenchArgs {
    #[command(subcommand)]
    pub which: LdaBench,
}

#[derive(Debug, clap::Subcommand)]
pub enum LdaBench {
    /// Training tokens/s, inference docs/s and completion log-likelihood vs gensim.
    Gensim(GensimArgs),
    /// Noise-detection AUC (dot vs cosine, several K) on a dataset with a truth file.
    Noise(NoiseArgs),
}

#[derive(Debug, clap::Args)]
pub struct NoiseArgs {
    /// WebVision-format dataset root (info/, meta/), e.g. ../shared/data/imagenette-web.
    #[arg(long)]
    pub root: PathBuf,
    /// Truth TSV (path, given_label, true_label, ...).
    #[arg(long)]
    pub truth: PathBuf,
    /// Folder for the stage outputs of every run.
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "50,100,500")]
    pub topics: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    pub passes: usize,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Share of each class discarded (the original's ~10%).
    #[arg(long, default_value_t = 0.1)]
    pub discard: f64,
    #[arg(long, default_value_t = 3)]
    pub min_count: u32,
    #[arg(long, default_value_t = 0.5)]
    pub max_doc_freq: f64,
    /// LDA seeds 1..=N per K (topic models differ by seed; the table gives mean and range).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
}

#[derive(Debug, clap::Args)]
pub struct GensimArgs {
    /// The corpus from `make_debian_corpus.sh` (JSON lines with a "text" field).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Folder for the bag-of-words dump and our λ files.
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long, default_value = "../shared/bench/lda_anchor.py")]
    pub anchor: PathBuf,
    /// Python with gensim and numpy.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub topics: Vec<usize>,
    /// Documents per update (gensim's chunksize in the anchor: 2000).
    #[arg(long, default_value_t = 2000)]
    pub batch: usize,
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    #[arg(long, default_value_t = 0.001)]
    pub tolerance: f64,
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    /// Threads for our side (default: rayon's, one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Runs of each side per K; the table reports the fastest of each.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Only our side (no gensim training run; its numbers are then missing from the table).
    #[arg(long)]
    pub skip_gensim: bool,
}

pub(super) fn run(args: &LdaBenchArgs) -> anyhow::Result<()> {
    match &args.which {
        LdaBench::Gensim(a) => run_gensim(a),
        LdaBench::Noise(a) => run_noise(a),
    }
}

fn run_gensim(args: &GensimArgs) -> anyhow::Result<()> {
    let dump = args.work.join("dump");
    if !dump.join("train.txt").exists() {
        run_python(
            &args.python,
            &[
                args.anchor.as_os_str(),
                args.corpus.as_os_str(),
                "--dump".as_ref(),
                dump.as_os_str(),
            ],
        )?;
    }
    let vocab = Vocabulary::load(&dump.join("vocab.txt"))?;
    let train = read_bows(&dump.join("train.txt"))?;
    let test = read_bows(&dump.join("test.txt"))?;
    let tokens: f64 = train.iter().map(SparseDoc::tokens).sum();
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "corpus: {} train docs, {} test docs, V={}, {tokens} train tokens; ours on {threads} threads; best of {} runs per side",
        train.len(),
        test.len(),
        vocab.len(),
        args.repeats
    );
    println!("load average at start: {}", load_average());
    println!("| K | impl | train s | tokens/s | ratio | infer docs/s | ratio | completion ll/word | held-out bound |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &k in &args.topics {
        let params = LdaParams {
            topics: k,
            passes: args.passes,
            batch_size: args.batch,
            e_step_iterations: args.iterations,
            e_step_tolerance: args.tolerance,
            seed: 1,
            ..Recipe::default().lda
        };
        // Best of `repeats` for both sides: the machine is shared, the minimum is the
        // least disturbed run. Training is deterministic, so every repeat gives the same λ.
        let mut best = (f64::INFINITY, Vec::new(), 0.0f64);
        for _ in 0..args.repeats {
            let (secs, lambda, infer_rate) =
                pool.install(|| train_and_infer(&params, &vocab, &train, &test))?;
            best = (best.0.min(secs), lambda, best.2.max(infer_rate));
        }
        let (ours_secs, lambda, infer_rate) = best;
        let lambda_path = args.work.join(format!("lambda_k{k}.npy"));
        websieve::npy::write(&lambda_path, &[k, vocab.len()], &lambda)?;
        let scored = run_python(
            &args.python,
            &[
                args.anchor.as_os_str(),
                "x".as_ref(),
                "--score-lambda".as_ref(),
                lambda_path.as_os_str(),
                "--dump-dir".as_ref(),
                dump.as_os_str(),
            ],
        )?;
        let ours = Measured {
            secs: ours_secs,
            completion: field(&scored, "completion_ll=")?,
            bound: field(&scored, "heldout_bound=")?,
        };
        let mut gensim_infer = 0.0f64;
        for _ in 0..args.repeats {
            gensim_infer = gensim_infer.max(gensim_inference_rate(args, &lambda_path, &dump)?);
        }
        let gensim = if args.skip_gensim {
            None
        } else {
            let mut best: Option<Measured> = None;
            for _ in 0..args.repeats {
                let out = run_python(
                    &args.python,
                    &[
                        args.anchor.as_os_str(),
                        args.corpus.as_os_str(),
                        "--topics".as_ref(),
                        k.to_string().as_ref(),
                        "--which".as_ref(),
                        "gensim".as_ref(),
                        "--passes".as_ref(),
                        args.passes.to_string().as_ref(),
                    ],
                )?;
                let run = Measured {
                    secs: field(&out, "secs=")?,
                    completion: field(&out, "completion_ll=")?,
                    bound: field(&out, "heldout_bound=")?,
                };
                if best.as_ref().is_none_or(|b| run.secs < b.secs) {
                    best = Some(run);
                }
            }
            best
        };
        let passes_tokens = tokens * args.passes as f64;
        if let Some(g) = &gensim {
            println!(
                "| {k} | gensim LdaModel | {:.2} | {:.0} | 1.0 | {gensim_infer:.0} | 1.0 | {:.4} | {:.4} |",
                g.secs,
                passes_tokens / g.secs,
                g.completion,
                g.bound
            );
        }
        let ratio = gensim
            .as_ref()
            .map_or("-".to_string(), |g| format!("{:.1}", g.secs / ours.secs));
        println!(
            "| {k} | websieve | {:.2} | {:.0} | {ratio} | {infer_rate:.0} | {:.1} | {:.4} | {:.4} |",
            ours.secs,
            passes_tokens / ours.secs,
            infer_rate / gensim_infer,
            ours.completion,
            ours.bound
        );
    }
    println!("load average at end: {}", load_average());
    Ok(())
}

/// The machine's load (other processes skew wall-clock ratios; the table should say so).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("n/a".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

struct Measured {
    secs: f64,
    completion: f64,
    bound: f64,
}

/// gensim's `get_document_topics` speed on the test documents, with our λ loaded into it.
fn gensim_inference_rate(args: &GensimArgs, lambda: &Path, dump: &Path) -> anyhow::Result<f64> {
    const SCRIPT: &str = r#"
import sys, time, numpy as np
from gensim.corpora import Dictionary
from gensim.models import LdaModel
lam = np.load(sys.argv[1]).astype(np.float64); d = sys.argv[2]
k, v = lam.shape
vocab = [l.rstrip("\n") for l in open(d + "/vocab.txt")]
dic = Dictionary([vocab]); dic.token2id = {t: i for i, t in enumerate(vocab)}
m = LdaModel(id2word=dic, num_topics=k, alpha=np.full(k, 1.0 / k), eta=np.full(v, 1.0 / k),
             iterations=int(sys.argv[3]), gamma_threshold=float(sys.argv[4]), random_state=1)
m.state.sstats = (lam - 1.0 / k).astype(m.dtype); m.sync_state()
test = [[(int(i), int(c)) for i, c in (t.split(":") for t in l.split())] for l in open(d + "/test.txt")]
t0 = time.perf_counter()
for doc in test: m.get_document_topics(doc, minimum_probability=0.0)
print(f"docs_per_s={len(test) / (time.perf_counter() - t0)}")
"#;
    let out = run_python(
        &args.python,
        &[
            "-c".as_ref(),
            SCRIPT.as_ref(),
            lambda.as_os_str(),
            dump.as_os_str(),
            args.iterations.to_string().as_ref(),
            args.tolerance.to_string().as_ref(),
        ],
    )?;
    field(&out, "docs_per_s=")
}

/// The number after `key` in the last line that has it.
fn field(output: &str, key: &str) -> anyhow::Result<f64> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(key))
        .with_context(|| format!("no {key} in output:\n{output}"))?;
    let rest = line[line.find(key).expect("found above") + key.len()..].trim_start();
    let number = rest.split_whitespace().next().unwrap_or("");
    number
        .parse()
        .with_context(|| format!("bad number after {key} in {line:?}"))
}

/// `lda_anchor.py --dump` documents: one per line, space-separated `id:count`.
fn read_bows(path: &Path) -> anyhow::Result<Vec<SparseDoc>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let pairs = line
                .split_whitespace()
                .map(|pair| {
                    let (id, count) = pair.split_once(':')?;
                    Some((id.parse().ok()?, count.parse().ok()?))
                })
                .collect::<Option<Vec<(u32, f32)>>>()
                .with_context(|| {
                    format!("{}:{}: expected id:count pairs", path.display(), n + 1)
                })?;
            Ok(SparseDoc::from_pairs(pairs))
        })
        .collect()
}

fn run_noise(args: &NoiseArgs) -> anyhow::Result<()> {
    let data = read_webvision_text(&args.root)
        .with_context(|| format!("reading {}", args.root.display()))?;
    let settings = NoiseSettings {
        truth: args.truth.clone(),
        work: args.work.clone(),
        passes: args.passes,
        batch: args.batch,
        discard: args.discard,
        min_count: args.min_count,
        max_doc_freq: args.max_doc_freq,
        seeds: args.seeds,
    };
    println!(
        "{}: {} training samples, {} classes; {} passes, batch {}, discard {:.0}% per class",
        args.root.display(),
        data.labels.len(),
        data.class_names.len(),
        args.passes,
        args.batch,
        args.discard * 100.0
    );
    println!("mean over seeds 1..={} [min, max]", args.seeds);
    println!("| K | similarity | AUC | macro AUC | noisy removed | precision of removal | LDA s |");
    println!("|---|---|---|---|---|---|---|");
    for &k in &args.topics {
        let runs = noise_runs(&data, &settings, k)?;
        let seconds = runs.lda_seconds;
        for (metrics, (similarity, mean, calibration)) in runs.metrics.iter().zip(SCORINGS) {
            let mut name = format!("{similarity:?}").to_lowercase();
            if let ClassMean::Trimmed { share, rounds } = mean {
                name += &format!(", mean trimmed {:.0}% × {rounds}", share * 100.0);
            }
            if calibration == Calibration::ClassZ {
                name += ", class-z";
            }
            let cell = |j: usize| {
                // Undefined for any seed (e.g. nothing discarded): no mean to show.
                let Some(v) = metrics.iter().map(|m| m[j]).collect::<Option<Vec<f64>>>() else {
                    return "n/a".to_string();
                };
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let (lo, hi) = v
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                format!("{mean:.3} [{lo:.3}, {hi:.3}]")
            };
            println!(
                "| {k} | {name} | {} | {} | {} | {} | {seconds:.1} |",
                cell(0),
                cell(1),
                cell(2),
                cell(3)
            );
        }
    }
    Ok(())
}
