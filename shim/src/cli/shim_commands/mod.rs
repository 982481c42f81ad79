//! What containerd runs: the shim protocol's [`start`] (find or spawn the daemon of a
//! container's group) and [`delete`] (clean up after a dead daemon) commands, the `-info`
//! reply ([`features`]), and the daemon `start` forks ([`serve`]).

pub mod delete;
pub mod features;
pub mod serve;
pub mod start;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.nvidia.v2";
