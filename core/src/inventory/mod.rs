//! The driver inventory: what the host's NVIDIA driver offers (GPUs, device nodes, libraries,
//! binaries, firmware, MIG devices, IPC endpoints) as plain values, with the tables and parsers
//! discovery uses. Reading the host is `nvidia-shim-core-host`'s `discover`; this module only
//! describes what it finds and parses the texts it reads.

mod arch;
mod files;
mod ipc;
mod libraries;
pub mod mig;
pub mod procfs;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use arch::Arch;
pub use files::{
    library_prefixes, DriverBinary, BINARIES, BINARY_DIRS, DEBIAN_BINARY_DIR, FIRMWARE_DIRS,
    GRAPHICS_CONFIGS, GRAPHICS_CONFIG_DIRS,
};
pub use ipc::{endpoints_for, IpcEndpoint, DEFAULT_MPS_PIPE_DIR, IPC_RUN_DIRS, IPC_SOCKETS};
pub use libraries::{
    driver_name, group_of, DriverLibrary, LibraryGroup, LibrarySet, CORE_LIBRARIES, LD_CACHE,
    LIBRARIES, LIBRARY_ANCHORS,
};
pub use mig::{MigDevice, MigLayout};

use serde::{Deserialize, Serialize};

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

/// Why discovery failed (the host's reads fail with it; the parsers of [`procfs`] with its
/// `Parse`).
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
    /// The architecture whose libraries were looked for.
    pub arch: Arch,
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
    /// Driver libraries, one per name.
    pub libraries: Vec<DriverLibrary>,
    /// Where libraries were looked for (the root's ld cache, then directories), for messages.
    pub library_search: Vec<PathBuf>,
    /// Driver binaries.
    pub binaries: Vec<DriverBinary>,
    /// GSP firmware, as (host path, container path).
    pub firmware: Vec<(PathBuf, PathBuf)>,
    /// Graphics configuration files (Vulkan, EGL, GLVND), as (host path, container path).
    pub graphics_configs: Vec<(PathBuf, PathBuf)>,
    /// Character device majors by driver name from `/proc/devices` (`nvidia-uvm`,
    /// `nvidia-caps`, ...), for device rules of nodes the host has not created yet.
    pub char_majors: BTreeMap<String, u32>,
    /// The CUDA version the driver supports (NVML only; otherwise derived from the driver
    /// version when requirements are checked).
    pub cuda_version: Option<String>,
    /// Why the NVML-only facts (GPU arch and brand, the CUDA version, MIG UUIDs) are missing;
    /// `None` once NVML answered.
    pub nvml_unavailable: Option<String>,
    /// MIG devices of MIG-enabled GPUs, by parent index then MIG index.
    pub mig: Vec<MigDevice>,
    /// MIG capability minors from `/proc/driver/nvidia-caps/mig-minors` (empty without MIG
    /// support).
    pub mig_minors: BTreeMap<String, u32>,
}

/// The MIG capability minors file, relative to the proc root.
pub const MIG_MINORS: &str = "driver/nvidia-caps/mig-minors";

/// What NVML-free discovery says of NVML before anyone tried it.
pub const NVML_NOT_TRIED: &str = "NVML was not loaded";

impl Inventory {
    /// The library named `name` (`libcuda`), if found.
    pub fn library(&self, name: &str) -> Option<&DriverLibrary> {
        self.libraries.iter().find(|l| l.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_split_matches_glibc() {
        // makedev(195, 255) and makedev(238, 1) as glibc encodes them.
        let enc = |maj: u64, min: u64| {
            ((maj & 0xfffff000) << 32)
                | ((maj & 0xfff) << 8)
                | ((min & 0xffffff00) << 12)
                | (min & 0xff)
        };
        for (maj, min) in [(195, 255), (238, 1), (4095, 1 << 20)] {
            let r = enc(maj, min);
            assert_eq!(
                (u64::from(rdev_major(r)), u64::from(rdev_minor(r))),
                (maj, min)
            );
        }
    }
}
