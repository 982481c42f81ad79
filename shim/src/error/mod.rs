//! `ShimError`, the one error of the shim's layers (service, task, runtime, I/O, GPU glue),
//! and its single mapping to ttrpc status codes (which containerd turns back into `errdefs`
//! errors); [`wire`]: the errors that cross the zygote's channel, typed.

pub mod wire;

use std::sync::Arc;

use containerd_shim::protos::ttrpc::{self, Code};
use nvidia_shim_core::plan::PlanError;
use nvidia_shim_core_host::root::RootError;

pub use wire::{OpError, ZygoteError};

/// Result alias of the shim.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

/// Everything a task request can fail with. Each variant carries the container (and process)
/// it concerns, so that the message containerd shows names them.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or process in this shim.
    #[error("container {id}: not found")]
    NotFound {
        /// Container id.
        id: String,
    },
    /// The process has already exited (containerd treats kill of such a process as done).
    #[error("container {id}: process already finished")]
    ProcessFinished {
        /// Container id.
        id: String,
    },
    /// A container with this id is already served by this shim.
    #[error("container {id}: already exists")]
    AlreadyExists {
        /// Container id.
        id: String,
    },
    /// The request itself is malformed.
    #[error("container {id}: invalid request: {reason}")]
    InvalidArgument {
        /// Container id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request does not fit the container's current state.
    #[error("container {id}: {reason}")]
    FailedPrecondition {
        /// Container id.
        id: String,
        /// Why it cannot be done now.
        reason: String,
    },
    /// The request is valid but this shim does not implement it.
    #[error("container {id}: {what} is not supported by io.containerd.nvidia.v2")]
    Unimplemented {
        /// Container id.
        id: String,
        /// The unsupported feature.
        what: &'static str,
    },
    /// The shim's configuration file is unusable.
    #[error("container {id}: {source}")]
    Config {
        /// Container id.
        id: String,
        /// The loader's error, naming file and line (shared: the file is read once, at the
        /// daemon's start, and every Create that uses it reports it).
        #[source]
        source: Arc<nvidia_shim_core::ConfigError>,
    },
    /// libcontainer (run in the zygote) refused or failed an operation.
    #[error("container {id}: {op} failed: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The operation (`create`, `start`, `kill`, ...).
        op: &'static str,
        /// What failed, as the zygote worker (or the shim itself) reported it.
        #[source]
        source: OpError,
    },
    /// No zygote worker could run the operation.
    #[error("container {id}: {op} failed: {source}")]
    Zygote {
        /// Container id.
        id: String,
        /// The operation.
        op: &'static str,
        /// What happened to the zygote or its worker.
        #[source]
        source: ZygoteError,
    },
    /// The container's GPUs cannot be given: the request is invalid (`InvalidArgument`) or the
    /// host cannot serve it (`FailedPrecondition`), as [`PlanError::is_invalid_request`] says.
    #[error("container {id}: {}{source}", if source.is_invalid_request() { "invalid request: " } else { "" })]
    Gpu {
        /// Container id.
        id: String,
        /// Core's error (boxed: it is large and rare).
        #[source]
        source: Box<PlanError>,
    },
    /// A write into the container's rootfs (links, ld cache) failed.
    #[error("container {id}: {source}")]
    Rootfs {
        /// Container id.
        id: String,
        /// The confined writer's error.
        #[source]
        source: RootError,
    },
    /// A host operation of the shim itself failed.
    #[error("container {id}: {context}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// What the shim was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup read, update or removal failed.
    #[error("container {id}: cgroup {op} failed: {message}")]
    Cgroup {
        /// Container id.
        id: String,
        /// `stats`, `update`, `pids` or `remove`.
        op: &'static str,
        /// What failed, with the path or libcgroups' error.
        message: String,
    },
}

impl ShimError {
    /// The ttrpc code containerd maps back to an `errdefs` error.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound { .. } | Self::ProcessFinished { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::InvalidArgument { .. } | Self::Config { .. } => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            Self::Gpu { source, .. } if source.is_invalid_request() => Code::INVALID_ARGUMENT,
            Self::Gpu { .. } => Code::FAILED_PRECONDITION,
            Self::Unimplemented { .. } => Code::UNIMPLEMENTED,
            Self::Runtime { .. }
            | Self::Rootfs { .. }
            | Self::Io { .. }
            | Self::Cgroup { .. }
            | Self::Zygote { .. } => Code::UNKNOWN,
        }
    }

    /// Shorthand for an [`ShimError::Io`].
    pub fn io(id: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            id: id.to_owned(),
            context: context.into(),
            source,
        }
    }
}

/// The longest error message sent to containerd: input values are quoted bounded where they
/// are named, and this bounds whatever else an error carries (a long chain from libcontainer).
pub const MAX_MESSAGE: usize = 4096;

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        let message = nvidia_shim_core::quote::bounded(&err.to_string(), MAX_MESSAGE);
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), message))
    }
}

/// Flattens an error and its `source` chain into one line, for errors that cross the zygote
/// boundary as text.
pub fn chain_to_string(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(src) = cur {
        let s = src.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = src.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        let nf = ShimError::NotFound { id: "c1".into() };
        assert_eq!(nf.code(), Code::NOT_FOUND);
        assert_eq!(nf.to_string(), "container c1: not found");
        let rt = ShimError::Runtime {
            id: "c1".into(),
            op: "create",
            source: OpError::Libcontainer {
                message: "executable 'nope' not found in $PATH".into(),
                cause: None,
            },
        };
        assert_eq!(rt.code(), Code::UNKNOWN);
        let status: ttrpc::Error = rt.into();
        match status {
            ttrpc::Error::RpcStatus(s) => {
                assert!(s.message().contains("container c1: create failed"));
                assert!(s.message().contains("nope"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn chain_includes_sources_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let outer = ShimError::io("c2", "open stdin", inner);
        let text = chain_to_string(&outer);
        assert_eq!(text, "container c2: open stdin: no such file");
    }
}
