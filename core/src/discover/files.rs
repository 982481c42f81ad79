//! The driver's other files under a driver root: binaries, GSP firmware and graphics
//! configuration, each resolved inside the root (symlinks followed, as for libraries) and paired
//! with the path it gets in the container.

use std::path::{Path, PathBuf};

use super::in_root::DriverRoot;
use super::libraries::DriverLibrary;
use crate::request::Capability;

/// Binaries per capability.
pub const BINARIES: &[(&str, Capability)] = &[
    ("nvidia-smi", Capability::Utility),
    ("nvidia-debugdump", Capability::Utility),
    ("nvidia-persistenced", Capability::Utility),
    ("nv-fabricmanager", Capability::Utility),
    ("nvidia-cuda-mps-control", Capability::Compute),
    ("nvidia-cuda-mps-server", Capability::Compute),
];

/// Directories, relative to the driver root, searched for binaries; they are on the
/// container's `PATH`, so a binary found here keeps its path.
pub const BINARY_DIRS: &[&str] = &["usr/bin", "bin", "usr/sbin", "sbin", "usr/local/bin"];

/// Debian's packages keep the real binaries here, behind alternatives links in `/usr/bin`.
const DEBIAN_BINARY_DIR: &str = "usr/lib/nvidia/current";

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

/// The installation prefixes the libraries' real files live in (`/usr/local/nvidia` of
/// `/usr/local/nvidia/lib64/libcuda.so.X`), inside the root: a driver installed under its own
/// prefix and linked into `/lib` keeps its binaries and firmware beside its `lib64`.
fn prefixes(root: &DriverRoot, libraries: &[DriverLibrary]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for lib in libraries {
        let Some(dir) = root
            .inside(&lib.path)
            .and_then(|p| p.parent().map(Path::to_owned))
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

/// Driver binaries under `root`: the first of [`BINARY_DIRS`], the libraries' prefixes'
/// `bin` and Debian's `/usr/lib/nvidia/current` that holds each. One found outside
/// [`BINARY_DIRS`] goes to `/usr/bin` in the container.
pub fn binaries(root: &DriverRoot, libraries: &[DriverLibrary]) -> Vec<DriverBinary> {
    let standard: Vec<PathBuf> = BINARY_DIRS.iter().map(|d| Path::new("/").join(d)).collect();
    let mut extra: Vec<PathBuf> = prefixes(root, libraries)
        .into_iter()
        .map(|p| p.join("bin"))
        .collect();
    extra.push(Path::new("/").join(DEBIAN_BINARY_DIR));
    BINARIES
        .iter()
        .filter_map(|(name, capability)| {
            let in_path = standard.iter().find_map(|d| {
                let p = d.join(name);
                root.open_file(&p).map(|f| (f.host, p))
            });
            let found = in_path.or_else(|| {
                extra.iter().find_map(|d| {
                    root.open_file(&d.join(name))
                        .map(|f| (f.host, Path::new("/usr/bin").join(name)))
                })
            });
            found.map(|(path, container_path)| DriverBinary {
                path,
                container_path,
                capability: *capability,
            })
        })
        .collect()
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

/// The [`GRAPHICS_CONFIGS`] present under `root`, as (host path, container path): searched in
/// `etc/`, `usr/share/` and (the `/usr/local/nvidia` layout) `share/`, first match wins; a file
/// from `share/` goes to `/usr/share/` in the container, where loaders look.
pub fn graphics_configs(root: &DriverRoot) -> Vec<(PathBuf, PathBuf)> {
    const DIRS: [(&str, &str); 3] = [
        ("/etc", "/etc"),
        ("/usr/share", "/usr/share"),
        ("/share", "/usr/share"),
    ];
    GRAPHICS_CONFIGS
        .iter()
        .filter_map(|f| {
            DIRS.iter().find_map(|(dir, container)| {
                root.open_file(&Path::new(dir).join(f))
                    .map(|found| (found.host, Path::new(container).join(f)))
            })
        })
        .collect()
}

/// GSP firmware files of `version` (`gsp*.bin` in `lib/firmware/nvidia/<version>`, or the
/// `/usr/local/nvidia` style `firmware/nvidia/<version>`, or beside the libraries' prefix), as
/// (host path, container path).
pub fn firmware(
    root: &DriverRoot,
    version: &str,
    libraries: &[DriverLibrary],
) -> Vec<(PathBuf, PathBuf)> {
    let mut dirs: Vec<PathBuf> = [
        "/lib/firmware/nvidia",
        "/usr/lib/firmware/nvidia",
        "/firmware/nvidia",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    dirs.extend(
        prefixes(root, libraries)
            .into_iter()
            .map(|p| p.join("firmware/nvidia")),
    );
    for dir in dirs {
        let dir = dir.join(version);
        let files: Vec<(PathBuf, PathBuf)> = root
            .list(&dir)
            .into_iter()
            .filter(|n| n.starts_with("gsp") && n.ends_with(".bin"))
            .filter_map(|n| {
                let p = dir.join(&n);
                root.open_file(&p).map(|f| (f.host, p))
            })
            .collect();
        if !files.is_empty() {
            return files;
        }
    }
    Vec::new()
}
