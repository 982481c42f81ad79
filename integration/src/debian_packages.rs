//! The front doors the tests drive besides the host's containerd 1.6: Debian trixie's Docker 26
//! (`docker.io`, `docker-cli`) and containerd 1.7, unpacked once per machine by
//! `scripts/debian-packages.sh` into `target/debian-docker/root` and
//! `target/debian-containerd17/root` (a private apt configuration whose archive is the one the
//! host's apt sources name; the host's packages stay untouched).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// An unpacked package set.
#[derive(Debug)]
pub struct Unpacked {
    /// The root the packages were unpacked into (`usr/bin`, `usr/sbin`, ...).
    pub root: PathBuf,
    /// The main package's Debian version, e.g. `26.1.5+dfsg1-9+deb13u1+b1`.
    pub version: String,
}

impl Unpacked {
    /// `usr/bin` of the root.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("usr/bin")
    }

    /// `usr/sbin` of the root.
    pub fn sbin_dir(&self) -> PathBuf {
        self.root.join("usr/sbin")
    }
}

/// Runs `scripts/SCRIPT ARGS... <target>/DIR` (a script that unpacks packages into `DIR/root`
/// and prints the version); the unpacked root and that version.
pub(crate) fn unpack(script: &str, args: &[&str], dir: &str) -> Result<Unpacked> {
    let dir = crate::target_dir().join(dir);
    let script = crate::repo_dir().join("scripts").join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .arg(&dir)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Unpacked {
        root: dir.join("root").canonicalize()?,
        version: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    })
}

/// What `cell` holds, made by `make` on first use; its error, kept as text, on every use.
pub(crate) fn cached<T>(
    cell: &'static OnceLock<Result<T, String>>,
    make: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    cell.get_or_init(|| make().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The environment variable naming an unpacked Docker root to use instead of fetching one:
/// the GPU-host suite's (`scripts/gpu-host-suite.sh`), on a machine that can fetch nothing.
/// Its `version` file holds the version; a `lib` directory in it holds libraries `dockerd`
/// needs beyond glibc.
pub const DOCKER_ROOT_ENV: &str = "NVIDIA_TEST_DOCKER_ROOT";

/// Debian trixie's Docker (`dockerd`, `docker-proxy` in `usr/sbin`; `docker`, `docker-init`
/// in `usr/bin`), fetched on first use, or the root [`DOCKER_ROOT_ENV`] names; an error says
/// why it could not be had.
pub fn docker() -> Result<&'static Unpacked> {
    static CELL: OnceLock<Result<Unpacked, String>> = OnceLock::new();
    cached(&CELL, || match std::env::var_os(DOCKER_ROOT_ENV) {
        Some(root) => given(PathBuf::from(root)),
        None => unpack("debian-packages.sh", &["docker"], "debian-docker"),
    })
}

/// An unpacked Docker root made elsewhere (see [`DOCKER_ROOT_ENV`]).
fn given(root: PathBuf) -> Result<Unpacked> {
    let root = root
        .canonicalize()
        .with_context(|| format!("{DOCKER_ROOT_ENV}={}", root.display()))?;
    let version = std::fs::read_to_string(root.join("version"))
        .with_context(|| format!("{DOCKER_ROOT_ENV}: no version file in {}", root.display()))?;
    let unpacked = Unpacked {
        root,
        version: version.trim().to_owned(),
    };
    if !unpacked.sbin_dir().join("dockerd").is_file() {
        bail!(
            "{DOCKER_ROOT_ENV}: no usr/sbin/dockerd in {}",
            unpacked.root.display()
        );
    }
    Ok(unpacked)
}

/// Debian trixie's containerd 1.7 (`containerd`, `ctr`, `containerd-shim-runc-v2` in
/// `usr/bin`), fetched on first use; an error says why it could not be.
pub fn containerd17() -> Result<&'static Unpacked> {
    static CELL: OnceLock<Result<Unpacked, String>> = OnceLock::new();
    cached(&CELL, || {
        unpack(
            "debian-packages.sh",
            &["containerd17"],
            "debian-containerd17",
        )
    })
}

/// `release` when the running test can run here: `None` after recording the test as skipped
/// where it cannot (no root, no containerd) or `release` could not be fetched (`what` names it).
pub fn or_skip(
    what: &str,
    release: impl FnOnce() -> Result<&'static Unpacked>,
) -> Option<&'static Unpacked> {
    if !crate::can_run_containerd() {
        return None;
    }
    match release() {
        Ok(r) => Some(r),
        Err(e) => {
            crate::skip(&format!("{what} could not be fetched: {e:#}"));
            None
        }
    }
}
