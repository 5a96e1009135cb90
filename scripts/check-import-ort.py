#!/usr/bin/env python3
"""Runs a model written by `kilotune import` in ONNX Runtime and compares its first output
with a reference (PyTorch's), at the positions whose attention_mask is 1.

    python scripts/check-import-ort.py MODEL.onnx REFERENCE_DIR WANT.npy [--tol 1e-4]

REFERENCE_DIR holds one .npy per model input (input_ids.npy, attention_mask.npy, ...).
Prints max |delta| and the smallest cosine between matching vectors; exits 1 above --tol.
Needs numpy and onnxruntime (the bench virtualenv has both).

Examples (after `kilotune import hf models/minilm-l6-hf --out minilm.onnx`, and
`KILOTUNE_IMPORT_OUT=DIR cargo test -p kilotune-tests --test import` for the tiny ones):

    python scripts/check-import-ort.py minilm.onnx ../shared/models/minilm-l6/reference \\
        ../shared/models/minilm-l6/reference/last_hidden_state_torch.npy
    python scripts/check-import-ort.py DIR/tiny-llama.import.onnx tests/fixtures/tiny-llama.reference \\
        tests/fixtures/tiny-llama.reference/logits.npy
"""

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("reference_dir")
    p.add_argument("want")
    p.add_argument("--tol", type=float, default=1e-4, help="largest max |delta| accepted")
    a = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.load(os.path.join(a.reference_dir, i.name + ".npy")) for i in s.get_inputs()}
    got = s.run(None, feeds)[0]
    want = np.load(a.want)
    if got.shape != want.shape:
        print(f"shape {got.shape} != reference {want.shape}")
        return 1
    keep = feeds["attention_mask"].astype(bool)
    g, w = got[keep].astype(np.float64), want[keep].astype(np.float64)
    d = float(np.abs(g - w).max())
    cos = float((np.sum(g * w, -1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(w, axis=-1))).min())
    print(f"{os.path.basename(a.model)}: ONNX Runtime {ort.__version__} vs reference: max |delta| = {d:.3e}, min cosine = {cos:.6f}")
    return 0 if d <= a.tol else 1


if __name__ == "__main__":
    sys.exit(main())
