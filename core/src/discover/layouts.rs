//! Driver installations as the common packagings lay them out, for tests: the file lists of
//! Debian's packages (`libcuda1`, `nvidia-smi`, ... with the links `nvidia-alternative`'s
//! maintainer script makes through update-alternatives), Ubuntu's and the NVIDIA runfile's flat
//! `/usr/lib/x86_64-linux-gnu`, RHEL's `/usr/lib64` (NVIDIA's CUDA repository packages), GKE's
//! `/usr/local/nvidia` (with its own glibc, as on the reference GPU host) and an aarch64
//! Debian host. Libraries are real ELF shared objects with the packages' SONAMEs, built with
//! `cc`; an aarch64 object is the same object with its `e_machine` set to `EM_AARCH64`.
//!
//! The Debian list was read with `dpkg-deb -c` from bookworm's 535 packages; the others follow
//! the packages' documented file lists. Paths are relative to the host's `/`; `{v}` is the
//! driver version.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::fixture::shared_object;
use super::Arch;

/// One entry of an installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A shared object at the path with the SONAME (`{v}` for the versioned file name).
    Lib(String, String),
    /// A symlink at the path pointing at the target.
    Link(String, String),
    /// An executable file.
    Exe(String),
    /// A data file.
    Data(String),
}

#[allow(non_snake_case)]
fn Lib(path: impl Into<String>, soname: impl Into<String>) -> Item {
    Item::Lib(path.into(), soname.into())
}

#[allow(non_snake_case)]
fn Link(path: impl Into<String>, target: impl Into<String>) -> Item {
    Item::Link(path.into(), target.into())
}

#[allow(non_snake_case)]
fn Exe(path: &str) -> Item {
    Item::Exe(path.into())
}

#[allow(non_snake_case)]
fn Data(path: &str) -> Item {
    Item::Data(path.into())
}

/// The libraries every layout below installs (by name) with their SONAMEs; `{v}`: SONAME =
/// file name.
pub const SONAMES: &[(&str, &str)] = &[
    ("libcuda", "libcuda.so.1"),
    ("libcudadebugger", "libcudadebugger.so.1"),
    ("libnvidia-ml", "libnvidia-ml.so.1"),
    ("libnvidia-cfg", "libnvidia-cfg.so.1"),
    ("libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1"),
    ("libnvidia-nvvm", "libnvidia-nvvm.so.4"),
    ("libnvidia-opencl", "libnvidia-opencl.so.1"),
    ("libnvidia-allocator", "libnvidia-allocator.so.1"),
    ("libnvcuvid", "libnvcuvid.so.1"),
    ("libnvidia-encode", "libnvidia-encode.so.1"),
    ("libvdpau_nvidia", "libvdpau_nvidia.so.1"),
    ("libEGL_nvidia", "libEGL_nvidia.so.0"),
    ("libGLX_nvidia", "libGLX_nvidia.so.0"),
    ("libGLESv2_nvidia", "libGLESv2_nvidia.so.2"),
    ("libnvidia-eglcore", "{v}"),
    ("libnvidia-glcore", "{v}"),
    ("libnvidia-glsi", "{v}"),
    ("libnvidia-tls", "{v}"),
    ("libnvidia-pkcs11-openssl3", "{v}"),
];

/// Debian bookworm (`contrib`/`non-free`): the real files in `nvidia/current`, reached from
/// `/usr/lib/x86_64-linux-gnu` through `/etc/alternatives`; the SONAME = file name libraries
/// directly in `/usr/lib/x86_64-linux-gnu`; `nvidia-smi` in `/usr/lib/nvidia/current` behind
/// `/usr/bin/nvidia-smi`; `libnvidia-cfg.so.1` linked into `.../nvidia/` only and
/// `libvdpau_nvidia.so.1` into `.../vdpau/` only.
pub fn debian() -> Vec<Item> {
    debian_flavour("current")
}

/// Debian's Tesla flavour (`nvidia-tesla-535-driver`): the same packages with their real files
/// in a flavour directory of their own, `nvidia/tesla-535`, which no library directory or ld
/// cache lists: libraries reached only through `.../nvidia/libnvidia-cfg.so.1` and
/// `.../vdpau/libvdpau_nvidia.so.1` are found beside libcuda's real file.
pub fn debian_tesla() -> Vec<Item> {
    debian_flavour("tesla-535")
}

/// [`debian`] with the real files in `nvidia/<flavour>`.
fn debian_flavour(flavour: &str) -> Vec<Item> {
    let mut items = vec![
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.{v}",
            "libcuda.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1",
            "libcuda.so.{v}",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so",
            "libcuda.so.1",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libcudadebugger.so.{v}",
            "libcudadebugger.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libcudadebugger.so.1",
            "libcudadebugger.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{v}",
            "libnvidia-ml.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
            "libnvidia-ml.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-cfg.so.{v}",
            "libnvidia-cfg.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-cfg.so.1",
            "libnvidia-cfg.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ptxjitcompiler.so.{v}",
            "libnvidia-ptxjitcompiler.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ptxjitcompiler.so.1",
            "libnvidia-ptxjitcompiler.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-nvvm.so.{v}",
            "libnvidia-nvvm.so.4",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-nvvm.so.4",
            "libnvidia-nvvm.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-opencl.so.{v}",
            "libnvidia-opencl.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-opencl.so.1",
            "libnvidia-opencl.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-allocator.so.{v}",
            "libnvidia-allocator.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-allocator.so.1",
            "libnvidia-allocator.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libvdpau_nvidia.so.{v}",
            "libvdpau_nvidia.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libvdpau_nvidia.so.1",
            "libvdpau_nvidia.so.{v}",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/vdpau/libvdpau_nvidia.so.1",
            "/etc/alternatives/nvidia--libvdpau_nvidia.so.1-x86_64-linux-gnu",
        ),
        Link(
            "etc/alternatives/nvidia--libvdpau_nvidia.so.1-x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libvdpau_nvidia.so.1",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvcuvid.so.{v}",
            "libnvcuvid.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvcuvid.so.1",
            "libnvcuvid.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-encode.so.{v}",
            "libnvidia-encode.so.1",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-encode.so.1",
            "libnvidia-encode.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libEGL_nvidia.so.{v}",
            "libEGL_nvidia.so.0",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libEGL_nvidia.so.0",
            "libEGL_nvidia.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libGLX_nvidia.so.{v}",
            "libGLX_nvidia.so.0",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libGLX_nvidia.so.0",
            "libGLX_nvidia.so.{v}",
        ),
        Lib(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libGLESv2_nvidia.so.{v}",
            "libGLESv2_nvidia.so.2",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/current/libGLESv2_nvidia.so.2",
            "libGLESv2_nvidia.so.{v}",
        ),
        Lib("usr/lib/x86_64-linux-gnu/libnvidia-eglcore.so.{v}", "{v}"),
        Lib("usr/lib/x86_64-linux-gnu/libnvidia-glcore.so.{v}", "{v}"),
        Lib("usr/lib/x86_64-linux-gnu/libnvidia-glsi.so.{v}", "{v}"),
        Lib("usr/lib/x86_64-linux-gnu/libnvidia-tls.so.{v}", "{v}"),
        Lib(
            "usr/lib/x86_64-linux-gnu/libnvidia-pkcs11-openssl3.so.{v}",
            "{v}",
        ),
        Exe("usr/lib/nvidia/current/nvidia-smi"),
        Exe("usr/bin/nvidia-cuda-mps-control"),
        Exe("usr/sbin/nvidia-cuda-mps-server"),
        Data("lib/firmware/nvidia/{v}/gsp_ga10x.bin"),
        Data("lib/firmware/nvidia/{v}/gsp_tu10x.bin"),
        Data("usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
        Data("usr/share/vulkan/icd.d/nvidia_icd.json"),
        // nvidia-alternative's links (update-alternatives: link -> /etc/alternatives/name ->
        // the real path).
        Link("usr/lib/nvidia/nvidia", "/etc/alternatives/nvidia"),
        Link("etc/alternatives/nvidia", "/usr/lib/nvidia/current"),
        Link("usr/bin/nvidia-smi", "/etc/alternatives/nvidia--nvidia-smi"),
        Link(
            "etc/alternatives/nvidia--nvidia-smi",
            "/usr/lib/nvidia/current/nvidia-smi",
        ),
        Link(
            "usr/lib/x86_64-linux-gnu/nvidia/libnvidia-cfg.so.1",
            "/etc/alternatives/nvidia--libnvidia-cfg.so.1-x86_64-linux-gnu",
        ),
        Link(
            "etc/alternatives/nvidia--libnvidia-cfg.so.1-x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-cfg.so.1",
        ),
    ];
    for link in [
        "libcuda.so.1",
        "libcuda.so",
        "libcudadebugger.so.1",
        "libnvidia-ml.so.1",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-nvvm.so.4",
        "libnvidia-opencl.so.1",
        "libnvidia-allocator.so.1",
        "libnvcuvid.so.1",
        "libnvidia-encode.so.1",
        "libEGL_nvidia.so.0",
        "libGLX_nvidia.so.0",
        "libGLESv2_nvidia.so.2",
    ] {
        alternative(&mut items, link);
    }
    let dir = format!("nvidia/{flavour}");
    let moved = |s: &str| s.replace("nvidia/current", &dir);
    items
        .into_iter()
        .map(|i| match i {
            Item::Lib(p, s) => Item::Lib(moved(&p), s),
            Item::Link(p, t) => Item::Link(moved(&p), moved(&t)),
            Item::Exe(p) => Item::Exe(moved(&p)),
            Item::Data(p) => Item::Data(moved(&p)),
        })
        .collect()
}

/// `usr/lib/x86_64-linux-gnu/<name> -> /etc/alternatives/nvidia--<name>-x86_64-linux-gnu ->
/// .../nvidia/current/<name>`.
fn alternative(items: &mut Vec<Item>, name: &str) {
    let alt = format!("/etc/alternatives/nvidia--{name}-x86_64-linux-gnu");
    items.push(Link(
        format!("usr/lib/x86_64-linux-gnu/{name}"),
        alt.clone(),
    ));
    items.push(Link(
        alt.trim_start_matches('/'),
        format!("/usr/lib/x86_64-linux-gnu/nvidia/current/{name}"),
    ));
}

/// Every library of [`SONAMES`] as a real file `<dir>/<name>.so.{v}` with its SONAME link and,
/// for libcuda, the `.so` link, as the NVIDIA runfile, Ubuntu's `libnvidia-*-<branch>` packages
/// and NVIDIA's RHEL packages install them; `libvdpau_nvidia` in `<dir>/vdpau/` when
/// `vdpau_subdir` (where VDPAU's loader looks, and no ld cache lists).
fn flat_libraries(dir: &str, vdpau_subdir: bool) -> Vec<Item> {
    let mut items = Vec::new();
    for (name, soname) in SONAMES {
        let dir = if vdpau_subdir && *name == "libvdpau_nvidia" {
            format!("{dir}/vdpau")
        } else {
            dir.to_owned()
        };
        items.push(Lib(format!("{dir}/{name}.so.{{v}}"), *soname));
        if *soname != "{v}" {
            items.push(Link(format!("{dir}/{soname}"), format!("{name}.so.{{v}}")));
        }
    }
    items.push(Link(format!("{dir}/libcuda.so"), "libcuda.so.1"));
    items
}

/// Ubuntu (`libnvidia-compute-<branch>`, `nvidia-utils-<branch>`) and the NVIDIA runfile:
/// real files in `/usr/lib/x86_64-linux-gnu`, binaries in `/usr/bin`.
pub fn flat() -> Vec<Item> {
    let mut items = flat_libraries("usr/lib/x86_64-linux-gnu", true);
    items.extend([
        Exe("usr/bin/nvidia-smi"),
        Exe("usr/bin/nvidia-debugdump"),
        Exe("usr/bin/nvidia-cuda-mps-control"),
        Exe("usr/bin/nvidia-cuda-mps-server"),
        Exe("usr/bin/nvidia-persistenced"),
        Data("lib/firmware/nvidia/{v}/gsp_ga10x.bin"),
        Data("usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
    ]);
    items
}

/// RHEL with NVIDIA's CUDA repository (`nvidia-driver-cuda-libs`, `nvidia-driver-NVML`,
/// `nvidia-driver-libs`): `/usr/lib64`, firmware under `/usr/lib/firmware`.
pub fn rhel() -> Vec<Item> {
    let mut items = flat_libraries("usr/lib64", true);
    items.extend([
        Exe("usr/bin/nvidia-smi"),
        Exe("usr/bin/nvidia-cuda-mps-control"),
        Exe("usr/bin/nvidia-cuda-mps-server"),
        Data("usr/lib/firmware/nvidia/{v}/gsp_ga10x.bin"),
        Data("usr/share/vulkan/icd.d/nvidia_icd.json"),
        Data("etc/ld.so.conf"),
    ]);
    items
}

/// GKE's `/usr/local/nvidia` (as on the reference GPU host): `lib64` with `lib -> lib64`,
/// `bin`, `firmware`, `share`, and a separate glibc that must never be injected. Used as a
/// driver root of its own, or as `/` with the host's `/lib` links into it.
pub fn usr_local_nvidia() -> Vec<Item> {
    let mut items = flat_libraries("usr/local/nvidia/lib64", false);
    items.extend([
        Link("usr/local/nvidia/lib", "lib64"),
        Exe("usr/local/nvidia/bin/nvidia-smi"),
        Exe("usr/local/nvidia/bin/nvidia-debugdump"),
        Exe("usr/local/nvidia/bin/nvidia-persistenced"),
        Exe("usr/local/nvidia/bin/nvidia-cuda-mps-control"),
        Exe("usr/local/nvidia/bin/nvidia-cuda-mps-server"),
        Lib("usr/local/nvidia/glibc/libc.so.6", "libc.so.6"),
        Lib("usr/local/nvidia/glibc/libm.so.6", "libm.so.6"),
        Lib("usr/local/nvidia/glibc/libdl.so.2", "libdl.so.2"),
        Lib(
            "usr/local/nvidia/glibc/ld-linux-x86-64.so.2",
            "ld-linux-x86-64.so.2",
        ),
        Data("usr/local/nvidia/firmware/nvidia/{v}/gsp_ga10x.bin"),
        Data("usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json"),
        Data("usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"),
        // The host's side: /lib links into the squashfs, and its ld.so.conf names lib64.
        Link(
            "usr/lib/libcuda.so.1",
            "/usr/local/nvidia/lib64/libcuda.so.1",
        ),
        Link(
            "usr/lib/libnvidia-ml.so.1",
            "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
        ),
        Data("etc/ld.so.conf.d/nvidia.conf"),
    ]);
    items
}

/// Debian on aarch64 (GH200/GB200 hosts): the same packages in `aarch64-linux-gnu`.
pub fn debian_aarch64() -> Vec<Item> {
    let arm = |s: &str| s.replace("x86_64-linux-gnu", "aarch64-linux-gnu");
    debian()
        .into_iter()
        .map(|i| match i {
            Item::Lib(p, s) => Item::Lib(arm(&p), s),
            Item::Link(p, t) => Item::Link(arm(&p), arm(&t)),
            Item::Exe(p) => Item::Exe(arm(&p)),
            Item::Data(p) => Item::Data(arm(&p)),
        })
        .collect()
}

/// Writes `items` for driver `version` under `root`, with shared objects of `arch`.
pub fn install(root: &Path, items: &[Item], version: &str, arch: Arch) {
    let v = |s: &str| s.replace("{v}", version);
    let make_dir = |p: &Path| {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
    };
    for item in items {
        match item {
            Item::Lib(path, soname) => {
                let path = root.join(v(path));
                let soname = if soname == "{v}" {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned()
                } else {
                    v(soname)
                };
                make_dir(&path);
                let mut bytes = std::fs::read(shared_object(&soname)).expect("read object");
                if arch == Arch::Aarch64 {
                    // e_machine, little-endian, at offset 18.
                    bytes[18..20].copy_from_slice(&arch.elf_machine().to_le_bytes());
                }
                std::fs::write(&path, bytes).expect("write library");
            }
            Item::Link(path, target) => {
                let path = root.join(v(path));
                make_dir(&path);
                std::os::unix::fs::symlink(v(target), &path).expect("symlink");
            }
            Item::Exe(path) => {
                let path = root.join(v(path));
                make_dir(&path);
                std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write binary");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
            Item::Data(path) => {
                let path = root.join(v(path));
                make_dir(&path);
                let text = match path.file_name().and_then(|n| n.to_str()) {
                    Some("ld.so.conf") => "/usr/lib64\n",
                    Some("nvidia.conf") => "/usr/local/nvidia/lib64\n",
                    _ => "{}\n",
                };
                std::fs::write(&path, text).expect("write data file");
            }
        }
    }
}
