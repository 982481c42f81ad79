//! What a GPU container's `/proc/driver/nvidia` should show, as the toolkit shows it:
//!
//! - a read-only `params` whose `ModifyDeviceFiles` is `0`, so the driver inside never creates
//!   or changes device nodes;
//! - only the selected GPUs' `gpus/<bus>` directories;
//! - under `capabilities/`, only what the container may use: the whole `gpu<minor>` tree of a
//!   GPU given whole or named by `NVIDIA_MIG_CONFIG_DEVICES`/`MONITOR_DEVICES`, only the
//!   selected GI and CI `access` files of a GPU given as MIG devices, and `mig/config` /
//!   `mig/monitor` only with those requests.
//!
//! The toolkit builds this by covering the directory with a tmpfs and binding back what is
//! allowed; the plan here covers what is not allowed with an empty read-only directory or file,
//! which leaves every other driver file (`version`, `registry`, ...) as the host has it. The shim
//! applies the plan after the container's mount namespace exists, since libcontainer, like runc,
//! refuses mounts under `/proc` in the spec.

use std::path::{Path, PathBuf};

use crate::inventory::{GpuDevice, Inventory, MigDevice, MigLayout};
use crate::request::{DeviceSelection, GpuRequest};
use crate::select::Selection;

/// Where the driver's proc tree is in a container.
pub const CONTAINER_PROC_DRIVER: &str = "/proc/driver/nvidia";

/// The overlay of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcOverlay {
    /// The `params` content to show at `/proc/driver/nvidia/params`, when the host's says
    /// `ModifyDeviceFiles: 1`.
    pub params: Option<Vec<u8>>,
    /// Directories under `/proc/driver/nvidia` to cover with an empty directory.
    pub hidden: Vec<PathBuf>,
    /// Files under `/proc/driver/nvidia` to cover with an empty file.
    pub hidden_files: Vec<PathBuf>,
}

impl ProcOverlay {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.params.is_none() && self.hidden.is_empty() && self.hidden_files.is_empty()
    }
}

/// The host's `params` text with `ModifyDeviceFiles` set to 0, or `None` when it already is 0
/// or absent.
pub fn params_without_device_modification(params: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = params
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) if k.trim() == "ModifyDeviceFiles" && v.trim() != "0" => {
                changed = true;
                format!("{k}: 0")
            }
            _ => l.to_owned(),
        })
        .collect();
    changed.then(|| lines.join("\n") + "\n")
}

/// What the host's `/proc/driver/nvidia` holds, as far as the overlay needs it (gathered once
/// per Create by the host).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcFacts {
    /// Whether the container's `/proc` will show a driver tree: the kernel this shim runs on
    /// has `/proc/driver/nvidia` (not so with a fake `proc_root` on a host without the driver).
    pub present: bool,
    /// The host's `params` text.
    pub params: Option<String>,
    /// `capabilities/gpu<minor>` directories by minor, each with its GIs and their CIs.
    pub gpu_caps: MigLayout,
    /// Which of `capabilities/mig/config` and `capabilities/mig/monitor` exist.
    pub mig_files: Vec<String>,
}

/// Whether a MIG config/monitor selection asks for anything.
fn requested(sel: &DeviceSelection) -> bool {
    !matches!(sel, DeviceSelection::Void | DeviceSelection::NoGpu)
}

/// The overlay for a container making `request` (its devices resolved as `selection`) on the
/// host `inventory` and `proc` describe: pure. Empty when the container's `/proc` has no driver
/// tree to cover.
pub fn proc_overlay(
    inventory: &Inventory,
    request: &GpuRequest,
    selection: &Selection<'_>,
    proc: &ProcFacts,
) -> ProcOverlay {
    if !proc.present {
        return ProcOverlay::default();
    }
    let selected = &selection.devices;
    let params = proc
        .params
        .as_deref()
        .and_then(params_without_device_modification)
        .map(String::into_bytes);
    let same = |a: &GpuDevice, b: &GpuDevice| a.uuid == b.uuid;
    let mut hidden: Vec<PathBuf> = inventory
        .gpus
        .iter()
        .filter(|g| !selected.gpus.iter().any(|s| same(s, g)))
        .map(|g| PathBuf::from(format!("{CONTAINER_PROC_DRIVER}/gpus/{}", g.proc_dir)))
        .collect();
    let caps = Path::new(CONTAINER_PROC_DRIVER).join("capabilities");
    for g in &inventory.gpus {
        let gpu_dir = format!("gpu{}", g.minor);
        let Some(gis) = proc.gpu_caps.get(&g.minor) else {
            continue;
        };
        if selected.whole.iter().any(|s| same(s, g)) || selection.admin().any(|s| same(s, g)) {
            continue;
        }
        let migs: Vec<&MigDevice> = selected
            .migs
            .iter()
            .copied()
            .filter(|m| m.parent == g.index)
            .collect();
        if migs.is_empty() {
            hidden.push(caps.join(&gpu_dir));
            continue;
        }
        let mig = Path::new(&gpu_dir).join("mig");
        for (gi, cis) in gis {
            let gi_dir = mig.join(format!("gi{gi}"));
            if !migs.iter().any(|m| m.gi == *gi) {
                hidden.push(caps.join(&gi_dir));
                continue;
            }
            for ci in cis {
                if !migs.iter().any(|m| (m.gi, m.ci) == (*gi, *ci)) {
                    hidden.push(caps.join(gi_dir.join(format!("ci{ci}"))));
                }
            }
        }
    }
    let hidden_files = [
        ("config", &request.mig_config),
        ("monitor", &request.mig_monitor),
    ]
    .into_iter()
    .filter(|(name, sel)| !requested(sel) && proc.mig_files.iter().any(|f| f == name))
    .map(|(name, _)| caps.join("mig").join(name))
    .collect();
    ProcOverlay {
        params,
        hidden,
        hidden_files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modify_device_files_is_turned_off_and_nothing_else_changes() {
        let host = "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileMode: 438\n";
        assert_eq!(
            params_without_device_modification(host).as_deref(),
            Some("ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 0\nDeviceFileMode: 438\n")
        );
        assert_eq!(
            params_without_device_modification("ModifyDeviceFiles: 0\n"),
            None
        );
        assert_eq!(
            params_without_device_modification("DeviceFileMode: 438\n"),
            None
        );
    }
}
