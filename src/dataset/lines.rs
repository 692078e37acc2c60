//! Reading the whitespace-separated list files of a dataset with 1-based line numbers, so that
//! every parse error can name its file and line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::DatasetError;

/// One non-blank line of a list file.
pub struct Line<'a> {
    pub path: &'a Path,
    /// 1-based.
    pub number: usize,
    pub text: &'a str,
}

impl Line<'_> {
    pub fn error(&self, field: &'static str, message: impl ToString) -> DatasetError {
        DatasetError::Line {
            path: self.path.to_path_buf(),
            line: self.number,
            field,
            message: message.to_string(),
        }
    }

    /// `first rest`: the first whitespace-separated token and the trimmed rest (may be empty).
    pub fn head_rest(&self, field: &'static str) -> Result<(&str, &str), DatasetError> {
        let text = self.text.trim();
        match text.split_once(char::is_whitespace) {
            Some((head, rest)) => Ok((head, rest.trim())),
            None if !text.is_empty() => Ok((text, "")),
            None => Err(self.error(field, "empty line")),
        }
    }

    /// `a b`: exactly two tokens, `b` parsed as `T`.
    pub fn pair<T: FromStr>(
        &self,
        first: &'static str,
        second: &'static str,
    ) -> Result<(&str, T), DatasetError>
    where
        T::Err: std::fmt::Display,
    {
        let mut tokens = self.text.split_whitespace();
        let (Some(a), Some(b), None) = (tokens.next(), tokens.next(), tokens.next()) else {
            return Err(self.error(
                first,
                format!(
                    "expected `<{first}> <{second}>`, got `{}`",
                    self.text.trim()
                ),
            ));
        };
        let value = b
            .parse::<T>()
            .map_err(|e| self.error(second, format!("`{b}`: {e}")))?;
        Ok((a, value))
    }
}

/// A list file's text, kept so that [`Line`]s can borrow it.
pub struct ListFile {
    pub path: PathBuf,
    text: String,
}

impl ListFile {
    pub fn read(path: PathBuf) -> Result<ListFile, DatasetError> {
        let text = std::fs::read_to_string(&path).map_err(DatasetError::io(&path))?;
        Ok(ListFile { path, text })
    }

    /// Non-blank lines with their 1-based numbers.
    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(i, text)| Line {
                path: &self.path,
                number: i + 1,
                text,
            })
    }
}
