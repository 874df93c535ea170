#!/usr/bin/env bash
# Fuzzes every target in fuzz_targets/ for a bounded time (FUZZ_SECONDS each,
# default 20), starting from the committed seeds in corpus/<target>/. What the
# fuzzer discovers goes to a scratch directory, so the committed corpus stays
# small; a crash leaves its input in artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"

# cargo-fuzz passes rustc the flags libFuzzer needs (-Zsanitizer=address, the
# sancov passes), which are nightly-only; the stable toolchain accepts them
# with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
# Outside the clone, beside the main build cache: the instrumented build is
# separate (other flags), and only a cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/tmp/webhookd-ci-target}-fuzz}"
# actix-router leaks route names on purpose; see lsan.supp.
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp:print_suppressions=0"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fetch --locked --quiet
# An unoptimised build: on 2 cores it takes about a third of the time of the
# optimised one (every dependency is instrumented), and a bounded run here is
# a check of the seeds and a short search, not a long campaign (README).
cargo fuzz build --dev

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target" "corpus/$target"
    log="$scratch/$target.log"
    dict=()
    if [ -f "dict/$target.dict" ]; then dict=(-dict="dict/$target.dict"); fi
    if cargo fuzz run --dev "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 "${dict[@]}" >"$log" 2>&1; then
        echo "fuzz $target: $(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' "$log")"
        passed=$((passed + 1))
    else
        tail -n 80 "$log"
        echo "fuzz $target: FAILED; the input is in fuzz/artifacts/$target/"
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
