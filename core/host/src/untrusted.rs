//! Opening and reading files whose path or content someone else controls: a tenant's mount
//! sources, an image's files, configuration and CDI spec files. Nothing here can block or
//! grow without bound: a path is first opened `O_PATH` (which opens nothing: a FIFO is not
//! waited on, a device's driver is not called, a terminal cannot become the shim's), checked
//! on that descriptor to be a regular file of bounded size, and only then reopened for reading
//! through the descriptor itself (`/proc/self/fd/N`: the very same inode, whatever has been
//! renamed since), `O_NONBLOCK | O_NOCTTY | O_CLOEXEC`; reads stop at the bound even if the
//! file grew in between.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// How a path's final component is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalLink {
    /// A symlink there is followed (an operator's path, a mount source as the kernel mounts
    /// it).
    Follow,
    /// A symlink there is refused (a path inside an image, whose links the image chose).
    Refuse,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedError {
    /// The open or read itself failed (missing, no permission, I/O error).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is not a regular file.
    #[error("is {0}, not a regular file")]
    NotAFile(&'static str),
    /// It is larger than the caller allows.
    #[error("is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size (at least; a file growing while read is cut at `max + 1`).
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl From<Errno> for UntrustedError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

impl UntrustedError {
    /// Whether the path does not exist (a missing file is often simply absent, not an error).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file of type `t` is, for messages: "a directory", "a FIFO", "a device", ...
pub fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Checks `meta` is a regular file of at most `max` bytes.
fn check(meta: &std::fs::Metadata, max: u64) -> Result<(), UntrustedError> {
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(UntrustedError::NotAFile(kind_of(kind)));
    }
    if meta.len() > max {
        return Err(UntrustedError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    Ok(())
}

/// The regular file an `O_PATH` descriptor names, checked, reopened for reading.
fn reopen(path_fd: OwnedFd, max: u64) -> Result<File, UntrustedError> {
    let probe = File::from(path_fd);
    let meta = probe.metadata()?;
    check(&meta, max)?;
    let file = File::from(rustix::fs::openat(
        CWD,
        format!("/proc/self/fd/{}", probe.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let again = file.metadata()?;
    if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
        return Err(UntrustedError::Io(std::io::Error::other(
            "the file changed while it was opened",
        )));
    }
    check(&again, max)?;
    Ok(file)
}

/// Opens `path` (resolved from directory `dir`, [`CWD`] for a host path) with `resolve`
/// constraints: a regular file of at most `max` bytes, for reading, without ever blocking or
/// opening anything else.
pub fn open_at(
    dir: BorrowedFd<'_>,
    path: &Path,
    final_link: FinalLink,
    resolve: ResolveFlags,
    max: u64,
) -> Result<File, UntrustedError> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if final_link == FinalLink::Refuse {
        flags |= OFlags::NOFOLLOW;
    }
    let target = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let fd = rustix::fs::openat2(dir, target, flags, Mode::empty(), resolve)?;
    reopen(fd, max)
}

/// Opens host path `path`: a regular file of at most `max` bytes, for reading, without ever
/// blocking on it or opening anything else (see the module's documentation).
pub fn open(path: &Path, final_link: FinalLink, max: u64) -> Result<File, UntrustedError> {
    open_at(CWD, path, final_link, ResolveFlags::empty(), max)
}

/// Reads `file` whole, refusing more than `max` bytes.
pub fn read_to_end(file: &File, max: u64) -> Result<Vec<u8>, UntrustedError> {
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(max);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    if len > max {
        return Err(UntrustedError::TooLarge { size: len, max });
    }
    Ok(bytes)
}

/// [`open`] then [`read_to_end`].
pub fn read(path: &Path, final_link: FinalLink, max: u64) -> Result<Vec<u8>, UntrustedError> {
    read_to_end(&open(path, final_link, max)?, max)
}

/// Whether [`write_atomic_at`] makes the new content durable before it renames it in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`ed first, as `ldconfig` writes the ld cache: after a crash the file is the old
    /// one or the whole new one.
    Synced,
    /// Not synced: readers still see the old file or the whole new one, but after a crash it
    /// may be empty. For a file written anew, whole, every time it is used (costs no `fsync`,
    /// a millisecond on a slow disk).
    Rewritten,
}

/// Writes `content` as file `name` in directory `dir` so that a reader sees either the old
/// file or the whole new one, never a part: a temporary file beside it (created `O_EXCL`,
/// never through a symlink), written (and `fsync`ed, as `durability` says), then renamed over
/// `name`. Whatever was at `name` (a file, a symlink pointing anywhere) is replaced, never
/// followed; on any failure the temporary file is removed and `name` is left as it was.
pub fn write_atomic_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    content: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = name.to_bytes();
    if base.is_empty() || base.contains(&b'/') || base == b"." || base == b".." {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // Short enough for NAME_MAX whatever `name` is.
    let base = &base[..base.len().min(200)];
    let mut attempt = 0;
    let (tmp, file) = loop {
        let mut tmp = Vec::with_capacity(base.len() + 32);
        tmp.push(b'.');
        tmp.extend_from_slice(base);
        tmp.extend_from_slice(
            format!(
                ".tmp-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        let tmp = CString::new(tmp)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let created = rustix::fs::openat(
            dir,
            tmp.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        );
        match created {
            Ok(fd) => break (tmp, File::from(fd)),
            Err(Errno::EXIST) if attempt < 16 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let unlink_tmp = || {
        let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), rustix::fs::AtFlags::empty());
    };
    let written = (|| {
        let mut f = &file;
        f.write_all(content)?;
        // The umask may have narrowed `mode`.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        match durability {
            Durability::Synced => f.sync_all(),
            Durability::Rewritten => Ok(()),
        }
    })();
    drop(file);
    if let Err(e) = written {
        unlink_tmp();
        return Err(e);
    }
    if let Err(e) = rustix::fs::renameat(dir, tmp.as_c_str(), dir, name) {
        unlink_tmp();
        return Err(e.into());
    }
    Ok(())
}

/// [`write_atomic_at`] for host path `path` (its directory must exist), synced.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let name = CString::new(name.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    write_atomic_at(dir.as_fd(), &name, content, mode, Durability::Synced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{is_root, mknod, NotSmallFiles};

    #[test]
    fn fifos_devices_directories_and_big_files_are_refused_without_blocking() {
        let files = NotSmallFiles::new(".so", 4097);
        // No writer opens the FIFO: a blocking open would wait for ever.
        for (path, what) in files.not_files() {
            let err = open(path, FinalLink::Follow, 1 << 20).unwrap_err();
            assert!(
                matches!(err, UntrustedError::NotAFile(w) if w == what),
                "{err}"
            );
            assert_eq!(err.to_string(), format!("is {what}, not a regular file"));
        }
        let err = open(&files.big, FinalLink::Follow, 4096).unwrap_err();
        assert_eq!(err.to_string(), "is 4097 bytes, more than the 4096 allowed");
        assert_eq!(
            read(&files.big, FinalLink::Follow, 4097).unwrap().len(),
            4097
        );
        let missing = open(&files.missing, FinalLink::Follow, 1).unwrap_err();
        assert!(missing.is_missing());
        if is_root() {
            // A terminal-like device made where a tenant's volume could be.
            let tty = files.missing.with_file_name("libtty.so");
            mknod(&tty, 5, 0);
            assert!(matches!(
                open(&tty, FinalLink::Follow, 1 << 20),
                Err(UntrustedError::NotAFile("a device"))
            ));
        }
    }

    #[test]
    fn a_final_symlink_is_followed_or_refused_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let link = dir.path().join("link");
        assert_eq!(read(&link, FinalLink::Follow, 10).unwrap(), b"x");
        assert!(matches!(
            open(&link, FinalLink::Refuse, 10),
            Err(UntrustedError::NotAFile("a symlink"))
        ));
    }

    #[test]
    fn reads_stop_at_the_bound() {
        // /proc files say 0 bytes but hold more: the read, not the size, is bounded.
        let err = read(Path::new("/proc/self/maps"), FinalLink::Follow, 16).unwrap_err();
        assert!(
            matches!(err, UntrustedError::TooLarge { max: 16, .. }),
            "{err}"
        );
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_links_and_leave_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let target = dir.path().join("ld.so.cache");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_atomic(&target, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep", "never followed");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o644);
        // A directory in the way: the rename fails, the temp file goes, the directory stays.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        assert!(write_atomic(&blocked, b"x", 0o644).is_err());
        assert!(blocked.is_dir());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".tmp-")),
            "no temp file left: {names:?}"
        );
    }
}
