//! What containerd runs: the shim protocol's `start` and `delete` commands, the `-info` reply
//! ([`features`]), and the daemon `start` spawns.

pub mod features;
pub mod shim;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.nvidia.v2";
