#!/usr/bin/env bash
# A short coverage-guided fuzz pass over every cargo-fuzz target in fuzz/; exits non-zero if any
# target crashes (a panic, a failed invariant, a sanitizer report, a timeout or running out of
# memory).
#
# Usage: .ci/fuzz.sh [seconds-per-target] [target...]
#   seconds-per-target  default 20 (or $OUTBOXD_FUZZ_SECONDS); 0 skips the pass
#   target...           default: every target in fuzz/Cargo.toml
#   OUTBOXD_SKIP_FUZZ=1 skips the pass (for a CI run that has no time for it)
#
# Cost on the 2-core machine: installing cargo-fuzz takes about 25 s, building the targets about
# 3 minutes from scratch (sanitizer builds of every dependency; later builds reuse fuzz/target),
# then the given seconds per target.
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, so no other toolchain is needed. Each target starts from its
# checked-in seeds (fuzz/corpus/<target>/, read-only here) and writes what it discovers to a
# scratch corpus, so the repository's corpus stays small. A crashing input is kept under
# fuzz/artifacts/<target>/; to keep it as a regression, copy it to fuzz/regressions/<target>/ and
# fuzz/corpus/<target>/, where tests/fuzz_corpus.rs replays it on every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${OUTBOXD_FUZZ_SECONDS:-20}}"
shift $(( $# > 0 ? 1 : 0 ))
if [[ "${OUTBOXD_SKIP_FUZZ:-0}" == 1 || "$seconds" == 0 ]]; then
    echo "fuzz: skipped"
    exit 0
fi

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version"
    started=$SECONDS
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
    echo "fuzz: cargo-fuzz installed in $(( SECONDS - started )) s"
fi

export RUSTC_BOOTSTRAP=1
if (( $# > 0 )); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Debug assertions (and with them overflow checks) stay on: the broker and timer wheel check
# their own invariants with debug_assert!. OUTBOXD_FUZZ_SANITIZER (default address) picks the
# sanitizer; `none` builds in about half the time, which CI uses to stay within its budget (the
# project's own code has no unsafe, so AddressSanitizer mostly watches dependencies).
sanitizer="${OUTBOXD_FUZZ_SANITIZER:-address}"
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
started=$SECONDS
cargo fuzz build --debug-assertions --sanitizer "$sanitizer"
echo "fuzz: targets built in $(( SECONDS - started )) s"

# The binaries just built are run directly rather than through `cargo fuzz run`, which would
# check (and, if a source file changed meanwhile, redo) the build before every target.
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$host/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
    echo "== fuzzing $target for $seconds s"
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    log="$scratch/$target.log"
    # -timeout: an input that takes 10 s is a hang, not a slow case (targets take milliseconds).
    # -rss_limit_mb: decoders must refuse huge lengths instead of allocating them.
    if "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "$scratch/$target" "fuzz/corpus/$target" >"$log" 2>&1; then
        status=ok
    else
        status=CRASHED
        failed+=("$target")
        tail -n 60 "$log"
    fi
    executions="$(grep -o 'number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -n 1)"
    coverage="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')"
    echo "fuzz: $target $status, ${executions:-?} executions, coverage ${coverage:-?} edges"
done

if (( ${#failed[@]} > 0 )); then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ran $seconds s each without a crash"
