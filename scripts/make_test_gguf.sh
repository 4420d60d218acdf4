#!/usr/bin/env bash
# Writes the GGUF test files of tests/quant_gguf.rs with llama.cpp's own converter:
# internlm2/tests/data/gguf/tiny-internlm2-{f16,q8_0}.gguf from ../shared/fixtures/tiny-internlm2 and the
# fixture tokenizer.
#
# usage (from the project root): scripts/make_test_gguf.sh
# env:   W=/tmp/llamacpp (where ../shared/tools/llamacpp/setup.sh keeps the llama.cpp source:
#        the llama-cpp-python 0.3.36 sdist, fetched here with pip if missing)
#        PY=python with torch, numpy, safetensors, sentencepiece, protobuf, transformers<4.50
#        (default /tmp/llamaenv/bin/python, the venv setup.sh makes)
set -euo pipefail
W="${W:-/tmp/llamacpp}"
PY="${PY:-/tmp/llamaenv/bin/python}"
FIX="${INTERNLM2_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
VER=0.3.36
SDIST="$W/dl/llama_cpp_python-$VER.tar.gz"
mkdir -p "$W/dl"
[ -f "$SDIST" ] || pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VER" -d "$W/dl"
echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  $SDIST" | sha256sum -c -
SRC="$W/llama_cpp_python-$VER/vendor/llama.cpp"
[ -d "$SRC" ] || tar xzf "$SDIST" -C "$W"

HF="$(mktemp -d)"
trap 'rm -rf "$HF"' EXIT
cp "$FIX/tiny-internlm2/config.json" "$FIX/tiny-internlm2/model.safetensors" "$HF/"
cp "$FIX/tokenizer/tokenizer_internlm2.model" "$HF/tokenizer.model"
chmod u+w "$HF"/*
mkdir -p internlm2/tests/data/gguf
for t in f16 q8_0; do
    "$PY" "$SRC/convert_hf_to_gguf.py" "$HF" --outtype "$t" \
        --outfile "internlm2/tests/data/gguf/tiny-internlm2-$t.gguf" > "$HF/convert_$t.log" 2>&1 \
        || { cat "$HF/convert_$t.log"; exit 1; }
done
ls -la internlm2/tests/data/gguf
