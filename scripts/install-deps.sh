#!/usr/bin/env bash
# Installs the Debian packages this project builds and tests with (as root), only if missing.
set -euo pipefail
# protobuf-compiler builds the CRI client of the Kubernetes tests (k8s-cri);
# containernetworking-plugins gives their pods a network (bridge, host-local, loopback);
# podman and crun are a front door of the tests (bookworm's podman 4.3; Docker 26 and containerd
# 1.7 come unpacked from trixie's packages, see scripts/debian-packages.sh); libsystemd0 and
# libcap2 are libraries trixie's dockerd links.
pkgs=(containerd libseccomp-dev libelf-dev zlib1g-dev pkg-config make gcc busybox-static procps
  protobuf-compiler containernetworking-plugins podman crun libsystemd0 libcap2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.85) is required: install it with rustup" >&2; exit 1; }
