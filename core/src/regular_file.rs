//! Reading a file that must be a small regular file (a configuration): opened without
//! blocking (a FIFO there cannot hang the reader) and without becoming a controlling terminal,
//! checked to be a regular file on the opened descriptor (no race with a stat before the
//! open), and read with a bound (`/dev/zero` or a growing file cannot exhaust memory).

use std::path::{Path, PathBuf};

/// Why a file could not be read as a small regular file.
#[derive(Debug, thiserror::Error)]
pub enum RegularFileError {
    /// It could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the open or read returned.
        #[source]
        source: std::io::Error,
    },
    /// It is not a regular file (a FIFO, a device, a directory, ...).
    #[error("{path} is {what}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is: `a FIFO`, `a device`, `a directory`, `a socket`.
        what: &'static str,
    },
    /// It is larger than the bound.
    #[error("{path} is {size} bytes, more than the {max} it may have")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or what was read of it).
        size: u64,
        /// The bound.
        max: u64,
    },
    /// It is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

impl RegularFileError {
    /// Whether the file does not exist (the open failed with `ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The bytes of the regular file at `path` (symlinks followed), at most `max` of them.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, RegularFileError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let read_err = |source| RegularFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(RegularFileError::NotAFile {
            path: path.to_owned(),
            what,
        });
    }
    let too_large = |size| RegularFileError::TooLarge {
        path: path.to_owned(),
        size,
        max,
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> Result<String, RegularFileError> {
    String::from_utf8(read(path, max)?).map_err(|_| RegularFileError::NotText {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; makes a FIFO in a temp dir.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read(&fifo, 10).unwrap_err().to_string();
        assert!(err.ends_with("fifo is a FIFO, not a regular file"), "{err}");
        let err = read(Path::new("/dev/zero"), 10).unwrap_err().to_string();
        assert_eq!(err, "/dev/zero is a device, not a regular file");
        let err = read(dir.path(), 10).unwrap_err().to_string();
        assert!(err.ends_with("is a directory, not a regular file"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789x").unwrap();
        let err = read(&file, 10).unwrap_err().to_string();
        assert!(
            err.ends_with("f is 11 bytes, more than the 10 it may have"),
            "{err}"
        );
        assert_eq!(read(&file, 11).unwrap(), b"0123456789x");
        let missing = read(&dir.path().join("none"), 10).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let err = read_to_string(&file, 10).unwrap_err().to_string();
        assert!(err.ends_with("f is not UTF-8 text"), "{err}");
        // A file under /proc says it has 0 bytes and is read to its end.
        assert!(!read_to_string(Path::new("/proc/self/status"), 1 << 20)
            .unwrap()
            .is_empty());
    }
}
