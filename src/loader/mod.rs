//! Batches for training and evaluation: crops, mirror, mean subtraction, samplers and a
//! multi-threaded prefetching pipeline.
//!
//! In: a [`Store`] and sample ids. Out: [`Batch`]es of f32 or bf16 pixels ([`Pixels`]), NCHW,
//! row-major, converted from u8 by the workers.
//!
//! **Channel order: RGB, end to end.** The store keeps RGB, batches are RGB, and the mean
//! (`mean_rgb`, 0..255 scale) is given in RGB order and subtracted per channel; no scaling
//! beyond that. (The original fed RGB images with means given in BGR order; a recipe porting
//! Caffe's `[104, 117, 123]` must write it as `mean_rgb = [123, 117, 104]`.)
//!
//! Training batch `k` is a pure function of (seed, samples, weights, k): resuming asks for the
//! stream from the next batch, and the worker count changes nothing but speed.

mod pipeline;
pub mod sampler;

use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::recipe::params::{CropSet, Precision, SamplerKind, TrainParams};
use crate::sample::{Batch, Pixels, Split};
use crate::store::{RgbRecord, Store, StoreError, StoreReader};
use pipeline::{BatchSource, Pipeline};
use sampler::{batch_rng, EpochCache, Sampler};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no samples to load")]
    NoSamples,
    #[error("sampler weights: {0}")]
    Weights(String),
    #[error("{split} id {id}: image is {width}x{height}, smaller than the {crop}px crop", split = split.as_str())]
    TooSmall {
        split: Split,
        id: u64,
        width: u32,
        height: u32,
        crop: u32,
    },
    #[error("loader setting: {0}")]
    Config(String),
    #[error("a loader worker stopped unexpectedly")]
    WorkerStopped,
}

/// How training batches are made.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Side of the random square crop.
    pub crop: u32,
    pub mirror: bool,
    /// Subtracted per channel, RGB order, 0..255 scale.
    pub mean_rgb: [f32; 3],
    pub sampler: SamplerKind,
    pub workers: usize,
    pub seed: u64,
    /// Element type of the batches.
    pub precision: Precision,
}

impl LoaderConfig {
    /// The batches `train` asks for, `global_batch` images each (`batch_per_device` × ranks).
    pub fn for_training(train: &TrainParams, global_batch: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: global_batch,
            crop: train.augmentation.crop,
            mirror: train.augmentation.mirror,
            mean_rgb: train.augmentation.mean_rgb,
            sampler: train.sampler,
            workers: train.workers,
            seed: train.seed,
            precision: train.precision,
        }
    }
}

/// How evaluation batches are made.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Side of the square crops.
    pub crop: u32,
    pub crops: CropSet,
    /// Subtracted per channel, RGB order, 0..255 scale.
    pub mean_rgb: [f32; 3],
    /// Whole samples per batch (each brings all its crops).
    pub samples_per_batch: usize,
    pub workers: usize,
    /// Element type of the batches.
    pub precision: Precision,
}

/// A crop's top-left corner and whether it is mirrored (left-right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub mirror: bool,
}

/// The crops of an eval `CropSet` for a `width × height` image (needs `crop ≤ width, height`):
/// center; the four corners (top-left, top-right, bottom-left, bottom-right); those and their
/// mirrors; or corners + center, then the same five mirrored.
pub fn crop_boxes(crops: CropSet, width: u32, height: u32, crop: u32) -> Vec<CropBox> {
    let (right, bottom) = (width.saturating_sub(crop), height.saturating_sub(crop));
    let at = |x, y| CropBox {
        x,
        y,
        mirror: false,
    };
    let corners = [at(0, 0), at(right, 0), at(0, bottom), at(right, bottom)];
    let center = at(right / 2, bottom / 2);
    let mirrored = |boxes: &[CropBox]| {
        boxes
            .iter()
            .map(|b| CropBox { mirror: true, ..*b })
            .collect::<Vec<_>>()
    };
    match crops {
        CropSet::Center => vec![center],
        CropSet::Four => corners.to_vec(),
        CropSet::Eight => [corners.to_vec(), mirrored(&corners)].concat(),
        CropSet::Ten => {
            let five = [corners.as_slice(), &[center]].concat();
            [five.clone(), mirrored(&five)].concat()
        }
    }
}

/// An element type batches can hold.
pub trait PixelValue: Copy {
    fn from_f32(value: f32) -> Self;
}

impl PixelValue for f32 {
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl PixelValue for half::bf16 {
    /// Round to nearest, ties to even, as `half::bf16::from_f32`, without its NaN branch: the
    /// values are u8 minus a finite mean. `runner bench loader`, raw store, 1 core: 10.4k → 13.8k
    /// img/s.
    fn from_f32(value: f32) -> Self {
        let bits = value.to_bits();
        let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
        half::bf16::from_bits((rounded >> 16) as u16)
    }
}

/// Writes the `crop × crop` window at `b` of an RGB image `width` pixels wide into `out`
/// (3 planes of `crop²`), mirrored if asked, minus `mean`, rounded to `T`.
pub fn fill_crop<T: PixelValue>(
    rgb: &[u8],
    width: u32,
    b: CropBox,
    crop: u32,
    mean: [f32; 3],
    out: &mut [T],
) {
    let (c, w) = (crop as usize, width as usize);
    let plane = c * c;
    let (r_plane, rest) = out[..3 * plane].split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for row in 0..c {
        let start = ((b.y as usize + row) * w + b.x as usize) * 3;
        let src = &rgb[start..start + 3 * c];
        let dst = row * c..(row + 1) * c;
        let (r, g, bl) = (
            &mut r_plane[dst.clone()],
            &mut g_plane[dst.clone()],
            &mut b_plane[dst],
        );
        let mut put = |i: usize, px: &[u8]| {
            r[i] = T::from_f32(f32::from(px[0]) - mean[0]);
            g[i] = T::from_f32(f32::from(px[1]) - mean[1]);
            bl[i] = T::from_f32(f32::from(px[2]) - mean[2]);
        };
        if b.mirror {
            src.chunks_exact(3)
                .rev()
                .enumerate()
                .for_each(|(i, px)| put(i, px));
        } else {
            src.chunks_exact(3)
                .enumerate()
                .for_each(|(i, px)| put(i, px));
        }
    }
}

/// [`fill_crop`] into image `slot` of a batch's pixels, whatever their element type.
fn fill_slot(
    pixels: &mut Pixels,
    slot: usize,
    rgb: &RgbRecord<'_>,
    b: CropBox,
    crop: u32,
    mean: [f32; 3],
) {
    let plane = 3 * (crop * crop) as usize;
    let range = slot * plane..(slot + 1) * plane;
    match pixels {
        Pixels::F32(v) => fill_crop(&rgb.pixels, rgb.width, b, crop, mean, &mut v[range]),
        Pixels::Bf16(v) => fill_crop(&rgb.pixels, rgb.width, b, crop, mean, &mut v[range]),
    }
}

/// An endless stream of training batches; see the module doc.
pub struct TrainLoader {
    pipeline: Pipeline,
    batches_per_epoch: u64,
}

impl TrainLoader {
    /// Batches that make one pass over the samples (rounded up).
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// Index of the batch the next call to `next()` returns.
    pub fn position(&self) -> u64 {
        self.pipeline.position()
    }

    /// Gives a used batch's buffer back to the workers (optional; saves allocations).
    pub fn recycle(&self, batch: Batch) {
        self.pipeline.recycle(batch)
    }
}

impl Iterator for TrainLoader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.pipeline.next()
    }
}

/// Training batches from `start_batch` on. `samples` are (store id, label) pairs of the
/// training split; `weights` (one per sample) are for [`SamplerKind::Weighted`].
pub fn train_batches(
    store: Arc<Store>,
    samples: Vec<(u64, u32)>,
    weights: Option<Vec<f32>>,
    cfg: &LoaderConfig,
    start_batch: u64,
) -> Result<TrainLoader, LoaderError> {
    if cfg.batch_size == 0 || cfg.crop == 0 {
        return Err(LoaderError::Config(format!(
            "batch size {} and crop {} must be > 0",
            cfg.batch_size, cfg.crop
        )));
    }
    let len = store.len(Split::Train);
    if let Some(&(id, _)) = samples.iter().find(|(id, _)| *id >= len) {
        return Err(StoreError::NoSuchId {
            dir: store.dir().to_path_buf(),
            split: Split::Train,
            id,
            len,
        }
        .into());
    }
    let labels: Vec<u32> = samples.iter().map(|s| s.1).collect();
    let sampler = Sampler::new(cfg.sampler, &labels, weights.as_deref(), cfg.seed)?;
    let batches_per_epoch = samples.len().div_ceil(cfg.batch_size) as u64;
    let source = TrainSource {
        samples,
        sampler,
        cfg: cfg.clone(),
    };
    let pipeline = Pipeline::spawn(store, Arc::new(source), cfg.workers, start_batch, None);
    Ok(TrainLoader {
        pipeline,
        batches_per_epoch,
    })
}

struct TrainSource {
    samples: Vec<(u64, u32)>,
    sampler: Sampler,
    cfg: LoaderConfig,
}

impl BatchSource for TrainSource {
    type State = EpochCache;

    fn build(
        &self,
        k: u64,
        reader: &StoreReader<'_>,
        buffer: Pixels,
        cache: &mut EpochCache,
    ) -> Result<Batch, LoaderError> {
        let (n, crop) = (self.cfg.batch_size, self.cfg.crop);
        let mut rng = batch_rng(self.cfg.seed, k);
        let picks = self.sampler.batch(k, n, &mut rng, cache);
        let mut batch = empty_batch(buffer, n, crop, self.cfg.precision);
        for (slot, &pick) in picks.iter().enumerate() {
            let (id, label) = self.samples[pick];
            let rgb = stored_pixels(reader, Split::Train, id, crop)?;
            let b = random_crop(&mut rng, rgb.width, rgb.height, crop, self.cfg.mirror);
            fill_slot(&mut batch.pixels, slot, &rgb, b, crop, self.cfg.mean_rgb);
            batch.ids.push(id);
            batch.labels.push(label);
        }
        Ok(batch)
    }
}

fn random_crop(rng: &mut ChaCha8Rng, width: u32, height: u32, crop: u32, mirror: bool) -> CropBox {
    CropBox {
        x: rng.random_range(0..=width - crop),
        y: rng.random_range(0..=height - crop),
        mirror: mirror && rng.random_bool(0.5),
    }
}

fn empty_batch(buffer: Pixels, n: usize, crop: u32, precision: Precision) -> Batch {
    let c = crop as usize;
    // Every element is overwritten by fill_crop; resizing a reused buffer writes nothing new.
    let pixels = buffer.resized(precision, n * 3 * c * c);
    Batch {
        ids: Vec::with_capacity(n),
        labels: Vec::with_capacity(n),
        pixels,
        shape: [n, 3, c, c],
    }
}

/// A record's label, size and RGB pixels, refusing images smaller than the crop.
fn stored_pixels<'r>(
    reader: &'r StoreReader<'_>,
    split: Split,
    id: u64,
    crop: u32,
) -> Result<RgbRecord<'r>, LoaderError> {
    let rgb = reader.rgb(split, id)?;
    if rgb.width < crop || rgb.height < crop {
        return Err(LoaderError::TooSmall {
            split,
            id,
            width: rgb.width,
            height: rgb.height,
            crop,
        });
    }
    Ok(rgb)
}

/// Evaluation batches in id order; see [`eval_batches`].
pub struct EvalLoader {
    pipeline: Pipeline,
    batches: u64,
}

impl EvalLoader {
    /// Number of batches in the pass.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    pub fn recycle(&self, batch: Batch) {
        self.pipeline.recycle(batch)
    }
}

impl Iterator for EvalLoader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.pipeline.next()
    }
}

/// Eval batches over the samples `ids` of a split, in the order given: every sample's crops
/// (`cfg.crops`) consecutively, sample-major, whole samples per batch (`cfg.samples_per_batch`
/// of them; the last batch may have fewer). Labels are the stored ones.
pub fn eval_batches(
    store: Arc<Store>,
    split: Split,
    ids: Vec<u64>,
    cfg: &EvalConfig,
) -> Result<EvalLoader, LoaderError> {
    if cfg.samples_per_batch == 0 || cfg.crop == 0 {
        return Err(LoaderError::Config(format!(
            "samples per batch {} and crop {} must be > 0",
            cfg.samples_per_batch, cfg.crop
        )));
    }
    let len = store.len(split);
    if let Some(&id) = ids.iter().find(|&&id| id >= len) {
        return Err(StoreError::NoSuchId {
            dir: store.dir().to_path_buf(),
            split,
            id,
            len,
        }
        .into());
    }
    let batches = ids.len().div_ceil(cfg.samples_per_batch) as u64;
    let source = EvalSource {
        split,
        cfg: cfg.clone(),
        ids,
    };
    let pipeline = Pipeline::spawn(store, Arc::new(source), cfg.workers, 0, Some(batches));
    Ok(EvalLoader { pipeline, batches })
}

/// Eval batches over every sample of a split, in id order ([`eval_batches`]).
pub fn eval_split_batches(
    store: Arc<Store>,
    split: Split,
    cfg: &EvalConfig,
) -> Result<EvalLoader, LoaderError> {
    let ids = (0..store.len(split)).collect();
    eval_batches(store, split, ids, cfg)
}

struct EvalSource {
    split: Split,
    cfg: EvalConfig,
    ids: Vec<u64>,
}

impl BatchSource for EvalSource {
    type State = ();

    fn build(
        &self,
        k: u64,
        reader: &StoreReader<'_>,
        buffer: Pixels,
        _: &mut (),
    ) -> Result<Batch, LoaderError> {
        let cfg = &self.cfg;
        let first = k as usize * cfg.samples_per_batch;
        let ids = &self.ids[first..(first + cfg.samples_per_batch).min(self.ids.len())];
        let per_sample = crop_boxes(cfg.crops, cfg.crop, cfg.crop, cfg.crop).len();
        let mut batch = empty_batch(buffer, ids.len() * per_sample, cfg.crop, cfg.precision);
        let mut slot = 0;
        for &id in ids {
            let rgb = stored_pixels(reader, self.split, id, cfg.crop)?;
            for b in crop_boxes(cfg.crops, rgb.width, rgb.height, cfg.crop) {
                fill_slot(&mut batch.pixels, slot, &rgb, b, cfg.crop, cfg.mean_rgb);
                batch.ids.push(id);
                batch.labels.push(rgb.label);
                slot += 1;
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn crop_sets() -> impl Strategy<Value = CropSet> {
        prop_oneof![
            Just(CropSet::Center),
            Just(CropSet::Four),
            Just(CropSet::Eight),
            Just(CropSet::Ten)
        ]
    }

    #[test]
    fn bf16_ties_round_to_even() {
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: the even one, 1, wins; 1 + 3·2⁻⁸ goes up.
        let round = <half::bf16 as PixelValue>::from_f32;
        assert_eq!(round(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
        assert_eq!(round(-130.3).to_f32(), -130.0);
    }

    proptest! {
        #[test]
        fn crops_lie_inside_and_center_is_centered(
            set in crop_sets(), crop in 1u32..64, extra_w in 0u32..64, extra_h in 0u32..64,
        ) {
            let (w, h) = (crop + extra_w, crop + extra_h);
            let boxes = crop_boxes(set, w, h, crop);
            let expected = match set { CropSet::Center => 1, CropSet::Four => 4, CropSet::Eight => 8, CropSet::Ten => 10 };
            prop_assert_eq!(boxes.len(), expected);
            for b in &boxes {
                prop_assert!(b.x + crop <= w && b.y + crop <= h);
            }
            // Mirrors come in the second half and repeat the first half's windows.
            let half = boxes.len() / 2;
            if matches!(set, CropSet::Eight | CropSet::Ten) {
                for i in 0..half {
                    prop_assert_eq!((boxes[i].x, boxes[i].y, boxes[i].mirror), (boxes[i + half].x, boxes[i + half].y, false));
                    prop_assert!(boxes[i + half].mirror);
                }
            }
            if set == CropSet::Center {
                let b = boxes[0];
                let (left, right) = (b.x, w - crop - b.x);
                let (top, bottom) = (b.y, h - crop - b.y);
                prop_assert!(right - left <= 1 && bottom - top <= 1);
            }
            // The corners touch the four image edges.
            if set != CropSet::Center {
                prop_assert!(boxes.iter().any(|b| b.x == 0 && b.y == 0));
                prop_assert!(boxes.iter().any(|b| b.x + crop == w && b.y + crop == h));
            }
        }

        #[test]
        fn bf16_rounding_is_halfs(value in -400f32..400.0) {
            prop_assert_eq!(<half::bf16 as PixelValue>::from_f32(value), half::bf16::from_f32(value));
        }

        #[test]
        fn fill_crop_takes_the_window_it_is_given(
            w in 1u32..12, h in 1u32..12, crop_frac in 0.0f64..1.0, x_frac in 0.0f64..1.0,
            y_frac in 0.0f64..1.0, mirror: bool,
        ) {
            let crop = 1 + ((w.min(h) - 1) as f64 * crop_frac) as u32;
            let b = CropBox { x: ((w - crop) as f64 * x_frac) as u32, y: ((h - crop) as f64 * y_frac) as u32, mirror };
            // Pixel (x, y) has channels (x, y, x + y): every crop value says where it came from.
            let rgb: Vec<u8> = (0..h).flat_map(|y| (0..w).flat_map(move |x| [x as u8, y as u8, (x + y) as u8])).collect();
            let mut out = vec![0.0; 3 * (crop * crop) as usize];
            fill_crop(&rgb, w, b, crop, [1.0, 2.0, 3.0], &mut out);
            let c = crop as usize;
            for row in 0..c {
                for col in 0..c {
                    let sx = b.x as usize + if mirror { c - 1 - col } else { col };
                    let sy = b.y as usize + row;
                    prop_assert_eq!(out[row * c + col], sx as f32 - 1.0);
                    prop_assert_eq!(out[c * c + row * c + col], sy as f32 - 2.0);
                    prop_assert_eq!(out[2 * c * c + row * c + col], (sx + sy) as f32 - 3.0);
                }
            }
        }
    }
}
