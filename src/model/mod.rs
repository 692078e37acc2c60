//! GoogLeNet (Inception v1) in candle, its 2-headed variant, and the custom ops candle lacks (padded/ceil-mode pooling with backward, LRN). In: settings. Out: a network mapping images to logits (and topic predictions).

pub mod conv;
pub mod googlenet;
mod layers;
pub mod ops;

pub use googlenet::{GoogLeNet, ModelError, HEAD_NAMES};
pub use layers::HeadOutput;
