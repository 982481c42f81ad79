//! Writes into a container's rootfs that can never leave it: every path is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against the rootfs directory, so an
//! image whose `/usr/lib/x86_64-linux-gnu` is a symlink to `/etc` on the host, or `../../..`,
//! is resolved inside the rootfs instead.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::untrusted::{self, FinalLink, UntrustedError};

/// A rootfs write failed.
#[derive(Debug, thiserror::Error)]
#[error("rootfs {rootfs}: cannot {what} {path}: {source}")]
pub struct RootfsError {
    /// The rootfs.
    pub rootfs: PathBuf,
    /// The operation.
    pub what: &'static str,
    /// The path inside the container.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// What [`Rootfs::symlink`] did.
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

/// One entry of a directory listed by [`Rootfs::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Whether it is a regular file (not a symlink, not a directory).
    pub is_file: bool,
}

/// A rootfs opened for confined writes.
#[derive(Debug)]
pub struct Rootfs {
    path: PathBuf,
    fd: OwnedFd,
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// The path made relative, with `..` and `.` left for the kernel to resolve in the root.
fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

impl Rootfs {
    /// Opens `path` (a directory).
    pub fn open(path: &Path) -> Result<Self, RootfsError> {
        let err = |source| RootfsError {
            rootfs: path.to_owned(),
            what: "open",
            path: PathBuf::from("/"),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_dir()
            .open(path)
            .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            fd: OwnedFd::from(file),
        })
    }

    fn err(&self, what: &'static str, path: &Path, source: std::io::Error) -> RootfsError {
        RootfsError {
            rootfs: self.path.clone(),
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// Opens directory `rel` (relative to the rootfs) confined to the rootfs.
    fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(self.fd.as_raw_fd(), target, how)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Creates directory `dir` (absolute in the container) and its parents, 0755. A component
    /// that is a dangling symlink gets its target created, inside the rootfs.
    pub fn create_dir_all(&self, dir: &Path) -> Result<(), RootfsError> {
        self.ensure_dir(&relative(dir), 0)
            .map_err(|e| self.err("create", dir, e))
    }

    fn ensure_dir(&self, rel: &Path, depth: u32) -> std::io::Result<()> {
        if depth > 40 {
            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
        }
        let mut done = PathBuf::new();
        for comp in rel.components() {
            let next = done.join(comp);
            if matches!(comp, Component::ParentDir | Component::CurDir) {
                done = next; // the kernel keeps `..` inside the root
                continue;
            }
            let parent = self.open_dir(&done)?;
            let name = cstr(Path::new(comp.as_os_str()))?;
            // SAFETY: valid dirfd and C string.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            if let Err(e) = self.open_dir(&next) {
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

    /// Creates the directory of `path` (absolute in the container) and opens it confined;
    /// returns it with the final component's name. `what` names the operation in errors.
    fn entry(&self, path: &Path, what: &'static str) -> Result<(OwnedFd, CString), RootfsError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().ok_or_else(|| {
            self.err(
                what,
                path,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        self.create_dir_all(parent)?;
        let dir = self
            .open_dir(&relative(parent))
            .map_err(|e| self.err("open", parent, e))?;
        let name = cstr(Path::new(name)).map_err(|e| self.err(what, path, e))?;
        Ok((dir, name))
    }

    /// Creates symlink `link` (absolute in the container) pointing at `target`, creating its
    /// directory. An existing symlink there is replaced unless it already points at `target`
    /// (the image's own `libcuda.so.1 -> libcuda.so.470.82.01` must not hide the injected
    /// driver); anything else there (a regular file, a directory) is left in place.
    pub fn symlink(&self, link: &Path, target: &str) -> Result<LinkOutcome, RootfsError> {
        let (dir, n) = self.entry(link, "create symlink")?;
        self.link_at(&dir, &n, link, target)
    }

    /// [`Rootfs::symlink`] for each of `links` (link, target), each directory created and
    /// opened once, each link made once (the first target given for it wins); returns each
    /// link made with its target and what was done.
    pub fn symlinks<'a>(
        &self,
        links: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Vec<(&'a Path, &'a str, LinkOutcome)>, RootfsError> {
        let mut dirs: std::collections::HashMap<&Path, OwnedFd> = Default::default();
        let mut done: Vec<(&'a Path, &'a str, LinkOutcome)> = Vec::new();
        for (link, target) in links {
            if done.iter().any(|(l, _, _)| *l == link) {
                continue;
            }
            let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
                return Err(self.err(
                    "create symlink",
                    link,
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ));
            };
            if !dirs.contains_key(parent) {
                self.create_dir_all(parent)?;
                let fd = self
                    .open_dir(&relative(parent))
                    .map_err(|e| self.err("open", parent, e))?;
                dirs.insert(parent, fd);
            }
            let n = cstr(Path::new(name)).map_err(|e| self.err("create symlink", link, e))?;
            let outcome = self.link_at(&dirs[parent], &n, link, target)?;
            done.push((link, target, outcome));
        }
        Ok(done)
    }

    /// Makes `name` in `dir` (the directory of `link`) a symlink to `target`; see
    /// [`Rootfs::symlink`].
    fn link_at(
        &self,
        dir: &OwnedFd,
        n: &CString,
        link: &Path,
        target: &str,
    ) -> Result<LinkOutcome, RootfsError> {
        let t = CString::new(target).map_err(|e| {
            self.err(
                "create symlink",
                link,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let mut replaced = None;
        loop {
            // SAFETY: valid C strings and dirfd.
            let rc = unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) };
            if rc == 0 {
                return Ok(match replaced {
                    Some(old) => LinkOutcome::Replaced(old),
                    None => LinkOutcome::Created,
                });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) || replaced.is_some() {
                return Err(self.err("create symlink", link, e));
            }
            let old = match readlinkat(dir, n) {
                Ok(old) => old,
                // Not a symlink: the image's own file or directory stays.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Ok(LinkOutcome::KeptEntry)
                }
                Err(e) => return Err(self.err("read symlink", link, e)),
            };
            if old == Path::new(target) {
                return Ok(LinkOutcome::Unchanged);
            }
            // SAFETY: valid dirfd and C string.
            if unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) } != 0 {
                return Err(self.err("replace symlink", link, std::io::Error::last_os_error()));
            }
            replaced = Some(old);
        }
    }

    /// Opens file `path` (absolute in the container) for reading, confined to the rootfs and
    /// not following a final symlink: a regular file of at most `max` bytes, else an error
    /// saying what is there (see [`crate::untrusted`]: a FIFO or device the image put there is
    /// never opened, so it can never block).
    pub fn open_file(&self, path: &Path, max: u64) -> Result<File, UntrustedError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let dir = self.open_dir(&relative(parent))?;
        untrusted::open_at(
            Some(dir.as_fd()),
            Path::new(name),
            FinalLink::Refuse,
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            max,
        )
    }

    /// The entries of directory `dir` (absolute in the container), resolved inside the rootfs;
    /// empty when it is missing or not a directory.
    pub fn list_dir(&self, dir: &Path) -> Vec<DirEntry> {
        let Ok(fd) = self.open_dir(&relative(dir)) else {
            return Vec::new();
        };
        // The descriptor is already confined; its /proc link reopens that very directory.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return Vec::new();
        };
        let mut out: Vec<DirEntry> = entries
            .flatten()
            .map(|e| DirEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_file: e.file_type().map(|t| t.is_file()).unwrap_or(false),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Reads file `path` (absolute in the container): a regular file of at most `max` bytes,
    /// never through a final symlink (see [`Rootfs::open_file`]).
    pub fn read_file(&self, path: &Path, max: u64) -> Result<Vec<u8>, UntrustedError> {
        untrusted::read_to_end(&self.open_file(path, max)?, max)
    }

    /// An `O_PATH` handle on `path` (absolute in the container), resolved inside the rootfs
    /// and never through a final symlink: something to mount onto or to `chmod` without a
    /// later lookup.
    pub fn open_path(&self, path: &Path) -> Result<OwnedFd, RootfsError> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = relative(path);
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let fd = openat2(self.fd.as_raw_fd(), target, how)
            .map_err(|e| self.err("open", path, e.into()))?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Sets the permission bits of `path` (absolute in the container, resolved inside the
    /// rootfs; a final symlink is not followed: its target is left alone).
    pub fn chmod(&self, path: &Path, mode: u32) -> Result<(), RootfsError> {
        use std::os::unix::fs::PermissionsExt;
        let handle = File::from(self.open_path(path)?);
        let meta = handle.metadata().map_err(|e| self.err("chmod", path, e))?;
        // Through the handle's /proc link: the very inode opened, whatever was renamed since.
        let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        if meta.file_type().is_symlink() {
            return Err(self.err(
                "chmod",
                path,
                std::io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        std::fs::set_permissions(&proc_path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| self.err("chmod", path, e))
    }

    /// Writes file `path` (absolute in the container) with `content` and `mode`, atomically: a
    /// temporary file beside it, written and synced, then renamed over it (see
    /// [`untrusted::write_atomic_at`]). Whatever was at `path` (a file, or a symlink pointing
    /// anywhere) is replaced, never followed; if anything fails (a full disk), it is left as it
    /// was and no temporary file remains.
    pub fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> Result<(), RootfsError> {
        let (dir, n) = self.entry(path, "write")?;
        untrusted::write_atomic_at(dir.as_fd(), &n, content, mode)
            .map_err(|e| self.err("write", path, e))
    }
}

fn readlinkat(dir: &OwnedFd, name: &CString) -> std::io::Result<PathBuf> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid dirfd, C string, and a buffer of the length passed.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn writes_land_inside_the_rootfs_despite_hostile_symlinks() {
        let host = tempfile::tempdir().unwrap();
        let escape = host.path().join("host-escape");
        std::fs::create_dir(&escape).unwrap();
        let rootfs = host.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
        // The image points its library dir at a host path, absolute and relative.
        std::os::unix::fs::symlink(&escape, rootfs.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::os::unix::fs::symlink("../../../host-escape", rootfs.join("usr/lib64")).unwrap();
        let r = Rootfs::open(&rootfs).unwrap();
        r.symlink(
            Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            "libcuda.so.580",
        )
        .unwrap();
        r.write_file(Path::new("/usr/lib64/x.conf"), b"hi", 0o644)
            .unwrap();
        r.write_file(Path::new("/../../etc/evil.conf"), b"hi", 0o644)
            .unwrap();
        assert_eq!(
            std::fs::read_dir(&escape).unwrap().count(),
            0,
            "nothing written outside"
        );
        // The symlinks resolved as if the rootfs were /: the absolute one to the same path
        // inside the rootfs, the relative one clamped at the rootfs's /.
        let inside = rootfs.join(escape.strip_prefix("/").unwrap());
        assert!(inside.join("libcuda.so.1").symlink_metadata().is_ok());
        assert_eq!(
            std::fs::read(rootfs.join("host-escape/x.conf")).unwrap(),
            b"hi"
        );
        assert_eq!(std::fs::read(rootfs.join("etc/evil.conf")).unwrap(), b"hi");
    }

    #[test]
    fn chmod_stays_inside_and_never_follows_a_final_symlink() {
        let host = tempfile::tempdir().unwrap();
        let rootfs = host.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("dev/dri")).unwrap();
        let outside = host.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("dev/link")).unwrap();
        let r = Rootfs::open(&rootfs).unwrap();
        r.chmod(Path::new("/dev/dri"), 0o711).unwrap();
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
        };
        assert_eq!(mode(&rootfs.join("dev/dri")), 0o711);
        let before = mode(&outside);
        assert!(r.chmod(Path::new("/dev/link"), 0o777).is_err());
        assert!(r.chmod(Path::new("/../../outside"), 0o777).is_err());
        assert_eq!(mode(&outside), before);
    }

    #[test]
    fn final_symlink_is_replaced_not_followed() {
        let host = tempfile::tempdir().unwrap();
        let rootfs = host.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        let outside = host.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc/ld.so.cache")).unwrap();
        let r = Rootfs::open(&rootfs).unwrap();
        assert!(
            matches!(
                r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20),
                Err(UntrustedError::NotAFile("a symlink"))
            ),
            "reads never follow it"
        );
        r.write_file(Path::new("/etc/ld.so.cache"), b"x", 0o644)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        let meta = rootfs.join("etc/ld.so.cache").symlink_metadata().unwrap();
        assert!(meta.is_file(), "the symlink was replaced by a file");
        assert_eq!(
            r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20).unwrap(),
            b"x"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever path an injection is asked to write, through whatever symlinks the image
        /// has, nothing lands outside the rootfs.
        #[test]
        fn no_write_leaves_the_rootfs(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "..", ".", "abs", "rel", "up"]), 1..6),
        ) {
            let host = tempfile::tempdir().unwrap();
            let outside = host.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            let rootfs = host.path().join("rootfs");
            std::fs::create_dir_all(rootfs.join("a")).unwrap();
            std::os::unix::fs::symlink(&outside, rootfs.join("abs")).unwrap();
            std::os::unix::fs::symlink("../outside", rootfs.join("rel")).unwrap();
            std::os::unix::fs::symlink("../../../../..", rootfs.join("a/up")).unwrap();
            let r = Rootfs::open(&rootfs).unwrap();
            let path = Path::new("/").join(parts.join("/")).join("f");
            let _ = r.write_file(&path, b"x", 0o644);
            let _ = r.symlink(&path.with_file_name("l"), "t");
            let _ = r.create_dir_all(&path.with_file_name("d"));
            proptest::prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{:?}", path);
            proptest::prop_assert!(!host.path().join("f").exists() && !host.path().join("d").exists());
        }
    }

    #[test]
    fn an_image_symlink_is_replaced_and_its_file_kept() {
        let host = tempfile::tempdir().unwrap();
        let r = Rootfs::open(host.path()).unwrap();
        let link = Path::new("/lib/libcuda.so.1");
        assert_eq!(
            r.symlink(link, "libcuda.so.470.82.01").unwrap(),
            LinkOutcome::Created
        );
        assert_eq!(
            r.symlink(link, "libcuda.so.535.1").unwrap(),
            LinkOutcome::Replaced(PathBuf::from("libcuda.so.470.82.01"))
        );
        assert_eq!(
            r.symlink(link, "libcuda.so.535.1").unwrap(),
            LinkOutcome::Unchanged
        );
        assert_eq!(
            std::fs::read_link(host.path().join("lib/libcuda.so.1")).unwrap(),
            Path::new("libcuda.so.535.1")
        );
        std::fs::write(host.path().join("lib/libnvidia-ml.so.1"), b"image's own").unwrap();
        assert_eq!(
            r.symlink(Path::new("/lib/libnvidia-ml.so.1"), "libnvidia-ml.so.535.1")
                .unwrap(),
            LinkOutcome::KeptEntry
        );
        assert_eq!(
            std::fs::read(host.path().join("lib/libnvidia-ml.so.1")).unwrap(),
            b"image's own"
        );
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn an_images_fifo_device_or_huge_file_is_refused_without_blocking() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("etc")).unwrap();
        let fifo =
            std::ffi::CString::new(host.path().join("etc/ld.so.cache").as_os_str().as_bytes())
                .unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(host.path().join("etc/big"), vec![0u8; 2048]).unwrap();
        let r = Rootfs::open(host.path()).unwrap();
        // No writer: a blocking open would never return.
        assert!(matches!(
            r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20),
            Err(UntrustedError::NotAFile("a FIFO"))
        ));
        assert!(matches!(
            r.read_file(Path::new("/etc/big"), 1024),
            Err(UntrustedError::TooLarge {
                size: 2048,
                max: 1024
            })
        ));
        assert!(r
            .read_file(Path::new("/etc/none"), 1024)
            .unwrap_err()
            .is_missing());
        if is_root() {
            crate::discover::fixture::mknod(&host.path().join("etc/tty.so"), 5, 0);
            assert!(matches!(
                r.open_file(Path::new("/etc/tty.so"), 1 << 20),
                Err(UntrustedError::NotAFile("a device"))
            ));
        }
        // Written over, the FIFO is replaced by a file.
        r.write_file(Path::new("/etc/ld.so.cache"), b"cache", 0o644)
            .unwrap();
        assert_eq!(
            r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20).unwrap(),
            b"cache"
        );
    }

    #[test]
    fn a_write_on_a_full_disk_leaves_the_images_file_and_no_temporary() {
        if !is_root() {
            eprintln!("SKIP a_write_on_a_full_disk_leaves_the_images_file_and_no_temporary: mounting a tmpfs needs root");
            return;
        }
        let host = tempfile::tempdir().unwrap();
        let mnt = host.path().join("rootfs");
        std::fs::create_dir(&mnt).unwrap();
        let target = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings; a small tmpfs on the test's own directory.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=256k".as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        struct Unmount<'a>(&'a std::ffi::CStr);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                // SAFETY: a valid C string; the test's own mount.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _unmount = Unmount(&target);
        std::fs::create_dir(mnt.join("etc")).unwrap();
        let image = vec![7u8; 8192];
        std::fs::write(mnt.join("etc/ld.so.cache"), &image).unwrap();
        // Fill what is left.
        {
            use std::io::Write;
            let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
            while f.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        }
        let r = Rootfs::open(&mnt).unwrap();
        let err = r
            .write_file(Path::new("/etc/ld.so.cache"), &vec![1u8; 64 << 10], 0o644)
            .unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(
            err.to_string().contains("cannot write /etc/ld.so.cache"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(mnt.join("etc/ld.so.cache")).unwrap(),
            image,
            "the image's file is as it was"
        );
        let names: Vec<_> = std::fs::read_dir(mnt.join("etc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        // With room again, the same write replaces it whole.
        std::fs::remove_file(mnt.join("filler")).unwrap();
        r.write_file(Path::new("/etc/ld.so.cache"), &vec![1u8; 64 << 10], 0o644)
            .unwrap();
        assert_eq!(
            std::fs::read(mnt.join("etc/ld.so.cache")).unwrap().len(),
            64 << 10
        );
    }
}
