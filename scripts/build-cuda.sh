#!/usr/bin/env bash
# Builds websieve's GPU binary (features cuda, cudnn, nccl) on any x86-64 Linux machine, with or
# without a GPU or a system CUDA toolkit: CUDA 13.0 comes from PyPI wheels, and a link-time stub
# stands in for the driver library (libcuda.so.1) where no driver is installed.
#
# Usage:  scripts/build-cuda.sh [--toolchain-only] [--tests] [CARGO ARGS...]
# Env:    CUDA_WORK         toolchain folder (default: ~/.cache/websieve-cuda); reused when present
#         CUDA_COMPUTE_CAP  GPU generation for candle's kernels (default 90: H100/H200, sm_90a)
#         CARGO_TARGET_DIR  (default: target/cuda, so the CPU build in target/ stays as it is)
# Then:   target/cuda/release/runner, linked against libcuda.so.1, libcublas.so.13,
#         libcurand.so.10, libcudnn.so.9 and libnccl.so.2 (the versions PyTorch 2.11 cu130 ships;
#         on a GPU machine with PyTorch, put its nvidia/*/lib folders on LD_LIBRARY_PATH).
#
# The versions are pinned to CUDA 13.0 because a newer nvcc writes PTX that driver 580 (CUDA
# 13.0) rejects; cudnn and nccl to what torch 2.11.0+cu130 pins, so the binary links against
# exactly the libraries a PyTorch machine has.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain_only=false
cargo_cmd=(build --release --features cuda,cudnn,nccl)
while [ $# -gt 0 ]; do
  case "$1" in
    --toolchain-only) toolchain_only=true ;;
    --tests) cargo_cmd+=(--tests) ;;
    *) cargo_cmd+=("$1") ;;
  esac
  shift
done

WORK="${CUDA_WORK:-$HOME/.cache/websieve-cuda}"
mkdir -p "$WORK"
say() { printf '== %s\n' "$*" >&2; }

# 1. The toolchain from PyPI (about 1.3 GB once).
if [ ! -x "$WORK/venv/bin/python" ]; then
  say "creating $WORK/venv"
  python3 -m venv "$WORK/venv"
fi
if [ ! -f "$WORK/venv/.websieve-cuda-13.0.2" ]; then
  say "installing CUDA 13.0 wheels"
  # About 1.3 GB from PyPI: a read timeout there ends pip with status 2 (CI stop 21), so
  # longer timeouts, pip's own retries, and whole retries; no pip cache, which would double
  # the disk used.
  for attempt in 1 2 3; do
    if "$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
      --timeout 120 --retries 10 \
      "cuda-toolkit[cublas,cudart,curand,nvrtc,nvcc,crt,nvvm,cccl]==13.0.2" \
      "nvidia-cudnn-cu13==9.19.0.56" "nvidia-nccl-cu13==2.28.9"; then
      touch "$WORK/venv/.websieve-cuda-13.0.2"
      break
    fi
    say "pip install failed (attempt $attempt of 3); disk: $(df -h "$WORK" | tail -n 1)"
    [ "$attempt" = 3 ] && exit 1
    sleep 30
  done
fi
NV="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"

# 2. A CUDA_HOME of links. nvcc finds cicc and headers relative to the path it was started
#    through, so nvvm/ and include/ must sit beside bin/; the wheels ship only libX.so.N, and
#    the linker wants libX.so.
C="$WORK/cuda"
if [ ! -x "$C/bin/nvcc" ]; then
  mkdir -p "$C/include" "$C/lib64/stubs"
  ln -s "$NV/cu13/bin" "$C/bin"
  ln -s "$NV/cu13/nvvm" "$C/nvvm"
  ln -s lib64 "$C/lib"
  for d in "$NV/cu13/include" "$NV/cudnn/include" "$NV/nccl/include"; do
    for f in "$d"/*; do ln -sfn "$f" "$C/include/$(basename "$f")"; done
  done
  for f in "$NV"/cu13/lib/*.so* "$NV"/cudnn/lib/*.so* "$NV"/nccl/lib/*.so*; do
    b="$(basename "$f")"
    ln -sfn "$f" "$C/lib64/$b"
    [ -e "$C/lib64/${b%%.so*}.so" ] || ln -s "$f" "$C/lib64/${b%%.so*}.so"
  done
fi

# 3. Where no driver is installed, a stub libcuda.so exporting every driver function (each
#    returns an error) lets the link succeed. Never ship it or put it on a library path where a
#    real driver is.
if [ ! -e "$C/lib64/stubs/libcuda.so" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  stub="$C/lib64/stubs"
  # Entry points named in cuda.h after macro expansion (cuMemAlloc → cuMemAlloc_v2), and those
  # cudarc's bindings name (a few are newer than the header).
  # On a clean machine the CPU build has not unpacked cudarc (an optional dependency): fetch
  # every locked crate first. Without it the glob matched nothing, ls ended with status 2 and
  # set -e ended this script (CI stop 22).
  cargo fetch --locked
  cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | head -n 1 || true)"
  if [ -z "$cudarc" ]; then
    say "cudarc 0.19's source is not in ${CARGO_HOME:-$HOME/.cargo}/registry/src after cargo fetch"
    exit 1
  fi
  {
    echo '#include <cuda.h>' | gcc -E -P -I"$C/include" - \
      | grep -oP '\bCUresult\s+(CUDAAPI\s+)?\Kcu\w+(?=\s*\()'
    grep -ohP '^\s+fn \Kcu\w+(?=\()' "$cudarc/src/driver/sys/mod.rs"
  } | sort -u | awk '{print "int " $1 "(void){return 100;}"}' >"$stub/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda.c"
  ln -sfn libcuda.so "$stub/libcuda.so.1"
  say "driver stub: $(grep -c . "$stub/libcuda.c") functions in $stub/libcuda.so"
fi

cat >"$WORK/env.sh" <<EOF
export CUDA_HOME="$C" CUDA_PATH="$C" CUDA_ROOT="$C"
export PATH="$C/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="\${CUDAFORGE_THREADS:-$(nproc)}"
EOF
# shellcheck disable=SC1091
source "$WORK/env.sh"
say "toolchain: $(nvcc --version | tail -n 1); source $WORK/env.sh to use it"
$toolchain_only && exit 0

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
say "cargo ${cargo_cmd[*]} (target $CARGO_TARGET_DIR)"
cargo "${cargo_cmd[@]}"
