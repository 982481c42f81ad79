//! This binary run as `nvidia-container-runtime-hook` (the name `docker run --gpus` needs on
//! dockerd's `PATH`, see `configure::docker_host`): Docker adds it to the spec as a prestart
//! hook. This runtime drops it and injects the GPUs itself; run by any other runtime (Docker
//! with runc as the runtime), it fails the container with one line saying why and the fix,
//! rather than starting it without the GPUs it asked for.

use std::process::ExitCode;

/// The program name Docker runs it by.
pub const NAME: &str = super::configure::docker_host::LEGACY_HOOK;

/// The one line a container gets when this hook is run by another runtime.
pub const MESSAGE: &str = "nvidia-container-runtime-hook: GPUs are given by the io.containerd.nvidia.v2 runtime, which this container does not run under: run it with `--runtime nvidia`, or make that runtime Docker's default (containerd-shim-nvidia-v2 configure docker --set-as-default, then restart Docker)";

/// Runs the hook: always fails, saying so.
pub fn run() -> ExitCode {
    eprintln!("{MESSAGE}");
    ExitCode::FAILURE
}
