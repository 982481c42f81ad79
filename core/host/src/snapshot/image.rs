//! What the image holds that a plan depends on, read through the confined root of its rootfs
//! (so a hostile image cannot point the shim outside it): its CUDA forward-compat libraries in
//! `/usr/local/cuda/compat`, and, for this binary run as a CDI hook after another runtime's
//! mounts, the driver libraries already in the `update-ldcache` folders.

use std::path::{Path, PathBuf};

use nvidia_shim_core::cdi::HookPlan;
use nvidia_shim_core::compat::{
    compat_candidate, parse_note, CompatLibcuda, COMPAT_DIR, NOTE_SECTION,
};
use nvidia_shim_core::inventory::{driver_name, Arch};
use nvidia_shim_core::plan::{self, ImageFacts, RootfsPlan};

use crate::elf::{self, MAX_LIBRARY_SIZE};
use crate::root::Root;
use crate::untrusted::{FinalLink, UntrustedError};

/// Opens the image's library `path` (never through a final symlink, a regular file of at most
/// [`MAX_LIBRARY_SIZE`] bytes) and reads its SONAME; an error says why it was not read.
fn soname_in(root: &Root, path: &Path) -> Result<Option<String>, UntrustedError> {
    let file = root.open_file(path, FinalLink::Refuse, MAX_LIBRARY_SIZE)?;
    Ok(elf::read_info(&file).ok().and_then(|i| i.soname))
}

/// The image's compat `libcuda` (core's [`compat_candidate`] among the regular files of
/// [`COMPAT_DIR`]), with its SONAME and its forward-compat note read from the ELF; the file it
/// could not read is noted in `skipped`, with why (a FIFO, a device or a file over
/// [`MAX_LIBRARY_SIZE`] there is not opened).
pub fn compat_libcuda(root: &Root, skipped: &mut Vec<(PathBuf, String)>) -> Option<CompatLibcuda> {
    let dir = Path::new(COMPAT_DIR);
    let files = root.list(dir);
    let (name, version) =
        compat_candidate(files.iter().filter(|e| e.is_file).map(|e| e.name.as_str()))?;
    let path = dir.join(name);
    let file = match root.open_file(&path, FinalLink::Refuse, MAX_LIBRARY_SIZE) {
        Ok(f) => f,
        Err(e) => {
            skipped.push((path, e.to_string()));
            return None;
        }
    };
    let soname = elf::read_info(&file).ok().and_then(|i| i.soname);
    let note = elf::read_section(&file, NOTE_SECTION)
        .ok()
        .flatten()
        .and_then(|notes| parse_note(&notes));
    Some(CompatLibcuda {
        path,
        version,
        note,
        soname,
    })
}

/// Reads the image's compat directory: its compat `libcuda` and the SONAMEs of every library
/// beside it.
pub fn image_facts(root: &Root) -> ImageFacts {
    let mut skipped = Vec::new();
    let Some(lib) = compat_libcuda(root, &mut skipped) else {
        return ImageFacts {
            skipped,
            ..ImageFacts::default()
        };
    };
    let dir = Path::new(COMPAT_DIR);
    let mut compat_libs = Vec::new();
    for e in root.list(dir) {
        if !e.is_file || !e.name.starts_with("lib") || !e.name.contains(".so") {
            continue;
        }
        let path = dir.join(&e.name);
        // libcuda was read when its note was; the others are read for their SONAME.
        let soname = if path == lib.path {
            lib.soname.clone()
        } else {
            soname_in(root, &path).unwrap_or_else(|e| {
                skipped.push((path.clone(), e.to_string()));
                None
            })
        };
        if let Some(soname) = soname {
            compat_libs.push((soname, path));
        }
    }
    ImageFacts {
        compat: Some(lib),
        compat_libs,
        skipped,
    }
}

/// The NVIDIA driver libraries (by name, as core's [`driver_name`] knows them: what a CDI spec
/// mounts there) among the regular files of `hooks`' `update-ldcache` folders, with their
/// SONAMEs, as (path in the container, SONAME).
pub fn ld_folder_libraries(hooks: &HookPlan, root: &Root) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for dir in &hooks.ld_folders {
        for entry in root.list(dir) {
            if !entry.is_file || driver_name(&entry.name).is_none() {
                continue;
            }
            let path = dir.join(&entry.name);
            if let Ok(Some(soname)) = soname_in(root, &path) {
                out.push((path, soname));
            }
        }
    }
    out
}

/// Core's [`plan::rootfs_plan_in_place`] for the rootfs at `root`: reads only that rootfs,
/// which is the container's.
pub fn rootfs_plan_in_place(hooks: &HookPlan, root: &Root, cuda_compat: bool) -> RootfsPlan {
    plan::rootfs_plan_in_place(
        hooks,
        &ld_folder_libraries(hooks, root),
        image_facts(root),
        Arch::host().unwrap_or_default(),
        cuda_compat,
    )
}

#[cfg(test)]
mod tests;
