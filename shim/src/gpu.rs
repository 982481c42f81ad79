//! GPU injection in Create: read the request from the bundle's spec, apply CDI devices from
//! spec files on disk, discover the driver (once per shim, cached on disk for the next shim,
//! rediscovered when the driver changes), enforce `NVIDIA_REQUIRE_*`, edit the spec and write
//! it back, and create the SONAME links and ld cache in the rootfs. No hook, no
//! `nvidia-container-cli`: libcontainer then creates the nodes and mounts like any others.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use nvidia_shim_core::cdi::{self, HookPlan, Registry};
use nvidia_shim_core::compat::{compat_for, Decision};
use nvidia_shim_core::discover::cache::{CacheKey, InventoryCache, Lookup};
use nvidia_shim_core::discover::{
    detect_driver_root, nvml, Arch, DiscoverError, GpuDevice, Inventory, Roots,
    DRIVER_ROOT_CANDIDATES,
};
use nvidia_shim_core::edits::{apply, edits_for, set_env, ContainerEdits};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::proc_overlay::{proc_overlay, ProcOverlay, CONTAINER_PROC_DRIVER};
use nvidia_shim_core::quote::{bounded, MAX_QUOTED};
use nvidia_shim_core::request::{DeviceId, DeviceSelection, GpuRequest};
use nvidia_shim_core::require::{check, cuda_for_driver, DeviceFacts, HostFacts, Version};
use nvidia_shim_core::rootfs::{LinkOutcome, Rootfs};
use nvidia_shim_core::select::{select, BUILTIN_CDI_KINDS};
use nvidia_shim_core::Config;

use crate::bundle::Bundle;
use crate::error::{Result, ShimError};
use crate::ldplan::LdPlan;

/// What an injection did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// GPUs given, by UUID.
    pub gpus: Vec<String>,
    /// Device nodes added.
    pub devices: usize,
    /// Files mounted.
    pub mounts: usize,
    /// The `/proc/driver/nvidia` overlay to attach once the container exists: (host source in
    /// the bundle, container target).
    pub proc_mounts: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Discovers once, injects many times.
#[derive(Debug, Default)]
pub struct GpuInjector {
    cache: Mutex<Option<(CacheKey, Arc<Inventory>)>>,
}

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
    let inv = Inventory::discover(&roots)?;
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
    Inventory::discover_for(&roots, inv.arch)
}

/// The request as errors name it: `NVIDIA_VISIBLE_DEVICES=...` (its value bounded), or a
/// description when the request comes from elsewhere.
fn request_text(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| {
            env.iter()
                .rev()
                .find_map(|e| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
                .map(|v| format!("NVIDIA_VISIBLE_DEVICES={}", bounded(v, MAX_QUOTED)))
        })
        .unwrap_or_else(|| "the container's GPU request".to_owned())
}

impl GpuInjector {
    /// The driver inventory: from memory while the driver is unchanged, else from the on-disk
    /// cache (`cache_dir`), else discovered (and stored for the next shim).
    fn inventory(&self, id: &str, config: &Config, what: &str) -> Result<Arc<Inventory>> {
        let no_driver = |e: DiscoverError| ShimError::FailedPrecondition {
            id: id.to_owned(),
            reason: format!("{what} asks for GPUs, but {e}"),
        };
        let key = CacheKey::read(
            &config.proc_root,
            config.driver_root.as_deref(),
            &config.dev_root,
            config.nvml,
        )
        .map_err(no_driver)?;
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
                let inv = discover(config).map_err(no_driver)?;
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

    /// Injects what the container at `bundle` asks for. `Ok(None)` when it asks for nothing:
    /// the spec is then not rewritten (byte for byte).
    ///
    /// CDI names whose kind has a spec in `cdi_spec_dirs` are applied from that spec; the
    /// NVIDIA kinds without one, and every other request form, come from driver discovery.
    pub fn inject(&self, id: &str, bundle: &Bundle, config: &Config) -> Result<Option<Injected>> {
        let mut spec: Spec = bundle.load_spec(id)?;
        let what = request_text(&spec);
        let invalid = |reason: String| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason,
        };
        let request = GpuRequest::from_spec(&spec, &config.request_policy())
            .map_err(|e| invalid(format!("GPU request: {e}")))?;
        if request.env_ignored {
            log::warn!("container {id}: NVIDIA_VISIBLE_DEVICES ignored: unprivileged and accept_envvar_when_unprivileged = false");
        }
        if request.devices.is_void() {
            return Ok(None);
        }
        let registry = names_cdi(&request.devices).then(|| Registry::load(&config.cdi_spec_dirs));
        let (cdi_names, from_driver) = split_cdi(&request.devices, registry.as_ref());
        let mut plan = HookPlan::default();
        let mut uuids = Vec::new();
        if let Some(registry) = registry.as_ref().filter(|_| !cdi_names.is_empty()) {
            let resolved = registry
                .resolve(&cdi_names)
                .map_err(|e| invalid(format!("{what}: {e}")))?;
            plan = cdi::apply(&mut spec, &resolved).map_err(|e| invalid(e.to_string()))?;
            uuids.extend(cdi_names.iter().cloned());
        }
        let mut edits = ContainerEdits::default();
        // The host driver's version when compute libraries go in, for CUDA forward compat.
        let mut compat_host = plan.cuda_compat_host_version.clone();
        let mut overlay = ProcOverlay::default();
        if let Some(devices) = from_driver {
            let inventory = self.inventory(id, config, &what)?;
            let gpus = select(&inventory, &devices).map_err(|e| invalid(format!("{what}: {e}")))?;
            check_requirements(id, config, &request, &inventory, &gpus)?;
            let request = GpuRequest {
                devices,
                ..request.clone()
            };
            edits = edits_for(&inventory, &request).map_err(|e| invalid(format!("{what}: {e}")))?;
            if !matches!(request.devices, DeviceSelection::NoGpu) {
                uuids.extend(gpus.iter().map(|g| g.uuid.clone()));
            }
            apply(&mut spec, &edits);
            overlay =
                proc_overlay(&inventory, &request).map_err(|e| invalid(format!("{what}: {e}")))?;
            if request.capabilities.needs_compute() {
                compat_host = Some(inventory.driver_version.clone());
            }
        } else if requirements_apply(config, &request)
            && config.proc_root.join("driver/nvidia/version").exists()
        {
            // Only CDI devices from disk: the host's driver still answers NVIDIA_REQUIRE_*
            // (discovery only when there is a requirement to check).
            let inventory = self.inventory(id, config, &what)?;
            check_requirements(id, config, &request, &inventory, &[])?;
        }
        // No hook or runtime after us may act on the request again.
        set_env(&mut spec, &["NVIDIA_VISIBLE_DEVICES=void".to_owned()]);
        bundle.write_spec(id, &spec)?;
        let rootfs_err = |e: nvidia_shim_core::rootfs::RootfsError| ShimError::Runtime {
            id: id.to_owned(),
            op: "inject",
            message: e.to_string(),
        };
        let rootfs = Rootfs::open(&bundle.rootfs()).map_err(rootfs_err)?;
        let arch = Arch::host().unwrap_or(Arch::X86_64);
        let mut libs = LdPlan::new(arch, &edits.ld_cache);
        libs.add_cdi_mounts(&spec, &plan.ld_folders);
        let compat_host = compat_host.or_else(|| mounted_libcuda_version(&spec));
        if let Some(host) = compat_host.filter(|_| config.cuda_compat) {
            match compat_for(&rootfs, &host) {
                Decision::Use(lib) => libs.prefer_compat(&rootfs, &lib),
                Decision::Skip(lib, why) => log::info!(
                    "container {id}: CUDA forward compat {} not used: {why}",
                    lib.path.display()
                ),
                Decision::NoCompat => {}
            }
        }
        let links = edits
            .symlinks
            .iter()
            .chain(&plan.symlinks)
            .chain(&libs.links)
            .map(|(link, target)| (link.as_path(), target.as_str()));
        for (link, target, outcome) in rootfs.symlinks(links).map_err(rootfs_err)? {
            match outcome {
                LinkOutcome::Replaced(old) => log::info!(
                    "container {id}: the image's {} pointed at {}; now at {target}",
                    link.display(),
                    old.display(),
                ),
                LinkOutcome::KeptEntry => log::warn!(
                    "container {id}: the image's {} is not a symlink and is left in place; the ld cache points {} at the injected library",
                    link.display(),
                    link.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                ),
                LinkOutcome::Created | LinkOutcome::Unchanged => {}
            }
        }
        libs.write(&rootfs).map_err(rootfs_err)?;
        let proc_mounts = overlay_sources(id, bundle, &overlay)?;
        Ok(Some(Injected {
            proc_mounts,
            gpus: uuids,
            devices: spec
                .linux()
                .as_ref()
                .and_then(|l| l.devices().as_ref())
                .map_or(0, Vec::len),
            mounts: edits.mounts.len(),
        }))
    }
}

/// Writes the overlay's sources into the bundle (a read-only `params` copy, an empty
/// directory and an empty file) and pairs them with their targets in the container; none
/// when the host kernel has no `/proc/driver/nvidia`.
fn overlay_sources(
    id: &str,
    bundle: &Bundle,
    overlay: &ProcOverlay,
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut mounts = Vec::new();
    // The container's /proc is this kernel's: without the driver's tree here there is nothing
    // to cover there (fake driver roots in tests), and no worker needs to run.
    if !Path::new(CONTAINER_PROC_DRIVER).exists() {
        return Ok(mounts);
    }
    let write_err = |what: &Path, e| ShimError::io(id, format!("write {}", what.display()), e);
    let write_read_only = |file: &Path, content: &[u8]| {
        std::fs::write(file, content)
            .and_then(|()| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)))
            .map_err(|e| write_err(file, e))
    };
    if let Some(params) = &overlay.params {
        let file = bundle.path().join("nvidia-params");
        write_read_only(&file, params)?;
        mounts.push((file, Path::new(CONTAINER_PROC_DRIVER).join("params")));
    }
    if !overlay.hidden.is_empty() {
        let empty = bundle.path().join("nvidia-empty");
        match std::fs::create_dir(&empty) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(write_err(&empty, e))
            }
            _ => {}
        }
        mounts.extend(overlay.hidden.iter().map(|h| (empty.clone(), h.clone())));
    }
    if !overlay.hidden_files.is_empty() {
        let empty = bundle.path().join("nvidia-empty-file");
        write_read_only(&empty, b"")?;
        mounts.extend(
            overlay
                .hidden_files
                .iter()
                .map(|h| (empty.clone(), h.clone())),
        );
    }
    Ok(mounts)
}

/// Whether the container has `NVIDIA_REQUIRE_*` terms that are to be enforced.
fn requirements_apply(config: &Config, request: &GpuRequest) -> bool {
    config.check_requirements && !request.disable_require && !request.requirements.is_empty()
}

/// Enforces `NVIDIA_REQUIRE_*` unless disabled, against the host's driver and `gpus`.
fn check_requirements(
    id: &str,
    config: &Config,
    request: &GpuRequest,
    inv: &Inventory,
    gpus: &[&GpuDevice],
) -> Result<()> {
    if !requirements_apply(config, request) {
        return Ok(());
    }
    let driver = Version::parse(&inv.driver_version);
    let host = HostFacts {
        cuda: inv
            .cuda_version
            .as_deref()
            .and_then(Version::parse)
            .or_else(|| driver.as_ref().and_then(cuda_for_driver)),
        driver,
        unknown_because: inv.nvml_unavailable.clone(),
    };
    let devices: Vec<DeviceFacts> = gpus
        .iter()
        .map(|g| DeviceFacts {
            arch: g.arch.clone(),
            brand: g.brand.clone(),
        })
        .collect();
    check(&request.requirements, &host, &devices).map_err(|e| ShimError::FailedPrecondition {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

/// Whether the selection names any device by a CDI name.
fn names_cdi(devices: &DeviceSelection) -> bool {
    matches!(devices, DeviceSelection::List(ids) if ids.iter().any(|i| matches!(i, DeviceId::Cdi { .. })))
}

/// Splits a selection into CDI names served by spec files on disk and the rest, which driver
/// discovery serves (`None` when nothing is left for it).
fn split_cdi(
    devices: &DeviceSelection,
    registry: Option<&Registry>,
) -> (Vec<String>, Option<DeviceSelection>) {
    let (DeviceSelection::List(ids), Some(registry)) = (devices, registry) else {
        return (Vec::new(), Some(devices.clone()));
    };
    let mut names = Vec::new();
    let mut rest = Vec::new();
    for id in ids {
        match id {
            DeviceId::Cdi { kind, .. }
                if registry.has_kind(kind) || !BUILTIN_CDI_KINDS.contains(&kind.as_str()) =>
            {
                names.push(id.to_string());
            }
            _ => rest.push(id.clone()),
        }
    }
    let rest = (!rest.is_empty()).then_some(DeviceSelection::List(rest));
    (names, rest)
}

/// The driver version of a `libcuda.so.<version>` a CDI spec mounts, for CUDA forward compat
/// when the spec carries no `enable-cuda-compat` hook (specs generated without hooks).
fn mounted_libcuda_version(spec: &Spec) -> Option<String> {
    spec.mounts().as_ref()?.iter().find_map(|m| {
        let name = m.destination().file_name()?.to_str()?;
        let version = name.strip_prefix("libcuda.so.")?;
        (version.matches('.').count() >= 1 && Version::parse(version).is_some())
            .then(|| version.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_request_leaves_the_spec_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        // Odd formatting on purpose: a rewrite would normalise it.
        let original = "{\"ociVersion\":\"1.0.2\",  \"process\":{\"user\":{\"uid\":0,\"gid\":0},\"cwd\":\"/\",\"args\":[\"sh\"],\"env\":[\"PATH=/bin\",\"NVIDIA_VISIBLE_DEVICES=void\"]},\"root\":{\"path\":\"rootfs\"}}";
        std::fs::write(dir.path().join("config.json"), original).unwrap();
        let got = GpuInjector::default()
            .inject("c1", &Bundle::new(dir.path()), &Config::default())
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            original
        );
    }

    #[test]
    fn malformed_env_value_names_the_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","env":["NVIDIA_VISIBLE_DEVICES=gpu0"]},"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        let err = GpuInjector::default()
            .inject("c2", &Bundle::new(dir.path()), &Config::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("container c2") && err.contains("gpu0"),
            "{err}"
        );
    }
}
