//! The shim's TOML configuration file: what it may contain and how it is parsed (the host
//! reads it: `nvidia-shim-core-host`'s `config`).
//!
//! Keys are snake_case and all optional; an unknown key is an error, and every error names the
//! file and, where the parser can tell, the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::request::{Capabilities, RequestPolicy, UnknownCapability};

/// Where the shim looks for its configuration when containerd passes no `ConfigPath`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd-shim-nvidia/config.toml";

/// The largest configuration file read (the shipped ones are about 2 kB).
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Where the driver inventory is cached on disk unless configured otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/run/containerd-shim-nvidia";

/// The shim's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log level of the shim (`error`, `warn`, `info`, `debug`, `trace`); `-debug` from
    /// containerd raises it to `debug`.
    pub log_level: LogLevel,
    /// Manage container cgroups through systemd (cgroupsPath `slice:prefix:name`), as runc's
    /// `SystemdCgroup` does; containerd does not pass that option to non-runc shims.
    pub systemd_cgroup: bool,
    /// Where the driver's files are; detected among [`DRIVER_ROOT_CANDIDATES`] when unset.
    ///
    /// [`DRIVER_ROOT_CANDIDATES`]: crate::inventory::DRIVER_ROOT_CANDIDATES
    pub driver_root: Option<PathBuf>,
    /// Where `dev/nvidia*` nodes are (default `/`).
    pub dev_root: PathBuf,
    /// Where `driver/nvidia/...` and `devices` are read (default `/proc`).
    pub proc_root: PathBuf,
    /// Capabilities when `NVIDIA_DRIVER_CAPABILITIES` is unset (default `utility,compute`).
    pub default_capabilities: String,
    /// Honour `NVIDIA_VISIBLE_DEVICES` in unprivileged containers (default true, as the
    /// toolkit; set false for the Kubernetes isolation profile).
    pub accept_envvar_when_unprivileged: bool,
    /// Honour device-plugin `/dev/null` volume-mount requests (default false;
    /// `accept_volume_mounts` is accepted as an alias).
    #[serde(alias = "accept_volume_mounts")]
    pub accept_volume_mount_requests: bool,
    /// Annotation prefixes whose values list CDI devices (default `["cdi.k8s.io/"]`).
    pub annotation_prefixes: Vec<String>,
    /// Enforce `NVIDIA_REQUIRE_*` (default true).
    pub check_requirements: bool,
    /// Directories of CDI spec files, lowest priority first (default `/etc/cdi`,
    /// `/var/run/cdi`).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Who serves names of the built-in CDI kinds (`nvidia.com/gpu`,
    /// `k8s.device-plugin.nvidia.com/gpu`, `runtime.nvidia.com/gpu`): `true` (the default, as
    /// the toolkit's `cdi` mode) a spec on disk for the kind when there is one, else the driver
    /// inventory; `false` (as the toolkit's just-in-time mode) always the driver inventory.
    pub cdi_specs_on_disk_first: bool,
    /// Load the driver's NVML at discovery for GPU arch, brand, the CUDA version and MIG UUIDs
    /// (default true; discovery falls back to `/proc` without it).
    pub nvml: bool,
    /// Use an image's CUDA forward-compat libraries (`/usr/local/cuda/compat`) when their ELF
    /// note says they are newer than, and made for, the host driver (default true).
    pub cuda_compat: bool,
    /// Where the driver inventory is cached between shims (default
    /// `/run/containerd-shim-nvidia`; empty disables the on-disk cache).
    pub cache_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            systemd_cgroup: false,
            driver_root: None,
            dev_root: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
            default_capabilities: "utility,compute".to_owned(),
            accept_envvar_when_unprivileged: true,
            accept_volume_mount_requests: false,
            annotation_prefixes: vec!["cdi.k8s.io/".to_owned()],
            check_requirements: true,
            cdi_spec_dirs: crate::cdi::DEFAULT_SPEC_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            cdi_specs_on_disk_first: true,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            cuda_compat: true,
            nvml: true,
        }
    }
}

/// A log level accepted in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and degraded operation.
    Warn,
    /// Lifecycle changes per container (the default).
    Info,
    /// Host detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as the `log` crate spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a directory, ...).
    #[error("config file {path} is {what}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The file is larger than [`MAX_CONFIG_SIZE`].
    #[error("config file {path} is {size} bytes, more than the {MAX_CONFIG_SIZE} a configuration may have")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid TOML, or holds a key or value the shim does not accept.
    #[error("invalid config file {path}{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text, when the parser reports a position.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
}

impl Config {
    /// Parses `text`, attributing errors to `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            line: err.span().map(|span| line_of(text, span.start)),
            message: err.message().trim().to_owned(),
        })?;
        config.default_caps().map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: text
                .find("default_capabilities")
                .map(|offset| line_of(text, offset)),
            message: format!("default_capabilities: {e}"),
        })?;
        Ok(config)
    }

    fn default_caps(&self) -> Result<Capabilities, UnknownCapability> {
        Capabilities::parse(
            Some(&self.default_capabilities),
            &Capabilities::default_set(),
            false,
        )
    }

    /// How GPU requests are read under this configuration.
    pub fn request_policy(&self) -> RequestPolicy {
        RequestPolicy {
            annotation_prefixes: self.annotation_prefixes.clone(),
            accept_volume_mounts: self.accept_volume_mount_requests,
            accept_envvar_when_unprivileged: self.accept_envvar_when_unprivileged,
            default_capabilities: self
                .default_caps()
                .unwrap_or_else(|_| Capabilities::default_set()),
        }
    }
}

/// The 1-based line that byte `offset` of `text` lies on.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/x.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn reads_every_key() {
        let cfg = parse("log_level = \"debug\"\nsystemd_cgroup = true\n").unwrap();
        assert_eq!(cfg.log_level, LogLevel::Debug);
        assert!(cfg.systemd_cgroup);
    }

    #[test]
    fn gpu_keys_are_read() {
        let cfg = parse(
            "driver_root = \"/usr/local/nvidia\"\nproc_root = \"/tmp/p\"\ndefault_capabilities = \"all\"\n\
             accept_envvar_when_unprivileged = false\naccept_volume_mount_requests = true\n\
             cdi_spec_dirs = [\"/x\"]\ncache_dir = \"\"\n\
             annotation_prefixes = [\"cdi.k8s.io/\", \"nvidia.com/\"]\ncheck_requirements = false\n",
        )
        .unwrap();
        assert_eq!(
            cfg.driver_root.as_deref(),
            Some(Path::new("/usr/local/nvidia"))
        );
        let policy = cfg.request_policy();
        assert!(!policy.accept_envvar_when_unprivileged && policy.accept_volume_mounts);
        assert_eq!(policy.default_capabilities, Capabilities::all());
        assert_eq!(policy.annotation_prefixes.len(), 2);
        assert_eq!(cfg.cdi_spec_dirs, [PathBuf::from("/x")]);
        assert_eq!(cfg.cache_dir, PathBuf::new());
        let alias = parse("accept_volume_mounts = true\n").unwrap();
        assert!(alias.accept_volume_mount_requests);
        assert!(!cfg.check_requirements);
    }

    #[test]
    fn bad_default_capabilities_name_the_line() {
        let err =
            parse("log_level = \"info\"\ndefault_capabilities = \"compute,cuda\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("cuda"), "{msg}");
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let err = parse("log_level = \"info\"\n\nno_such_key = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/x.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("no_such_key"), "{msg}");
    }

    #[test]
    fn malformed_toml_names_line() {
        let err = parse("log_level = \"info\"\nsystemd_cgroup = = true\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn bad_value_is_rejected() {
        let err = parse("log_level = \"loud\"\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn line_of_counts_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../deploy/shim-config.toml");
        Config::parse(text, Path::new("deploy/shim-config.toml")).unwrap();
    }
}
