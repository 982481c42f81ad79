//! The shim's configuration file read from disk: a small regular file, read without blocking
//! and bounded (see [`crate::regular_file`]), then parsed by core's [`Config::parse`].

use std::path::Path;

use nvidia_shim_core::config::{DEFAULT_CONFIG_PATH, MAX_CONFIG_SIZE};
use nvidia_shim_core::{Config, ConfigError};

use crate::regular_file::{self, RegularFileError};

/// Loads the configuration from `path`: a regular file of at most [`MAX_CONFIG_SIZE`] bytes.
/// It is opened without blocking (a FIFO there cannot hang the shim) and read bounded
/// (`/dev/zero` cannot grow it); anything else is refused, naming the file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = regular_file::read_to_string(path, MAX_CONFIG_SIZE).map_err(|e| match e {
        RegularFileError::Read { path, source } => ConfigError::Read { path, source },
        RegularFileError::NotAFile { path, what } => ConfigError::NotAFile { path, what },
        RegularFileError::TooLarge { path, size, .. } => ConfigError::TooLarge { path, size },
        RegularFileError::NotText { path } => ConfigError::Parse {
            path,
            line: None,
            message: "not UTF-8 text".to_owned(),
        },
    })?;
    Config::parse(&text, path)
}

/// Loads `explicit` when given, else [`DEFAULT_CONFIG_PATH`] when it exists, else defaults.
pub fn load_or_default(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match explicit {
        Some(path) => load(path),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            if default.exists() {
                load(default)
            } else {
                Ok(Config::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::NotSmallFiles;

    #[test]
    fn hostile_paths_are_refused_fast_naming_the_file() {
        let files = NotSmallFiles::new(".toml", 10 << 20);
        let started = std::time::Instant::now();
        for (path, what) in files.not_files() {
            let err = load(path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{} is {what}", path.display())),
                "{err}"
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let err = load(&files.big).unwrap_err().to_string();
        assert!(err.contains("big.toml is 10485760 bytes"), "{err}");
        let missing = load(&files.missing).unwrap_err();
        assert!(missing.to_string().contains("none.toml"), "{missing}");
    }

    #[test]
    fn missing_explicit_file_is_a_read_error() {
        let err = load(Path::new("/nonexistent/shim.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/shim.toml"));
    }

    #[test]
    fn loads_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "systemd_cgroup = true\n").unwrap();
        assert!(load_or_default(Some(&path)).unwrap().systemd_cgroup);
    }
}
