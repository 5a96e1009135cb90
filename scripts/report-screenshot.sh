#!/usr/bin/env bash
# Renders the page of a `kilotune train --report DIR` run to a PNG with headless Chromium, so
# the charts can be looked at without a desktop, then checks that the picture is not blank.
#
# Usage: scripts/report-screenshot.sh REPORT_DIR OUT.png
# Installs Debian's `chromium` package when it is missing (needs root, as CI runs).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 REPORT_DIR OUT.png" >&2
    exit 2
fi
report=$1
out=$2
if [ ! -f "$report/index.html" ]; then
    echo "error: $report/index.html not found; make one with kilotune train ... --report $report" >&2
    exit 1
fi

if ! command -v chromium >/dev/null; then
    echo "== installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

page=$(cd "$report" && pwd)/index.html
out_dir=$(cd "$(dirname "$out")" && pwd)
out_abs=$out_dir/$(basename "$out")
rm -f "$out_abs"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# A fresh profile, no network, nothing in the background: the page and its SVGs are local.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1200,900 --screenshot="$out_abs" \
    "file://$page" 2>"$profile/chromium.log" || {
    cat "$profile/chromium.log" >&2
    echo "error: chromium failed" >&2
    exit 1
}
if [ ! -s "$out_abs" ]; then
    cat "$profile/chromium.log" >&2
    echo "error: chromium wrote no $out_abs" >&2
    exit 1
fi

# Not blank: a one-colour 1200x900 PNG compresses to a few KB, a page with three charts and
# two tables to well over 20 KB. With ImageMagick, also count the colours.
size=$(stat -c %s "$out_abs")
if [ "$size" -lt 20000 ]; then
    echo "error: $out_abs is only $size bytes: the page probably rendered blank" >&2
    exit 1
fi
if command -v identify >/dev/null; then
    colours=$(identify -format %k "$out_abs")
    if [ "$colours" -lt 16 ]; then
        echo "error: $out_abs has only $colours colours: the charts did not render" >&2
        exit 1
    fi
    echo "$out_abs: $size bytes, $colours colours"
else
    echo "$out_abs: $size bytes"
fi
