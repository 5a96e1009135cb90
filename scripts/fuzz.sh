#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer) from their
# committed seeds, each for SECONDS (default 30), with the limits of the hardening issue:
# 512 MB resident, 64 MB per allocation, 1 s per input. Any crash, panic, leak, OOM or timeout
# fails the run and leaves the input in fuzz/artifacts/TARGET/.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address) to rustc; RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them. The targets are optimized and keep debug assertions and
# overflow checks (cargo-fuzz's default), so an arithmetic overflow is a finding too. New
# corpus entries go to a scratch folder, so the committed seeds stay as they are.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
CARGO_FUZZ_VERSION=0.13.1
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(delta onnx gguf peft_adapter c_base_load_bytes)
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/cargo-fuzz-build" cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
# AddressSanitizer's quarantine of freed blocks (256 MB by default) counts towards the 512 MB
# resident limit, and with the onnx corpus in memory it brought that target to 490 MB before
# its input did anything; 64 MB keeps the limit about the input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64}
cargo fuzz build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    # -close_fd_mask=1: what the engine prints is not the fuzzer's business (stderr stays, for reports).
    if ! cargo fuzz run "$t" "$work/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=64 -timeout=1 \
        -close_fd_mask=1 -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log" >&2
        echo "fuzz: $t found a failing input (fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$work/$t.log" | tr '\n' ' '
    echo
    echo "fuzz: $t clean for ${seconds}s"
done
