//! `.npy` files of little-endian f32 in C order (numpy's `<f4`), so that topic vectors and
//! topic-word matrices can be read by numpy and by the reference scripts. Rows can be
//! streamed out one at a time: a 2.4M × 500 matrix never has to sit in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: bad .npy header: {message}")]
    Header { path: PathBuf, message: String },
    #[error("{path}: expected {expected} rows of {cols} values, {message}")]
    Rows {
        path: PathBuf,
        expected: usize,
        cols: usize,
        message: String,
    },
}

/// An f32 array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyArray {
    /// Rows of a 2-D array (a 1-D array is one row).
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        let cols = self.shape.last().copied().unwrap_or(1).max(1);
        self.data.chunks(cols)
    }
}

/// Writes a whole array at once.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let cols = if shape.len() == 1 {
        shape[0]
    } else {
        shape.iter().skip(1).product()
    };
    let mut writer = NpyWriter::create(path, shape)?;
    for row in data.chunks(cols.max(1)) {
        writer.write_row(row)?;
    }
    writer.finish()
}

/// Streams rows of a 2-D `[rows, cols]` array (or a 1-D array as one row) to a file.
pub struct NpyWriter {
    path: PathBuf,
    out: BufWriter<File>,
    rows: usize,
    cols: usize,
    written: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyWriter, NpyError> {
        let io = |source| NpyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
            [] => (1, 1),
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(&header(shape)).map_err(io)?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            out,
            rows,
            cols,
            written: 0,
        })
    }

    pub fn write_row(&mut self, row: &[f32]) -> Result<(), NpyError> {
        if row.len() != self.cols || self.written == self.rows {
            return Err(self.rows_error(format!("row {} has {} values", self.written, row.len())));
        }
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out.write_all(&bytes).map_err(|source| NpyError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.written += 1;
        Ok(())
    }

    /// Checks that every row was written and flushes.
    pub fn finish(mut self) -> Result<(), NpyError> {
        if self.written != self.rows {
            return Err(self.rows_error(format!("only {} were written", self.written)));
        }
        self.out.flush().map_err(|source| NpyError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn rows_error(&self, message: String) -> NpyError {
        NpyError::Rows {
            path: self.path.clone(),
            expected: self.rows,
            cols: self.cols,
            message,
        }
    }
}

fn header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so magic + version + length + dict + '\n' is a multiple of 64 (numpy's alignment).
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Reads a `<f4` C-order array, all of it.
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let file = NpyFile::open(path)?;
    let mut data = vec![0.0; file.shape.iter().product()];
    file.read_rows(0, &mut data)?;
    Ok(NpyArray {
        shape: file.shape,
        data,
    })
}

/// An open `<f4` C-order `.npy` file whose rows are read where they lie (positioned reads,
/// no shared cursor): a pass over a 2.4M × 500 matrix holds one chunk of it, and a lookup
/// one row.
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    file: File,
    shape: Vec<usize>,
    /// Where the data starts: after the magic, version, header length and header.
    data_start: u64,
}

/// Rows per read of [`NpyFile::for_each_row`]: 1 MB at 500 topics.
const CHUNK_ROWS: usize = 512;

impl NpyFile {
    /// Opens `path` and checks its header and that its size matches the shape.
    pub fn open(path: &Path) -> Result<NpyFile, NpyError> {
        let io = |source| NpyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |message: String| NpyError::Header {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(io)?;
        let mut input = BufReader::new(&file);
        let mut start = [0u8; 10];
        input.read_exact(&mut start).map_err(io)?;
        if &start[..6] != MAGIC {
            return Err(bad("not a .npy file (magic bytes differ)".into()));
        }
        let (header_len, prefix) = match start[6] {
            1 => (u16::from_le_bytes([start[8], start[9]]) as usize, 10),
            2 | 3 => {
                let mut more = [0u8; 2];
                input.read_exact(&mut more).map_err(io)?;
                let len = u32::from_le_bytes([start[8], start[9], more[0], more[1]]);
                (len as usize, 12)
            }
            v => return Err(bad(format!("unsupported version {v}"))),
        };
        let mut dict = vec![0u8; header_len];
        input.read_exact(&mut dict).map_err(io)?;
        let dict = String::from_utf8_lossy(&dict);
        if !dict.contains("'descr': '<f4'") {
            return Err(bad(format!(
                "only little-endian f32 ('<f4') is supported: {}",
                dict.trim()
            )));
        }
        if dict.contains("'fortran_order': True") {
            return Err(bad("Fortran order is not supported".into()));
        }
        let shape =
            parse_shape(&dict).ok_or_else(|| bad(format!("no shape in {}", dict.trim())))?;
        let data_start = (prefix + header_len) as u64;
        let count: usize = shape.iter().product();
        let data_bytes = file
            .metadata()
            .map_err(io)?
            .len()
            .saturating_sub(data_start);
        if data_bytes != count as u64 * 4 {
            return Err(bad(format!(
                "shape {shape:?} needs {} data bytes, file has {data_bytes}",
                count * 4
            )));
        }
        drop(input);
        Ok(NpyFile {
            path: path.to_path_buf(),
            file,
            shape,
            data_start,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows of a 2-D array (1 for a 1-D one).
    pub fn rows(&self) -> usize {
        match self.shape.as_slice() {
            [] | [_] => 1,
            [rows, ..] => *rows,
        }
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        match self.shape.as_slice() {
            [] => 1,
            [n] => *n,
            [_, rest @ ..] => rest.iter().product(),
        }
    }

    /// Fills `out` (a whole number of rows) with the rows from `first` on.
    pub fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<(), NpyError> {
        use std::os::unix::fs::FileExt;
        let cols = self.cols().max(1);
        let rows = out.len() / cols;
        if !out.len().is_multiple_of(cols) || first + rows > self.rows() {
            return Err(NpyError::Rows {
                path: self.path.clone(),
                expected: self.rows(),
                cols,
                message: format!("rows {first}..{} asked for", first + rows),
            });
        }
        let mut bytes = vec![0u8; out.len() * 4];
        let offset = self.data_start + (first * cols * 4) as u64;
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|source| NpyError::Io {
                path: self.path.clone(),
                source,
            })?;
        for (value, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Result<Vec<f32>, NpyError> {
        let mut row = vec![0.0; self.cols()];
        self.read_rows(i, &mut row)?;
        Ok(row)
    }

    /// Every row in order, read [`CHUNK_ROWS`] at a time.
    pub fn for_each_row(&self, mut f: impl FnMut(usize, &[f32])) -> Result<(), NpyError> {
        let cols = self.cols().max(1);
        let mut chunk = vec![0.0; CHUNK_ROWS * cols];
        for first in (0..self.rows()).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(self.rows() - first);
            let chunk = &mut chunk[..rows * cols];
            self.read_rows(first, chunk)?;
            for (i, row) in chunk.chunks_exact(cols).enumerate() {
                f(first + i, row);
            }
        }
        Ok(())
    }
}

fn parse_shape(dict: &str) -> Option<Vec<usize>> {
    let start = dict.find("'shape':")? + "'shape':".len();
    let open = start + dict[start..].find('(')? + 1;
    let close = open + dict[open..].find(')')?;
    dict[open..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_2d_and_1d() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        write(&path, &[2, 3], &data).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.shape, [2, 3]);
        assert_eq!(back.data, data);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 128 + 24);
        write(&path, &[6], &data).unwrap();
        assert_eq!(read(&path).unwrap().shape, [6]);
    }

    #[test]
    fn rows_are_read_where_they_lie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let (rows, cols) = (CHUNK_ROWS * 2 + 3, 3);
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        write(&path, &[rows, cols], &data).unwrap();
        let file = NpyFile::open(&path).unwrap();
        assert_eq!((file.rows(), file.cols()), (rows, cols));
        assert_eq!(file.row(rows - 1).unwrap(), &data[(rows - 1) * cols..]);
        let mut seen = Vec::new();
        file.for_each_row(|i, row| {
            assert_eq!(row, &data[i * cols..(i + 1) * cols]);
            seen.push(i);
        })
        .unwrap();
        assert_eq!(seen, (0..rows).collect::<Vec<_>>());
        assert!(file.row(rows).is_err());
    }

    #[test]
    fn header_matches_numpy_byte_for_byte() {
        // python3 -c "import numpy as np, io; b = io.BytesIO(); np.save(b, np.zeros((2, 3), np.float32)); print(b.getvalue()[:128])"
        let expected = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \n";
        assert_eq!(header(&[2, 3]), expected.to_vec());
    }

    #[test]
    fn short_writes_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let mut w = NpyWriter::create(&path, &[2, 2]).unwrap();
        w.write_row(&[1.0, 2.0]).unwrap();
        assert!(w.write_row(&[1.0]).is_err());
        let err = w.finish().unwrap_err().to_string();
        assert!(
            err.ends_with("expected 2 rows of 2 values, only 1 were written"),
            "{err}"
        );
        std::fs::write(&path, b"hello world").unwrap();
        assert!(read(&path)
            .unwrap_err()
            .to_string()
            .contains("not a .npy file"));
    }
}
