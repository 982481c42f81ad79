//! Links `containerd-shim-nvidia-v2` as a position-dependent executable.
//!
//! A PIE binary of this size carries ~32,000 relative relocations: every process start
//! (`start`, the daemon, `delete`, three per container) applies them and copies ~550 KB of
//! `.data.rel.ro` into private memory, which then stays resident in each shim. Linked
//! `-no-pie`, the linker resolves them once and those pages stay shared, clean file pages.
//! This is the trade Debian's `containerd`, `containerd-shim-runc-v2` and `runc` make too:
//! they ship as non-PIE executables. `nvbench` measures the effect.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
