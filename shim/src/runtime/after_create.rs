//! What the create worker applies inside a created container's mount namespace, before the
//! container starts: what libcontainer 0.7 leaves out of the spec (each mount's propagation,
//! read-only superblocks, the cgroup mount's flags, idmapped mounts; see `spec_adapt`) and
//! what a spec editor asked (the `/proc/driver/nvidia` overlay: libcontainer, like runc,
//! refuses spec mounts under `/proc`, so the shim does what the toolkit's hook does, from
//! outside and without running anything in the container; the toolkit's `chmod` step).
//!
//! Detached bind mounts of the host-side sources (`open_tree(OPEN_TREE_CLONE)`, made read-only
//! with `mount_setattr`) are created in the shim's mount namespace, then the process joins the
//! container's (`setns`) and attaches them (`move_mount`). Targets the container does not
//! have are skipped.
//!
//! [`Detached::new`] allocates and opens; [`Detached::attach`] only makes system calls (through
//! nix and rustix, whose path arguments use stack buffers below 256 bytes; only an error
//! message allocates), so it may run in a freshly forked child. It joins another mount
//! namespace, so the calling process must be single-threaded (the zygote's workers are).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::syscall::linux::{LinuxSyscall, MountAttr};
use libcontainer::syscall::Syscall;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use rustix::fs::CWD;
use rustix::mount::{FsPickFlags, MoveMountFlags};
use serde::{Deserialize, Serialize};

use crate::runtime::idmap::{idmapped_tree, userns, ShimBind};
use crate::runtime::mount_api::{attach, clone_tree, set_tree_attr, with_path, FsIds, TreeAttr};
use crate::runtime::spec_adapt::RecursiveMountAttr;

/// What the create worker applies in a created container's mount namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AfterCreate {
    /// `(host source, container target)` read-only bind mounts (the `/proc/driver/nvidia`
    /// overlay); a source is a file or a directory.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// `(container mount point, mount(2) propagation flags)` to apply (see `spec_adapt`).
    pub propagation: Vec<(PathBuf, u64)>,
    /// Container mount points whose superblock is made read-only where the container has a
    /// superblock of its own there (see `spec_adapt`).
    pub read_only_superblocks: Vec<PathBuf>,
    /// Flags for the cgroup mount and every mount below it (see `spec_adapt`).
    pub cgroup_flags: Option<RecursiveMountAttr>,
    /// Permission bits to set: (path in the container, mode), the toolkit's `chmod` step.
    pub chmods: Vec<(PathBuf, u32)>,
    /// The spec's binds the shim attaches itself (see `runtime::idmap::ShimBind`).
    pub binds: Vec<ShimBind>,
}

impl AfterCreate {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
            && self.propagation.is_empty()
            && self.read_only_superblocks.is_empty()
            && self.cgroup_flags.is_none()
            && self.chmods.is_empty()
            && self.binds.is_empty()
    }
}

/// Detached mounts ready to attach in the container.
#[derive(Debug)]
pub struct Detached {
    ns: OwnedFd,
    mounts: Vec<(OwnedFd, PathBuf)>,
    /// The shim's binds, attached after making their mount point when missing (a directory,
    /// or a file for a file source).
    binds: Vec<(OwnedFd, PathBuf, bool)>,
    /// Who a missing mount point is made as: the host ids of the container's root when it
    /// has a user namespace (a filesystem mounted inside one, such as its `/dev`, refuses
    /// files of ids it does not map: EOVERFLOW).
    owner: Option<(u32, u32)>,
    propagation: Vec<(PathBuf, MsFlags)>,
    read_only_superblocks: Vec<PathBuf>,
    cgroup_flags: Option<RecursiveMountAttr>,
    chmods: Vec<(PathBuf, u32)>,
    /// The devices of the superblocks mounted in the shim's mount namespace: a container mount
    /// on one of them shares the host's superblock, which is left as it is.
    host_devices: Vec<u64>,
}

/// Makes the superblock mounted at `target` (in the current mount namespace) read-only, as
/// `mount(2)` with `MS_RDONLY` would have made it, leaving the mount's own flags; the
/// superblock of a device in `host_devices` is left. System calls only.
fn make_superblock_read_only(target: &Path, host_devices: &[u64]) -> std::io::Result<()> {
    let Ok(st) = rustix::fs::lstat(target) else {
        return Ok(());
    };
    if host_devices.binary_search(&st.st_dev).is_ok() {
        return Ok(());
    }
    let fs = rustix::mount::fspick(
        CWD,
        target,
        FsPickFlags::FSPICK_CLOEXEC
            | FsPickFlags::FSPICK_SYMLINK_NOFOLLOW
            | FsPickFlags::FSPICK_NO_AUTOMOUNT,
    )?;
    rustix::mount::fsconfig_set_flag(&fs, "ro")?;
    rustix::mount::fsconfig_reconfigure(&fs)?;
    Ok(())
}

/// Sets and clears `attr`'s mount attributes on its target and every mount below it, as runc
/// mounts a cgroup filesystem: on cgroup v1 the tmpfs holding the hierarchies keeps its
/// read-write flag (runc mounts it without the spec's `ro`), the hierarchies take every flag.
/// System calls only.
fn set_recursive(attr: &RecursiveMountAttr) -> std::io::Result<()> {
    if rustix::fs::lstat(&attr.target).is_err() {
        return Ok(());
    }
    let setattr = |flags: i32, set: u64, clear: u64| {
        let mount_attr = MountAttr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        LinuxSyscall
            .mount_setattr(
                CWD,
                &attr.target,
                flags as u32,
                &mount_attr,
                std::mem::size_of::<MountAttr>(),
            )
            .map_err(std::io::Error::other)
    };
    setattr(
        libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
        attr.set,
        attr.clear,
    )?;
    let rdonly = libc::MOUNT_ATTR_RDONLY;
    let is_tmpfs = rustix::fs::statfs(&attr.target)
        .is_ok_and(|fs| fs.f_type == libc::TMPFS_MAGIC as libc::__fsword_t);
    if is_tmpfs && attr.set & rdonly != 0 {
        setattr(libc::AT_SYMLINK_NOFOLLOW, 0, rdonly)?;
    }
    Ok(())
}

/// A read-only, nosuid, nodev, noexec detached bind mount of `source`.
fn detached_bind(source: &Path) -> std::io::Result<OwnedFd> {
    let tree = clone_tree(source, false)?;
    let attr = TreeAttr {
        set: libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
        ..TreeAttr::default()
    };
    set_tree_attr(&tree, attr, source)?;
    Ok(tree)
}

/// A detached bind of a spec mount's source with the attributes its options ask, idmapped
/// through a user namespace of its mappings when it has them (this forks: a zygote worker
/// only); with whether the source is a directory.
fn shim_bind(m: &ShimBind) -> std::io::Result<(OwnedFd, PathBuf, bool)> {
    let tree = match &m.idmap {
        Some((uid, gid)) => idmapped_tree(&m.source, userns(uid, gid)?.as_fd(), m.recursive)?,
        None => clone_tree(&m.source, m.recursive)?,
    };
    if m.attr != 0 {
        let attr = TreeAttr {
            set: m.attr,
            recursive: m.recursive,
            ..TreeAttr::default()
        };
        set_tree_attr(&tree, attr, &m.source)?;
    }
    let is_dir = std::fs::metadata(&m.source)?.is_dir();
    Ok((tree, m.destination.clone(), is_dir))
}

/// Makes a missing mount point `target` in the current mount namespace: a directory, or an
/// empty file (and its directories).
fn make_mount_point(target: &Path, is_dir: bool, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let _as = owner.map(|(uid, gid)| FsIds::assume(uid, gid));
    if is_dir {
        return std::fs::create_dir_all(target).map_err(with_path("create", target));
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(with_path("create", dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map(drop)
        .map_err(with_path("create", target))
}

/// The host ids of root in the user namespace of process `pid`, when that is not this
/// process's (whose root is the host's).
fn root_of_user_namespace(pid: i32) -> std::io::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/user")?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/user"))?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Ok(None);
    }
    let host_of_root = |map: &str| -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{map}")).ok()?;
        text.lines().find_map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            match (f.next(), f.next()) {
                (Some(Ok(0)), Some(Ok(host))) => Some(host),
                _ => None,
            }
        })
    };
    Ok(host_of_root("uid_map").zip(host_of_root("gid_map")))
}

/// Mounts `source` read-only (nosuid, nodev, noexec) over what `target` (an `O_PATH` handle)
/// is, in the calling process's mount namespace.
pub fn bind_read_only(source: &Path, target: &OwnedFd) -> std::io::Result<()> {
    let mount = detached_bind(source)?;
    rustix::mount::move_mount(
        &mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(std::io::Error::from)
}

impl Detached {
    /// Opens the mount namespace of the container whose init is `pid` and makes the detached
    /// mounts; `host_devices` are the superblock devices mounted in the shim's namespace
    /// ([`HostMounts`](crate::runtime::mountinfo::HostMounts)), sorted.
    pub fn new(args: &AfterCreate, pid: i32, host_devices: Vec<u64>) -> std::io::Result<Self> {
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
        let ns = std::fs::File::open(&ns_path).map_err(with_path("open", &ns_path))?;
        let owner = if args.binds.is_empty() {
            None
        } else {
            root_of_user_namespace(pid)?
        };
        let mounts = args
            .mounts
            .iter()
            .map(|(src, target)| Ok((detached_bind(src)?, target.clone())))
            .collect::<std::io::Result<_>>()?;
        let propagation = args
            .propagation
            .iter()
            .map(|(target, flags)| {
                (
                    target.clone(),
                    MsFlags::from_bits_truncate(*flags as libc::c_ulong),
                )
            })
            .collect();
        let binds = args
            .binds
            .iter()
            .map(shim_bind)
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            ns: ns.into(),
            mounts,
            binds,
            owner,
            propagation,
            read_only_superblocks: args.read_only_superblocks.clone(),
            cgroup_flags: args.cgroup_flags.clone(),
            chmods: args.chmods.clone(),
            host_devices,
        })
    }

    /// Joins the container's mount namespace, applies the mount flags and propagation and
    /// attaches every mount whose target exists there, then returns to the caller's own mount
    /// namespace, whatever happened; returns how many mounts were attached. Runs in a
    /// single-threaded zygote worker.
    pub fn attach(&self) -> std::io::Result<usize> {
        let home = std::fs::File::open("/proc/self/ns/mnt")?;
        nix::sched::setns(&self.ns, CloneFlags::CLONE_NEWNS)
            .map_err(std::io::Error::from)
            .map_err(|e| std::io::Error::new(e.kind(), format!("join the mount namespace: {e}")))?;
        let result = self.apply();
        nix::sched::setns(home, CloneFlags::CLONE_NEWNS)
            .map_err(std::io::Error::from)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("return to the shim's mount namespace: {e}"),
                )
            })?;
        result
    }

    /// The work of [`Detached::attach`] inside the container's mount namespace.
    fn apply(&self) -> std::io::Result<usize> {
        // Each mount's own propagation, which libcontainer parses but does not apply.
        for (target, flags) in &self.propagation {
            nix::mount::mount(None::<&str>, target, None::<&str>, *flags, None::<&str>)
                .map_err(std::io::Error::from)
                .map_err(with_path("set the propagation of", target))?;
        }
        // Best effort, as the mount itself is read-only already: a kernel without `fspick`
        // or a filesystem that refuses leaves the superblock as libcontainer made it.
        for target in &self.read_only_superblocks {
            let _ = make_superblock_read_only(target, &self.host_devices);
        }
        if let Some(attr) = &self.cgroup_flags {
            set_recursive(attr).map_err(with_path("set the mount flags of", &attr.target))?;
        }
        // The container has not started: nothing of its own has run to race this lookup.
        for (path, mode) in &self.chmods {
            let st = rustix::fs::lstat(path).map_err(std::io::Error::from)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("chmod {}: a symlink", path.display()),
                ));
            }
            rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(*mode))
                .map_err(std::io::Error::from)
                .map_err(with_path("chmod", path))?;
        }
        for (fd, target, is_dir) in &self.binds {
            if rustix::fs::lstat(target).is_err() {
                make_mount_point(target, *is_dir, self.owner)?;
            }
            attach(fd, target)?;
        }
        let mut attached = 0;
        for (fd, target) in &self.mounts {
            if rustix::fs::lstat(target).is_err() {
                continue;
            }
            attach(fd, target)?;
            attached += 1;
        }
        Ok(attached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn mounts_land_in_the_target_namespace_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            nvidia_shim_integration::skip("needs root");
            return;
        }
        // A fake driver proc tree, seen by the host and by a process in a mount namespace of
        // its own (a copy of the host's, private propagation).
        let t = tempfile::tempdir().unwrap();
        let nv = t.path().join("driver/nvidia");
        std::fs::create_dir_all(nv.join("gpus/a")).unwrap();
        std::fs::create_dir_all(nv.join("gpus/b")).unwrap();
        std::fs::write(nv.join("gpus/b/information"), "Model: x\n").unwrap();
        std::fs::write(nv.join("params"), "ModifyDeviceFiles: 1\n").unwrap();
        std::fs::create_dir_all(nv.join("capabilities/mig")).unwrap();
        std::fs::write(nv.join("capabilities/mig/config"), "DeviceFileMinor: 1\n").unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("params"), "ModifyDeviceFiles: 0\n").unwrap();
        std::fs::create_dir(src.path().join("empty")).unwrap();
        std::fs::write(src.path().join("empty-file"), "").unwrap();
        let mut target = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "30"])
            .spawn()
            .expect("unshare (util-linux)");
        // Wait until it has its own namespace.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        for _ in 0..200 {
            if std::fs::read_link(format!("/proc/{}/ns/mnt", target.id()))
                .ok()
                .as_ref()
                != Some(&own)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let prepared = Detached::new(
            &AfterCreate {
                mounts: vec![
                    (src.path().join("params"), nv.join("params")),
                    (src.path().join("empty"), nv.join("gpus/b")),
                    (src.path().join("empty"), nv.join("gpus/missing")),
                    (
                        src.path().join("empty-file"),
                        nv.join("capabilities/mig/config"),
                    ),
                ],
                ..AfterCreate::default()
            },
            target.id() as i32,
            Vec::new(),
        )
        .unwrap();
        // Attach from a forked child, which returns to its own namespace afterwards.
        let mut cmd = Command::new("true");
        // SAFETY: attach() makes system calls only.
        unsafe {
            cmd.pre_exec(move || prepared.attach().map(|_| ()));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let script = format!(
            "cat {nv}/params; ls {nv}/gpus/b | wc -l; touch {nv}/gpus/b/x 2>/dev/null || echo ro; \
             wc -c < {nv}/capabilities/mig/config",
            nv = nv.display()
        );
        let out = Command::new("nsenter")
            .args(["-t", &target.id().to_string(), "-m", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ModifyDeviceFiles: 0\n0\nro\n0\n"
        );
        // The host's view is untouched; the target process sees the overlay.
        assert_eq!(
            std::fs::read_to_string(nv.join("params")).unwrap(),
            "ModifyDeviceFiles: 1\n"
        );
        assert!(nv.join("gpus/b/information").exists());
        let seen = Command::new("nsenter")
            .args(["-t", &target.id().to_string(), "-m", "cat"])
            .arg(nv.join("params"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            "ModifyDeviceFiles: 0\n"
        );
        let _ = target.kill();
        let _ = target.wait();
    }
}
