//! Reading the whitespace-separated list files of a dataset with 1-based line numbers, so that
//! every parse error can name its file and line; and keeping the files they list inside the
//! dataset root.

use std::path::{Component, Path, PathBuf};
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

    /// `entry` as [`file_in_root`] takes it, for this line.
    pub fn file_in_root(
        &self,
        root: &Path,
        folder: &str,
        entry: &str,
    ) -> Result<PathBuf, DatasetError> {
        file_in_root(self.path, self.number, root, folder, entry)
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

/// `root/folder/entry` for an `entry` of line `line` of the list `list` (`folder` is where the
/// list's entries are relative to, `""` for the root itself). Refused when the entry leaves the
/// root lexically: an absolute path, or a `..` that climbs above the root. Links are not
/// followed, so a linked folder inside the root stays allowed.
pub fn file_in_root(
    list: &Path,
    line: usize,
    root: &Path,
    folder: &str,
    entry: &str,
) -> Result<PathBuf, DatasetError> {
    let relative = Path::new(folder).join(entry);
    let mut depth = 0usize;
    for component in relative.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(DatasetError::OutsideRoot {
                    path: list.to_path_buf(),
                    line,
                    entry: entry.to_string(),
                })
            }
        }
    }
    Ok(root.join(relative))
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
