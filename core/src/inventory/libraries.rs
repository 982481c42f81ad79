//! The driver's libraries: their names and capability groups (libnvidia-container's tables),
//! and what the host's library search found. The search itself (the host's) goes as the
//! toolkit's does: first the driver root's `ld.so.cache`, then the library directories of the
//! architecture, following symlinks (Debian's alternatives) to the real file. A library is taken
//! when its real file is named `<name>.so.<driver version>` and is an ELF object of the
//! architecture; it is injected in the directory where it was found (the cache's or the
//! directory's path), under its real file name, so `/usr/lib/x86_64-linux-gnu/libcuda.so.1 ->
//! ... -> nvidia/current/libcuda.so.535.261.03` gives
//! `/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03` in the container.

use std::path::PathBuf;

use crate::request::{Capabilities, Capability};

/// A driver library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverLibrary {
    /// The real file on the host, e.g.
    /// `/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.261.03`.
    pub path: PathBuf,
    /// Where it is mounted in the container, e.g.
    /// `/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03`.
    pub container_path: PathBuf,
    /// Its SONAME, e.g. `libcuda.so.1`.
    pub soname: Option<String>,
    /// The capability group it belongs to.
    pub group: LibraryGroup,
}

impl DriverLibrary {
    /// The library's name without `.so...` (`libcuda`).
    pub fn name(&self) -> &str {
        self.container_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once(".so").map(|(stem, _)| stem))
            .unwrap_or_default()
    }
}

/// libnvidia-container's library groups.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum LibraryGroup {
    /// NVML and friends.
    Utility,
    /// CUDA, OpenCL, PTX JIT.
    Compute,
    /// Video codecs.
    Video,
    /// OpenGL / EGL / Vulkan.
    Graphics,
    /// NGX.
    Ngx,
}

impl LibraryGroup {
    /// Whether a container with these capabilities gets this group (`video` brings compute
    /// libraries, `display` brings graphics ones).
    pub fn wanted(self, caps: &Capabilities) -> bool {
        match self {
            Self::Utility => caps.has(Capability::Utility),
            Self::Compute => caps.needs_compute(),
            Self::Video => caps.has(Capability::Video),
            Self::Graphics => caps.needs_graphics(),
            Self::Ngx => caps.has(Capability::Ngx),
        }
    }
}

/// Library names per group, from libnvidia-container's `nvc_info.c`.
pub const LIBRARIES: &[(LibraryGroup, &[&str])] = &[
    (
        LibraryGroup::Utility,
        &["libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"],
    ),
    (
        LibraryGroup::Compute,
        &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-opencl",
            "libnvidia-gpucomp",
            "libnvidia-ptxjitcompiler",
            "libnvidia-fatbinaryloader",
            "libnvidia-allocator",
            "libnvidia-compiler",
            "libnvidia-pkcs11",
            "libnvidia-pkcs11-openssl3",
            "libnvidia-nvvm",
            "libnvidia-tileiras",
        ],
    ),
    (
        LibraryGroup::Video,
        &[
            "libvdpau_nvidia",
            "libnvidia-encode",
            "libnvidia-opticalflow",
            "libnvcuvid",
        ],
    ),
    (
        LibraryGroup::Graphics,
        &[
            "libnvidia-eglcore",
            "libnvidia-glcore",
            "libnvidia-tls",
            "libnvidia-glsi",
            "libnvidia-fbc",
            "libnvidia-ifr",
            "libnvidia-rtcore",
            "libnvoptix",
            "libGLX_nvidia",
            "libEGL_nvidia",
            "libGLESv2_nvidia",
            "libGLESv1_CM_nvidia",
            "libnvidia-glvkspirv",
            "libnvidia-cbl",
        ],
    ),
    (LibraryGroup::Ngx, &["libnvidia-ngx"]),
];

/// The library each capability cannot do without: a root whose driver version is known but
/// that lacks it fails the request instead of giving a container that cannot use the GPU.
pub const CORE_LIBRARIES: &[(Capability, &str)] = &[
    (Capability::Compute, "libcuda"),
    (Capability::Utility, "libnvidia-ml"),
];

/// The group of driver library `name` (`libcuda`), if it is one.
pub fn group_of(name: &str) -> Option<LibraryGroup> {
    LIBRARIES
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(g, _)| *g)
}

/// The library name of file name `file` (`libcuda` of `libcuda.so.1`), if it is a driver
/// library's.
pub fn driver_name(file: &str) -> Option<&str> {
    let (name, _) = file.split_once(".so")?;
    group_of(name).map(|_| name)
}

/// The driver's libraries found under a root, and where they were looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibrarySet {
    /// One per library name, in the order found.
    pub libraries: Vec<DriverLibrary>,
    /// The ld cache and directories searched (host paths), for messages.
    pub searched: Vec<PathBuf>,
}

/// The root's ld cache file, relative to the root.
pub const LD_CACHE: &str = "etc/ld.so.cache";

/// The libraries whose real files' directories are searched too, as the toolkit searches
/// libcuda's: a packaging may link some libraries only from directories no ld cache or library
/// directory lists (Debian's `.../nvidia/libnvidia-cfg.so.1` and `.../vdpau/libvdpau_nvidia.so.1`
/// into a flavour directory such as `nvidia/tesla-535`; Ubuntu's `vdpau/libvdpau_nvidia.so.<v>`).
pub const LIBRARY_ANCHORS: [&str; 2] = ["libcuda", "libnvidia-ml"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_are_the_known_ones_only() {
        assert_eq!(driver_name("libcuda.so.580.159.04"), Some("libcuda"));
        assert_eq!(driver_name("libcuda.so"), Some("libcuda"));
        assert_eq!(
            driver_name("libnvidia-pkcs11-openssl3.so.580.159.04"),
            Some("libnvidia-pkcs11-openssl3")
        );
        assert_eq!(driver_name("libnvidia-egl-wayland.so.1.1.11"), None);
        assert_eq!(driver_name("libc.so.6"), None);
        assert_eq!(driver_name("nvidia"), None);
        assert_eq!(group_of("libnvidia-ml"), Some(LibraryGroup::Utility));
        assert_eq!(group_of("libGLX_nvidia"), Some(LibraryGroup::Graphics));
    }
}
