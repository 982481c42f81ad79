#!/usr/bin/env bash
# The real-GPU suite, packed here and run on a GPU host that can install nothing.
#
#   scripts/gpu-host-suite.sh pack DIR   (here, as root) builds the release shim, the
#       end-to-end test binary (e2e) and nvbench, the probe, and packs them with containerd,
#       ctr, runc, the Go runc shim and a busybox (../shared/gpu-host/pack.sh, or
#       $GPU_KIT_PACK) into DIR, and Docker 26 (Debian trixie's dockerd and docker, unpacked
#       by scripts/debian-packages.sh, stripped, with the libraries dockerd needs beyond
#       glibc) into DIR/docker.tar.xz; DIR must be ignored by git (.git/info/exclude) and named
#       in the device call's `carry`. Fails when DIR would not fit the 64 MiB a call carries.
#   bash DIR/gpu-host-suite.sh run DIR   (there) runs the e2e binary's gpu_host:: tests
#       against a private containerd with the shim's default configuration (the driver root is
#       found, NVML is used; `docker run --gpus all ... nvidia-smi` through the packed Docker),
#       then nvbench's GPU overhead, and prints one summary line.
set -euo pipefail
cmd=${1:?usage: gpu-host-suite.sh pack|run DIR}
dir=${2:?usage: gpu-host-suite.sh pack|run DIR}

pack() {
  local repo
  repo=$(cd "$(dirname "$0")/.." && pwd)
  cd "$repo"
  mkdir -p "$dir"
  bash "${GPU_KIT_PACK:-$repo/../shared/gpu-host/pack.sh}" "$dir" >/dev/null
  cargo build --locked --release -p containerd-shim-nvidia-v2
  cargo build --locked --release -p nvidia-shim-integration --bin nvbench
  local test_bin
  test_bin=$(cargo test --locked --release -p nvidia-shim-integration --test e2e --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "e2e":
        print(m["executable"])')
  [ -x "$test_bin" ] || { echo "gpu-host-suite: no e2e test binary" >&2; exit 1; }
  local w
  w=$(mktemp -d)
  trap 'rm -rf "$w"' RETURN
  mkdir -p "$w/ours"
  cp target/release/containerd-shim-nvidia-v2 target/release/nvbench /bin/busybox "$w/ours/"
  cp "$test_bin" "$w/ours/e2e"
  strip "$w/ours/e2e" "$w/ours/nvbench" 2>/dev/null || true
  # The probe, built here: the GPU host may have no C compiler.
  python3 - "$w/ours/nvprobe.c" <<'EOF'
import sys
src = open("integration/src/probe.rs").read()
sys.stdout = open(sys.argv[1], "w")
print(src[src.index('r#"') + 3:src.index('"#;')])
EOF
  cc -O2 -o "$w/ours/nvprobe" "$w/ours/nvprobe.c" -ldl
  tar cf - -C "$w" ours | xz -9e -T0 >"$dir/ours.tar.xz"
  pack_docker "$w/docker"
  tar cf - -C "$w" docker | xz -9e -T0 >"$dir/docker.tar.xz"
  cp "$0" "$dir/gpu-host-suite.sh"
  local size
  size=$(du -sb "$dir" | cut -f1)
  echo "gpu-host-suite: $dir holds $((size / 1048576)) MiB"
  if [ "$size" -gt $((60 * 1048576)) ]; then
    echo "gpu-host-suite: $dir leaves no room for the repository in the 64 MiB a call carries" >&2
    exit 1
  fi
}

# pack_docker ROOT: dockerd and docker (stripped) in ROOT/usr/{sbin,bin}, the libraries
# dockerd links beyond glibc (libsystemd and its own) in ROOT/lib, the version in
# ROOT/version: what the e2e tests take through NVIDIA_TEST_DOCKER_ROOT.
pack_docker() {
  local root=$1 unpacked=target/debian-docker version lib
  version=$(bash scripts/debian-packages.sh docker "$unpacked")
  mkdir -p "$root/usr/sbin" "$root/usr/bin" "$root/lib"
  cp "$unpacked/root/usr/sbin/dockerd" "$root/usr/sbin/"
  cp "$unpacked/root/usr/bin/docker" "$root/usr/bin/"
  strip "$root/usr/sbin/dockerd" "$root/usr/bin/docker"
  for lib in $(ldd "$root/usr/sbin/dockerd" | awk '$3 ~ /^\// { print $3 }'); do
    case $(basename "$lib") in
      libc.so.* | ld-linux*) ;;
      *) cp -L "$lib" "$root/lib/" ;;
    esac
  done
  echo "$version" >"$root/version"
}

run() {
  local started k o
  started=$(date +%s)
  mkdir -p /tmp/kit && tar xJf "$dir/kit.tar.xz" -C /tmp
  tar xJf "$dir/ours.tar.xz" -C /tmp
  tar xJf "$dir/docker.tar.xz" -C /tmp
  k=/tmp/kit
  o=/tmp/ours
  export PATH="$k/bin:$PATH" LD_LIBRARY_PATH="$k/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export NVIDIA_SHIM_BIN=$o/containerd-shim-nvidia-v2 NVIDIA_TEST_BUSYBOX=$o/busybox \
    NVIDIA_TEST_PROBE=$o/nvprobe NVIDIA_TEST_DOCKER_ROOT=/tmp/docker
  echo "== host: $(uname -r), $(nvidia-smi -L 2>/dev/null | head -3 || true)"
  echo "== containerd-shim-nvidia-v2 info"
  "$NVIDIA_SHIM_BIN" info 2>&1 || true
  echo "== containerd-shim-nvidia-v2 doctor (containerd checks fail here: no system containerd)"
  "$NVIDIA_SHIM_BIN" doctor 2>&1 || true
  local log=/tmp/gpu_host.log rc=0
  # Skips are counted from the list the tests write, as scripts/test.sh does (--nocapture
  # interleaves the tests' output lines).
  export NVIDIA_TEST_SKIPS=/tmp/gpu_host.skips
  rm -f "$NVIDIA_TEST_SKIPS"
  "$o/e2e" gpu_host:: --test-threads=2 --nocapture 2>&1 | tee "$log" || rc=$?
  echo "== nvbench --gpu-only --pairs 10"
  "$o/nvbench" --gpu-only --pairs 10 --shim "$NVIDIA_SHIM_BIN" 2>&1 || true
  local result skips
  result=$(grep '^test result:' "$log" | tail -1)
  skips=$(wc -l <"$NVIDIA_TEST_SKIPS" 2>/dev/null || echo 0)
  echo "GPU SUITE: ${result:-no result} (${skips} skipped) in $(($(date +%s) - started)) s"
  return "$rc"
}

case "$cmd" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: gpu-host-suite.sh pack|run DIR" >&2; exit 2 ;;
esac
