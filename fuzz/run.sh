#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each, and exits non-zero if
# any of them finds a crash (a panic, a broken property, a sanitizer report, a hang or an
# out-of-memory). Not part of CI: `cargo test` runs the property tests of the same parsers.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 30, or $FUZZ_SECONDS
#   TARGET              default: every target of `cargo fuzz list`
#   $FUZZ_SANITIZER     address (default) or none (faster, finds panics only)
#
# Installs cargo-fuzz (pinned) under target/tools/cargo-fuzz on first use. Uses the nightly
# toolchain when rustup has one, else the default toolchain with RUSTC_BOOTSTRAP=1. Builds
# into target/fuzz; the corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>)
# and crashing inputs land in fuzz/artifacts/<target>; both are gitignored. Replay a crash
# with: PATH=$PWD/target/tools/cargo-fuzz/bin:$PATH cargo +nightly fuzz run --fuzz-dir fuzz \
#   --target-dir target/fuzz <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$fuzz_dir")"
cd "$root"

seconds="${1:-${FUZZ_SECONDS:-30}}"
if [ $# -gt 0 ]; then shift; fi
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...] (seconds: a positive integer)" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-address}"

cargo_fuzz_version=0.13.2
tools="$root/target/tools/cargo-fuzz"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into $tools"
    cargo install --locked cargo-fuzz --version "$cargo_fuzz_version" --root "$tools"
fi
export PATH="$tools/bin:$PATH"

toolchain=()
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    # cargo fuzz passes -Z flags (sanitizers); a stable toolchain takes them with this.
    export RUSTC_BOOTSTRAP=1
fi
fuzz=(cargo "${toolchain[@]}" fuzz)
common=(--fuzz-dir "$fuzz_dir" --target-dir "$root/target/fuzz" --sanitizer "$sanitizer")

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$fuzz_dir")
fi

echo "== building the fuzz targets with $(rustc "${toolchain[@]}" --version)"
"${fuzz[@]}" build "${common[@]}"

failed=()
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    [ -d "$fuzz_dir/seeds/$target" ] && dirs+=("$fuzz_dir/seeds/$target")
    # -timeout: one input running longer than 10 s is a hang; -rss_limit_mb is libFuzzer's own.
    if ! "${fuzz[@]}" run "${common[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "== $target FAILED" >&2
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed: ${failed[*]} (a crash saves its input in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "== ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
