//! `runner bench ingest`: images/s of the ingest stage against the reference Python ingest
//! (`ingest_lmdb.py`: PIL + lmdb, one process) on the same WebVision training list and settings,
//! measured in the same run, for raw and JPEG stores. Each variant is pinned to its cores (see
//! [`websieve::bench::cores`]): the reference and "1 core" to one CPU, so "per core" counts
//! the LMDB writer thread too. Each is run `--repeat` times, in rounds of every variant in
//! turn, and the median is reported, since on a VM the first run after a store is deleted can
//! pay the host for fresh pages. Also printed: the codec floor (decode, resize and JPEG encode
//! alone, one core, files in memory), MB/s written and the store's bytes per image.

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use websieve::bench::cores::{self, on_cores};
use websieve::bench::ingest;
use websieve::recipe::params::StoreEncoding;

use super::{encoding_name, run_python};

#[derive(Debug, clap::Args)]
pub struct IngestBenchArgs {
    /// WebVision-layout dataset whose training list is ingested.
    #[arg(long, default_value = "../shared/data/imagenette-web")]
    pub root: PathBuf,
    /// The reference script.
    #[arg(long, default_value = "../shared/bench/ingest_lmdb.py")]
    pub reference: PathBuf,
    /// Python with Pillow and lmdb installed.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Squash every image to this size (the reference's default mode).
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Core counts to measure websieve on (one decode thread per core).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub cores: Vec<usize>,
    /// Runs per variant; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Measure websieve only.
    #[arg(long)]
    pub no_reference: bool,
}

/// One measured configuration: images/s of each repetition.
struct Row {
    what: String,
    images: u64,
    rates: Vec<f64>,
    bytes_per_image: f64,
}

impl Row {
    fn median(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }

    fn range(&self) -> String {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        format!("{min:.0}-{max:.0}")
    }
}

pub(super) fn run(args: &IngestBenchArgs) -> anyhow::Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    cores::check(&args.cores)?;
    let files = ingest::training_files(&args.root)
        .with_context(|| format!("reading {}", args.root.display()))?;
    println!(
        "ingest bench: {} training images of {}, squash to {}, median of {} runs, {} core(s) available",
        files.len(),
        args.root.display(),
        args.size,
        args.repeat,
        cores::available()?
    );
    let floor = ingest::codec_floor(&files, args.size, args.quality)?;
    println!(
        "codec floor, 1 core, µs/img: decode {:.0}, resize {:.0}, jpeg encode {:.0}",
        floor.decode, floor.resize, floor.encode_jpeg
    );
    for encoding in [
        StoreEncoding::Raw,
        StoreEncoding::Jpeg {
            quality: args.quality,
        },
    ] {
        let name = encoding_name(encoding);
        // Rounds of every variant in turn, so that all of them (and the scaling ratio) see the
        // same drift in the machine's state.
        let mut variants: Vec<Box<dyn Fn() -> anyhow::Result<Row>>> = Vec::new();
        if !args.no_reference {
            variants.push(Box::new(move || on_cores(1, || reference(args, encoding))));
        }
        for &cores in &args.cores {
            variants.push(Box::new(move || ours(args, encoding, cores)));
        }
        let mut measured: Vec<Row> = Vec::new();
        for round in 0..args.repeat {
            for (i, variant) in variants.iter().enumerate() {
                let row = variant()?;
                match round {
                    0 => measured.push(row),
                    _ => measured[i].rates.extend(row.rates),
                }
            }
        }
        let (reference, rows) = match args.no_reference {
            true => (None, measured),
            false => {
                let rows = measured.split_off(1);
                (measured.pop(), rows)
            }
        };
        println!("\n{name} (codec floor {:.0} img/s):", floor.rate(encoding));
        println!(
            "{:<31} {:>6} {:>7} {:>11} {:>7} {:>10} {:>8} {:>9}",
            "", "images", "img/s", "range", "MB/s", "bytes/img", "vs ref", "vs floor"
        );
        for row in reference.iter().chain(&rows) {
            let vs_ref = reference
                .as_ref()
                .map_or("-".into(), |r| format!("{:.2}x", row.median() / r.median()));
            println!(
                "{:<31} {:>6} {:>7.0} {:>11} {:>7.1} {:>10.0} {:>8} {:>8.2}x",
                row.what,
                row.images,
                row.median(),
                row.range(),
                row.median() * row.bytes_per_image / 1e6,
                row.bytes_per_image,
                vs_ref,
                row.median() / floor.rate(encoding),
            );
        }
        if let [one, two, ..] = rows.as_slice() {
            println!(
                "scaling {} → {} cores: {:.2}x",
                args.cores[0],
                args.cores[1],
                two.median() / one.median()
            );
        }
    }
    Ok(())
}

fn ours(args: &IngestBenchArgs, encoding: StoreEncoding, cores: usize) -> anyhow::Result<Row> {
    let run = ingest::ingest_run(&args.root, args.size, encoding, cores)?;
    Ok(Row {
        what: format!("websieve, {cores} core(s)"),
        images: run.images,
        rates: vec![run.images as f64 / run.seconds],
        bytes_per_image: run.image_bytes as f64 / run.images.max(1) as f64,
    })
}

/// Runs the reference script and reads its last line
/// (`images=N skipped=N secs=S img/s=R MB/s=M bytes/img=B`).
fn reference(args: &IngestBenchArgs, encoding: StoreEncoding) -> anyhow::Result<Row> {
    let out = websieve::bench::temp_dir("websieve-bench-ingest-ref")?;
    let size = args.size.to_string();
    let mut argv: Vec<&OsStr> = vec![
        args.reference.as_os_str(),
        args.root.as_os_str(),
        out.as_os_str(),
        OsStr::new("--size"),
        OsStr::new(&size),
    ];
    let quality = match encoding {
        StoreEncoding::Raw => None,
        StoreEncoding::Jpeg { quality } => Some(quality.to_string()),
    };
    match &quality {
        None => argv.extend(["--encoding", "raw"].map(OsStr::new)),
        Some(q) => argv.extend(["--encoding", "jpeg", "--quality", q].map(OsStr::new)),
    }
    let output = run_python(&args.python, &argv);
    std::fs::remove_dir_all(&out)?;
    let stdout = output?;
    let field = |name: &str| -> anyhow::Result<f64> {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("no `{name}=` in the reference output: {stdout}"))?
            .parse()
            .with_context(|| format!("`{name}` in {stdout}"))
    };
    let (images, seconds, bytes_per_image) =
        (field("images")?, field("secs")?, field("bytes/img")?);
    Ok(Row {
        what: "reference (PIL + lmdb, 1 core)".into(),
        images: images as u64,
        rates: vec![images / seconds],
        bytes_per_image,
    })
}
