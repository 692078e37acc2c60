//! Reading back the tab-separated tables the stages write (`scores.tsv`, `signals.tsv`,
//! `probe.tsv`) and the truth files datasets bring. In: a file and what its header must be.
//! Out: each row's fields, with a parser that names the file, line and field of any fault.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum TsvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: field {field}: {message}")]
    BadField {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

/// What the first line must be: exactly these columns, or at least these (in any order,
/// found by name; a row may then be short and its missing fields are named when read).
pub enum Header<'a> {
    Exactly(&'a str),
    Naming(&'a [&'a str]),
}

/// One row: its fields, and where it stands, for errors.
pub struct Row<'a> {
    path: &'a Path,
    line: usize,
    names: &'a [String],
    columns: &'a [usize],
    fields: Vec<&'a str>,
}

impl Row<'_> {
    /// 1-based line number in the file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The field of the `i`-th column asked for (in [`Header::Naming`]'s order, or the
    /// header's own).
    pub fn raw(&self, i: usize) -> Result<&str, TsvError> {
        self.fields
            .get(self.columns[i])
            .copied()
            .ok_or_else(|| self.error(i, format!("missing ({} fields)", self.fields.len())))
    }

    /// The `i`-th field parsed, or an error naming it.
    pub fn parse<T: FromStr>(&self, i: usize) -> Result<T, TsvError> {
        let raw = self.raw(i)?;
        raw.parse()
            .map_err(|_| self.error(i, format!("cannot parse {raw:?}")))
    }

    /// An error about the `i`-th field of this row.
    pub fn error(&self, i: usize, message: String) -> TsvError {
        TsvError::BadField {
            path: self.path.to_path_buf(),
            line: self.line,
            field: self.names[i].clone(),
            message,
        }
    }
}

/// Calls `each` with every row of the table at `path` after checking its header. With
/// [`Header::Exactly`] (a table a stage wrote) every line is a row, and one of another field
/// count, a blank one included, is an error; with [`Header::Naming`] (a file a person or a
/// dataset brought) blank lines are skipped.
pub fn for_each_row(
    path: &Path,
    header: Header,
    mut each: impl FnMut(&Row) -> Result<(), TsvError>,
) -> Result<(), TsvError> {
    let io = |source| TsvError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |line: usize, field: &str, message: String| TsvError::BadField {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let mut lines = BufReader::new(std::fs::File::open(path).map_err(io)?).lines();
    let first = lines.next().transpose().map_err(io)?.unwrap_or_default();
    let found: Vec<&str> = first.split('\t').collect();
    let (names, columns): (Vec<String>, Vec<usize>) = match header {
        Header::Exactly(expected) => {
            if first != expected {
                return Err(bad(1, "header", format!("expected {expected:?}")));
            }
            found
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .unzip()
        }
        Header::Naming(wanted) => wanted
            .iter()
            .map(|name| match found.iter().position(|h| h == name) {
                Some(i) => Ok((name.to_string(), i)),
                None => Err(bad(1, name, format!("missing from the header {found:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip(),
    };
    let exact = matches!(header, Header::Exactly(_));
    for (n, line) in lines.enumerate() {
        let line_no = n + 2;
        let line = line.map_err(io)?;
        if !exact && line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if exact && fields.len() != names.len() {
            return Err(bad(
                line_no,
                "row",
                format!(
                    "expected {} tab-separated fields, found {}",
                    names.len(),
                    fields.len()
                ),
            ));
        }
        each(&Row {
            path,
            line: line_no,
            names: &names,
            columns: &columns,
            fields,
        })?;
    }
    Ok(())
}

/// Ids must run 0, 1, 2, … in row order: the check every per-sample table makes.
pub fn expect_id(row: &Row, column: usize, expected: usize) -> Result<(), TsvError> {
    let id: usize = row.parse(column)?;
    match id == expected {
        true => Ok(()),
        false => Err(row.error(
            column,
            format!("expected id {expected} (ids run 0..N in order), found {id}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, header: Header) -> Result<Vec<(usize, i64)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tsv");
        std::fs::write(&path, text).unwrap();
        let mut rows = Vec::new();
        for_each_row(&path, header, |row| {
            rows.push((row.line(), row.parse(1)?));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(rows)
    }

    #[test]
    fn rows_are_parsed_and_faults_named_by_line_and_field() {
        let exact = || Header::Exactly("id\tcount");
        assert_eq!(
            read("id\tcount\n0\t5\n1\t-2\n", exact()),
            Ok(vec![(2, 5), (3, -2)])
        );
        // A stage's own table has no blank lines: one is a damaged row.
        let err = read("id\tcount\n0\t5\n\n1\t-2\n", exact()).unwrap_err();
        assert!(err.ends_with("t.tsv:3: field row: expected 2 tab-separated fields, found 1"));
        let err = read("id\tcount\n0\t5\n1\tmany\n", exact()).unwrap_err();
        assert!(
            err.ends_with("t.tsv:3: field count: cannot parse \"many\""),
            "{err}"
        );
        let err = read("id\tcount\n0\t5\t7\n", exact()).unwrap_err();
        assert!(err.ends_with("t.tsv:2: field row: expected 2 tab-separated fields, found 3"));
        let err = read("id\tnumber\n", exact()).unwrap_err();
        assert!(
            err.ends_with("t.tsv:1: field header: expected \"id\\tcount\""),
            "{err}"
        );
    }

    #[test]
    fn columns_asked_by_name_are_found_anywhere_in_the_header() {
        let naming = || Header::Naming(&["id", "count"]);
        // A file people bring may end in blank lines: they are skipped.
        assert_eq!(
            read("count\tx\tid\n4\ty\t0\n\n", naming()),
            Ok(vec![(2, 4)])
        );
        let err = read("x\tcount\n", naming()).unwrap_err();
        assert!(
            err.contains("t.tsv:1: field id: missing from the header"),
            "{err}"
        );
        let err = read("id\tcount\n3\n", naming()).unwrap_err();
        assert!(
            err.ends_with("t.tsv:2: field count: missing (1 fields)"),
            "{err}"
        );
    }
}
