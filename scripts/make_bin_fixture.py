#!/usr/bin/env python3
"""Writes a `pytorch_model.bin` copy of a safetensors model directory (for the checkpoint
test that loads .bin directories). Needs `torch` and `safetensors`.

usage: make_bin_fixture.py SRC_MODEL_DIR OUT_DIR"""
import os, shutil, sys

import torch
from safetensors.torch import load_file

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
shutil.copy(os.path.join(src, "config.json"), os.path.join(out, "config.json"))
state = load_file(os.path.join(src, "model.safetensors"))
torch.save(state, os.path.join(out, "pytorch_model.bin"))
print(f"{out}/pytorch_model.bin: {len(state)} tensors")
