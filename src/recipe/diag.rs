//! Recipe errors that point into the text that caused them: `file:line:col`, the line, a
//! caret under the offending span, what was expected (in TOML's words, not Rust's), and a
//! "did you mean" where a known name is close to what was written. An error about nothing
//! written (a required key left out) names the recipe file; every error names its file or
//! `--set`.

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

/// Where a recipe error is: always in some file or `--set`, at a span of it when the error is
/// about text written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    At(Location),
    /// The whole file or `--set`: what is wrong is not written in it (a required key left
    /// out, a default that clashes with another setting).
    In(Origin),
}

/// One located recipe error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub place: Place,
    /// Extra lines: what was expected, a suggestion.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at `location` when it is known, else in the whole of `origin`.
    pub fn new(message: impl Into<String>, location: Option<Location>, origin: &Origin) -> Self {
        Diagnostic::placed(
            message,
            location.map_or_else(|| Place::In(origin.clone()), Place::At),
        )
    }

    pub fn placed(message: impl Into<String>, place: Place) -> Self {
        Diagnostic {
            message: message.into(),
            place,
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
        let loc = match &self.place {
            Place::At(loc) => loc,
            Place::In(origin) => {
                match origin {
                    Origin::File(path) => write!(f, "{}: {}", path.display(), self.message)?,
                    Origin::Set(arg) => write!(f, "in `--set {arg}`: {}", self.message)?,
                }
                for note in &self.notes {
                    write!(f, "\n  = {note}")?;
                }
                return Ok(());
            }
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
    let location = err.span().map(|span| Location {
        origin: origin.clone(),
        text: text.to_string(),
        span,
    });
    let message = plain_words(err.message());
    let diag = Diagnostic::new(message.clone(), location, origin);
    match suggestion(&message) {
        Some(help) => diag.note(help),
        None => diag,
    }
}

/// A toml/serde message in the words of a recipe writer: serde names the Rust type it
/// wanted ("expected struct RawTrain", "expected i64"), a recipe writer knows TOML's.
pub fn plain_words(message: &str) -> String {
    let message = message.trim();
    // toml's own message for an enum given anything but a string.
    if message == "wanted string or table" {
        return "expected a string".to_string();
    }
    // serde's names of what it found, for TOML's arrays and tables; an enum's variants are
    // a setting's values.
    let message = message
        .replacen("unknown variant `", "unknown value `", 1)
        .replacen("invalid type: sequence,", "invalid type: array,", 1)
        .replacen("invalid type: map,", "invalid type: table,", 1);
    let Some((before, expected)) = message.rsplit_once("expected ") else {
        return message;
    };
    let plain = match expected {
        "i64" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a map" => "a table",
        rust if rust.starts_with("struct ") => "a table",
        _ => return message,
    };
    format!("{before}expected {plain}")
}

/// "help: did you mean `x`?" for unknown-field and unknown-value messages.
pub fn suggestion(message: &str) -> Option<String> {
    let (word, expected) = unknown_name(message)?;
    did_you_mean(&word, expected.iter().map(String::as_str))
        .map(|best| format!("help: did you mean `{best}`?"))
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" (and [`plain_words`]'
/// "unknown value").
fn unknown_name(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown value `"))?;
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
            unknown_name("unknown value `cosin`, expected `dot` or `cosine`").unwrap();
        assert_eq!(word, "cosin");
        assert_eq!(expected, ["dot", "cosine"]);
    }
}
