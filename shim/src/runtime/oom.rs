//! OOM events: a watcher per container publishes `TaskOOM` each time the kernel's OOM killer
//! acts in the container's memory cgroup. cgroup v1: an eventfd registered on
//! `memory.oom_control` through `cgroup.event_control`. cgroup v2: inotify on `memory.events`,
//! reporting increases of its `oom_kill` counter. Both end when the cgroup is removed.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use procfs::ProcessCGroup;
use tokio::io::unix::AsyncFd;

use crate::runtime::OnOom;

/// The memory cgroup directory of `pid`: (directory, unified hierarchy?).
pub fn memory_cgroup_of(pid: i32) -> Option<(PathBuf, bool)> {
    let cgroups = procfs::process::Process::new(pid).ok()?.cgroups().ok()?;
    memory_cgroup_from(&cgroups.0, Path::new("/sys/fs/cgroup"))
}

/// The memory cgroup directory among a process's `cgroups` (`/proc/<pid>/cgroup`) under the
/// cgroupfs mount `root`.
fn memory_cgroup_from(cgroups: &[ProcessCGroup], root: &Path) -> Option<(PathBuf, bool)> {
    let mut unified = None;
    for cg in cgroups {
        let rel = cg.pathname.trim_start_matches('/');
        if cg.controllers.iter().any(|c| c == "memory") {
            return Some((root.join("memory").join(rel), false));
        }
        if cg.controllers.is_empty() {
            unified = Some((root.join(rel), true));
        }
    }
    // A pure v2 host lists only `0::/path`; on a hybrid host with no v1 memory hierarchy the
    // unified one has no memory controller, which the caller's file check reveals.
    unified
}

/// Starts watching the memory cgroup of container `id`, whose init is `pid`, calling `on_oom`
/// each time the OOM killer acts there; logs and gives up if it cannot. The watcher is a task
/// of the tokio runtime the caller runs in (or under: a blocking-pool thread).
pub fn watch(id: &str, pid: i32, on_oom: OnOom) {
    let Some((dir, unified)) = memory_cgroup_of(pid) else {
        log::warn!("container {id}: no memory cgroup found; OOM events off");
        return;
    };
    let started = if unified {
        watch_v2(id, dir.clone(), on_oom)
    } else {
        watch_v1(id, dir.clone(), on_oom)
    };
    if let Err(e) = started {
        log::warn!("container {id}: OOM watcher on {}: {e}", dir.display());
    }
}

fn oom(id: &str, on_oom: &OnOom) {
    log::info!("container {id}: OOM killer acted");
    on_oom();
}

/// The tokio runtime to run a watcher on.
fn handle() -> std::io::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(std::io::Error::other)
}

fn watch_v1(id: &str, dir: PathBuf, on_oom: OnOom) -> std::io::Result<()> {
    let rt = handle()?;
    let _entered = rt.enter();
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    // SAFETY: the EventFd owns its descriptor, which stays open and the same until the
    // AsyncFd that owns the EventFd is dropped.
    let afd = unsafe { AsyncFd::register(efd) }.map_err(std::io::Error::from)?;
    let id = id.to_owned();
    rt.spawn(async move {
        let _control = control;
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            let read = afd.get_ref().read();
            guard.clear_ready();
            if read.is_err() {
                continue;
            }
            // The eventfd also fires when the cgroup is removed.
            if !dir.join("memory.oom_control").exists() {
                break;
            }
            oom(&id, &on_oom);
        }
    });
    Ok(())
}

/// An inotify instance as tokio's `AsyncFd` takes it.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn read_oom_kill(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn watch_v2(id: &str, dir: PathBuf, on_oom: OnOom) -> std::io::Result<()> {
    let rt = handle()?;
    let _entered = rt.enter();
    let file = dir.join("memory.events");
    let mut last = read_oom_kill(&file).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no oom_kill", file.display()),
        )
    })?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
    // SAFETY: the Inotify owns its descriptor, which stays open and the same until the
    // AsyncFd that owns it is dropped.
    let afd = unsafe { AsyncFd::register(Watched(inotify)) }.map_err(std::io::Error::from)?;
    let id = id.to_owned();
    rt.spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            // The events only say that the file changed; its counter says whether an OOM kill
            // was among the changes.
            let _ = afd.get_ref().0.read_events();
            guard.clear_ready();
            let Some(now) = read_oom_kill(&file) else {
                break; // the cgroup is gone
            };
            if now > last {
                last = now;
                oom(&id, &on_oom);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::parse_proc_cgroup as parse;

    #[test]
    fn finds_v1_memory_hierarchy() {
        let text = "12:pids:/default/c1\n9:memory:/default/c1\n1:name=systemd:/x\n0::/\n";
        let (dir, unified) = memory_cgroup_from(&parse(text), Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/default/c1"));
        assert!(!unified);
    }

    #[test]
    fn finds_unified_hierarchy() {
        let (dir, unified) =
            memory_cgroup_from(&parse("0::/default/c2\n"), Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/default/c2"));
        assert!(unified);
    }

    #[test]
    fn reads_oom_kill_counter() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(
            &f,
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(read_oom_kill(&f), Some(2));
        assert_eq!(read_oom_kill(&dir.path().join("missing")), None);
    }
}
