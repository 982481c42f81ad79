#!/usr/bin/env bash
# Installs containerd-shim-nvidia-v2 on a host, idempotently:
#   - the binary into <host-root>/usr/local/bin,
#   - the shim config into <host-root>/etc/containerd-shim-nvidia/config.toml (kept if present
#     unless --force-config),
#   - a containerd drop-in registering the "nvidia" CRI runtime handler, imported from
#     <host-root>/etc/containerd/config.toml (config version 2 for containerd 1.6/1.7, 3 for 2.x).
# It does not restart containerd; --restart does, through the host's systemd (needs hostPID in
# a DaemonSet).
#
# usage: install.sh --binary FILE [--host-root DIR] [--config FILE] [--containerd-version 1|2]
#                   [--force-config] [--restart]
set -euo pipefail

root=/ binary= config= cversion=1 force_config=0 restart=0
here=$(cd "$(dirname "$0")" && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    --host-root) root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --containerd-version) cversion=$2; shift 2 ;;
    --force-config) force_config=1; shift ;;
    --restart) restart=1; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$binary" ] || { echo "install.sh: --binary FILE is required" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 2; }
"$binary" -v >/dev/null || { echo "install.sh: $binary -v failed; not the shim?" >&2; exit 2; }
case "$cversion" in
  1) dropin_src=$here/../containerd/config-v2.toml ;;
  2) dropin_src=$here/../containerd/config-v3.toml ;;
  *) echo "install.sh: --containerd-version must be 1 or 2" >&2; exit 2 ;;
esac
[ -n "$config" ] || config=$here/../kubernetes/shim-config.toml

bin_dir=$root/usr/local/bin
conf_dir=$root/etc/containerd-shim-nvidia
ctr_conf=$root/etc/containerd/config.toml
dropin_dir=$root/etc/containerd/conf.d
dropin=$dropin_dir/nvidia-shim.toml
mkdir -p "$bin_dir" "$conf_dir" "$dropin_dir"

# Replace the binary atomically: running shims keep their (old) inode.
install -m 0755 "$binary" "$bin_dir/.containerd-shim-nvidia-v2.new"
mv -f "$bin_dir/.containerd-shim-nvidia-v2.new" "$bin_dir/containerd-shim-nvidia-v2"

if [ ! -e "$conf_dir/config.toml" ] || [ "$force_config" = 1 ]; then
  install -m 0644 "$config" "$conf_dir/config.toml"
fi
install -m 0644 "$dropin_src" "$dropin"

# containerd reads drop-ins only through `imports` in its main config.
import_line="imports = [\"/etc/containerd/conf.d/*.toml\"]"
if [ ! -e "$ctr_conf" ]; then
  printf 'version = %s\n%s\n' "$([ "$cversion" = 2 ] && echo 3 || echo 2)" "$import_line" > "$ctr_conf"
elif ! grep -q '/etc/containerd/conf.d/\*\.toml' "$ctr_conf"; then
  if grep -q '^imports *=' "$ctr_conf"; then
    echo "install.sh: $ctr_conf already has an imports line; add \"/etc/containerd/conf.d/*.toml\" to it" >&2
    exit 1
  fi
  tmp=$(mktemp "$ctr_conf.XXXXXX")
  awk -v line="$import_line" 'NR == 1 && /^version/ { print; print line; done = 1; next }
       NR == 1 { print line; done = 1 } { print }' "$ctr_conf" > "$tmp"
  mv -f "$tmp" "$ctr_conf"
fi
echo "installed containerd-shim-nvidia-v2 into $bin_dir, config $conf_dir/config.toml, drop-in $dropin"

if [ "$restart" = 1 ]; then
  if [ "$root" = / ]; then
    systemctl restart containerd
  else
    # From a DaemonSet with hostPID: run the host's systemctl in the host's namespaces.
    nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd
  fi
fi
