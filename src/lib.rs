//! websieve: train image classifiers on noisy web data.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! `recipe` → `dataset`/`store` (ingest) → `text`/`lda` → `score` → `loader`/`model`/`train` →
//! `eval` → `report`, driven by `stage`; `export` writes a run's per-sample verdicts for other
//! tools.

pub mod bench;
pub mod dataset;
pub mod digest;
pub mod eval;
pub mod export;
pub mod failpoint;
pub mod launch;
pub mod lda;
pub mod loader;
pub mod model;
pub mod npy;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod recipe;
pub mod report;
pub mod runtime;
pub mod sample;
pub mod score;
pub mod stage;
pub mod store;
pub mod table;
pub mod text;
pub mod train;
pub mod tsv;
pub mod units;
