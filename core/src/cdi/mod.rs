//! Container Device Interface: spec files read from disk (JSON or YAML, versions 0.3.0 to
//! 1.1.0), qualified device names resolved against them, and their edits applied to an OCI
//! spec. containerd 1.6 has no CDI of its own, so the shim resolves names that reach it through
//! `NVIDIA_VISIBLE_DEVICES`, annotations or volume mounts.

mod apply;
mod cache;
pub mod generate;
mod registry;
pub mod spec;

pub use apply::{
    apply, apply_edits, device_edits, gather_node_facts, host_path, needs_host_facts,
    remove_toolkit_hooks, take_toolkit_hooks, toolkit_step, ApplyError, HookPlan, NodeFacts,
    NodeFactsByPath,
};
pub use cache::{SpecCache, RACY_WINDOW};
pub use registry::{Registry, ResolveError, Resolved, DEFAULT_SPEC_DIRS};
pub use spec::{CdiSpec, SpecError};
