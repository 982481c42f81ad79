//! The rootfs half of a plan: the SONAME and `.so` links next to the mounted libraries, and the
//! entries to add to the image's `/etc/ld.so.cache` (the image's CUDA forward-compat libraries
//! first when they are used), so that the dynamic loader finds the injected libraries in images
//! without `ldconfig` and whatever their own cache says.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::{HostSnapshot, ImageFacts};
use crate::cdi::HookPlan;
use crate::compat::{decide, Decision};
use crate::edits::DriverEdits;
use crate::inventory::{driver_name, Arch};
use crate::require::Version;

/// Where the shim's `ld.so.conf.d` drop-in goes, so that a later `ldconfig` in the container
/// keeps the injected directories.
pub const LD_CONF_DROP_IN: &str = "/etc/ld.so.conf.d/000-nvidia-container-shim.conf";

/// What to do in the container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsPlan {
    /// Symlinks: (link in the container, target), in order.
    pub links: Vec<(PathBuf, String)>,
    /// ld cache entries (name looked up, library file in the container), one per name, in
    /// priority order.
    pub ld_entries: Vec<(String, PathBuf)>,
    /// The entries' flags (the architecture's).
    pub ld_flags: i32,
    /// Whether the image's forward-compat libraries are used, and why.
    pub compat: Decision,
}

impl Default for RootfsPlan {
    fn default() -> Self {
        Self {
            links: Vec::new(),
            ld_entries: Vec::new(),
            ld_flags: Arch::default().ldcache_flags(),
            compat: Decision::NoCompat,
        }
    }
}

/// Plans the links and ld cache: the inventory's (`driver`), the toolkit hook steps of CDI specs
/// (`hooks`), and for every NVIDIA driver library the final spec `mounts` (or a library in an
/// `update-ldcache` folder), its SONAME from `host`. `compat_host` is the host driver version
/// to compare compat libraries with, when known.
pub fn rootfs_plan(
    driver: &DriverEdits,
    hooks: &HookPlan,
    mounts: &[Mount],
    host: &HostSnapshot,
    cuda_compat: bool,
    compat_host: Option<String>,
) -> RootfsPlan {
    let mut entries = driver.ld_cache.clone();
    let mut links = driver.symlinks.clone();
    links.extend(hooks.symlinks.iter().cloned());
    for m in mounts {
        let dest = m.destination();
        let (Some(dir), Some(file), Some(source)) = (dest.parent(), dest.file_name(), m.source())
        else {
            continue;
        };
        let file = file.to_string_lossy();
        let driver_library = driver_name(&file).is_some();
        if !file.contains(".so") || !(driver_library || hooks.ld_folders.iter().any(|f| f == dir)) {
            continue;
        }
        let Some(soname) = host.mounted_sonames.get(source) else {
            continue;
        };
        if entries.iter().any(|(k, _)| k == soname) {
            continue;
        }
        let link = dir.join(soname);
        if *soname != file && !links.iter().any(|(l, _)| *l == link) {
            links.push((link, file.into_owned()));
        }
        entries.push((soname.clone(), dest.to_owned()));
    }
    // As `ldconfig` does for an `update-ldcache` folder, a `create-symlinks` link named like a
    // library there (`libcuda.so`, `libGLX_indirect.so.0`) gets an entry too, for the file its
    // target names (directly, or through a SONAME that has an entry).
    for (link, target) in &hooks.symlinks {
        let (Some(dir), Some(name)) = (link.parent(), link.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        if !name.contains(".so") || !hooks.ld_folders.iter().any(|f| f == dir) {
            continue;
        }
        if entries.iter().any(|(k, _)| *k == name) {
            continue;
        }
        let direct = dir.join(target);
        let file = if mounts.iter().any(|m| m.destination() == &direct) {
            Some(direct)
        } else {
            entries
                .iter()
                .find(|(k, p)| k == target && p.parent() == Some(dir))
                .map(|(_, p)| p.clone())
        };
        if let Some(file) = file {
            entries.push((name.into_owned(), file));
        }
    }
    let compat_host = compat_host.or_else(|| mounted_libcuda_version(mounts));
    let compat = match (cuda_compat, compat_host, &host.image.compat) {
        (true, Some(version), Some(lib)) => decide(lib.clone(), &version),
        _ => Decision::NoCompat,
    };
    if matches!(compat, Decision::Use(_)) {
        let mut first = host.image.compat_libs.clone();
        first.append(&mut entries);
        entries = first;
    }
    // The first entry of a name wins (compat libraries come first).
    let mut ld_entries: Vec<(String, PathBuf)> = Vec::with_capacity(entries.len());
    for (key, path) in entries {
        if !ld_entries.iter().any(|(k, _)| *k == key) {
            ld_entries.push((key, path));
        }
    }
    RootfsPlan {
        links,
        ld_entries,
        ld_flags: host.arch.ldcache_flags(),
        compat,
    }
}

/// Plans the toolkit hook steps `hooks` in a rootfs whose libraries are already mounted (this
/// binary run as a CDI hook by another runtime, after the mounts and before the container
/// starts): `libraries` are the NVIDIA driver libraries the host found in the `update-ldcache`
/// folders (what a CDI spec mounts there; the image's own libraries are in its cache already),
/// as (path in the container, SONAME), each planned as [`rootfs_plan`] plans a mounted one;
/// `image` is what the host read of the image's compat directory.
pub fn rootfs_plan_in_place(
    hooks: &HookPlan,
    libraries: &[(PathBuf, String)],
    image: ImageFacts,
    arch: Arch,
    cuda_compat: bool,
) -> RootfsPlan {
    let mut mounts = Vec::new();
    let mut host = HostSnapshot {
        image,
        arch,
        ..HostSnapshot::default()
    };
    for (path, soname) in libraries {
        // The library stands for its own mount: its container path is both ends.
        if let Ok(m) = MountBuilder::default()
            .destination(path.clone())
            .source(path.clone())
            .build()
        {
            mounts.push(m);
        }
        host.mounted_sonames.insert(path.clone(), soname.clone());
    }
    rootfs_plan(
        &DriverEdits::default(),
        hooks,
        &mounts,
        &host,
        cuda_compat,
        hooks.cuda_compat_host_version.clone(),
    )
}

/// The directories of `entries`, in order of first appearance: the `ld.so.conf.d` drop-in's
/// lines.
pub fn ld_dirs(entries: &[(String, PathBuf)]) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for (_, path) in entries {
        if let Some(dir) = path.parent().map(|d| d.to_string_lossy().into_owned()) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The driver version of a `libcuda.so.<version>` the spec mounts, for CUDA forward compat
/// when no hook or inventory names the host driver (CDI specs generated without hooks).
fn mounted_libcuda_version(mounts: &[Mount]) -> Option<String> {
    mounts.iter().find_map(|m| {
        let name = Path::new(m.destination()).file_name()?.to_str()?;
        let version = name.strip_prefix("libcuda.so.")?;
        (version.matches('.').count() >= 1 && Version::parse(version).is_some())
            .then(|| version.to_owned())
    })
}
