//! websieve's integration tests: one binary, one module per area. They call the library
//! directly (and the `runner` binary where the CLI itself is under test).

mod cli;
mod data;
mod docs;
mod eval;
mod export;
mod faults;
mod ops;
mod protocol;
mod recipe;
mod report;
mod scale;
mod stages;
mod text;
mod train;
