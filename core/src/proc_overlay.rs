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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::discover::mig::numbered;
use crate::discover::{GpuDevice, Inventory, MigDevice};
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
/// per Create by [`ProcFacts::gather`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcFacts {
    /// Whether the container's `/proc` will show a driver tree: the kernel this shim runs on
    /// has `/proc/driver/nvidia` (not so with a fake `proc_root` on a host without the driver).
    pub present: bool,
    /// The host's `params` text.
    pub params: Option<String>,
    /// `capabilities/gpu<minor>` directories by minor, each with its GIs and their CIs.
    pub gpu_caps: BTreeMap<u32, Vec<(u32, Vec<u32>)>>,
    /// Which of `capabilities/mig/config` and `capabilities/mig/monitor` exist.
    pub mig_files: Vec<String>,
}

impl ProcFacts {
    /// Reads the facts of the driver tree under `proc_root` for the GPUs of `inventory`;
    /// `kernel_proc` is the kernel's own `/proc`, which the container's will be.
    pub fn gather(proc_root: &Path, kernel_proc: &Path, inventory: &Inventory) -> Self {
        let caps = proc_root.join("driver/nvidia/capabilities");
        let mut gpu_caps = BTreeMap::new();
        for g in &inventory.gpus {
            let dir = caps.join(format!("gpu{}", g.minor));
            if !dir.is_dir() {
                continue;
            }
            let mig = dir.join("mig");
            let gis = numbered(&mig, "gi")
                .into_iter()
                .map(|gi| (gi, numbered(&mig.join(format!("gi{gi}")), "ci")))
                .collect();
            gpu_caps.insert(g.minor, gis);
        }
        Self {
            present: kernel_proc.join("driver/nvidia").exists(),
            params: std::fs::read_to_string(proc_root.join("driver/nvidia/params")).ok(),
            gpu_caps,
            mig_files: ["config", "monitor"]
                .into_iter()
                .filter(|f| caps.join("mig").join(f).is_file())
                .map(str::to_owned)
                .collect(),
        }
    }
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

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let ok = unsafe { libc::geteuid() } == 0;
        if !ok {
            eprintln!("SKIP: fake device nodes need mknod (root)");
        }
        ok
    }

    fn request(visible: &str) -> GpuRequest {
        let spec = oci_spec::runtime::SpecBuilder::default()
            .process(
                oci_spec::runtime::ProcessBuilder::default()
                    .env(vec![format!("NVIDIA_VISIBLE_DEVICES={visible}")])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        GpuRequest::from_spec(&spec, &crate::request::RequestPolicy::default()).unwrap()
    }

    /// The overlay with the fake driver's proc facts, as if the kernel had the driver's tree.
    fn overlay(inv: &Inventory, request: &GpuRequest) -> ProcOverlay {
        let selection = Selection::resolve(inv, &request.devices, request).unwrap();
        let mut facts = ProcFacts::gather(&inv.roots.proc_root, &inv.roots.proc_root, inv);
        facts.present = true;
        proc_overlay(inv, request, &selection, &facts)
    }

    fn shown(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| {
                p.strip_prefix(CONTAINER_PROC_DRIVER)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn unselected_gpus_are_hidden() {
        if !root() {
            return;
        }
        let fake = FakeDriver::builder().gpus(3).build();
        let inv = Inventory::discover(&fake.roots()).unwrap();
        let o = overlay(&inv, &request("1"));
        assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0", "gpus/0000:00:08.0"]);
        assert!(o.hidden_files.is_empty());
        assert!(String::from_utf8(o.params.unwrap())
            .unwrap()
            .contains("ModifyDeviceFiles: 0"));
        assert!(overlay(&inv, &request("all")).hidden.is_empty());
    }

    /// GPU 0 plain, GPU 1 with MIG: GI 1 (CIs 0, 1) and GI 2 (CI 0); index 1:1 is GI 1 / CI 1.
    fn mig_host() -> (FakeDriver, Inventory) {
        let fake = FakeDriver::mig_host();
        let inv = Inventory::discover(&fake.roots()).unwrap();
        (fake, inv)
    }

    #[test]
    fn a_mig_device_shows_only_its_own_gi_and_ci_access_files() {
        if !root() {
            return;
        }
        let (_f, inv) = mig_host();
        let o = overlay(&inv, &request("1:1"));
        assert_eq!(
            shown(&o.hidden),
            [
                "gpus/0000:00:06.0",
                "capabilities/gpu1/mig/gi1/ci0",
                "capabilities/gpu1/mig/gi2"
            ]
        );
        assert_eq!(
            shown(&o.hidden_files),
            ["capabilities/mig/config", "capabilities/mig/monitor"]
        );
        // Every path the plan covers exists on the host, so every mount has a target.
        let host = inv.roots.proc_root.join("driver/nvidia");
        for p in o.hidden.iter().chain(&o.hidden_files) {
            let rel = p.strip_prefix(CONTAINER_PROC_DRIVER).unwrap();
            assert!(host.join(rel).exists(), "{}", rel.display());
        }
    }

    #[test]
    fn whole_gpus_and_mig_admin_requests_show_their_capabilities() {
        if !root() {
            return;
        }
        let (_f, inv) = mig_host();
        // The whole GPU 1: its capability tree stays; GPU 0 has none to hide.
        let o = overlay(&inv, &request("1"));
        assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0"]);
        // GPU 0 only: GPU 1's capability tree goes.
        let o = overlay(&inv, &request("0"));
        assert_eq!(shown(&o.hidden), ["gpus/0000:00:07.0", "capabilities/gpu1"]);
        // MIG config on GPU 1 with one MIG device selected: the whole tree and mig/config show.
        let mut r = request("1:0");
        r.mig_config = DeviceSelection::parse(Some("1"), false).unwrap();
        let o = overlay(&inv, &r);
        assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0"]);
        assert_eq!(shown(&o.hidden_files), ["capabilities/mig/monitor"]);
        r.mig_monitor = DeviceSelection::All;
        assert!(overlay(&inv, &r).hidden_files.is_empty());
    }
}
