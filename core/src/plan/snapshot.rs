//! The host and image facts [`super::plan`] decides from, as values: gathered once per Create
//! by the host (`nvidia-shim-core-host`'s `snapshot`), so that the plan itself reads nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cdi::NodeFactsByPath;
use crate::compat::CompatLibcuda;
use crate::edits::GatedDevices;
use crate::inventory::{Arch, IpcEndpoint};
use crate::proc_overlay::ProcFacts;

/// What the image holds that the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    /// Its CUDA forward-compat `libcuda`, when it has exactly one.
    pub compat: Option<CompatLibcuda>,
    /// Every library in its compat directory, as (SONAME, path in the container).
    pub compat_libs: Vec<(String, PathBuf)>,
    /// Files of the image not read, and why (a FIFO, a device, a file over the size limit).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Everything the plan knows of the host and the image besides the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostSnapshot {
    /// IPC endpoints present on the host.
    pub ipc: Vec<IpcEndpoint>,
    /// Devices of the gated features the request enables.
    pub gated: GatedDevices,
    /// The driver's `/proc` tree.
    pub proc: ProcFacts,
    /// Host nodes of the resolved CDI devices that their edits leave incomplete.
    pub cdi_nodes: NodeFactsByPath,
    /// SONAMEs of the `*.so*` files the spec and the CDI devices mount, by host path.
    pub mounted_sonames: BTreeMap<PathBuf, String>,
    /// Mount sources named like libraries that were not read, and why (a FIFO, a device, a
    /// directory, a file over the size limit): they get no SONAME link or ld cache entry.
    pub skipped_sources: Vec<(PathBuf, String)>,
    /// The image's compat libraries.
    pub image: ImageFacts,
    /// The architecture whose ld cache flags apply.
    pub arch: Arch,
}
