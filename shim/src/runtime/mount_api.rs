//! The new mount API as the shim uses it: detached copies of a tree (`open_tree` with
//! `OPEN_TREE_CLONE`), their attributes (`mount_setattr`: read-only, idmapped, ...) and their
//! attachment (`move_mount`). System calls only (an error's message aside), so a forked child
//! may make them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use libcontainer::syscall::linux::{LinuxSyscall, MountAttr};
use libcontainer::syscall::Syscall;
use rustix::fs::CWD;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// `err` with `what` and `path` in front of its message, its kind kept.
pub fn with_path<'a>(
    what: &str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> std::io::Error + 'a {
    let what = what.to_owned();
    move |e| std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// A detached copy of the mount at `source` (with what is mounted below it when `recursive`).
pub fn clone_tree(source: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(CWD, source, flags)
        .map_err(std::io::Error::from)
        .map_err(with_path("open_tree", source))
}

/// Mount attributes to change on a detached tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeAttr<'a> {
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// `MOUNT_ATTR_*` bits to clear.
    pub clear: u64,
    /// The user namespace of an idmapping (with `MOUNT_ATTR_IDMAP` in `set`).
    pub userns: Option<BorrowedFd<'a>>,
    /// Every mount of the tree, not only its top.
    pub recursive: bool,
}

/// Sets `attr` on the detached tree `tree`; `source` names it in an error.
pub fn set_tree_attr(tree: &OwnedFd, attr: TreeAttr<'_>, source: &Path) -> std::io::Result<()> {
    let mount_attr = MountAttr {
        attr_set: attr.set,
        attr_clr: attr.clear,
        propagation: 0,
        userns_fd: attr
            .userns
            .map_or(0, |ns| u64::try_from(ns.as_raw_fd()).unwrap_or_default()),
    };
    let mut at = libc::AT_EMPTY_PATH as u32;
    if attr.recursive {
        at |= libc::AT_RECURSIVE as u32;
    }
    LinuxSyscall
        .mount_setattr(
            tree.as_fd(),
            Path::new(""),
            at,
            &mount_attr,
            std::mem::size_of::<MountAttr>(),
        )
        .map_err(|e| std::io::Error::other(format!("mount_setattr {}: {e}", source.display())))
}

/// Attaches the detached tree `tree` at `target` (a path in the calling process's mount
/// namespace).
pub fn attach(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(std::io::Error::from)
    .map_err(with_path("move_mount onto", target))
}

/// The filesystem ids of the calling thread (a blocking-pool thread, a single-threaded
/// worker), set to others until dropped: files it creates are theirs.
pub struct FsIds {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl FsIds {
    /// Creates files as `uid`/`gid` from now on, on this thread.
    pub fn assume(uid: u32, gid: u32) -> Self {
        // setfsuid/setfsgid answer the previous ids and cannot fail otherwise.
        let gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        let uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        Self { uid, gid }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        nix::unistd::setfsuid(self.uid);
        nix::unistd::setfsgid(self.gid);
    }
}
