#!/usr/bin/env bash
# The main job: build the shim (release), start a private containerd with it on its PATH,
# import a small busybox image, run a container through io.containerd.nvidia.v2, print what
# happened, and stop everything it started. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --release -p containerd-shim-nvidia-v2 -p nvidia-shim-integration --bin containerd-shim-nvidia-v2 --bin nvtest-image

work=$(mktemp -d /tmp/nvdemo.XXXXXX)
ctd_pid=""
cleanup() {
  if [ -n "$ctd_pid" ]; then
    ctr -a "$work/containerd.sock" -n demo task kill -s SIGKILL demo1 >/dev/null 2>&1 || true
    kill "$ctd_pid" 2>/dev/null || true
    wait "$ctd_pid" 2>/dev/null || true
  fi
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin"
cp target/release/containerd-shim-nvidia-v2 "$work/bin/"
cat > "$work/config.toml" <<EOT
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
EOT
PATH="$work/bin:$PATH" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
ctr="ctr -a $work/containerd.sock -n demo"
for _ in $(seq 100); do $ctr version >/dev/null 2>&1 && break; sleep 0.1; done
echo "== private containerd $(containerd --version | awk '{print $3}') (pid $ctd_pid) in $work"
image=$(target/release/nvtest-image "$work/busybox.tar")
$ctr image import "$work/busybox.tar" >/dev/null
echo "== image $image imported"

shim=target/release/containerd-shim-nvidia-v2
gpu_env=()
gpu_line='echo "GPU: none"'
echo "== what this node offers to GPU containers (containerd-shim-nvidia-v2 info)"
if info=$($shim info 2>&1); then
  printf '%s\n' "$info" | sed 's/^/   /'
  echo "== requesting all GPUs (NVIDIA_VISIBLE_DEVICES=all)"
  gpu_env=(--env NVIDIA_VISIBLE_DEVICES=all)
  gpu_line='ls /dev | grep "^nvidia" | tr "\n" " " | sed "s/^/GPU device nodes: /"; echo; command -v nvidia-smi >/dev/null && nvidia-smi -L'
else
  echo "   $info"
  echo "== no usable NVIDIA driver on this machine, so the container runs WITHOUT a GPU."
  echo "   Why, with the fix for each problem (containerd-shim-nvidia-v2 doctor):"
  $shim doctor 2>/dev/null | grep -E '^(FAIL|WARN) +(kernel module|device nodes|driver libraries)' -A1 | sed 's/^/   /' || true
fi
echo "== ctr run --rm --runtime io.containerd.nvidia.v2 $image demo1 ..."
set +e
$ctr run --rm --runtime io.containerd.nvidia.v2 "${gpu_env[@]}" "$image" demo1 \
  sh -c "echo \"hello from \$(hostname), pid \$\$, kernel \$(uname -r)\"; $gpu_line; exit 3"
rc=$?
set -e
echo "== container exited with status $rc (expected 3)"
[ "$rc" -eq 3 ]
echo "== shim processes left: $(pgrep -fc "containerd-shim-nvidia-v2.*$work" || true)"
