//! The driver's libraries under a driver root, found as the toolkit finds them (see core's
//! [`nvidia_shim_core::inventory::LIBRARIES`] and what it says of the search): the root's
//! `ld.so.cache`, then the architecture's library directories, then the directories of libcuda's
//! and libnvidia-ml's real files, each candidate resolved inside the root and taken when its
//! real file is the driver version's and an ELF object of the architecture.

use std::path::{Path, PathBuf};

use nvidia_shim_core::inventory::{
    driver_name, group_of, Arch, DriverLibrary, LibraryGroup, LibrarySet, LD_CACHE, LIBRARY_ANCHORS,
};
use nvidia_shim_core::ldcache;

use super::files::find;
use crate::elf;
use crate::root::Root;
use crate::untrusted::{self, FinalLink};

/// The largest driver root ld cache read.
const MAX_HOST_LD_CACHE: u64 = 16 << 20;

/// The places a library may be found: the ld cache's paths first, then each library directory's
/// entries with a driver library's name, in order, without repeats.
fn candidates(root: &Root, arch: Arch) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    // A host's cache is tens of kB; one of a few MB is not a cache.
    let cache = root
        .open_file(Path::new(LD_CACHE), FinalLink::Follow, MAX_HOST_LD_CACHE)
        .and_then(|f| untrusted::read_to_end(&f, MAX_HOST_LD_CACHE));
    if let Ok(bytes) = cache {
        for e in ldcache::parse(&bytes).unwrap_or_default() {
            if e.flags == arch.ldcache_flags() && driver_name(e.key).is_some() {
                out.push(PathBuf::from(e.value));
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
fn in_dir(root: &Root, dir: &Path) -> Vec<PathBuf> {
    root.list(dir)
        .into_iter()
        .filter(|e| driver_name(&e.name).is_some())
        .map(|e| dir.join(e.name))
        .collect()
}

/// The driver libraries of `version` under `root` for `arch`: those the ld cache and the library
/// directories name, then those in the directories of libcuda's and libnvidia-ml's real files
/// and their `vdpau/` subdirectories.
pub fn libraries(root: &Root, arch: Arch, version: &str) -> LibrarySet {
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
    for anchor in LIBRARY_ANCHORS {
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
    root: &Root,
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
    let found = find(root, candidate)?;
    let real_name = found.host.file_name().and_then(|n| n.to_str());
    if real_name != Some(format!("{name}.so.{version}").as_str()) {
        return None; // another driver version, or not the versioned file
    }
    let info = elf::read_info(&found.file).ok()?;
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
