//! Reading a file that must be a small regular file (a configuration), with errors that name
//! it: [`crate::untrusted`]'s reading (never blocking, checked on the opened descriptor, read
//! with a bound), for the shim's config and the operator commands' files.

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

/// The bytes of the regular file at `path` (symlinks followed), at most `max` of them, read
/// as [`crate::untrusted`] reads any file someone else may control.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, RegularFileError> {
    use crate::untrusted::{self, FinalLink, UntrustedError};
    untrusted::read(path, FinalLink::Follow, max).map_err(|e| match e {
        UntrustedError::Io(source) => RegularFileError::Read {
            path: path.to_owned(),
            source,
        },
        UntrustedError::NotAFile(what) => RegularFileError::NotAFile {
            path: path.to_owned(),
            what,
        },
        UntrustedError::TooLarge { size, max } => RegularFileError::TooLarge {
            path: path.to_owned(),
            size,
            max,
        },
    })
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
    use crate::fixture::NotSmallFiles;

    #[test]
    fn only_small_regular_files_are_read() {
        let files = NotSmallFiles::new("", 11);
        files.assert_refused(
            |p| read(p, 10),
            |p, what| format!("{} is {what}, not a regular file", p.display()),
        );
        let err = read(&files.big, 10).unwrap_err().to_string();
        let big = files.big.display();
        assert_eq!(
            err,
            format!("{big} is 11 bytes, more than the 10 it may have")
        );
        let missing = read(&files.missing, 10).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789x").unwrap();
        assert_eq!(read(&file, 11).unwrap(), b"0123456789x");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let err = read_to_string(&file, 10).unwrap_err().to_string();
        assert!(err.ends_with("f is not UTF-8 text"), "{err}");
        // A file under /proc says it has 0 bytes and is read to its end.
        assert!(!read_to_string(Path::new("/proc/self/status"), 1 << 20)
            .unwrap()
            .is_empty());
    }
}
