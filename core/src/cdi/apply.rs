//! Applying resolved CDI devices to an OCI spec with CDI's semantics (env replaced by key,
//! device nodes completed from the host node and allowed in the device cgroup, mounts replacing
//! any at the same destination and sorted by depth, hooks added, extra groups), except that the
//! NVIDIA toolkit's `nvidia-cdi-hook` / `nvidia-ctk hook` steps are done natively by the shim
//! and returned as a [`HookPlan`] instead of being run as host programs.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook as OciHook, HookBuilder, LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxResourcesBuilder, MountBuilder, Spec,
};

use super::registry::Resolved;
use super::spec::{ContainerEdits, DeviceNode, Hook, Mount};
use crate::edits::set_env;

/// Toolkit hook steps the shim does itself rather than run `nvidia-cdi-hook`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPlan {
    /// `create-symlinks`: (link in the container, target).
    pub symlinks: Vec<(PathBuf, String)>,
    /// `update-ldcache`: directories whose libraries go into the container's ld cache.
    pub ld_folders: Vec<PathBuf>,
    /// `enable-cuda-compat`: the host driver version to compare compat libraries with.
    pub cuda_compat_host_version: Option<String>,
    /// `disable-device-node-modification`: NVML must not create or chmod nodes.
    pub disable_device_node_modification: bool,
}

/// Why CDI edits cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A device node without major/minor whose host node cannot be read.
    #[error("CDI device {device}: node {path}: {reason}")]
    Node {
        /// The qualified device.
        device: String,
        /// The host path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An edit this runtime does not apply.
    #[error("CDI device {device}: {what} is not supported by this runtime")]
    Unsupported {
        /// The qualified device.
        device: String,
        /// The edit.
        what: &'static str,
    },
}

/// Applies the devices' edits (and each touched spec's spec-wide edits, once) to `spec`.
pub fn apply(spec: &mut Spec, devices: &[Resolved<'_>]) -> Result<HookPlan, ApplyError> {
    let mut plan = HookPlan::default();
    let mut specs_done = BTreeSet::new();
    for r in devices {
        let name = format!("{}={}", r.spec.kind, r.device.name);
        if specs_done.insert(r.spec_index) {
            apply_edits(spec, &r.spec.container_edits, &name, &mut plan)?;
        }
        apply_edits(spec, &r.device.container_edits, &name, &mut plan)?;
    }
    sort_mounts_by_depth(spec);
    Ok(plan)
}

fn apply_edits(
    spec: &mut Spec,
    e: &ContainerEdits,
    device: &str,
    plan: &mut HookPlan,
) -> Result<(), ApplyError> {
    let unsupported = |what| ApplyError::Unsupported {
        device: device.to_owned(),
        what,
    };
    if e.intel_rdt.is_some() {
        return Err(unsupported("intelRdt"));
    }
    if !e.net_devices.is_empty() {
        return Err(unsupported("netDevices"));
    }
    set_env(spec, &e.env);
    for node in &e.device_nodes {
        add_node(spec, node, device)?;
    }
    for m in &e.mounts {
        add_mount(spec, m);
    }
    for h in &e.hooks {
        if !plan_toolkit_hook(h, plan) {
            add_hook(spec, h);
        }
    }
    add_gids(spec, &e.additional_gids);
    Ok(())
}

fn add_node(spec: &mut Spec, node: &DeviceNode, device: &str) -> Result<(), ApplyError> {
    let host = node.host_path.as_deref().unwrap_or(&node.path);
    let err = |reason: String| ApplyError::Node {
        device: device.to_owned(),
        path: host.to_owned(),
        reason,
    };
    let need_stat = node.typ.is_none()
        || node.file_mode.is_none()
        || (node.typ.as_deref() != Some("p") && (node.major.is_none() || node.minor.is_none()));
    let meta = if need_stat {
        Some(std::fs::metadata(host).map_err(|e| err(e.to_string()))?)
    } else {
        None
    };
    let typ = match node.typ.as_deref() {
        Some(t) => t.to_owned(),
        None => {
            let ft = meta.as_ref().map(|m| m.file_type());
            match ft {
                Some(ft) if ft.is_char_device() => "c".to_owned(),
                Some(ft) if ft.is_block_device() => "b".to_owned(),
                Some(ft) if ft.is_fifo() => "p".to_owned(),
                _ => return Err(err("not a device node".to_owned())),
            }
        }
    };
    let rdev = meta.as_ref().map(MetadataExt::rdev).unwrap_or(0);
    let major = node
        .major
        .unwrap_or_else(|| i64::from(crate::discover::rdev_major(rdev)));
    let minor = node
        .minor
        .unwrap_or_else(|| i64::from(crate::discover::rdev_minor(rdev)));
    let file_mode = node
        .file_mode
        .or_else(|| meta.as_ref().map(|m| m.mode() & 0o777))
        .unwrap_or(0o666);
    let user = spec.process().as_ref().map(|p| p.user().clone());
    let uid = node
        .uid
        .or_else(|| user.as_ref().map(|u| u.uid()).filter(|u| *u > 0));
    let gid = node
        .gid
        .or_else(|| user.as_ref().map(|u| u.gid()).filter(|g| *g > 0));
    let linux_type = match typ.as_str() {
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    };
    let mut b = LinuxDeviceBuilder::default()
        .path(PathBuf::from(&node.path))
        .typ(linux_type)
        .major(major)
        .minor(minor)
        .file_mode(file_mode);
    if let Some(uid) = uid {
        b = b.uid(uid);
    }
    if let Some(gid) = gid {
        b = b.gid(gid);
    }
    let dev = b.build().map_err(|e| err(e.to_string()))?;

    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().expect("empty linux"));
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.retain(|d| d.path() != dev.path());
    devices.push(dev);
    linux.set_devices(Some(devices));
    let access = node.permissions.as_deref().unwrap_or("rwm");
    if matches!(typ.as_str(), "b" | "c") && access != "none" {
        let access = if access.is_empty() { "rwm" } else { access };
        let mut resources = linux.resources().clone().unwrap_or_else(|| {
            LinuxResourcesBuilder::default()
                .build()
                .expect("empty resources")
        });
        let mut rules = resources.devices().clone().unwrap_or_default();
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(linux_type)
            .major(major)
            .minor(minor)
            .access(access)
            .build()
            .map_err(|e| err(e.to_string()))?;
        if !rules.contains(&rule) {
            rules.push(rule);
        }
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }
    spec.set_linux(Some(linux));
    Ok(())
}

fn add_mount(spec: &mut Spec, m: &Mount) {
    let is_bind = m.options.iter().any(|o| o == "bind" || o == "rbind");
    let typ = m.typ.clone().or_else(|| is_bind.then(|| "bind".to_owned()));
    let mut b = MountBuilder::default()
        .destination(PathBuf::from(&m.container_path))
        .source(PathBuf::from(&m.host_path))
        .options(m.options.clone());
    if let Some(t) = typ {
        b = b.typ(t);
    }
    let mount = b.build().expect("all mount fields are set");
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|x| x.destination() != mount.destination());
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count()
}

fn sort_mounts_by_depth(spec: &mut Spec) {
    if let Some(mut mounts) = spec.mounts().clone() {
        mounts.sort_by_key(|m| depth(m.destination()));
        spec.set_mounts(Some(mounts));
    }
}

/// The values of `--flag X` and `--flag=X` in `args`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    let long = format!("{flag}=");
    while let Some(a) = it.next() {
        if a == flag {
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix(&long) {
            out.push(v.to_owned());
        }
    }
    out
}

/// Records a toolkit hook step in `plan`; false when the hook is not one the shim does itself.
fn plan_toolkit_hook(h: &Hook, plan: &mut HookPlan) -> bool {
    let program = Path::new(&h.path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let args: &[String] = h.args.get(1..).unwrap_or_default();
    let args = match program {
        "nvidia-cdi-hook" => args,
        "nvidia-ctk" if args.first().is_some_and(|a| a == "hook") => &args[1..],
        _ => return false,
    };
    let Some((sub, rest)) = args.split_first() else {
        return false;
    };
    match sub.as_str() {
        "create-symlinks" => {
            for link in flag_values(rest, "--link") {
                if let Some((target, path)) = link.split_once("::") {
                    plan.symlinks.push((PathBuf::from(path), target.to_owned()));
                }
            }
        }
        "update-ldcache" => {
            for dir in flag_values(rest, "--folder") {
                let dir = PathBuf::from(dir);
                if !plan.ld_folders.contains(&dir) {
                    plan.ld_folders.push(dir);
                }
            }
        }
        "enable-cuda-compat" => {
            plan.cuda_compat_host_version = flag_values(rest, "--host-driver-version")
                .into_iter()
                .next();
        }
        "disable-device-node-modification" => plan.disable_device_node_modification = true,
        _ => return false,
    }
    true
}

fn add_hook(spec: &mut Spec, h: &Hook) {
    let mut b = HookBuilder::default().path(PathBuf::from(&h.path));
    if !h.args.is_empty() {
        b = b.args(h.args.clone());
    }
    if !h.env.is_empty() {
        b = b.env(h.env.clone());
    }
    if let Some(t) = h.timeout {
        b = b.timeout(t);
    }
    let hook: OciHook = b.build().expect("hook path is set");
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let list = match h.hook_name.as_str() {
        #[allow(deprecated)]
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        _ => hooks.poststop_mut(),
    };
    let list = list.get_or_insert_with(Vec::new);
    if !list.contains(&hook) {
        list.push(hook);
    }
    spec.set_hooks(Some(hooks));
}

fn add_gids(spec: &mut Spec, gids: &[u32]) {
    let gids: Vec<u32> = gids.iter().copied().filter(|g| *g != 0).collect();
    if gids.is_empty() {
        return;
    }
    if let Some(mut process) = spec.process().clone() {
        let mut user = process.user().clone();
        let mut all = user.additional_gids().clone().unwrap_or_default();
        for g in gids {
            if !all.contains(&g) {
                all.push(g);
            }
        }
        user.set_additional_gids(Some(all));
        process.set_user(user);
        spec.set_process(Some(process));
    }
}

#[cfg(test)]
mod tests;
