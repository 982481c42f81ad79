//! The driver's libraries under a driver root, found as the toolkit finds them: first through
//! the root's `ld.so.cache`, then in the library directories of the architecture, following
//! symlinks (Debian's alternatives) to the real file. A library is taken when its real file is
//! named `<name>.so.<driver version>` and is an ELF object of the architecture; it is injected
//! in the directory where it was found (the cache's or the directory's path), under its real
//! file name, so `/usr/lib/x86_64-linux-gnu/libcuda.so.1 -> ... -> nvidia/current/
//! libcuda.so.535.261.03` gives `/usr/lib/x86_64-linux-gnu/libcuda.so.535.261.03` in the
//! container.

use std::path::{Path, PathBuf};

use super::arch::Arch;
use super::in_root::DriverRoot;
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
fn driver_name(file: &str) -> Option<&str> {
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

/// The places a library may be found: the ld cache's paths first, then each library directory's
/// entries with a driver library's name, in order, without repeats.
fn candidates(root: &DriverRoot, arch: Arch) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(cache) = root.open_file(Path::new(LD_CACHE)) {
        // A host's cache is tens of kB; one of a few MB is not a cache.
        if let Ok(bytes) = crate::untrusted::read_to_end(&cache.file, 16 << 20) {
            for e in crate::ldcache::parse(&bytes).unwrap_or_default() {
                if e.flags == arch.ldcache_flags() && driver_name(e.key).is_some() {
                    out.push(PathBuf::from(e.value));
                }
            }
        }
    }
    for dir in arch.library_dirs() {
        out.extend(in_dir(root, &Path::new("/").join(dir)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// The entries of `dir` (inside the root) with a driver library's name.
fn in_dir(root: &DriverRoot, dir: &Path) -> Vec<PathBuf> {
    root.list(dir)
        .into_iter()
        .filter(|name| driver_name(name).is_some())
        .map(|name| dir.join(name))
        .collect()
}

/// The libraries whose real files' directories are searched too, as the toolkit searches
/// libcuda's: a packaging may link some libraries only from directories no ld cache or library
/// directory lists (Debian's `.../nvidia/libnvidia-cfg.so.1` and `.../vdpau/libvdpau_nvidia.so.1`
/// into a flavour directory such as `nvidia/tesla-535`; Ubuntu's `vdpau/libvdpau_nvidia.so.<v>`).
const ANCHORS: [&str; 2] = ["libcuda", "libnvidia-ml"];

/// The driver libraries of `version` under `root` for `arch`: those the ld cache and the library
/// directories name, then those in the directories of libcuda's and libnvidia-ml's real files
/// and their `vdpau/` subdirectories.
pub fn libraries(root: &DriverRoot, arch: Arch, version: &str) -> LibrarySet {
    let mut libraries: Vec<DriverLibrary> = Vec::new();
    let mut real_dirs: std::collections::HashMap<PathBuf, Option<PathBuf>> = Default::default();
    let mut searched = vec![root.host_path(Path::new(LD_CACHE))];
    searched.extend(
        arch.library_dirs()
            .iter()
            .map(|d| root.host_path(Path::new(d))),
    );
    let mut take = |candidates: Vec<PathBuf>, libraries: &mut Vec<DriverLibrary>| {
        for candidate in candidates {
            if let Some(lib) = library(root, arch, version, &candidate, libraries, &mut real_dirs) {
                libraries.push(lib);
            }
        }
    };
    take(candidates(root, arch), &mut libraries);
    let mut anchor_dirs: Vec<PathBuf> = Vec::new();
    for anchor in ANCHORS {
        let Some(dir) = libraries
            .iter()
            .find(|l| l.name() == anchor)
            .and_then(|l| l.path.parent())
            .and_then(|d| root.inside(d))
        else {
            continue;
        };
        for d in [dir.clone(), dir.join("vdpau")] {
            let host = root.host_path(&d);
            if !anchor_dirs.contains(&d) && !searched.contains(&host) {
                searched.push(host);
                anchor_dirs.push(d);
            }
        }
    }
    for dir in anchor_dirs {
        take(in_dir(root, &dir), &mut libraries);
    }
    LibrarySet {
        libraries,
        searched,
    }
}

/// The driver library `candidate` (a path inside the root) names, unless it is not one of
/// `version` and `arch`, or one of that name is already in `found`.
fn library(
    root: &DriverRoot,
    arch: Arch,
    version: &str,
    candidate: &Path,
    found: &[DriverLibrary],
    real_dirs: &mut std::collections::HashMap<PathBuf, Option<PathBuf>>,
) -> Option<DriverLibrary> {
    let name = candidate
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(driver_name)?;
    if found.iter().any(|l| l.name() == name) {
        return None;
    }
    // Dangling, or not a file.
    let found = root.open_file(candidate)?;
    let real_name = found.host.file_name().and_then(|n| n.to_str());
    if real_name != Some(format!("{name}.so.{version}").as_str()) {
        return None; // another driver version, or not the versioned file
    }
    let info = crate::elf::read_info(&found.file).ok()?;
    if info.machine != arch.elf_machine() {
        return None;
    }
    // The directory as it really is: a link's directory may be a symlink itself (`/lib` on a
    // merged-/usr host), which a container's image need not have.
    let dir = candidate.parent().and_then(|d| {
        real_dirs
            .entry(d.to_owned())
            .or_insert_with(|| root.real_dir(d))
            .clone()
    })?;
    let file = found.host.file_name()?;
    Some(DriverLibrary {
        container_path: dir.join(file),
        path: found.host.clone(),
        soname: info.soname,
        group: group_of(name).unwrap_or(LibraryGroup::Compute),
    })
}

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
