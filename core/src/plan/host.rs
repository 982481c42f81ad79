//! The host and image facts [`super::plan`] decides from, gathered once per Create: every read
//! of the GPU path happens here, so that the plan itself is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::Split;
use crate::cdi::{gather_node_facts, NodeFactsByPath, Registry};
use crate::compat::{self, CompatLibcuda, COMPAT_DIR};
use crate::discover::{mps_pipe_dir, present_endpoints, Arch, Inventory, IpcEndpoint};
use crate::edits::{gather_gated, GatedDevices};
use crate::elf::read_info;
use crate::proc_overlay::ProcFacts;
use crate::request::GpuRequest;
use crate::rootfs::Rootfs;
use crate::Config;

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

/// What the image holds that the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    /// Its CUDA forward-compat `libcuda`, when it has exactly one.
    pub compat: Option<CompatLibcuda>,
    /// Every library in its compat directory, as (SONAME, path in the container).
    pub compat_libs: Vec<(String, PathBuf)>,
}

impl ImageFacts {
    /// Reads the image's compat directory through the confined `rootfs`.
    pub fn gather(rootfs: &Rootfs) -> Self {
        let Some(lib) = compat::find(rootfs) else {
            return Self::default();
        };
        let dir = Path::new(COMPAT_DIR);
        let mut compat_libs = Vec::new();
        for e in rootfs.list_dir(dir) {
            if !e.is_file || !e.name.starts_with("lib") || !e.name.contains(".so") {
                continue;
            }
            let path = dir.join(&e.name);
            // libcuda was read when its note was; the others are read for their SONAME.
            let soname = if path == lib.path {
                lib.soname.clone()
            } else {
                rootfs
                    .open_file(&path)
                    .and_then(|f| read_info(&f).ok())
                    .and_then(|i| i.soname)
            };
            if let Some(soname) = soname {
                compat_libs.push((soname, path));
            }
        }
        Self {
            compat: Some(lib),
            compat_libs,
        }
    }
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
    /// The image's compat libraries.
    pub image: ImageFacts,
    /// The architecture whose ld cache flags apply.
    pub arch: Arch,
}

impl HostSnapshot {
    /// Reads what a plan for `request` (split as `split`) needs; `rootfs` is the container's
    /// rootfs, opened confined.
    pub fn gather(
        paths: &HostPaths,
        spec: &Spec,
        request: &GpuRequest,
        split: &Split,
        inventory: Option<&Inventory>,
        registry: Option<&Registry>,
        rootfs: Option<&Rootfs>,
    ) -> Self {
        let resolved = registry
            .filter(|_| !split.cdi_names.is_empty())
            .and_then(|r| r.resolve(&split.cdi_names).ok())
            .unwrap_or_default();
        let from_inventory = split.from_inventory.is_some();
        let mut sources: Vec<(&Path, &Path)> = spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| Some((m.source().as_deref()?, m.destination().as_path())))
            .collect();
        for r in &resolved {
            for e in [&r.spec.container_edits, &r.device.container_edits] {
                sources.extend(
                    e.mounts
                        .iter()
                        .map(|m| (Path::new(&m.host_path), Path::new(&m.container_path))),
                );
            }
        }
        let mut mounted_sonames = BTreeMap::new();
        for (source, destination) in sources {
            let is_library = destination
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"));
            if !is_library || mounted_sonames.contains_key(source) {
                continue;
            }
            let soname = std::fs::File::open(source)
                .ok()
                .and_then(|f| read_info(&f).ok())
                .and_then(|i| i.soname);
            if let Some(soname) = soname {
                mounted_sonames.insert(source.to_owned(), soname);
            }
        }
        Self {
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
                .map(|inv| ProcFacts::gather(&paths.proc_root, &paths.kernel_proc, inv))
                .unwrap_or_default(),
            cdi_nodes: gather_node_facts(&resolved),
            mounted_sonames,
            image: rootfs.map(ImageFacts::gather).unwrap_or_default(),
            arch: inventory
                .map(|i| i.arch)
                .or_else(Arch::host)
                .unwrap_or_default(),
        }
    }
}
