//! A CDI spec for the host's GPUs from a discovered [`Inventory`], named as
//! `nvidia-ctk cdi generate` names them: kind `nvidia.com/gpu`, one device per index and per
//! UUID, and `all`. Common nodes and driver files go into the spec-wide edits; they are exactly
//! what the built-in injection gives a container asking for all capabilities.
//!
//! The SONAME links and ld cache are either expressed as the toolkit's `nvidia-cdi-hook` steps
//! ([`Hooks::NvidiaCdiHook`]: other CDI consumers need the toolkit's hook installed at that
//! path; this shim performs the steps natively), or left out ([`Hooks::None`]: a spec with no
//! host program in it; this shim makes the links and the ld cache entries of every NVIDIA
//! driver library a spec mounts by itself, other consumers get the files without links or
//! cache entries).

use std::path::Path;

use super::spec::{CdiDevice, CdiSpec, ContainerEdits, DeviceNode, Hook, HookStage, Mount};
use crate::edits::{cdi_node, common_edits, EditsError};
use crate::inventory::{DeviceNode as HostNode, Inventory, IpcEndpoint};
use crate::request::Capabilities;

/// The kind of generated specs.
pub const KIND: &str = "nvidia.com/gpu";
/// Where the toolkit installs its hook program.
pub const HOOK_PATH: &str = "/usr/bin/nvidia-cdi-hook";

/// How a generated spec expresses the links and the ld cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hooks {
    /// `createContainer` hooks calling this runtime's binary at this path, `hook SUBCOMMAND`
    /// with `nvidia-cdi-hook`'s subcommands and flags: the spec works wherever this project is
    /// installed, under any runtime that runs a CDI spec's hooks.
    Shim(String),
    /// `createContainer` hooks calling the toolkit's `nvidia-cdi-hook` at this path
    /// (`create-symlinks`, `enable-cuda-compat`, `update-ldcache`), as `nvidia-ctk cdi
    /// generate` writes them.
    NvidiaCdiHook(String),
    /// No hooks.
    None,
}

impl Hooks {
    /// The hook program's path and the arguments before the subcommand (its own name first).
    fn program(&self) -> Option<(&str, Vec<String>)> {
        match self {
            Self::Shim(path) => Some((
                path,
                vec!["containerd-shim-nvidia-v2".to_owned(), "hook".to_owned()],
            )),
            Self::NvidiaCdiHook(path) => Some((path, vec!["nvidia-cdi-hook".to_owned()])),
            Self::None => None,
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Self::NvidiaCdiHook(HOOK_PATH.to_owned())
    }
}

/// A node as generated specs write it: its path (and host path when it differs), the rest
/// read from the host node by whoever applies the spec, as `nvidia-ctk cdi generate` writes it.
fn node(n: &HostNode) -> DeviceNode {
    let complete = cdi_node(n);
    DeviceNode {
        host_path: complete.host_path,
        path: complete.path,
        ..DeviceNode::default()
    }
}

/// Generates the spec for `inventory` with `capabilities` (use `all` for a general spec), the
/// host's IPC endpoints `ipc` (as `nvidia-shim-core-host`'s `discover::present_endpoints` finds
/// them), and the links and ld cache expressed as `hooks` says. The spec-wide edits are [`common_edits`], those of the
/// built-in injection, so the two cannot drift apart. Fails as the built-in injection would
/// for the same capabilities (a core library missing from the driver root).
pub fn generate(
    inventory: &Inventory,
    capabilities: Capabilities,
    hooks: &Hooks,
    ipc: &[IpcEndpoint],
) -> Result<CdiSpec, EditsError> {
    let common = common_edits(inventory, &capabilities, ipc)?;
    let cdi = common.to_cdi();
    let mut edits = ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".to_owned()],
        device_nodes: common.devices.iter().map(node).collect(),
        mounts: cdi
            .mounts
            .into_iter()
            .map(|m| Mount { typ: None, ..m })
            .collect(),
        ..ContainerEdits::default()
    };
    if let Some((path, prefix)) = hooks.program() {
        let command = |sub: &str| {
            let mut args = prefix.clone();
            args.push(sub.to_owned());
            args
        };
        if !common.symlinks.is_empty() {
            let mut args = command("create-symlinks");
            for (link, target) in &common.symlinks {
                args.push("--link".to_owned());
                args.push(format!("{target}::{}", link.display()));
            }
            edits.hooks.push(hook(path, args));
        }
        if common.ld_cache.iter().any(|(k, _)| k == "libcuda.so.1") {
            let mut args = command("enable-cuda-compat");
            args.push(format!(
                "--host-driver-version={}",
                inventory.driver_version
            ));
            edits.hooks.push(hook(path, args));
        }
        let mut folders: Vec<&Path> = common
            .ld_cache
            .iter()
            .filter_map(|(_, file)| file.parent())
            .collect();
        folders.sort();
        folders.dedup();
        if !folders.is_empty() {
            let mut args = command("update-ldcache");
            for f in folders {
                args.push("--folder".to_owned());
                args.push(f.display().to_string());
            }
            edits.hooks.push(hook(path, args));
        }
    }
    let gpu_edits = |minors: &[u32]| ContainerEdits {
        device_nodes: minors
            .iter()
            .filter_map(|m| inventory.gpu_nodes.get(m))
            .map(node)
            .collect(),
        ..ContainerEdits::default()
    };
    let mut devices = Vec::new();
    for g in &inventory.gpus {
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(CdiDevice {
                name,
                annotations: Default::default(),
                container_edits: gpu_edits(&[g.minor]),
            });
        }
    }
    let all: Vec<u32> = inventory.gpus.iter().map(|g| g.minor).collect();
    devices.push(CdiDevice {
        name: "all".to_owned(),
        annotations: Default::default(),
        container_edits: gpu_edits(&all),
    });
    let mut spec = CdiSpec {
        cdi_version: String::new(),
        kind: KIND.to_owned(),
        annotations: Default::default(),
        devices,
        container_edits: edits,
    };
    spec.cdi_version = spec.required_version().to_string();
    Ok(spec)
}

/// A `createContainer` hook running the toolkit's hook program; its environment is given
/// explicitly (`NVIDIA_CTK_DEBUG=false`, as the toolkit writes it since CVE-2025-23266), so
/// the container's is never inherited.
fn hook(path: &str, args: Vec<String>) -> Hook {
    Hook {
        hook_name: HookStage::CreateContainer,
        path: path.to_owned(),
        args,
        env: vec!["NVIDIA_CTK_DEBUG=false".to_owned()],
        timeout: None,
    }
}
