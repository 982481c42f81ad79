//! Core's decisions on fake driver installations discovered from disk: the inventory's edits
//! (and their properties over arbitrary requests), the generated CDI spec, device selection and
//! the `/proc/driver/nvidia` overlay, each over what `discover` and `snapshot` read from a
//! [`FakeDriver`](nvidia_shim_core_host::fixture::FakeDriver). Device nodes need `mknod`: as
//! another user the tests that need them say SKIP.

mod edits;
mod edits_proptests;
mod generate;
mod proc_overlay;
mod select;
mod support;
