#!/usr/bin/env bash
# Short fuzz run for CI: builds every cargo-fuzz target of this directory and runs each for
# SECONDS seconds from its committed seed corpus (corpus-seed/TARGET). Exits non-zero if a
# target fails to build or libFuzzer reports a crash (the reproducer lands in
# fuzz/artifacts/TARGET/). Stable toolchain: `-s none` (no sanitizer; see
# /work/shared/notes/toolchain.md). Long runs: see docs/protocol.md, "Fuzzing".
#
# Usage: fuzz/run.sh SECONDS
set -euo pipefail

secs=${1:?usage: fuzz/run.sh SECONDS}
case $secs in
    '' | *[!0-9]*) echo "fuzz/run.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz missing, installing it (cargo install cargo-fuzz)" >&2
    cargo install cargo-fuzz
fi

targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz/run.sh: no fuzz targets found" >&2; exit 1; }
for t in $targets; do
    echo "fuzz/run.sh: building $t" >&2
    cargo fuzz build -s none "$t"
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "corpus-seed/$t" ] && seeds=("corpus-seed/$t")
    echo "fuzz/run.sh: running $t for ${secs}s" >&2
    # libFuzzer exits non-zero on a crash, a leak or a timeout; set -e turns that into failure.
    cargo fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1
done
echo "fuzz/run.sh: no crash in $(echo "$targets" | wc -w) target(s)" >&2
