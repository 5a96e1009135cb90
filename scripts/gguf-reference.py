#!/usr/bin/env python3
"""Reference data for the GGUF importer, from PyTorch + Hugging Face `transformers`.

Loads SmolLM2-135M-Instruct (llama.cpp Q4_1 GGUF) the way `transformers` does
(`from_pretrained(dir, gguf_file=...)`: dequantized to f32, Q/K rows un-permuted) and writes
into OUT (default tests/fixtures/smollm2-reference/):

  tensors.json      for a few tensors: HF name, shape, f64 sum and sum of |x|, and the values at
                    16 evenly spaced flat indices, from the HF model's state dict; each is also
                    checked here against gguf-py's own dequantization + un-permute
  tokens.json       strings and the ids the GGUF's tokenizer (as transformers builds it) gives them
  prompt{0,1}.input_ids.npy   int64 [1, seq]
  prompt{0,1}.logits.npy      f32 [vocab], the next-token logits at the last position

Needs torch, transformers (≥ 4.46, with GGUF support), numpy and gguf:

  python -m venv .venv && .venv/bin/pip install torch transformers numpy gguf
  bash scripts/get-models.sh
  .venv/bin/python scripts/gguf-reference.py [--gguf models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--out DIR]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]

TOKENIZER_STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café déjà vu: naïve façade, Zürich, São Paulo, Ångström.",
    "Emoji: 🙂🚀 and 👩‍👩‍👧 (family), ✓ ∑ ∞",
    "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))",
    "line one\nline two\r\n\n\nafter blanks   with   spaces  ",
    "Numbers 12345, 3.14159, 2024-11-30 and 1,000,000.",
    "It's they're we've I'm you'll he'd",
    "日本語のテキストと中文文本。",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>",
    "  leading spaces and trailing\n",
]

# (GGUF name, HF name): one tensor of each kind the file holds and each path the importer takes.
TENSORS = [
    ("token_embd.weight", "model.embed_tokens.weight"),  # Q8_0
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),  # Q4_1, permuted, 9 heads
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),  # Q4_1, permuted, 3 kv-heads
    ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
    ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),  # F32
    ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
    ("output_norm.weight", "model.norm.weight"),
]


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's permute (rows within each head)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_py_tensor(reader, name, heads, kv_heads):
    """A tensor dequantized by gguf-py (numpy), in PyTorch layout, Q/K un-permuted."""
    from gguf import dequantize

    t = next(t for t in reader.tensors if t.name == name)
    w = dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
    if name.endswith("attn_q.weight"):
        w = unpermute(w, heads)
    elif name.endswith("attn_k.weight"):
        w = unpermute(w, kv_heads)
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/smollm2-reference"))
    args = ap.parse_args()
    if not os.path.isfile(args.gguf):
        sys.exit(f"{args.gguf} is missing: run scripts/get-models.sh")

    import transformers
    from gguf import GGUFReader
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(args.gguf))
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    os.makedirs(args.out, exist_ok=True)
    cfg = model.config
    reader = GGUFReader(args.gguf)

    state = model.state_dict()
    tensors = []
    for gguf_name, hf_name in TENSORS:
        w = state[hf_name].detach().numpy()
        mine = gguf_py_tensor(reader, gguf_name, cfg.num_attention_heads, cfg.num_key_value_heads)
        if mine.shape != w.shape or not np.array_equal(mine, w):
            sys.exit(f"{gguf_name}: gguf-py and transformers disagree (max |d| = {np.abs(mine - w).max()})")
        flat = w.reshape(-1)
        idx = np.linspace(0, flat.size - 1, 16).round().astype(np.int64)
        tensors.append(
            {
                "gguf": gguf_name,
                "hf": hf_name,
                "shape": list(w.shape),
                "sum": float(flat.astype(np.float64).sum()),
                "abs_sum": float(np.abs(flat.astype(np.float64)).sum()),
                "indices": idx.tolist(),
                "values": [float(v) for v in flat[idx]],
                "first": [float(v) for v in flat[:8]],
            }
        )
    with open(os.path.join(args.out, "tensors.json"), "w") as fh:
        lines = ",\n".join("  " + json.dumps(t) for t in tensors)
        fh.write('{"tensors": [\n' + lines + "\n]}\n")

    cases = []
    for s in TOKENIZER_STRINGS:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        cases.append({"text": s, "ids": ids})
    with open(os.path.join(args.out, "tokens.json"), "w") as fh:
        lines = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
        fh.write('{"cases": [\n' + lines + "\n]}\n")

    for i, p in enumerate(PROMPTS):
        ids = tok(p, add_special_tokens=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().numpy()
        np.save(os.path.join(args.out, f"prompt{i}.input_ids.npy"), ids.numpy().astype(np.int64))
        np.save(os.path.join(args.out, f"prompt{i}.logits.npy"), logits.astype(np.float32))
        top = np.argsort(-logits)[:5]
        print(f"prompt {i}: {ids.shape[1]} tokens; top next tokens {[tok.decode([t]) for t in top]}")
    print(f"wrote {args.out} (torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
