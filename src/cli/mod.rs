//! The parts of `runner` that are not library: command-line types and the benchmark harness.
//! Declared from `main.rs` only, so the library never depends on clap or on Python.

pub mod bench;
