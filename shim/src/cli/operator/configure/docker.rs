//! Registering the runtime in Docker's `daemon.json` (Docker 23+ runs containerd shims by
//! their runtime type): a `runtimes.<name>` entry with `runtimeType`, every other key kept.

use serde_json::{json, Map, Value};

use super::containerd::RUNTIME_TYPE;

/// Why `daemon.json` cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    /// Not JSON (the message names the line and column).
    #[error("not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    /// Not an object where one is needed.
    #[error("`{0}` is not a JSON object")]
    NotAnObject(&'static str),
}

/// `text` (`daemon.json`; empty for a new one) with the runtime `name` registered, sent the
/// shim config `config_path`; with `set_as_default`, Docker's `default-runtime` too.
pub fn configure(
    text: &str,
    name: &str,
    config_path: &str,
    set_as_default: bool,
) -> Result<String, DockerConfigError> {
    let mut root: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(text)?
    };
    let obj = root
        .as_object_mut()
        .ok_or(DockerConfigError::NotAnObject("daemon.json"))?;
    let runtimes = obj
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(DockerConfigError::NotAnObject("runtimes"))?;
    runtimes.insert(
        name.to_owned(),
        json!({"runtimeType": RUNTIME_TYPE, "options": {"ConfigPath": config_path}}),
    );
    if set_as_default {
        obj.insert("default-runtime".to_owned(), Value::from(name));
    }
    Ok(serde_json::to_string_pretty(&root)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_runtime_keeping_other_keys() {
        let text = r#"{"log-driver": "journald", "runtimes": {"crun": {"path": "/usr/bin/crun"}}}"#;
        let out = configure(text, "nvidia", "/etc/c.toml", false).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["runtimes"]["crun"]["path"], "/usr/bin/crun");
        assert_eq!(v["runtimes"]["nvidia"]["runtimeType"], RUNTIME_TYPE);
        assert_eq!(
            v["runtimes"]["nvidia"]["options"]["ConfigPath"],
            "/etc/c.toml"
        );
        assert!(v.get("default-runtime").is_none());
        assert_eq!(
            configure(&out, "nvidia", "/etc/c.toml", false).unwrap(),
            out
        );
        let err = configure("{\"runtimes\": [1,", "nvidia", "/c", false).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = configure("[]", "nvidia", "/c", false).unwrap_err();
        assert!(err.to_string().contains("daemon.json"), "{err}");
    }
}
