#!/usr/bin/env bash
# Prefill against llama.cpp in interleaved pairs: on a machine whose speed drifts by tens of
# percent from minute to minute (a shared VM), a ratio of two figures taken minutes apart says
# little. Here every pair is one `llama-bench -p 512 -n 0 -r 1` run (after its own warm-up)
# right beside one of our `bench` runs (prefill of the same 512 tokens after one warm-up
# prefill), the order alternating from round to round; the summary is, per format, the median
# of the per-pair ratios with their range, and how many pairs reached 1.1x.
#
# Same shape, files and formats as scripts/quant-vs-llamacpp.sh (run ../shared/tools/llamacpp/
# setup.sh and `cargo build --release --example bench` first).
#
# usage (from the project root): scripts/prefill-pairs-vs-llamacpp.sh
# env:   W=/tmp/llamacpp  PAIRS=8  THREADS=2
#        FORMATS="f32:f32 f16:f16 q8_0:Q8_0 q4_0:Q4_0 q4_k:Q4_K_M" (ours:llama.cpp, `ours+h`
#        adds `--head-format h`)
set -euo pipefail
W="${W:-/tmp/llamacpp}"
PAIRS="${PAIRS:-8}"
THREADS="${THREADS:-2}"
FORMATS="${FORMATS:-f32:f32 f16:f16 q8_0:Q8_0 q4_0:Q4_0 q4_k:Q4_K_M}"
CONFIG="benches/internlm2-140m.json"
LB="$W/build/bin/llama-bench"
SDK="target/release/examples/bench"
RES="${RES:-$W/results/pairs-$(date +%Y%m%dT%H%M%S)}"
mkdir -p "$RES"
for f in "$LB" "$SDK"; do
    [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
for p in rustc cargo; do
    while pgrep -x "$p" > /dev/null; do echo "  waiting for $p to finish" >&2; sleep 30; done
done

theirs_run() {  # FORMAT -> one line "theirs FORMAT TOK/S"
    "$LB" -m "$W/gguf/internlm2-100m-$2.gguf" -p 512 -n 0 -t "$THREADS" -r 1 -o jsonl \
        2>> "$RES/stderr.log" | python3 -c "
import json, sys
for l in sys.stdin:
    if l.strip().startswith('{'):
        print('theirs', sys.argv[1], json.loads(l)['avg_ts'])" "$1"
}
ours_run() {  # FORMAT -> one line "ours FORMAT TOK/S"
    local ours="$1" quant
    quant=(--quant "${ours%%+*}")
    [[ "$ours" == *+* ]] && quant+=(--head-format "${ours#*+}")
    RAYON_NUM_THREADS="$THREADS" "$SDK" --config "$CONFIG" --prompt-len 512 --new-tokens 1 \
        "${quant[@]}" --json 2>> "$RES/stderr.log" | python3 -c "
import json, sys
for l in sys.stdin:
    if l.strip().startswith('{'):
        print('ours', sys.argv[1], json.loads(l)['prefill_tokens_per_s'])" "$ours"
}

RAYON_NUM_THREADS="$THREADS" "$SDK" --config "$CONFIG" --prompt-len 512 --new-tokens 16 \
    --limits --json > "$RES/limits.jsonl" 2>> "$RES/stderr.log"
for round in $(seq "$PAIRS"); do
    for pair in $FORMATS; do
        ours="${pair%%:*}"; theirs="${pair##*:}"
        if [ $((round % 2)) -eq 1 ]; then
            theirs_run "$ours" "$theirs"; ours_run "$ours"
        else
            ours_run "$ours"; theirs_run "$ours" "$theirs"
        fi >> "$RES/pairs.txt"
    done
    echo "  round $round of $PAIRS done" >&2
done

python3 - "$RES" "$FORMATS" <<'PY' | tee "$RES/table.md"
import json, statistics, sys
res, formats = sys.argv[1], [p.split(":")[0] for p in sys.argv[2].split()]
ours, theirs = {}, {}
for line in open(f"{res}/pairs.txt"):
    who, fmt, v = line.split()
    (ours if who == "ours" else theirs).setdefault(fmt, []).append(float(v))
lim = json.loads(open(f"{res}/limits.jsonl").read().strip().splitlines()[-1])
print(f"Machine: 2 cores; `bench --limits` at the start: read bandwidth "
      f"{lim['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, matmul peak "
      f"{lim['matmul_flops'] / 1e12:.3f} TFLOP/s (f32).\n")
print("| format (ours) | pairs | prefill tok/s ours, median (range) | llama.cpp pp512, median (range) "
      "| ratio per pair: median (range) | pairs >= 1.1x |")
print("|---|---|---|---|---|---|")
for f in formats:
    o, t = ours.get(f, []), theirs.get(f, [])
    r = [a / b for a, b in zip(o, t)]
    if not r:
        continue
    rng = lambda xs, p=0: f"{statistics.median(xs):,.{p}f} ({min(xs):,.{p}f}-{max(xs):,.{p}f})"
    print(f"| {f} | {len(r)} | {rng(o)} | {rng(t)} | **{rng(r, 2)}** | "
          f"{sum(x >= 1.1 for x in r)} of {len(r)} |")
PY
echo "raw results: $RES"
