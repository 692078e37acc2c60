//! `runner bench ingest`: images/s of the ingest stage against the reference Python ingest
//! (`ingest_lmdb.py`: PIL + lmdb, one process) on the same WebVision training list and settings,
//! measured in the same run, plus the JPEG decode floor (decoding alone, one thread) and the
//! store's bytes per image, for raw and JPEG stores.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::dataset::webvision;
use crate::recipe::params::{
    DatasetFormat, DatasetParams, ResizeMode, StoreEncoding, SyntheticParams,
};
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
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Measure websieve only.
    #[arg(long)]
    pub no_reference: bool,
}

/// One measured configuration.
struct Row {
    what: String,
    images: u64,
    seconds: f64,
    bytes: u64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.images as f64 / self.seconds
    }
}

pub fn run(args: &IngestBenchArgs) -> anyhow::Result<()> {
    let index = webvision::read(&args.root, &[Source::Google, Source::Flickr], false)
        .with_context(|| format!("reading {}", args.root.display()))?;
    let files: Vec<PathBuf> = index.train.iter().map(|s| s.file.clone()).collect();
    println!(
        "ingest bench: {} training images of {}, squash to {}",
        files.len(),
        args.root.display(),
        args.size
    );
    // One-thread pool: jpeg-decoder would otherwise spread its IDCT over the global pool.
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let floor = single.install(|| decode_floor(&files, args.size))?;
    println!(
        "decode floor (jpeg-decoder, 1 thread): {:.0} img/s decode only, {:.0} img/s decode + resize",
        floor.0, floor.1
    );
    for encoding in [
        StoreEncoding::Raw,
        StoreEncoding::Jpeg {
            quality: args.quality,
        },
    ] {
        let name = match encoding {
            StoreEncoding::Raw => "raw".to_string(),
            StoreEncoding::Jpeg { quality } => format!("jpeg q{quality}"),
        };
        let reference = if args.no_reference {
            None
        } else {
            Some(reference(args, encoding)?)
        };
        let mut rows = Vec::new();
        for &threads in &args.threads {
            rows.push(ours(args, encoding, threads)?);
        }
        println!("\n{name}:");
        println!(
            "{:<26} {:>9} {:>8} {:>10} {:>8} {:>10}",
            "", "img/s", "MB/s", "bytes/img", "vs ref", "vs floor"
        );
        for row in reference.iter().chain(&rows) {
            let vs_ref = reference
                .as_ref()
                .map_or("-".into(), |r| format!("{:.2}x", row.rate() / r.rate()));
            println!(
                "{:<26} {:>9.0} {:>8.1} {:>10.0} {:>8} {:>9.2}x",
                row.what,
                row.rate(),
                row.bytes as f64 / row.seconds / 1e6,
                row.bytes as f64 / row.images.max(1) as f64,
                vs_ref,
                row.rate() / floor.0,
            );
        }
        if let [one, two, ..] = rows.as_slice() {
            println!("scaling 1 → 2 threads: {:.2}x", two.rate() / one.rate());
        }
    }
    Ok(())
}

/// Images/s decoding every file once on one thread: alone, and with the resize.
fn decode_floor(files: &[PathBuf], size: u32) -> anyhow::Result<(f64, f64)> {
    let bytes: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let time = |f: &dyn Fn(&[u8])| {
        let start = Instant::now();
        bytes.iter().for_each(|b| f(b));
        bytes.len() as f64 / start.elapsed().as_secs_f64()
    };
    let decode_only = time(&|b| {
        let _ = codec::decode(b, size);
    });
    let with_resize = time(&|b| {
        let _ = codec::prepare(b, size, ResizeMode::Squash);
    });
    Ok((decode_only, with_resize))
}

fn ours(args: &IngestBenchArgs, encoding: StoreEncoding, threads: usize) -> anyhow::Result<Row> {
    let stage = tempfile_dir("websieve-bench-ingest")?;
    let params = webvision_params(&args.root, args.size, encoding);
    let options = IngestOptions {
        progress: false,
        threads,
        commit_every: 512,
        map_size: None,
    };
    let start = Instant::now();
    let report = ingest_with(&params, &stage, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&stage)?;
    Ok(Row {
        what: format!("websieve, {threads} thread(s)"),
        images: report.train,
        seconds,
        bytes: report.image_bytes,
    })
}

/// Squash-resized training images of a WebVision dataset, as the reference ingests them.
pub(crate) fn webvision_params(
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
        max_per_class: None,
        synthetic: SyntheticParams {
            classes: 0,
            min_per_class: 0,
            max_per_class: 0,
            val_per_class: 0,
            noise: 0.0,
            image_size: 0,
            seed: 0,
        },
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
        what: "reference (PIL, 1 process)".into(),
        images: images as u64,
        seconds,
        bytes: (bytes_per_image * images) as u64,
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
