#!/usr/bin/env bash
# Builds KilotuneFFI.xcframework on a Mac: the kilotune-ffi static library for iOS devices, the
# iOS simulator (arm64 + x86_64) and macOS, each with kilotune.h and the module map. Needs Xcode
# and Rust with the targets below (`rustup target add ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=ios/KilotuneFFI.xcframework
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() { # target...
    for t in "$@"; do
        cargo rustc -p kilotune-ffi --release --target "$t" --crate-type staticlib
    done
}
build aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin

headers=$work/include
mkdir -p "$headers"
cp ffi/include/kilotune.h ios/Sources/KilotuneFFI/module.modulemap "$headers/"

mkdir -p "$work/sim" "$work/mac"
lipo -create target/aarch64-apple-ios-sim/release/libkilotune_ffi.a target/x86_64-apple-ios/release/libkilotune_ffi.a \
    -output "$work/sim/libkilotune_ffi.a"
lipo -create target/aarch64-apple-darwin/release/libkilotune_ffi.a target/x86_64-apple-darwin/release/libkilotune_ffi.a \
    -output "$work/mac/libkilotune_ffi.a"

rm -rf "$out"
xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libkilotune_ffi.a -headers "$headers" \
    -library "$work/sim/libkilotune_ffi.a" -headers "$headers" \
    -library "$work/mac/libkilotune_ffi.a" -headers "$headers" \
    -output "$out"
echo "wrote $out"
