//! The CDI spec file format (versions 0.3.0 to 1.1.0), parsed strictly: unknown fields are
//! errors, and a spec must declare at least the version its fields need.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The spec versions this runtime reads, oldest first.
pub const KNOWN_VERSIONS: [&str; 8] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The largest CDI spec file read: a generated spec for a node with eight GPUs and every MIG
/// device is tens of kB; parsing is bounded by what a file this size can cost.
pub const MAX_SPEC_SIZE: u64 = 4 << 20;

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CdiSpec {
    /// Declared spec version (`0.5.0`, `1.0.0`, ...).
    pub cdi_version: String,
    /// `<vendor>/<class>`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    /// Spec annotations (0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<CdiDevice>,
    /// Edits applied once when any device of the spec is used.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CdiDevice {
    /// Name, unique in the kind (`0`, `GPU-...`, `all`).
    pub name: String,
    /// Device annotations (0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Edits applied for this device.
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// What a spec or device changes in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `KEY=value` entries for the process environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    /// OCI hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Intel RDT settings (0.7.0; `schemata` and `enableMonitoring` 1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<serde_json::Value>,
    /// Supplementary groups of the process (0.7.0).
    #[serde(
        default,
        rename = "additionalGids",
        alias = "additionalGIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_gids: Vec<u32>,
    /// Network devices moved into the container (1.1.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<serde_json::Value>,
}

impl ContainerEdits {
    /// Nothing to edit.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A device node edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// Path on the host when it differs (0.5.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// The node type; read from the host node when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<NodeType>,
    /// Major number; read from the host node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number; read from the host node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// File mode; read from the host node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Device cgroup access (`rwm` when empty; `none` for no rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Owner in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A device node's type, as CDI writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeType {
    /// A character device.
    #[serde(rename = "c")]
    Char,
    /// A block device.
    #[serde(rename = "b")]
    Block,
    /// An unbuffered character device (`u`, as OCI's).
    #[serde(rename = "u")]
    Unbuffered,
    /// A FIFO.
    #[serde(rename = "p")]
    Fifo,
}

impl NodeType {
    /// The OCI device type.
    pub fn linux(self) -> oci_spec::runtime::LinuxDeviceType {
        use oci_spec::runtime::LinuxDeviceType as T;
        match self {
            Self::Char => T::C,
            Self::Block => T::B,
            Self::Unbuffered => T::U,
            Self::Fifo => T::P,
        }
    }

    /// Whether the device cgroup has rules for this type (`b` and `c` only).
    pub fn has_cgroup_rule(self) -> bool {
        matches!(self, Self::Char | Self::Block)
    }
}

/// A mount edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    /// Source on the host.
    pub host_path: String,
    /// Destination in the container.
    pub container_path: String,
    /// Mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Filesystem type (0.4.0).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// A hook edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    /// When it runs.
    pub hook_name: HookStage,
    /// Absolute path of the program.
    pub path: String,
    /// Arguments, `argv[0]` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// The OCI hook stages CDI accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HookStage {
    /// `prestart` (deprecated in OCI, still accepted).
    Prestart,
    /// `createRuntime`.
    CreateRuntime,
    /// `createContainer`.
    #[default]
    CreateContainer,
    /// `startContainer`.
    StartContainer,
    /// `poststart`.
    Poststart,
    /// `poststop`.
    Poststop,
}

/// A spec file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CDI spec {path}: {reason}")]
pub struct SpecError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// A spec version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    /// Parses `1.0.0` or `v1.0.0`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.strip_prefix('v').unwrap_or(text).split('.');
        let v = Self(
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        );
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Whether `name` is non-empty, starts with a character `first` accepts, ends with an ASCII
/// letter or digit, and has only ASCII letters, digits and `extra` characters.
fn valid_name(name: &str, first: fn(&char) -> bool, extra: &[char]) -> bool {
    name.chars().next().as_ref().is_some_and(first)
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// A valid vendor (`nvidia.com`): a domain-like name.
fn valid_vendor(v: &str) -> bool {
    valid_name(v, char::is_ascii_alphabetic, &['-', '_', '.'])
}

/// A valid class (`gpu`); dots need 0.6.0, checked by [`CdiSpec::required_version`].
fn valid_class(c: &str) -> bool {
    valid_name(c, char::is_ascii_alphanumeric, &['-', '_', '.'])
}

/// A valid device name (`0`, `GPU-…`, `0:1`, `all`).
pub fn valid_device_name(n: &str) -> bool {
    valid_name(n, char::is_ascii_alphanumeric, &['-', '_', '.', ':'])
}

/// Splits a valid kind into vendor and class.
pub fn split_kind(kind: &str) -> Option<(&str, &str)> {
    let (vendor, class) = kind.split_once('/')?;
    (valid_vendor(vendor) && valid_class(class)).then_some((vendor, class))
}

impl CdiSpec {
    /// The spec as a YAML document.
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_norway::to_string(self).map_err(|e| e.to_string())
    }

    /// Parses `text` as JSON (`.json`) or YAML (anything else), then validates it.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            path: path.to_owned(),
            reason,
        };
        let spec: Self = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| err(e.to_string()))?
        } else {
            serde_norway::from_str(text).map_err(|e| err(e.to_string()))?
        };
        spec.validate().map_err(err)?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        let declared = SpecVersion::parse(&self.cdi_version)
            .filter(|v| {
                KNOWN_VERSIONS
                    .iter()
                    .any(|k| SpecVersion::parse(k) == Some(*v))
            })
            .ok_or_else(|| {
                format!(
                    "unsupported cdiVersion {:?} (supported: {})",
                    self.cdi_version,
                    KNOWN_VERSIONS.join(", ")
                )
            })?;
        let required = self.required_version();
        if required > declared {
            return Err(format!(
                "declares cdiVersion {declared} but uses fields of {required}"
            ));
        }
        if split_kind(&self.kind).is_none() {
            return Err(format!(
                "invalid kind {:?} (want <vendor>/<class>)",
                self.kind
            ));
        }
        if self.devices.is_empty() {
            return Err("no devices".to_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.devices {
            if !valid_device_name(&d.name) {
                return Err(format!("invalid device name {:?}", d.name));
            }
            if !seen.insert(d.name.as_str()) {
                return Err(format!("device {:?} defined twice", d.name));
            }
            validate_edits(&d.container_edits).map_err(|e| format!("device {:?}: {e}", d.name))?;
        }
        validate_edits(&self.container_edits)
    }

    fn all_edits(&self) -> impl Iterator<Item = &ContainerEdits> {
        std::iter::once(&self.container_edits)
            .chain(self.devices.iter().map(|d| &d.container_edits))
    }

    /// The lowest spec version whose fields this spec uses (the rules of the CDI reference
    /// implementation).
    pub fn required_version(&self) -> SpecVersion {
        let edits = || self.all_edits();
        let rdt_v110 = |e: &ContainerEdits| {
            e.intel_rdt.as_ref().is_some_and(|r| {
                r.get("schemata").is_some()
                    || r.get("enableMonitoring").and_then(|m| m.as_bool()) == Some(true)
            })
        };
        if edits().any(|e| rdt_v110(e) || !e.net_devices.is_empty()) {
            return SpecVersion(1, 1, 0);
        }
        if edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
            return SpecVersion(0, 7, 0);
        }
        let class_has_dot = self
            .kind
            .split_once('/')
            .is_some_and(|(_, class)| class.contains('.'));
        if !self.annotations.is_empty()
            || self.devices.iter().any(|d| !d.annotations.is_empty())
            || class_has_dot
        {
            return SpecVersion(0, 6, 0);
        }
        if self
            .devices
            .iter()
            .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
            || edits().any(|e| e.device_nodes.iter().any(|n| n.host_path.is_some()))
        {
            return SpecVersion(0, 5, 0);
        }
        if edits().any(|e| e.mounts.iter().any(|m| m.typ.is_some())) {
            return SpecVersion(0, 4, 0);
        }
        SpecVersion(0, 3, 0)
    }
}

fn validate_edits(e: &ContainerEdits) -> Result<(), String> {
    for kv in &e.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(format!("invalid env entry {kv:?} (want KEY=value)"));
        }
    }
    for n in &e.device_nodes {
        if !n.path.starts_with('/') {
            return Err(format!("device node path {:?} is not absolute", n.path));
        }
        if let Some(p) = n.permissions.as_deref() {
            if p != "none" && !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(format!(
                    "device node {:?} has invalid permissions {p:?}",
                    n.path
                ));
            }
        }
    }
    for m in &e.mounts {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err("mount without hostPath or containerPath".to_owned());
        }
    }
    for h in &e.hooks {
        if !h.path.starts_with('/') {
            return Err(format!("hook path {:?} is not absolute", h.path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `text`, as the JSON file `path`, is not a valid spec.
    fn parse_err(path: &str, text: &str) -> String {
        CdiSpec::parse(Path::new(path), text)
            .unwrap_err()
            .to_string()
    }

    const TOOLKIT_YAML: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-2d1b1bd5-1e4c-5e6b-4e1a-8d6f2b3c4a5e
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link
    - libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04
    options:
    - ro
    - nosuid
    - nodev
    - rbind
    - rprivate
"#;

    #[test]
    fn reads_a_toolkit_generated_yaml_spec() {
        let spec = CdiSpec::parse(Path::new("/etc/cdi/nvidia.yaml"), TOOLKIT_YAML).unwrap();
        assert_eq!(spec.kind, "nvidia.com/gpu");
        assert_eq!(spec.devices.len(), 3);
        assert_eq!(
            spec.container_edits.hooks[0].hook_name,
            HookStage::CreateContainer
        );
        assert_eq!(spec.container_edits.mounts[0].options.len(), 5);
        assert_eq!(spec.required_version(), SpecVersion(0, 5, 0));
    }

    #[test]
    fn json_and_yaml_give_the_same_spec() {
        let yaml = CdiSpec::parse(Path::new("a.yaml"), TOOLKIT_YAML).unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        assert_eq!(CdiSpec::parse(Path::new("a.json"), &json).unwrap(), yaml);
    }

    /// A spec of version `version`, kind `kind` and one device `name` with container edits
    /// `edits` (JSON).
    fn one_device(version: &str, kind: &str, name: &str, edits: &str) -> String {
        format!(
            r#"{{"cdiVersion":"{version}","kind":"{kind}","devices":[{{"name":"{name}","containerEdits":{edits}}}]}}"#
        )
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_file() {
        let text = one_device("0.6.0", "a.com/b", "x", r#"{"bogus":1}"#);
        let err = parse_err("/etc/cdi/x.json", &text);
        assert!(
            err.contains("/etc/cdi/x.json") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn fields_newer_than_the_declared_version_are_rejected() {
        let err = parse_err("x.json", &one_device("0.3.0", "a.com/b", "0", "{}"));
        assert!(err.contains("0.3.0") && err.contains("0.5.0"), "{err}");
        let gids = r#"{"additionalGids":[44]}"#;
        let err = parse_err("x.json", &one_device("0.6.0", "a.com/b", "x", gids));
        assert!(err.contains("0.7.0"), "{err}");
        let net = r#"{"netDevices":[{"hostInterfaceName":"eth1","name":"eth1"}]}"#;
        assert!(parse("1.0.0", net).is_err());
        assert_eq!(
            parse("1.1.0", net).unwrap().required_version(),
            SpecVersion(1, 1, 0)
        );
    }

    /// `one_device(version, "a.com/b", "x", edits)`, parsed.
    fn parse(version: &str, edits: &str) -> Result<CdiSpec, SpecError> {
        CdiSpec::parse(
            Path::new("x.json"),
            &one_device(version, "a.com/b", "x", edits),
        )
    }

    #[test]
    fn every_known_version_is_accepted_and_others_are_not() {
        for v in KNOWN_VERSIONS {
            parse(v, "{}").unwrap();
        }
        for v in ["0.2.0", "1.2.0", "one"] {
            let err = parse(v, "{}").unwrap_err().to_string();
            assert!(err.contains("unsupported cdiVersion"), "{err}");
        }
    }

    #[test]
    fn bad_kinds_names_and_edits_are_rejected() {
        for (kind, name, edits, want) in [
            ("nvidia.com", "0", "{}", "invalid kind"),
            ("nvidia.com/gpu", "-x", "{}", "invalid device name"),
            (
                "nvidia.com/gpu",
                "0",
                r#"{"env":["NOEQUALS"]}"#,
                "invalid env",
            ),
            (
                "nvidia.com/gpu",
                "0",
                r#"{"deviceNodes":[{"path":"dev/x"}]}"#,
                "not absolute",
            ),
            (
                "nvidia.com/gpu",
                "0",
                r#"{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}"#,
                "permissions",
            ),
            (
                "nvidia.com/gpu",
                "0",
                r#"{"hooks":[{"hookName":"later","path":"/bin/x"}]}"#,
                "unknown variant `later`",
            ),
        ] {
            let err = parse_err("x.json", &one_device("1.0.0", kind, name, edits));
            assert!(err.contains(want), "{kind} {name} {edits}: {err}");
        }
    }
}
