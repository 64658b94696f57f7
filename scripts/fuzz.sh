#!/usr/bin/env bash
# scripts/fuzz.sh: builds the cargo-fuzz targets in fuzz/ and runs each for
# a bounded time, both at once (one core each), failing on any crash.
#
#   link_parser    savestream_shared::link::TelegramLink::parse
#   config_parser  savestream_shared::config::Config::from_toml_str
#
# Usage: scripts/fuzz.sh [SECONDS]   (default FUZZ_SECONDS or 60 per target)
#
# libFuzzer builds need nightly compiler flags (-Z sanitizer, coverage
# passes). The machine's toolchain is stable, and no other can be fetched,
# so the script runs cargo-fuzz on the default (stable) toolchain with
# RUSTC_BOOTSTRAP=1, which unlocks those flags; it works with this repo's
# stable rustc. Set FUZZ_TOOLCHAIN=nightly to use a nightly toolchain
# instead, if one is installed. Needs `cargo install cargo-fuzz`.
#
# The instrumented build of savestream-shared and its dependencies takes
# about four minutes from scratch on two cores, so it is kept between runs
# in FUZZ_TARGET_DIR (default ~/.cache/savestream/fuzz-target, outside the
# work tree: CI's fresh clones reuse it); later builds take seconds.
#
# A crash leaves its input in fuzz/artifacts/<target>/; reproduce it with
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>
# New inputs go to a temp corpus (the seeds in fuzz/seeds/ are read, never
# written), so a run leaves the work tree clean.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-${FUZZ_SECONDS:-60}}
toolchain=${FUZZ_TOOLCHAIN:-}
targets=(link_parser config_parser)
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/savestream/fuzz-target}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
fuzz() {
    if [[ -z $toolchain ]]; then
        RUSTC_BOOTSTRAP=1 cargo fuzz "$@"
    else
        cargo "+$toolchain" fuzz "$@"
    fi
}

start=$(date +%s)
fuzz build -O
echo "built the fuzz targets in $(($(date +%s) - start)) s (${toolchain:-default toolchain, RUSTC_BOOTSTRAP=1})"

work=$(mktemp -d -t savestream-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
pids=()
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus-$target"
    fuzz run -O "$target" "$work/corpus-$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$work/$target.log" 2>&1 &
    pids+=($!)
done
failed=0
for index in "${!targets[@]}"; do
    target=${targets[$index]}
    if wait "${pids[$index]}"; then
        runs=$(grep -Eo 'Done [0-9]+ runs' "$work/$target.log" | tail -n 1 || true)
        echo "$target: no crash in ${seconds} s (${runs:-no run count})"
    else
        failed=1
        echo "$target: FAILED; its log ends:" >&2
        tail -n 60 "$work/$target.log" >&2
    fi
done
exit "$failed"
