//! The GPU library of `containerd-shim-nvidia-v2`, pure: the configuration, GPU requests,
//! `NVIDIA_REQUIRE_*`, the driver inventory as values, device selection, CDI specs and their
//! application, the inventory's edits, the plan of a Create, the ld cache format, CUDA forward
//! compat and `/proc/driver/nvidia` overlay decisions. It holds no ttrpc and no containerd
//! client, and it never reaches the host: what it decides from (files, directory listings, node
//! numbers, ELF facts) is read by `nvidia-shim-core-host` and handed in as values, so every
//! decision is testable with literals.
//!
//! The rule is enforced, not only stated: `core/clippy.toml` lists the file-system, process and
//! environment calls and types of `std`, denied below (`cargo clippy -p nvidia-shim-core` fails
//! on a `std::fs::read` or a `Path::exists` anywhere in this crate), the crate forbids `unsafe`
//! and has no `libc`, `nix`, `rustix` or NVML dependency to reach the host through.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod cdi;
pub mod compat;
pub mod config;
pub mod edits;
pub mod inventory;
pub mod ldcache;
pub mod plan;
pub mod proc_overlay;
pub mod quote;
pub mod request;
pub mod require;
pub mod select;

pub use config::{Config, ConfigError};
pub use oci_spec;
pub use request::{GpuRequest, RequestError, RequestPolicy};
