//! A container's removal: what its init left behind killed, its libcontainer state and cgroups
//! removed, its rootfs unmounted.

use std::time::Duration;

use crate::error::{Result, ShimError};
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::libcontainer::{delete_in_process, LcContainer};
use crate::runtime::Teardown;

/// How long the delete of a created (never started) container waits for the killed init.
const KILLED_INIT_WAIT: Duration = Duration::from_secs(5);

/// How long [`kill_remaining`] waits for the container's cgroup to empty.
const KILL_REMAINING_LIMIT: Duration = Duration::from_secs(5);

/// Removes container `c` as `teardown` finds it.
pub(super) fn delete(c: &LcContainer, teardown: Teardown<'_>) -> Result<()> {
    match teardown {
        Teardown::NeverStarted { init_exit } => {
            delete_in_process(&c.state, true)?;
            if init_exit.wait_blocking(KILLED_INIT_WAIT).is_none() {
                log::warn!("container {}: killed init was not reaped in time", c.id);
            }
            c.cgroup.remove_hybrid();
            unmount_rootfs(c)
        }
        Teardown::Exited => {
            // Independent, a few milliseconds of blocking calls each: side by side (the
            // kernel's teardown of an overlay syncs its upper filesystem, about 2 ms).
            let (removed, unmounted) = std::thread::scope(|s| {
                let unmounted = s.spawn(|| unmount_rootfs(c));
                let removed = remove_stopped(c);
                (removed, unmounted.join())
            });
            removed?;
            unmounted.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }
    }
}

/// Unmounts the rootfs the shim mounted at create.
fn unmount_rootfs(c: &LcContainer) -> Result<()> {
    if !c.rootfs_mounted {
        return Ok(());
    }
    c.bundle.unmount_rootfs(&c.id)
}

/// Removes a stopped container's cgroup and libcontainer state.
///
/// When that is all libcontainer's delete would do ([`LcContainer::plain_teardown`]), the shim
/// does it in place: libcgroups' per-controller lookups cost about 5 ms of every
/// `ctr run --rm` on a cgroup v1 host. Anything unexpected, such as a process left in the
/// cgroup by a container sharing the host's pid namespace, falls back to libcontainer, which
/// kills it and retries.
fn remove_stopped(c: &LcContainer) -> Result<()> {
    if c.plain_teardown {
        let state_dir = c.state.dir();
        let removed =
            c.cgroup
                .remove_emptied()
                .and_then(|()| match std::fs::remove_dir_all(&state_dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ShimError::io(
                        &c.id,
                        format!("removing {}", state_dir.display()),
                        e,
                    )),
                    _ => Ok(()),
                });
        match removed {
            Ok(()) => return Ok(()),
            Err(e) => log::info!("{e}; deleting through libcontainer"),
        }
    }
    delete_in_process(&c.state, true)?;
    c.cgroup.remove_hybrid();
    Ok(())
}

/// SIGKILLs every process left in the container's cgroup and waits, bounded, until none is
/// left, killing again whatever a dying process forked meanwhile; so that the delete that
/// follows finds an empty cgroup to remove (on cgroup v1 a killed process stays listed until
/// it has exited, which takes a while on a loaded host). For a container without a pid
/// namespace of its own, as the runc shim kills them before it reports the exit.
pub(super) fn kill_remaining(id: &str, cgroup: &ContainerCgroup) {
    let deadline = std::time::Instant::now() + KILL_REMAINING_LIMIT;
    loop {
        let pids = match cgroup.pids() {
            Ok(pids) => pids,
            Err(e) => {
                log::warn!("{e}");
                return;
            }
        };
        if pids.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            log::warn!(
                "container {id}: {} process(es) still in its cgroup after SIGKILL",
                pids.len()
            );
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
