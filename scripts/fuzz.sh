#!/usr/bin/env bash
# Runs every cargo-fuzz target of core/fuzz for a bounded time (FUZZ_SECONDS each, 30 by
# default): the parsers that read container-controlled input (NVIDIA_* env values, requirement
# expressions, CDI specs, an image's ld.so.cache, an image's compat libcuda). Installs a nightly
# toolchain and cargo-fuzz through rustup and cargo when they are missing. A crash fails the
# script, leaving the input under core/fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/../core"
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-30}
if ! command -v rustup >/dev/null; then
  echo "fuzz: SKIPPED: no rustup to install a nightly toolchain with" >&2
  exit 2
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  # The corpus grows as the run finds new paths; only the committed seeds are kept by git.
  out=$(cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $t FAILED" >&2
    exit 1
  }
  echo "fuzz: $t: $(echo "$out" | grep -E '^#[0-9]+.*(DONE|pulse)' | tail -1 | sed 's/ *$//') (${seconds} s, no crash)"
done
