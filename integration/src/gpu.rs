//! The GPUs of the end-to-end tests, each with the shim configuration file that points at
//! them: a fake driver of N GPUs (real ELF libraries, mknod'ed nodes, a fake
//! `/proc/driver/nvidia`), Debian's packaged driver userspace on a fake kernel side, or this
//! host's real GPUs (where `/dev/nvidiactl` exists; the shim's default configuration).

use std::path::Path;

use anyhow::Result;
use nvidia_shim_core_host::fixture::{FakeDriver, Layout};

use crate::checks::setup;
use crate::command::{stdout_ok, text};
use crate::containerd::Containerd;
use crate::ctr_run::{CtrRun, Seen};
use crate::debian_driver::debian_driver;
use crate::{skip, unique_id};

/// A driver and the shim configuration file (`--runtime-config-path`) pointing at it.
#[derive(Debug)]
pub struct Gpus {
    /// The fake driver, or for Debian's driver its fake kernel side.
    pub driver: FakeDriver,
    /// The shim configuration file.
    pub config: String,
}

impl Gpus {
    /// `n` fake GPUs with the libraries where a distribution puts them; the config in `dir`.
    pub fn fake(dir: &Path, n: u32) -> Result<Self> {
        let driver = FakeDriver::builder().gpus(n).layout(Layout::Distro).build();
        Self::of(dir, driver)
    }

    /// Debian's packaged driver with a fake kernel side of `n` GPUs; the config in `dir`.
    pub fn debian(dir: &Path, n: u32) -> Result<Self> {
        Self::of(dir, debian_driver()?.kernel(n))
    }

    /// `driver` with its configuration ([`FakeDriver::shim_config`]) written in `dir`.
    pub fn of(dir: &Path, driver: FakeDriver) -> Result<Self> {
        let config = write_config(dir, &driver.shim_config())?;
        Ok(Self { driver, config })
    }

    /// Another configuration file for this driver, beside the first, with `extra` TOML
    /// appended (a profile's settings).
    pub fn config_with(&self, extra: &str) -> Result<String> {
        let dir = Path::new(&self.config)
            .parent()
            .unwrap_or(Path::new("/tmp"));
        write_config(dir, &format!("{}{extra}", self.driver.shim_config()))
    }

    /// A `ctr run` of a fresh container with this configuration.
    pub fn ctr_run(&self) -> CtrRun {
        CtrRun::new("gpu").config(&self.config)
    }

    /// Runs `sh -c script` with `env` in a fresh container of `image` (`--rm`) given this
    /// configuration, checks that it left nothing behind, and returns what it showed.
    pub fn run(&self, c: &Containerd, image: &str, env: &[&str], script: &str) -> Result<Seen> {
        self.ctr_run().rm().image(image).env(env).sh(script).seen(c)
    }

    /// `containerd-shim-nvidia-v2 cdi generate --config <this config> ARGS...`: the spec it
    /// prints (nothing with `--output`).
    pub fn cdi_generate(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["cdi", "generate", "--config", &self.config];
        all.extend_from_slice(args);
        let out = crate::command::shim(&all)?;
        stdout_ok("cdi generate", &out)?;
        Ok(text(&out.stdout))
    }
}

/// Writes `toml` as a fresh shim configuration file in `dir`; returns its path.
pub fn write_config(dir: &Path, toml: &str) -> Result<String> {
    let path = dir.join(format!("{}.toml", unique_id("shim")));
    std::fs::write(&path, toml)?;
    Ok(path.display().to_string())
}

/// A private containerd with the busybox image and the GPUs `gpus` makes in its directory, or
/// `None` (said why) where the tests cannot run.
pub fn setup_with(gpus: impl FnOnce(&Path) -> Result<Gpus>) -> Result<Option<(Containerd, Gpus)>> {
    let Some(c) = setup() else {
        return Ok(None);
    };
    let gpus = gpus(c.dir())?;
    Ok(Some((c, gpus)))
}

/// Whether this host has a real NVIDIA GPU (`/dev/nvidiactl`); records the test as skipped
/// when it has none.
pub fn host_has_gpus() -> bool {
    let has = Path::new("/dev/nvidiactl").exists();
    if !has {
        skip("no NVIDIA GPU here (/dev/nvidiactl does not exist)");
    }
    has
}

/// This host's GPUs' UUIDs as the driver lists them in `/proc/driver/nvidia/gpus`, sorted.
pub fn host_uuids() -> Vec<String> {
    let mut uuids: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
                .filter_map(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("GPU UUID:").map(|u| u.trim().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    uuids.sort();
    uuids
}
