#!/usr/bin/env bash
# Unpacks Debian bookworm's packaged NVIDIA driver userspace (contrib/non-free) into DIR/root,
# as a Debian host with the driver installed has it, for the real-driver tests:
#   - the .deb files are fetched with apt through a private configuration under DIR/apt (its own
#     sources list, lists and cache; the archive's URI is the one the host's apt sources give
#     for bookworm), so the host's apt sources and packages stay untouched;
#   - each is unpacked with dpkg-deb -x;
#   - nvidia-alternative's own maintainer script makes the alternatives links
#     (/usr/lib/x86_64-linux-gnu/libcuda.so.1 -> /etc/alternatives/... -> nvidia/current/...),
#     run with update-alternatives --root DIR/root; only the paths it tests and changes are
#     prefixed with the root;
#   - ldconfig -r builds the root's /etc/ld.so.cache.
# Prints the driver version. Reuses DIR/root when it is complete (DIR/ready), so a second run
# needs no network. Needs root (dpkg-deb keeps owners, ldconfig -r chroots).
#
# usage: scripts/debian-nvidia-driver.sh DIR
set -euo pipefail
. "$(dirname "$0")/debian-archive.sh"
debian_unpack_dir "${1:?usage: $0 DIR}"
rm -rf "$dir/root" "$dir/debs" "$dir/ctl"
mkdir -p "$dir/debs" "$dir/ctl" "$dir/root"
# The archives are the ones the host's apt sources name for bookworm and bookworm-security.
archive=$(debian_archive_uri bookworm)
security=$(debian_archive_uri bookworm-security 2>/dev/null || true)
key=/usr/share/keyrings/debian-archive-keyring.gpg
components="contrib non-free non-free-firmware"
sources="deb [signed-by=$key] $archive bookworm $components
deb [signed-by=$key] $archive bookworm-updates $components"
if [ -n "$security" ]; then
  sources+=$'\n'"deb [signed-by=$key] $security bookworm-security $components"
fi
echo "debian-nvidia-driver: fetching the package lists from $archive (private apt configuration in $dir/apt)" >&2
debian_apt_init "$dir" "$sources"
# The userspace of the nvidia-driver metapackage's dependency tree (without the kernel module,
# the X.Org driver and the settings tool), plus the firmware and the common files of the ICDs.
pkgs=(
  libcuda1 libcudadebugger1 libnvidia-ml1 nvidia-smi libnvidia-cfg1 libnvidia-ptxjitcompiler1
  libnvidia-nvvm4 nvidia-opencl-icd nvidia-opencl-common libnvidia-allocator1 libnvcuvid1
  libnvidia-encode1 libnvidia-opticalflow1 libnvidia-fbc1 libnvidia-ngx1
  libegl-nvidia0 libglx-nvidia0 libgles-nvidia1 libgles-nvidia2 libnvidia-eglcore
  libnvidia-glcore libnvidia-glvkspirv libnvidia-rtcore libnvidia-pkcs11-openssl3
  nvidia-egl-icd nvidia-egl-common nvidia-vulkan-icd nvidia-vulkan-common
  firmware-nvidia-gsp nvidia-alternative nvidia-cuda-mps
)
echo "debian-nvidia-driver: downloading ${#pkgs[@]} packages" >&2
debian_download "$dir/debs" "${pkgs[@]}"
version=$(dpkg-deb -f "$dir"/debs/libcuda1_*.deb Version)
version=${version%%-*}
for deb in "$dir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$dir/root"
done
for deb in "$dir"/debs/nvidia-alternative_*.deb; do
  dpkg-deb -e "$deb" "$dir/ctl/nvidia-alternative"
done
# nvidia-alternative's postinst, as dpkg runs it on its trigger, with its file tests and
# update-alternatives pointed at the root; triggers and conffile moves are dpkg's business.
postinst="$dir/ctl/nvidia-alternative/postinst"
sed -e 's#\[ -f "${source_path}" \] && \[ -d "$(dirname "${target_link}")" \]#[ -f "$DPKG_ROOT${source_path}" ] \&\& [ -d "$DPKG_ROOT$(dirname "${target_link}")" ]#' \
    -e 's#^\(\s*\)update-alternatives #\1update-alternatives --root "$DPKG_ROOT" #' \
    -e 's#^\(\s*\)dpkg-trigger #\1: #' \
    -e 's#^dpkg-maintscript-helper #: #' \
    -e 's#\[ -f /usr/include/nvml.h \]#[ -f "$DPKG_ROOT/usr/include/nvml.h" ]#' \
    "$postinst" >"$postinst.rooted"
mkdir -p "$dir/root/etc/alternatives" "$dir/root/var/lib/dpkg/alternatives" "$dir/root/var/log"
DPKG_ROOT="$dir/root" sh "$postinst.rooted" triggered >&2
link="$dir/root/usr/lib/x86_64-linux-gnu/libcuda.so.1"
target=$(readlink "$link" || true)
case "$target" in
  /etc/alternatives/*) ;;
  *) echo "debian-nvidia-driver: the alternatives were not made ($link -> '$target')" >&2; exit 1 ;;
esac
printf 'include /etc/ld.so.conf.d/*.conf\n' >"$dir/root/etc/ld.so.conf"
ldconfig -r "$dir/root"
echo "$version" >"$dir/ready"
echo "debian-nvidia-driver: $version unpacked in $dir/root" >&2
echo "$version"
