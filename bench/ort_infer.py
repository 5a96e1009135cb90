"""ONNX Runtime side of `cargo bench --bench inference`.

Driven over stdin, one command per line, so the Rust harness can interleave its own runs with
these:  `load NAME PATH THREADS` → `ok`;  `run NAME BATCH SEQ ITERS` → the seconds of each
iteration, space-separated;  `quit`.  Inputs are the same deterministic token ids the Rust
side builds (see `bench/benches/inference.rs`).
"""
import sys
import time

import numpy as np
import onnxruntime as ort

sessions = {}


def inputs(sess, batch, seq):
    ids = (np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) * 7919 + 101) % 29000 + 1000
    feed = {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64)}
    names = {i.name for i in sess.get_inputs()}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros((batch, seq), np.int64)
    return {k: v for k, v in feed.items() if k in names}


print("ready", flush=True)
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    try:
        if parts[0] == "quit":
            break
        if parts[0] == "load":
            name, path, threads = parts[1], parts[2], int(parts[3])
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            print("ok", flush=True)
        elif parts[0] == "run":
            name, batch, seq, iters = parts[1], int(parts[2]), int(parts[3]), int(parts[4])
            sess = sessions[name]
            feed = inputs(sess, batch, seq)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t)
            print(" ".join(f"{t:.6f}" for t in times), flush=True)
        else:
            print(f"error unknown command {parts[0]}", flush=True)
    except Exception as e:  # report to the harness instead of dying silently
        print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
