//! The shim's configuration as the daemon loaded it at its start, once, and the one each
//! container is created with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nvidia_shim_core::{Config, ConfigError};

use crate::error::{Result, ShimError};

/// The configuration file `start` was given (by containerd's runtime options), loaded once
/// when the daemon started. A malformed file does not stop the daemon: each Create that
/// would use it fails, naming the container, the file and the line.
#[derive(Debug, Clone)]
pub struct StartConfig {
    path: Option<PathBuf>,
    loaded: std::result::Result<Arc<Config>, Arc<ConfigError>>,
}

impl StartConfig {
    /// Loads the file at `path`, or the default file when it exists, else the defaults.
    /// Blocks (a file read): for `main`, before serving.
    pub fn load(path: Option<PathBuf>) -> Self {
        let loaded = nvidia_shim_core_host::config::load_or_default(path.as_deref())
            .map(Arc::new)
            .map_err(Arc::new);
        Self { path, loaded }
    }

    /// The configuration `config` (loaded from `path`, if any).
    #[cfg(test)]
    pub fn given(path: Option<PathBuf>, config: Config) -> Self {
        Self {
            path,
            loaded: Ok(Arc::new(config)),
        }
    }

    /// The log level the configuration asks for (`info` when it could not be loaded).
    pub fn log_level(&self) -> &str {
        self.loaded
            .as_ref()
            .map_or("info", |c| c.log_level.as_str())
    }

    /// The configuration for container `id`, whose runtime options name the file `path`:
    /// the one loaded at start, unless `path` names another file, which is read now (a
    /// runtime entry with another `ConfigPath` sending a container to this grouped shim).
    /// Blocks when it reads.
    pub fn for_container(&self, id: &str, path: Option<&Path>) -> Result<Arc<Config>> {
        let error = |source| ShimError::Config {
            id: id.to_owned(),
            source,
        };
        match path {
            Some(path) if self.path.as_deref() != Some(path) => {
                nvidia_shim_core_host::config::load_or_default(Some(path))
                    .map(Arc::new)
                    .map_err(|e| error(Arc::new(e)))
            }
            _ => self.loaded.clone().map_err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log level of the configuration container `id` gets when it names `path`.
    fn level_for(config: &StartConfig, id: &str, path: Option<&Path>) -> String {
        let loaded = config.for_container(id, path).expect("a configuration");
        loaded.log_level.as_str().to_owned()
    }

    #[test]
    fn the_start_file_is_read_once_and_another_file_when_a_container_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (start, other) = (dir.path().join("start.toml"), dir.path().join("other.toml"));
        std::fs::write(&start, "log_level = \"warn\"\n").unwrap();
        std::fs::write(&other, "log_level = \"error\"\n").unwrap();
        let config = StartConfig::load(Some(start.clone()));
        assert_eq!(config.log_level(), "warn");
        // Changed after the start: the start's file is not read again.
        std::fs::write(&start, "log_level = \"debug\"\n").unwrap();
        assert_eq!(level_for(&config, "c1", Some(&start)), "warn");
        assert_eq!(level_for(&config, "c1", None), "warn");
        assert_eq!(level_for(&config, "c2", Some(&other)), "error");
    }

    #[test]
    fn a_broken_file_fails_each_create_naming_container_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "log_level = \"info\"\nbogus = true\n").unwrap();
        let config = StartConfig::load(Some(path.clone()));
        assert_eq!(
            config.log_level(),
            "info",
            "the daemon logs at the default level"
        );
        for id in ["c5", "c6"] {
            let err = config.for_container(id, Some(&path)).unwrap_err();
            assert_eq!(
                err.code(),
                containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT
            );
            let err = err.to_string();
            assert!(err.contains(&format!("container {id}")), "{err}");
            assert!(err.contains("c.toml") && err.contains("line 2"), "{err}");
        }
    }
}
