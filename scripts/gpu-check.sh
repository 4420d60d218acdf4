#!/usr/bin/env bash
# The GPU check of the backends issue, in two halves:
#
#   scripts/gpu-check.sh build   on the CPU machine: builds the CUDA binaries (release, the
#                                `cuda` feature; cudarc loads the driver at run time, so no GPU
#                                is needed to build) into gpu-check/ with the tiny fixtures.
#   scripts/gpu-check.sh run     on the GPU machine (the device tool: `run` with carry
#                                ["gpu-check"], ~37 MB, and timeout_s 600): fixture
#                                parity on CUDA, then the benchmark table of docs/performance.md
#                                (InternLM2-1.8B shapes, random weights, bf16), written to
#                                $OUT/gpu-check.md (or gpu-check/gpu-check.md) and printed.
#
# Checked on the CPU machine (2026-11-27): `build` takes ~17 min cold (release, 2 cores) and
# produces four binaries (130 MB stripped, 33 MB gzipped); `run` there fails at every step
# with cudarc's "Unable to dynamically load the cuda shared library", as it must without a GPU.
#
# The run half fits one device call (the step timeouts add up to 585 s, under the 600 s a call
# may run); every step has its own timeout so that one slow case cannot eat the others. gpu-check/ is build output: never commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=gpu-check

# `test_binary NAME CARGO_ARGS...`: builds one integration test binary and copies it to bin/NAME.
test_binary() {
  local name=$1
  shift
  local exe
  exe=$(cargo test --release "$@" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        print(m["executable"])' "$name")
  [ -n "$exe" ] || { echo "no $name test binary built" >&2; return 1; }
  cp "$exe" "$DIR/bin/$name"
}

build() {
  set -e
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/internlm2-rs/cuda-target}"
  local fixtures="${INTERNLM2_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
  rm -rf "$DIR" && mkdir -p "$DIR/bin" "$DIR/fixtures"
  cargo build --release --features cuda --example bench --example train_bench
  cp "$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/examples/train_bench" "$DIR/bin/"
  # Test binaries (harness included): the fixture parity and the cube kernels vs composite, on CUDA.
  test_binary parity --features cuda --test parity
  test_binary cube_kernels -p internlm2-backends --features cuda --test cube_kernels
  strip "$DIR/bin/"* || true
  # Four stripped binaries are ~130 MB; gzip brings them to ~34 MB, under the 64 MiB carry limit.
  tar -C "$DIR" -czf "$DIR/bin.tar.gz" bin && rm -rf "$DIR/bin"
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
  [ -d "$DIR/bin" ] || tar -C "$DIR" -xzf "$DIR/bin.tar.gz"
  local bin=$DIR/bin cfg=benches/internlm2-1_8b.json
  {
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    echo
  } >>"$REPORT"
  step "fixture parity on CUDA (f32, 1e-4)" 60 \
    env INTERNLM2_FIXTURES="$DIR/fixtures" "$bin/parity" --test-threads 1
  step "cube kernels (incl. flash attention) vs composite on CUDA" 120 \
    "$bin/cube_kernels" --test-threads 1
  step "kernel timings, composite vs fused" 60 \
    "$bin/cube_kernels" timings --ignored --nocapture
  step "prefill 2K, batch 1" 75 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 2048 --new-tokens 1 --batch 1 --limits
  step "decode, batch 1" 75 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 128 --new-tokens 128 --batch 1 --limits
  step "decode, batch 32" 75 \
    "$bin/bench" --config $cfg --device cuda:0 --prompt-len 128 --new-tokens 64 --batch 32 --limits
  step "training 1.8B, seq 4096, bf16 (MFU over the measured bf16 matmul peak)" 120 \
    "$bin/train_bench" --config $cfg --device cuda:0 --seq-len 4096 --batch 2 --steps 2
  cat "$REPORT"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
