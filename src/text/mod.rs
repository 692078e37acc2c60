//! From page text to bag-of-words: field selection per source, normalisation, stop words, Porter stemming, vocabulary. In: [`crate::sample::SampleText`]. Out: sparse documents.
