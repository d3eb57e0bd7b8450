#!/usr/bin/env bash
# Build the libFuzzer harnesses of the guest init into OUT_DIR (default
# kernels/fuzz/out):   kernels/fuzz/build.sh [OUT_DIR]
# Needs clang with libFuzzer (Debian: clang and libclang-rt-dev).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
init=$here/../init
out=${1:-$here/out}
mkdir -p "$out"
cc=${CC_FUZZ:-}
if [ -z "$cc" ]; then
    for c in clang clang-19 clang-16 clang-15 clang-14; do
        command -v "$c" >/dev/null && { cc=$c; break; }
    done
fi
[ -n "$cc" ] || { echo "clang is missing (apt install clang libclang-rt-dev)" >&2; exit 3; }
# libFuzzer's runtime is a package of its own (libclang-rt-*-dev): probe it.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' > "$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined -o "$probe/p" "$probe/p.c" 2>"$probe/err"; then
    cat "$probe/err" >&2
    echo "$cc cannot link libFuzzer (apt install libclang-rt-dev)" >&2
    exit 3
fi
flags=(-g -O1 -std=gnu11 -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Wno-unused-parameter -Wno-unused-function -I"$init")
"$cc" "${flags[@]}" -o "$out/fuzz_json" "$here/fuzz_json.c" "$init/json.c" "$init/util.c"
"$cc" "${flags[@]}" -o "$out/fuzz_archive" "$here/fuzz_archive.c" "$init/json.c" "$init/util.c"
echo "$out"
