#!/usr/bin/env bash
# The GPU check of the backends issue, in two halves:
#
#   scripts/gpu-check.sh build   on the CPU machine: builds the CUDA binaries (release, the
#                                `cuda` feature; cudarc loads the driver at run time, so no GPU
#                                is needed to build) into gpu-check/ with the tiny fixtures.
#   scripts/gpu-check.sh run     on the GPU machine (the device tool, carry gpu-check/): fixture
#                                parity on CUDA, then the benchmark table of docs/performance.md
#                                (InternLM2-1.8B shapes, random weights, bf16), written to
#                                $OUT/gpu-check.md (or gpu-check/report.md) and printed.
#
# The run half fits one device call of a few minutes; every step has its own timeout so that
# one slow case cannot eat the others. gpu-check/ is build output: never commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=gpu-check

build() {
  set -e
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/internlm2-rs/cuda-target}"
  local fixtures="${INTERNLM2_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
  rm -rf "$DIR" && mkdir -p "$DIR/bin" "$DIR/fixtures"
  cargo build --release --features cuda --example bench --example train_bench
  cp "$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/examples/train_bench" "$DIR/bin/"
  # The parity test binary (harness included), built like the CI's CPU run but on CUDA.
  local parity
  parity=$(cargo test --release --features cuda --test parity --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "parity" and m.get("executable"):
        print(m["executable"])')
  cp "$parity" "$DIR/bin/parity"
  strip "$DIR/bin/"* || true
  cp -r "$fixtures/tiny-internlm2" "$fixtures/tiny-internlm2-sharded" "$DIR/fixtures/"
  du -sh "$DIR"/* >&2
  echo "carry $DIR (limit 64 MiB in all), then: scripts/gpu-check.sh run" >&2
}

# `step NAME SECONDS CMD...`: runs CMD with a timeout, output to the report.
step() {
  local name=$1 limit=$2
  shift 2
  echo "### $name" >>"$REPORT"
  echo '```' >>"$REPORT"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$REPORT" 2>&1
  local rc=$?
  echo '```' >>"$REPORT"
  echo "($name: exit $rc, $((SECONDS - start)) s)" >>"$REPORT"
  echo >>"$REPORT"
}

run() {
  REPORT="${OUT:-$DIR}/gpu-check.md"
  : >"$REPORT"
  local bin=$DIR/bin cfg=benches/internlm2-1_8b.json
  {
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    echo
  } >>"$REPORT"
  step "fixture parity on CUDA (f32, 1e-4)" 120 \
    env INTERNLM2_FIXTURES="$DIR/fixtures" "$bin/parity" --test-threads 1
  step "prefill 2K, batch 1" 120 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 2048 --new-tokens 1 --batch 1 --limits
  step "decode, batch 1" 120 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 128 --new-tokens 128 --batch 1 --limits
  step "decode, batch 32" 120 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 128 --new-tokens 64 --batch 32 --limits
  step "training 1.8B, seq 4096, bf16 (MFU over the measured bf16 matmul peak)" 180 \
    "$bin/train_bench" --config $cfg --device cuda:0 --seq-len 4096 --batch 2 --steps 2
  cat "$REPORT"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
