//! The host and image facts core's `plan` decides from, gathered once per Create into core's
//! [`HostSnapshot`]: every read of the GPU path besides the inventory and the CDI specs happens
//! here (IPC endpoints, gated devices, the `/proc/driver/nvidia` facts, the host nodes CDI
//! edits leave incomplete, the SONAMEs of mounted libraries, the image's compat libraries), so
//! that the plan itself reads nothing.

mod image;
mod proc;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nvidia_shim_core::cdi::spec::NodeType;
use nvidia_shim_core::cdi::{nodes_to_stat, NodeFacts, NodeFactsByPath, Registry, Resolved};
use nvidia_shim_core::edits::{driver_edits, DriverEdits, EditsError, GatedDevices};
use nvidia_shim_core::inventory::{rdev_major, rdev_minor, Arch, Inventory};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::plan::{library_sources, HostSnapshot, Split};
use nvidia_shim_core::select::Selection;
use nvidia_shim_core::{Config, GpuRequest};

use crate::discover::{gather_gated, mps_pipe_dir, present_endpoints};
use crate::elf::{self, MAX_LIBRARY_SIZE};
use crate::root::Root;
use crate::untrusted::{self, FinalLink};

pub use image::{compat_libcuda, image_facts, ld_folder_libraries, rootfs_plan_in_place};
pub use proc::proc_facts;

/// Where the host's facts are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The host root: daemon sockets, the MPS pipe directory and gated devices are under it
    /// (the config's `dev_root`, `/` on a real host).
    pub host_root: PathBuf,
    /// The driver's `/proc` (the config's `proc_root`).
    pub proc_root: PathBuf,
    /// This kernel's own `/proc`, which the container's will show.
    pub kernel_proc: PathBuf,
    /// The MPS pipe directory as the host names it.
    pub mps_pipe_dir: PathBuf,
}

impl HostPaths {
    /// The paths `config` and the shim's environment (`CUDA_MPS_PIPE_DIRECTORY`) name.
    pub fn from_config(config: &Config) -> Self {
        Self {
            host_root: config.dev_root.clone(),
            proc_root: config.proc_root.clone(),
            kernel_proc: PathBuf::from("/proc"),
            mps_pipe_dir: mps_pipe_dir(),
        }
    }
}

/// Reads what a plan for `request` (split as `split`) needs; `rootfs` is the container's
/// rootfs, opened confined.
pub fn gather(
    paths: &HostPaths,
    spec: &Spec,
    request: &GpuRequest,
    split: &Split,
    inventory: Option<&Inventory>,
    registry: Option<&Registry>,
    rootfs: Option<&Root>,
) -> HostSnapshot {
    let resolved = split.resolved(registry);
    let from_inventory = split.from_inventory.is_some();
    let (mounted_sonames, skipped_sources) = mounted_sonames(&library_sources(spec, &resolved));
    HostSnapshot {
        ipc: if from_inventory {
            present_endpoints(&paths.host_root, &paths.mps_pipe_dir)
        } else {
            Vec::new()
        },
        gated: if from_inventory {
            gather_gated(&paths.host_root, &request.gated)
        } else {
            GatedDevices::new()
        },
        proc: inventory
            .filter(|_| from_inventory)
            .map(|inv| proc_facts(&paths.proc_root, &paths.kernel_proc, inv))
            .unwrap_or_default(),
        cdi_nodes: node_facts(&resolved),
        mounted_sonames,
        skipped_sources,
        image: rootfs.map(image_facts).unwrap_or_default(),
        arch: inventory
            .map(|i| i.arch)
            .or_else(Arch::host)
            .unwrap_or_default(),
    }
}

/// The SONAMEs of the libraries at host paths `sources` (mount sources), and the sources not
/// read, with why. A tenant's volume may put a FIFO or a device there: it is never opened (a
/// final symlink is followed, as the kernel's bind mount follows it); a missing one is passed
/// over.
pub fn mounted_sonames(sources: &[&Path]) -> (BTreeMap<PathBuf, String>, Vec<(PathBuf, String)>) {
    let mut sonames = BTreeMap::new();
    let mut skipped = Vec::new();
    for source in sources {
        match untrusted::open(source, FinalLink::Follow, MAX_LIBRARY_SIZE) {
            Ok(f) => {
                if let Some(soname) = elf::read_info(&f).ok().and_then(|i| i.soname) {
                    sonames.insert(source.to_path_buf(), soname);
                }
            }
            Err(e) if e.is_missing() => {}
            Err(e) => skipped.push((source.to_path_buf(), e.to_string())),
        }
    }
    (sonames, skipped)
}

/// Stats `path` (following links): what a device node says of itself, or why it cannot say.
pub fn stat_node(path: &Path) -> Result<NodeFacts, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        NodeType::Char
    } else if ft.is_block_device() {
        NodeType::Block
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else {
        return Err("not a device node".to_owned());
    };
    let rdev = meta.rdev();
    Ok(NodeFacts {
        typ,
        major: i64::from(rdev_major(rdev)),
        minor: i64::from(rdev_minor(rdev)),
        mode: meta.mode() & 0o777,
    })
}

/// Stats the host nodes of `devices`' edits that need it (core's [`nodes_to_stat`]).
pub fn node_facts(devices: &[Resolved<'_>]) -> NodeFactsByPath {
    nodes_to_stat(devices)
        .into_iter()
        .map(|path| (path.to_owned(), stat_node(Path::new(path))))
        .collect()
}

/// The edits `request` needs on a host described by `inventory`, gathering the host facts
/// (IPC endpoints under the dev root, the shim's MPS pipe directory, gated devices) first: a
/// convenience over core's [`driver_edits`] for tools and tests. `Void` requests need none.
pub fn edits_for(inventory: &Inventory, request: &GpuRequest) -> Result<DriverEdits, EditsError> {
    let selection = Selection::resolve(inventory, &request.devices, request)?;
    let ipc = present_endpoints(&inventory.roots.dev_root, &mps_pipe_dir());
    let gated = gather_gated(&inventory.roots.dev_root, &request.gated);
    driver_edits(inventory, request, &selection, &ipc, &gated)
}

#[cfg(test)]
mod tests;
