#!/usr/bin/env bash
# Regenerates ffi/include/kilotune.h from ffi/src with the pinned cbindgen. With --check, fails
# (and shows the difference) when the committed header is not what the sources give.
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.4
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    echo "error: cbindgen $CBINDGEN_VERSION is needed: cargo install cbindgen --version =$CBINDGEN_VERSION --locked" >&2
    exit 1
fi
header=ffi/include/kilotune.h
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config ffi/cbindgen.toml --crate kilotune-ffi --output "$fresh" ffi
if [ "${1:-}" = "--check" ]; then
    if ! diff -u "$header" "$fresh"; then
        echo "error: $header is out of date; run scripts/gen-header.sh and commit it" >&2
        exit 1
    fi
    echo "$header is up to date"
else
    cp "$fresh" "$header"
    echo "wrote $header"
fi
