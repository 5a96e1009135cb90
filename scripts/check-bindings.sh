#!/usr/bin/env bash
# Checks the wrappers that CI cannot compile or fully run against what the library exports:
# - every C function, constant, type and struct field the Swift package (ios/Sources) names is
#   in ffi/include/kilotune.h;
# - every native method of android/.../Native.java has its JNI entry point in ffi/src/jni, and
#   every entry point there has its Java declaration.
set -euo pipefail
cd "$(dirname "$0")/.."
header=ffi/include/kilotune.h
fail=0

# C names: kt_* functions and types, KT_* constants; snake_case members (`c.lora_rank`) and
# labels of C struct initializers (`seq_len:`). Swift's own names are camelCase.
swift_names=$(grep -vhE '^\s*//' ios/Sources/Kilotune/*.swift |
    grep -oE '\bkt_[a-z0-9_]+|\bKT_[A-Z0-9_]+|\.[a-z]+_[a-z0-9_]+|\b[a-z]+_[a-z0-9_]+:' |
    sed -E 's/^\.//; s/:$//' | sort -u)
count=0
for name in $swift_names; do
    count=$((count + 1))
    if ! grep -qE "\b$name\b" "$header"; then
        echo "error: ios/Sources uses \`$name\`, which $header does not declare" >&2
        fail=1
    fi
done
echo "swift: $count C names used, all declared in $header"

java_natives=$(grep -oE 'static native [^(]+ [a-zA-Z0-9]+\(' android/src/main/java/dev/kilotune/Native.java |
    sed -E 's/.* ([a-zA-Z0-9]+)\($/\1/' | sort)
rust_natives=$(grep -ohE 'Java_dev_kilotune_Native_[a-zA-Z0-9]+' ffi/src/jni/*.rs | sed 's/Java_dev_kilotune_Native_//' | sort)
if [ "$java_natives" != "$rust_natives" ]; then
    echo "error: Native.java and ffi/src/jni disagree:" >&2
    diff <(echo "$java_natives") <(echo "$rust_natives") >&2 || true
    fail=1
else
    echo "java: $(echo "$java_natives" | wc -l) native methods, each with its JNI entry point"
fi
exit $fail
