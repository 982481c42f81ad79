//! The driver's other files under a driver root: binaries, GSP firmware and graphics
//! configuration (core's tables), each resolved inside the root (symlinks followed, as for
//! libraries) and paired with the path it gets in the container.

use std::fs::File;
use std::path::{Path, PathBuf};

use nvidia_shim_core::inventory::{
    library_prefixes, DriverBinary, DriverLibrary, BINARIES, BINARY_DIRS, DEBIAN_BINARY_DIR,
    FIRMWARE_DIRS, GRAPHICS_CONFIGS, GRAPHICS_CONFIG_DIRS,
};

use crate::elf::MAX_LIBRARY_SIZE;
use crate::root::Root;
use crate::untrusted::FinalLink;

/// A driver file found under a driver root.
#[derive(Debug)]
pub struct Found {
    /// The real file on the host, every symlink resolved.
    pub host: PathBuf,
    /// The open file.
    pub file: File,
}

/// Opens `p` under `root`, following symlinks inside it; `None` when it does not resolve to a
/// regular file there of at most [`MAX_LIBRARY_SIZE`] bytes (a FIFO or a device there is never
/// opened; see [`crate::untrusted`]).
pub fn find(root: &Root, p: &Path) -> Option<Found> {
    let file = root
        .open_file(p, FinalLink::Follow, MAX_LIBRARY_SIZE)
        .ok()?;
    let host = root.real_path(&file).ok()?;
    Some(Found { host, file })
}

/// Driver binaries under `root`: the first of [`BINARY_DIRS`], the libraries' prefixes'
/// `bin` and Debian's `/usr/lib/nvidia/current` that holds each. One found outside
/// [`BINARY_DIRS`] goes to `/usr/bin` in the container.
pub fn binaries(root: &Root, libraries: &[DriverLibrary]) -> Vec<DriverBinary> {
    let standard: Vec<PathBuf> = BINARY_DIRS.iter().map(|d| Path::new("/").join(d)).collect();
    let mut extra: Vec<PathBuf> = library_prefixes(root.path(), libraries)
        .into_iter()
        .map(|p| p.join("bin"))
        .collect();
    extra.push(Path::new("/").join(DEBIAN_BINARY_DIR));
    BINARIES
        .iter()
        .flat_map(|(capability, names)| names.iter().map(move |name| (name, capability)))
        .filter_map(|(name, capability)| {
            let in_path = standard.iter().find_map(|d| {
                let p = d.join(name);
                find(root, &p).map(|f| (f.host, p))
            });
            let found = in_path.or_else(|| {
                extra.iter().find_map(|d| {
                    find(root, &d.join(name)).map(|f| (f.host, Path::new("/usr/bin").join(name)))
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

/// The [`GRAPHICS_CONFIGS`] present under `root`, as (host path, container path): searched in
/// [`GRAPHICS_CONFIG_DIRS`], first match wins.
pub fn graphics_configs(root: &Root) -> Vec<(PathBuf, PathBuf)> {
    GRAPHICS_CONFIGS
        .iter()
        .filter_map(|f| {
            GRAPHICS_CONFIG_DIRS.iter().find_map(|(dir, container)| {
                find(root, &Path::new(dir).join(f))
                    .map(|found| (found.host, Path::new(container).join(f)))
            })
        })
        .collect()
}

/// GSP firmware files of `version` (`gsp*.bin` in one of [`FIRMWARE_DIRS`]' `<version>`, or
/// beside the libraries' prefix), as (host path, container path).
pub fn firmware(
    root: &Root,
    version: &str,
    libraries: &[DriverLibrary],
) -> Vec<(PathBuf, PathBuf)> {
    let mut dirs: Vec<PathBuf> = FIRMWARE_DIRS.iter().map(PathBuf::from).collect();
    dirs.extend(
        library_prefixes(root.path(), libraries)
            .into_iter()
            .map(|p| p.join("firmware/nvidia")),
    );
    for dir in dirs {
        let dir = dir.join(version);
        let files: Vec<(PathBuf, PathBuf)> = root
            .list(&dir)
            .into_iter()
            .filter(|e| e.name.starts_with("gsp") && e.name.ends_with(".bin"))
            .filter_map(|e| {
                let p = dir.join(&e.name);
                find(root, &p).map(|f| (f.host, p))
            })
            .collect();
        if !files.is_empty() {
            return files;
        }
    }
    Vec::new()
}
