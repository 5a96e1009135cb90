#!/usr/bin/env bash
# Cross builds for ARM, from an x86-64 Linux machine (scripts/setup-ci.sh installs what they need):
#
#   scripts/cross.sh aarch64-tests   the runtime's unit tests built for aarch64 Linux and run
#                                    under QEMU user emulation, so the NEON kernels run on
#                                    every change
#   scripts/cross.sh phone-libs      libkilotune_ffi.a for aarch64-linux-android (with the JNI
#                                    glue) and aarch64-apple-ios (release); prints their sizes
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}

case "${1:-}" in
    aarch64-tests)
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
        start=$(date +%s)
        # The two throughput printers assert nothing and only measure the emulator; skip them.
        cargo test --target aarch64-unknown-linux-gnu -p kilotune --lib -- --skip print_gflops --skip print_gops
        echo "aarch64 unit tests under QEMU: $(($(date +%s) - start)) s including the build"
        ;;
    phone-libs)
        # Only the staticlib: a cdylib would need the platform's linker (the NDK, Xcode).
        # PROFILE=release for the libraries an app ships; CI uses the quicker ci-phone profile.
        profile=${PROFILE:-release}
        cargo rustc -p kilotune-ffi --profile "$profile" --target aarch64-linux-android --features jni --crate-type staticlib
        cargo rustc -p kilotune-ffi --profile "$profile" --target aarch64-apple-ios --crate-type staticlib
        for t in aarch64-linux-android aarch64-apple-ios; do
            ls -l "$target_dir/$t/$profile/libkilotune_ffi.a" | awk -v t="$t" '{ printf "%s: libkilotune_ffi.a %d bytes\n", t, $5 }'
        done
        ;;
    *)
        echo "usage: $0 aarch64-tests|phone-libs" >&2
        exit 2
        ;;
esac
