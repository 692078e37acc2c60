//! Types shared by every stage: where a sample came from, its page text, its split, and the
//! batches the loader hands to training and evaluation.

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

/// One batch of images in NCHW layout, mean-subtracted, in the channel order documented in
/// `loader` (RGB), with the sample ids (store keys) and labels that go with each image.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<u64>,
    pub labels: Vec<u32>,
    /// `shape = [n, 3, h, w]`, row-major.
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
}
