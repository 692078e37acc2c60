//! `runner bench ingest`: images/s of the ingest stage against the reference Python ingest
//! (`ingest_lmdb.py`: PIL + lmdb, one process) on the same WebVision training list and settings,
//! measured in the same run, for raw and JPEG stores. Each variant is pinned to its cores (see
//! [`super::cores`]): the reference and "1 core" to one CPU, so "per core" counts the LMDB
//! writer thread too. Each is run `--repeat` times, in rounds of every variant in turn, and the
//! median is reported, since on a VM the first run after a store is deleted can pay the host
//! for fresh pages. Also printed: the codec floor (decode, resize and JPEG encode alone, one
//! core, files in memory), MB/s written and the store's bytes per image.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use super::cores::on_cores;
use crate::dataset::webvision;
use crate::recipe::params::{DatasetFormat, DatasetParams, ResizeMode, StoreEncoding};
use crate::recipe::Recipe;
use crate::sample::Source;
use crate::store::{codec, ingest_with, IngestOptions};

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

/// Microseconds per image of each codec step, one core, files in memory.
struct Floor {
    decode: f64,
    resize: f64,
    encode_jpeg: f64,
}

impl Floor {
    /// Images/s of the codec work a store of `encoding` needs.
    fn rate(&self, encoding: StoreEncoding) -> f64 {
        let micros = match encoding {
            StoreEncoding::Raw => self.decode + self.resize,
            StoreEncoding::Jpeg { .. } => self.decode + self.resize + self.encode_jpeg,
        };
        1e6 / micros
    }
}

pub fn run(args: &IngestBenchArgs) -> anyhow::Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    super::cores::check(&args.cores)?;
    let index = webvision::read(&args.root, &[Source::Google, Source::Flickr], false)
        .with_context(|| format!("reading {}", args.root.display()))?;
    let files: Vec<PathBuf> = index.train.iter().map(|s| s.file.clone()).collect();
    println!(
        "ingest bench: {} training images of {}, squash to {}, median of {} runs, {} core(s) available",
        files.len(),
        args.root.display(),
        args.size,
        args.repeat,
        super::cores::available()?
    );
    let floor = on_cores(1, || codec_floor(&files, args.size, args.quality))?;
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
        let name = super::encoding_name(encoding);
        // Rounds of every variant in turn, so that all of them (and the scaling ratio) see the
        // same drift in the machine's state.
        let mut variants: Vec<Box<dyn Fn() -> anyhow::Result<Row>>> = Vec::new();
        if !args.no_reference {
            variants.push(Box::new(move || on_cores(1, || reference(args, encoding))));
        }
        for &cores in &args.cores {
            variants.push(Box::new(move || {
                on_cores(cores, || ours(args, encoding, cores))
            }));
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

/// Times each codec step over every file once, one image at a time (as ingest does, so buffers
/// are reused rather than freshly faulted in).
fn codec_floor(files: &[PathBuf], size: u32, quality: u8) -> anyhow::Result<Floor> {
    let bytes: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let mut seconds = [0f64; 3];
    for file in &bytes {
        let start = Instant::now();
        let Ok(decoded) = codec::decode(file, size) else {
            continue;
        };
        let decoded_at = Instant::now();
        let resized = codec::resize(&decoded, size, size);
        let resized_at = Instant::now();
        codec::encode_record(0, &resized, StoreEncoding::Jpeg { quality })
            .map_err(|skip| anyhow::anyhow!("encoding: {}", skip.detail))?;
        seconds[0] += (decoded_at - start).as_secs_f64();
        seconds[1] += (resized_at - decoded_at).as_secs_f64();
        seconds[2] += resized_at.elapsed().as_secs_f64();
    }
    let [decode, resize, encode_jpeg] = seconds.map(|s| s * 1e6 / bytes.len() as f64);
    Ok(Floor {
        decode,
        resize,
        encode_jpeg,
    })
}

fn ours(args: &IngestBenchArgs, encoding: StoreEncoding, cores: usize) -> anyhow::Result<Row> {
    let stage = tempfile_dir("websieve-bench-ingest")?;
    let params = webvision_params(&args.root, args.size, encoding);
    let options = IngestOptions {
        progress: false,
        threads: cores,
        ..IngestOptions::default()
    };
    let start = Instant::now();
    let report = ingest_with(&params, &stage, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&stage)?;
    Ok(Row {
        what: format!("websieve, {cores} core(s)"),
        images: report.train,
        rates: vec![report.train as f64 / seconds],
        bytes_per_image: report.image_bytes as f64 / report.train.max(1) as f64,
    })
}

/// Squash-resized training images of a WebVision dataset, as the reference ingests them.
pub fn webvision_params(
    root: &std::path::Path,
    size: u32,
    encoding: StoreEncoding,
) -> DatasetParams {
    DatasetParams {
        format: DatasetFormat::Webvision,
        root: Some(root.to_path_buf()),
        sources: vec![Source::Google, Source::Flickr],
        resize: size,
        resize_mode: ResizeMode::Squash,
        encoding,
        val: false,
        ..Recipe::default().dataset
    }
}

/// Runs the reference script and reads its last line
/// (`images=N skipped=N secs=S img/s=R MB/s=M bytes/img=B`).
fn reference(args: &IngestBenchArgs, encoding: StoreEncoding) -> anyhow::Result<Row> {
    let out = tempfile_dir("websieve-bench-ingest-ref")?;
    let mut command = std::process::Command::new(&args.python);
    command
        .arg(&args.reference)
        .arg(&args.root)
        .arg(&out)
        .args(["--size", &args.size.to_string()]);
    match encoding {
        StoreEncoding::Raw => command.args(["--encoding", "raw"]),
        StoreEncoding::Jpeg { quality } => {
            command.args(["--encoding", "jpeg", "--quality", &quality.to_string()])
        }
    };
    let output = command
        .output()
        .with_context(|| format!("running {}", args.reference.display()))?;
    std::fs::remove_dir_all(&out)?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.reference.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
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

/// A fresh folder under the system temp dir (removed by the caller).
pub(crate) fn tempfile_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
