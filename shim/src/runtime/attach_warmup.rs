//! Cgroup attach warm-up: start the kernel's RCU grace period for cgroup migrations before the
//! container needs it.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`, which libcontainer does for the
//! container's first process, on cgroup v1 and v2 alike) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. When no migration happened in the last few
//! milliseconds, that first writer waits for a whole RCU grace period: 7 to 16 ms measured on
//! this project's cgroup v1 test host, more than libcontainer's whole create otherwise costs.
//! Writers that follow within about one grace period pass at once.
//!
//! So the `start` command, the first thing containerd runs for a new container, forks a child
//! that moves itself into the cgroup it is already in (`0` means "the writer") and exits. It
//! pays the grace period while containerd connects to the shim and sends Create, and the
//! container's own attach then finds the fast path. When containerd takes longer than a grace
//! period to send Create, that head start has run out, so Create starts another one
//! ([`now_in_background`]) alongside its own work before the attach. The move changes nothing; a host where the write
//! fails (a read-only cgroupfs) simply gets no head start.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{close, fork, write, ForkResult};
use procfs::ProcessCGroup;

/// The `cgroup.procs` file of the cgroup this process is in, given its `cgroups`
/// (`/proc/self/cgroup`) and the cgroupfs mount root (`/sys/fs/cgroup`): the unified hierarchy
/// (pure v2, or the hybrid layout's `unified/`), else the first v1 hierarchy whose directory
/// exists.
pub fn own_procs_file(cgroups: &[ProcessCGroup], root: &Path) -> Option<PathBuf> {
    let mut candidates = cgroups.iter().flat_map(|cg| {
        let path = cg.pathname.trim_start_matches('/');
        let dirs: Vec<PathBuf> = if cg.controllers.is_empty() {
            vec![root.join(path), root.join("unified").join(path)]
        } else {
            let list = cg.controllers.join(",");
            let hierarchy = list.strip_prefix("name=").unwrap_or(&list).to_owned();
            vec![root.join(hierarchy).join(path)]
        };
        dirs.into_iter().map(|d| d.join("cgroup.procs"))
    });
    candidates.find(|p| p.is_file())
}

/// This process's own `cgroup.procs` file, as a C string for the forked child.
fn own_procs_path() -> Option<CString> {
    let cgroups = procfs::process::Process::myself().ok()?.cgroups().ok()?;
    let file = own_procs_file(&cgroups.0, Path::new("/sys/fs/cgroup"))?;
    CString::new(file.as_os_str().as_bytes()).ok()
}

/// Moves the calling process into the cgroup it is already in. Uses only async-signal-safe
/// calls, so a forked child may run it.
fn move_into(file: &CStr) {
    if let Ok(fd) = open(file, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        // SAFETY: `fd` was just opened here and is closed right after this one write.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = write(borrowed, b"0");
        let _ = close(fd);
    }
}

/// Forks the warm-up child and returns at once. Call it only while the process has a single
/// thread (before tokio starts): the child runs nothing but `close`, `open`, `write` and
/// `_exit`. The child closes stdio first, so containerd, which reads the `start` command's
/// output to its end, never waits for it; once `start` exits the child is reaped by whoever
/// adopts the shim daemon.
pub fn start() {
    let Some(file) = own_procs_path() else {
        return;
    };
    // SAFETY: the process is single-threaded here (see above), and the child only makes
    // async-signal-safe calls before `_exit`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            for fd in 0..=2 {
                let _ = close(fd);
            }
            move_into(&file);
            // SAFETY: leaves without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => log::debug!("cgroup attach warm-up: fork: {e}"),
    }
}

/// The same warm-up from the running shim, when a Create arrives: the grace period then runs
/// while the shim mounts the rootfs and libcontainer prepares the container, which is where it
/// helps most when containerd took longer than a grace period between `start` and Create (a
/// busy host, CRI's sandbox set-up). The write blocks for the grace period, so it runs on a
/// small thread of its own, beside the create's work, and this returns at once. The whole
/// shim process is "moved" into the cgroup it is in, which changes nothing.
pub fn now_in_background() -> Option<WarmUp> {
    let file = own_procs_path()?;
    let through = Arc::new(OnceLock::new());
    let done = Arc::clone(&through);
    let started = std::thread::Builder::new()
        .name("attach-warmup".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            move_into(&file);
            let _ = done.set(Instant::now());
        });
    match started {
        Ok(_) => Some(WarmUp { through }),
        Err(e) => {
            log::debug!("cgroup attach warm-up: {e}");
            None
        }
    }
}

/// A warm-up started by [`now_in_background`]. When its write got through is when the kernel
/// let cgroup migrations pass again: the earliest the container's own attach could, so the
/// part of a create that waited for the kernel rather than for the shim or libcontainer.
#[derive(Debug)]
pub struct WarmUp {
    through: Arc<OnceLock<Instant>>,
}

impl WarmUp {
    /// How long after `since` the warm-up's write got through; `None` while it still waits.
    pub fn through_after(&self, since: Instant) -> Option<Duration> {
        self.through
            .get()
            .map(|t| t.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::parse_proc_cgroup as parse;

    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            let dir = root.path().join(d);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        root
    }

    #[test]
    fn pure_v2_uses_the_unified_root() {
        let root = tree(&["system.slice/containerd.service"]);
        let got = own_procs_file(&parse("0::/system.slice/containerd.service\n"), root.path());
        assert_eq!(
            got,
            Some(
                root.path()
                    .join("system.slice/containerd.service/cgroup.procs")
            )
        );
    }

    #[test]
    fn hybrid_prefers_an_existing_hierarchy_in_file_order() {
        let root = tree(&["cpu,cpuacct/user.slice", "unified/user.slice"]);
        let text = "12:pids:/user.slice\n4:cpu,cpuacct:/user.slice\n0::/user.slice\n";
        // `pids/` is not mounted in this tree, so the combined cpu,cpuacct hierarchy is used.
        assert_eq!(
            own_procs_file(&parse(text), root.path()),
            Some(root.path().join("cpu,cpuacct/user.slice/cgroup.procs"))
        );
        let only_unified = "0::/user.slice\n";
        assert_eq!(
            own_procs_file(&parse(only_unified), root.path()),
            Some(root.path().join("unified/user.slice/cgroup.procs"))
        );
    }

    #[test]
    fn a_background_warm_up_tells_when_its_write_got_through() {
        let since = Instant::now();
        // This process's own cgroup: the test binary is "moved" where it already is.
        let Some(warmup) = now_in_background() else {
            panic!("no cgroup.procs file of this process under /sys/fs/cgroup");
        };
        let deadline = since + Duration::from_secs(5);
        let through = loop {
            if let Some(t) = warmup.through_after(since) {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "the warm-up's write never returned"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(through <= since.elapsed());
    }

    #[test]
    fn named_hierarchies_and_missing_dirs() {
        let root = tree(&["systemd"]);
        assert_eq!(
            own_procs_file(&parse("1:name=systemd:/\n"), root.path()),
            Some(root.path().join("systemd/cgroup.procs"))
        );
        assert_eq!(
            own_procs_file(&parse("3:memory:/gone\n"), root.path()),
            None
        );
        assert_eq!(own_procs_file(&parse("garbage"), root.path()), None);
    }
}
