//! What the driver inventory gives a request: device nodes (allowed in the device cgroup, in
//! the spec, so they survive `systemctl daemon-reload`), read-only bind mounts of driver files
//! at their host paths minus the driver root, IPC endpoints, the SONAME and `.so` links and ld
//! cache entries, and the environment written back. [`driver_edits`] decides them from its
//! inputs alone; [`DriverEdits::to_cdi`] expresses them as CDI container edits, the one edit
//! model, which [`crate::cdi::apply_edits`] applies and [`crate::cdi::generate`] writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::cdi::spec::{ContainerEdits as CdiEdits, DeviceNode as CdiNode, Mount, NodeType};
use crate::inventory::mig::{cap_node, gpu_cap_minors};
use crate::inventory::{
    endpoints_for, DeviceNode, DriverLibrary, GpuDevice, Inventory, IpcEndpoint, CORE_LIBRARIES,
    MIG_MINORS,
};
use crate::request::{Capabilities, Capability, DeviceSelection, GatedFeature, GpuRequest};
use crate::select::{SelectError, Selection};

/// Mount options of driver files (the toolkit's CDI specs use the same).
pub const FILE_MOUNT_OPTIONS: [&str; 5] = ["ro", "nosuid", "nodev", "rbind", "rprivate"];

/// Mount options of IPC endpoints (as the toolkit's: writable, no devices, setuid or exec).
pub const IPC_MOUNT_OPTIONS: [&str; 5] = ["nosuid", "nodev", "noexec", "rbind", "rprivate"];

/// What an extra link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkTo {
    /// The library's SONAME link (`libcuda.so -> libcuda.so.1`).
    Soname,
    /// The library's file (`libGLX_indirect.so.0 -> libGLX_nvidia.so.<version>`).
    File,
}

/// The links libnvidia-container makes beside the mounted libraries besides the SONAME links:
/// (library, link name, what it points at).
const EXTRA_LINKS: [(&str, &str, LinkTo); 3] = [
    ("libcuda", "libcuda.so", LinkTo::Soname),
    (
        "libnvidia-opticalflow",
        "libnvidia-opticalflow.so",
        LinkTo::Soname,
    ),
    ("libGLX_nvidia", "libGLX_indirect.so.0", LinkTo::File),
];

/// The host devices and files of the gated features a request enables, by feature (gathered
/// by the host).
pub type GatedDevices = BTreeMap<GatedFeature, (Vec<DeviceNode>, Vec<(PathBuf, PathBuf)>)>;

/// What the driver inventory adds to a container for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverEdits {
    /// Device nodes to create (and allow in the device cgroup).
    pub devices: Vec<DeviceNode>,
    /// Host files to bind-mount read-only: (host path, container path).
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// Host IPC endpoints (daemon sockets, the MPS pipe dir) to bind-mount read-write, without
    /// devices, setuid or exec: (host path, container path).
    pub ipc: Vec<(PathBuf, PathBuf)>,
    /// Symlinks to create in the rootfs: (link in the container, target).
    pub symlinks: Vec<(PathBuf, String)>,
    /// Entries for the container's ld cache: (name looked up, library file in the container).
    /// Every injected library has one under its SONAME; the `.so` links the toolkit makes
    /// (`libcuda.so`, `libGLX_indirect.so.0`, ...) have one too.
    pub ld_cache: Vec<(String, PathBuf)>,
    /// Environment entries to set (`KEY=value`).
    pub env: Vec<String>,
}

/// Why edits cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditsError {
    /// A requested GPU cannot be selected.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// MIG config/monitor was requested but the driver has no such capability.
    #[error("MIG {cap} requested, but the driver lists no MIG {cap} capability ({file} or the nvidia-caps major is missing)")]
    NoMigCaps {
        /// `config` or `monitor`.
        cap: &'static str,
        /// The `mig-minors` file read.
        file: PathBuf,
    },
    /// The driver's version is known but a library the request cannot do without is missing.
    #[error("capability {} needs {library}.so.{version}, but the driver root has no such library (searched {searched})", capability.name())]
    MissingLibrary {
        /// The capability needing it.
        capability: Capability,
        /// The library (`libcuda`).
        library: &'static str,
        /// The driver version looked for.
        version: String,
        /// The ld cache and directories searched.
        searched: String,
    },
    /// IMEX channels were requested but the driver has none.
    #[error("IMEX channel {channel} requested, but {devices} lists no nvidia-caps-imex-channels major (is the driver's IMEX support loaded?)")]
    NoImex {
        /// The first channel requested.
        channel: u32,
        /// The `/proc/devices` file read.
        devices: PathBuf,
    },
}

/// The edits `request` (with its devices resolved as `selection`) needs on a host described by
/// `inventory`, whose IPC endpoints are `ipc` and gated devices `gated`: pure. `Void` requests
/// need none.
pub fn driver_edits(
    inventory: &Inventory,
    request: &GpuRequest,
    selection: &Selection<'_>,
    ipc: &[IpcEndpoint],
    gated: &GatedDevices,
) -> Result<DriverEdits, EditsError> {
    if request.devices.is_void() {
        return Ok(DriverEdits::default());
    }
    let mut e = common_edits(inventory, &request.capabilities, ipc)?;
    let selected = &selection.devices;
    for g in &selected.gpus {
        if let Some(node) = inventory.gpu_nodes.get(&g.minor) {
            e.devices.push(node.clone());
        }
    }
    for m in &selected.migs {
        e.devices.push(m.gi_access.clone());
        e.devices.push(m.ci_access.clone());
    }
    for (asked, gpus, cap) in [
        (&request.mig_config, &selection.mig_config, "config"),
        (&request.mig_monitor, &selection.mig_monitor, "monitor"),
    ] {
        e.devices
            .extend(mig_admin_nodes(inventory, asked, gpus, cap)?);
    }
    if let Some(&channel) = request.imex_channels.first() {
        let major = *inventory
            .char_majors
            .get("nvidia-caps-imex-channels")
            .ok_or_else(|| EditsError::NoImex {
                channel,
                devices: inventory.roots.proc_root.join("devices"),
            })?;
        for &minor in &request.imex_channels {
            let path = format!("/dev/nvidia-caps-imex-channels/channel{minor}");
            e.devices.push(DeviceNode {
                host_path: inventory.roots.dev_root.join(path.trim_start_matches('/')),
                path: PathBuf::from(path),
                major,
                minor,
            });
        }
    }
    for feature in &request.gated {
        if let Some((nodes, files)) = gated.get(feature) {
            e.devices.extend(nodes.iter().cloned());
            e.mounts.extend(files.iter().cloned());
        }
    }
    // No hook or runtime after us may act on the request again.
    e.env.push("NVIDIA_VISIBLE_DEVICES=void".to_owned());
    Ok(e)
}

/// What every GPU container with `caps` gets whichever GPUs it has: the control nodes the
/// capabilities need, the driver libraries (with their links and ld cache entries), binaries,
/// firmware, graphics configs and the IPC endpoints of `ipc` the capabilities call for. Also
/// the spec-wide edits of a generated CDI spec. Pure.
pub fn common_edits(
    inventory: &Inventory,
    caps: &Capabilities,
    ipc: &[IpcEndpoint],
) -> Result<DriverEdits, EditsError> {
    let mut e = DriverEdits::default();
    e.devices.push(inventory.ctl.clone());
    if caps.needs_compute() {
        e.devices.extend(inventory.uvm.iter().cloned());
        e.devices.extend(inventory.uvm_tools.iter().cloned());
    }
    if caps.has(Capability::Display) {
        e.devices.extend(inventory.modeset.iter().cloned());
    }
    for (capability, library) in CORE_LIBRARIES {
        if caps.has(*capability) && inventory.library(library).is_none() {
            return Err(EditsError::MissingLibrary {
                capability: *capability,
                library,
                version: inventory.driver_version.clone(),
                searched: inventory
                    .library_search
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let libraries: Vec<&DriverLibrary> = inventory
        .libraries
        .iter()
        .filter(|l| l.group.wanted(caps))
        .collect();
    for lib in &libraries {
        let target = &lib.container_path;
        if let (Some(soname), Some(dir), Some(file)) =
            (&lib.soname, target.parent(), target.file_name())
        {
            let file = file.to_string_lossy();
            if *soname != file {
                e.symlinks.push((dir.join(soname), file.into_owned()));
            }
            e.ld_cache.push((soname.clone(), target.clone()));
        }
        e.mounts.push((lib.path.clone(), target.clone()));
    }
    for (name, link, points_at) in EXTRA_LINKS {
        let Some(lib) = libraries.iter().find(|l| l.name() == name) else {
            continue;
        };
        let (Some(dir), Some(file)) = (lib.container_path.parent(), lib.container_path.file_name())
        else {
            continue;
        };
        let target = match points_at {
            LinkTo::Soname => match &lib.soname {
                Some(s) => s.clone(),
                None => continue,
            },
            LinkTo::File => file.to_string_lossy().into_owned(),
        };
        e.symlinks.push((dir.join(link), target));
        e.ld_cache
            .push((link.to_owned(), lib.container_path.clone()));
    }
    for b in &inventory.binaries {
        if caps.has(b.capability) {
            e.mounts.push((b.path.clone(), b.container_path.clone()));
        }
    }
    e.mounts.extend(inventory.firmware.iter().cloned());
    if caps.needs_graphics() {
        e.mounts.extend(inventory.graphics_configs.iter().cloned());
    }
    e.ipc = endpoints_for(ipc, caps);
    Ok(e)
}

/// The nodes `NVIDIA_MIG_CONFIG_DEVICES`/`MONITOR_DEVICES` (`cap` = `config`/`monitor`) give:
/// the global capability and every MIG capability of `gpus`, those `selection` names.
fn mig_admin_nodes(
    inventory: &Inventory,
    selection: &DeviceSelection,
    gpus: &[&GpuDevice],
    cap: &'static str,
) -> Result<Vec<DeviceNode>, EditsError> {
    if selection.is_void() || matches!(selection, DeviceSelection::NoGpu) {
        return Ok(Vec::new());
    }
    let minors = &inventory.mig_minors;
    let no_caps = || EditsError::NoMigCaps {
        cap,
        file: inventory.roots.proc_root.join(MIG_MINORS),
    };
    let major = *inventory
        .char_majors
        .get("nvidia-caps")
        .ok_or_else(no_caps)?;
    let &global = minors.get(cap).ok_or_else(no_caps)?;
    let dev_root = &inventory.roots.dev_root;
    let mut nodes = vec![cap_node(dev_root, major, global)];
    for g in gpus {
        nodes.extend(
            gpu_cap_minors(minors, g.minor)
                .into_iter()
                .map(|m| cap_node(dev_root, major, m)),
        );
    }
    Ok(nodes)
}

/// A host node as a complete CDI node edit: character device, mode 0666, root-owned, `rwm`
/// in the device cgroup (what libnvidia-container gives).
pub fn cdi_node(node: &DeviceNode) -> CdiNode {
    let host = node.host_path.to_string_lossy().into_owned();
    let path = node.path.to_string_lossy().into_owned();
    CdiNode {
        host_path: (host != path).then_some(host),
        path,
        typ: Some(NodeType::Char),
        major: Some(i64::from(node.major)),
        minor: Some(i64::from(node.minor)),
        file_mode: Some(0o666),
        permissions: Some("rwm".to_owned()),
        uid: Some(0),
        gid: Some(0),
    }
}

/// A bind mount edit of a host path.
pub fn cdi_mount(host: &Path, container: &Path, options: &[&str]) -> Mount {
    Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.to_string_lossy().into_owned(),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
        typ: Some("bind".to_owned()),
    }
}

impl DriverEdits {
    /// The edits as CDI container edits (complete nodes; files read-only, IPC endpoints
    /// writable). The links and ld cache entries are not container edits: they go into the
    /// rootfs plan.
    pub fn to_cdi(&self) -> CdiEdits {
        let files = self.mounts.iter().map(|m| (m, &FILE_MOUNT_OPTIONS));
        let ipc = self.ipc.iter().map(|m| (m, &IPC_MOUNT_OPTIONS));
        CdiEdits {
            env: self.env.clone(),
            device_nodes: self.devices.iter().map(cdi_node).collect(),
            mounts: files
                .chain(ipc)
                .map(|((host, container), options)| cdi_mount(host, container, options))
                .collect(),
            ..CdiEdits::default()
        }
    }
}

/// Sets `KEY=value` entries in the process environment, replacing any entry with the same key.
pub fn set_env(spec: &mut Spec, entries: &[String]) {
    if entries.is_empty() {
        return;
    }
    if let Some(process) = spec.process_mut() {
        let env = process.env_mut().get_or_insert_with(Vec::new);
        for kv in entries {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            env.push(kv.clone());
        }
    }
}
