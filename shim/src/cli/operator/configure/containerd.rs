//! Registering the runtime in containerd's config, edited with `toml_edit` so that comments,
//! layout and every unrelated setting stay as they are. Config version 2 (containerd 1.6 and
//! 1.7: the CRI plugin `io.containerd.grpc.v1.cri`) and 3 (containerd 2.x:
//! `io.containerd.cri.v1.runtime`). Pure: text in, text out; running it twice changes nothing
//! the second time.

use toml_edit::{value, Array, DocumentMut, Item, Table, TableLike};

use super::annotations::forwarded_requests;

/// The runtime type containerd maps to this binary.
pub const RUNTIME_TYPE: &str = "io.containerd.nvidia.v2";
/// Where the installer puts the shim's config.
pub const DEFAULT_SHIM_CONFIG: &str = "/etc/containerd-shim-nvidia/config.toml";

/// The `--config-path-option` value that registers the runtime without `options`.
pub const NO_OPTIONS: &str = "none";

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

/// The annotations the CRI plugin forwards to the shim, as container annotations (set by the
/// kubelet: the device plugin's CDI requests arrive there), never as pod annotations (set by
/// the pod's author; see [`super::annotations`]). CDI requests only where containerd does not
/// apply CDI itself (version 2; containerd 2.x resolves them before the shim sees them).
fn forwarded(version: i64) -> &'static [&'static str] {
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
fn merge_list(table: &mut dyn TableLike, key: &str, wanted: &[&str]) {
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

/// Takes the patterns that forward GPU requests out of the `pod_annotations` of every runtime
/// of this runtime type (pod authors write pod annotations): those the version forwards go to
/// its `container_annotations`, wider ones (`*/*`) are dropped. One note per runtime changed.
fn move_pod_annotations(containerd: &mut Table, version: i64) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(runtimes) = containerd
        .get_mut("runtimes")
        .and_then(Item::as_table_like_mut)
    else {
        return notes;
    };
    for (name, runtime) in runtimes.iter_mut() {
        let Some(runtime) = runtime.as_table_like_mut() else {
            continue;
        };
        if runtime.get("runtime_type").and_then(Item::as_str) != Some(RUNTIME_TYPE) {
            continue;
        }
        let Some(list) = runtime
            .get_mut("pod_annotations")
            .and_then(Item::as_array_mut)
        else {
            continue;
        };
        let mut taken = Vec::new();
        let mut i = 0;
        while i < list.len() {
            match list.get(i).and_then(|v| v.as_str()) {
                Some(p) if !forwarded_requests(p, &[]).is_empty() => {
                    taken.push(p.to_owned());
                    list.remove(i);
                }
                _ => i += 1,
            }
        }
        if taken.is_empty() {
            continue;
        }
        if list.is_empty() {
            runtime.remove("pod_annotations");
        }
        let (moved, dropped): (Vec<&str>, Vec<&str>) = taken
            .iter()
            .map(String::as_str)
            .partition(|p| forwarded(version).contains(p));
        if !moved.is_empty() {
            merge_list(runtime, "container_annotations", &moved);
        }
        let quoted = |l: &[&str]| {
            l.iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut what = Vec::new();
        if !moved.is_empty() {
            what.push(format!(
                "moved pod_annotations {} to container_annotations",
                quoted(&moved)
            ));
        }
        if !dropped.is_empty() {
            what.push(format!("removed pod_annotations {}", quoted(&dropped)));
        }
        notes.push(format!(
            "runtime {:?}: {} (pod annotations are the pod author's; only the kubelet's container annotations may request GPUs)",
            name.get(),
            what.join(", ")
        ));
    }
    notes
}

/// Sets `key = text` unless it already is (so that its formatting stays).
fn set_str(table: &mut Table, key: &str, text: &str) {
    if table.get(key).and_then(Item::as_str) != Some(text) {
        table.insert(key, value(text));
    }
}

/// What [`configure`] made of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The new text.
    pub text: String,
    /// What changed besides the runtime's own entry, one line each (annotation patterns moved
    /// out of `pod_annotations`).
    pub notes: Vec<String>,
}

/// `text` (containerd's config; empty for a new one) with the runtime registered: its
/// `container_annotations` forward the GPU requests; patterns that forward them as pod
/// annotations, in any runtime of this type, are moved out of `pod_annotations`.
pub fn configure(text: &str, opts: &Options) -> Result<Configured, ContainerdConfigError> {
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
    merge_list(runtime, "container_annotations", forwarded(version));
    if opts.config_path_option == NO_OPTIONS {
        // containerd 2.x passes a user-namespace pod's I/O owner in runc's options and fails
        // StartContainer on a handler whose options are another type; without options the
        // shim reads its default config path.
        runtime.remove("options");
    } else {
        let options = table_at(runtime, &["options"])?;
        options.set_implicit(false);
        set_str(options, "ConfigPath", &opts.config_path_option);
    }
    let notes = move_pod_annotations(containerd, version);
    Ok(Configured {
        text: doc.to_string(),
        notes,
    })
}

/// A runtime of this runtime type in a containerd config (for `doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its name (the CRI handler).
    pub name: String,
    /// Its `pod_annotations` patterns.
    pub pod_annotations: Vec<String>,
}

/// The runtimes `text` registers with this runtime type (for `doctor`).
pub fn registrations(text: &str) -> Result<Vec<Registration>, ContainerdConfigError> {
    let doc = parse(text)?;
    let mut found = Vec::new();
    for cri in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"] {
        let runtimes = doc
            .get("plugins")
            .and_then(|p| p.get(cri))
            .and_then(|c| c.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(Item::as_table_like);
        for (name, rt) in runtimes.into_iter().flat_map(|t| t.iter()) {
            if rt.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE) {
                found.push(Registration {
                    name: name.to_owned(),
                    pod_annotations: rt
                        .get("pod_annotations")
                        .and_then(Item::as_array)
                        .into_iter()
                        .flat_map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)))
                        .collect(),
                });
            }
        }
    }
    Ok(found)
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

    fn text(text: &str, opts: &Options) -> String {
        let out = configure(text, opts).unwrap();
        assert!(out.notes.is_empty(), "{:?}", out.notes);
        out.text
    }

    fn strings(v: &toml::Value) -> Vec<&str> {
        v.as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn adds_the_runtime_keeping_comments_and_other_settings() {
        let out = text(WITH_RUNTIMES, &Options::default());
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
        // GPU requests as container annotations (the kubelet's), never as pod annotations.
        assert_eq!(
            strings(&rt["container_annotations"]),
            ["cdi.k8s.io/*", "nvidia.com/*"]
        );
        assert!(rt.get("pod_annotations").is_none(), "{out}");
        assert_eq!(
            registrations(&out).unwrap(),
            [Registration {
                name: "nvidia".into(),
                pod_annotations: vec![]
            }]
        );
        assert!(registrations(WITH_RUNTIMES).unwrap().is_empty());
    }

    #[test]
    fn a_second_run_changes_nothing() {
        for (text, version) in [(WITH_RUNTIMES, 2), ("", 2), ("", 3), ("version = 3\n", 3)] {
            let opts = Options {
                version_for_new: version,
                set_as_default: true,
                ..Options::default()
            };
            let once = configure(text, &opts).unwrap().text;
            assert_eq!(self::text(&once, &opts), once);
        }
    }

    #[test]
    fn version_3_uses_containerd_2s_plugin_and_leaves_cdi_to_it() {
        let out = text("version = 3\n", &Options::default());
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
    fn none_registers_the_runtime_without_options_and_removes_ours() {
        let with = text("version = 3\n", &Options::default());
        assert!(with.contains("ConfigPath"), "{with}");
        let none = Options {
            config_path_option: NO_OPTIONS.to_owned(),
            ..Options::default()
        };
        let without = self::text(&with, &none);
        let parsed: toml::Value = toml::from_str(&without).unwrap();
        let rt =
            &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nvidia"];
        assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert!(rt.get("options").is_none(), "{without}");
    }

    #[test]
    fn set_as_default_and_existing_lists_are_merged() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\npod_annotations = [\"example.com/x\"]\n";
        let opts = Options {
            set_as_default: true,
            runtime_name: "nvidia".into(),
            ..Options::default()
        };
        let out = self::text(text, &opts);
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let c = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(c["default_runtime_name"].as_str(), Some("nvidia"));
        // An operator's own pod annotation stays.
        let rt = &c["runtimes"]["nvidia"];
        assert_eq!(strings(&rt["pod_annotations"]), ["example.com/x"]);
        assert_eq!(
            strings(&rt["container_annotations"]),
            ["cdi.k8s.io/*", "nvidia.com/*"]
        );
    }

    /// The runtime as this command wrote it before issue 22, with an operator's comments.
    const OLD_V2: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.nvidia.v2" # ours
  # Pod annotations the CRI plugin forwards to the shim.
  pod_annotations = ["cdi.k8s.io/*", "nvidia.com/*"]
  container_annotations = ["cdi.k8s.io/*", "nvidia.com/*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
    ConfigPath = "/etc/containerd-shim-nvidia/config.toml"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gpu-wide]
  runtime_type = "io.containerd.nvidia.v2"
  pod_annotations = ["example.com/x", "*/*"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  pod_annotations = ["cdi.k8s.io/*"] # not ours: left alone
"#;

    #[test]
    fn pod_annotations_that_request_gpus_are_moved_once() {
        let out = configure(OLD_V2, &Options::default()).unwrap();
        assert_eq!(out.notes.len(), 2, "{:?}", out.notes);
        assert!(
            out.notes[0].starts_with("runtime \"nvidia\": moved pod_annotations \"cdi.k8s.io/*\", \"nvidia.com/*\" to container_annotations"),
            "{:?}",
            out.notes
        );
        assert!(
            out.notes[1].starts_with("runtime \"gpu-wide\": removed pod_annotations \"*/*\""),
            "{:?}",
            out.notes
        );
        let parsed: toml::Value = toml::from_str(&out.text).unwrap();
        let rts = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert!(
            rts["nvidia"].get("pod_annotations").is_none(),
            "{}",
            out.text
        );
        assert_eq!(
            strings(&rts["nvidia"]["container_annotations"]),
            ["cdi.k8s.io/*", "nvidia.com/*"]
        );
        assert_eq!(
            strings(&rts["gpu-wide"]["pod_annotations"]),
            ["example.com/x"]
        );
        assert!(rts["gpu-wide"].get("container_annotations").is_none());
        assert_eq!(strings(&rts["runc"]["pod_annotations"]), ["cdi.k8s.io/*"]);
        for kept in ["# ours", "# not ours: left alone", "ConfigPath"] {
            assert!(out.text.contains(kept), "{kept} lost:\n{}", out.text);
        }
        // Idempotent: the second run moves nothing and changes nothing.
        assert_eq!(text(&out.text, &Options::default()), out.text);

        // Version 3: containerd applies CDI itself, so `cdi.k8s.io/*` is not moved but dropped.
        let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.nvidia]\nruntime_type = \"io.containerd.nvidia.v2\"\npod_annotations = [\"nvidia.com/*\", \"cdi.k8s.io/*\"]\n";
        let out = configure(v3, &Options::default()).unwrap();
        let parsed: toml::Value = toml::from_str(&out.text).unwrap();
        let rt =
            &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nvidia"];
        assert!(rt.get("pod_annotations").is_none(), "{}", out.text);
        assert_eq!(strings(&rt["container_annotations"]), ["nvidia.com/*"]);
        assert!(
            out.notes[0].contains("moved pod_annotations \"nvidia.com/*\" to container_annotations, removed pod_annotations \"cdi.k8s.io/*\""),
            "{:?}",
            out.notes
        );
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
