//! Driver discovery: what the host's NVIDIA driver offers (GPUs, device nodes, libraries,
//! binaries, firmware), read without NVML from `/proc`, `/dev` and a driver root, each under a
//! root the caller chooses so tests can use fake trees.

mod arch;
pub mod cache;
mod files;
mod gated;
mod in_root;
mod ipc;
mod libraries;
pub mod mig;
pub mod nvml;
mod procfs;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
#[cfg(any(test, feature = "fixture"))]
pub mod layouts;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use arch::Arch;
pub use files::{DriverBinary, BINARIES, BINARY_DIRS, GRAPHICS_CONFIGS};
pub use gated::gated;
pub use in_root::DriverRoot;
pub use ipc::{endpoints_for, mps_pipe_dir, present_endpoints, IpcEndpoint, DEFAULT_MPS_PIPE_DIR};
pub use libraries::{
    group_of, DriverLibrary, LibraryGroup, LibrarySet, CORE_LIBRARIES, LD_CACHE, LIBRARIES,
};
pub use mig::MigDevice;

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

/// Finds the driver root among `candidates` (relative to `host_root`): the first where
/// `libnvidia-ml.so.<version>` of `arch` is found the way libraries are (its ld cache, then its
/// library directories, symlinks followed).
pub fn detect_driver_root(
    host_root: &Path,
    candidates: &[&str],
    version: &str,
    arch: Arch,
) -> Result<PathBuf, DiscoverError> {
    let mut searched = Vec::new();
    for c in candidates {
        let root = host_root.join(c.trim_start_matches('/'));
        let Ok(opened) = DriverRoot::open(&root) else {
            searched.push(root.display().to_string());
            continue;
        };
        let set = libraries::libraries(&opened, arch, version);
        if set.libraries.iter().any(|l| l.name() == "libnvidia-ml") {
            return Ok(root);
        }
        searched.extend(set.searched.iter().map(|p| p.display().to_string()));
    }
    Err(DiscoverError::NoDriverRoot {
        version: version.to_owned(),
        tried: searched.join(", "),
    })
}

impl Inventory {
    /// Discovers the driver without NVML for the architecture this shim runs on.
    /// `roots.driver_root` is used as given.
    pub fn discover(roots: &Roots) -> Result<Self, DiscoverError> {
        let arch = Arch::host().ok_or_else(|| DiscoverError::Parse {
            path: PathBuf::from("/"),
            reason: format!("no NVIDIA driver for {}", std::env::consts::ARCH),
        })?;
        Self::discover_for(roots, arch)
    }

    /// Discovers the driver's `arch` files without NVML. `roots.driver_root` is used as given.
    pub fn discover_for(roots: &Roots, arch: Arch) -> Result<Self, DiscoverError> {
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
        let root = DriverRoot::open(&roots.driver_root).map_err(|source| DiscoverError::Read {
            path: roots.driver_root.clone(),
            source,
        })?;
        let LibrarySet {
            libraries,
            searched,
        } = libraries::libraries(&root, arch, &driver_version);
        Ok(Self {
            cuda_version: None,
            nvml_unavailable: Some(NVML_NOT_TRIED.to_owned()),
            mig,
            mig_minors,
            arch,
            gpus,
            ctl,
            uvm: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-uvm"),
            uvm_tools: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-uvm-tools"),
            modeset: DeviceNode::probe(&roots.dev_root, "/dev/nvidia-modeset"),
            gpu_nodes,
            binaries: files::binaries(&root, &libraries),
            firmware: files::firmware(&root, &driver_version, &libraries),
            graphics_configs: files::graphics_configs(&root),
            libraries,
            library_search: searched,
            driver_version,
            char_majors,
            roots: roots.clone(),
        })
    }

    /// The library named `name` (`libcuda`), if found.
    pub fn library(&self, name: &str) -> Option<&DriverLibrary> {
        self.libraries.iter().find(|l| l.name() == name)
    }
}

#[cfg(test)]
mod tests;
