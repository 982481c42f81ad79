#!/usr/bin/env bash
# Unpacks the front doors of the end-to-end tests from Debian trixie's packages into DIR/root,
# for tests on a bookworm host (their binaries need libc6 >= 2.34, which bookworm has):
#   docker        docker.io (dockerd, docker-proxy, docker-init -> tini-static), docker-cli
#                 (docker) and tini: Docker 26, which runs containerd shims by runtime type;
#   containerd17  containerd 1.7 (containerd, ctr, containerd-shim-runc-v2), with CRI's CDI.
# The archive's URI is the one the host's apt sources give for its release (and the security
# archive's for trixie-security); the .deb files are fetched by apt through a private
# configuration under DIR/apt and unpacked with dpkg-deb -x, so the host's apt sources and
# packages stay untouched. Fails, naming them, when a binary needs a library the host lacks.
# Idempotent: DIR/ready holds the version and a second run needs no network; runs for one DIR
# are serialised with flock. Prints the version. Needs root (dpkg-deb keeps owners).
#
# usage: scripts/debian-packages.sh docker|containerd17 DIR
set -euo pipefail
what=${1:?usage: $0 docker|containerd17 DIR}
dir=${2:?usage: $0 docker|containerd17 DIR}
case $what in
  docker)
    pkgs=(docker.io docker-cli tini)
    main=docker.io
    bins=(usr/sbin/dockerd usr/bin/docker usr/sbin/docker-proxy usr/bin/tini-static)
    ;;
  containerd17)
    pkgs=(containerd)
    main=containerd
    bins=(usr/bin/containerd usr/bin/ctr usr/bin/containerd-shim-runc-v2)
    ;;
  *)
    echo "usage: $0 docker|containerd17 DIR" >&2
    exit 2
    ;;
esac
. "$(dirname "$0")/debian-archive.sh"
debian_unpack_dir "$dir"
started=$SECONDS
archive=$(debian_archive_uri)
security=$(debian_archive_uri "$(debian_codename)-security" 2>/dev/null || true)
key=/usr/share/keyrings/debian-archive-keyring.gpg
sources="deb [signed-by=$key] $archive trixie main"
if [ -n "$security" ]; then
  sources+=$'\n'"deb [signed-by=$key] $security trixie-security main"
fi
rm -rf "$dir/root" "$dir/debs"
mkdir -p "$dir/debs" "$dir/root"
echo "debian-packages: fetching trixie's package lists from $archive (private apt configuration in $dir/apt)" >&2
debian_apt_init "$dir" "$sources"
echo "debian-packages: downloading ${pkgs[*]}" >&2
debian_download "$dir/debs" "${pkgs[@]}"
for deb in "$dir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$dir/root"
done
missing=()
for b in "${bins[@]}"; do
  [ -x "$dir/root/$b" ] || { echo "debian-packages: $b is not in ${pkgs[*]}" >&2; exit 1; }
  while read -r lib _; do
    missing+=("$lib (for $b)")
  done < <(ldd "$dir/root/$b" 2>/dev/null | awk '/not found/ { print $1 }')
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "debian-packages: libraries this host lacks: ${missing[*]}" >&2
  exit 1
fi
version=$(dpkg-deb -f "$dir"/debs/"${main}"_*.deb Version)
# The package lists and the .deb files are not needed once unpacked.
rm -rf "$dir/debs" "$dir/apt"
echo "$version" >"$dir/ready"
echo "debian-packages: $main $version unpacked in $dir/root ($(du -sh "$dir/root" | cut -f1), $((SECONDS - started)) s)" >&2
echo "$version"
