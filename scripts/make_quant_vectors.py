#!/usr/bin/env python3
"""Reference vectors for the packed weight formats, from llama.cpp's own Python package.

usage: make_quant_vectors.py OUT.json      (needs `pip install gguf==0.19.0 numpy`)

gguf-py (PyPI `gguf`, maintained in the llama.cpp repository) implements ggml's block formats
in numpy. This script writes, for internlm2/tests/quant_vectors.rs:
  - decode: random Q4_K, Q6_K, Q8_0 and Q4_0 blocks (random bytes, sane f16 scales) and the
    values gguf.quants.dequantize gives for them;
  - encode: random f32 rows and the Q8_0 / Q4_0 bytes gguf.quants.quantize gives for them
    (ggml's reference rounding rules).
"""
import json, sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(20261202)
from importlib.metadata import version
out = {"gguf_version": version("gguf"), "decode": {}, "encode": {}}

def scale_bytes(n):
    return np.float16(rng.uniform(0.005, 0.05, n)).view(np.uint8).reshape(n, 2)

for name, qtype, block, scale_at in [("q4_k", T.Q4_K, 144, [0, 2]), ("q6_k", T.Q6_K, 210, [208]),
                                     ("q8_0", T.Q8_0, 34, [0]), ("q4_0", T.Q4_0, 18, [0])]:
    nblocks = 4
    raw = rng.integers(0, 256, size=(nblocks, block), dtype=np.uint8)
    for at in scale_at:
        raw[:, at:at + 2] = scale_bytes(nblocks)
    values = quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1)
    out["decode"][name] = {"bytes": raw.reshape(-1).tobytes().hex(),
                           "values": [float(v) for v in values]}

for name, qtype in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0)]:
    x = rng.normal(0, 1, size=(2, 64)).astype(np.float32)
    x[0, 5] = 0.0
    x[1, 40:72 - 8] = 0.0
    q = quants.quantize(x, qtype)
    out["encode"][name] = {"rows": 2, "cols": 64, "input": [float(v) for v in x.reshape(-1)],
                           "bytes": q.reshape(-1).tobytes().hex()}

json.dump(out, open(sys.argv[1], "w"))
print("wrote", sys.argv[1])
