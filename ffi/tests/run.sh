#!/usr/bin/env bash
# The binding tests that need more than `cargo test`: the C programs of ffi/tests/c (the
# journey, eight threads agreeing bit for bit, sixteen threads hammering shared and separate
# handles) under AddressSanitizer and under valgrind (zero errors, zero leaks), the Java classes of android/ on
# the host JVM, and the boundary checks generated from the header (NULL for every pointer
# argument, a forced panic in every function; ffi/tests/gen_boundary.py).
#
#   ffi/tests/run.sh asan | valgrind | java | boundary | all
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
    java) java_run ;;
    boundary) boundary ;;
    all) asan; valgrind_run; java_run; boundary ;;
    *) echo "usage: $0 asan|valgrind|java|boundary|all" >&2; exit 2 ;;
esac
