#!/usr/bin/env python3
"""Check that ONNX Runtime loads a model written by `kilotune merge` and computes what kilotune
computes with the delta applied unmerged.

Setup (once): `bash bench/setup.sh` (a venv with onnxruntime and numpy in bench/.venv), and a
release build: `cargo build --release -p kilotune-cli`.

Run:

    bench/.venv/bin/python bench/check_merged.py --model tests/fixtures/tiny-bert.dynamo.onnx
    bench/.venv/bin/python bench/check_merged.py --model ../shared/models/minilm-l6/model.int8.onnx
    bench/.venv/bin/python bench/check_merged.py --model model.onnx --delta user.ktd

Without --delta it makes a random LoRA delta for the model (r=4 on every Linear that
`kilotune inspect` lists, or those matching --targets): it writes a Hugging Face PEFT adapter
folder and turns it into a .ktd with `kilotune delta import`, so the check exercises the import
path too. A delta trained with a classification head (`kilotune train`) also checks the head's
`logits` output.

What is compared, on a batch of token ids (batch 2, sequence 16, the second row right-padded):

1. ONNX Runtime on the merged file vs `kilotune run --delta` on the base, for every base
   output: within --tol (1e-4). With --requantize the merged file is a different (requantized)
   model, so this difference is printed but not asserted.
2. ONNX Runtime vs `kilotune run` on the merged file, for every output (the head's too):
   within --tol.

Exits 0 when every asserted comparison passes, 1 otherwise.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}{res.stdout}")
    return res.stdout


def write_safetensors(path, tensors):
    """A safetensors file of f32 arrays: u64 header length, JSON header, raw little-endian data."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def random_delta(kt, model, targets, work, seed):
    """A random LoRA adapter in PEFT's format for `model`'s Linear layers, imported as a .ktd."""
    info = json.loads(sh([kt, "inspect", model, "--json"]))
    linears = [l for l in info["linears"] if not targets or any(l["module"] == t or l["module"].endswith("." + t) for t in targets)]
    if not linears:
        sys.exit("no Linear layer matches --targets")
    rng, r = np.random.default_rng(seed), 4
    tensors = {}
    for l in linears:
        p = f"base_model.model.{l['module']}"
        # Non-zero A and B, sized so the update moves the outputs clearly but stays modest.
        tensors[f"{p}.lora_A.weight"] = rng.uniform(-1, 1, (r, l["k"])) / np.sqrt(l["k"])
        tensors[f"{p}.lora_B.weight"] = rng.uniform(-0.1, 0.1, (l["n"], r))
    adapter = os.path.join(work, "adapter")
    os.makedirs(adapter)
    write_safetensors(os.path.join(adapter, "adapter_model.safetensors"), tensors)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none", "target_modules": [l["module"] for l in linears]}
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    ktd = os.path.join(work, "random.ktd")
    sh([kt, "delta", "import", adapter, "--model", model, "--out", ktd])
    return ktd, len(linears)


def make_inputs(sess, max_id, work):
    batch, seq = 2, 16
    rng = np.random.default_rng(1)
    feeds, args = {}, []
    for i in sess.get_inputs():
        if i.type != "tensor(int64)" or len(i.shape) != 2:
            sys.exit(f"input {i.name} ({i.type}, {i.shape}): only [batch, seq] int64 token inputs are supported")
        if "mask" in i.name:
            v = np.ones((batch, seq), np.int64)
            v[1, seq - 5:] = 0
        elif "type" in i.name:
            v = np.zeros((batch, seq), np.int64)
        elif "position" in i.name:
            v = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        else:
            v = rng.integers(1, max_id, (batch, seq), dtype=np.int64)
        feeds[i.name] = v
        path = os.path.join(work, f"{i.name}.npy")
        np.save(path, v)
        args += ["--input", f"{i.name}={path}"]
    return feeds, args


def run_kilotune(kt, model, input_args, out, delta=None):
    cmd = [kt, "run", model, *input_args, "--out", out]
    if delta:
        cmd += ["--delta", delta]
    sh(cmd)
    return {f[:-4]: np.load(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".npy")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the base ONNX model")
    ap.add_argument("--delta", help="a .ktd made for --model (default: a random LoRA delta)")
    ap.add_argument("--kilotune", default=os.path.join(REPO, "target", "release", "kilotune"), help="the kilotune binary")
    ap.add_argument("--targets", default="", help="comma-separated module suffixes for the random delta (default: every Linear)")
    ap.add_argument("--requantize", action="store_true", help="pass --requantize to kilotune merge (int8 models)")
    ap.add_argument("--max-id", type=int, default=100, help="token ids are drawn from [1, max-id)")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest |difference| accepted")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    kt = a.kilotune

    with tempfile.TemporaryDirectory() as work:
        delta = a.delta
        if delta is None:
            targets = [t for t in a.targets.split(",") if t]
            delta, n = random_delta(kt, a.model, targets, work, a.seed)
            print(f"random LoRA delta on {n} Linear layers (r=4, alpha=8), imported from a PEFT adapter")
        merged = os.path.join(work, "merged.onnx")
        cmd = [kt, "merge", "--model", a.model, "--delta", delta, "--out", merged, "--json"]
        if a.requantize:
            cmd.append("--requantize")
        report = json.loads(sh(cmd))
        print(
            f"kilotune merge: {report['layers_merged_f32']} f32 layers merged, {report['int8_side_paths']} int8 side paths, "
            f"{report['int8_requantized']} requantized, {report['biases']} biases, head output: {report['head_output']}"
        )
        if report.get("requantization"):
            q = report["requantization"]
            print(f"  requantization: max |dW| {q['max_abs_dw']:.3e}, relative Frobenius {q['rel_frobenius']:.3e}, probe max |dy| {q['probe_max_abs_dy']:.3e}")

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(merged, so, providers=["CPUExecutionProvider"])
        feeds, input_args = make_inputs(sess, a.max_id, work)
        ort_out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        base_names = [o.name for o in ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"]).get_outputs()]
        with_delta = run_kilotune(kt, a.model, input_args, os.path.join(work, "kt_delta"), delta)
        on_merged = run_kilotune(kt, merged, input_args, os.path.join(work, "kt_merged"))

        ok = True
        print(f"{'comparison':<46} {'output':<20} {'max |diff|':>11}")
        for name, value in ort_out.items():
            rows = [("ORT(merged) vs kilotune run --delta", with_delta.get(name), name in base_names and not a.requantize)]
            rows.append(("ORT(merged) vs kilotune run merged", on_merged.get(name), True))
            for label, theirs, asserted in rows:
                if theirs is None:
                    continue
                d = float(np.max(np.abs(value.astype(np.float64) - theirs.astype(np.float64))))
                good = d <= a.tol
                ok &= good or not asserted
                verdict = ("ok" if good else "FAIL") if asserted else "(not asserted)"
                print(f"{label:<46} {name:<20} {d:>11.3e}  {verdict}")
        moved = max(float(np.max(np.abs(ort_out[n] - r))) for n, r in run_kilotune(kt, a.model, input_args, os.path.join(work, "kt_base")).items() if n in ort_out)
        print(f"(for scale: the delta moves the base outputs by up to {moved:.3e})")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
