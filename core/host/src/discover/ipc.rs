//! The IPC endpoints of the driver's host daemons present on the host (core's [`IpcEndpoint`]),
//! looked up at each create, not cached: the daemons come and go.

use std::path::{Path, PathBuf};

use nvidia_shim_core::inventory::{IpcEndpoint, DEFAULT_MPS_PIPE_DIR, IPC_RUN_DIRS, IPC_SOCKETS};
use nvidia_shim_core::request::Capability;

/// The IPC endpoints present under `host_root` (stats them). `mps_pipe_dir` is the MPS pipe
/// directory as the host names it (the shim's `CUDA_MPS_PIPE_DIRECTORY`, else
/// [`DEFAULT_MPS_PIPE_DIR`]).
pub fn present_endpoints(host_root: &Path, mps_pipe_dir: &Path) -> Vec<IpcEndpoint> {
    let mut out = Vec::new();
    for socket in IPC_SOCKETS {
        let found = IPC_RUN_DIRS.iter().find_map(|dir| {
            let rel = Path::new(dir).join(socket);
            is_socket(&host_root.join(&rel)).then_some(rel)
        });
        if let Some(rel) = found {
            out.push(IpcEndpoint {
                host: host_root.join(&rel),
                container: Path::new("/").join(rel),
                capability: Capability::Utility,
            });
        }
    }
    let rel = mps_pipe_dir.strip_prefix("/").unwrap_or(mps_pipe_dir);
    let host = host_root.join(rel);
    if host.is_dir() {
        out.push(IpcEndpoint {
            host,
            container: Path::new("/").join(rel),
            capability: Capability::Compute,
        });
    }
    out
}

/// The MPS pipe directory the host's MPS daemon uses: `CUDA_MPS_PIPE_DIRECTORY` of the shim's
/// environment (containerd's), else [`DEFAULT_MPS_PIPE_DIR`], as the toolkit's hook reads it.
pub fn mps_pipe_dir() -> PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MPS_PIPE_DIR))
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvidia_shim_core::inventory::endpoints_for;
    use nvidia_shim_core::request::Capabilities;

    /// The endpoints present under `root` that `caps` call for.
    fn ipc_endpoints(root: &Path, caps: &Capabilities, mps: &Path) -> Vec<(PathBuf, PathBuf)> {
        endpoints_for(&present_endpoints(root, mps), caps)
    }

    fn caps(text: &str) -> Capabilities {
        Capabilities::parse(Some(text), &Capabilities::default_set(), false)
            .expect("valid capabilities")
    }

    #[test]
    fn sockets_with_utility_and_the_mps_dir_with_compute() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run/nvidia-persistenced")).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(r.join("run/nvidia-persistenced/socket"))
            .unwrap();
        // A regular file named like a socket is not one.
        std::fs::create_dir_all(r.join("var/run/nvidia-fabricmanager")).unwrap();
        std::fs::write(r.join("var/run/nvidia-fabricmanager/socket"), "").unwrap();
        std::fs::create_dir_all(r.join("tmp/nvidia-mps")).unwrap();
        let mps = Path::new(DEFAULT_MPS_PIPE_DIR);

        let got = ipc_endpoints(r, &caps("utility,compute"), mps);
        assert_eq!(
            got,
            [
                (
                    r.join("run/nvidia-persistenced/socket"),
                    PathBuf::from("/run/nvidia-persistenced/socket")
                ),
                (r.join("tmp/nvidia-mps"), PathBuf::from("/tmp/nvidia-mps")),
            ]
        );
        assert_eq!(ipc_endpoints(r, &caps("utility"), mps).len(), 1);
        assert_eq!(
            ipc_endpoints(r, &caps("compute"), mps),
            [(r.join("tmp/nvidia-mps"), PathBuf::from("/tmp/nvidia-mps"))]
        );
        assert!(ipc_endpoints(r, &caps("graphics"), mps).is_empty());
        assert!(ipc_endpoints(r, &caps("compute"), Path::new("/srv/mps")).is_empty());
    }
}
