//! The vocabulary (token ↔ id, filtered by corpus count and document frequency, capped in
//! size) and sparse bag-of-words documents over it.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use super::TextError;

/// A document as sorted, distinct word ids with their counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseDoc {
    pub ids: Vec<u32>,
    pub counts: Vec<f32>,
}

impl SparseDoc {
    /// From (id, count) pairs in any order; repeated ids are summed, zero counts dropped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, f32)>) -> SparseDoc {
        let mut pairs: Vec<(u32, f32)> = pairs.into_iter().filter(|p| p.1 > 0.0).collect();
        pairs.sort_by_key(|p| p.0);
        let mut doc = SparseDoc::default();
        for (id, count) in pairs {
            if doc.ids.last() == Some(&id) {
                *doc.counts.last_mut().expect("same length as ids") += count;
            } else {
                doc.ids.push(id);
                doc.counts.push(count);
            }
        }
        doc
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Total number of tokens.
    pub fn tokens(&self) -> f64 {
        self.counts.iter().map(|&c| c as f64).sum()
    }
}

/// Counts words over a corpus streamed once: corpus count and number of documents.
#[derive(Debug, Default)]
pub struct VocabBuilder {
    counts: HashMap<String, (u64, u64)>,
    docs: u64,
}

impl VocabBuilder {
    /// Counts a document's tokens: one map lookup per distinct token (the tokens sorted, so
    /// that repeats sit together), a new word's text copied once.
    pub fn add_doc(&mut self, tokens: &[String]) {
        self.docs += 1;
        let mut sorted: Vec<&str> = tokens.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        for run in sorted.chunk_by(|a, b| a == b) {
            let word = run[0];
            let entry = match self.counts.get_mut(word) {
                Some(entry) => entry,
                None => self.counts.entry(word.to_string()).or_default(),
            };
            entry.0 += run.len() as u64;
            entry.1 += 1;
        }
    }

    /// How many different words the documents so far hold.
    pub fn distinct_words(&self) -> usize {
        self.counts.len()
    }

    /// Words seen at least `min_count` times and in at most `max_doc_freq` of the documents,
    /// most frequent first (ties alphabetical, so the order is deterministic), the
    /// `max_words` most frequent of them: LDA's memory grows with the vocabulary.
    pub fn build(self, min_count: u32, max_doc_freq: f64, max_words: usize) -> Vocabulary {
        let max_docs = max_doc_freq * self.docs as f64;
        let mut kept: Vec<(String, u64)> = self
            .counts
            .into_iter()
            .filter(|(_, (count, docs))| *count >= min_count as u64 && *docs as f64 <= max_docs)
            .map(|(word, (count, _))| (word, count))
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(max_words);
        Vocabulary::new(kept.into_iter().map(|(w, _)| w).collect())
    }
}

/// Token ↔ id. Ids are positions in `words`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocabulary {
    pub fn new(words: Vec<String>) -> Vocabulary {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Vocabulary { words, index }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn word(&self, id: u32) -> &str {
        &self.words[id as usize]
    }

    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// The bag of words of a token list; tokens outside the vocabulary are dropped.
    pub fn doc(&self, tokens: &[String]) -> SparseDoc {
        SparseDoc::from_pairs(tokens.iter().filter_map(|t| self.id(t)).map(|id| (id, 1.0)))
    }

    /// One word per line, line number = id.
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        let io = |source| TextError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BufWriter::new(std::fs::File::create(path).map_err(io)?);
        for word in &self.words {
            writeln!(out, "{word}").map_err(io)?;
        }
        out.flush().map_err(io)
    }

    pub fn load(path: &Path) -> Result<Vocabulary, TextError> {
        let io = |source| TextError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut words = Vec::new();
        for (n, line) in file.lines().enumerate() {
            let word = line.map_err(io)?;
            if word.is_empty() || word.contains(char::is_whitespace) {
                return Err(TextError::BadLine {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: format!("expected one word, found {word:?}"),
                });
            }
            words.push(word);
        }
        Ok(Vocabulary::new(words))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn filters_by_count_and_document_frequency() {
        let mut b = VocabBuilder::default();
        b.add_doc(&toks("common rare dog dog"));
        b.add_doc(&toks("common cat dog"));
        b.add_doc(&toks("common cat"));
        // common: in 3/3 docs (over 0.7); rare: count 1 (under 2).
        let v = b.build(2, 0.7, 10);
        assert_eq!(v.len(), 2);
        assert_eq!(v.word(0), "dog");
        assert_eq!(v.word(1), "cat");
        assert_eq!(v.id("common"), None);
    }

    #[test]
    fn a_capped_vocabulary_keeps_the_most_frequent_words() {
        let mut b = VocabBuilder::default();
        b.add_doc(&toks("dog dog dog cat cat emu emu ant"));
        b.add_doc(&toks("yak"));
        let v = b.build(1, 1.0, 3);
        // dog 3, then cat and emu 2 (ties alphabetical); ant and yak 1 are cut.
        assert_eq!(
            (v.len(), v.word(0), v.word(1), v.word(2)),
            (3, "dog", "cat", "emu")
        );
        assert_eq!(v.id("ant"), None);
    }

    #[test]
    fn docs_sum_repeats_and_drop_unknown_words() {
        let v = Vocabulary::new(toks("a b c"));
        let d = v.doc(&toks("c a c zebra"));
        assert_eq!(d.ids, [0, 2]);
        assert_eq!(d.counts, [1.0, 2.0]);
        assert_eq!(d.tokens(), 3.0);
    }

    #[test]
    fn save_load_round_trip_and_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.txt");
        let v = Vocabulary::new(toks("x y z"));
        v.save(&path).unwrap();
        assert_eq!(Vocabulary::load(&path).unwrap(), v);
        std::fs::write(&path, "x\ntwo words\n").unwrap();
        let err = Vocabulary::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("vocab.txt:2: expected one word, found \"two words\""),
            "{err}"
        );
    }
}
