//! Records the git commit the binary is built from (`WEBSIEVE_COMMIT`, for each run's
//! `version.json`), where the source is a git checkout.
//!
//! With the `cuda` feature, compiles the custom ops' CUDA kernels to PTX for
//! `src/model/ops/cuda.rs` to embed; without it, does nothing, so CPU builds need no CUDA.
//!
//! `compute_90` PTX runs on Hopper (H100/H200), and the driver JIT-compiles it for newer GPUs.
//! `NVCC` names the compiler; otherwise `nvcc` from PATH.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &str = "src/model/ops/kernels.cu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    record_commit();
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={KERNELS}");
    println!("cargo:rerun-if-env-changed=NVCC");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("websieve_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-arch=compute_90", "-O3", KERNELS, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC or put nvcc on PATH): {e}"));
    assert!(
        status.success(),
        "{nvcc} failed to compile {KERNELS}: {status}"
    );
}

fn record_commit() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it points at (a commit).
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
    }
    println!("cargo:rustc-env=WEBSIEVE_COMMIT={commit}");
}
