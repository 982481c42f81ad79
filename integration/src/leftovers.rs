//! What a container may leave behind, looked up on the host: shim processes, container
//! processes, mounts, cgroups and state directories.

use std::fs;
use std::path::{Path, PathBuf};

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| p != std::process::id() as i32)
        .filter(|&p| {
            let state = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .map(|s| s.trim_start().starts_with('Z'))
                .unwrap_or(false);
            !zombie && cmdline(p).join(" ").contains(needle)
        })
        .collect()
}

/// Shim processes (and their zygotes, which share the command line) serving the containerd
/// listening on `socket`.
pub fn shim_pids(socket: &Path) -> Vec<i32> {
    let sock = socket.to_string_lossy().into_owned();
    pids()
        .into_iter()
        .filter(|&p| {
            let c = cmdline(p);
            c.first()
                .map(|a| a.ends_with("containerd-shim-nvidia-v2"))
                .unwrap_or(false)
                && c.iter().any(|a| a == &sock)
        })
        .collect()
}

/// The shim daemon serving the containerd listening on `socket`: the oldest of its processes
/// (its zygote is forked after it).
pub fn shim_daemon_pid(socket: &Path) -> Option<i32> {
    shim_pids(socket).into_iter().min()
}

/// Processes whose `/proc/<pid>/cgroup` names a cgroup ending in `/<id>` (a container's).
pub fn processes_in_cgroup_named(id: &str) -> Vec<i32> {
    let suffix = format!("/{id}");
    pids()
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/cgroup"))
                .is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with(&suffix)))
        })
        .collect()
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The zygotes of shim daemon `daemon`: its children that are shim processes too.
pub fn zygotes_of(socket: &Path, daemon: i32) -> Vec<i32> {
    shim_pids(socket)
        .into_iter()
        .filter(|&p| parent_pid(p) == Some(daemon))
        .collect()
}

/// Mount points under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Cgroup directories of container `id` in namespace `ns` (cgroupsPath `/ns/id`), on v1 or v2.
pub fn cgroups_of(ns: &str, id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let unified = root.join(ns).join(id);
    if unified.exists() {
        found.push(unified);
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path().join(ns).join(id);
            if p.exists() {
                found.push(p);
            }
        }
    }
    found
}

/// The content (trimmed) of `file` in the cgroup of container `id` in namespace `ns`, from the
/// first hierarchy that has it; `None` where none has.
pub fn cgroup_file(ns: &str, id: &str, file: &str) -> std::io::Result<Option<String>> {
    cgroups_of(ns, id)
        .iter()
        .map(|d| d.join(file))
        .find(|p| p.exists())
        .map(|p| Ok(fs::read_to_string(p)?.trim().to_owned()))
        .transpose()
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The socket a shim of group `group` listens on for the containerd at `containerd_socket`,
/// as containerd-shim derives it (`/run/containerd/s/<sha256(address/ns/group)>`).
pub fn shim_socket(containerd_socket: &Path, ns: &str, group: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = containerd_socket.join(ns).join(group);
    let hash: String = Sha256::digest(key.to_string_lossy().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Path::new("/run/containerd/s").join(hash)
}

/// Resident memory of `pid`: (VmRSS, PSS) in kB, from `/proc/<pid>/status` and `smaps_rollup`.
pub fn memory_kb(pid: i32) -> (u64, u64) {
    let field = |file: &str, key: &str| -> u64 {
        fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

/// The shim executable's code in `pid`'s address space: (resident kB, mapped kB) of its
/// executable mappings, from `/proc/<pid>/smaps`.
pub fn resident_shim_code_kb(pid: i32) -> (u64, u64) {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_code = false;
    let (mut resident, mut mapped) = (0, 0);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(&first) = fields.first() else {
            continue;
        };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, path.
            in_code = fields.get(1).is_some_and(|p| p.contains('x'))
                && fields
                    .get(5)
                    .is_some_and(|p| p.ends_with("containerd-shim-nvidia-v2"));
            continue;
        }
        let kb = || {
            fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" if in_code => mapped += kb(),
            "Rss:" if in_code => resident += kb(),
            _ => {}
        }
    }
    (resident, mapped)
}

/// Processes whose executable name ends with `exe` and whose arguments include `arg`.
pub fn processes_of(exe: &str, arg: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| {
            let c = cmdline(p);
            c.first().map(|a| a.ends_with(exe)).unwrap_or(false) && c.iter().any(|a| a == arg)
        })
        .collect()
}

/// The shim processes of the containerd listening on `socket`: this shim's (and their
/// zygotes) and the Go runc shim's.
pub fn shims_of(socket: &Path) -> Vec<i32> {
    let mut pids = shim_pids(socket);
    pids.extend(processes_of(
        "containerd-shim-runc-v2",
        &socket.to_string_lossy(),
    ));
    pids
}

/// SIGKILL to `pid`.
pub fn kill(pid: i32) {
    // SAFETY: kill(2) on a pid; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Detaches every mount under `dir`, the last made first.
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir).into_iter().rev() {
        if let Ok(c) = std::ffi::CString::new(m) {
            // SAFETY: c is a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Cgroup directories below the cgroup parent `parent` (`/nvdocker-1-2`), under each v1
/// controller or the v2 root.
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    cgroup_parents(parent)
        .filter_map(|p| fs::read_dir(p).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
        .collect()
}

/// `parent` under the v2 root and under each v1 controller.
fn cgroup_parents(parent: &str) -> impl Iterator<Item = PathBuf> + '_ {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    std::iter::once(root.to_path_buf())
        .chain(controllers)
        .map(move |r| r.join(parent.trim_start_matches('/')))
}

/// Kills the processes in the cgroups below `parent`, removes them (once empty), then
/// `parent` itself.
pub fn remove_cgroups_under(parent: &str) {
    let dirs = cgroups_under(parent);
    for dir in &dirs {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        procs.lines().filter_map(|p| p.parse().ok()).for_each(kill);
    }
    for dir in &dirs {
        let _ = crate::checks::eventually("a leftover cgroup to empty", || {
            fs::remove_dir(dir).is_ok() || !dir.exists()
        });
    }
    if !parent.trim_start_matches('/').is_empty() {
        for p in cgroup_parents(parent) {
            let _ = fs::remove_dir(p);
        }
    }
}

/// The names in directory `dir`.
pub fn names_in(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    Ok(fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect())
}
