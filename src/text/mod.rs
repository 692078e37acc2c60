//! From page text to bag-of-words: field selection per source, normalisation, stop words,
//! Porter stemming, vocabulary. In: [`crate::sample::SampleText`] from a [`DocumentSource`].
//! Out: [`SparseDoc`]s over a [`Vocabulary`].
//!
//! One [`Tokenizer`] serves both training and inference (the original used different stop
//! lists for the two, so inferred topics drifted from the trained ones).

mod stopwords;
mod vocab;

use std::path::PathBuf;

use rust_stemmers::{Algorithm, Stemmer};

use crate::recipe::params::{TextField, TextParams};
use crate::sample::{SampleText, Source, Split};

pub use vocab::{SparseDoc, VocabBuilder, Vocabulary};

/// Errors of the text pipeline, naming the file and line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A document source (the store) failed; its message names what and where.
    #[error("reading {split} sample {id}: {message}")]
    Source {
        split: &'static str,
        id: u64,
        message: String,
    },
}

/// Where the `lda` stage reads documents from: the store in the pipeline, a Vec in tests.
pub trait DocumentSource: Sync {
    /// Number of samples in a split; ids are `0..len`.
    fn len(&self, split: Split) -> u64;
    /// Visit every sample of a split in id order.
    fn for_each(
        &self,
        split: Split,
        f: &mut dyn FnMut(u64, Source, &SampleText),
    ) -> Result<(), TextError>;
}

/// An in-memory [`DocumentSource`] for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    pub train: Vec<(Source, SampleText)>,
    pub val: Vec<(Source, SampleText)>,
}

impl MemorySource {
    fn split(&self, split: Split) -> &[(Source, SampleText)] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

impl DocumentSource for MemorySource {
    fn len(&self, split: Split) -> u64 {
        self.split(split).len() as u64
    }

    fn for_each(
        &self,
        split: Split,
        f: &mut dyn FnMut(u64, Source, &SampleText),
    ) -> Result<(), TextError> {
        for (id, (source, text)) in self.split(split).iter().enumerate() {
            f(id as u64, *source, text);
        }
        Ok(())
    }
}

/// Page text → tokens: selected fields, normalised, stop words dropped, stemmed.
pub struct Tokenizer {
    params: TextParams,
    stop: std::collections::HashSet<String>,
    stemmer: Option<Stemmer>,
}

impl Tokenizer {
    pub fn new(params: &TextParams) -> Tokenizer {
        let mut stop = std::collections::HashSet::new();
        if params.english_stop_words {
            stop.extend(stopwords::ENGLISH.iter().map(|w| w.to_string()));
        }
        if params.web_stop_words {
            stop.extend(stopwords::WEB.iter().map(|w| w.to_string()));
        }
        // Extra words go through the same normalisation so "Photo#2" style entries still match.
        stop.extend(params.extra_stop_words.iter().flat_map(|w| {
            normalise(w)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        }));
        Tokenizer {
            params: params.clone(),
            stop,
            stemmer: params.stemming.then(|| Stemmer::create(Algorithm::English)),
        }
    }

    /// The tokens of one sample: its source's fields joined, in the order the recipe lists them.
    pub fn tokens(&self, source: Source, text: &SampleText) -> Vec<String> {
        let mut out = Vec::new();
        for field in self.params.fields(source) {
            match field {
                TextField::Title => self.push_tokens(text.title.as_deref().unwrap_or(""), &mut out),
                TextField::Description => {
                    self.push_tokens(text.description.as_deref().unwrap_or(""), &mut out)
                }
                TextField::Tags => {
                    for tag in &text.tags {
                        self.push_tokens(tag, &mut out);
                    }
                }
            }
        }
        out
    }

    fn push_tokens(&self, raw: &str, out: &mut Vec<String>) {
        for word in normalise(raw).split_whitespace() {
            // Stop words are checked before and after stemming: lists hold surface forms.
            if self.stop.contains(word) {
                continue;
            }
            let token = match &self.stemmer {
                Some(stemmer) => stemmer.stem(word).into_owned(),
                None => word.to_string(),
            };
            if !self.stop.contains(&token) {
                out.push(token);
            }
        }
    }
}

/// The original's normalisation: '#' to space, ASCII letters kept (lowercased), every other
/// character becomes a space. Non-ASCII letters split words too, as in the original.
pub fn normalise(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn params() -> TextParams {
        TextParams {
            other_fields: vec![TextField::Title],
            extra_stop_words: vec!["Tench#".into()],
            min_count: 1,
            max_doc_freq: 1.0,
            ..crate::recipe::Recipe::default().text
        }
    }

    fn text(title: &str, description: &str, tags: &[&str]) -> SampleText {
        SampleText {
            title: Some(title.into()),
            description: Some(description.into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn normalises_hash_digits_and_case() {
        assert_eq!(normalise("#Golf-Ball2019 café"), " golf ball     caf ");
    }

    #[test]
    fn fields_follow_the_source() {
        let tok = Tokenizer::new(&params());
        let sample = text("Running dogs", "the churches", &["parachutes"]);
        assert_eq!(
            tok.tokens(Source::Google, &sample),
            ["run", "dog", "church"]
        );
        assert_eq!(
            tok.tokens(Source::Flickr, &sample),
            ["run", "dog", "church", "parachut"]
        );
        assert_eq!(tok.tokens(Source::Other, &sample), ["run", "dog"]);
    }

    #[test]
    fn drops_english_web_and_extra_stop_words() {
        let tok = Tokenizer::new(&params());
        let sample = text("A photo of the Tench on Flickr, wikipedia images", "", &[]);
        assert!(tok.tokens(Source::Google, &sample).is_empty());
    }

    #[test]
    fn without_stemming_or_stop_lists_words_pass_through() {
        let mut p = params();
        p.stemming = false;
        p.english_stop_words = false;
        p.web_stop_words = false;
        p.extra_stop_words.clear();
        let tok = Tokenizer::new(&p);
        let sample = text("The Photos", "", &[]);
        assert_eq!(tok.tokens(Source::Google, &sample), ["the", "photos"]);
    }

    #[test]
    fn missing_and_empty_fields_give_no_tokens() {
        let tok = Tokenizer::new(&params());
        assert!(tok
            .tokens(Source::Flickr, &SampleText::default())
            .is_empty());
    }
}
