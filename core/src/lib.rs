//! The GPU library of `containerd-shim-nvidia-v2`: configuration and GPU requests today;
//! discovery, requirements, CDI and OCI spec edits as they land. It holds no ttrpc and no containerd
//! client, and reaches the host only through paths it is given, so it is testable without a GPU.
#![warn(missing_docs)]

pub mod cdi;
pub mod compat;
pub mod config;
pub mod discover;
pub mod edits;
pub mod elf;
pub mod ldcache;
pub mod plan;
pub mod proc_overlay;
pub mod quote;
pub mod regular_file;
pub mod request;
pub mod require;
pub mod rootfs;
pub mod select;
pub mod untrusted;

pub use config::{Config, ConfigError};
pub use oci_spec;
pub use request::{GpuRequest, RequestError, RequestPolicy};
