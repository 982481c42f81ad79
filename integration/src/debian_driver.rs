//! Debian's packaged NVIDIA driver userspace for the real-driver tests: unpacked once per
//! machine by `scripts/debian-nvidia-driver.sh` into `target/debian-nvidia/root` (a private apt
//! configuration; the host's packages stay untouched), with the kernel side faked by
//! [`FakeDriver`] pointed at it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Result};
use nvidia_shim_core_host::fixture::FakeDriver;

use crate::debian_packages::{cached, unpack};
use crate::probe;

/// The unpacked driver.
#[derive(Debug)]
pub struct DebianDriver {
    /// The driver root (a host `/` as Debian's packages leave it).
    pub root: PathBuf,
    /// Its version, e.g. `535.309.01`.
    pub version: String,
}

/// The Debian driver, fetched and unpacked on first use (a failure is an error, not a skip:
/// the packages reach any Debian machine).
pub fn debian_driver() -> Result<&'static DebianDriver> {
    static DRIVER: OnceLock<Result<DebianDriver, String>> = OnceLock::new();
    cached(&DRIVER, || {
        let unpacked = unpack("debian-nvidia-driver.sh", &[], "debian-nvidia")?;
        Ok(DebianDriver {
            root: unpacked.root,
            version: unpacked.version,
        })
    })
}

impl DebianDriver {
    /// A fake kernel side (`/proc/driver/nvidia`, `/dev/nvidia*`) with `gpus` GPUs reporting
    /// this driver's version, whose shim config points at this root.
    pub fn kernel(&self, gpus: u32) -> FakeDriver {
        FakeDriver::builder()
            .gpus(gpus)
            .version(&self.version)
            .driver_root(&self.root)
            .build()
    }

    /// The directories of `root` a host program would load the driver from with
    /// `LD_LIBRARY_PATH` (the alternatives links are absolute, so they only resolve inside the
    /// root; the real files and their relative SONAME links are in `nvidia/current`).
    pub fn host_library_path(&self) -> String {
        let libs = self.root.join("usr/lib/x86_64-linux-gnu");
        format!(
            "{}:{}",
            libs.join("nvidia/current").display(),
            libs.display()
        )
    }
}

impl DebianDriver {
    /// `probe`'s answers (the probe at `probe` run with `probes`) on the host, loading the
    /// driver from this root: the reference a container given the driver must match. It runs
    /// in a mount namespace of its own with an empty `/dev`: as root, NVIDIA's libraries create
    /// the device nodes they miss, which must not happen to the host's `/dev`.
    pub fn host_probe(&self, probe: &Path, probes: &[&str]) -> Result<String> {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs nvprobe-dev /dev && exec \"$@\"")
            .arg("sh")
            .arg(probe)
            .args(probes)
            .env("LD_LIBRARY_PATH", self.host_library_path())
            .output()?;
        if !out.status.success() {
            bail!("host probe: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The probe's `cuInit` and `nvmlInit` codes on the host against this root (100 and 9: no
    /// kernel driver): what a container given this driver must answer.
    pub fn host_codes(&self) -> Result<probe::Codes> {
        static CODES: OnceLock<Result<probe::Codes, String>> = OnceLock::new();
        cached(&CODES, || {
            Ok(probe::codes(
                &self.host_probe(probe::shared()?, &["cuInit", "nvmlInit"])?,
            ))
        })
        .copied()
    }
}
