//! Ingest throughput: websieve's ingest stage on a WebVision training list, pinned to N cores
//! (one decode thread per core; "1 core" counts the LMDB writer thread too), and the codec
//! floor: decode, resize and JPEG encode alone, one core, files in memory. In: the dataset
//! root, the squash size, the store encoding. Out: images, seconds and store bytes of a run;
//! microseconds per image of each codec step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cores::on_cores;
use super::BenchError;
use crate::dataset::{webvision, PageTexts};
use crate::recipe::params::{DatasetFormat, DatasetParams, ResizeMode, StoreEncoding};
use crate::recipe::Recipe;
use crate::sample::Source;
use crate::store::{codec, ingest_with, IngestOptions};

/// The training images of a WebVision-layout dataset, both sources, in list order.
pub fn training_files(root: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let index = webvision::read(
        root,
        &[Source::Google, Source::Flickr],
        false,
        PageTexts::default(),
    )?;
    Ok(index.train.into_iter().map(|s| s.file).collect())
}

/// Microseconds per image of each codec step, one core, files in memory.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub decode: f64,
    pub resize: f64,
    pub encode_jpeg: f64,
}

impl Floor {
    /// Images/s of the codec work a store of `encoding` needs.
    pub fn rate(&self, encoding: StoreEncoding) -> f64 {
        let micros = match encoding {
            StoreEncoding::Raw => self.decode + self.resize,
            StoreEncoding::Jpeg { .. } => self.decode + self.resize + self.encode_jpeg,
        };
        1e6 / micros
    }
}

/// Times each codec step over every file once on one core, one image at a time (as ingest
/// does, so buffers are reused rather than freshly faulted in). Files that do not decode are
/// skipped, as ingest skips them.
pub fn codec_floor(files: &[PathBuf], size: u32, quality: u8) -> Result<Floor, BenchError> {
    on_cores(1, || {
        let bytes: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).map_err(BenchError::io(f)))
            .collect::<Result<_, _>>()?;
        let mut seconds = [0f64; 3];
        for (file, path) in bytes.iter().zip(files) {
            let start = Instant::now();
            let Ok(decoded) = codec::decode(file, size) else {
                continue;
            };
            let decoded_at = Instant::now();
            let resized = codec::resize(&decoded, size, size);
            let resized_at = Instant::now();
            codec::encode_record(0, &resized, StoreEncoding::Jpeg { quality }).map_err(|skip| {
                BenchError::Encode {
                    path: path.clone(),
                    detail: skip.detail,
                }
            })?;
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
    })
}

/// One ingest: training images stored, wall-clock seconds, bytes of stored images.
#[derive(Debug, Clone, Copy)]
pub struct IngestRun {
    pub images: u64,
    pub seconds: f64,
    pub image_bytes: u64,
}

/// Ingests the training list of the WebVision dataset at `root` (squashed to `size`, stored
/// as `encoding`) into a fresh folder, pinned to `cores` cores with one decode thread each;
/// the folder is removed afterwards.
pub fn ingest_run(
    root: &Path,
    size: u32,
    encoding: StoreEncoding,
    cores: usize,
) -> Result<IngestRun, BenchError> {
    on_cores(cores, || {
        let stage = super::temp_dir("websieve-bench-ingest")?;
        let options = IngestOptions {
            progress: false,
            threads: cores,
            ..IngestOptions::default()
        };
        let start = Instant::now();
        let report = ingest_with(&webvision_params(root, size, encoding), &stage, &options)?;
        let seconds = start.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&stage).map_err(BenchError::io(&stage))?;
        Ok(IngestRun {
            images: report.train,
            seconds,
            image_bytes: report.image_bytes,
        })
    })
}

/// Squash-resized training images of a WebVision dataset, as the reference ingests them.
pub fn webvision_params(root: &Path, size: u32, encoding: StoreEncoding) -> DatasetParams {
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
