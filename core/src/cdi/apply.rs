//! The one edit engine: CDI `containerEdits` applied to an OCI spec with CDI's semantics (env
//! replaced by key, device nodes allowed in the device cgroup, mounts replacing any at the same
//! destination and sorted by depth, hooks added by stage, extra groups). Every GPU edit goes
//! through it: those of CDI specs on disk and those the driver inventory gives
//! ([`crate::edits`]).
//!
//! Everything here is pure: the host stats the nodes an edit leaves incomplete
//! ([`nodes_to_stat`]) into a [`NodeFactsByPath`]; [`device_edits`] completes the nodes from it
//! and turns the NVIDIA toolkit's `nvidia-cdi-hook` / `nvidia-ctk hook` steps into a
//! [`HookPlan`] the shim performs natively, and [`apply_edits`] edits the spec.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook as OciHook, HookBuilder, LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxResourcesBuilder, MountBuilder, Spec,
};

use super::registry::Resolved;
use super::spec::{ContainerEdits, DeviceNode, Hook, HookStage, Mount, NodeType};
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
    /// `chmod --mode M --path P`: (path in the container, mode).
    pub chmods: Vec<(PathBuf, u32)>,
}

impl HookPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `other`'s steps to these (links and folders once each; the first compat version
    /// stands).
    pub fn merge(&mut self, other: Self) {
        for link in other.symlinks {
            if !self.symlinks.contains(&link) {
                self.symlinks.push(link);
            }
        }
        for dir in other.ld_folders {
            if !self.ld_folders.contains(&dir) {
                self.ld_folders.push(dir);
            }
        }
        if self.cuda_compat_host_version.is_none() {
            self.cuda_compat_host_version = other.cuda_compat_host_version;
        }
        self.disable_device_node_modification |= other.disable_device_node_modification;
        self.chmods.extend(other.chmods);
    }
}

/// Why CDI edits cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A device node without type, major/minor or mode whose host node cannot be read.
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

/// What a host device node says of itself (its `stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    /// Its type.
    pub typ: NodeType,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
}

/// Host node facts by host path (the stat's error text when it failed).
pub type NodeFactsByPath = BTreeMap<String, Result<NodeFacts, String>>;

/// The host path of a node edit.
pub fn host_path(node: &DeviceNode) -> &str {
    node.host_path.as_deref().unwrap_or(&node.path)
}

/// Whether a node edit leaves something to read from the host node.
pub fn needs_host_facts(node: &DeviceNode) -> bool {
    node.typ.is_none()
        || node.file_mode.is_none()
        || (node.typ != Some(NodeType::Fifo) && (node.major.is_none() || node.minor.is_none()))
}

/// The host paths of `devices`' node edits that leave something to read from the host node
/// ([`needs_host_facts`]), each once, in order: what the host stats into a [`NodeFactsByPath`].
pub fn nodes_to_stat<'a>(devices: &[Resolved<'a>]) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for r in devices {
        for e in [&r.spec.container_edits, &r.device.container_edits] {
            for node in e.device_nodes.iter().filter(|n| needs_host_facts(n)) {
                let path = host_path(node);
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
    }
    out
}

/// The edits of `devices` (each touched spec's spec-wide edits once, before its first
/// device's) with every node completed from `facts` and the toolkit's hook steps taken out into
/// the returned [`HookPlan`]: pure.
pub fn device_edits(
    devices: &[Resolved<'_>],
    facts: &NodeFactsByPath,
) -> Result<(Vec<ContainerEdits>, HookPlan), ApplyError> {
    let mut plan = HookPlan::default();
    let mut out = Vec::new();
    let mut specs_done = BTreeSet::new();
    for r in devices {
        let name = format!("{}={}", r.spec.kind, r.device.name);
        if specs_done.insert(r.spec_index) {
            out.push(complete(&r.spec.container_edits, &name, facts, &mut plan)?);
        }
        out.push(complete(
            &r.device.container_edits,
            &name,
            facts,
            &mut plan,
        )?);
    }
    Ok((out, plan))
}

fn complete(
    e: &ContainerEdits,
    device: &str,
    facts: &NodeFactsByPath,
    plan: &mut HookPlan,
) -> Result<ContainerEdits, ApplyError> {
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
    let mut out = e.clone();
    for node in &mut out.device_nodes {
        if !needs_host_facts(node) {
            continue;
        }
        let err = |reason: String| ApplyError::Node {
            device: device.to_owned(),
            path: host_path(node).to_owned(),
            reason,
        };
        let found = match facts.get(host_path(node)) {
            Some(Ok(f)) => *f,
            Some(Err(reason)) => return Err(err(reason.clone())),
            None => return Err(err("not read from the host".to_owned())),
        };
        node.typ.get_or_insert(found.typ);
        node.major.get_or_insert(found.major);
        node.minor.get_or_insert(found.minor);
        node.file_mode.get_or_insert(found.mode);
    }
    out.hooks.retain(|h| !plan_toolkit_hook(h, plan));
    Ok(out)
}

/// Applies `edits` in order to `spec` (a later edit replaces an earlier one at the same node
/// path or mount destination), sorts the mounts by depth, and removes the NVIDIA toolkit's
/// legacy prestart/createRuntime hooks (this runtime does their work itself). Applying twice
/// gives the spec applying once does.
pub fn apply_edits(spec: &mut Spec, edits: &[ContainerEdits]) -> Result<(), ApplyError> {
    for e in edits {
        set_env(spec, &e.env);
        for node in &e.device_nodes {
            add_node(spec, node)?;
        }
        for m in &e.mounts {
            add_mount(spec, m);
        }
        for h in &e.hooks {
            add_hook(spec, h);
        }
        add_gids(spec, &e.additional_gids);
    }
    if edits.iter().any(|e| !e.mounts.is_empty()) {
        sort_mounts_by_depth(spec);
    }
    remove_toolkit_hooks(spec);
    Ok(())
}

fn add_node(spec: &mut Spec, node: &DeviceNode) -> Result<(), ApplyError> {
    let err = |reason: &str| ApplyError::Node {
        device: node.path.clone(),
        path: host_path(node).to_owned(),
        reason: reason.to_owned(),
    };
    let typ = node.typ.ok_or_else(|| err("no type"))?;
    let (major, minor) = match (node.major, node.minor, typ) {
        (Some(major), Some(minor), _) => (major, minor),
        (_, _, NodeType::Fifo) => (0, 0),
        _ => return Err(err("no major/minor")),
    };
    let file_mode = node.file_mode.unwrap_or(0o666);
    let user = spec
        .process()
        .as_ref()
        .map(|p| (p.user().uid(), p.user().gid()));
    let uid = node
        .uid
        .or_else(|| user.map(|(uid, _)| uid).filter(|u| *u > 0));
    let gid = node
        .gid
        .or_else(|| user.map(|(_, gid)| gid).filter(|g| *g > 0));
    let mut b = LinuxDeviceBuilder::default()
        .path(PathBuf::from(&node.path))
        .typ(typ.linux())
        .major(major)
        .minor(minor)
        .file_mode(file_mode);
    if let Some(uid) = uid {
        b = b.uid(uid);
    }
    if let Some(gid) = gid {
        b = b.gid(gid);
    }
    let dev = b.build().map_err(|e| err(&e.to_string()))?;
    let access = node.permissions.as_deref().unwrap_or("rwm");
    let rule = if typ.has_cgroup_rule() && access != "none" {
        let access = if access.is_empty() { "rwm" } else { access };
        Some(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ.linux())
                .major(major)
                .minor(minor)
                .access(access)
                .build()
                .map_err(|e| err(&e.to_string()))?,
        )
    } else {
        None
    };
    // In place: the Linux section may carry a large seccomp profile, not to be copied per node.
    let linux = spec
        .linux_mut()
        .get_or_insert_with(|| LinuxBuilder::default().build().expect("empty linux"));
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|d| d.path() != dev.path());
    devices.push(dev);
    if let Some(rule) = rule {
        let resources = linux.resources_mut().get_or_insert_with(|| {
            LinuxResourcesBuilder::default()
                .build()
                .expect("empty resources")
        });
        let rules = resources.devices_mut().get_or_insert_with(Vec::new);
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
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
    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    mounts.retain(|x| x.destination() != mount.destination());
    mounts.push(mount);
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count()
}

fn sort_mounts_by_depth(spec: &mut Spec) {
    if let Some(mounts) = spec.mounts_mut() {
        mounts.sort_by_cached_key(|m| depth(m.destination()));
    }
}

fn is_toolkit_hook(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "nvidia-container-runtime-hook" || n == "nvidia-container-toolkit")
}

/// Drops the legacy toolkit hooks (`nvidia-container-runtime-hook`, which Docker's `--gpus`
/// adds) a spec may carry: this runtime injects the GPUs itself. True when there were some.
pub fn remove_toolkit_hooks(spec: &mut Spec) -> bool {
    let Some(mut hooks) = spec.hooks().clone() else {
        return false;
    };
    #[allow(deprecated)]
    let any = hooks
        .prestart()
        .iter()
        .chain(hooks.create_runtime())
        .flatten()
        .any(|h| is_toolkit_hook(h.path()));
    if !any {
        return false;
    }
    let keep = |list: Option<Vec<OciHook>>| {
        list.map(|l| {
            l.into_iter()
                .filter(|h| !is_toolkit_hook(h.path()))
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
    };
    #[allow(deprecated)]
    let prestart = keep(hooks.prestart().clone());
    #[allow(deprecated)]
    hooks.set_prestart(prestart);
    hooks.set_create_runtime(keep(hooks.create_runtime().clone()));
    spec.set_hooks(Some(hooks));
    true
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

/// The program this binary is installed as.
const SHIM_PROGRAM: &str = "containerd-shim-nvidia-v2";

/// Records a toolkit hook step in `plan`; false when the hook is not one the shim does itself.
fn plan_toolkit_hook(h: &Hook, plan: &mut HookPlan) -> bool {
    toolkit_step(&h.path, &h.args, plan)
}

/// Records in `plan` the step of a hook running `path` with `args` (`args[0]` the program's
/// own name): the toolkit's `nvidia-cdi-hook SUB` and `nvidia-ctk hook SUB`, and this binary's
/// `hook SUB`, which takes the same forms. False when it is none of those, or a form it does
/// not know (the hook is then left to run).
pub fn toolkit_step(path: &str, args: &[String], plan: &mut HookPlan) -> bool {
    let program = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let args: &[String] = args.get(1..).unwrap_or_default();
    let args = match program {
        "nvidia-cdi-hook" => args,
        "nvidia-ctk" | SHIM_PROGRAM if args.first().is_some_and(|a| a == "hook") => &args[1..],
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
        "chmod" => {
            let mode = flag_values(rest, "--mode")
                .into_iter()
                .next()
                .and_then(|m| u32::from_str_radix(&m, 8).ok())
                .filter(|m| *m <= 0o7777);
            let Some(mode) = mode else {
                return false;
            };
            for path in flag_values(rest, "--path") {
                plan.chmods.push((PathBuf::from(path), mode));
            }
        }
        _ => return false,
    }
    true
}

/// Takes out of `spec` every hook (any stage) that is a toolkit step this runtime does itself
/// (see [`toolkit_step`]), as a CDI consumer left them there (Docker, containerd, podman,
/// `nvidia-ctk`); returns their steps.
pub fn take_toolkit_hooks(spec: &mut Spec) -> HookPlan {
    let mut plan = HookPlan::default();
    let Some(hooks) = spec.hooks_mut().as_mut() else {
        return plan;
    };
    #[allow(deprecated)]
    take_steps(hooks.prestart_mut(), &mut plan);
    take_steps(hooks.create_runtime_mut(), &mut plan);
    take_steps(hooks.create_container_mut(), &mut plan);
    take_steps(hooks.start_container_mut(), &mut plan);
    take_steps(hooks.poststart_mut(), &mut plan);
    take_steps(hooks.poststop_mut(), &mut plan);
    plan
}

/// Moves the toolkit steps of one hook stage into `plan` (an emptied stage becomes `None`).
fn take_steps(stage: &mut Option<Vec<OciHook>>, plan: &mut HookPlan) {
    if let Some(list) = stage.as_mut() {
        list.retain(|h| {
            let args = h.args().as_deref().unwrap_or_default();
            !toolkit_step(&h.path().to_string_lossy(), args, plan)
        });
        if list.is_empty() {
            *stage = None;
        }
    }
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
    let list = match h.hook_name {
        #[allow(deprecated)]
        HookStage::Prestart => hooks.prestart_mut(),
        HookStage::CreateRuntime => hooks.create_runtime_mut(),
        HookStage::CreateContainer => hooks.create_container_mut(),
        HookStage::StartContainer => hooks.start_container_mut(),
        HookStage::Poststart => hooks.poststart_mut(),
        HookStage::Poststop => hooks.poststop_mut(),
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
