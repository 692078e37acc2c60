#!/usr/bin/env bash
# Fills .device/ (git-ignored) with what scripts/gpu-check.sh needs on a GPU machine that has
# no Rust toolchain and no copy of the data: the stripped, compressed GPU runner and test
# binaries (built by scripts/build-cuda.sh), the PyTorch reference script, and a stage cache
# with ingest, LDA and score of imagenette-web already built (so the GPU machine only trains
# and evaluates). Needs ../shared (data and reference scripts). The device tool then carries
# .device (at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.device
SHARED="${SHARED:-../shared}"
mkdir -p "$PACK"
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >>.git/info/exclude

scripts/build-cuda.sh --tests
bin="${CARGO_TARGET_DIR:-target/cuda}/release"
tests=$(find "$bin/deps" -maxdepth 1 -type f -executable -name 'websieve-*' -printf '%T@ %p\n' \
  | sort -rn | head -n 1 | cut -d' ' -f2)
for pair in "$bin/runner:runner" "$tests:websieve-tests"; do
  strip -o "/tmp/${pair#*:}" "${pair%%:*}"
  gzip -9 -c "/tmp/${pair#*:}" >"$PACK/${pair#*:}.gz"
done
cp "$SHARED/bench/torch_googlenet.py" "$PACK/"
# PyTorch's figures from an earlier run on the same kind of machine: the bench's reference if
# the check runs out of time before torch_googlenet.py has run again.
[ -f "$PACK/torch-anchor.json" ] || cp "${TORCH_ANCHOR:-/dev/null}" "$PACK/torch-anchor.json"
git rev-parse --short HEAD >"$PACK/commit"

# The training run's recipe: data at an absolute path, so that stage keys built here match.
cat >"$PACK/imagenette-gpu.toml" <<'EOF'
# GPU smoke training (scripts/gpu-check.sh): imagenette-web with soft labels, full-width
# GoogLeNet at 80 px in bf16 on the first GPU.
extends = "../recipes/imagenette/soft.toml"

[dataset]
root = "/tmp/websieve-gpu-data/imagenette-web"
resize = 88
encoding = "jpeg"
jpeg_quality = 85

[clean]
truth = "/tmp/websieve-gpu-data/imagenette-web.truth.tsv"

[model]
input_size = 80
width = 1.0

[train]
devices = "cuda"
precision = "bf16"
batch_per_device = 128
epochs = 15
checkpoint_every = 500
workers = 6

[train.augmentation]
crop = 80
EOF
mkdir -p /tmp/websieve-gpu-data
ln -sfn "$(cd "$SHARED/data" && pwd)/imagenette-web" /tmp/websieve-gpu-data/imagenette-web
ln -sfn "$(cd "$SHARED/data" && pwd)/imagenette-web.truth.tsv" /tmp/websieve-gpu-data/imagenette-web.truth.tsv
rm -rf "$PACK/cache"
cargo run --quiet -- "$PACK/imagenette-gpu.toml" --until score --cache "$PACK/cache" \
  --runs /tmp/websieve-gpu-pack-runs
gzip -9 "$PACK"/cache/ingest/*/store/data.mdb
du -sh "$PACK"
du -sh --total "$PACK"/* | tail -n 1
