//! The containerd process behind a socket, and where it looks for a shim binary (for
//! `doctor`): a node can run more than one containerd (a platform's and Docker's, a test's), so
//! the one that matters is the one listening on the `[grpc] address` of the config checked.
//!
//! The listener is found as `ss -xlp` finds it: the socket's entry in `/proc/net/unix` (a
//! listening socket is bound to the path and unconnected) gives its inode, and the process
//! holding a descriptor `socket:[inode]` is the one. containerd looks for
//! `containerd-shim-<name>-v2` in its working directory, then its `PATH` (relative entries from
//! its working directory), then the directory of its own binary
//! (`runtime/v2/manager.go`, `resolveRuntimePath`); each is checked here inside the process's
//! root (`/proc/<pid>/root`), so a containerd in its own mount namespace is checked as it sees
//! its files.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use procfs::net::UnixState;
use procfs::process::FDTarget;

/// A process found listening on a unix socket, with what its shim lookup depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdProcess {
    /// Its pid.
    pub pid: i32,
    /// Its root directory as seen from here (`/proc/<pid>/root`).
    pub root: PathBuf,
    /// Its working directory, as it sees it.
    pub cwd: Option<PathBuf>,
    /// Its `PATH`, `None` when unset (it then finds nothing there).
    pub path: Option<String>,
    /// Its binary, as it sees it.
    pub exe: Option<PathBuf>,
}

/// The file at `path` (device and inode), following links.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The process listening on the unix socket `socket` in this network namespace, if any (the
/// lowest pid when several hold it).
pub fn listening_on(socket: &Path) -> Result<Option<ContainerdProcess>, procfs::ProcError> {
    let wanted = identity(socket);
    let inodes: HashSet<u64> = procfs::net::unix()?
        .into_iter()
        .filter(|e| e.state == UnixState::UNCONNECTED)
        .filter(|e| {
            e.path
                .as_deref()
                .is_some_and(|p| p == socket || (wanted.is_some() && identity(p) == wanted))
        })
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return Ok(None);
    }
    let mut pids: Vec<i32> = procfs::process::all_processes()?
        .flatten()
        .filter(|p| {
            p.fd().is_ok_and(|mut fds| {
                fds.any(|fd| {
                    fd.is_ok_and(
                        |fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)),
                    )
                })
            })
        })
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    let Some(&pid) = pids.first() else {
        return Ok(None);
    };
    let proc = procfs::process::Process::new(pid)?;
    Ok(Some(ContainerdProcess {
        pid,
        root: PathBuf::from(format!("/proc/{pid}/root")),
        cwd: proc.cwd().ok(),
        path: proc.environ().ok().and_then(|env| {
            env.get(std::ffi::OsStr::new("PATH"))
                .map(|v| v.to_string_lossy().into_owned())
        }),
        exe: proc.exe().ok(),
    }))
}

impl ContainerdProcess {
    /// Where it looks for the binary `name`, in its order, as it names the places.
    pub fn lookup_order(&self, name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(cwd) = &self.cwd {
            out.push(cwd.join(name));
        }
        // As Go's filepath.SplitList: an empty PATH has no entries, an empty entry is ".".
        let entries = self.path.iter().filter(|p| !p.is_empty());
        for dir in entries.flat_map(|p| p.split(':')) {
            let dir = if dir.is_empty() { "." } else { dir };
            match &self.cwd {
                _ if Path::new(dir).is_absolute() => out.push(Path::new(dir).join(name)),
                Some(cwd) => out.push(cwd.join(dir).join(name)),
                None => {}
            }
        }
        if let Some(dir) = self.exe.as_deref().and_then(Path::parent) {
            out.push(dir.join(name));
        }
        out
    }

    /// `path` as the process names it, reached from here (through its root).
    pub fn reached_from_here(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The binary `name` it would run, as it names it: the first of [`Self::lookup_order`]
    /// that is an executable regular file.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.lookup_order(name).into_iter().find(|p| {
            std::fs::metadata(self.reached_from_here(p))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_order_is_containerds() {
        let p = ContainerdProcess {
            pid: 1,
            root: PathBuf::from("/"),
            cwd: Some(PathBuf::from("/var/lib")),
            path: Some("/usr/local/bin::bin:/usr/bin".into()),
            exe: Some(PathBuf::from("/opt/ctd/bin/containerd")),
        };
        let order: Vec<String> = p
            .lookup_order("containerd-shim-x-v2")
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "/var/lib/containerd-shim-x-v2",
                "/usr/local/bin/containerd-shim-x-v2",
                "/var/lib/./containerd-shim-x-v2",
                "/var/lib/bin/containerd-shim-x-v2",
                "/usr/bin/containerd-shim-x-v2",
                "/opt/ctd/bin/containerd-shim-x-v2",
            ]
        );
        let unset = ContainerdProcess { path: None, ..p };
        assert_eq!(unset.lookup_order("x").len(), 2);
        assert_eq!(
            unset.reached_from_here(Path::new("/usr/bin/x")),
            PathBuf::from("/usr/bin/x")
        );
    }

    #[test]
    fn the_listener_of_a_socket_is_found_and_its_binary_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let none = listening_on(&socket).unwrap();
        assert_eq!(none, None);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let found = listening_on(&socket).unwrap().expect("this test listens");
        assert_eq!(found.pid, std::process::id() as i32);
        assert_eq!(
            found.root,
            PathBuf::from(format!("/proc/{}/root", found.pid))
        );
        // This test binary is found in its own directory.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        let without_path = ContainerdProcess {
            path: Some(String::new()),
            cwd: Some(dir.path().to_owned()),
            ..found
        };
        assert_eq!(without_path.find(name), Some(exe));
        assert_eq!(without_path.find("no-such-binary-here"), None);
    }
}
