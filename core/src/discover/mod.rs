//! Driver discovery: what the host's NVIDIA driver offers (GPUs, device nodes, libraries,
//! binaries, firmware), read without NVML from `/proc`, `/dev` and a driver root, each under a
//! root the caller chooses so tests can use fake trees.

pub mod cache;
mod files;
mod gated;
mod ipc;
pub mod mig;
pub mod nvml;
mod procfs;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use files::{
    soname, soname_of, DriverLibrary, LibraryGroup, BINARIES, BINARY_DIRS, LIBRARY_DIRS,
};
pub use gated::gated;
pub use ipc::{ipc_endpoints, mps_pipe_dir, DEFAULT_MPS_PIPE_DIR};
pub use mig::MigDevice;

use serde::{Deserialize, Serialize};

use crate::request::Capability;

/// Where the host's driver pieces are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    /// Where the driver's files are installed (`/`, or `/usr/local/nvidia` and the like).
    pub driver_root: PathBuf,
    /// Where `dev/nvidia*` are.
    pub dev_root: PathBuf,
    /// Where `driver/nvidia/...` and `devices` are read (normally `/proc`).
    pub proc_root: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            driver_root: PathBuf::from("/"),
            dev_root: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Driver roots tried, in order, when none is configured.
pub const DRIVER_ROOT_CANDIDATES: &[&str] = &[
    "/",
    "/usr/local/nvidia",
    "/run/nvidia/driver",
    "/home/kubernetes/bin/nvidia",
];

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what the driver writes.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No driver is loaded (`/proc/driver/nvidia/version` is missing).
    #[error("no NVIDIA driver: {path} does not exist (is the nvidia kernel module loaded?)")]
    NoDriver {
        /// The file looked for.
        path: PathBuf,
    },
    /// No driver root holds the driver's libraries.
    #[error("no driver libraries of version {version} found under {tried}")]
    NoDriverRoot {
        /// Driver version looked for.
        version: String,
        /// The roots and directories tried.
        tried: String,
    },
    /// A required device node is missing.
    #[error("device node {path} is missing")]
    MissingNode {
        /// The node looked for.
        path: PathBuf,
    },
}

/// A GPU as the driver lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML index (PCI bus order).
    pub index: u32,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// Minor of `/dev/nvidia<minor>`.
    pub minor: u32,
    /// PCI bus id, `dddddddd:bb:dd.f`.
    pub bus_id: String,
    /// The directory name under `/proc/driver/nvidia/gpus`.
    pub proc_dir: String,
    /// Model name.
    pub model: String,
    /// Compute capability (NVML only).
    pub arch: Option<crate::require::Version>,
    /// Brand token (NVML only).
    pub brand: Option<String>,
}

/// A character device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the container (`/dev/nvidia0`).
    pub path: PathBuf,
    /// Path on the host (under the dev root).
    pub host_path: PathBuf,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DeviceNode {
    /// Stats `dev_root/<path>`; `None` when absent or not a character device.
    pub fn probe(dev_root: &Path, path: &str) -> Option<Self> {
        let host_path = dev_root.join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&host_path).ok()?;
        if !meta.file_type().is_char_device() {
            return None;
        }
        let rdev = meta.rdev();
        Some(Self {
            path: PathBuf::from(path),
            host_path,
            major: rdev_major(rdev),
            minor: rdev_minor(rdev),
        })
    }
}

/// The major number of a `st_rdev` (glibc's `major()`; at most 32 bits).
pub fn rdev_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32
}

/// The minor number of a `st_rdev` (glibc's `minor()`; at most 32 bits).
pub fn rdev_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32
}

/// Everything discovered about the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The roots it was read from (with the driver root resolved).
    pub roots: Roots,
    /// Kernel module version, e.g. `580.159.04`.
    pub driver_version: String,
    /// GPUs in NVML index order.
    pub gpus: Vec<GpuDevice>,
    /// `/dev/nvidiactl`.
    pub ctl: DeviceNode,
    /// `/dev/nvidia-uvm`, if present.
    pub uvm: Option<DeviceNode>,
    /// `/dev/nvidia-uvm-tools`, if present.
    pub uvm_tools: Option<DeviceNode>,
    /// `/dev/nvidia-modeset`, if present.
    pub modeset: Option<DeviceNode>,
    /// `/dev/nvidia<minor>` by minor.
    pub gpu_nodes: BTreeMap<u32, DeviceNode>,
    /// Driver libraries.
    pub libraries: Vec<DriverLibrary>,
    /// Driver binaries with the capability each needs.
    pub binaries: Vec<(PathBuf, Capability)>,
    /// GSP firmware.
    pub firmware: Vec<PathBuf>,
    /// Graphics configuration files (Vulkan, EGL, GLVND), as (host path, container path).
    #[serde(default)]
    pub graphics_configs: Vec<(PathBuf, PathBuf)>,
    /// Character device majors by driver name from `/proc/devices` (`nvidia-uvm`,
    /// `nvidia-caps`, ...), for device rules of nodes the host has not created yet.
    pub char_majors: BTreeMap<String, u32>,
    /// The CUDA version the driver supports (NVML only; otherwise derived from the driver
    /// version when requirements are checked).
    #[serde(default)]
    pub cuda_version: Option<String>,
    /// MIG devices of MIG-enabled GPUs, by parent index then MIG index.
    #[serde(default)]
    pub mig: Vec<MigDevice>,
    /// MIG capability minors from `/proc/driver/nvidia-caps/mig-minors` (empty without MIG
    /// support).
    #[serde(default)]
    pub mig_minors: BTreeMap<String, u32>,
}

/// The MIG capability minors file, relative to the proc root.
pub const MIG_MINORS: &str = "driver/nvidia-caps/mig-minors";

/// Finds the driver root among `candidates` (relative to `host_root`): the first holding
/// `libnvidia-ml.so.<version>` in one of [`LIBRARY_DIRS`].
pub fn detect_driver_root(
    host_root: &Path,
    candidates: &[&str],
    version: &str,
) -> Result<PathBuf, DiscoverError> {
    let marker = format!("libnvidia-ml.so.{version}");
    for c in candidates {
        let root = host_root.join(c.trim_start_matches('/'));
        if LIBRARY_DIRS
            .iter()
            .any(|d| root.join(d).join(&marker).is_file())
        {
            return Ok(root);
        }
    }
    Err(DiscoverError::NoDriverRoot {
        version: version.to_owned(),
        tried: candidates.join(", "),
    })
}

impl Inventory {
    /// Discovers the driver without NVML. `roots.driver_root` is used as given.
    pub fn discover(roots: &Roots) -> Result<Self, DiscoverError> {
        let version_file = roots.proc_root.join("driver/nvidia/version");
        if !version_file.exists() {
            return Err(DiscoverError::NoDriver { path: version_file });
        }
        let driver_version = procfs::driver_version(&roots.proc_root)?;
        let gpus = procfs::gpus(&roots.proc_root)?;
        let ctl = DeviceNode::probe(&roots.dev_root, "/dev/nvidiactl").ok_or_else(|| {
            DiscoverError::MissingNode {
                path: roots.dev_root.join("dev/nvidiactl"),
            }
        })?;
        let mut gpu_nodes = BTreeMap::new();
        for g in &gpus {
            let path = format!("/dev/nvidia{}", g.minor);
            let node = DeviceNode::probe(&roots.dev_root, &path).ok_or_else(|| {
                DiscoverError::MissingNode {
                    path: roots.dev_root.join(path.trim_start_matches('/')),
                }
            })?;
            gpu_nodes.insert(g.minor, node);
        }
        let char_majors = procfs::char_majors(&roots.proc_root)?;
        let mig_minors = std::fs::read_to_string(roots.proc_root.join(MIG_MINORS))
            .map(|t| mig::parse_mig_minors(&t))
            .unwrap_or_default();
        let mig = mig::mig_devices(
            &roots.proc_root,
            &roots.dev_root,
            &gpus,
            char_majors.get("nvidia-caps").copied(),
            &mig_minors,
        );
        Ok(Self {
            cuda_version: None,
            mig,
            mig_minors,
            driver_version: driver_version.clone(),
            gpus,
            ctl,
            uvm: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-uvm"),
            uvm_tools: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-uvm-tools"),
            modeset: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-modeset"),
            gpu_nodes,
            libraries: files::libraries(&roots.driver_root, &driver_version)?,
            binaries: files::binaries(&roots.driver_root),
            firmware: files::firmware(&roots.driver_root, &driver_version),
            graphics_configs: files::graphics_configs(&roots.driver_root),
            char_majors,
            roots: roots.clone(),
        })
    }

    /// The path a host file gets in the container: its path with the driver root removed.
    pub fn container_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.roots.driver_root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => host.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
