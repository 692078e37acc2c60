//! Image bytes as found on the web → a resized RGB image, and the store's payload encoding.
//!
//! In: a file's bytes (any extension; the format is sniffed from the magic bytes), the target
//! size and mode. Out: a stored record (an RGB u8 image resized for the store, raw or JPEG), or
//! the reason it was skipped. JPEGs too small for DCT scaling to help are decoded by zune-jpeg;
//! larger ones with DCT scaling (jpeg-decoder's `scale`): a large original is decoded at 1/2,
//! 1/4 or 1/8 of its size when that still covers the target, which bounds both the time and the
//! memory of a huge image. Other formats go through `image` with allocation limits.

use std::io::Cursor;

use fast_image_resize::{
    images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::{metadata::Orientation, DynamicImage, ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};

use crate::recipe::params::{ResizeMode, StoreEncoding};

/// Decoded images above this many pixels (after DCT scaling) are skipped as too large.
pub const MAX_DECODED_PIXELS: u64 = 64 << 20;
/// Allocation limit for the non-JPEG decoders.
const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// Why an image was not stored. Serialized in the ingest report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// The file is not there.
    Missing,
    /// The file has zero bytes.
    Empty,
    /// The bytes are no image format we decode.
    UnknownFormat,
    /// A known format that failed to decode (truncated, corrupt).
    Undecodable,
    /// Larger than the decode bound even after DCT scaling.
    TooLarge,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Missing => "missing",
            SkipReason::Empty => "empty",
            SkipReason::UnknownFormat => "unknown-format",
            SkipReason::Undecodable => "undecodable",
            SkipReason::TooLarge => "too-large",
        }
    }
}

/// A skipped image: the reason and the decoder's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    pub detail: String,
}

impl Skip {
    fn new(reason: SkipReason, detail: impl ToString) -> Skip {
        Skip {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// The size an image of `width × height` gets in the store.
pub fn target_size(width: u32, height: u32, resize: u32, mode: ResizeMode) -> (u32, u32) {
    match mode {
        ResizeMode::Squash => (resize, resize),
        ResizeMode::ShorterSide => {
            let scale = f64::from(resize) / f64::from(width.min(height).max(1));
            let side = |s: u32| ((f64::from(s) * scale).round() as u32).max(resize);
            if width <= height {
                (resize, side(height))
            } else {
                (side(width), resize)
            }
        }
    }
}

/// Decodes `bytes` (format sniffed), applies EXIF orientation and returns RGB. `min_side`
/// lets a JPEG decode at a reduced DCT scale as long as both sides stay ≥ `min_side`.
pub fn decode(bytes: &[u8], min_side: u32) -> Result<RgbImage, Skip> {
    if bytes.is_empty() {
        return Err(Skip::new(SkipReason::Empty, "zero-byte file"));
    }
    let format = image::guess_format(bytes).map_err(|e| Skip::new(SkipReason::UnknownFormat, e))?;
    // Decoders can panic on hostile input (jpeg-decoder does on unusual component counts): one
    // bad web file must cost a skip, not the ingest.
    let decoded = std::panic::catch_unwind(|| match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, min_side),
        other => decode_other(bytes, other),
    });
    decoded.unwrap_or_else(|_| {
        Err(Skip::new(
            SkipReason::Undecodable,
            format!("{format:?} decoder panicked"),
        ))
    })
}

/// zune-jpeg first (about 1.5× jpeg-decoder's speed here, see BENCHMARKS.md) for the JPEGs it
/// covers; jpeg-decoder for the rest: DCT-scaled decodes, CMYK, and whatever zune rejects, so
/// that skip reasons and messages come from one decoder.
fn decode_jpeg(bytes: &[u8], min_side: u32) -> Result<RgbImage, Skip> {
    match decode_jpeg_full_scale(bytes, min_side) {
        Some(image) => Ok(image),
        None => decode_jpeg_scaled(bytes, min_side),
    }
}

/// A YCbCr or grayscale JPEG too small for DCT scaling to help (its shorter side is below
/// `2 · min_side`), decoded by zune-jpeg in strict mode; `None` for anything else.
fn decode_jpeg_full_scale(bytes: &[u8], min_side: u32) -> Option<RgbImage> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    let mut decoder = zune_rgb_decoder(bytes, true);
    decoder.decode_headers().ok()?;
    let info = decoder.info()?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let plain = matches!(
        decoder.input_colorspace()?,
        ColorSpace::YCbCr | ColorSpace::Luma
    );
    let scalable = width.min(height) >= min_side.saturating_mul(2);
    if !plain || scalable || u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return None;
    }
    let pixels = decoder.decode().ok()?;
    let image = RgbImage::from_raw(width, height, pixels)?;
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif));
    Some(orient(image, orientation))
}

/// A zune-jpeg decoder of `bytes` to RGB; `strict` turns its warnings (such as a truncated
/// stream) into errors.
pub(crate) fn zune_rgb_decoder(
    bytes: &[u8],
    strict: bool,
) -> zune_jpeg::JpegDecoder<Cursor<&[u8]>> {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let options = DecoderOptions::default()
        .set_strict_mode(strict)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    zune_jpeg::JpegDecoder::new_with_options(Cursor::new(bytes), options)
}

fn decode_jpeg_scaled(bytes: &[u8], min_side: u32) -> Result<RgbImage, Skip> {
    let undecodable =
        |e: jpeg_decoder::Error| Skip::new(SkipReason::Undecodable, format!("jpeg: {e}"));
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(undecodable)?;
    let info = decoder
        .info()
        .ok_or_else(|| Skip::new(SkipReason::Undecodable, "jpeg: no frame"))?;
    // jpeg-decoder takes the smallest scale at which *either* side covers the request; asking
    // only for the shorter side (the other side can never be met) keeps both sides ≥ min_side.
    let request = min_side.min(u32::from(u16::MAX - 1)) as u16;
    let (request_w, request_h) = if info.width <= info.height {
        (request, u16::MAX)
    } else {
        (u16::MAX, request)
    };
    let (width, height) = decoder.scale(request_w, request_h).map_err(undecodable)?;
    if u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return Err(Skip::new(
            SkipReason::TooLarge,
            format!("{width}x{height} after DCT scaling"),
        ));
    }
    let pixels = decoder.decode().map_err(undecodable)?;
    let info = decoder
        .info()
        .ok_or_else(|| Skip::new(SkipReason::Undecodable, "jpeg: no frame"))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        jpeg_decoder::PixelFormat::CMYK32 => cmyk_to_rgb(&pixels),
    };
    let image = RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| Skip::new(SkipReason::Undecodable, "jpeg: short pixel buffer"))?;
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk);
    Ok(orient(image, orientation))
}

/// jpeg-decoder hands out CMYK with 0 = no ink (it undoes Adobe's inverted storage):
/// R = (255 − C)(255 − K)/255, and likewise G from M and B from Y.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let k = 255 - u16::from(p[3]);
            [0, 1, 2].map(|c| ((255 - u16::from(p[c])) * k / 255) as u8)
        })
        .collect()
}

fn decode_other(bytes: &[u8], format: ImageFormat) -> Result<RgbImage, Skip> {
    use image::ImageDecoder;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify(format, e))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return Err(Skip::new(
            SkipReason::TooLarge,
            format!("{format:?} {width}x{height}"),
        ));
    }
    let orientation = decoder.orientation().ok();
    let image = DynamicImage::from_decoder(decoder).map_err(|e| classify(format, e))?;
    Ok(orient(image.into_rgb8(), orientation))
}

fn classify(format: ImageFormat, e: image::ImageError) -> Skip {
    let reason = match e {
        image::ImageError::Limits(_) => SkipReason::TooLarge,
        image::ImageError::Unsupported(_) => SkipReason::UnknownFormat,
        _ => SkipReason::Undecodable,
    };
    Skip::new(reason, format!("{format:?}: {e}"))
}

fn orient(image: RgbImage, orientation: Option<Orientation>) -> RgbImage {
    match orientation {
        None | Some(Orientation::NoTransforms) => image,
        Some(o) => {
            let mut dynamic = DynamicImage::ImageRgb8(image);
            dynamic.apply_orientation(o);
            dynamic.into_rgb8()
        }
    }
}

/// Bilinear resize of `image` into `dst`, a `width × height` RGB buffer (fast_image_resize,
/// SIMD where the CPU has it).
fn resize_into(image: &RgbImage, dst: &mut [u8], width: u32, height: u32) {
    if image.dimensions() == (width, height) {
        dst.copy_from_slice(image.as_raw());
        return;
    }
    let (src_w, src_h) = image.dimensions();
    let src =
        fast_image_resize::images::ImageRef::new(src_w, src_h, image.as_raw(), PixelType::U8x3)
            .expect("an RgbImage buffer holds exactly w*h*3 bytes");
    let mut dst = FirImage::from_slice_u8(width, height, dst, PixelType::U8x3)
        .expect("the destination holds exactly width*height*3 bytes");
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("both images are U8x3");
}

/// Bilinear resize to `width × height`.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    resize_into(image, &mut out, width, height);
    out
}

/// One file's bytes → decoded, oriented, resized → its stored record (see [`encode_record`]).
/// A raw record is resized
/// straight into the record buffer: at 196 kB an image, a second buffer and copy cost more
/// than the resize here (fresh pages fault at about 1.4 µs each on the VMs we measured).
pub fn prepare_record(
    bytes: &[u8],
    label: u32,
    resize_to: u32,
    mode: ResizeMode,
    encoding: StoreEncoding,
) -> Result<Vec<u8>, Skip> {
    let image = decode(bytes, resize_to)?;
    let (width, height) = target_size(image.width(), image.height(), resize_to, mode);
    match encoding {
        StoreEncoding::Raw => {
            let pixels = width as usize * height as usize * 3;
            let mut out = record_header(label, width, height, pixels);
            out.resize(RECORD_HEADER + pixels, 0);
            resize_into(&image, &mut out[RECORD_HEADER..], width, height);
            Ok(out)
        }
        StoreEncoding::Jpeg { .. } => {
            encode_record(label, &resize(&image, width, height), encoding)
        }
    }
}

/// Bytes before a record's payload: label, width and height.
const RECORD_HEADER: usize = 12;

/// A record buffer holding the header, with room for `payload` more bytes.
fn record_header(label: u32, width: u32, height: u32, payload: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + payload);
    out.extend_from_slice(&label.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out
}

/// The stored value of an image: `label u32 LE, width u32 LE, height u32 LE`, then raw RGB
/// rows or a JPEG stream ([`super::jpeg`]: baseline, 4:2:0 chroma subsampling at every quality,
/// as Pillow's default).
pub fn encode_record(
    label: u32,
    image: &RgbImage,
    encoding: StoreEncoding,
) -> Result<Vec<u8>, Skip> {
    let pixels = image.as_raw().len();
    // A JPEG at store qualities is well under a third of the raw size (17.9 of 196.6 kB here).
    let payload = match encoding {
        StoreEncoding::Raw => pixels,
        StoreEncoding::Jpeg { .. } => pixels / 3,
    };
    let mut out = record_header(label, image.width(), image.height(), payload);
    match encoding {
        StoreEncoding::Raw => out.extend_from_slice(image.as_raw()),
        StoreEncoding::Jpeg { quality } => {
            let (width, height) = image.dimensions();
            let unencodable = || {
                Skip::new(
                    SkipReason::TooLarge,
                    format!("{width}x{height} is outside JPEG's 1..=65535 px"),
                )
            };
            let side = |s: u32| {
                u16::try_from(s)
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(unencodable)
            };
            super::jpeg::encode_rgb(
                image.as_raw(),
                side(width)?,
                side(height)?,
                quality,
                &mut out,
            );
        }
    }
    Ok(out)
}

/// A stored record, borrowed from the LMDB map.
pub struct RecordView<'a> {
    pub label: u32,
    pub width: u32,
    pub height: u32,
    pub payload: &'a [u8],
}

/// Splits a stored record; `None` when it is shorter than its header.
pub fn parse_record(bytes: &[u8]) -> Option<RecordView<'_>> {
    let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    Some(RecordView {
        label: word(0)?,
        width: word(4)?,
        height: word(8)?,
        payload: bytes.get(RECORD_HEADER..)?,
    })
}

/// RGB pixels of a record: borrowed for raw payloads, decoded for JPEG ones.
pub fn record_pixels<'a>(
    record: &RecordView<'a>,
    encoding: StoreEncoding,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    let expected = record.width as usize * record.height as usize * 3;
    let pixels: std::borrow::Cow<'a, [u8]> = match encoding {
        StoreEncoding::Raw => std::borrow::Cow::Borrowed(record.payload),
        StoreEncoding::Jpeg { .. } => {
            let mut decoder = zune_rgb_decoder(record.payload, false);
            std::borrow::Cow::Owned(decoder.decode().map_err(|e| format!("stored jpeg: {e}"))?)
        }
    };
    if pixels.len() != expected {
        return Err(format!(
            "payload has {} bytes, {}x{} RGB needs {expected}",
            pixels.len(),
            record.width,
            record.height
        ));
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_of(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out, 95,
            ))
            .unwrap();
        out
    }

    #[test]
    fn shorter_side_keeps_aspect_and_squash_ignores_it() {
        assert_eq!(
            target_size(400, 200, 100, ResizeMode::ShorterSide),
            (200, 100)
        );
        assert_eq!(
            target_size(200, 401, 100, ResizeMode::ShorterSide),
            (100, 201)
        );
        assert_eq!(target_size(400, 200, 100, ResizeMode::Squash), (100, 100));
    }

    #[test]
    fn large_jpeg_decodes_at_reduced_dct_scale_but_covers_target() {
        let image = RgbImage::from_fn(800, 640, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let decoded = decode(&jpeg_of(&image), 100).unwrap();
        // 1/4 scale is 200x160; 1/8 would be 100x80, which no longer covers 100 on both sides.
        assert_eq!(decoded.dimensions(), (200, 160));
    }

    #[test]
    fn zune_and_jpeg_decoder_agree_and_scalable_jpegs_go_to_jpeg_decoder() {
        let image = RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
        });
        let bytes = jpeg_of(&image);
        let fast = decode_jpeg_full_scale(&bytes, 32).expect("zune takes a small YCbCr JPEG");
        let reference = decode_jpeg_scaled(&bytes, 32).unwrap();
        assert_eq!(fast.dimensions(), reference.dimensions());
        let differences: Vec<i32> = fast
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let max = differences.iter().max().unwrap();
        let mean = differences.iter().sum::<i32>() as f64 / differences.len() as f64;
        assert!(*max <= 8 && mean < 1.0, "max {max}, mean {mean}");
        // 40 px covers 2 × 20: DCT scaling helps, so jpeg-decoder decodes it at 1/2.
        assert!(decode_jpeg_full_scale(&bytes, 20).is_none());
        assert_eq!(decode(&bytes, 20).unwrap().dimensions(), (24, 20));
    }

    #[test]
    fn cmyk_white_and_black() {
        // No ink is white, full black ink is black, full magenta + yellow is red.
        let rgb = cmyk_to_rgb(&[0, 0, 0, 0, 0, 0, 0, 255, 0, 255, 255, 0]);
        assert_eq!(rgb, vec![255, 255, 255, 0, 0, 0, 255, 0, 0]);
    }

    #[test]
    fn raw_record_round_trips() {
        let image = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let bytes = encode_record(7, &image, StoreEncoding::Raw).unwrap();
        let record = parse_record(&bytes).unwrap();
        assert_eq!((record.label, record.width, record.height), (7, 3, 2));
        assert_eq!(
            &*record_pixels(&record, StoreEncoding::Raw).unwrap(),
            image.as_raw().as_slice()
        );
    }

    #[test]
    fn jpeg_record_decodes_close_to_the_original() {
        let image = RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, 128])
        });
        let bytes = encode_record(3, &image, StoreEncoding::Jpeg { quality: 95 }).unwrap();
        let record = parse_record(&bytes).unwrap();
        let pixels = record_pixels(&record, StoreEncoding::Jpeg { quality: 95 }).unwrap();
        let error = pixels
            .iter()
            .zip(image.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(error < 24, "max abs error {error}");
    }

    #[test]
    fn a_decoder_panic_is_a_skip() {
        // SOI, then a baseline SOF declaring 2 components (jpeg-decoder's `info()` panics on it).
        let two_components = [
            0xFF, 0xD8, 0xFF, 0xC0, 0, 14, 8, 0, 1, 0, 1, 2, 1, 0x11, 0, 2, 0x11, 0, 0xFF, 0xD9,
        ];
        assert_eq!(
            decode(&two_components, 8).unwrap_err().reason,
            SkipReason::Undecodable
        );
    }

    #[test]
    fn empty_and_garbage_are_told_apart() {
        assert_eq!(decode(&[], 8).unwrap_err().reason, SkipReason::Empty);
        assert_eq!(
            decode(b"not an image at all", 8).unwrap_err().reason,
            SkipReason::UnknownFormat
        );
        let mut truncated = jpeg_of(&RgbImage::new(64, 64));
        truncated.truncate(40);
        assert_eq!(
            decode(&truncated, 8).unwrap_err().reason,
            SkipReason::Undecodable
        );
    }
}
