//! `containerd-shim-nvidia-v2 info [--json] [--config FILE]`: what this node offers to GPU
//! containers, as the shim sees it (the replacement of `nvidia-container-cli info`): the
//! driver and CUDA versions, each GPU with its MIG devices, the driver root and how it was
//! found, per capability the files a container would get (with the host path each resolved
//! to), the IPC endpoints, which discovery source answered, and the inventory cache's state.

use std::path::{Path, PathBuf};

use serde::Serialize;

use nvidia_shim_core::inventory::{Inventory, DRIVER_ROOT_CANDIDATES};
use nvidia_shim_core::request::{Capabilities, Capability};
use nvidia_shim_core::require::{cuda_for_driver, Version};
use nvidia_shim_core::Config;
use nvidia_shim_core_host::discover::cache::{CacheKey, InventoryCache, Lookup};
use nvidia_shim_core_host::discover::{mps_pipe_dir, present_endpoints};

use super::args::Args;

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 info [--json] [--config FILE]

Prints what this node offers to GPU containers: driver and CUDA versions, GPUs and MIG
devices, the driver root, the files each capability injects, IPC endpoints, the discovery
source and the inventory cache.

  --json         one JSON document instead of text
  --config FILE  the shim's config; default /etc/containerd-shim-nvidia/config.toml";

/// Everything `info` reports.
#[derive(Debug, Serialize)]
pub struct NodeInfo {
    /// The kernel module's version.
    pub driver_version: String,
    /// The CUDA version the driver supports.
    pub cuda_driver_version: Option<String>,
    /// Where that CUDA version comes from (`nvml`, or `driver branch` when derived).
    pub cuda_version_source: &'static str,
    /// The driver root.
    pub driver_root: PathBuf,
    /// How the driver root was found.
    pub driver_root_found: String,
    /// `nvml` or `/proc`.
    pub discovery_source: &'static str,
    /// Why NVML did not answer, when it did not.
    pub nvml_unavailable: Option<String>,
    /// The GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Per capability, what a container with it gets.
    pub capabilities: Vec<CapabilityFiles>,
    /// GSP firmware, given with every capability.
    pub firmware: Vec<FileInfo>,
    /// IPC endpoints present now.
    pub ipc: Vec<FileInfo>,
    /// The on-disk inventory cache.
    pub cache: CacheInfo,
}

/// One GPU.
#[derive(Debug, Serialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Device minor (`/dev/nvidia<minor>`).
    pub minor: u32,
    /// UUID.
    pub uuid: String,
    /// PCI bus id.
    pub bus_id: String,
    /// Model name.
    pub model: String,
    /// Whether MIG devices exist on it (MIG mode on, with instances).
    pub mig_enabled: bool,
    /// Its MIG devices.
    pub mig_devices: Vec<MigInfo>,
}

/// One MIG device.
#[derive(Debug, Serialize)]
pub struct MigInfo {
    /// `<gpu>:<mig>`, as `NVIDIA_VISIBLE_DEVICES` names it.
    pub name: String,
    /// GPU instance.
    pub gi: u32,
    /// Compute instance.
    pub ci: u32,
    /// `MIG-` UUID (NVML only).
    pub uuid: Option<String>,
}

impl std::fmt::Display for GpuInfo {
    /// The GPU's line of the text report.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            index,
            minor,
            uuid,
            bus_id,
            model,
            mig_enabled,
            ..
        } = self;
        let mig = if *mig_enabled { "on" } else { "off" };
        write!(
            f,
            "{index} {model} {uuid} bus {bus_id} minor {minor} MIG {mig}"
        )
    }
}

impl std::fmt::Display for MigInfo {
    /// The MIG device's line of the text report.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uuid = self.uuid.as_deref().unwrap_or("");
        write!(f, "MIG {} gi {} ci {} {uuid}", self.name, self.gi, self.ci)
    }
}

/// A file a container gets: where it is on the host and where it goes.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    /// Host path (symlinks resolved).
    pub host: PathBuf,
    /// Path in the container.
    pub container: PathBuf,
}

/// The files of one capability.
#[derive(Debug, Serialize)]
pub struct CapabilityFiles {
    /// The capability's name.
    pub capability: &'static str,
    /// Its driver libraries.
    pub libraries: Vec<FileInfo>,
    /// Its binaries.
    pub binaries: Vec<FileInfo>,
    /// Its configuration files (graphics).
    pub configs: Vec<FileInfo>,
}

/// The on-disk cache's state.
#[derive(Debug, Serialize)]
pub struct CacheInfo {
    /// The cache directory (`""`: disabled).
    pub dir: PathBuf,
    /// `fresh`, `absent`, `disabled`, `refused` or `discarded`.
    pub state: &'static str,
    /// Why, for `refused` and `discarded`.
    pub reason: Option<String>,
}

fn file(host: &Path, container: &Path) -> FileInfo {
    FileInfo {
        host: host.to_owned(),
        container: container.to_owned(),
    }
}

/// Gathers the node's information under `config` (discovery as the shim does it).
pub fn gather(config: &Config) -> Result<NodeInfo, String> {
    let inv = crate::gpu::discover(config).map_err(|e| e.to_string())?;
    let cache = cache_state(config);
    Ok(describe(config, &inv, cache))
}

fn cache_state(config: &Config) -> CacheInfo {
    let info = |state, reason| CacheInfo {
        dir: config.cache_dir.clone(),
        state,
        reason,
    };
    if config.cache_dir.as_os_str().is_empty() {
        return info("disabled", None);
    }
    let key = match CacheKey::read(
        &config.proc_root,
        config.driver_root.as_deref(),
        &config.dev_root,
        config.nvml,
    ) {
        Ok(k) => k,
        Err(e) => return info("absent", Some(e.to_string())),
    };
    match InventoryCache::new(&config.cache_dir).load(&key) {
        Lookup::Hit(_) => info("fresh", None),
        Lookup::Miss => info("absent", None),
        Lookup::Refused { path, reason } => {
            info("refused", Some(format!("{}: {reason}", path.display())))
        }
        Lookup::Discarded { path, reason } => {
            info("discarded", Some(format!("{}: {reason}", path.display())))
        }
    }
}

/// The report for `inv` discovered under `config`: pure but for the IPC endpoints' stat.
fn describe(config: &Config, inv: &Inventory, cache: CacheInfo) -> NodeInfo {
    let (cuda, cuda_source) = match &inv.cuda_version {
        Some(v) => (Some(v.clone()), "nvml"),
        None => (
            Version::parse(&inv.driver_version)
                .as_ref()
                .and_then(cuda_for_driver)
                .map(|v| v.to_string()),
            "driver branch",
        ),
    };
    let driver_root_found = match &config.driver_root {
        Some(_) => "configured (driver_root)".to_owned(),
        None => format!(
            "detected: the first of {} holding libnvidia-ml.so.{}",
            DRIVER_ROOT_CANDIDATES.join(", "),
            inv.driver_version
        ),
    };
    let gpus = inv
        .gpus
        .iter()
        .map(|g| {
            let migs: Vec<MigInfo> = inv
                .mig
                .iter()
                .filter(|m| m.parent == g.index)
                .map(|m| MigInfo {
                    name: format!("{}:{}", m.parent, m.index),
                    gi: m.gi,
                    ci: m.ci,
                    uuid: m.uuid.clone(),
                })
                .collect();
            GpuInfo {
                index: g.index,
                minor: g.minor,
                uuid: g.uuid.clone(),
                bus_id: g.bus_id.clone(),
                model: g.model.clone(),
                mig_enabled: !migs.is_empty(),
                mig_devices: migs,
            }
        })
        .collect();
    let capabilities = Capability::ALL
        .iter()
        .map(|&cap| {
            let only = Capabilities::parse(Some(cap.name()), &Capabilities::default_set(), false)
                .unwrap_or_else(|_| Capabilities::default_set());
            CapabilityFiles {
                capability: cap.name(),
                libraries: inv
                    .libraries
                    .iter()
                    .filter(|l| l.group.wanted(&only))
                    .map(|l| file(&l.path, &l.container_path))
                    .collect(),
                binaries: inv
                    .binaries
                    .iter()
                    .filter(|b| b.capability == cap)
                    .map(|b| file(&b.path, &b.container_path))
                    .collect(),
                configs: if cap == Capability::Graphics {
                    inv.graphics_configs
                        .iter()
                        .map(|(h, c)| file(h, c))
                        .collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    NodeInfo {
        driver_version: inv.driver_version.clone(),
        cuda_driver_version: cuda,
        cuda_version_source: cuda_source,
        driver_root: inv.roots.driver_root.clone(),
        driver_root_found,
        discovery_source: if inv.nvml_unavailable.is_none() {
            "nvml"
        } else {
            "/proc"
        },
        nvml_unavailable: inv.nvml_unavailable.clone(),
        gpus,
        capabilities,
        firmware: inv.firmware.iter().map(|(h, c)| file(h, c)).collect(),
        ipc: present_endpoints(&config.dev_root, &mps_pipe_dir())
            .iter()
            .map(|e| file(&e.host, &e.container))
            .collect(),
        cache,
    }
}

/// ` (why)` after a fact, or nothing.
fn because(why: Option<&str>) -> String {
    why.map(|r| format!(" ({r})")).unwrap_or_default()
}

/// The report as text, one fact per line.
pub fn text(info: &NodeInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let list = |files: &[FileInfo]| -> String {
        files
            .iter()
            .map(|f| {
                if f.host == f.container {
                    format!("    {}\n", f.host.display())
                } else {
                    format!(
                        "    {} (host {})\n",
                        f.container.display(),
                        f.host.display()
                    )
                }
            })
            .collect()
    };
    let _ = writeln!(out, "Driver version:      {}", info.driver_version);
    let _ = writeln!(
        out,
        "CUDA driver version: {} ({})",
        info.cuda_driver_version.as_deref().unwrap_or("unknown"),
        info.cuda_version_source
    );
    let _ = writeln!(
        out,
        "Driver root:         {} ({})",
        info.driver_root.display(),
        info.driver_root_found
    );
    let _ = writeln!(
        out,
        "Discovery:           {}{}",
        info.discovery_source,
        because(info.nvml_unavailable.as_deref())
    );
    let _ = writeln!(
        out,
        "Inventory cache:     {} {}{}",
        info.cache.state,
        info.cache.dir.display(),
        because(info.cache.reason.as_deref())
    );
    let _ = writeln!(out, "GPUs:                {}", info.gpus.len());
    for g in &info.gpus {
        let _ = writeln!(out, "  {g}");
        for m in &g.mig_devices {
            let _ = writeln!(out, "    {m}");
        }
    }
    for c in &info.capabilities {
        let _ = writeln!(out, "Capability {}:", c.capability);
        out.push_str(&list(&c.libraries));
        out.push_str(&list(&c.binaries));
        out.push_str(&list(&c.configs));
    }
    let _ = writeln!(out, "Firmware:");
    out.push_str(&list(&info.firmware));
    let _ = writeln!(out, "IPC endpoints:");
    out.push_str(&list(&info.ipc));
    out
}

/// Runs `info` with `args` (after the command word).
pub fn run(args: &[String]) -> Result<(), String> {
    let args = Args::parse(args, &["--config"], &["--json"])?;
    if let Some(extra) = args.positional.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let config = super::load_config(args.value("--config"))?;
    let info = gather(&config)?;
    if args.has("--json") {
        let json = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", text(&info));
    }
    Ok(())
}
