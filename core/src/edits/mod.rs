//! OCI spec edits that give a container its GPUs: device nodes with matching device-cgroup
//! allow rules (in the spec, so they survive `systemctl daemon-reload`), read-only bind mounts
//! of driver files at their host paths minus the driver root, the environment written back, and
//! removal of any NVIDIA toolkit hook. [`apply`] is idempotent.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxResourcesBuilder, Mount, MountBuilder, Spec,
};

use crate::discover::mig::{cap_node, gpu_cap_minors};
use crate::discover::{
    gated, ipc_endpoints, mps_pipe_dir, DeviceNode, DriverLibrary, Inventory, CORE_LIBRARIES,
    MIG_MINORS,
};
use crate::request::{Capability, DeviceSelection, GpuRequest};
use crate::select::{select, select_devices, SelectError};

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

/// What a request adds to a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerEdits {
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

/// The edits `request` needs on a host described by `inventory`. `Void` requests need none.
pub fn edits_for(
    inventory: &Inventory,
    request: &GpuRequest,
) -> Result<ContainerEdits, EditsError> {
    if request.devices.is_void() {
        return Ok(ContainerEdits::default());
    }
    let selected = select_devices(inventory, &request.devices)?;
    let gpus = selected.gpus;
    let caps = &request.capabilities;
    let mut e = ContainerEdits::default();
    e.devices.push(inventory.ctl.clone());
    if caps.needs_compute() {
        e.devices.extend(inventory.uvm.iter().cloned());
        e.devices.extend(inventory.uvm_tools.iter().cloned());
    }
    if caps.has(Capability::Display) {
        e.devices.extend(inventory.modeset.iter().cloned());
    }
    for g in &gpus {
        if let Some(node) = inventory.gpu_nodes.get(&g.minor) {
            e.devices.push(node.clone());
        }
    }
    for m in &selected.migs {
        e.devices.push(m.gi_access.clone());
        e.devices.push(m.ci_access.clone());
    }
    for (selection, cap) in [
        (&request.mig_config, "config"),
        (&request.mig_monitor, "monitor"),
    ] {
        e.devices
            .extend(mig_admin_nodes(inventory, selection, cap)?);
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
    e.ipc = ipc_endpoints(&inventory.roots.dev_root, caps, &mps_pipe_dir());
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
    for &feature in &request.gated {
        let (nodes, files) = gated(&inventory.roots.dev_root, feature);
        e.devices.extend(nodes);
        e.mounts.extend(files);
    }
    // No hook or runtime after us may act on the request again.
    e.env.push("NVIDIA_VISIBLE_DEVICES=void".to_owned());
    Ok(e)
}

/// The nodes `NVIDIA_MIG_CONFIG_DEVICES`/`MONITOR_DEVICES` (`cap` = `config`/`monitor`) give:
/// the global capability and every MIG capability of the GPUs `selection` names.
fn mig_admin_nodes(
    inventory: &Inventory,
    selection: &DeviceSelection,
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
    for g in select(inventory, selection)? {
        nodes.extend(
            gpu_cap_minors(minors, g.minor)
                .into_iter()
                .map(|m| cap_node(dev_root, major, m)),
        );
    }
    Ok(nodes)
}

fn device(node: &DeviceNode) -> LinuxDevice {
    LinuxDeviceBuilder::default()
        .path(node.path.clone())
        .typ(LinuxDeviceType::C)
        .major(i64::from(node.major))
        .minor(i64::from(node.minor))
        .file_mode(0o666u32)
        .uid(0u32)
        .gid(0u32)
        .build()
        .expect("all device fields are set")
}

fn allow_rule(node: &DeviceNode) -> LinuxDeviceCgroup {
    LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(i64::from(node.major))
        .minor(i64::from(node.minor))
        .access("rwm")
        .build()
        .expect("all rule fields are set")
}

fn bind_mount(host: &Path, container: &Path, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(container)
        .source(host)
        .typ("bind")
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .expect("all mount fields are set")
}

/// Sets `KEY=value` entries in the process environment, replacing any entry with the same key.
pub fn set_env(spec: &mut Spec, entries: &[String]) {
    if entries.is_empty() {
        return;
    }
    if let Some(mut process) = spec.process().clone() {
        let mut env = process.env().clone().unwrap_or_default();
        for kv in entries {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            env.push(kv.clone());
        }
        process.set_env(Some(env));
        spec.set_process(Some(process));
    }
}

fn is_toolkit_hook(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "nvidia-container-runtime-hook" || n == "nvidia-container-toolkit")
}

/// Applies `edits` to `spec`. Applying twice gives the same spec as applying once; nodes and
/// mounts already present (from CDI or device-plugin `DeviceSpecs`) are not duplicated.
pub fn apply(spec: &mut Spec, edits: &ContainerEdits) {
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().expect("empty linux"));
    let mut devices = linux.devices().clone().unwrap_or_default();
    for node in &edits.devices {
        if !devices.iter().any(|d| d.path() == &node.path) {
            devices.push(device(node));
        }
    }
    if !devices.is_empty() {
        linux.set_devices(Some(devices));
    }
    let mut resources = linux.resources().clone().unwrap_or_else(|| {
        LinuxResourcesBuilder::default()
            .build()
            .expect("empty resources")
    });
    let mut rules = resources.devices().clone().unwrap_or_default();
    for node in &edits.devices {
        let rule = allow_rule(node);
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    if !edits.devices.is_empty() {
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }
    spec.set_linux(Some(linux));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let files = edits.mounts.iter().map(|m| (m, &FILE_MOUNT_OPTIONS));
    let ipc = edits.ipc.iter().map(|m| (m, &IPC_MOUNT_OPTIONS));
    for ((host, container), options) in files.chain(ipc) {
        if !mounts.iter().any(|m| m.destination() == container) {
            mounts.push(bind_mount(host, container, options));
        }
    }
    spec.set_mounts(Some(mounts));

    set_env(spec, &edits.env);

    if let Some(mut hooks) = spec.hooks().clone() {
        if let Some(prestart) = hooks.prestart().clone() {
            let kept: Vec<_> = prestart
                .into_iter()
                .filter(|h| !is_toolkit_hook(h.path()))
                .collect();
            hooks.set_prestart(if kept.is_empty() { None } else { Some(kept) });
        }
        if let Some(create) = hooks.create_runtime().clone() {
            let kept: Vec<_> = create
                .into_iter()
                .filter(|h| !is_toolkit_hook(h.path()))
                .collect();
            hooks.set_create_runtime(if kept.is_empty() { None } else { Some(kept) });
        }
        spec.set_hooks(Some(hooks));
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
