//! Test harness for `containerd-shim-nvidia-v2` against a real containerd: a private
//! containerd per test (own root, state, sockets and config in a temp dir, the freshly built
//! shim on its PATH, stopped by its PID), test images written as OCI layouts, and checks that
//! nothing is left behind.

/// Builder methods that each set one field: `field(value)` gives the field `value` (`impl
/// Into` the field's type; wrapped in `Some` for the fields marked `Some`).
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty $(=> $some:ident)?;)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: impl Into<$ty>) -> Self {
                self.$field = $($some)?(value.into());
                self
            }
        )*
    };
}

pub mod checks;
pub mod command;
pub mod containerd;
pub mod cri;
pub mod ctr_run;
pub mod debian_driver;
pub mod debian_packages;
pub mod docker;
pub mod gpu;
pub mod image;
pub mod leftovers;
pub mod podman;
pub mod probe;
pub mod pty;
pub mod task_api;

use std::path::PathBuf;

/// The repository's root (the workspace holding this crate).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target directory: `$CARGO_TARGET_DIR`, else `target` in the repository.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"))
}

/// The shim binary under test: `$NVIDIA_SHIM_BIN`, else the workspace's debug build.
pub fn shim_binary() -> PathBuf {
    match std::env::var_os("NVIDIA_SHIM_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("debug").join("containerd-shim-nvidia-v2"),
    }
}

/// Whether the test runs as root; when not, records it as skipped because `why` needs root.
pub fn is_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(&format!("needs root ({why})"));
    }
    root
}

/// The running test's name (`group::test`): libtest runs each test on a thread named after it.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(not a test thread)")
        .to_owned()
}

/// Says that the running test is skipped and why: on stderr, and as a line in the file named
/// by `NVIDIA_TEST_SKIPS` when set, so that `scripts/test.sh` reports skips as skips, not
/// passes.
pub fn skip(why: &str) {
    skip_part("", why);
}

/// [`skip`] for the part `part` of the running test that cannot run here (the test's other
/// parts run); the whole test when `part` is empty.
pub fn skip_part(part: &str, why: &str) {
    let mut test = test_name();
    if !part.is_empty() {
        test = format!("{test} ({part})");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(path) = std::env::var_os("NVIDIA_TEST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line: tests skip in parallel, and `writeln!` writes piecewise.
            let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
        }
    }
}

/// Whether the tests that need root and containerd can run; prints why not when they can't.
pub fn can_run_containerd() -> bool {
    if !is_root("containerd, mounts, cgroups") {
        return false;
    }
    if !has_programs(
        &["containerd", "ctr"],
        "containerd/ctr not installed (scripts/test.sh installs them)",
    ) {
        return false;
    }
    if !shim_binary().exists() {
        panic!(
            "{} is missing: build it first (cargo build -p containerd-shim-nvidia-v2)",
            shim_binary().display()
        );
    }
    true
}

/// Whether all of `programs` are on `$PATH`; when one is not, records the test as skipped
/// saying `why`.
pub fn has_programs(programs: &[&str], why: &str) -> bool {
    let all = programs.iter().all(|p| which(p).is_some());
    if !all {
        skip(why);
    }
    all
}

/// Finds `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A container id unique within this machine's test runs.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
