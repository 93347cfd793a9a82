#!/usr/bin/env bash
# Instructions per GetOfflineLicense call of the facade, counted by valgrind's callgrind against
# the emulator: (instructions after 2,500 calls - after 500 calls) / 2,000, user space only.
# Callgrind counts do not depend on other load on the machine, unlike times.
#
# usage: benches/instructions.sh [loadgen options...]   e.g. --callgrind-calls 5000
#
# Installs valgrind with apt-get when it is missing (as root), builds the facade and the load
# generator (release), runs `loadgen --instructions-only`, keeps the JSON report in
# $TARGET/loadgen/instructions.json and prints the figure. Exit status 1 when it cannot be
# measured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing valgrind" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
    else
        echo "valgrind is not installed: apt-get install valgrind (as root)" >&2
        exit 1
    fi
fi

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin msstore-facade --example loadgen >&2
mkdir -p "$TARGET/loadgen"
REPORT="$TARGET/loadgen/instructions.json"
"$TARGET/release/examples/loadgen" --instructions-only --json-out "$REPORT" "$@" >/dev/null

# Only the figure itself starts a line with "instructions_per_call": (the notes quote it inside
# a string).
IPC=$(sed -n 's/^ *"instructions_per_call": \([0-9.]*\),\{0,1\}$/\1/p' "$REPORT" | head -1)
if [ -z "$IPC" ]; then
    echo "instructions per call not measured; see \"notes\" in $REPORT" >&2
    exit 1
fi
echo "instructions per GetOfflineLicense call: $IPC"
