//! Registering the runtime in containerd's config, edited with `toml_edit` so that comments,
//! layout and every unrelated setting stay as they are. Config version 2 (containerd 1.6 and
//! 1.7: the CRI plugin `io.containerd.grpc.v1.cri`) and 3 (containerd 2.x:
//! `io.containerd.cri.v1.runtime`). Pure: text in, text out; running it twice changes nothing
//! the second time.

use toml_edit::{value, Array, DocumentMut, Item, Table};

/// The runtime type containerd maps to this binary.
pub const RUNTIME_TYPE: &str = "io.containerd.nvidia.v2";
/// Where the installer puts the shim's config.
pub const DEFAULT_SHIM_CONFIG: &str = "/etc/containerd-shim-nvidia/config.toml";

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The CRI runtime handler name (`RuntimeClass` handler).
    pub runtime_name: String,
    /// Make it the CRI plugin's default runtime.
    pub set_as_default: bool,
    /// The shim config path sent as `runtimeoptions.v1.Options.config_path`.
    pub config_path_option: String,
    /// The config version of a new (empty) file: 2 for containerd 1.x, 3 for 2.x.
    pub version_for_new: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            runtime_name: "nvidia".to_owned(),
            set_as_default: false,
            config_path_option: DEFAULT_SHIM_CONFIG.to_owned(),
            version_for_new: 2,
        }
    }
}

/// Why a config cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    /// Not TOML.
    #[error("not valid TOML at line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message, on one line.
        message: String,
        /// The parser's error (boxed: it is large).
        #[source]
        source: Box<toml_edit::TomlError>,
    },
    /// A config without `version`: version 1, which containerd 2.x no longer reads.
    #[error("it has no `version` (config version 1): migrate it first with `containerd config migrate`, or add `version = 2`")]
    Version1,
    /// A version this command does not know.
    #[error("config version {0} is not supported (2 for containerd 1.6/1.7, 3 for 2.x)")]
    UnknownVersion(String),
    /// A key on the way is not a table.
    #[error("`{0}` is not a table")]
    NotATable(String),
}

/// The annotations the CRI plugin forwards to the shim: CDI requests only where containerd does
/// not apply CDI itself (version 2; containerd 2.x resolves them before the shim sees them).
fn annotations(version: i64) -> &'static [&'static str] {
    if version >= 3 {
        &["nvidia.com/*"]
    } else {
        &["cdi.k8s.io/*", "nvidia.com/*"]
    }
}

/// `text` as a TOML document; an error says where, on one line.
fn parse(text: &str) -> Result<DocumentMut, ContainerdConfigError> {
    text.parse::<DocumentMut>().map_err(|source| {
        let at = source.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ContainerdConfigError::Parse {
            line,
            column,
            message: source
                .message()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            source: Box::new(source),
        }
    })
}

/// The table at `path` under `table`, created (implicit, so no empty header is written) when
/// absent.
fn table_at<'a>(
    mut table: &'a mut Table,
    path: &[&str],
) -> Result<&'a mut Table, ContainerdConfigError> {
    let mut walked = Vec::new();
    for key in path {
        walked.push(*key);
        let entry = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = entry
            .as_table_mut()
            .ok_or_else(|| ContainerdConfigError::NotATable(walked.join(".")))?;
    }
    Ok(table)
}

/// `list` with the entries of `wanted` it lacks appended (an existing list keeps its order and
/// formatting).
fn merge_list(table: &mut Table, key: &str, wanted: &[&str]) {
    match table.get_mut(key).and_then(Item::as_array_mut) {
        Some(list) => {
            for w in wanted {
                if !list.iter().any(|v| v.as_str() == Some(w)) {
                    list.push(*w);
                }
            }
        }
        None => {
            let list: Array = wanted.iter().copied().collect();
            table.insert(key, value(list));
        }
    }
}

/// Sets `key = text` unless it already is (so that its formatting stays).
fn set_str(table: &mut Table, key: &str, text: &str) {
    if table.get(key).and_then(Item::as_str) != Some(text) {
        table.insert(key, value(text));
    }
}

/// `text` (containerd's config; empty for a new one) with the runtime registered.
pub fn configure(text: &str, opts: &Options) -> Result<String, ContainerdConfigError> {
    let mut doc = parse(text)?;
    let version = match doc.get("version") {
        Some(v) => v.as_integer().ok_or_else(|| {
            ContainerdConfigError::UnknownVersion(v.to_string().trim().to_owned())
        })?,
        None if doc.iter().next().is_none() => {
            let mut fresh = DocumentMut::new();
            fresh.insert("version", value(opts.version_for_new));
            for (k, v) in doc.iter() {
                fresh.insert(k, v.clone());
            }
            doc = fresh;
            opts.version_for_new
        }
        None => return Err(ContainerdConfigError::Version1),
    };
    let cri = match version {
        2 => "io.containerd.grpc.v1.cri",
        3 => "io.containerd.cri.v1.runtime",
        other => return Err(ContainerdConfigError::UnknownVersion(other.to_string())),
    };
    let containerd = table_at(doc.as_table_mut(), &["plugins", cri, "containerd"])?;
    if opts.set_as_default {
        set_str(containerd, "default_runtime_name", &opts.runtime_name);
    }
    let runtime = table_at(containerd, &["runtimes", &opts.runtime_name])?;
    runtime.set_implicit(false);
    set_str(runtime, "runtime_type", RUNTIME_TYPE);
    merge_list(runtime, "pod_annotations", annotations(version));
    merge_list(runtime, "container_annotations", annotations(version));
    let options = table_at(runtime, &["options"])?;
    options.set_implicit(false);
    set_str(options, "ConfigPath", &opts.config_path_option);
    Ok(doc.to_string())
}

/// Whether `text` registers `runtime_name` with this runtime type (for `doctor`).
pub fn registers(
    text: &str,
    runtime_name: Option<&str>,
) -> Result<Vec<String>, ContainerdConfigError> {
    let doc = parse(text)?;
    let mut names = Vec::new();
    for cri in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"] {
        let runtimes = doc
            .get("plugins")
            .and_then(|p| p.get(cri))
            .and_then(|c| c.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(Item::as_table_like);
        for (name, rt) in runtimes.into_iter().flat_map(|t| t.iter()) {
            if rt.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE)
                && runtime_name.is_none_or(|n| n == name)
            {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_RUNTIMES: &str = r#"# The node's containerd config (kept by the platform team).
version = 2
root = "/var/lib/containerd"

[plugins]
  # CRI: systemd cgroups, runc by default.
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true # kubelet uses systemd
"#;

    #[test]
    fn adds_the_runtime_keeping_comments_and_other_settings() {
        let out = configure(WITH_RUNTIMES, &Options::default()).unwrap();
        for kept in [
            "# The node's containerd config (kept by the platform team).",
            "  # CRI: systemd cgroups, runc by default.",
            "sandbox_image = \"registry.k8s.io/pause:3.9\"",
            "default_runtime_name = \"runc\"",
            "SystemdCgroup = true # kubelet uses systemd",
        ] {
            assert!(out.contains(kept), "{kept} lost:\n{out}");
        }
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let rt =
            &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nvidia"];
        assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(
            rt["options"]["ConfigPath"].as_str(),
            Some(DEFAULT_SHIM_CONFIG)
        );
        assert_eq!(rt["pod_annotations"].as_array().unwrap().len(), 2, "{out}");
        assert_eq!(registers(&out, Some("nvidia")).unwrap(), ["nvidia"]);
        assert!(registers(WITH_RUNTIMES, None).unwrap().is_empty());
    }

    #[test]
    fn a_second_run_changes_nothing() {
        for (text, version) in [(WITH_RUNTIMES, 2), ("", 2), ("", 3), ("version = 3\n", 3)] {
            let opts = Options {
                version_for_new: version,
                set_as_default: true,
                ..Options::default()
            };
            let once = configure(text, &opts).unwrap();
            assert_eq!(configure(&once, &opts).unwrap(), once);
        }
    }

    #[test]
    fn version_3_uses_containerd_2s_plugin_and_leaves_cdi_to_it() {
        let out = configure("version = 3\n", &Options::default()).unwrap();
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let rt =
            &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nvidia"];
        assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(
            rt["container_annotations"].as_array().unwrap(),
            &vec![toml::Value::from("nvidia.com/*")]
        );
        assert!(out.starts_with("version = 3\n"), "{out}");
    }

    #[test]
    fn set_as_default_and_existing_lists_are_merged() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\npod_annotations = [\"example.com/x\"]\n";
        let opts = Options {
            set_as_default: true,
            runtime_name: "nvidia".into(),
            ..Options::default()
        };
        let out = configure(text, &opts).unwrap();
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let c = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(c["default_runtime_name"].as_str(), Some("nvidia"));
        let pod: Vec<&str> = c["runtimes"]["nvidia"]["pod_annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(pod, ["example.com/x", "cdi.k8s.io/*", "nvidia.com/*"]);
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        let err = configure("version = 2\n[plugins\nx = 1\n", &Options::default()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = configure("root = \"/var/lib/containerd\"\n", &Options::default()).unwrap_err();
        assert!(matches!(err, ContainerdConfigError::Version1), "{err}");
        let err = configure("version = 4\n", &Options::default()).unwrap_err();
        assert!(err.to_string().contains("version 4"), "{err}");
        let err = configure("version = 2\nplugins = 1\n", &Options::default()).unwrap_err();
        assert!(
            err.to_string().contains("`plugins` is not a table"),
            "{err}"
        );
    }
}
