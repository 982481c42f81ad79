#!/usr/bin/env bash
# Installs the Debian packages this project builds and tests with (as root), only if missing.
set -euo pipefail
pkgs=(containerd libseccomp-dev libelf-dev zlib1g-dev pkg-config make gcc busybox-static procps)
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
