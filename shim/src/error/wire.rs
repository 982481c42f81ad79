//! The errors that cross the zygote's channel: [`OpError`], why an operation a worker ran (or
//! the shim ran in-process) failed, serialised with its kind and, where the OS gave one, its
//! `errno`; and [`ZygoteError`], why no worker could run it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain_to_string;

/// Why a libcontainer operation failed, as it crosses the zygote's channel (serialised, so
/// libcontainer's error chain travels as its text; the variant is its kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// libcontainer refused or failed the operation.
    #[error("{message}{}", cause.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Libcontainer {
        /// Its error chain.
        message: String,
        /// What the container's init process logged when it failed (see `causes`), when that
        /// adds something.
        cause: Option<String>,
    },
    /// The container's libcontainer state cannot be loaded.
    #[error("container state: {0}")]
    State(String),
    /// libcontainer created a container without an init pid.
    #[error("libcontainer returned no init pid")]
    NoInitPid,
    /// A signal number libcontainer does not know.
    #[error("signal {signal}: {message}")]
    Signal {
        /// The number.
        signal: i32,
        /// libcontainer's reason.
        message: String,
    },
    /// A file operation of the shim's own around libcontainer failed.
    #[error("{what} {path}: {message}")]
    File {
        /// What was being done (`join`, `remove`, ...).
        what: String,
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
        /// Its `errno`, so a caller can tell `ENOENT` from `EBUSY`.
        errno: Option<i32>,
    },
    /// What the shim applies in a created container's mount namespace (its mount flags,
    /// propagation, idmapped mounts, the `/proc/driver/nvidia` overlay) could not be applied.
    #[error("after create: {message}")]
    AfterCreate {
        /// The OS error, with the path it concerned.
        message: String,
        /// Its `errno`.
        errno: Option<i32>,
    },
    /// The operation's message or its answer did not make sense (a shim and a worker that
    /// disagree: a bug).
    #[error("zygote protocol: {0}")]
    Protocol(String),
    /// The worker panicked running the operation.
    #[error("the worker panicked: {0}")]
    Panic(String),
}

impl OpError {
    /// The OS error number behind it, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::File { errno, .. } | Self::AfterCreate { errno, .. } => *errno,
            _ => None,
        }
    }

    /// A libcontainer error with its chain, and the init's logged cause when it adds
    /// something.
    pub fn libcontainer(err: impl std::error::Error, cause: Option<String>) -> Self {
        let message = chain_to_string(&err);
        Self::Libcontainer {
            cause: cause.filter(|c| !message.contains(c.as_str())),
            message,
        }
    }

    /// A file operation's error, with its `errno`.
    pub fn file(what: &str, path: &Path, err: &std::io::Error) -> Self {
        Self::File {
            what: what.to_owned(),
            path: path.to_owned(),
            message: err.to_string(),
            errno: err.raw_os_error(),
        }
    }

    /// What applying a created container's mounts failed with, with its `errno`.
    pub fn after_create(err: &std::io::Error) -> Self {
        Self::AfterCreate {
            message: err.to_string(),
            errno: err.raw_os_error(),
        }
    }
}

/// A libcontainer error with its chain.
pub fn lc(err: impl std::error::Error) -> OpError {
    OpError::libcontainer(err, None)
}

/// An operation's outcome.
pub type Wire<T> = std::result::Result<T, OpError>;

/// Why an operation could not be run in a zygote worker.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// No zygote could be had: the first is gone and a new one could not be started.
    #[error("the shim's zygote died and a new one could not be started: {0}")]
    Gone(String),
    /// The worker ended without answering (killed, or it could not be forked).
    #[error("the zygote's worker ended without answering (killed?)")]
    WorkerDied,
    /// The zygote's sockets failed.
    #[error("zygote socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message that does not parse (a bug).
    #[error("zygote protocol: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_errors_cross_the_channel_typed_and_print_their_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "exec format error");
        let with_new_cause = OpError::libcontainer(&io, Some("/app: no such file".to_owned()));
        let with_known_cause = OpError::libcontainer(&io, Some("exec format error".to_owned()));
        assert_eq!(
            with_new_cause.to_string(),
            "exec format error: /app: no such file"
        );
        assert_eq!(
            with_known_cause,
            OpError::Libcontainer {
                message: "exec format error".to_owned(),
                cause: None,
            }
        );
        let busy = OpError::file(
            "remove",
            Path::new("/sys/fs/cgroup/x"),
            &std::io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert_eq!(busy.errno(), Some(libc::EBUSY));
        let after = OpError::after_create(&std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(after.errno(), Some(libc::EPERM));
        for e in [
            with_new_cause,
            OpError::State("missing state.json".to_owned()),
            OpError::NoInitPid,
            busy,
            after,
        ] {
            let wire = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<OpError>(&wire).unwrap(), e);
        }
    }
}
