#!/usr/bin/env bash
# Runs every test: unit tests of all crates, then the end-to-end tests against a real, private
# containerd (as root; they skip with a reason otherwise). Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -p containerd-shim-nvidia-v2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Two test threads through the environment, not an argument: criterion benches run once in test
# mode and reject libtest's flags.
RUST_TEST_THREADS=2 cargo test --locked --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
