//! A directory whose paths can never lead out of it: a container's rootfs (read for its compat
//! libraries, written with links and an ld cache) and a driver root (searched for the driver's
//! files). It is opened once; every path under it is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against that descriptor, so symlinks are
//! followed as if the directory were `/`: an image whose `/usr/lib/x86_64-linux-gnu` is a
//! symlink to `/etc` on the host, or `../../..`, is resolved inside the rootfs, and Debian's
//! `/usr/lib/x86_64-linux-gnu/libcuda.so.1 -> /etc/alternatives/... -> nvidia/current/...`
//! resolves to the driver root's own file, never the host's. Files are read as
//! [`crate::untrusted`] reads them (never blocking, bounded); writes replace a final symlink
//! rather than follow it.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

pub use crate::untrusted::Durability;
use crate::untrusted::{self, FinalLink, UntrustedError};

/// How every path under a [`Root`] is resolved.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// The most dangling symlinks [`Root::create_dir_all`] follows to create their targets.
const MAX_LINK_DEPTH: u32 = 40;

/// An operation under a [`Root`] failed.
#[derive(Debug, thiserror::Error)]
#[error("root {root}: cannot {what} {path}: {source}")]
pub struct RootError {
    /// The root.
    pub root: PathBuf,
    /// The operation.
    pub what: &'static str,
    /// The path inside the root.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// What [`Root::symlink`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// Nothing was there; the link was made.
    Created,
    /// The same link was already there.
    Unchanged,
    /// A symlink pointing elsewhere (the old target) was replaced.
    Replaced(PathBuf),
    /// Something other than a symlink is there (the image's own file or directory) and was
    /// left in place.
    KeptEntry,
}

/// One entry of a directory listed by [`Root::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Whether it is a regular file (not a symlink, not a directory).
    pub is_file: bool,
}

/// A directory opened as the root of every path resolved under it.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

/// `p` relative to the root it is resolved in (`/usr/lib` and `usr/lib` name the same place),
/// with `..` and `.` left for the kernel to resolve inside the root; `.` for the root itself.
fn relative(p: &Path) -> PathBuf {
    let rel: PathBuf = p
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

/// The path of the file `fd` has open, as the kernel names it.
fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The target of symlink `name` in `dir` (`EINVAL` when it is not a symlink).
fn readlinkat(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(
        target.into_bytes(),
    )))
}

/// `name` as a path component for the `*at` calls.
fn c_name(name: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

impl Root {
    /// Opens directory `path` as a root.
    pub fn open(path: &Path) -> Result<Self, RootError> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootError {
            root: path.to_owned(),
            what: "open",
            path: PathBuf::from("/"),
            source: e.into(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    /// The root's path on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `p` (absolute or relative, inside the root) as a host path, without resolving it.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        self.path.join(relative(p))
    }

    /// `host` (a resolved host path) as a path inside the root, when it is under it.
    pub fn inside(&self, host: &Path) -> Option<PathBuf> {
        let rel = host.strip_prefix(&self.path).ok()?;
        Some(Path::new("/").join(rel))
    }

    fn err(&self, what: &'static str, path: &Path, source: impl Into<std::io::Error>) -> RootError {
        RootError {
            root: self.path.clone(),
            what,
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// Opens `p` (inside the root) with `flags`, every symlink followed inside the root (the
    /// final one too unless `flags` has `NOFOLLOW`).
    fn resolve(&self, p: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.fd,
            relative(p),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
    }

    /// Opens file `p` (inside the root) for reading: a regular file of at most `max` bytes,
    /// else an error saying what is there (a FIFO or device there is never opened, so it can
    /// never block; see [`crate::untrusted`]). A final symlink is followed inside the root or
    /// refused, as `final_link` says.
    pub fn open_file(
        &self,
        p: &Path,
        final_link: FinalLink,
        max: u64,
    ) -> Result<File, UntrustedError> {
        untrusted::open_at(self.fd.as_fd(), &relative(p), final_link, IN_ROOT, max)
    }

    /// Reads file `p` (inside the root): a regular file of at most `max` bytes, never through
    /// a final symlink (see [`Root::open_file`]).
    pub fn read_file(&self, p: &Path, max: u64) -> Result<Vec<u8>, UntrustedError> {
        untrusted::read_to_end(&self.open_file(p, FinalLink::Refuse, max)?, max)
    }

    /// The real host path of `file`, opened under this root (every symlink resolved).
    pub fn real_path(&self, file: &impl AsRawFd) -> std::io::Result<PathBuf> {
        std::fs::read_link(fd_path(file))
    }

    /// Directory `p` with every symlink resolved, as a path inside the root
    /// (`/lib/x86_64-linux-gnu` is `/usr/lib/x86_64-linux-gnu` on a merged-/usr host); `None`
    /// when it is not a directory.
    pub fn real_dir(&self, p: &Path) -> Option<PathBuf> {
        let fd = self.resolve(p, OFlags::PATH | OFlags::DIRECTORY).ok()?;
        self.inside(&self.real_path(&fd).ok()?)
    }

    /// The entries of directory `dir` (inside the root, symlinks followed), sorted by name;
    /// empty when it is missing or not a directory. Names that are not UTF-8 are left out.
    pub fn list(&self, dir: &Path) -> Vec<DirEntry> {
        let Ok(mut listing) = self
            .resolve(dir, OFlags::RDONLY | OFlags::DIRECTORY)
            .and_then(Dir::new)
        else {
            return Vec::new();
        };
        let entries: Vec<(CString, FileType)> = listing
            .by_ref()
            .flatten()
            .map(|e| (e.file_name().to_owned(), e.file_type()))
            .filter(|(name, _)| name.as_bytes() != b"." && name.as_bytes() != b"..")
            .collect();
        let mut out: Vec<DirEntry> = entries
            .into_iter()
            .filter_map(|(name, file_type)| {
                // A file system that does not say the type in its listing: ask the entry.
                let file_type = match (file_type, listing.fd()) {
                    (FileType::Unknown, Ok(dirfd)) => {
                        rustix::fs::statat(dirfd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                            .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode))
                    }
                    (known, _) => known,
                };
                Some(DirEntry {
                    name: name.into_string().ok()?,
                    is_file: file_type == FileType::RegularFile,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Creates directory `dir` (inside the root) and its parents, 0755. A component that is a
    /// dangling symlink gets its target created, inside the root.
    pub fn create_dir_all(&self, dir: &Path) -> Result<(), RootError> {
        self.ensure_dir(&relative(dir), 0)
            .map_err(|e| self.err("create", dir, e))
    }

    fn ensure_dir(&self, rel: &Path, depth: u32) -> std::io::Result<()> {
        if depth > MAX_LINK_DEPTH {
            return Err(Errno::LOOP.into());
        }
        let mut done = PathBuf::new();
        for comp in rel.components() {
            let next = done.join(comp);
            if matches!(comp, Component::ParentDir | Component::CurDir) {
                done = next; // the kernel keeps `..` inside the root
                continue;
            }
            let parent = self.resolve(&done, OFlags::PATH | OFlags::DIRECTORY)?;
            let name = c_name(comp.as_os_str())?;
            match rustix::fs::mkdirat(&parent, name.as_c_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = self.resolve(&next, OFlags::PATH | OFlags::DIRECTORY) {
                // A dangling symlink: create what it points at, resolved in the root.
                let target = readlinkat(&parent, &name).map_err(|_| e)?;
                let resolved = if target.is_absolute() {
                    relative(&target)
                } else {
                    done.join(target)
                };
                self.ensure_dir(&resolved, depth + 1)?;
            }
            done = next;
        }
        Ok(())
    }

    /// Directory `dir` (inside the root), created and opened.
    fn open_dir(&self, dir: &Path) -> Result<OwnedFd, RootError> {
        self.create_dir_all(dir)?;
        self.resolve(dir, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.err("open", dir, e))
    }

    /// The directory of `path` (inside the root), created and opened, and the final
    /// component's name. `what` names the operation in errors.
    fn parent_of(&self, path: &Path, what: &'static str) -> Result<(OwnedFd, CString), RootError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(self.err(what, path, std::io::ErrorKind::InvalidInput));
        };
        let name = c_name(name).map_err(|e| self.err(what, path, e))?;
        Ok((self.open_dir(parent)?, name))
    }

    /// Creates symlink `link` (inside the root) pointing at `target`, creating its directory.
    /// An existing symlink there is replaced unless it already points at `target` (the image's
    /// own `libcuda.so.1 -> libcuda.so.470.82.01` must not hide the injected driver); anything
    /// else there (a regular file, a directory) is left in place.
    pub fn symlink(&self, link: &Path, target: &str) -> Result<LinkOutcome, RootError> {
        let (dir, name) = self.parent_of(link, "create symlink")?;
        self.link_at(&dir, &name, link, target)
    }

    /// [`Root::symlink`] for each of `links` (link, target), each directory created and
    /// opened once, each link made once (the first target given for it wins); returns each
    /// link made with its target and what was done.
    pub fn symlinks<'a>(
        &self,
        links: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Vec<(&'a Path, &'a str, LinkOutcome)>, RootError> {
        let mut dirs: std::collections::HashMap<&Path, OwnedFd> = Default::default();
        let mut done: Vec<(&'a Path, &'a str, LinkOutcome)> = Vec::new();
        for (link, target) in links {
            if done.iter().any(|(l, _, _)| *l == link) {
                continue;
            }
            let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
                return Err(self.err("create symlink", link, std::io::ErrorKind::InvalidInput));
            };
            let name = c_name(name).map_err(|e| self.err("create symlink", link, e))?;
            if !dirs.contains_key(parent) {
                dirs.insert(parent, self.open_dir(parent)?);
            }
            let outcome = self.link_at(&dirs[parent], &name, link, target)?;
            done.push((link, target, outcome));
        }
        Ok(done)
    }

    /// Makes `name` in `dir` (the directory of `link`) a symlink to `target`; see
    /// [`Root::symlink`].
    fn link_at(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        link: &Path,
        target: &str,
    ) -> Result<LinkOutcome, RootError> {
        let t = CString::new(target).map_err(|e| {
            self.err(
                "create symlink",
                link,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let mut replaced = None;
        loop {
            match rustix::fs::symlinkat(t.as_c_str(), dir, name) {
                Ok(()) => {
                    return Ok(match replaced {
                        Some(old) => LinkOutcome::Replaced(old),
                        None => LinkOutcome::Created,
                    })
                }
                Err(Errno::EXIST) if replaced.is_none() => {}
                Err(e) => return Err(self.err("create symlink", link, e)),
            }
            let old = match readlinkat(dir, name) {
                Ok(old) => old,
                // Not a symlink: the image's own file or directory stays.
                Err(Errno::INVAL) => return Ok(LinkOutcome::KeptEntry),
                Err(e) => return Err(self.err("read symlink", link, e)),
            };
            if old == Path::new(target) {
                return Ok(LinkOutcome::Unchanged);
            }
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| self.err("replace symlink", link, e))?;
            replaced = Some(old);
        }
    }

    /// An `O_PATH` handle on `path` (inside the root), never through a final symlink:
    /// something to mount onto or to `chmod` without a later lookup.
    pub fn open_path(&self, path: &Path) -> Result<OwnedFd, RootError> {
        self.resolve(path, OFlags::PATH | OFlags::NOFOLLOW)
            .map_err(|e| self.err("open", path, e))
    }

    /// Sets the permission bits of `path` (inside the root; a final symlink is not followed:
    /// its target is left alone).
    pub fn chmod(&self, path: &Path, mode: u32) -> Result<(), RootError> {
        let handle = self.open_path(path)?;
        let stat = rustix::fs::fstat(&handle).map_err(|e| self.err("chmod", path, e))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            return Err(self.err("chmod", path, Errno::LOOP));
        }
        // Through the handle's /proc link: the very inode opened, whatever was renamed since.
        rustix::fs::chmodat(
            CWD,
            fd_path(&handle),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|e| self.err("chmod", path, e))
    }

    /// Makes mount point `path` (inside the root) where nothing is: a directory, or an empty
    /// file (0644), with its directories. Whatever is there already is left, a symlink too.
    pub fn create_mount_point(&self, path: &Path, is_dir: bool) -> Result<(), RootError> {
        if is_dir {
            return self.create_dir_all(path);
        }
        let (dir, name) = self.parent_of(path, "create")?;
        match rustix::fs::openat(
            &dir,
            name.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(_) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(self.err("create", path, e)),
        }
    }

    /// Writes file `path` (inside the root) with `content` and `mode`, atomically: a temporary
    /// file beside it, written (and synced, as `durability` says), then renamed over it (see
    /// [`untrusted::write_atomic_at`]). Whatever was at `path` (a file, or a symlink pointing
    /// anywhere) is replaced, never followed; if anything fails (a full disk), it is left as it
    /// was and no temporary file remains.
    pub fn write_file(
        &self,
        path: &Path,
        content: &[u8],
        mode: u32,
        durability: Durability,
    ) -> Result<(), RootError> {
        let (dir, name) = self.parent_of(path, "write")?;
        untrusted::write_atomic_at(dir.as_fd(), &name, content, mode, durability)
            .map_err(|e| self.err("write", path, e))
    }
}

#[cfg(test)]
mod tests;
