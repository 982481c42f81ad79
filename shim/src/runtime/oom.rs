//! OOM events: a watcher per container publishes `TaskOOM` each time the kernel's OOM killer
//! acts in the container's memory cgroup. cgroup v1: an eventfd registered on
//! `memory.oom_control` through `cgroup.event_control`. cgroup v2: inotify on `memory.events`,
//! reporting increases of its `oom_kill` counter. Both end when the cgroup is removed.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;
use tokio::io::unix::AsyncFd;

use crate::service::container::Container;
use crate::service::events::EventSink;

/// The memory cgroup directory of `pid`: (directory, unified hierarchy?).
pub fn memory_cgroup_of(pid: i32) -> Option<(PathBuf, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    memory_cgroup_from(&text, Path::new("/sys/fs/cgroup"))
}

fn memory_cgroup_from(proc_cgroup: &str, root: &Path) -> Option<(PathBuf, bool)> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some((root.join("memory").join(rel), false));
        }
        if controllers.is_empty() {
            unified = Some((root.join(rel), true));
        }
    }
    // A pure v2 host lists only `0::/path`; on a hybrid host with no v1 memory hierarchy the
    // unified one has no memory controller, which the caller's file check reveals.
    unified
}

/// Starts watching container `c`'s memory cgroup; logs and gives up if it cannot.
pub fn watch(c: &Arc<Container>, events: EventSink) {
    let Some((dir, unified)) = memory_cgroup_of(c.pid) else {
        log::warn!("container {}: no memory cgroup found; OOM events off", c.id);
        return;
    };
    let id = c.id.clone();
    let started = if unified {
        watch_v2(&id, dir.clone(), events)
    } else {
        watch_v1(&id, dir.clone(), events)
    };
    if let Err(e) = started {
        log::warn!("container {id}: OOM watcher on {}: {e}", dir.display());
    }
}

fn publish_oom(id: &str, events: &EventSink) {
    log::info!("container {id}: OOM killer acted");
    events.publish(
        topics::TASK_OOM_EVENT_TOPIC,
        TaskOOM {
            container_id: id.to_owned(),
            ..Default::default()
        },
    );
}

fn watch_v1(id: &str, dir: PathBuf, events: EventSink) -> std::io::Result<()> {
    // SAFETY: eventfd has no memory preconditions; we own the returned descriptor.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a fresh descriptor owned by nobody else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let control = File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    // SAFETY: the OwnedFd moves into the AsyncFd, which is the only owner while registered.
    let afd = unsafe { AsyncFd::register(efd) }.map_err(std::io::Error::from)?;
    let id = id.to_owned();
    tokio::spawn(async move {
        let _control = control;
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            let mut count = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from our eventfd.
            let n = unsafe { libc::read(afd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            guard.clear_ready();
            if n != 8 {
                continue;
            }
            // The eventfd also fires when the cgroup is removed.
            if !dir.join("memory.oom_control").exists() {
                break;
            }
            publish_oom(&id, &events);
        }
    });
    Ok(())
}

fn read_oom_kill(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn watch_v2(id: &str, dir: PathBuf, events: EventSink) -> std::io::Result<()> {
    let file = dir.join("memory.events");
    let mut last = read_oom_kill(&file).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no oom_kill", file.display()),
        )
    })?;
    // SAFETY: inotify_init1 has no memory preconditions; we own the returned descriptor.
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if ifd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifd is a fresh descriptor owned by nobody else.
    let ifd = unsafe { OwnedFd::from_raw_fd(ifd) };
    let cpath = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: cpath is a valid C string for the duration of the call.
    if unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the OwnedFd moves into the AsyncFd, which is the only owner while registered.
    let afd = unsafe { AsyncFd::register(ifd) }.map_err(std::io::Error::from)?;
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer of the length passed.
            unsafe { libc::read(afd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            guard.clear_ready();
            let Some(now) = read_oom_kill(&file) else {
                break; // the cgroup is gone
            };
            if now > last {
                last = now;
                publish_oom(&id, &events);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_memory_hierarchy() {
        let text = "12:pids:/default/c1\n9:memory:/default/c1\n1:name=systemd:/x\n0::/\n";
        let (dir, unified) = memory_cgroup_from(text, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/default/c1"));
        assert!(!unified);
    }

    #[test]
    fn finds_unified_hierarchy() {
        let (dir, unified) =
            memory_cgroup_from("0::/default/c2\n", Path::new("/sys/fs/cgroup")).unwrap();
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
