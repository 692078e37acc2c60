//! Recipe errors that point into the text that caused them: `file:line:col`, the line, a
//! caret under the offending span, what was expected, and a "did you mean" where a known
//! name is close to what was written.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a piece of recipe text came from: a file, or a `--set` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Set(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Set(arg) => write!(f, "--set {arg}"),
        }
    }
}

/// A span of recipe text: its origin, the whole text, and the byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: Origin,
    pub text: String,
    pub span: Range<usize>,
}

impl Location {
    /// 1-based line and column (in characters) of the span's start.
    pub fn line_col(&self) -> (usize, usize) {
        let start = self.span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn source_line(&self) -> &str {
        let start = self.span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        self.text[line_start..line_end].trim_end_matches('\r')
    }
}

/// One located recipe error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    /// Extra lines: what was expected, a suggestion.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, location: Option<Location>) -> Self {
        Diagnostic {
            message: message.into(),
            location,
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(loc) = &self.location else {
            write!(f, "{}", self.message)?;
            for note in &self.notes {
                write!(f, "\n  = {note}")?;
            }
            return Ok(());
        };
        let (line, col) = loc.line_col();
        let source_line = loc.source_line();
        let gutter = " ".repeat(line.to_string().len());
        let span_chars = loc.text
            [loc.span.start.min(loc.text.len())..loc.span.end.min(loc.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let origin = match &loc.origin {
            Origin::File(path) => format!("{}:{line}:{col}", path.display()),
            Origin::Set(arg) => format!("in `--set {arg}`, column {col}"),
        };
        writeln!(f, "{origin}: {}", self.message)?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{line} | {source_line}")?;
        write!(
            f,
            "{gutter} | {}{}",
            " ".repeat(col - 1),
            "^".repeat(span_chars)
        )?;
        for note in &self.notes {
            write!(f, "\n{gutter} = {note}")?;
        }
        Ok(())
    }
}

/// Errors of loading and validating recipes.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    #[error("cannot read recipe {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recipe inheritance cycle: {chain}")]
    Cycle { chain: String },
    #[error("bad recipe pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("no recipe matches {pattern:?}")]
    NoMatch { pattern: String },
    #[error("{} recipe errors:\n\n{}", .0.len(), join_errors(.0))]
    Many(Vec<RecipeError>),
}

fn join_errors(errors: &[RecipeError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl From<Diagnostic> for RecipeError {
    fn from(d: Diagnostic) -> Self {
        RecipeError::Invalid(Box::new(d))
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely misspelling.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Turns a toml/serde error into a located diagnostic, adding the expected names and a
/// suggestion for unknown fields and enum values.
pub fn from_toml_error(err: &toml::de::Error, origin: &Origin, text: &str) -> Diagnostic {
    let message = friendly_types(err.message().trim());
    let location = err.span().map(|span| Location {
        origin: origin.clone(),
        text: text.to_string(),
        span,
    });
    let diag = Diagnostic::new(message.clone(), location);
    match suggestion(&message) {
        Some(help) => diag.note(help),
        None => diag,
    }
}

/// serde names Rust types ("expected usize"); say what a recipe writer would.
fn friendly_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected u8", "expected a whole number in 0..=255"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if out.ends_with(rust) {
            out.replace_range(out.len() - rust.len().., plain);
        }
    }
    out
}

/// "help: did you mean `x`?" for serde's unknown-field and unknown-variant messages.
pub fn suggestion(message: &str) -> Option<String> {
    let (word, expected) = unknown_name(message)?;
    did_you_mean(&word, expected.iter().map(String::as_str))
        .map(|best| format!("help: did you mean `{best}`?"))
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant").
fn unknown_name(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (word, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((word.to_string(), expected))
}

/// A path for messages: relative to the current folder when below it.
pub fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let loc = Location {
            origin: Origin::File("r.toml".into()),
            text: "a = 1\n[train]\nlrr = 2\n".into(),
            span: 14..17,
        };
        assert_eq!(loc.line_col(), (3, 1));
        assert_eq!(loc.source_line(), "lrr = 2");
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("lrr", ["lr", "momentum"]), Some("lr"));
        assert_eq!(did_you_mean("cosin", ["dot", "cosine"]), Some("cosine"));
        assert_eq!(did_you_mean("zzz", ["lr", "momentum"]), None);
    }

    #[test]
    fn parses_serde_unknown_messages() {
        let (word, expected) =
            unknown_name("unknown field `lrr`, expected one of `lr`, `momentum`").unwrap();
        assert_eq!(word, "lrr");
        assert_eq!(expected, ["lr", "momentum"]);
        let (word, expected) =
            unknown_name("unknown variant `cosin`, expected `dot` or `cosine`").unwrap();
        assert_eq!(word, "cosin");
        assert_eq!(expected, ["dot", "cosine"]);
    }
}
