//! The LMDB store (heed): one environment per ingested dataset, plus the ingest stage that
//! fills it.
//!
//! In: a dataset (see [`crate::dataset`]). Out: `<stage dir>/store/` (an LMDB environment) and
//! `<stage dir>/ingest_report.json` (stored and skipped files, repaired page-text fields). Layout of the environment (named databases, keys are
//! sample ids as u64 big-endian, ids are `0..len` per split):
//!
//! | database      | value |
//! |---------------|-------|
//! | `train_image`, `val_image` | `label u32 LE, width u32 LE, height u32 LE`, then raw RGB rows or a JPEG stream ([`StoreEncoding`]) |
//! | `train_meta`, `val_meta`   | [`SampleMeta`] as JSON (label, source, query, text, original path) |
//! | `skips`       | key: position in the ingest work list; value: the skipped file and why (JSON) |
//! | `state`       | `header` ([`StoreHeader`], JSON, written last), `fingerprint`, `next`, `counts` (ingest progress) |
//!
//! Readers open the environment read-only with many reader slots; each [`StoreReader`] holds its
//! own read transaction (one per loader thread). heed allows one open environment per path and
//! process, so [`Store::open`] shares an already open one.

pub mod codec;
mod ingest;
pub mod jpeg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, WithoutTls};
use serde::{Deserialize, Serialize};

pub use crate::dataset::ClassInfo;
use crate::dataset::QueryInfo;
use crate::recipe::params::{ResizeMode, StoreEncoding};
use crate::sample::{SampleText, Source, Split};
pub use codec::SkipReason;
pub use ingest::{
    ingest, ingest_with, IngestError, IngestOptions, IngestReport, SkipCount, SkippedFile,
    REPORT_FILE, SECOND_VAL_DIR,
};

/// Bumped whenever the layout above changes.
pub const FORMAT_VERSION: u32 = 1;
/// The environment's folder inside a stage folder.
pub const STORE_DIR: &str = "store";
/// The name of a dataset's truth file in the stage folder (see [`StoreHeader::truth_file`]).
pub const TRUTH_FILE: &str = "truth.tsv";
const MAX_READERS: u32 = 1024;
/// Virtual address space reserved for the map; LMDB files grow only as data is written.
const MAP_SIZE: usize = 1 << 40;

type Key = U64<BigEndian>;

/// What a finished store holds: written in the same transaction as the last records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreHeader {
    pub format_version: u32,
    pub classes: Vec<ClassInfo>,
    /// Images per class (by label), training and validation.
    pub train_counts: Vec<u64>,
    pub val_counts: Vec<u64>,
    #[serde(with = "header_serde::encoding")]
    pub encoding: StoreEncoding,
    pub resize: u32,
    #[serde(with = "header_serde::resize_mode")]
    pub resize_mode: ResizeMode,
    /// WebVision queries (empty for formats without).
    pub queries: Vec<QueryInfo>,
    /// The truth file kept in the stage folder (a name in it), for a dataset that knows its
    /// noise; absent in stores written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth_file: Option<String>,
}

impl StoreHeader {
    /// The classes' names, by label.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }
}

/// Everything about a sample except its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    pub label: u32,
    pub source: Source,
    pub query: u32,
    pub text: SampleText,
    /// As in the file list, e.g. `flickr/q0001/1.jpg`.
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {source}", dir.display())]
    Lmdb { dir: PathBuf, source: heed::Error },
    #[error("store {}: not a finished store (no header): run the ingest stage to completion", dir.display())]
    Unfinished { dir: PathBuf },
    #[error("store {}: format version {found}, this build reads {FORMAT_VERSION}: re-ingest", dir.display())]
    Version { dir: PathBuf, found: u32 },
    #[error("store {}: {split} id {id} out of range (the split has {len})", dir.display(), split = split.as_str())]
    NoSuchId {
        dir: PathBuf,
        split: Split,
        id: u64,
        len: u64,
    },
    #[error("store {}: {split} id {id}: corrupt {what}: {message}", dir.display(), split = split.as_str())]
    Corrupt {
        dir: PathBuf,
        split: Split,
        id: u64,
        what: &'static str,
        message: String,
    },
}

/// The named databases of a store environment.
#[derive(Clone, Copy)]
struct Tables {
    train_image: Table,
    val_image: Table,
    train_meta: Table,
    val_meta: Table,
    skips: Table,
    state: Database<'static, Str, Bytes>,
}

impl Tables {
    const NAMES: [&'static str; 6] = [
        "train_image",
        "val_image",
        "train_meta",
        "val_meta",
        "skips",
        "state",
    ];

    fn image(&self, split: Split) -> Table {
        match split {
            Split::Train => self.train_image,
            Split::Val => self.val_image,
        }
    }

    fn meta(&self, split: Split) -> Table {
        match split {
            Split::Train => self.train_meta,
            Split::Val => self.val_meta,
        }
    }
}

struct Inner {
    dir: PathBuf,
    env: Env<WithoutTls>,
    tables: Tables,
    header: StoreHeader,
    train_len: u64,
    val_len: u64,
}

/// A finished, read-only store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Stores open in this process, by canonical folder (heed opens an environment once per path).
static OPEN_STORES: Mutex<Option<HashMap<PathBuf, Weak<Inner>>>> = Mutex::new(None);

impl Store {
    /// Opens the store a finished ingest wrote under the stage folder `dir` (`dir/store`).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let env_dir = dir.join(STORE_DIR);
        let lmdb = |source| StoreError::Lmdb {
            dir: env_dir.clone(),
            source,
        };
        let key = env_dir
            .canonicalize()
            .map_err(|e| lmdb(heed::Error::Io(e)))?;
        let mut open = OPEN_STORES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(inner) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(Store { inner });
        }
        let env = open_env(&env_dir, None).map_err(lmdb)?;
        let tables = open_tables(&env)
            .map_err(lmdb)?
            .ok_or(StoreError::Unfinished {
                dir: env_dir.clone(),
            })?;
        let txn = env.read_txn().map_err(lmdb)?;
        let header_bytes =
            tables
                .state
                .get(&txn, "header")
                .map_err(lmdb)?
                .ok_or(StoreError::Unfinished {
                    dir: env_dir.clone(),
                })?;
        let header: StoreHeader =
            serde_json::from_slice(header_bytes).map_err(|e| StoreError::Corrupt {
                dir: env_dir.clone(),
                split: Split::Train,
                id: 0,
                what: "header",
                message: e.to_string(),
            })?;
        if header.format_version != FORMAT_VERSION {
            return Err(StoreError::Version {
                dir: env_dir,
                found: header.format_version,
            });
        }
        let train_len = tables.train_image.len(&txn).map_err(lmdb)?;
        let val_len = tables.val_image.len(&txn).map_err(lmdb)?;
        drop(txn);
        let inner = Arc::new(Inner {
            dir: env_dir,
            env,
            tables,
            header,
            train_len,
            val_len,
        });
        open.insert(key, Arc::downgrade(&inner));
        Ok(Store { inner })
    }

    pub fn header(&self) -> &StoreHeader {
        &self.inner.header
    }

    /// Samples in `split`; their ids are `0..len`.
    pub fn len(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.inner.train_len,
            Split::Val => self.inner.val_len,
        }
    }

    pub fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }

    /// The environment folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The truth file the dataset came with (the generated dataset's), kept beside the store.
    pub fn truth_file(&self) -> Option<PathBuf> {
        let stage_dir = self.inner.dir.parent()?;
        Some(stage_dir.join(self.header().truth_file.as_ref()?))
    }

    /// A reader with its own read transaction (one per thread).
    /// Gives back this process's mapping of the store pages read so far. LMDB reads through a
    /// memory map, so every page a pass over the store touches stays in the process's
    /// resident memory until the kernel needs it (6 GB of RSS at 2.4M samples for one pass
    /// over the texts); stages that stream the whole store call this every so many samples.
    /// The pages stay in the page cache, and reading them again maps them again.
    pub fn release_mapped_pages(&self) {
        let Ok(data) = self.inner.dir.join("data.mdb").canonicalize() else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let data = data.to_string_lossy();
        for line in maps.lines().filter(|l| l.ends_with(data.as_ref())) {
            let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|range| range.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                })
            else {
                continue;
            };
            // SAFETY: the range is LMDB's read-only, shared mapping of the data file, listed by
            // the kernel. Dropping its page-table entries loses nothing (the file holds the
            // data), and a slice into it that is still alive reads the same bytes again on
            // its next access.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }

    pub fn reader(&self) -> Result<StoreReader<'_>, StoreError> {
        let txn = self
            .inner
            .env
            .read_txn()
            .map_err(|source| StoreError::Lmdb {
                dir: self.inner.dir.clone(),
                source,
            })?;
        Ok(StoreReader { store: self, txn })
    }
}

/// A stored image as RGB rows.
pub struct RgbRecord<'a> {
    pub label: u32,
    pub width: u32,
    pub height: u32,
    pub pixels: std::borrow::Cow<'a, [u8]>,
}

/// Reads records inside one read transaction: what it reads is one consistent snapshot.
pub struct StoreReader<'s> {
    store: &'s Store,
    txn: RoTxn<'s, WithoutTls>,
}

impl StoreReader<'_> {
    pub fn meta(&self, split: Split, id: u64) -> Result<SampleMeta, StoreError> {
        let bytes = self.get(self.store.inner.tables.meta(split), split, id)?;
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(split, id, "meta", e.to_string()))
    }

    pub fn image(&self, split: Split, id: u64) -> Result<image::RgbImage, StoreError> {
        let rgb = self.rgb(split, id)?;
        Ok(
            image::RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels.into_owned())
                .expect("length checked"),
        )
    }

    /// A record's label, size and RGB pixels: borrowed from the map for raw stores, decoded
    /// for JPEG ones. The loader's fast path.
    pub fn rgb(&self, split: Split, id: u64) -> Result<RgbRecord<'_>, StoreError> {
        let record = self.record(split, id)?;
        let pixels = codec::record_pixels(&record, self.store.header().encoding)
            .map_err(|message| self.corrupt(split, id, "image", message))?;
        Ok(RgbRecord {
            label: record.label,
            width: record.width,
            height: record.height,
            pixels,
        })
    }

    /// The stored record (label, size, payload), borrowed from the map.
    fn record(&self, split: Split, id: u64) -> Result<codec::RecordView<'_>, StoreError> {
        let bytes = self.get(self.store.inner.tables.image(split), split, id)?;
        codec::parse_record(bytes)
            .ok_or_else(|| self.corrupt(split, id, "image", "shorter than its header".into()))
    }

    fn get(&self, table: Table, split: Split, id: u64) -> Result<&[u8], StoreError> {
        let dir = &self.store.inner.dir;
        table
            .get(&self.txn, &id)
            .map_err(|source| StoreError::Lmdb {
                dir: dir.clone(),
                source,
            })?
            .ok_or(StoreError::NoSuchId {
                dir: dir.clone(),
                split,
                id,
                len: self.store.len(split),
            })
    }

    fn corrupt(&self, split: Split, id: u64, what: &'static str, message: String) -> StoreError {
        StoreError::Corrupt {
            dir: self.store.inner.dir.clone(),
            split,
            id,
            what,
            message,
        }
    }
}

/// Opens the environment read-only (`writer_map_size = None`), or for the ingest writer with a
/// map of that many bytes.
fn open_env(dir: &Path, writer_map_size: Option<usize>) -> Result<Env<WithoutTls>, heed::Error> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(writer_map_size.unwrap_or(MAP_SIZE))
        .max_dbs(Tables::NAMES.len() as u32)
        .max_readers(MAX_READERS);
    // The writer: NO_SYNC, since a killed process loses nothing the OS already has (kill -9 is
    // what resuming must survive) and ingest syncs after each commit itself. Not WRITE_MAP:
    // writing 196 kB records into fresh map pages costs a page fault and a zeroed page per
    // 4 kB, and `pwrite` of the dirty pages was faster in paired runs (`BENCHMARKS.md`: 2 cores
    // 4179 vs 2959 img/s, 1 core 2412 vs 2128, medians of 5–6).
    let flags = match writer_map_size {
        None => EnvFlags::READ_ONLY,
        Some(_) => {
            std::fs::create_dir_all(dir)?;
            EnvFlags::NO_SYNC
        }
    };
    // SAFETY: the environment is opened once per path in this process (see OPEN_STORES and
    // ingest), and LMDB's files are not modified by anything but LMDB.
    unsafe {
        options.flags(flags);
        options.open(dir)
    }
}

type Table = Database<'static, Key, Bytes>;
type TableTuple = (
    Table,
    Table,
    Table,
    Table,
    Table,
    Database<'static, Str, Bytes>,
);

impl From<TableTuple> for Tables {
    fn from((train_image, val_image, train_meta, val_meta, skips, state): TableTuple) -> Tables {
        Tables {
            train_image,
            val_image,
            train_meta,
            val_meta,
            skips,
            state,
        }
    }
}

/// The store's databases, or `None` when the environment has not got all of them.
fn open_tables(env: &Env<WithoutTls>) -> Result<Option<Tables>, heed::Error> {
    let rtxn = env.read_txn()?;
    let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| -> Result<_, heed::Error> {
        let open = |name| opener.open_database::<Key, Bytes>(rtxn, Some(name));
        let all = (
            open("train_image")?,
            open("val_image")?,
            open("train_meta")?,
            open("val_meta")?,
            open("skips")?,
            opener.open_database::<Str, Bytes>(rtxn, Some("state"))?,
        );
        Ok(match all {
            (Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)) => {
                CommitOrAbort::Commit((a, b, c, d, e, f))
            }
            _ => CommitOrAbort::Abort(()),
        })
    })?;
    Ok(match opened {
        CommitOrAbort::Commit(tables) => Some(tables.into()),
        CommitOrAbort::Abort(()) => None,
    })
}

fn create_tables(env: &Env<WithoutTls>) -> Result<Tables, heed::Error> {
    let wtxn = env.write_txn()?;
    let created =
        env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let mut create = |name| opener.create_database::<Key, Bytes>(wtxn, Some(name));
            let tables = (
                create("train_image")?,
                create("val_image")?,
                create("train_meta")?,
                create("val_meta")?,
                create("skips")?,
            );
            let state = opener.create_database::<Str, Bytes>(wtxn, Some("state"))?;
            Ok(CommitOrAbort::<_, ()>::Commit((
                tables.0, tables.1, tables.2, tables.3, tables.4, state,
            )))
        })?;
    Ok(created.unwrap_commit().into())
}

/// The header keeps the recipe enums in the spelling of the recipe (`raw`, `jpeg:90`;
/// `squash`, `shorter-side`).
mod header_serde {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::recipe::params::{ResizeMode, StoreEncoding};

    pub mod encoding {
        use super::*;

        pub fn serialize<S: Serializer>(value: &StoreEncoding, s: S) -> Result<S::Ok, S::Error> {
            match value {
                StoreEncoding::Raw => s.serialize_str("raw"),
                StoreEncoding::Jpeg { quality } => s.serialize_str(&format!("jpeg:{quality}")),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StoreEncoding, D::Error> {
            let text = String::deserialize(d)?;
            match text.split_once(':') {
                None if text == "raw" => Ok(StoreEncoding::Raw),
                Some(("jpeg", quality)) => Ok(StoreEncoding::Jpeg {
                    quality: quality.parse().map_err(D::Error::custom)?,
                }),
                _ => Err(D::Error::custom(format!("unknown encoding `{text}`"))),
            }
        }
    }

    pub mod resize_mode {
        use super::*;

        pub fn serialize<S: Serializer>(value: &ResizeMode, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(match value {
                ResizeMode::Squash => "squash",
                ResizeMode::ShorterSide => "shorter-side",
            })
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ResizeMode, D::Error> {
            match String::deserialize(d)?.as_str() {
                "squash" => Ok(ResizeMode::Squash),
                "shorter-side" => Ok(ResizeMode::ShorterSide),
                other => Err(D::Error::custom(format!("unknown resize mode `{other}`"))),
            }
        }
    }
}
