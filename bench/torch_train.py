"""PyTorch + Hugging Face PEFT side of `cargo bench --bench train`.

Driven over stdin, one command per line, so the Rust harness can interleave its own steps
with these:
  `load CONFIG_JSON THREADS RANK`  builds the model and a LoRA (r=RANK, alpha=2·RANK, query and
                                   value) with a mean-pooling linear head and AdamW → `ok`;
  `load-llama CONFIG_JSON THREADS RANK`  builds `LlamaForCausalLM` and a LoRA (r=RANK,
                                   alpha=2·RANK, q_proj and v_proj) with AdamW → `ok`;
  `step BATCH SEQ ITERS`           runs ITERS full training steps (forward, cross-entropy,
                                   backward, AdamW update) → the seconds of each, space-separated;
  `step-lm BATCH SEQ ITERS`        the same for the causal LM (next-token cross-entropy);
  `rss`                            → this process's peak resident set size in bytes;
  `quit`.
The token ids are the same deterministic ones the Rust side builds. The encoder is built from
the model's `config.json` with PyTorch's default initialization: a step's cost does not depend
on the weight values, and no model hub is reachable here. Dropout is off on both sides.
"""
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

state = {}


class Classifier(torch.nn.Module):
    def __init__(self, encoder, hidden, classes=2):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, ids, mask, types):
        h = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def load(config_path, threads, rank):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with open(config_path) as f:
        cfg = json.load(f)
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = BertModel(BertConfig(**cfg), add_pooling_layer=False)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["query", "value"])
    encoder = get_peft_model(encoder, lora)
    model = Classifier(encoder, cfg["hidden_size"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    state["model"] = model
    state["opt"] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def load_llama(config_path, threads, rank):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with open(config_path) as f:
        cfg = json.load(f)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    state["model"] = model
    state["vocab"] = cfg["vocab_size"]
    state["opt"] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def step_lm(batch, seq, iters):
    vocab = state["vocab"]
    ids = (torch.arange(batch * seq, dtype=torch.int64).reshape(batch, seq) * 7919 + 101) % (vocab - 1000) + 1000
    mask = torch.ones(batch, seq, dtype=torch.int64)
    model, opt = state["model"], state["opt"]
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # `labels=ids`: transformers shifts them and averages next-token cross-entropy.
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times


def step(batch, seq, iters):
    ids = (torch.arange(batch * seq, dtype=torch.int64).reshape(batch, seq) * 7919 + 101) % 29000 + 1000
    mask = torch.ones(batch, seq, dtype=torch.int64)
    types = torch.zeros(batch, seq, dtype=torch.int64)
    labels = torch.arange(batch) % 2
    model, opt = state["model"], state["opt"]
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(ids, mask, types), labels)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times


print("ready", flush=True)
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    try:
        if parts[0] == "quit":
            break
        if parts[0] == "load":
            load(parts[1], int(parts[2]), int(parts[3]))
            print("ok", flush=True)
        elif parts[0] == "load-llama":
            load_llama(parts[1], int(parts[2]), int(parts[3]))
            print("ok", flush=True)
        elif parts[0] == "step-lm":
            times = step_lm(int(parts[1]), int(parts[2]), int(parts[3]))
            print(" ".join(f"{t:.6f}" for t in times), flush=True)
        elif parts[0] == "step":
            times = step(int(parts[1]), int(parts[2]), int(parts[3]))
            print(" ".join(f"{t:.6f}" for t in times), flush=True)
        elif parts[0] == "rss":
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
        else:
            print(f"error unknown command {parts[0]}", flush=True)
    except Exception as e:  # report to the harness instead of dying silently
        print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
