//! CDI spec files on disk: the spec directories listed (every `*.json` and `*.yaml` regular
//! file directly in each, later directories overriding earlier ones), each file read as
//! [`crate::untrusted`] reads a file someone else may write (never blocking, at most
//! [`MAX_SPEC_SIZE`] bytes) and parsed by core's [`CdiSpec::parse`] into core's [`Registry`];
//! [`SpecCache`] parses a file again only when it changed.

mod cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nvidia_shim_core::cdi::spec::MAX_SPEC_SIZE;
use nvidia_shim_core::cdi::{CdiSpec, Registry, SpecError};

use crate::untrusted::{self, FinalLink, UntrustedError};

pub use cache::{SpecCache, RACY_WINDOW};

/// Reads and parses the spec file at `path`: a regular file of at most [`MAX_SPEC_SIZE`] bytes
/// (a FIFO there is not waited on; a larger file is refused, naming it and its size).
pub fn load_spec(path: &Path) -> Result<CdiSpec, SpecError> {
    let err = |reason: String| SpecError {
        path: path.to_owned(),
        reason,
    };
    let bytes = untrusted::read(path, FinalLink::Follow, MAX_SPEC_SIZE).map_err(|e| {
        err(match e {
            UntrustedError::TooLarge { size, max } => format!(
                "is {size} bytes, more than the {max} a CDI spec may have (a spec for a whole node is under 1 MB)"
            ),
            other => other.to_string(),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".to_owned()))?;
    CdiSpec::parse(path, &text)
}

/// Reads every spec file in `dirs` (missing directories are skipped) into a registry. Files
/// that fail to parse are remembered and named when a device cannot be resolved. (A long-lived
/// shim reads them through [`SpecCache`], which parses a file again only when it changed.)
pub fn load_registry<P: AsRef<Path>>(dirs: &[P]) -> Registry {
    Registry::from_loaded(
        spec_files(dirs)
            .into_iter()
            .map(|f| {
                let spec = load_spec(&f.path).map(Arc::new);
                (f.priority, f.path, spec)
            })
            .collect(),
    )
}

/// A spec file found in a spec directory.
#[derive(Debug, Clone)]
struct SpecFile {
    /// The index of its directory (later directories win).
    priority: usize,
    /// Its path.
    path: PathBuf,
    /// Its state, from `stat` (symlinks followed).
    meta: std::fs::Metadata,
}

/// Every `*.json` and `*.yaml` regular file directly in each of `dirs`, sorted by name within a
/// directory, directories in order (missing ones skipped). Only `stat`s: nothing is opened.
fn spec_files<P: AsRef<Path>>(dirs: &[P]) -> Vec<SpecFile> {
    let mut out = Vec::new();
    for (priority, dir) in dirs.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(dir.as_ref()) else {
            continue;
        };
        let mut files: Vec<SpecFile> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "yaml"))
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                meta.is_file().then_some(SpecFile {
                    priority,
                    path,
                    meta,
                })
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(files);
    }
    out
}

#[cfg(test)]
mod tests;
