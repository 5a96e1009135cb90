#!/usr/bin/env bash
# Installs what CI's binding and cross stages need, and does nothing for what is already there:
# gcc, valgrind, a JDK 17, the aarch64 cross toolchain and QEMU (Debian packages), the Rust
# targets for aarch64 Linux, Android and iOS, and the pinned cbindgen; for the backend parity
# stage, Mesa's lavapipe (a CPU Vulkan driver), the Vulkan loader and glslangValidator, and the
# ONNX Runtime library from PyPI (scripts/get-ort.sh). Runs as root on Debian.
set -euo pipefail

CBINDGEN_VERSION=0.29.4
packages=(gcc valgrind openjdk-17-jdk-headless gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
    mesa-vulkan-drivers libvulkan-dev glslang-tools)
targets=(aarch64-unknown-linux-gnu aarch64-linux-android aarch64-apple-ios)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    echo "setup: cargo install cbindgen $CBINDGEN_VERSION"
    # A separate target folder keeps the workspace's build cache clean.
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/cbindgen-build" cargo install cbindgen --version "=$CBINDGEN_VERSION" --locked --quiet
fi
bash scripts/get-ort.sh >/dev/null
echo "setup: done"
