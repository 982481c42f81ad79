//! The `/proc/driver/nvidia` overlay's sources: files in the bundle that the runtime's create
//! worker (see `runtime::after_create`) bind-mounts over the container's driver tree once the
//! container exists.

use std::path::{Path, PathBuf};

use nvidia_shim_core::proc_overlay::{ProcOverlay, CONTAINER_PROC_DRIVER};

use crate::error::{Result, ShimError};
use crate::runtime::bundle::Bundle;

/// Writes the overlay's sources into the bundle (a read-only `params` copy, an empty
/// directory and an empty file) and pairs them with their targets in the container.
pub fn overlay_sources(
    id: &str,
    bundle: &Bundle,
    overlay: &ProcOverlay,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut mounts = Vec::new();
    let write_err = |what: &Path, e| ShimError::io(id, format!("write {}", what.display()), e);
    let write_read_only = |file: &Path, content: &[u8]| {
        std::fs::write(file, content)
            .and_then(|()| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)))
            .map_err(|e| write_err(file, e))
    };
    if let Some(params) = &overlay.params {
        let file = bundle.path().join("nvidia-params");
        write_read_only(&file, params)?;
        mounts.push((file, Path::new(CONTAINER_PROC_DRIVER).join("params")));
    }
    if !overlay.hidden.is_empty() {
        let empty = bundle.path().join("nvidia-empty");
        match std::fs::create_dir(&empty) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(write_err(&empty, e))
            }
            _ => {}
        }
        mounts.extend(overlay.hidden.iter().map(|h| (empty.clone(), h.clone())));
    }
    if !overlay.hidden_files.is_empty() {
        let empty = bundle.path().join("nvidia-empty-file");
        write_read_only(&empty, b"")?;
        mounts.extend(
            overlay
                .hidden_files
                .iter()
                .map(|h| (empty.clone(), h.clone())),
        );
    }
    Ok(mounts)
}
