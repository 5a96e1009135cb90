#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that the `ort` backend opens at run time
# (`ort`'s load-dynamic: nothing is downloaded or linked at build time). It comes from the
# PyPI wheel onnxruntime==1.31.1, pinned by its sha256, and lands in the gitignored
# `.ort/` folder. Prints the line to export:
#
#   bash scripts/get-ort.sh && export ORT_DYLIB_PATH="$PWD/.ort/libonnxruntime.so.1.31.1"
#
# Only x86_64 Linux is pinned here (the machines CI runs on); an app ships the library of
# its own platform.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.31.1
WHEEL="onnxruntime-$VERSION-cp311-cp311-manylinux_2_28_x86_64.whl"
SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
DEST=.ort
LIB="$DEST/libonnxruntime.so.$VERSION"

if [ -f "$LIB" ]; then
    echo "get-ort: $LIB is already there"
else
    mkdir -p "$DEST/download"
    if [ ! -f "$DEST/download/$WHEEL" ]; then
        # The wheel is named exactly (platform and Python tag), whatever Python runs pip, so
        # the hash below always applies.
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --python-version 3.11 --platform manylinux_2_28_x86_64 \
            "onnxruntime==$VERSION" -d "$DEST/download"
    fi
    echo "$SHA256  $DEST/download/$WHEEL" | sha256sum --check --quiet
    python3 - "$DEST/download/$WHEEL" "$LIB" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so."))
    with z.open(name) as src, open(out + ".tmp", "wb") as dst:
        dst.write(src.read())
import os
os.replace(out + ".tmp", out)
PY
    echo "get-ort: wrote $LIB"
fi
echo "export ORT_DYLIB_PATH=\"$PWD/$LIB\""
