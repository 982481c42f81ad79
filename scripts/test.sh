#!/usr/bin/env bash
# Runs every test: unit tests of all crates, then the end-to-end tests against a real, private
# containerd (as root; they skip with a reason otherwise). Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -p containerd-shim-nvidia-v2
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
# Debian's packaged NVIDIA driver for the real-driver tests (fetched once, private apt config);
# if this fails, those tests fail with its message.
bash scripts/debian-nvidia-driver.sh target/debian-nvidia >/dev/null ||
  echo "warning: Debian's NVIDIA packages could not be fetched; the real-driver tests will fail" >&2
# Debian trixie's Docker 26 and containerd 1.7 for the front-door tests (fetched once, private apt
# configuration, apt retries); if this fails, those tests SKIP with its message.
bash scripts/debian-packages.sh docker target/debian-docker >/dev/null ||
  echo "warning: Debian trixie's Docker could not be fetched; the Docker tests will skip" >&2
bash scripts/debian-packages.sh containerd17 target/debian-containerd17 >/dev/null ||
  echo "warning: Debian trixie's containerd 1.7 could not be fetched; its tests will skip" >&2
set +e
# Two test threads through the environment, not an argument: criterion benches run once in test
# mode and reject libtest's flags.
NVIDIA_TEST_SKIPS=$skips RUST_TEST_THREADS=2 cargo test --locked --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The fuzz targets of the parsers that read container-controlled input, 30 s each.
bash scripts/fuzz.sh
frc=$?
set -e
case $frc in
  0) ;;
  2) echo "fuzz: skipped (see above)" ;;
  *) rc=1 ;;
esac
# A test that could not run here (no GPU) returns early: libtest counts it as passed, so the
# skips are listed and taken out of the passes.
if [ -s "$skips" ]; then
  echo "skipped (not counted as passed):"
  sed 's/^/  /' "$skips"
fi
awk -v s="$(wc -l <"$skips")" '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d skipped, %d failed\n", p - s, s, f }' "$log"
exit "$rc"
