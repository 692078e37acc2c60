//! Page texts kept on disk while a dataset's lists are read. In: each sample's text as a
//! reader parses it. Out: a [`TextRef`] per sample (12 bytes), and the text back when the
//! ingest writes the sample. Held in memory, WebVision's texts took about 1.4 kB a sample
//! (3.3 GB at 2.4M); the file is unnamed in the ingest's folder and gone when dropped.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::DatasetError;
use crate::sample::SampleText;

/// Where a sample's text lies in its [`PageTexts`]; [`TextRef::EMPTY`] for no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRef {
    offset: u64,
    len: u32,
}

impl TextRef {
    pub const EMPTY: TextRef = TextRef { offset: 0, len: 0 };
}

/// The texts of one dataset's samples, appended as read, read back by [`TextRef`]. The
/// default keeps none: for lists read only for their paths and labels, and for datasets
/// without page text.
#[derive(Debug, Default)]
pub struct PageTexts {
    /// Where the file goes; none when no text is kept.
    dir: Option<PathBuf>,
    file: Option<File>,
    writer: Option<BufWriter<File>>,
    end: u64,
}

impl PageTexts {
    /// Texts kept in an unnamed file in `dir`, made when the first text comes.
    pub fn in_dir(dir: &Path) -> PageTexts {
        PageTexts {
            dir: Some(dir.to_path_buf()),
            ..PageTexts::default()
        }
    }

    /// Keeps `text` (an empty one takes no space), unless this keeps none.
    pub fn put(&mut self, text: &SampleText) -> Result<TextRef, DatasetError> {
        let Some(dir) = self.dir.as_deref() else {
            return Ok(TextRef::EMPTY);
        };
        if *text == SampleText::default() {
            return Ok(TextRef::EMPTY);
        }
        if self.writer.is_none() {
            std::fs::create_dir_all(dir).map_err(DatasetError::io(dir))?;
            let file = unnamed_file(dir)?;
            let appender = file.try_clone().map_err(DatasetError::io(dir))?;
            self.file = Some(file);
            self.writer = Some(BufWriter::new(appender));
        }
        let bytes = serde_json::to_vec(text).expect("text serializes");
        let writer = self.writer.as_mut().expect("made above");
        writer.write_all(&bytes).map_err(DatasetError::io(dir))?;
        let at = TextRef {
            offset: self.end,
            len: bytes.len() as u32,
        };
        self.end += bytes.len() as u64;
        Ok(at)
    }

    /// These texts with what `put` buffered written out, for [`PageTexts::get`]: a reader
    /// seals the texts of the index it returns.
    pub fn sealed(mut self) -> Result<PageTexts, DatasetError> {
        if let (Some(mut writer), Some(dir)) = (self.writer.take(), self.dir.as_deref()) {
            writer.flush().map_err(DatasetError::io(dir))?;
        }
        Ok(self)
    }

    /// The text `at` points to.
    pub fn get(&self, at: TextRef) -> Result<SampleText, DatasetError> {
        if at.len == 0 {
            return Ok(SampleText::default());
        }
        let dir = self.dir.as_deref().unwrap_or(Path::new("."));
        let io = |source| DatasetError::Io {
            path: dir.join("(page texts)"),
            source,
        };
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        let mut bytes = vec![0; at.len as usize];
        file.read_exact_at(&mut bytes, at.offset).map_err(io)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

/// A new file in `dir`, unlinked as soon as it is open: the kernel frees it when its last
/// handle closes, whatever way the process ends.
fn unnamed_file(dir: &Path) -> Result<File, DatasetError> {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".page-texts.{}.{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(DatasetError::io(&path))?;
    std::fs::remove_file(&path).map_err(DatasetError::io(&path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_back_as_put_and_empty_ones_take_no_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut texts = PageTexts::in_dir(dir.path());
        let page = |i: usize| SampleText {
            title: Some(format!("title {i} ü")),
            description: i.is_multiple_of(2).then(|| "d".repeat(i)),
            tags: (0..i % 3).map(|t| format!("tag{t}")).collect(),
        };
        let mut refs = Vec::new();
        for i in 0..100 {
            refs.push(texts.put(&page(i)).unwrap());
            refs.push(texts.put(&SampleText::default()).unwrap());
        }
        let texts = texts.sealed().unwrap();
        for (i, pair) in refs.chunks(2).enumerate() {
            assert_eq!(texts.get(pair[0]).unwrap(), page(i));
            assert_eq!(pair[1], TextRef::EMPTY);
            assert_eq!(texts.get(pair[1]).unwrap(), SampleText::default());
        }
        // The file is unnamed: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
