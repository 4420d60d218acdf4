#!/usr/bin/env bash
# Our quantized CPU inference against llama.cpp, side by side in one run: for each format, the
# same model shape (benches/internlm2-140m.json, random weights), prompt 512, 64 new tokens,
# 2 threads, batch 1 and 8 (our prefill timed after a whole warm-up prefill, as llama-bench
# times pp512 after its warm-up run; the cold first prefill is printed beside it). At batch 1,
# llama.cpp and our `bench` alternate run by run (REPS pairs per format) so that both see the
# same moment of the machine, and the table gives each pair's ratio (median and range) beside
# the ratio of the means; batch 8 runs once each, format by format.
# Prints a markdown table with ratios (ours / llama.cpp) and the machine's measured limits
# (`bench --limits`).
#
# Needs ../shared/tools/llamacpp/setup.sh first (llama.cpp build and the GGUF files of this
# shape under $W) and `cargo build --release --example bench`.
#
# usage (from the project root): scripts/quant-vs-llamacpp.sh
# env:   W=/tmp/llamacpp  REPS=3 (llama-bench repetitions and our runs per format)
#        FORMATS="f32:f32 f16:f16 q8_0:Q8_0 q4_0:Q4_0 q4_k:Q4_K_M q4_0+q6_k:Q4_0 q4_k+q6_k:Q4_K_M"
#        (ours:llama.cpp; the GGUF file names setup.sh writes; `ours+h` adds `--head-format h`:
#        llama.cpp's Q4_0 and Q4_K_M files keep the output head at Q6_K, our 4-bit default
#        keeps it at Q8_0, so `+q6_k` reads the same bytes per token as llama.cpp)
#        THREADS=2  IDLE_LOAD=0.6 (wait below this 1-minute load before each measurement;
#        NO_WAIT=1 skips the wait: figures then only valid as ratios)
set -euo pipefail
W="${W:-/tmp/llamacpp}"
REPS="${REPS:-3}"
THREADS="${THREADS:-2}"
IDLE_LOAD="${IDLE_LOAD:-0.6}"
FORMATS="${FORMATS:-f32:f32 f16:f16 q8_0:Q8_0 q4_0:Q4_0 q4_k:Q4_K_M q4_0+q6_k:Q4_0 q4_k+q6_k:Q4_K_M}"
CONFIG="benches/internlm2-140m.json"
BIN="$W/build/bin"
SDK="target/release/examples/bench"
RES="${RES:-$W/results/quant-$(date +%Y%m%dT%H%M%S)}"
mkdir -p "$RES"
for f in "$BIN/llama-bench" "$BIN/llama-batched-bench" "$SDK"; do
    [ -x "$f" ] || { echo "missing $f (run ../shared/tools/llamacpp/setup.sh and cargo build --release --example bench)" >&2; exit 1; }
done

wait_idle() {
    [ "${NO_WAIT:-0}" = 1 ] && return 0
    local n=0
    while :; do
        local l b=""
        l="$(cut -d' ' -f1 /proc/loadavg)"
        for p in rustc cargo cc1plus cc1; do pgrep -x "$p" > /dev/null && b="$b$p "; done
        if [ -z "$b" ] && awk -v l="$l" -v t="$IDLE_LOAD" 'BEGIN{exit !(l < t)}'; then return 0; fi
        [ $((n % 10)) -eq 0 ] && echo "  waiting for an idle machine: load $l ${b:+busy: $b}" >&2
        n=$((n + 1)); sleep 30
    done
}
run() {  # run LABEL OUTFILE CMD...: appends stdout, logs the load before and after
    local label="$1" out="$2"; shift 2
    wait_idle
    echo "$(date -Is) $label: load before $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/conditions.log"
    "$@" >> "$out" 2>> "$RES/stderr.log"
    echo "$(date -Is) $label: load after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/conditions.log"
    echo "  $label done" >&2
}

run "limits" "$RES/limits.jsonl" env RAYON_NUM_THREADS="$THREADS" "$SDK" --config "$CONFIG" \
    --prompt-len 512 --new-tokens 16 --batch 1 --limits --json
for pair in $FORMATS; do
    ours="${pair%%:*}"; theirs="${pair##*:}"
    quant=(--quant "${ours%%+*}")
    [[ "$ours" == *+* ]] && quant+=(--head-format "${ours#*+}")
    M="$W/gguf/internlm2-100m-$theirs.gguf"
    # Paired batch-1 measurements: llama.cpp and ours alternate run by run (one repetition
    # each), so that both see the same moment of a machine whose speed drifts; the table
    # reports each pair's ratio.
    for i in $(seq 1 "$REPS"); do
        run "llama-bench $theirs run $i" "$RES/lb_${ours}_$theirs.jsonl" "$BIN/llama-bench" -m "$M" -p 512 -n 64 -t "$THREADS" -r 1 -o jsonl
        run "llama-bench $theirs @d512 run $i" "$RES/lbd_${ours}_$theirs.jsonl" "$BIN/llama-bench" -m "$M" -p 0 -n 64 -d 512 -t "$THREADS" -r 1 -o jsonl
        run "ours $ours b1 run $i" "$RES/sdk_${ours}_b1.jsonl" env RAYON_NUM_THREADS="$THREADS" "$SDK" \
            --config "$CONFIG" --prompt-len 512 --new-tokens 64 --batch 1 "${quant[@]}" --json
    done
    run "llama-batched-bench $theirs npl=8" "$RES/bb_$theirs.jsonl" "$BIN/llama-batched-bench" -m "$M" \
        -c 4608 -b 2048 -ub 512 -npp 512 -ntg 64 -npl 8 -t "$THREADS" -tb "$THREADS" --output-format jsonl
    run "ours $ours b8" "$RES/sdk_${ours}_b8.jsonl" env RAYON_NUM_THREADS="$THREADS" "$SDK" \
        --config "$CONFIG" --prompt-len 512 --new-tokens 64 --batch 8 "${quant[@]}" --json
done

python3 - "$RES" "$FORMATS" <<'PY' | tee "$RES/table.md"
import json, os, statistics, sys
res, formats = sys.argv[1], sys.argv[2].split()
def jl(name):
    p = os.path.join(res, name)
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
def lbs(name, n_prompt, n_gen, depth=0):
    """Every run's tokens/s of one llama-bench test, in run order."""
    return [r["avg_ts"] for r in jl(name) if (r["n_prompt"], r["n_gen"], r.get("n_depth", 0)) == (n_prompt, n_gen, depth)]
def pairs(ours, theirs):
    """Median and range of the run-by-run ratios (run i of ours against run i of llama.cpp)."""
    rs = [a / b for a, b in zip(ours, theirs) if b]
    if not rs:
        return "-"
    return f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})"
def mean(xs):
    return statistics.mean(xs) if xs else None
def f(x):
    return "-" if x is None else f"{x:,.1f}"
def ratio(a, b):
    return "-" if a is None or b is None else f"**{a / b:.2f}x**"
lim = jl("limits.jsonl")
if lim:
    l = lim[0]
    print(f"Machine: {os.cpu_count()} cores; read bandwidth {l['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"matmul peak {l['matmul_flops'] / 1e12:.3f} TFLOP/s (f32), measured by `bench --limits` in this run.")
    print()
print("| format (ours / llama.cpp) | weights MB read per token (ours) | first prefill tok/s ours (cold process) | prefill tok/s ours | llama.cpp pp512 | ratio | paired prefill ratio, median (range) | decode tok/s ours | llama.cpp tg64 @ depth 512 | ratio | paired decode ratio, median (range) | llama.cpp tg64 @ depth 0 | ratio | batch 8 decode ours | llama.cpp 8 seqs | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for pair in formats:
    ours, theirs = pair.split(":")
    b1, b8, bb = jl(f"sdk_{ours}_b1.jsonl"), jl(f"sdk_{ours}_b8.jsonl"), jl(f"bb_{theirs}.jsonl")
    pf, dc = mean([r["prefill_tokens_per_s"] for r in b1]), mean([r["decode_tokens_per_s"] for r in b1])
    d8 = mean([r["decode_tokens_per_s"] for r in b8])
    cold = mean([r["first_prefill_tokens_per_s"] for r in b1 if "first_prefill_tokens_per_s" in r])
    mb = b1[0]["weight_bytes_per_token"] / 1e6 if b1 else None
    lb, lbd = f"lb_{ours}_{theirs}.jsonl", f"lbd_{ours}_{theirs}.jsonl"
    pps, tgs, tgds = lbs(lb, 512, 0), lbs(lb, 0, 64), lbs(lbd, 0, 64, 512)
    pp, tg, tgd = mean(pps), mean(tgs), mean(tgds)
    ppair = pairs([r["prefill_tokens_per_s"] for r in b1], pps)
    dpair = pairs([r["decode_tokens_per_s"] for r in b1], tgds)
    tg8 = mean([r["speed_tg"] for r in bb])
    print(f"| {ours} / {theirs} | {f(mb)} | {f(cold)} | {f(pf)} | {f(pp)} | {ratio(pf, pp)} | {ppair} | {f(dc)} | {f(tgd)} | {ratio(dc, tgd)} | {dpair} | {f(tg)} | {ratio(dc, tg)} | {f(d8)} | {f(tg8)} | {ratio(d8, tg8)} |")
if lim:
    bw, fl = lim[0]["read_bandwidth_bytes_per_s"], lim[0]["matmul_flops"]
    print()
    print("Fraction of the limits (ours, batch 1): decode = tok/s x weight bytes per token / read bandwidth; prefill = tok/s x FLOPs per token / matmul peak.")
    print()
    print("| format | decode GB/s | of bandwidth | prefill GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|")
    c = json.load(open("benches/internlm2-140m.json"))
    h, L, v, i, nh, nkv = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    body = L * (h * (nh + 2 * nkv) * (h // nh) + h * h + 3 * h * i)
    flops = 2 * body + 2 * L * h * 512  # per prompt token: linear layers + causal attention (mean context 256, QK and PV)
    for pair in formats:
        ours = pair.split(":")[0]
        b1 = jl(f"sdk_{ours}_b1.jsonl")
        if not b1:
            continue
        pf, dc = mean([r["prefill_tokens_per_s"] for r in b1]), mean([r["decode_tokens_per_s"] for r in b1])
        gbs = dc * b1[0]["weight_bytes_per_token"] / 1e9
        print(f"| {ours} | {gbs:.1f} | {100 * gbs * 1e9 / bw:.0f}% | {pf * flops / 1e9:.1f} | {100 * pf * flops / fl:.0f}% |")
print()
print("conditions: see conditions.log (load average before and after every measurement)")
PY
echo "raw results: $RES" >&2
