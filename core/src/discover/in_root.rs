//! Paths under a driver root, resolved as if the root were `/`: symlinks are followed (Debian's
//! `/usr/lib/x86_64-linux-gnu/libcuda.so.1 -> /etc/alternatives/... -> nvidia/current/...`),
//! absolute targets and `..` stay inside the root (`openat2` with `RESOLVE_IN_ROOT`), so a
//! driver installed under `/run/nvidia/driver` or a test directory resolves to its own files,
//! never to the host's.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::elf::MAX_LIBRARY_SIZE;
use crate::untrusted::{self, FinalLink};

/// A driver root opened for resolution.
#[derive(Debug)]
pub struct DriverRoot {
    path: PathBuf,
    fd: OwnedFd,
}

/// A file found under a [`DriverRoot`].
#[derive(Debug)]
pub struct Found {
    /// The real file on the host, every symlink resolved.
    pub host: PathBuf,
    /// The open file.
    pub file: File,
}

/// `p` relative to the root it is read in (`/usr/lib` and `usr/lib` name the same place).
fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

impl DriverRoot {
    /// Opens the driver root `path` (a directory).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_directory()
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            fd: OwnedFd::from(dir),
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

    fn open_in_root(&self, p: &Path, flags: OFlag) -> std::io::Result<OwnedFd> {
        let rel = relative(p);
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(self.fd.as_raw_fd(), target, how)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens `p` for reading, following symlinks inside the root; `None` when it does not
    /// resolve to a regular file there of at most [`MAX_LIBRARY_SIZE`] bytes (a FIFO or a
    /// device there is never opened; see [`crate::untrusted`]).
    pub fn open_file(&self, p: &Path) -> Option<Found> {
        let rel = relative(p);
        let file = untrusted::open_at(
            Some(self.fd.as_fd()),
            &rel,
            FinalLink::Follow,
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            MAX_LIBRARY_SIZE,
        )
        .ok()?;
        let host = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        Some(Found { host, file })
    }

    /// The names in directory `dir` (inside the root, symlinks followed), sorted; empty when
    /// it is missing.
    pub fn list(&self, dir: &Path) -> Vec<String> {
        let Ok(fd) = self.open_in_root(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY) else {
            return Vec::new();
        };
        // The descriptor is already confined; its /proc link reopens that very directory.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Directory `p` with every symlink resolved, as a path inside the root (`/lib/x86_64-linux-gnu`
    /// is `/usr/lib/x86_64-linux-gnu` on a merged-/usr host); `None` when it is not a directory.
    pub fn real_dir(&self, p: &Path) -> Option<PathBuf> {
        let fd = self
            .open_in_root(p, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .ok()?;
        let host = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        self.inside(&host)
    }

    /// `host` (a resolved host path) as a path inside the root, when it is under it.
    pub fn inside(&self, host: &Path) -> Option<PathBuf> {
        let rel = host.strip_prefix(&self.path).ok()?;
        Some(Path::new("/").join(rel))
    }
}

trait DirectoryFlag {
    fn custom_flags_directory(&mut self) -> &mut Self;
}

impl DirectoryFlag for std::fs::OpenOptions {
    fn custom_flags_directory(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn alternatives_style_links_resolve_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path().join("root");
        let real = root.join("usr/lib/x86_64-linux-gnu/nvidia/current");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        std::fs::write(real.join("libcuda.so.535.1"), b"lib").unwrap();
        symlink("libcuda.so.535.1", real.join("libcuda.so.1")).unwrap();
        symlink(
            "/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1",
            root.join("etc/alternatives/libcuda.so.1"),
        )
        .unwrap();
        symlink(
            "/etc/alternatives/libcuda.so.1",
            root.join("usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        )
        .unwrap();
        // An absolute link the host would resolve elsewhere, and one climbing out.
        symlink(
            "/etc/passwd",
            root.join("usr/lib/x86_64-linux-gnu/libpw.so"),
        )
        .unwrap();
        symlink("../../../../../etc/hostname", root.join("usr/lib/up.so")).unwrap();
        let r = DriverRoot::open(&root).unwrap();
        let found = r
            .open_file(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"))
            .unwrap();
        assert_eq!(found.host, real.join("libcuda.so.535.1"));
        assert_eq!(
            r.inside(&found.host).unwrap(),
            Path::new("/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.1")
        );
        assert!(r
            .open_file(Path::new("usr/lib/x86_64-linux-gnu/libpw.so"))
            .is_none());
        assert!(r.open_file(Path::new("usr/lib/up.so")).is_none());
        assert_eq!(
            r.list(Path::new("/usr/lib/x86_64-linux-gnu")),
            ["libcuda.so.1", "libpw.so", "nvidia"]
        );
        assert!(r.real_dir(Path::new("/etc/alternatives")).is_some());
        symlink("usr/lib", root.join("lib")).unwrap();
        assert_eq!(
            r.real_dir(Path::new("/lib/x86_64-linux-gnu")).unwrap(),
            Path::new("/usr/lib/x86_64-linux-gnu")
        );
        assert_eq!(r.real_dir(Path::new("/")).unwrap(), Path::new("/"));
        assert!(r
            .real_dir(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"))
            .is_none());
    }
}
