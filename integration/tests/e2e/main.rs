//! The end-to-end tests of `containerd-shim-nvidia-v2`, one test binary (the harness in
//! `integration/src/` links once): each module is a group of tests, named for what it
//! drives; `cargo test -p nvidia-shim-integration --test e2e GROUP::` runs one group.
//!
//! Each test starts what it needs of its own (a private containerd, dockerd, podman, CRI
//! client), compares with containerd's Go runc shim where it has the behaviour, and checks that
//! nothing is left behind. A test that cannot run here (no root, no GPU, a front door that
//! could not be fetched) says why and is recorded as skipped (`NVIDIA_TEST_SKIPS`), which
//! `scripts/test.sh` takes out of the passes.

mod cancellation;
mod containerd_versions;
mod cri;
mod exec_confinement;
mod exec_tty_oom;
mod front_doors;
mod gpu_debian;
mod gpu_fake;
mod gpu_host;
mod helper_faults;
mod hostile;
mod hostile_files;
mod installer;
mod lifecycle;
mod operator_commands;
mod runc_conformance;
mod user_namespaces;
