#!/usr/bin/env bash
# Installs containerd-shim-nvidia-v2 on a host, idempotently:
#   - the binary into <host-root>/usr/local/bin,
#   - the shim config into <host-root>/etc/containerd-shim-nvidia/config.toml (kept if present
#     unless --force-config): --config FILE, else the binary's own Kubernetes profile
#     (`configure shim --profile kubernetes`),
#   - the "nvidia" CRI runtime handler in <host-root>/etc/containerd/config.toml, added by the
#     binary's `configure containerd` (TOML edited in place, comments and other settings kept,
#     the original file kept as config.toml.bak by the first change, a symlinked config's
#     target edited; config version 2 for containerd 1.6/1.7, 3 for 2.x when the file is new;
#     GPU requests forwarded as container annotations, never as pod annotations).
#   - with --docker: the "nvidia" runtime in <host-root>/etc/docker/daemon.json (the binary's
#     `configure docker`: refuses a Docker older than 23), and this binary linked as
#     nvidia-container-runtime-hook (<host-root>/usr/local/bin, what `docker run --gpus` needs)
#     and nvidia-cdi-hook (<host-root>/usr/bin, what the toolkit's CDI specs call) where no
#     program of that name is; relative links, so they hold on the host.
# It does not restart containerd (or Docker); --restart does, through the host's systemd (needs
# hostPID in a DaemonSet).
#
# usage: install.sh --binary FILE [--host-root DIR] [--config FILE] [--containerd-version 1|2]
#                   [--docker] [--force-config] [--restart]
set -euo pipefail

root=/ binary= config= cversion=1 force_config=0 restart=0 docker=0
while [ $# -gt 0 ]; do
  case "$1" in
    --host-root) root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --containerd-version) cversion=$2; shift 2 ;;
    --force-config) force_config=1; shift ;;
    --docker) docker=1; shift ;;
    --restart) restart=1; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$binary" ] || { echo "install.sh: --binary FILE is required" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 2; }
"$binary" -v >/dev/null || { echo "install.sh: $binary -v failed; not the shim?" >&2; exit 2; }
case "$cversion" in
  1) config_version=2 ;;
  2) config_version=3 ;;
  *) echo "install.sh: --containerd-version must be 1 or 2" >&2; exit 2 ;;
esac

bin_dir=$root/usr/local/bin
conf_dir=$root/etc/containerd-shim-nvidia
ctr_conf=$root/etc/containerd/config.toml
mkdir -p "$bin_dir" "$conf_dir"

# Replace the binary atomically: running shims keep their (old) inode.
install -m 0755 "$binary" "$bin_dir/.containerd-shim-nvidia-v2.new"
mv -f "$bin_dir/.containerd-shim-nvidia-v2.new" "$bin_dir/containerd-shim-nvidia-v2"

if [ ! -e "$conf_dir/config.toml" ] || [ "$force_config" = 1 ]; then
  if [ -n "$config" ]; then
    install -m 0644 "$config" "$conf_dir/config.toml"
  else
    "$binary" configure shim --profile kubernetes --output "$conf_dir/config.toml" --force
  fi
fi
# The ConfigPath option is the path on the host, whatever --host-root is here.
"$binary" configure containerd --config "$ctr_conf" --config-version "$config_version" \
  --runtime-name nvidia --config-path-option /etc/containerd-shim-nvidia/config.toml
echo "installed containerd-shim-nvidia-v2 into $bin_dir, config $conf_dir/config.toml, runtime nvidia in $ctr_conf"
if [ "$docker" = 1 ]; then
  # The installed binary runs it, so the hook links point at the installed copy.
  "$bin_dir/containerd-shim-nvidia-v2" configure docker --config "$root/etc/docker/daemon.json" \
    --runtime-name nvidia --config-path-option /etc/containerd-shim-nvidia/config.toml \
    --hook-dir "$bin_dir" --cdi-hook-path "$root/usr/bin/nvidia-cdi-hook"
fi

if [ "$restart" = 1 ]; then
  units=containerd
  [ "$docker" = 1 ] && units="containerd docker"
  if [ "$root" = / ]; then
    systemctl restart $units
  else
    # From a DaemonSet with hostPID: run the host's systemctl in the host's namespaces.
    nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart $units
  fi
fi
