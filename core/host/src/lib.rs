//! Host access of the GPU library of `containerd-shim-nvidia-v2`: everything `nvidia-shim-core`
//! (the pure model) decides from is read here and handed to it as values. Driver discovery and
//! NVML, the on-disk inventory cache, CDI spec files and their cache, the shim's config file,
//! the facts of one Create (the host snapshot), bounded reads of files someone else controls,
//! ELF facts of libraries, and the one confined root every rootfs and driver root path is
//! resolved in (`openat2(RESOLVE_IN_ROOT)`, through `rustix`).
#![warn(missing_docs)]

pub mod cdi;
pub mod config;
pub mod discover;
pub mod elf;
pub mod regular_file;
pub mod root;
pub mod snapshot;
pub mod untrusted;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
