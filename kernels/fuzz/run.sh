#!/usr/bin/env bash
# Fuzz the guest init's JSON reader and tar reader/writer for a bounded
# time, from the seed corpora; fail on any crash, sanitizer report or
# broken invariant (CI runs this through tests/unit/test_init_fuzz.py).
#
#   kernels/fuzz/run.sh [SECONDS_EACH]     (default $HBD_FUZZ_SECONDS, else 30)
#
# Exit status: 0 clean, 1 a fuzzer failed (its input is kept in
# kernels/fuzz/out/crashes/ and printed in base64), 3 clang or libFuzzer is
# missing (apt install clang libclang-rt-dev). The archive fuzzer chroots
# into its work directory, so it needs root; without root only the JSON
# fuzzer runs. Reproduce a crash: cd into an empty directory on a tmpfs and
# run kernels/fuzz/out/fuzz_archive CRASH_FILE (as root, file given relative).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-${HBD_FUZZ_SECONDS:-30}}
out=$here/out
mkdir -p "$out/crashes"

build_log=$(mktemp)
"$here/build.sh" "$out" >"$build_log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    cat "$build_log" >&2
    # No clang, or a clang without libFuzzer's runtime (libclang-rt-dev).
    if [ $rc -eq 3 ]; then
        rm -f "$build_log"
        echo "run.sh: libFuzzer is not available (apt install clang libclang-rt-dev)" >&2
        exit 3
    fi
    rm -f "$build_log"
    exit 1
fi
rm -f "$build_log"

# A tmpfs when there is one: the archive fuzzer makes and removes trees.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/hbd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=0
fuzz() { # NAME SEEDS [libFuzzer options...]
    local name=$1 seeds=$2
    shift 2
    local dir=$work/$name
    mkdir -p "$dir/corpus"
    cp "$here/seeds/$seeds"/* "$dir/corpus/"
    cp "$out/$name" "$dir/"
    echo "run.sh: $name for ${seconds}s from $(ls "$dir/corpus" | wc -l) seeds"
    (cd "$dir" && "./$name" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix=./ "$@" corpus) >"$work/$name.log" 2>&1
    local rc=$?
    grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec)" "$work/$name.log" \
        | sed "s/^/  $name: /"
    local crashes
    crashes=$(cd "$dir" && ls -d crash-* leak-* timeout-* oom-* 2>/dev/null)
    if [ $rc -ne 0 ] || [ -n "$crashes" ]; then
        failed=1
        echo "run.sh: $name FAILED (exit $rc)" >&2
        grep -v "^INFO:" "$work/$name.log" | grep -v "^#" | tail -60 >&2
        for c in $crashes; do
            cp "$dir/$c" "$out/crashes/$name-$c"
            echo "run.sh: input kept in $out/crashes/$name-$c; base64:" >&2
            base64 -w0 "$dir/$c" >&2
            echo >&2
        done
    fi
}

fuzz fuzz_json json -dict="$here/json.dict" -max_len=65536
if [ "$(id -u)" = 0 ]; then
    fuzz fuzz_archive tar -max_len=32768
else
    echo "run.sh: not root: the archive fuzzer (it chroots) is skipped" >&2
fi
exit $failed
