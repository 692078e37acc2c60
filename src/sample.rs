//! Types shared by every stage: where a sample came from, its page text, its split, and the
//! batches the loader hands to training and evaluation, with their precision.

use serde::{Deserialize, Serialize};

/// The search engine an image was found with. Text fields differ by source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Google,
    Flickr,
    /// Datasets without a search engine (imagefolder, jsonl, synthetic without a source).
    Other,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Google => "google",
            Source::Flickr => "flickr",
            Source::Other => "other",
        }
    }
}

/// The page text that came with an image. A field the page did not have is `None`; an empty
/// one is `Some("")`: the two are kept apart because web data has both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleText {
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

impl SampleText {
    /// Title, description and tags as one line, in that order, the missing ones left out.
    pub fn joined(&self) -> String {
        let mut parts: Vec<&str> = [&self.title, &self.description]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        parts.extend(self.tags.iter().map(|t| t.as_str()));
        parts.join(" · ")
    }
}

/// Which part of a dataset a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// The numeric precision of training (`train.precision`) and so of the loader's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// f32 tensors; on CUDA, matrix products and convolutions in TensorFloat-32.
    Tf32,
    /// bf16 activations and batches; f32 weights, momentum and loss.
    Bf16,
}

impl Precision {
    /// The element type of batches and activations.
    pub fn activations(self) -> candle_core::DType {
        match self {
            Precision::F32 | Precision::Tf32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// One batch of images in NCHW layout, mean-subtracted, in the channel order documented in
/// `loader` (RGB), with the sample ids (store keys) and labels that go with each image.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<u64>,
    pub labels: Vec<u32>,
    /// `shape = [n, 3, h, w]`, row-major.
    pub pixels: Pixels,
    pub shape: [usize; 4],
}

impl Batch {
    /// The images as a tensor of `shape` on `device`, in the batch's element type (the net
    /// computes in the dtype of its input).
    pub fn images(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        self.pixels.to_tensor(&self.shape, device)
    }
}

/// A batch's pixel values in the element type the loader was asked for: f32, or bf16 (half
/// the bytes to move to a device; the values are u8 minus a mean, which bf16's 8-bit mantissa
/// keeps to within 0.5).
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::F32(Vec::new())
    }
}

impl Pixels {
    pub fn precision(&self) -> Precision {
        match self {
            Pixels::F32(_) => Precision::F32,
            Pixels::Bf16(_) => Precision::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Pixels::F32(v) => v.len(),
            Pixels::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of `len` values of `precision`, reusing this one's allocation when the types
    /// match. The values are unspecified (a reused buffer keeps its old ones, so that a buffer
    /// of the same length costs nothing): the caller overwrites every one.
    pub fn resized(self, precision: Precision, len: usize) -> Pixels {
        match (self, precision) {
            (Pixels::F32(mut v), Precision::F32 | Precision::Tf32) => {
                v.resize(len, 0.0);
                Pixels::F32(v)
            }
            (Pixels::Bf16(mut v), Precision::Bf16) => {
                v.resize(len, half::bf16::ZERO);
                Pixels::Bf16(v)
            }
            (_, Precision::F32 | Precision::Tf32) => Pixels::F32(vec![0.0; len]),
            (_, Precision::Bf16) => Pixels::Bf16(vec![half::bf16::ZERO; len]),
        }
    }

    /// The values as f32 (a copy; exact for bf16).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Pixels::F32(v) => v.clone(),
            Pixels::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// A tensor of `shape` on `device`, in the buffer's own dtype.
    pub fn to_tensor(
        &self,
        shape: &[usize],
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Pixels::F32(v) => candle_core::Tensor::from_slice(v, shape, device),
            Pixels::Bf16(v) => candle_core::Tensor::from_slice(v, shape, device),
        }
    }
}
