//! The driver inventory of a shim: discovered once (NVML when it can answer for the configured
//! driver, else `/proc` and the driver root's files), kept in memory while the driver is
//! unchanged, and shared with the next shim through the on-disk cache (`cache_dir`).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use nvidia_shim_core::inventory::{DiscoverError, Inventory, Roots, DRIVER_ROOT_CANDIDATES};
use nvidia_shim_core::Config;
use nvidia_shim_core_host::discover::cache::{CacheKey, InventoryCache, Lookup};
use nvidia_shim_core_host::discover::{self, detect_driver_root, nvml};

/// The host's own `/proc`, the only one NVML answers for.
const HOST_PROC: &str = "/proc";

/// Discovers the driver under the configured roots, detecting the driver root when unset.
pub fn discover(config: &Config) -> std::result::Result<Inventory, DiscoverError> {
    let mut inv = discover_files(config)?;
    if !config.nvml {
        inv.nvml_unavailable = Some("NVML is off in the shim's config (nvml = false)".to_owned());
        return Ok(inv);
    }
    if config.proc_root != Path::new(HOST_PROC) {
        // NVML talks to the kernel driver of this host, not to the one `proc_root` describes;
        // and without a loaded driver, NVML run as root creates `/dev/nvidia*` nodes itself.
        inv.nvml_unavailable = Some(format!(
            "NVML unavailable: proc_root is {}, not {HOST_PROC}, so NVML would not answer for that driver",
            config.proc_root.display()
        ));
        return Ok(inv);
    }
    match nvml::enrich(&mut inv) {
        Ok(()) => {
            inv.nvml_unavailable = None;
            log::info!(
                "NVML: CUDA {}, {} GPUs, {} MIG devices",
                inv.cuda_version.as_deref().unwrap_or("?"),
                inv.gpus.len(),
                inv.mig.len()
            )
        }
        Err(e) => {
            log::info!("NVML not used ({e}): GPU arch and brand and MIG UUIDs are unknown");
            inv.nvml_unavailable = Some(format!("NVML unavailable: {e}"));
        }
    }
    Ok(inv)
}

/// The NVML-free inventory, with the driver root detected when the config leaves it unset.
fn discover_files(config: &Config) -> std::result::Result<Inventory, DiscoverError> {
    let mut roots = Roots {
        driver_root: config.driver_root.clone().unwrap_or_else(|| "/".into()),
        dev_root: config.dev_root.clone(),
        proc_root: config.proc_root.clone(),
    };
    let inv = discover::inventory(&roots)?;
    if config.driver_root.is_some() {
        return Ok(inv);
    }
    roots.driver_root = detect_driver_root(
        Path::new("/"),
        DRIVER_ROOT_CANDIDATES,
        &inv.driver_version,
        inv.arch,
    )?;
    if roots.driver_root == Path::new("/") {
        return Ok(inv);
    }
    discover::inventory_for(&roots, inv.arch)
}

/// Discovers once, serves many Creates.
#[derive(Debug, Default)]
pub struct Inventories {
    cache: Mutex<Option<(CacheKey, Arc<Inventory>)>>,
}

impl Inventories {
    /// The driver inventory: from memory while the driver is unchanged, else from the on-disk
    /// cache (`cache_dir`), else discovered (and stored for the next shim).
    pub fn get(&self, config: &Config) -> Result<Arc<Inventory>, DiscoverError> {
        let key = CacheKey::read(
            &config.proc_root,
            config.driver_root.as_deref(),
            &config.dev_root,
            config.nvml,
        )?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((k, inv)) = cache.as_ref() {
            if *k == key {
                return Ok(Arc::clone(inv));
            }
        }
        let disk = (!config.cache_dir.as_os_str().is_empty())
            .then(|| InventoryCache::new(&config.cache_dir));
        let cached = match disk.as_ref().map(|d| d.load(&key)) {
            Some(Lookup::Hit(inv)) => {
                log::debug!("driver inventory from {}", config.cache_dir.display());
                Some(*inv)
            }
            Some(Lookup::Refused { path, reason }) => {
                log::warn!(
                    "driver inventory cache {} refused: {reason}; discovering instead",
                    path.display()
                );
                None
            }
            Some(Lookup::Discarded { path, reason }) => {
                log::warn!(
                    "discarded driver inventory cache {}: {reason}",
                    path.display()
                );
                None
            }
            Some(Lookup::Miss) | None => None,
        };
        let inv = match cached {
            Some(inv) => inv,
            None => {
                let inv = discover(config)?;
                log::info!(
                    "discovered NVIDIA driver {} with {} GPU(s) under {}",
                    inv.driver_version,
                    inv.gpus.len(),
                    inv.roots.driver_root.display()
                );
                if let Some(Err(e)) = disk.as_ref().map(|d| d.store(&key, &inv)) {
                    log::warn!(
                        "cannot cache the driver inventory in {}: {e}",
                        config.cache_dir.display()
                    );
                }
                inv
            }
        };
        let inv = Arc::new(inv);
        *cache = Some((key, Arc::clone(&inv)));
        Ok(inv)
    }
}
