#!/usr/bin/env bash
# Creates bench/.venv with the peers the benchmarks compare against, from PyPI.
#   bash bench/setup.sh          ONNX Runtime (the inference benchmark)
#   bash bench/setup.sh train    also PyTorch + PEFT (the training benchmark; a large download)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
if [ "${1:-}" = "train" ]; then
    "$here/.venv/bin/pip" install --quiet -r "$here/requirements-train.txt"
fi
echo "bench venv ready: $here/.venv"
