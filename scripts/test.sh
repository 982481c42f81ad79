#!/usr/bin/env bash
# Runs every test: unit tests of all crates, then the end-to-end tests against a real, private
# containerd (as root; they skip with a reason otherwise). GPU tests skip without /dev/nvidiactl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -p containerd-shim-nvidia-v2
cargo test --locked --workspace -- --test-threads=2
