//! containerd's `delete` command: the cleanup after a shim that exited or died.

use std::os::unix::net::UnixStream;

use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::util::timestamp;
use containerd_shim::{socket_address, DeleteResponse};
use libcontainer::container::Container as YoukiContainer;

use crate::runtime::bundle::Bundle;
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::libcontainer::delete_in_process;
use crate::runtime::ops::StateRef;

use super::start::bundle_dir;

/// The `delete` command: containerd runs it when a shim's connection closes, after the shim
/// exited or died. It kills what is left of container `id`, removes its state and cgroup,
/// unmounts its rootfs, removes the group's socket unless a live shim answers there, and
/// returns the reply containerd expects (exit status 137, the init pid if known).
///
/// It runs before any thread or runtime exists, so libcontainer runs here directly, without a
/// zygote; containerd waits for it on every container's delete, so it must be quick.
pub fn delete_command(
    namespace: &str,
    id: &str,
    address: &str,
) -> containerd_shim::Result<DeleteResponse> {
    let bundle = Bundle::new(bundle_dir());
    let state = StateRef {
        root: bundle.state_root(),
        id: id.to_owned(),
    };
    // No state: the shim deleted the container before it exited (the usual case).
    let mut pid = 0;
    if state.dir().exists() {
        let loaded = YoukiContainer::load(state.dir()).ok();
        pid = loaded
            .as_ref()
            .and_then(|c| c.pid())
            .map(|p| u32::try_from(p.as_raw()).unwrap_or_default())
            .unwrap_or_default();
        // The hierarchies libcontainer does not know of (see `cgroup`), known before its
        // state goes.
        let cgroup = loaded.as_ref().and_then(|c| {
            let config = c.spec().ok()?;
            Some(ContainerCgroup::new(id, config.cgroup_path, c.systemd()))
        });
        if let Err(e) = delete_in_process(&state, true) {
            log::warn!("{e}");
        }
        if let Some(cgroup) = cgroup {
            cgroup.remove_hybrid();
        }
    }
    if let Err(e) = bundle.unmount_rootfs(id) {
        log::warn!("{e}");
    }
    // A shim killed outright leaves its socket; remove it unless a live shim answers there.
    let address = socket_address(address, namespace, &bundle.group(id));
    let path = address.trim_start_matches("unix://");
    if UnixStream::connect(path).is_err() {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("remove stale shim socket {path}: {e}");
            }
        }
    }
    Ok(DeleteResponse {
        pid,
        exit_status: 137,
        exited_at: MessageField::some(timestamp()?),
        ..Default::default()
    })
}
