//! The CDI specs of the spec directories (every `*.json` and `*.yaml` directly in each
//! directory, later directories overriding earlier ones, read by the host), and qualified device
//! names resolved against them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::spec::{CdiDevice, CdiSpec, SpecError};

/// The directories containerd and the toolkit use, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// A spec file as the host read it: (directory priority, path, the spec or why it cannot be
/// used).
pub type LoadedFile = (usize, PathBuf, Result<Arc<CdiSpec>, SpecError>);

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
    /// A registry of spec files already read (the host reads them: every `*.json` and `*.yaml`
    /// directly in each spec directory, sorted by name, directories in order): (directory
    /// priority, path, the spec or why it cannot be used). A later priority overrides an earlier
    /// one; a name defined twice at one priority conflicts; the files that could not be used are
    /// named when a device cannot be resolved.
    pub fn from_loaded(files: Vec<LoadedFile>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A spec file at `path` whose devices `names` each set `env`.
    fn file(priority: usize, path: &str, names: &[&str], env: &str) -> LoadedFile {
        let devices: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name":"{n}","containerEdits":{{"env":["{env}"]}}}}"#))
            .collect();
        let text = format!(
            r#"{{"cdiVersion":"0.5.0","kind":"vendor.com/dev","devices":[{}]}}"#,
            devices.join(",")
        );
        let path = PathBuf::from(path);
        let spec = CdiSpec::parse(&path, &text).map(Arc::new);
        (priority, path, spec)
    }

    #[test]
    fn later_priorities_override_and_unusable_files_are_named() {
        let broken = CdiSpec::parse(Path::new("/run/cdi/broken.yaml"), "cdiVersion: [");
        let reg = Registry::from_loaded(vec![
            file(0, "/etc/cdi/a.json", &["x", "y"], "FROM=etc"),
            file(1, "/run/cdi/b.json", &["x"], "FROM=run"),
            (
                1,
                PathBuf::from("/run/cdi/broken.yaml"),
                broken.map(Arc::new),
            ),
        ]);
        let got = reg
            .resolve(&["vendor.com/dev=x".into(), "vendor.com/dev=y".into()])
            .unwrap();
        assert_eq!(got[0].device.container_edits.env, ["FROM=run"]);
        assert_eq!(got[1].device.container_edits.env, ["FROM=etc"]);
        assert_eq!(reg.errors().len(), 1);
        let Err(ResolveError::Unresolvable { names, broken }) =
            reg.resolve(&["vendor.com/dev=z".into()])
        else {
            panic!("z is defined nowhere")
        };
        assert_eq!(names, "vendor.com/dev=z");
        assert!(broken[0].contains("broken.yaml"), "{broken:?}");
    }

    #[test]
    fn a_name_defined_twice_at_one_priority_conflicts() {
        let reg = Registry::from_loaded(vec![
            file(0, "a.json", &["x"], "A=1"),
            file(0, "b.yaml", &["x"], "B=1"),
        ]);
        let Err(ResolveError::Conflict { name, files }) = reg.resolve(&["vendor.com/dev=x".into()])
        else {
            panic!("x is defined twice")
        };
        assert_eq!(
            (name.as_str(), files.as_str()),
            ("vendor.com/dev=x", "a.json, b.yaml")
        );
        assert!(reg.has_kind("vendor.com/dev"));
    }
}
