#!/usr/bin/env bash
# The GPU check: every CUDA-vs-CPU test, NCCL on one rank, training throughput against PyTorch
# (f32, TF32, bf16; with and without the 500-topic heads) and a short real training run, in one
# call on a GPU machine. Needs only the folder scripts/gpu-pack.sh fills (.device/: the
# compressed runner and test binaries, a prepared stage cache, the PyTorch reference script)
# and PyTorch's CUDA libraries (TORCH_VENV, default /opt/torch/.venv). Writes its report to
# $OUT/gpu-check.md, with the JSON figures beside it. About 5 minutes on one H200.
set -u
cd "$(dirname "$0")/.."
PACK="${PACK:-.device}"
OUT="${OUT:-/tmp/gpu-check}"
WORK="${WORK:-/tmp/websieve-gpu}"
VENV="${TORCH_VENV:-/opt/torch/.venv}"
mkdir -p "$OUT" "$WORK"
REPORT="$OUT/gpu-check.md"
exec > >(tee "$REPORT") 2>&1
started=$(date +%s)
failed=()

section() { printf '\n## %s  (t+%ss)\n\n' "$1" "$(($(date +%s) - started))"; }
# Runs a step under a time limit; a failing step is recorded and the next one still runs.
step() {
  local name="$1" limit="$2"
  shift 2
  echo '```'
  timeout "$limit" "$@"
  local rc=$?
  echo '```'
  echo "exit status $rc"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
  return "$rc"
}
# gzip: the one compressor every Linux machine has.
unpack() { gzip -dc "$1" >"$2"; }

echo "# websieve GPU check"
echo
echo "$(date -u +%FT%TZ), commit $(cat "$PACK/commit" 2>/dev/null || echo unknown)"

section "Machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
site=$(ls -d "$VENV"/lib/python3*/site-packages 2>/dev/null | head -n 1)
export LD_LIBRARY_PATH="$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:$site/nvidia/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for b in runner websieve-tests; do
  unpack "$PACK/$b.gz" "$WORK/$b" && chmod +x "$WORK/$b" || failed+=("unpack $b")
done
echo '```'
ldd "$WORK/runner" | grep -E 'cuda|cublas|curand|cudnn|nccl|not found'
echo '```'

section "CUDA-vs-CPU tests and NCCL on one rank"
# Every test whose path names cuda or nccl; the first one JIT-compiles candle's PTX (~35 s).
step tests 120 "$WORK/websieve-tests" --test-threads 1 --nocapture cuda nccl

section "runner bench train (batch 128, 224 px), against PyTorch's figures of $PACK/torch-anchor.json"
step bench 130 "$WORK/runner" bench train --device cuda:0 --full-batch 128 --small-batch 0 \
  --steps 10 --warmup 3 --precision f32,tf32,bf16 --topics 0,500 \
  --reference "$PACK/torch-anchor.json" --json "$OUT/bench.json"

section "runner bench ops: the custom ops against candle's, at GoogLeNet's shapes (bf16, batch 128)"
for shape in "64 112" "192 28" "480 14"; do
  set -- $shape
  step "ops $1x$2" 40 "$WORK/runner" bench ops --device cuda:0 --dtype bf16 --batch 128 \
    --channels "$1" --size "$2" --iters 10
done

section "Training run: imagenette-web, soft labels, full-width GoogLeNet at 80 px, bf16, 15 epochs"
# The stage folders ingest/lda/score were built on the development machine from data at this
# absolute path; here the path only has to exist for the recipe's checks.
mkdir -p /tmp/websieve-gpu-data/imagenette-web
touch /tmp/websieve-gpu-data/imagenette-web.truth.tsv
rm -rf "$WORK/cache" && cp -r "$PACK/cache" "$WORK/cache"
for z in "$WORK"/cache/ingest/*/store/data.mdb.gz; do unpack "$z" "${z%.gz}" && rm "$z"; done
step train 100 "$WORK/runner" "$PACK/imagenette-gpu.toml" --cache "$WORK/cache" --runs "$WORK/runs"
run="$WORK/runs/imagenette-gpu"
if [ -f "$run/metrics.jsonl" ] || ls "$WORK"/cache/train/*/metrics.jsonl >/dev/null 2>&1; then
  metrics=$(ls "$run/metrics.jsonl" "$WORK"/cache/train/*/metrics.jsonl 2>/dev/null | head -n 1)
  cp "$metrics" "$OUT/train-metrics.jsonl"
  echo "loss and speed every 100 steps:"
  echo '```'
  python3 - "$metrics" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
for r in rows:
    if r["step"] % 100 == 0 or r is rows[-1]:
        print(f'step {r["step"]:5d}  loss {r["loss"]:.4f}  {r.get("images_per_s", 0):8.0f} img/s')
EOF
  echo '```'
fi
find "$run" "$WORK/cache/eval" -name '*.md' -o -name 'metrics.json' 2>/dev/null | head -n 4 | while read -r f; do
  echo "$f:"; echo '```'; cat "$f"; echo '```'
done

section "PyTorch eager (torch_googlenet.py, batch 128, 224 px), same machine, last"
step torch 60 python3 "$PACK/torch_googlenet.py" --json "$OUT/torch.json"

section "Summary"
if [ ${#failed[@]} -eq 0 ]; then echo "ALL STEPS PASSED"; else printf 'FAILED: %s\n' "${failed[@]}"; fi
echo "total $(($(date +%s) - started)) s"
[ ${#failed[@]} -eq 0 ]
