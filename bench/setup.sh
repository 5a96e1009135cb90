#!/usr/bin/env bash
# Creates bench/.venv with the peers the benchmarks compare against, from PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
echo "bench venv ready: $here/.venv"
