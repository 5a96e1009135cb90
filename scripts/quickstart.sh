#!/usr/bin/env bash
# Builds kilotune and runs it: inspects a model, runs it on saved inputs, and embeds sentences.
# Uses the tiny fixture in the repository; with the real MiniLM beside the repository
# (../shared/models/minilm-l6) it also embeds real sentences and shows int8 loading.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust from https://rustup.rs first" >&2
    exit 1
fi
echo "== building (release)"
cargo build --release -p kilotune-cli
kt="${CARGO_TARGET_DIR:-target}/release/kilotune"
fixture=tests/fixtures/tiny-bert.dynamo.onnx
ref=tests/fixtures/tiny-bert.reference
echo "== inspect $fixture"
"$kt" inspect "$fixture"
out=$(mktemp -d)
echo "== run $fixture"
"$kt" run "$fixture" --input input_ids=$ref/input_ids.npy --input attention_mask=$ref/attention_mask.npy \
    --input token_type_ids=$ref/token_type_ids.npy --out "$out" --threads 2
minilm=../shared/models/minilm-l6
if [ -f "$minilm/model.onnx" ]; then
    echo "== embed with MiniLM (fp32, then int8)"
    "$kt" embed "$minilm/model.onnx" --tokenizer "$minilm/tokenizer.json" --threads 2 \
        "The movie was wonderful." "I did not enjoy this film at all." | cut -c1-120
    "$kt" embed "$minilm/model.int8.onnx" --tokenizer "$minilm/tokenizer.json" --threads 2 \
        "The movie was wonderful." | cut -c1-120
else
    echo "(no $minilm: skipping the real-model part)"
fi
echo "== done; outputs in $out"
