//! The ingest stage: dataset → store. Workers take images in work-list order from a shared
//! counter and read, decode, orient, resize and encode them; a single writer thread puts the
//! results back in order and commits every `commit_every` images in one LMDB transaction,
//! together with the ingest position and the per-class counts; a flusher thread syncs each
//! commit to disk behind it.
//!
//! Resuming: every commit records how far the work list (training samples, then validation
//! samples, in list order) has been taken, so a rerun after `kill -9` continues from the last
//! commit and produces the same records as an uninterrupted run (ids are assigned in work-list
//! order, skipped files get none). The header is written last; a store without one is not
//! finished and [`super::Store::open`] refuses it.
//!
//! Faults: a split whose every image is skipped fails the ingest, naming the commonest skip
//! reasons, rather than leaving an empty store for the next stage to puzzle over. Free space is
//! checked against an estimate of the store before the first write, and a write that finds the
//! disk full says so (mount point, free bytes, the estimate) instead of LMDB's `EIO`. The
//! report is written by every run that finds the store finished, so a kill between the header
//! and the report is finished by the rerun. Failpoints for all of these: [`crate::failpoint`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};

use serde::{Deserialize, Serialize};

use super::codec::{self, Skip, SkipReason};
use super::{
    create_tables, open_env, SampleMeta, StoreHeader, Tables, FORMAT_VERSION, STORE_DIR, TRUTH_FILE,
};
use crate::dataset::{self, DatasetError, DatasetSample, FieldRepairs};
use crate::digest;
use crate::failpoint;
use crate::recipe::params::{DatasetParams, ResizeMode, StoreEncoding};
use crate::sample::Split;
use crate::units;

/// The report's file name in the stage folder.
pub const REPORT_FILE: &str = "ingest_report.json";

/// How the ingest runs (not what it produces: the store does not depend on these).
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub progress: bool,
    /// Decode threads; 0 = one per core.
    pub threads: usize,
    /// Images per write transaction.
    pub commit_every: usize,
    /// Initial LMDB map size in bytes (rounded up to 1 MiB); `None`: sized from the work list.
    /// The map grows when full either way.
    pub map_size: Option<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            progress: false,
            threads: 0,
            commit_every: 256,
            map_size: None,
        }
    }
}

/// A file that was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub split: crate::sample::Split,
    /// As in the file list.
    pub path: String,
    pub reason: SkipReason,
    pub detail: String,
}

/// What the ingest stored and skipped; also written to `<stage dir>/ingest_report.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    pub train: u64,
    pub val: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    pub skips: Vec<SkippedFile>,
    /// Bytes of all image records (header + payload).
    pub image_bytes: u64,
    /// Page-text fields of the wrong JSON type, converted or taken as missing.
    pub repaired: FieldRepairs,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("store {}: {source}", dir.display())]
    Lmdb { dir: PathBuf, source: heed::Error },
    #[error("store {} was started with other settings or another dataset: delete it to re-ingest", dir.display())]
    Changed { dir: PathBuf },
    #[error("store {}: corrupt ingest state `{key}`: {message}", dir.display())]
    State {
        dir: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ingest threads: {0}")]
    Threads(String),
    #[error("none of the {listed} {split} images could be stored ({}): check dataset.root and the image files", skip_counts_text(.reasons), split = split.as_str())]
    NothingStored {
        split: Split,
        listed: usize,
        /// The commonest skip reasons, commonest first.
        reasons: Vec<SkipCount>,
    },
    #[error("no space left on {} ({} free; the store needs about {})", mount.display(), units::bytes_text(*.free), units::bytes_text(*.needed))]
    NoSpace {
        /// The mount point of the store's file system.
        mount: PathBuf,
        free: u64,
        /// The whole store's estimated size.
        needed: u64,
    },
}

/// How many files of a split were skipped for one reason, with the first of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipCount {
    pub reason: SkipReason,
    pub count: u64,
    pub example: SkippedFile,
}

/// Skip reasons named in [`IngestError::NothingStored`].
const REASONS_NAMED: usize = 3;

fn skip_counts_text(counts: &[SkipCount]) -> String {
    let text: Vec<String> = counts
        .iter()
        .map(|c| {
            format!(
                "{} {}, e.g. {}: {}",
                c.count,
                c.reason.as_str(),
                c.example.path,
                c.example.detail
            )
        })
        .collect();
    text.join("; ")
}

/// Progress persisted with every commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counts {
    /// Work-list position of the next sample to ingest.
    next: u64,
    train: Vec<u64>,
    val: Vec<u64>,
    image_bytes: u64,
}

impl Counts {
    fn of(&mut self, split: Split) -> &mut Vec<u64> {
        match split {
            Split::Train => &mut self.train,
            Split::Val => &mut self.val,
        }
    }
}

/// The ingest stage: builds (or resumes building) a store in `dir` with default options.
pub fn ingest(
    params: &DatasetParams,
    dir: &Path,
    progress: bool,
) -> Result<IngestReport, IngestError> {
    ingest_with(
        params,
        dir,
        &IngestOptions {
            progress,
            ..IngestOptions::default()
        },
    )
}

/// Images a worker claims at a time: few enough to keep the workers' tails short, enough to
/// spare the writer a wake-up per image (on 1 core, one per image cost 7% of a JPEG ingest).
const CLAIM: usize = 8;

/// Decoded images that may wait for the writer, in chunks of `commit_every`: slack for a slow
/// commit, so that the workers do not stall. With 256 images a chunk, a raw store buffers up to
/// about 3 × 50 MB (this, the chunk being gathered and the one being written).
const CHUNKS_AHEAD: usize = 1;

/// One chunk of decoded work, in work-list order, as the writer commits it.
struct Chunk {
    start: u64,
    results: Vec<Prepared>,
}

/// Where the second validation set's store goes in the stage folder (`<dir>/second_val/store`,
/// a store whose training split is empty), when the recipe has one.
pub const SECOND_VAL_DIR: &str = "second_val";

/// [`ingest`] with explicit threads and commit size: the dataset's counts checked against
/// `dataset.expect` before any image is read, its store, and the second validation set's.
pub fn ingest_with(
    params: &DatasetParams,
    dir: &Path,
    options: &IngestOptions,
) -> Result<IngestReport, IngestError> {
    let index = dataset::read(params, dir)?;
    let second_val = dataset::read_second_val(params, &index.classes)?;
    dataset::check_expected(params, &index, second_val.len())?;
    let report = ingest_index(&index, params, dir, options)?;
    if params.second_val.is_some() {
        let second = dataset::DatasetIndex {
            classes: index.classes.clone(),
            queries: Vec::new(),
            train: Vec::new(),
            val: second_val,
            repaired: FieldRepairs::default(),
            truth: None,
            texts: dataset::PageTexts::default(),
        };
        ingest_index(&second, params, &dir.join(SECOND_VAL_DIR), options)?;
    }
    Ok(report)
}

/// The store of `index` in `dir`, built or resumed.
fn ingest_index(
    index: &dataset::DatasetIndex,
    params: &DatasetParams,
    dir: &Path,
    options: &IngestOptions,
) -> Result<IngestReport, IngestError> {
    let work: Vec<(Split, &DatasetSample)> = [Split::Train, Split::Val]
        .into_iter()
        .flat_map(|split| index.samples(split).iter().map(move |s| (split, s)))
        .collect();
    let fingerprint = digest::json_hash(&serde_json::json!({
        "format_version": FORMAT_VERSION,
        "params": params,
        "classes": index.classes,
        "work": work.iter().map(|(_, s)| s.path.as_str()).collect::<Vec<_>>(),
    }));
    // A finished store may be open for reading in this process (heed then refuses a second,
    // writable handle): read its report through the reader.
    if let Ok(store) = super::Store::open(dir) {
        return reopen_finished(&store, &fingerprint, dir, index);
    }
    let target = Target::new(dir, work.len(), params, options.commit_every);
    let existing = std::fs::metadata(target.env_dir.join("data.mdb")).map_or(0, |m| m.len());
    if free_space(dir).0 < target.needed.saturating_sub(existing) {
        return Err(no_space(dir, target.needed));
    }
    let map_size = initial_map_size(&target.env_dir, work.len(), params, options.map_size);
    let env = open_env(&target.env_dir, Some(map_size)).map_err(|e| target.lmdb(e))?;
    let tables = create_tables(&env).map_err(|e| target.lmdb(e))?;
    let mut counts = start_or_resume(
        &env,
        &tables,
        &fingerprint,
        index.classes.len(),
        &target.env_dir,
    )?;
    let work = WorkList {
        samples: &work,
        texts: &index.texts,
    };
    write_images(&target, &env, &tables, &work, params, options, &mut counts)?;
    finish(&target, &env, &tables, index, params, &counts)
}

/// What the ingest writes: the samples in store order, and their texts.
#[derive(Clone, Copy)]
struct WorkList<'a> {
    samples: &'a [(Split, &'a DatasetSample)],
    texts: &'a dataset::PageTexts,
}

/// The store being written: where, and how its LMDB errors read.
struct Target<'a> {
    dir: &'a Path,
    env_dir: PathBuf,
    /// The whole store's estimated size.
    needed: u64,
    /// One commit's estimated size: an `EIO` with less than this free is a full disk.
    chunk_bytes: u64,
}

impl<'a> Target<'a> {
    fn new(dir: &'a Path, images: usize, params: &DatasetParams, commit_every: usize) -> Self {
        Target {
            dir,
            env_dir: dir.join(STORE_DIR),
            needed: store_bytes_estimate(images, params),
            chunk_bytes: store_bytes_estimate(commit_every.max(1), params),
        }
    }

    /// A full disk as [`IngestError::NoSpace`], anything else as LMDB's error.
    fn lmdb(&self, source: heed::Error) -> IngestError {
        match out_of_space(&source, || free_space(self.dir).0, self.chunk_bytes) {
            true => no_space(self.dir, self.needed),
            false => IngestError::Lmdb {
                dir: self.env_dir.clone(),
                source,
            },
        }
    }
}

/// A store a finished ingest left: refused if it was built from other settings or data, else
/// its report (rewritten: a run killed between the header and the report leaves it to this
/// one).
fn reopen_finished(
    store: &super::Store,
    fingerprint: &str,
    dir: &Path,
    index: &dataset::DatasetIndex,
) -> Result<IngestReport, IngestError> {
    let inner = &store.inner;
    let lmdb = |source| IngestError::Lmdb {
        dir: inner.dir.clone(),
        source,
    };
    let txn = inner.env.read_txn().map_err(lmdb)?;
    let stored = inner.tables.state.get(&txn, "fingerprint").map_err(lmdb)?;
    if stored != Some(fingerprint.as_bytes()) {
        return Err(IngestError::Changed {
            dir: inner.dir.clone(),
        });
    }
    drop(txn);
    let report = build_report(&inner.env, &inner.tables, &inner.dir, &index.repaired)?;
    write_report(dir, &report)?;
    Ok(report)
}

/// Decodes, resizes and stores the images of `work` from `counts.next` on: workers take
/// images in work-list order from a shared counter and send each result as it is done; the
/// writer puts them back in order and commits every `commit_every`; the flusher syncs behind
/// it. No worker waits for another at chunk ends (a chunk-at-a-time `par_iter` left 10% of 2
/// cores idle).
fn write_images(
    target: &Target,
    env: &heed::Env<heed::WithoutTls>,
    tables: &Tables,
    work: &WorkList,
    params: &DatasetParams,
    options: &IngestOptions,
    counts: &mut Counts,
) -> Result<(), IngestError> {
    let WorkList {
        samples: work,
        texts,
    } = *work;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .map_err(|e| IngestError::Threads(e.to_string()))?;
    let bar = options
        .progress
        .then(|| crate::progress::bar(work.len() as u64, "ingest", "img"));
    if let Some(bar) = &bar {
        bar.set_position(counts.next);
    }
    let abort_after: Option<u64> = failpoint::value(failpoint::ABORT_AFTER_COMMITS_ENV);
    let disk_full_after: Option<u64> = failpoint::value(failpoint::DISK_FULL_AFTER_COMMITS_ENV);
    let commit_every = options.commit_every.max(1);
    let first = counts.next as usize;
    // The writer's reorder buffer holds what arrives ahead of the first missing image; a
    // worker the OS deschedules with images in hand would otherwise let it grow with the
    // rest of the work list.
    let claims = Claims {
        next: AtomicUsize::new(first),
        gathering: AtomicUsize::new(first),
        window: (CHUNKS_AHEAD + 2) * commit_every,
        end: work.len(),
    };
    let lmdb = |e| target.lmdb(e);
    std::thread::scope(|scope| {
        let (sender, receiver) =
            sync_channel::<(usize, Vec<Prepared>)>((CHUNKS_AHEAD * commit_every / CLAIM).max(1));
        // Syncing each commit overlaps the disk writes with decoding (one sync at the end
        // would add them all to the run time: 0.23 s for a 900 MB store, a fifth of a 2-core
        // run). It runs on its own thread so that the writer never waits for the disk; a
        // request while one is pending is dropped, since that sync covers both commits.
        let (flush_request, flush_requests) = sync_channel::<()>(1);
        let flusher = scope.spawn(|| -> Result<(), IngestError> {
            let data_file = std::fs::File::open(target.env_dir.join("data.mdb")).ok();
            for () in flush_requests {
                env.force_sync().map_err(lmdb)?;
                if let Some(file) = &data_file {
                    drop_cached_pages(file);
                }
            }
            Ok(())
        });
        // The writer owns the flush requests, so that the flusher ends with it.
        let (bar, lmdb, claims) = (&bar, &lmdb, &claims);
        let writer = scope.spawn(move || -> Result<(), IngestError> {
            // However the writer ends, no worker may wait for it any longer.
            let _release = ReleaseOnDrop(claims);
            let mut commits = 0u64;
            for chunk in in_order_chunks(receiver, first, work.len(), commit_every) {
                claims.gathering_from(chunk.start as usize + chunk.results.len());
                if disk_full_after == Some(commits) {
                    let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
                    return Err(lmdb(heed::Error::Io(full)));
                }
                // Texts are read from the index's file as their samples are written.
                let chunk_texts = (0..chunk.results.len())
                    .map(|offset| texts.get(work[chunk.start as usize + offset].1.text))
                    .collect::<Result<Vec<_>, _>>()?;
                while let Err(error) = write_chunk(env, tables, work, &chunk, &chunk_texts, counts)
                {
                    match error {
                        heed::Error::Mdb(heed::MdbError::MapFull) => grow_map(env).map_err(lmdb)?,
                        other => return Err(lmdb(other)),
                    }
                }
                let _ = flush_request.try_send(());
                commits += 1;
                if abort_after == Some(commits) {
                    std::process::abort();
                }
                if let Some(bar) = &bar {
                    bar.inc(chunk.results.len() as u64);
                }
            }
            Ok(())
        });
        // Worker tasks on the ingest pool (so that jpeg-decoder's own rayon work stays inline).
        pool.scope(|tasks| {
            for _ in 0..pool.current_num_threads() {
                let sender = sender.clone();
                tasks.spawn(move |_| {
                    while let Some(claimed) = claims.claim() {
                        let results = work[claimed.clone()]
                            .iter()
                            .map(|(_, sample)| prepare_file(sample, params))
                            .collect();
                        if sender.send((claimed.start, results)).is_err() {
                            break; // the writer failed; its error is returned below
                        }
                    }
                });
            }
        });
        drop(sender);
        let written = writer.join().expect("the ingest writer does not panic");
        let flushed = flusher.join().expect("the ingest flusher does not panic");
        written.and(flushed)
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

/// Refuses a split of which nothing was stored, keeps the dataset's truth file beside the
/// store, writes the header (which makes the store finished) and then the report.
fn finish(
    target: &Target,
    env: &heed::Env<heed::WithoutTls>,
    tables: &Tables,
    index: &dataset::DatasetIndex,
    params: &DatasetParams,
    counts: &Counts,
) -> Result<IngestReport, IngestError> {
    let report = build_report(env, tables, &target.env_dir, &index.repaired)?;
    for (split, stored) in [(Split::Train, &counts.train), (Split::Val, &counts.val)] {
        let listed = index.samples(split).len();
        if listed > 0 && stored.iter().sum::<u64>() == 0 {
            return Err(IngestError::NothingStored {
                split,
                listed,
                reasons: commonest_skips(&report.skips, split),
            });
        }
    }
    let truth_file = match &index.truth {
        Some(truth) => Some(keep_truth(truth, target.dir)?),
        None => None,
    };
    let header = StoreHeader {
        format_version: FORMAT_VERSION,
        classes: index.classes.clone(),
        train_counts: counts.train.clone(),
        val_counts: counts.val.clone(),
        encoding: params.encoding,
        resize: params.resize,
        resize_mode: params.resize_mode,
        queries: index.queries.clone(),
        truth_file,
    };
    let lmdb = |e| target.lmdb(e);
    let mut txn = env.write_txn().map_err(lmdb)?;
    let header_json = serde_json::to_vec(&header).expect("header serializes");
    tables
        .state
        .put(&mut txn, "header", &header_json)
        .map_err(lmdb)?;
    txn.commit().map_err(lmdb)?;
    env.force_sync().map_err(lmdb)?;
    failpoint::abort_if(failpoint::ABORT_AFTER_HEADER_ENV, "1");
    write_report(target.dir, &report)?;
    tracing::info!(
        train = report.train,
        val = report.val,
        skipped = report.skips.len(),
        repaired_text_fields = report.repaired.total,
        "ingest finished"
    );
    Ok(report)
}

/// Puts the truth file at `dir/`[`TRUTH_FILE`] (where the generator already writes it) and
/// returns that name, so that the stage folder holds everything the later stages read.
fn keep_truth(truth: &Path, dir: &Path) -> Result<String, IngestError> {
    let kept = dir.join(TRUTH_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::Io { path, source }
    };
    let same =
        truth.canonicalize().map_err(io(truth))? == kept.canonicalize().ok().unwrap_or_default();
    if !same {
        std::fs::copy(truth, &kept).map_err(io(truth))?;
    }
    Ok(TRUTH_FILE.to_string())
}

fn write_report(dir: &Path, report: &IngestReport) -> Result<(), IngestError> {
    let path = dir.join(REPORT_FILE);
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    std::fs::write(&path, json).map_err(|source| IngestError::Io { path, source })
}

/// The [`REASONS_NAMED`] commonest reasons `split`'s files were skipped for.
fn commonest_skips(skips: &[SkippedFile], split: Split) -> Vec<SkipCount> {
    let mut counts: BTreeMap<SkipReason, SkipCount> = BTreeMap::new();
    for skip in skips.iter().filter(|s| s.split == split) {
        counts
            .entry(skip.reason)
            .or_insert_with(|| SkipCount {
                reason: skip.reason,
                count: 0,
                example: skip.clone(),
            })
            .count += 1;
    }
    let mut counts: Vec<SkipCount> = counts.into_values().collect();
    // Stable: equal counts keep the reasons' order.
    counts.sort_by_key(|c| std::cmp::Reverse(c.count));
    counts.truncate(REASONS_NAMED);
    counts
}

/// Bytes a store of `images` images takes, about: raw RGB rows (resize² × 3) or a JPEG at
/// about 3 bits a pixel (photos at quality 85–95 take 2–4), plus half an LMDB page per record
/// for its metadata and page rounding. Shorter-side resizing of wide images takes more.
fn store_bytes_estimate(images: usize, params: &DatasetParams) -> u64 {
    let pixels = u64::from(params.resize).pow(2);
    let record = match params.encoding {
        StoreEncoding::Raw => pixels * 3,
        StoreEncoding::Jpeg { .. } => pixels * 3 / 8,
    };
    images as u64 * (record + 2048)
}

/// Bytes free to unprivileged users on the file system holding `dir` (or [`FREE_BYTES_ENV`]'s
/// count), and that file system's mount point.
///
/// [`FREE_BYTES_ENV`]: failpoint::FREE_BYTES_ENV
fn free_space(dir: &Path) -> (u64, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let device = std::fs::metadata(&dir).map(|m| m.dev()).ok();
    let mount = dir
        .ancestors()
        .take_while(|a| std::fs::metadata(a).map(|m| m.dev()).ok() == device)
        .last()
        .unwrap_or(&dir)
        .to_path_buf();
    if let Some(free) = failpoint::value(failpoint::FREE_BYTES_ENV) {
        return (free, mount);
    }
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return (u64::MAX, mount);
    };
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` is written by the call on success.
    let free = match unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } {
        // SAFETY: statvfs returned 0, so it filled `stats`.
        0 => {
            let stats = unsafe { stats.assume_init() };
            stats.f_bavail.saturating_mul(stats.f_frsize)
        }
        // Unknown: no check can fail on it.
        _ => u64::MAX,
    };
    (free, mount)
}

fn no_space(dir: &Path, needed: u64) -> IngestError {
    let (free, mount) = free_space(dir);
    IngestError::NoSpace {
        mount,
        free,
        needed,
    }
}

/// Whether a store write failed for want of space: `ENOSPC` or `EDQUOT`, or the `EIO` LMDB
/// makes of a short write, when less than `next_write` bytes are free.
fn out_of_space(error: &heed::Error, free: impl FnOnce() -> u64, next_write: u64) -> bool {
    match error {
        heed::Error::Io(e) => match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => true,
            Some(libc::EIO) => free() < next_write,
            _ => false,
        },
        _ => false,
    }
}

/// Reads the persisted progress, or records the fingerprint of a fresh store.
fn start_or_resume(
    env: &heed::Env<heed::WithoutTls>,
    tables: &Tables,
    fingerprint: &str,
    classes: usize,
    env_dir: &Path,
) -> Result<Counts, IngestError> {
    let lmdb = |source| IngestError::Lmdb {
        dir: env_dir.to_path_buf(),
        source,
    };
    let mut txn = env.write_txn().map_err(lmdb)?;
    let stored = tables.state.get(&txn, "fingerprint").map_err(lmdb)?;
    let counts = match stored {
        None => {
            tables
                .state
                .put(&mut txn, "fingerprint", fingerprint.as_bytes())
                .map_err(lmdb)?;
            Counts {
                next: 0,
                train: vec![0; classes],
                val: vec![0; classes],
                image_bytes: 0,
            }
        }
        Some(stored) if stored != fingerprint.as_bytes() => {
            return Err(IngestError::Changed {
                dir: env_dir.to_path_buf(),
            });
        }
        Some(_) => match tables.state.get(&txn, "counts").map_err(lmdb)? {
            None => Counts {
                next: 0,
                train: vec![0; classes],
                val: vec![0; classes],
                image_bytes: 0,
            },
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| IngestError::State {
                dir: env_dir.to_path_buf(),
                key: "counts",
                message: e.to_string(),
            })?,
        },
    };
    txn.commit().map_err(lmdb)?;
    if counts.next > 0 {
        tracing::info!(next = counts.next, "resuming ingest");
    }
    Ok(counts)
}

/// Rounding of map sizes: a multiple of any page size LMDB runs with.
const MAP_ROUNDING: usize = 1 << 20;

/// A map large enough for the whole work list in most cases (shorter-side images of extreme
/// aspect ratios may need [`grow_map`]), and never smaller than an existing file.
fn initial_map_size(
    env_dir: &Path,
    images: usize,
    params: &DatasetParams,
    asked: Option<usize>,
) -> usize {
    let side = params.resize as usize;
    let per_image = match params.encoding {
        StoreEncoding::Raw => side * side * 3,
        StoreEncoding::Jpeg { .. } => side * side,
    };
    let aspect = match params.resize_mode {
        ResizeMode::Squash => 1,
        ResizeMode::ShorterSide => 2,
    };
    // + a page for LMDB's overflow-page rounding and the metadata record.
    let estimate = asked.unwrap_or(images * (per_image * aspect + 2 * 4096) + (64 << 20));
    let existing = std::fs::metadata(env_dir.join("data.mdb")).map_or(0, |m| m.len() as usize);
    estimate.max(existing).div_ceil(MAP_ROUNDING) * MAP_ROUNDING
}

/// Asks the kernel to drop the store's pages from the page cache, once synced: an ingest
/// streams far more than it will read back soon (a raw WebVision store is 500 GB), and a
/// page cache that keeps growing costs reclaim work, on the ingest's own cores too. In paired
/// runs on the 2-core VM this raised the 2-core median from 3144 to 3704 img/s and cut its
/// spread from 1954–3397 to 3527–3763 (`BENCHMARKS.md`). Best effort: an error changes
/// nothing but speed.
fn drop_cached_pages(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor that `file` keeps open.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Doubles the map after `MDB_MAP_FULL`.
fn grow_map(env: &heed::Env<heed::WithoutTls>) -> Result<(), heed::Error> {
    let size = (env.info().map_size * 2).div_ceil(MAP_ROUNDING) * MAP_ROUNDING;
    tracing::info!(size, "growing the store's map");
    // SAFETY: the failed write transaction is gone, and no other transaction on this
    // environment exists in this process (the writer thread is its only user while writing;
    // the flusher's syncs are `fdatasync` calls, which do not touch the map).
    unsafe { env.resize(size) }
}

/// A file's stored record, or why it was skipped.
type Prepared = Result<Vec<u8>, Skip>;

/// Runs of [`CLAIM`] work-list positions for the workers, never more than `window` past the
/// first position of the chunk the writer is gathering: the results a slow worker holds back
/// leave at most that many waiting in the writer's reorder buffer.
struct Claims {
    next: AtomicUsize,
    gathering: AtomicUsize,
    window: usize,
    end: usize,
}

impl Claims {
    /// The next run, after waiting for the writer if it is `window` behind; `None` at the end.
    fn claim(&self) -> Option<std::ops::Range<usize>> {
        while self.next.load(Ordering::Relaxed)
            >= self
                .gathering
                .load(Ordering::Acquire)
                .saturating_add(self.window)
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let claimed = self.next.fetch_add(CLAIM, Ordering::Relaxed);
        (claimed < self.end).then(|| claimed..(claimed + CLAIM).min(self.end))
    }

    /// The writer now gathers the chunk that starts at `position`.
    fn gathering_from(&self, position: usize) {
        self.gathering.store(position, Ordering::Release);
    }
}

/// Lets every worker claim freely once the writer is gone (its receiver dropped, the
/// workers' sends fail and they stop).
struct ReleaseOnDrop<'a>(&'a Claims);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.gathering_from(usize::MAX);
    }
}

/// Runs of results (first position, results) that arrive in any order, as chunks of `size`
/// consecutive work-list positions from `first` to `end` (the last chunk may be shorter).
/// Stops early if the senders stop early.
fn in_order_chunks(
    results: Receiver<(usize, Vec<Prepared>)>,
    first: usize,
    end: usize,
    size: usize,
) -> impl Iterator<Item = Chunk> {
    let mut waiting: BTreeMap<usize, Prepared> = BTreeMap::new();
    let mut start = first;
    std::iter::from_fn(move || {
        let want = size.min(end.saturating_sub(start));
        let mut chunk = Vec::with_capacity(want);
        while chunk.len() < want {
            match waiting.remove(&(start + chunk.len())) {
                Some(result) => chunk.push(result),
                None => {
                    let (first, run) = results.recv().ok()?;
                    waiting.extend((first..).zip(run));
                }
            }
        }
        let chunk = Chunk {
            start: start as u64,
            results: chunk,
        };
        start += want;
        (want > 0).then_some(chunk)
    })
}

/// Reads, decodes and encodes one file for the store.
fn prepare_file(sample: &DatasetSample, params: &DatasetParams) -> Prepared {
    let bytes = std::fs::read(&sample.file).map_err(|e| Skip {
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            SkipReason::Missing
        } else {
            SkipReason::Undecodable
        },
        detail: e.to_string(),
    })?;
    codec::prepare_record(
        &bytes,
        sample.label,
        params.resize,
        params.resize_mode,
        params.encoding,
    )
}

/// Writes one chunk and the progress after it in one transaction.
fn write_chunk(
    env: &heed::Env<heed::WithoutTls>,
    tables: &Tables,
    work: &[(Split, &DatasetSample)],
    chunk: &Chunk,
    texts: &[crate::sample::SampleText],
    counts: &mut Counts,
) -> Result<(), heed::Error> {
    let mut txn = env.write_txn()?;
    let mut next = counts.clone();
    for (offset, result) in chunk.results.iter().enumerate() {
        let position = chunk.start + offset as u64;
        let (split, sample) = work[position as usize];
        match result {
            Ok(record) => {
                let id = next.of(split).iter().sum::<u64>();
                tables.image(split).put(&mut txn, &id, record)?;
                let meta = SampleMeta {
                    label: sample.label,
                    source: sample.source,
                    query: sample.query,
                    text: texts[offset].clone(),
                    path: sample.path.clone(),
                };
                tables.meta(split).put(
                    &mut txn,
                    &id,
                    &serde_json::to_vec(&meta).expect("meta serializes"),
                )?;
                next.of(split)[sample.label as usize] += 1;
                next.image_bytes += record.len() as u64;
            }
            Err(skip) => {
                let skipped = SkippedFile {
                    split,
                    path: sample.path.clone(),
                    reason: skip.reason,
                    detail: skip.detail.clone(),
                };
                tables.skips.put(
                    &mut txn,
                    &position,
                    &serde_json::to_vec(&skipped).expect("skip serializes"),
                )?;
            }
        }
    }
    next.next = chunk.start + chunk.results.len() as u64;
    tables.state.put(
        &mut txn,
        "counts",
        &serde_json::to_vec(&next).expect("counts serialize"),
    )?;
    txn.commit()?;
    *counts = next;
    Ok(())
}

fn build_report(
    env: &heed::Env<heed::WithoutTls>,
    tables: &Tables,
    env_dir: &Path,
    repaired: &FieldRepairs,
) -> Result<IngestReport, IngestError> {
    let lmdb = |source| IngestError::Lmdb {
        dir: env_dir.to_path_buf(),
        source,
    };
    let state_error = |key, e: serde_json::Error| IngestError::State {
        dir: env_dir.to_path_buf(),
        key,
        message: e.to_string(),
    };
    let txn = env.read_txn().map_err(lmdb)?;
    let counts: Counts = match tables.state.get(&txn, "counts").map_err(lmdb)? {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| state_error("counts", e))?,
        None => Counts::default(),
    };
    let mut skips = Vec::new();
    for entry in tables.skips.iter(&txn).map_err(lmdb)? {
        let (_, bytes) = entry.map_err(lmdb)?;
        skips.push(
            serde_json::from_slice::<SkippedFile>(bytes).map_err(|e| state_error("skips", e))?,
        );
    }
    let mut skipped = BTreeMap::new();
    for skip in &skips {
        *skipped.entry(skip.reason).or_insert(0) += 1;
    }
    Ok(IngestReport {
        train: counts.train.iter().sum(),
        val: counts.val.iter().sum(),
        skipped,
        skips,
        image_bytes: counts.image_bytes,
        repaired: repaired.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: usize) -> Prepared {
        Ok(vec![position as u8])
    }

    #[test]
    fn a_full_disk_is_told_from_other_write_errors() {
        let os = |code| heed::Error::Io(std::io::Error::from_raw_os_error(code));
        let plenty = || u64::MAX;
        assert!(out_of_space(&os(libc::ENOSPC), plenty, 1000));
        assert!(out_of_space(&os(libc::EDQUOT), plenty, 1000));
        // LMDB turns a short write into EIO: a full disk only when the disk is (nearly) full.
        assert!(out_of_space(&os(libc::EIO), || 999, 1000));
        assert!(!out_of_space(&os(libc::EIO), plenty, 1000));
        assert!(!out_of_space(&os(libc::EACCES), || 0, 1000));
        let map_full = heed::Error::Mdb(heed::MdbError::MapFull);
        assert!(!out_of_space(&map_full, || 0, 1000));
    }

    /// A worker may claim up to `window` past the writer's chunk and then waits for the
    /// writer (whatever a descheduled worker holds back, the reorder buffer stays bounded);
    /// the writer moving on, or ending, lets it go on.
    #[test]
    fn claims_stay_within_the_window_past_the_writer() {
        let claims = Claims {
            next: AtomicUsize::new(0),
            gathering: AtomicUsize::new(0),
            window: 2 * CLAIM,
            end: 10 * CLAIM,
        };
        assert_eq!(claims.claim(), Some(0..CLAIM));
        assert_eq!(claims.claim(), Some(CLAIM..2 * CLAIM));
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| claims.claim());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiting.is_finished(), "claimed past the window");
            claims.gathering_from(CLAIM);
            assert_eq!(waiting.join().unwrap(), Some(2 * CLAIM..3 * CLAIM));
            let waiting = scope.spawn(|| claims.claim());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiting.is_finished(), "claimed past the window");
            drop(ReleaseOnDrop(&claims));
            assert_eq!(waiting.join().unwrap(), Some(3 * CLAIM..4 * CLAIM));
        });
        let rest: Vec<_> = std::iter::from_fn(|| claims.claim()).collect();
        assert_eq!(rest.len(), 6);
        assert_eq!(rest.last(), Some(&(9 * CLAIM..10 * CLAIM)));
    }

    #[test]
    fn results_in_any_order_come_out_as_consecutive_chunks() {
        let (sender, receiver) = sync_channel(16);
        // Positions 3..10 in runs, sent out of order, as racing workers would.
        for run in [4..6, 3..4, 8..10, 6..8] {
            let first = run.start;
            sender.send((first, run.map(record).collect())).unwrap();
        }
        drop(sender);
        let chunks: Vec<(u64, Vec<u8>)> = in_order_chunks(receiver, 3, 10, 3)
            .map(|c| {
                (
                    c.start,
                    c.results.into_iter().map(|r| r.unwrap()[0]).collect(),
                )
            })
            .collect();
        assert_eq!(
            chunks,
            vec![(3, vec![3, 4, 5]), (6, vec![6, 7, 8]), (9, vec![9])]
        );
    }

    #[test]
    fn a_gap_left_by_stopped_workers_ends_the_chunks_before_it() {
        let (sender, receiver) = sync_channel(16);
        for run in [0..2, 3..4] {
            let first = run.start;
            sender.send((first, run.map(record).collect())).unwrap();
        }
        drop(sender);
        let starts: Vec<u64> = in_order_chunks(receiver, 0, 6, 2)
            .map(|c| c.start)
            .collect();
        assert_eq!(starts, vec![0]); // 2 never came: nothing from 2 on is committed
    }
}
