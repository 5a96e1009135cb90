#!/usr/bin/env bash
# The binding tests that need more than `cargo test`: the C programs of ffi/tests/c (the
# journey, eight threads agreeing bit for bit, sixteen threads hammering shared and separate
# handles) under AddressSanitizer and under valgrind (zero errors, zero leaks), the two thread
# programs under ThreadSanitizer (zero reports), the Java classes of android/ on
# the host JVM, and the boundary checks generated from the header (NULL for every pointer
# argument, a forced panic in every function; ffi/tests/gen_boundary.py).
#
#   ffi/tests/run.sh asan | valgrind | tsan | java | boundary | all
#
# Uses the library from `cargo test --workspace --no-run` (test profile, so CI's first stage
# has already built it); the Java run adds the `jni` feature. Needs gcc, valgrind and a JDK 17.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
lib=$target/debug/deps  # where `cargo test` leaves the cdylib it built
fixtures=$root/tests/fixtures
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_lib() {
    cargo test --workspace --no-run "$@" 2>"$work/build.log" || { cat "$work/build.log" >&2; exit 1; }
    test -f "$lib/libkilotune_ffi.so" || { echo "error: $lib/libkilotune_ffi.so was not built" >&2; exit 1; }
}

# compile NAME [CFLAGS...]: the C test NAME linked against the shared library.
compile() {
    local name=$1
    shift
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -g "$@" -Iffi/include -Iffi/tests/c \
        "ffi/tests/c/$name.c" -L"$lib" -Wl,-rpath,"$lib" -lkilotune_ffi -lpthread -lm -o "$work/$name"
}

asan() {
    echo "-- C tests under AddressSanitizer (leak checking on)"
    build_lib
    for t in journey threads hammer; do
        compile "$t" -fsanitize=address -fno-omit-frame-pointer
        mkdir -p "$work/$t.d"
        ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=97 \
            LSAN_OPTIONS=suppressions=$root/ffi/tests/lsan.supp:print_suppressions=0 \
            "$work/$t" "$fixtures" "$work/$t.d" | tail -n 1
    done
}

valgrind_run() {
    echo "-- C tests under valgrind (memcheck; every leak kind but 'still reachable' is an error)"
    build_lib
    for t in journey threads hammer; do
        compile "$t"
        mkdir -p "$work/$t.d"
        local rc=0
        valgrind --error-exitcode=98 --leak-check=full \
            --show-leak-kinds=definite,indirect,possible --errors-for-leak-kinds=definite,indirect,possible \
            --suppressions="$root/ffi/tests/valgrind.supp" --log-file="$work/$t.valgrind" \
            "$work/$t" "$fixtures" "$work/$t.d" | tail -n 1 || rc=$?
        grep -E "(definitely|indirectly|possibly) lost:|ERROR SUMMARY" "$work/$t.valgrind" | sed 's/^==[0-9]*== *//'
        if [ "$rc" -ne 0 ]; then
            cat "$work/$t.valgrind" >&2
            echo "error: $t under valgrind exited with $rc" >&2
            exit 1
        fi
    done
}

# ThreadSanitizer. Only the stable toolchain is here, so the library is built with
# `-Zsanitizer=thread` under RUSTC_BOOTSTRAP=1, in a target folder of its own (its flags differ
# from every other build's), and the C programs are linked with Rust's own TSan runtime. The
# standard library is the prebuilt one (an instrumented std needs the rust-src component); the
# optimized build still instruments the std code it inlines (atomics, Mutex lock and unlock,
# Arc's counts). `--cfg kilotune_tsan` makes a session hand work to its pool through an atomic
# flag the sanitizer sees (runtime/src/session.rs); tsan.supp names the two places, both inside
# rayon, where synchronization completes inside the prebuilt std. Any other report fails.
tsan() {
    echo "-- C thread tests under ThreadSanitizer (8 threads, then 16 hammering; 0 reports)"
    local host sysroot tdir
    host=$(rustc -vV | sed -n 's/^host: //p')
    sysroot=$(rustc --print sysroot)
    tdir=$target/tsan
    # Optimized (so std's inlined code is instrumented where it is used), without LTO, to build quickly.
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$tdir CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer -Cforce-frame-pointers=yes --cfg kilotune_tsan" \
        cargo rustc -p kilotune-ffi --release --target "$host" --crate-type staticlib 2>"$work/build.log" \
        || { cat "$work/build.log" >&2; exit 1; }
    for t in threads hammer tsan_canary; do
        gcc -std=c11 -Wall -Wextra -Werror -pedantic -g -fno-omit-frame-pointer -Iffi/include -Iffi/tests/c \
            "ffi/tests/c/$t.c" "$tdir/$host/release/libkilotune_ffi.a" \
            -Wl,--whole-archive "$sysroot/lib/rustlib/$host/lib/librustc-stable_rt.tsan.a" -Wl,--no-whole-archive \
            -lpthread -ldl -lm -lrt -lutil -lgcc_s -o "$work/$t.tsan"
        mkdir -p "$work/$t.tsan.d"
    done
    for t in threads hammer; do
        TSAN_OPTIONS="suppressions=$root/ffi/tests/tsan.supp:halt_on_error=0:exitcode=96" \
            "$work/$t.tsan" "$fixtures" "$work/$t.tsan.d" | tail -n 1
    done
    # The canary shares one session between two threads against the header's rules: the
    # sanitizer must stop it with a race in the session, or this run proves nothing.
    local rc=0
    TSAN_OPTIONS="suppressions=$root/ffi/tests/tsan.supp:halt_on_error=1:exitcode=96" \
        "$work/tsan_canary.tsan" "$fixtures" "$work/tsan_canary.tsan.d" >"$work/canary.log" 2>&1 || rc=$?
    if [ "$rc" -ne 96 ] || ! grep -q 'kilotune::session::Session' "$work/canary.log"; then
        cat "$work/canary.log" >&2
        echo "error: ThreadSanitizer did not report the canary's race (exit $rc)" >&2
        exit 1
    fi
    echo "tsan_canary: the race it commits was reported"
}

java_run() {
    echo "-- Java classes (android/) on the host JVM"
    build_lib --features kilotune-ffi/jni
    local classes=$work/classes
    mkdir -p "$classes"
    javac -d "$classes" --release 17 -Xlint:all -Werror \
        $(find android/src/main/java android/src/test/java -name '*.java')
    java -Xcheck:jni -Djava.library.path="$lib" -cp "$classes" dev.kilotune.JourneyTest "$fixtures" "$work"
}

boundary() {
    echo "-- every exported function: NULL for each pointer argument, and a forced panic (generated from the header; AddressSanitizer)"
    build_lib --features kilotune-ffi/fault-injection
    mkdir -p "$work/gen"
    python3 ffi/tests/gen_boundary.py ffi/include/kilotune.h > "$work/gen/boundary.c"
    gcc -std=c11 -Wall -Wextra -Werror -g -fsanitize=address -fno-omit-frame-pointer -Iffi/include -Iffi/tests/c \
        "$work/gen/boundary.c" -L"$lib" -Wl,-rpath,"$lib" -lkilotune_ffi -lpthread -lm -o "$work/boundary"
    mkdir -p "$work/boundary.d"
    # RUST_BACKTRACE=0: the forced panics each print one line, not a backtrace.
    RUST_BACKTRACE=0 ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=97 \
        LSAN_OPTIONS=suppressions=$root/ffi/tests/lsan.supp:print_suppressions=0 \
        "$work/boundary" "$fixtures" "$work/boundary.d" | tail -n 2
}

case "${1:-all}" in
    asan) asan ;;
    valgrind) valgrind_run ;;
    tsan) tsan ;;
    java) java_run ;;
    boundary) boundary ;;
    all) asan; valgrind_run; tsan; java_run; boundary ;;
    *) echo "usage: $0 asan|valgrind|tsan|java|boundary|all" >&2; exit 2 ;;
esac
