//! IPC endpoints of the driver's host daemons, mounted into containers that use them:
//! `nvidia-persistenced` and `nv-fabricmanager` sockets (with `utility`) and the CUDA MPS pipe
//! directory (with `compute`). The host looks them up at each create (not cached: the daemons
//! come and go); which of them a container gets is decided here.

use std::path::PathBuf;

use crate::request::{Capabilities, Capability};

/// Daemon sockets, relative to a run directory (mounted with `utility`).
pub const IPC_SOCKETS: [&str; 2] = ["nvidia-persistenced/socket", "nvidia-fabricmanager/socket"];
/// Where run directories are searched, relative to the host root, first match wins.
pub const IPC_RUN_DIRS: [&str; 2] = ["run", "var/run"];
/// The MPS pipe directory when `CUDA_MPS_PIPE_DIRECTORY` is unset.
pub const DEFAULT_MPS_PIPE_DIR: &str = "/tmp/nvidia-mps";

/// An IPC endpoint present on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcEndpoint {
    /// The host path (under the host root).
    pub host: PathBuf,
    /// Where it goes in the container.
    pub container: PathBuf,
    /// The capability that mounts it (`utility` for daemon sockets, `compute` for MPS).
    pub capability: Capability,
}

/// The endpoints of `present` that `caps` call for, as (host path, container path).
pub fn endpoints_for(present: &[IpcEndpoint], caps: &Capabilities) -> Vec<(PathBuf, PathBuf)> {
    present
        .iter()
        .filter(|e| match e.capability {
            Capability::Compute => caps.needs_compute(),
            c => caps.has(c),
        })
        .map(|e| (e.host.clone(), e.container.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(text: &str) -> Capabilities {
        Capabilities::parse(Some(text), &Capabilities::default_set(), false)
            .expect("valid capabilities")
    }

    #[test]
    fn sockets_go_with_utility_and_the_mps_dir_with_compute() {
        let endpoint = |host: &str, capability| IpcEndpoint {
            host: PathBuf::from(host),
            container: PathBuf::from(host),
            capability,
        };
        let present = [
            endpoint("/run/nvidia-persistenced/socket", Capability::Utility),
            endpoint("/tmp/nvidia-mps", Capability::Compute),
        ];
        let hosts = |caps: &Capabilities| -> Vec<PathBuf> {
            endpoints_for(&present, caps)
                .into_iter()
                .map(|(h, _)| h)
                .collect()
        };
        assert_eq!(hosts(&caps("utility,compute")).len(), 2);
        assert_eq!(hosts(&caps("utility")), [present[0].host.clone()]);
        // `video` needs compute (its libraries are compute's).
        assert_eq!(hosts(&caps("video")), [present[1].host.clone()]);
        assert!(hosts(&caps("graphics")).is_empty());
    }
}
