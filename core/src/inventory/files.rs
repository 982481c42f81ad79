//! The driver's other files: binaries, GSP firmware and graphics configuration, by name and the
//! directories they are looked for in (the host resolves each inside the driver root, symlinks
//! followed, as for libraries, and pairs it with the path it gets in the container).

use std::path::{Path, PathBuf};

use super::DriverLibrary;
use crate::request::Capability;

/// Binaries per capability (as [`super::LIBRARIES`] lists libraries per group).
pub const BINARIES: &[(Capability, &[&str])] = &[
    (
        Capability::Utility,
        &[
            "nvidia-smi",
            "nvidia-debugdump",
            "nvidia-persistenced",
            "nv-fabricmanager",
        ],
    ),
    (
        Capability::Compute,
        &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
    ),
];

/// Directories, relative to the driver root, searched for binaries; they are on the
/// container's `PATH`, so a binary found here keeps its path.
pub const BINARY_DIRS: &[&str] = &["usr/bin", "bin", "usr/sbin", "sbin", "usr/local/bin"];

/// Debian's packages keep the real binaries here, behind alternatives links in `/usr/bin`.
pub const DEBIAN_BINARY_DIR: &str = "usr/lib/nvidia/current";

/// A driver binary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverBinary {
    /// The real file on the host.
    pub path: PathBuf,
    /// Where it is mounted in the container (a directory on `PATH`).
    pub container_path: PathBuf,
    /// The capability that brings it.
    pub capability: Capability,
}

/// Graphics configuration files the driver installs, relative to a data directory: Vulkan ICD
/// and layers, the GLVND EGL vendor file, EGL external platforms and OptiX's cache.
pub const GRAPHICS_CONFIGS: [&str; 7] = [
    "vulkan/icd.d/nvidia_icd.json",
    "vulkan/icd.d/nvidia_layers.json",
    "vulkan/implicit_layer.d/nvidia_layers.json",
    "glvnd/egl_vendor.d/10_nvidia.json",
    "egl/egl_external_platform.d/10_nvidia_wayland.json",
    "egl/egl_external_platform.d/15_nvidia_gbm.json",
    "nvidia/nvoptix.bin",
];

/// Where graphics configuration files are looked for, first match wins: (directory in the
/// driver root, directory in the container). A file from `share/` (the `/usr/local/nvidia`
/// layout) goes to `/usr/share/` in the container, where loaders look.
pub const GRAPHICS_CONFIG_DIRS: [(&str, &str); 3] = [
    ("/etc", "/etc"),
    ("/usr/share", "/usr/share"),
    ("/share", "/usr/share"),
];

/// Where GSP firmware directories are looked for in a driver root, before those beside the
/// libraries' installation prefix (each holds a `<driver version>` directory of `gsp*.bin`).
pub const FIRMWARE_DIRS: [&str; 3] = [
    "/lib/firmware/nvidia",
    "/usr/lib/firmware/nvidia",
    "/firmware/nvidia",
];

/// The installation prefixes, inside `driver_root`, of the libraries' real files
/// (`/usr/local/nvidia` of `/usr/local/nvidia/lib64/libcuda.so.X`): a driver installed under
/// its own prefix and linked into `/lib` keeps its binaries and firmware beside its `lib64`.
pub fn library_prefixes(driver_root: &Path, libraries: &[DriverLibrary]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for lib in libraries {
        let Some(dir) = lib
            .path
            .strip_prefix(driver_root)
            .ok()
            .and_then(|p| Path::new("/").join(p).parent().map(Path::to_owned))
        else {
            continue;
        };
        let is_lib_dir = dir.file_name().is_some_and(|n| n == "lib64" || n == "lib");
        if let Some(prefix) = dir.parent().filter(|_| is_lib_dir) {
            if prefix != Path::new("/")
                && prefix != Path::new("/usr")
                && !out.iter().any(|p| p == prefix)
            {
                out.push(prefix.to_owned());
            }
        }
    }
    out
}
