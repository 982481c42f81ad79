//! What a GPU container's `/proc/driver/nvidia` should show, as the toolkit shows it: a
//! read-only `params` whose `ModifyDeviceFiles` is `0` (so the driver inside never creates or
//! changes device nodes), and only the selected GPUs' `gpus/<bus>` directories (the others are
//! covered by an empty read-only directory). The shim applies the plan after the container's
//! mount namespace exists, since libcontainer, like runc, refuses mounts under `/proc` in the
//! spec.

use std::path::PathBuf;

use crate::discover::{GpuDevice, Inventory};

/// Where the driver's proc tree is in a container.
pub const CONTAINER_PROC_DRIVER: &str = "/proc/driver/nvidia";

/// The overlay of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcOverlay {
    /// The `params` content to show at `/proc/driver/nvidia/params`, when the host's says
    /// `ModifyDeviceFiles: 1`.
    pub params: Option<Vec<u8>>,
    /// Paths under `/proc/driver/nvidia/gpus` to hide (the GPUs not selected).
    pub hidden: Vec<PathBuf>,
}

impl ProcOverlay {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.params.is_none() && self.hidden.is_empty()
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

/// The overlay for a container given `selected` GPUs on the host `inventory` describes.
pub fn proc_overlay(inventory: &Inventory, selected: &[&GpuDevice]) -> ProcOverlay {
    let params = std::fs::read_to_string(inventory.roots.proc_root.join("driver/nvidia/params"))
        .ok()
        .and_then(|p| params_without_device_modification(&p))
        .map(String::into_bytes);
    let hidden = inventory
        .gpus
        .iter()
        .filter(|g| !selected.iter().any(|s| s.uuid == g.uuid))
        .map(|g| PathBuf::from(format!("{CONTAINER_PROC_DRIVER}/gpus/{}", g.proc_dir)))
        .collect();
    ProcOverlay { params, hidden }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixture::FakeDriver;

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

    #[test]
    fn unselected_gpus_are_hidden() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: fake device nodes need mknod (root)");
            return;
        }
        let fake = FakeDriver::builder().gpus(3).build();
        let inv = Inventory::discover(&fake.roots()).unwrap();
        let o = proc_overlay(&inv, &[&inv.gpus[1]]);
        assert_eq!(
            o.hidden,
            [
                PathBuf::from("/proc/driver/nvidia/gpus/0000:00:06.0"),
                PathBuf::from("/proc/driver/nvidia/gpus/0000:00:08.0")
            ]
        );
        assert!(String::from_utf8(o.params.unwrap())
            .unwrap()
            .contains("ModifyDeviceFiles: 0"));
        let all: Vec<&GpuDevice> = inv.gpus.iter().collect();
        assert!(proc_overlay(&inv, &all).hidden.is_empty());
    }
}
