//! Driver discovery: what the host's NVIDIA driver offers (GPUs, device nodes, libraries,
//! binaries, firmware, MIG devices), read without NVML from `/proc`, `/dev` and a driver root,
//! each under a root the caller chooses so tests can use fake trees. What it finds is core's
//! [`Inventory`]; the texts it reads are parsed by core's
//! [`procfs`](nvidia_shim_core::inventory::procfs) and [`mig`](nvidia_shim_core::inventory::mig)
//! parsers.

pub mod cache;
mod files;
mod gated;
mod ipc;
mod libraries;
mod mig;
pub mod nvml;
mod procfs;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nvidia_shim_core::inventory::{
    mig as mig_model, procfs as procfs_model, rdev_major, rdev_minor, Arch, DeviceNode,
    DiscoverError, Inventory, LibrarySet, Roots, MIG_MINORS, NVML_NOT_TRIED,
};

use crate::root::Root;

pub use gated::{gated, gather_gated};
pub use ipc::{mps_pipe_dir, present_endpoints};
pub use libraries::libraries;
pub use mig::mig_layout;

/// Stats `dev_root/<path>`; `None` when absent or not a character device.
pub fn probe_node(dev_root: &Path, path: &str) -> Option<DeviceNode> {
    let host_path = dev_root.join(path.trim_start_matches('/'));
    let meta = std::fs::metadata(&host_path).ok()?;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some(DeviceNode {
        path: PathBuf::from(path),
        host_path,
        major: rdev_major(rdev),
        minor: rdev_minor(rdev),
    })
}

/// Opens the driver root `path`; an error names it.
fn open_driver_root(path: &Path) -> Result<Root, DiscoverError> {
    Root::open(path).map_err(|e| DiscoverError::Read {
        path: path.to_owned(),
        source: e.source,
    })
}

/// Finds the driver root among `candidates` (relative to `host_root`): the first where
/// `libnvidia-ml.so.<version>` of `arch` is found the way libraries are (its ld cache, then its
/// library directories, symlinks followed).
pub fn detect_driver_root(
    host_root: &Path,
    candidates: &[&str],
    version: &str,
    arch: Arch,
) -> Result<PathBuf, DiscoverError> {
    let mut searched = Vec::new();
    for c in candidates {
        let root = host_root.join(c.trim_start_matches('/'));
        let Ok(opened) = Root::open(&root) else {
            searched.push(root.display().to_string());
            continue;
        };
        let set = libraries(&opened, arch, version);
        if set.libraries.iter().any(|l| l.name() == "libnvidia-ml") {
            return Ok(root);
        }
        searched.extend(set.searched.iter().map(|p| p.display().to_string()));
    }
    Err(DiscoverError::NoDriverRoot {
        version: version.to_owned(),
        tried: searched.join(", "),
    })
}

/// Discovers the driver without NVML for the architecture this shim runs on.
/// `roots.driver_root` is used as given.
pub fn inventory(roots: &Roots) -> Result<Inventory, DiscoverError> {
    let arch = Arch::host().ok_or_else(|| DiscoverError::Parse {
        path: PathBuf::from("/"),
        reason: format!("no NVIDIA driver for {}", std::env::consts::ARCH),
    })?;
    inventory_for(roots, arch)
}

/// Discovers the driver's `arch` files without NVML. `roots.driver_root` is used as given.
pub fn inventory_for(roots: &Roots, arch: Arch) -> Result<Inventory, DiscoverError> {
    let version_file = roots.proc_root.join(procfs_model::VERSION_FILE);
    if !version_file.exists() {
        return Err(DiscoverError::NoDriver { path: version_file });
    }
    let driver_version = procfs::driver_version(&roots.proc_root)?;
    let gpus = procfs::gpus(&roots.proc_root)?;
    let node = |path: &str| {
        probe_node(&roots.dev_root, path).ok_or_else(|| DiscoverError::MissingNode {
            path: roots.dev_root.join(path.trim_start_matches('/')),
        })
    };
    let ctl = node("/dev/nvidiactl")?;
    let mut gpu_nodes = BTreeMap::new();
    for g in &gpus {
        gpu_nodes.insert(g.minor, node(&format!("/dev/nvidia{}", g.minor))?);
    }
    let char_majors = procfs::char_majors(&roots.proc_root)?;
    let mig_minors = std::fs::read_to_string(roots.proc_root.join(MIG_MINORS))
        .map(|t| mig_model::parse_mig_minors(&t))
        .unwrap_or_default();
    let mig = mig_model::mig_devices(
        &gpus,
        &mig_layout(&roots.proc_root),
        &roots.dev_root,
        char_majors.get("nvidia-caps").copied(),
        &mig_minors,
    );
    let root = open_driver_root(&roots.driver_root)?;
    let LibrarySet {
        libraries,
        searched,
    } = libraries(&root, arch, &driver_version);
    Ok(Inventory {
        cuda_version: None,
        nvml_unavailable: Some(NVML_NOT_TRIED.to_owned()),
        mig,
        mig_minors,
        arch,
        gpus,
        ctl,
        uvm: probe_node(&roots.dev_root, "/dev/nvidia-uvm"),
        uvm_tools: probe_node(&roots.dev_root, "/dev/nvidia-uvm-tools"),
        modeset: probe_node(&roots.dev_root, "/dev/nvidia-modeset"),
        gpu_nodes,
        binaries: files::binaries(&root, &libraries),
        firmware: files::firmware(&root, &driver_version, &libraries),
        graphics_configs: files::graphics_configs(&root),
        libraries,
        library_search: searched,
        driver_version,
        char_majors,
        roots: roots.clone(),
    })
}

#[cfg(test)]
mod tests;
