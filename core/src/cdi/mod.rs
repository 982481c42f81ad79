//! Container Device Interface: the spec file format (JSON or YAML, versions 0.3.0 to 1.1.0,
//! the files read by the host), qualified device names resolved against the specs, specs
//! generated from the inventory, and their edits applied to an OCI spec. containerd 1.6 has no
//! CDI of its own, so the shim resolves names that reach it through `NVIDIA_VISIBLE_DEVICES`,
//! annotations or volume mounts.

mod apply;
pub mod generate;
mod registry;
pub mod spec;

pub use apply::{
    apply_edits, device_edits, host_path, needs_host_facts, nodes_to_stat, remove_toolkit_hooks,
    take_toolkit_hooks, toolkit_step, ApplyError, HookPlan, NodeFacts, NodeFactsByPath,
};
pub use registry::{LoadedFile, Registry, ResolveError, Resolved, DEFAULT_SPEC_DIRS};
pub use spec::{CdiSpec, SpecError};
