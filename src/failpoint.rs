//! Failpoints: environment variables that make a process fail at one chosen place, as a crash
//! (`kill -9`) or a full disk would there, for the fault-injection tests (`tests/it/faults.rs`).
//! Unset, as in every real run, each costs one environment lookup where it is checked.
//!
//! | variable | effect |
//! |---|---|
//! | [`ABORT_AFTER_COMMITS_ENV`]` = N` | ingest aborts right after its N-th commit |
//! | [`ABORT_AFTER_HEADER_ENV`]` = 1` | ingest aborts once the store's header is committed, before `ingest_report.json` is written |
//! | [`DISK_FULL_AFTER_COMMITS_ENV`]` = N` | ingest's next write after its N-th commit fails with `ENOSPC`, as on a full disk |
//! | [`FREE_BYTES_ENV`]` = N` | the store's file system counts as having N bytes free |
//! | [`ABORT_BEFORE_RENAME_ENV`]` = <stage>` | the stage cache aborts when `<stage>` has written all its outputs, just before the rename into place |

use std::str::FromStr;

pub const ABORT_AFTER_COMMITS_ENV: &str = "WEBSIEVE_INGEST_ABORT_AFTER_COMMITS";
pub const ABORT_AFTER_HEADER_ENV: &str = "WEBSIEVE_INGEST_ABORT_AFTER_HEADER";
pub const DISK_FULL_AFTER_COMMITS_ENV: &str = "WEBSIEVE_INGEST_DISK_FULL_AFTER_COMMITS";
pub const FREE_BYTES_ENV: &str = "WEBSIEVE_STORE_FREE_BYTES";
pub const ABORT_BEFORE_RENAME_ENV: &str = "WEBSIEVE_CACHE_ABORT_BEFORE_RENAME";

/// The failpoint's value, when it is set and parses as `T`.
pub fn value<T: FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// Dies here when the failpoint `name` is set to `value`: `abort()` runs no destructors and
/// flushes nothing, as `kill -9` would.
pub fn abort_if(name: &str, value: &str) {
    if std::env::var(name).is_ok_and(|v| v == value) {
        std::process::abort();
    }
}
