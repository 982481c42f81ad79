//! The front doors the tests drive besides the host's containerd 1.6: Debian trixie's Docker 26
//! (`docker.io`, `docker-cli`) and containerd 1.7, unpacked once per machine by
//! `scripts/debian-packages.sh` into `target/debian-docker/root` and
//! `target/debian-containerd17/root` (a private apt configuration whose archive is the one the
//! host's apt sources name; the host's packages stay untouched).

use std::path::{Path, PathBuf};
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn fetch(what: &str, dir: &str) -> Result<Unpacked> {
    let dir = target_dir().join(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-packages.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .arg(&dir)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {what} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Unpacked {
        root: dir.join("root").canonicalize()?,
        version: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    })
}

fn cached(
    cell: &'static OnceLock<Result<Unpacked, String>>,
    what: &str,
    dir: &str,
) -> Result<&'static Unpacked> {
    cell.get_or_init(|| fetch(what, dir).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Debian trixie's Docker (`dockerd`, `docker-proxy` in `usr/sbin`; `docker`, `docker-init`
/// in `usr/bin`), fetched on first use; an error says why it could not be.
pub fn docker() -> Result<&'static Unpacked> {
    static CELL: OnceLock<Result<Unpacked, String>> = OnceLock::new();
    cached(&CELL, "docker", "debian-docker")
}

/// Debian trixie's containerd 1.7 (`containerd`, `ctr`, `containerd-shim-runc-v2` in
/// `usr/bin`), fetched on first use; an error says why it could not be.
pub fn containerd17() -> Result<&'static Unpacked> {
    static CELL: OnceLock<Result<Unpacked, String>> = OnceLock::new();
    cached(&CELL, "containerd17", "debian-containerd17")
}
