//! CDI spec directories: every `*.json` and `*.yaml` directly in each directory, later
//! directories overriding earlier ones, and qualified device names resolved against them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spec::{CdiDevice, CdiSpec, SpecError};

/// The directories containerd and the toolkit use, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Specs read from the spec directories.
#[derive(Debug, Default)]
pub struct Registry {
    specs: Vec<(PathBuf, Arc<CdiSpec>)>,
    /// Qualified name → (spec index, device index, directory priority).
    devices: BTreeMap<String, (usize, usize, usize)>,
    /// Names defined twice in one directory: unusable.
    conflicts: BTreeMap<String, Vec<PathBuf>>,
    /// Files that could not be used.
    errors: Vec<SpecError>,
}

/// Why requested CDI devices cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No spec defines these devices.
    #[error(
        "unresolvable CDI devices {}{}",
        crate::quote::bounded(.names, crate::quote::MAX_QUOTED),
        broken_note(.broken)
    )]
    Unresolvable {
        /// The names, comma-separated.
        names: String,
        /// Spec files that failed to load, which may be why.
        broken: Vec<String>,
    },
    /// Two specs in one directory define the device.
    #[error("CDI device {name} is defined by more than one spec in one directory: {files}")]
    Conflict {
        /// The device.
        name: String,
        /// The files.
        files: String,
    },
}

fn broken_note(broken: &[String]) -> String {
    if broken.is_empty() {
        String::new()
    } else {
        format!(" (spec files that failed to load: {})", broken.join("; "))
    }
}

/// A resolved device: its spec (for the spec-wide edits) and the device.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// Index of the spec in the registry (spec-wide edits apply once per index).
    pub spec_index: usize,
    /// The spec.
    pub spec: &'a CdiSpec,
    /// The device.
    pub device: &'a CdiDevice,
}

impl Registry {
    /// Reads every spec file in `dirs` (missing directories are skipped). Files that fail to
    /// parse are remembered and named when a device cannot be resolved. (A long-lived shim
    /// reads them through [`super::SpecCache`], which parses a file again only when it changed.)
    pub fn load<P: AsRef<Path>>(dirs: &[P]) -> Self {
        Self::from_loaded(
            spec_files(dirs)
                .into_iter()
                .map(|f| {
                    let spec = CdiSpec::load(&f.path).map(Arc::new);
                    (f.priority, f.path, spec)
                })
                .collect(),
        )
    }

    /// A registry of spec files already read: (directory priority, path, the spec or why it
    /// cannot be used), in [`spec_files`]'s order.
    pub(super) fn from_loaded(
        files: Vec<(usize, PathBuf, Result<Arc<CdiSpec>, SpecError>)>,
    ) -> Self {
        let mut reg = Self::default();
        for (priority, path, spec) in files {
            match spec {
                Ok(spec) => reg.add(priority, path, spec),
                Err(e) => reg.errors.push(e),
            }
        }
        reg
    }

    /// A registry of specs already in memory (one directory's worth, so a name defined twice
    /// conflicts), each named by the path it would have on disk: a spec generated from the
    /// inventory is resolved exactly as a file holding it would be.
    pub fn from_specs(specs: impl IntoIterator<Item = (PathBuf, CdiSpec)>) -> Self {
        let mut reg = Self::default();
        for (path, spec) in specs {
            reg.add(0, path, Arc::new(spec));
        }
        reg
    }

    fn add(&mut self, priority: usize, path: PathBuf, spec: Arc<CdiSpec>) {
        let spec_index = self.specs.len();
        for (device_index, d) in spec.devices.iter().enumerate() {
            let name = format!("{}={}", spec.kind, d.name);
            match self.devices.get(&name) {
                Some(&(other, _, p)) if p == priority => {
                    let files = self
                        .conflicts
                        .entry(name)
                        .or_insert_with(|| vec![self.specs[other].0.clone()]);
                    files.push(path.clone());
                }
                _ => {
                    self.conflicts.remove(&name);
                    self.devices
                        .insert(name, (spec_index, device_index, priority));
                }
            }
        }
        self.specs.push((path, spec));
    }

    /// Whether any loaded spec has this kind.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.specs.iter().any(|(_, s)| s.kind == kind)
    }

    /// Spec files that failed to load.
    pub fn errors(&self) -> &[SpecError] {
        &self.errors
    }

    /// Resolves qualified names (`vendor/class=name`), in order.
    pub fn resolve<'a>(&'a self, names: &[String]) -> Result<Vec<Resolved<'a>>, ResolveError> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            if let Some(files) = self.conflicts.get(name) {
                return Err(ResolveError::Conflict {
                    name: name.clone(),
                    files: files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            match self.devices.get(name) {
                Some(&(si, di, _)) => {
                    let spec: &CdiSpec = &self.specs[si].1;
                    out.push(Resolved {
                        spec_index: si,
                        spec,
                        device: &spec.devices[di],
                    });
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(ResolveError::Unresolvable {
                names: missing.join(", "),
                broken: self.errors.iter().map(ToString::to_string).collect(),
            });
        }
        Ok(out)
    }
}

/// A spec file found in a spec directory.
#[derive(Debug, Clone)]
pub(super) struct SpecFile {
    /// The index of its directory (later directories win).
    pub priority: usize,
    /// Its path.
    pub path: PathBuf,
    /// Its state, from `stat` (symlinks followed).
    pub meta: std::fs::Metadata,
}

/// Every `*.json` and `*.yaml` regular file directly in each of `dirs`, sorted by name within a
/// directory, directories in order (missing ones skipped). Only `stat`s: nothing is opened.
pub(super) fn spec_files<P: AsRef<Path>>(dirs: &[P]) -> Vec<SpecFile> {
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
mod tests {
    use super::*;

    fn spec(kind: &str, names: &[&str], env: &str) -> String {
        let devices: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name":"{n}","containerEdits":{{"env":["{env}"]}}}}"#))
            .collect();
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"{kind}","devices":[{}]}}"#,
            devices.join(",")
        )
    }

    #[test]
    fn later_dirs_override_and_broken_files_are_named() {
        let etc = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("a.json"),
            spec("vendor.com/dev", &["x", "y"], "FROM=etc"),
        )
        .unwrap();
        std::fs::write(
            run.path().join("b.json"),
            spec("vendor.com/dev", &["x"], "FROM=run"),
        )
        .unwrap();
        std::fs::write(run.path().join("broken.yaml"), "cdiVersion: [").unwrap();
        std::fs::write(run.path().join("ignored.txt"), "not a spec").unwrap();
        let reg = Registry::load(&[etc.path(), run.path(), Path::new("/nonexistent")]);
        let got = reg
            .resolve(&["vendor.com/dev=x".into(), "vendor.com/dev=y".into()])
            .unwrap();
        assert_eq!(got[0].device.container_edits.env, ["FROM=run"]);
        assert_eq!(got[1].device.container_edits.env, ["FROM=etc"]);
        assert_eq!(reg.errors().len(), 1);
        let err = reg
            .resolve(&["vendor.com/dev=z".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unresolvable CDI devices vendor.com/dev=z")
                && err.contains("broken.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_conflict_within_one_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            spec("vendor.com/dev", &["x"], "A=1"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            spec("vendor.com/dev", &["x"], "B=1"),
        )
        .unwrap();
        let reg = Registry::load(&[dir.path()]);
        let err = reg
            .resolve(&["vendor.com/dev=x".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.json") && err.contains("b.yaml"), "{err}");
        assert!(reg.has_kind("vendor.com/dev"));
    }
}
