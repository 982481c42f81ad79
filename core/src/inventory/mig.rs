//! MIG devices without NVML: the GPU instances (GI) and compute instances (CI) the driver lists
//! under `/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<N>/ci<M>` (a [`MigLayout`], read
//! by the host), with the minors of their `/dev/nvidia-caps/nvidia-cap<minor>` access nodes from
//! `/proc/driver/nvidia-caps/mig-minors`.
//!
//! A MIG device's index on its GPU (`<gpu>:<mig>` requests) follows GI then CI id order. Its
//! `MIG-` UUID only NVML knows; [`MigDevice::uuid`] is filled in when NVML is available.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DeviceNode, GpuDevice};

/// Where the access nodes of MIG capabilities live in a container (and on the host).
pub const CAPS_DIR: &str = "/dev/nvidia-caps";

/// A MIG device: compute instance `ci` of GPU instance `gi` on GPU `parent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    /// Index of the parent GPU.
    pub parent: u32,
    /// Index among the parent's MIG devices.
    pub index: u32,
    /// GPU instance id.
    pub gi: u32,
    /// Compute instance id.
    pub ci: u32,
    /// `MIG-...` UUID (NVML only).
    pub uuid: Option<String>,
    /// The GI's access node.
    pub gi_access: DeviceNode,
    /// The CI's access node.
    pub ci_access: DeviceNode,
}

/// The MIG capability minors from `mig-minors` (`config`, `monitor`,
/// `gpu0/gi1/access`, `gpu0/gi1/ci0/access`, ...). Malformed lines are skipped.
pub fn parse_mig_minors(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let (name, minor) = l.trim().rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_owned(), minor.parse().ok()?))
        })
        .collect()
}

/// The access node of capability minor `minor` (`/dev/nvidia-caps/nvidia-cap<minor>`).
pub fn cap_node(dev_root: &Path, major: u32, minor: u32) -> DeviceNode {
    let path = PathBuf::from(format!("{CAPS_DIR}/nvidia-cap{minor}"));
    DeviceNode {
        host_path: dev_root.join(path.strip_prefix("/").unwrap_or(&path)),
        path,
        major,
        minor,
    }
}

/// The MIG instances the driver lists under `capabilities/`: by GPU minor (only GPUs that have
/// a `gpu<minor>` directory), its GPU instance ids, each with its compute instance ids, in id
/// order.
pub type MigLayout = BTreeMap<u32, Vec<(u32, Vec<u32>)>>;

/// The MIG devices of `gpus` in `layout`. `caps_major` is the `nvidia-caps` major (no MIG
/// devices without it); instances whose access minors `minors` lacks are left out. The access
/// nodes are under `dev_root`.
pub fn mig_devices(
    gpus: &[GpuDevice],
    layout: &MigLayout,
    dev_root: &Path,
    caps_major: Option<u32>,
    minors: &BTreeMap<String, u32>,
) -> Vec<MigDevice> {
    let Some(major) = caps_major else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for g in gpus {
        let mut index = 0;
        for (gi, cis) in layout.get(&g.minor).into_iter().flatten() {
            let gi_key = format!("gpu{}/gi{gi}/access", g.minor);
            for ci in cis {
                let ci_key = format!("gpu{}/gi{gi}/ci{ci}/access", g.minor);
                let (Some(&gim), Some(&cim)) = (minors.get(&gi_key), minors.get(&ci_key)) else {
                    continue;
                };
                out.push(MigDevice {
                    parent: g.index,
                    index,
                    gi: *gi,
                    ci: *ci,
                    uuid: None,
                    gi_access: cap_node(dev_root, major, gim),
                    ci_access: cap_node(dev_root, major, cim),
                });
                index += 1;
            }
        }
    }
    out
}

/// Every capability minor `mig-minors` lists for the GPU with device minor `gpu_minor` (what
/// `NVIDIA_MIG_CONFIG_DEVICES`/`MONITOR_DEVICES` allow on it).
pub fn gpu_cap_minors(minors: &BTreeMap<String, u32>, gpu_minor: u32) -> Vec<u32> {
    let prefix = format!("gpu{gpu_minor}/");
    minors
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, &m)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_minors_parse() {
        let m = parse_mig_minors(
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\nbad\n",
        );
        assert_eq!(m.get("config"), Some(&1));
        assert_eq!(m.get("gpu0/gi1/ci0/access"), Some(&13));
        assert_eq!(m.len(), 4);
        assert_eq!(gpu_cap_minors(&m, 0), [12, 13]);
        assert!(gpu_cap_minors(&m, 1).is_empty());
    }

    #[test]
    fn mig_devices_are_indexed_in_layout_order_and_need_their_minors() {
        let gpu = |index, minor| GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            minor,
            bus_id: String::new(),
            proc_dir: String::new(),
            model: String::new(),
            arch: None,
            brand: None,
        };
        let gpus = [gpu(0, 0), gpu(1, 1)];
        let layout: MigLayout = [(1, vec![(1, vec![0, 1]), (2, vec![0])])].into();
        let minors = parse_mig_minors(
            "gpu1/gi1/access 3\ngpu1/gi1/ci0/access 4\ngpu1/gi1/ci1/access 5\ngpu1/gi2/access 6\n",
        );
        let devices = mig_devices(&gpus, &layout, Path::new("/host"), Some(241), &minors);
        let ids: Vec<_> = devices
            .iter()
            .map(|m| (m.parent, m.index, m.gi, m.ci))
            .collect();
        // GI 2's CI 0 has no access minor: left out.
        assert_eq!(ids, [(1, 0, 1, 0), (1, 1, 1, 1)]);
        assert_eq!(devices[1].ci_access.minor, 5);
        assert_eq!(
            devices[0].gi_access.host_path,
            Path::new("/host/dev/nvidia-caps/nvidia-cap3")
        );
        assert!(mig_devices(&gpus, &layout, Path::new("/"), None, &minors).is_empty());
    }
}
