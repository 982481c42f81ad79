//! What the binary does when containerd or an operator runs it rather than serving ttrpc:
//! [`shim`] (containerd's `start` and `delete`, the daemon's set-up), [`features`] (`-info`'s
//! OCI features document) and [`cdi`] (`cdi generate`).

pub mod cdi;
pub mod features;
pub mod shim;
