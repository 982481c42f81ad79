//! Driver files on the host: libraries (found by file name ending in the driver version, their
//! SONAME read from the ELF), binaries and GSP firmware, under a driver root.

use std::path::{Path, PathBuf};

use super::DiscoverError;
use crate::request::Capability;

/// A driver library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverLibrary {
    /// The real file, e.g. `<root>/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04`.
    pub path: PathBuf,
    /// Its SONAME, e.g. `libcuda.so.1`.
    pub soname: Option<String>,
    /// The capability group it belongs to.
    pub group: LibraryGroup,
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
    pub fn wanted(self, caps: &crate::request::Capabilities) -> bool {
        match self {
            Self::Utility => caps.has(Capability::Utility),
            Self::Compute => caps.needs_compute(),
            Self::Video => caps.has(Capability::Video),
            Self::Graphics => caps.needs_graphics(),
            Self::Ngx => caps.has(Capability::Ngx),
        }
    }
}

/// Library name prefixes per group, from libnvidia-container's `nvc_info.c`.
const LIBRARIES: &[(LibraryGroup, &[&str])] = &[
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

/// Binaries per capability: (name, needs utility (else compute)).
pub const BINARIES: &[(&str, Capability)] = &[
    ("nvidia-smi", Capability::Utility),
    ("nvidia-debugdump", Capability::Utility),
    ("nvidia-persistenced", Capability::Utility),
    ("nv-fabricmanager", Capability::Utility),
    ("nvidia-cuda-mps-control", Capability::Compute),
    ("nvidia-cuda-mps-server", Capability::Compute),
];

/// Directories, relative to the driver root, searched for 64-bit libraries (the first that
/// holds a file wins): distribution layouts, then the `/usr/local/nvidia` style `lib64`/`lib`.
pub const LIBRARY_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib",
    "lib",
];

/// Directories, relative to the driver root, searched for binaries.
pub const BINARY_DIRS: &[&str] = &["usr/bin", "bin", "usr/sbin", "sbin", "usr/local/bin"];

fn group_of(file_name: &str, version: &str) -> Option<LibraryGroup> {
    let stem = file_name.strip_suffix(&format!(".so.{version}"))?;
    LIBRARIES
        .iter()
        .find(|(_, names)| names.contains(&stem))
        .map(|(g, _)| *g)
}

/// A read-only private mapping of a whole file: ELF parsing then touches only the pages it
/// reads (headers, dynamic section, string table), not a 50 MB `libcuda`.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "empty file",
            ));
        }
        // SAFETY: a fresh private read-only mapping of an open file; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The SONAME of the ELF file at `path`, if it has one.
pub fn soname(path: &Path) -> Result<Option<String>, DiscoverError> {
    let map = Mapped::open(path).map_err(|source| DiscoverError::Read {
        path: path.to_owned(),
        source,
    })?;
    let elf = goblin::elf::Elf::parse(map.bytes()).map_err(|e| DiscoverError::Parse {
        path: path.to_owned(),
        reason: format!("not an ELF shared object: {e}"),
    })?;
    Ok(elf.soname.map(str::to_owned))
}

/// The SONAME of the ELF shared object in `bytes`, if it is one and has a SONAME.
pub fn soname_of(bytes: &[u8]) -> Option<String> {
    goblin::elf::Elf::parse(bytes)
        .ok()?
        .soname
        .map(str::to_owned)
}

/// Driver libraries of `version` under `driver_root`. A library found in several directories
/// is taken from the first of [`LIBRARY_DIRS`].
pub fn libraries(driver_root: &Path, version: &str) -> Result<Vec<DriverLibrary>, DiscoverError> {
    let mut found: Vec<DriverLibrary> = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(driver_root.join(dir)) else {
            continue;
        };
        let mut names: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        names.sort();
        for (name, path) in names {
            let Some(group) = group_of(&name, version) else {
                continue;
            };
            // Skip symlinks (SONAME links): the real file is what gets mounted.
            if path
                .symlink_metadata()
                .map(|m| !m.is_file())
                .unwrap_or(true)
            {
                continue;
            }
            if found.iter().any(|l| l.path.file_name() == path.file_name()) {
                continue;
            }
            let soname = soname(&path)?;
            found.push(DriverLibrary {
                path,
                soname,
                group,
            });
        }
    }
    Ok(found)
}

/// Driver binaries under `driver_root`, with the capability each needs.
pub fn binaries(driver_root: &Path) -> Vec<(PathBuf, Capability)> {
    BINARIES
        .iter()
        .filter_map(|(name, cap)| {
            BINARY_DIRS
                .iter()
                .map(|d| driver_root.join(d).join(name))
                .find(|p| p.is_file())
                .map(|p| (p, *cap))
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

/// The [`GRAPHICS_CONFIGS`] present under `driver_root`, as (host path, container path):
/// searched in `etc/`, `usr/share/` and (the `/usr/local/nvidia` layout) `share/`, first match
/// wins; a file from `share/` goes to `/usr/share/` in the container, where loaders look.
pub fn graphics_configs(driver_root: &Path) -> Vec<(PathBuf, PathBuf)> {
    const DIRS: [(&str, &str); 3] = [
        ("etc", "/etc"),
        ("usr/share", "/usr/share"),
        ("share", "/usr/share"),
    ];
    GRAPHICS_CONFIGS
        .iter()
        .filter_map(|f| {
            DIRS.iter().find_map(|(dir, container)| {
                let host = driver_root.join(dir).join(f);
                host.is_file().then(|| (host, Path::new(container).join(f)))
            })
        })
        .collect()
}

/// GSP firmware files of `version` (`lib/firmware/nvidia/<version>/gsp*.bin`, or the
/// `/usr/local/nvidia` style `firmware/nvidia/<version>`).
pub fn firmware(driver_root: &Path, version: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [
        "lib/firmware/nvidia",
        "usr/lib/firmware/nvidia",
        "firmware/nvidia",
    ] {
        let Ok(entries) = std::fs::read_dir(driver_root.join(dir).join(version)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("gsp") && n.ends_with(".bin"))
            })
            .collect();
        files.sort();
        out.extend(files);
        if !out.is_empty() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_and_version() {
        assert_eq!(
            group_of("libcuda.so.580.159.04", "580.159.04"),
            Some(LibraryGroup::Compute)
        );
        assert_eq!(
            group_of("libnvidia-ml.so.580.159.04", "580.159.04"),
            Some(LibraryGroup::Utility)
        );
        assert_eq!(
            group_of("libnvidia-pkcs11-openssl3.so.580.159.04", "580.159.04"),
            Some(LibraryGroup::Compute)
        );
        assert_eq!(group_of("libcuda.so.1", "580.159.04"), None);
        assert_eq!(
            group_of("libcuda.so.535.1", "580.159.04"),
            None,
            "other driver versions are ignored"
        );
        assert_eq!(
            group_of("libnvidia-egl-wayland.so.580.159.04", "580.159.04"),
            None
        );
    }
}
