//! Host devices of the gated features (`NVIDIA_GDS`, `NVIDIA_MOFED`, `NVIDIA_NVSWITCH`,
//! `NVIDIA_GDRCOPY`), found by name under the dev root as the toolkit finds them.

use std::path::{Path, PathBuf};

use nvidia_shim_core::edits::GatedDevices;
use nvidia_shim_core::inventory::DeviceNode;
use nvidia_shim_core::request::GatedFeature;

use super::probe_node;

/// Character nodes in `dev_root/<dir>` whose names start with `prefix` (and, when `digits`,
/// continue with a number only), sorted.
fn nodes_named(dev_root: &Path, dir: &str, prefix: &str, digits: bool) -> Vec<DeviceNode> {
    let Ok(entries) = std::fs::read_dir(dev_root.join(dir.trim_start_matches('/'))) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| match n.strip_prefix(prefix) {
            Some(rest) if digits => !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()),
            Some(_) => true,
            None => false,
        })
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| probe_node(dev_root, &format!("{dir}/{n}")))
        .collect()
}

/// The nodes a feature brings, and the files it mounts as (host path, container path). Nodes
/// and files are looked up under `dev_root` (the host root, `/` by default).
pub fn gated(dev_root: &Path, feature: GatedFeature) -> (Vec<DeviceNode>, Vec<(PathBuf, PathBuf)>) {
    let one = |path: &str| probe_node(dev_root, path).into_iter().collect::<Vec<_>>();
    match feature {
        GatedFeature::Gds => {
            let nodes = nodes_named(dev_root, "/dev", "nvidia-fs", false);
            let files = if nodes.is_empty() {
                Vec::new()
            } else {
                ["run/udev", "etc/cufile.json"]
                    .iter()
                    .map(|p| (dev_root.join(p), Path::new("/").join(p)))
                    .filter(|(host, _)| host.exists())
                    .collect()
            };
            (nodes, files)
        }
        GatedFeature::Mofed => {
            let mut nodes = nodes_named(dev_root, "/dev/infiniband", "uverbs", true);
            nodes.extend(one("/dev/infiniband/rdma_cm"));
            (nodes, Vec::new())
        }
        GatedFeature::NvSwitch => {
            let mut nodes = one("/dev/nvidia-nvswitchctl");
            nodes.extend(nodes_named(dev_root, "/dev", "nvidia-nvswitch", true));
            (nodes, Vec::new())
        }
        GatedFeature::GdrCopy => (one("/dev/gdrdrv"), Vec::new()),
    }
}

/// The devices of `features` under `dev_root`, by feature.
pub fn gather_gated(dev_root: &Path, features: &[GatedFeature]) -> GatedDevices {
    features.iter().map(|&f| (f, gated(dev_root, f))).collect()
}
