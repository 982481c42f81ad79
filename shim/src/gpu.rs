//! GPU injection in Create: read the request from the bundle's spec, discover the driver (once
//! per shim, rediscovered when the driver version changes), enforce `NVIDIA_REQUIRE_*`, edit
//! the spec and write it back, and create the SONAME links in the rootfs. No hook, no
//! `nvidia-container-cli`: libcontainer then creates the nodes and mounts like any others.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use nvidia_shim_core::discover::{
    detect_driver_root, DiscoverError, Inventory, Roots, DRIVER_ROOT_CANDIDATES,
};
use nvidia_shim_core::edits::{apply, edits_for};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::request::{DeviceSelection, GpuRequest};
use nvidia_shim_core::require::{check, cuda_for_driver, DeviceFacts, HostFacts, Version};
use nvidia_shim_core::rootfs::Rootfs;
use nvidia_shim_core::select::select;
use nvidia_shim_core::Config;

use crate::bundle::Bundle;
use crate::error::{Result, ShimError};

/// What an injection did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// GPUs given, by UUID.
    pub gpus: Vec<String>,
    /// Device nodes added.
    pub devices: usize,
    /// Files mounted.
    pub mounts: usize,
}

/// Discovers once, injects many times.
#[derive(Debug, Default)]
pub struct GpuInjector {
    cache: Mutex<Option<Arc<Inventory>>>,
}

fn request_text(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| {
            env.iter()
                .rev()
                .find(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
                .cloned()
        })
        .unwrap_or_else(|| "the container's GPU request".to_owned())
}

impl GpuInjector {
    fn inventory(&self, id: &str, config: &Config, what: &str) -> Result<Arc<Inventory>> {
        let no_driver = |e: DiscoverError| ShimError::FailedPrecondition {
            id: id.to_owned(),
            reason: format!("{what} asks for GPUs, but {e}"),
        };
        let version_file = config.proc_root.join("driver/nvidia/version");
        let version = std::fs::read_to_string(&version_file).map_err(|_| {
            no_driver(DiscoverError::NoDriver {
                path: version_file.clone(),
            })
        })?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(inv) = cache.as_ref() {
            if version.contains(&inv.driver_version) {
                return Ok(Arc::clone(inv));
            }
        }
        let mut roots = Roots {
            driver_root: config.driver_root.clone().unwrap_or_else(|| "/".into()),
            dev_root: config.dev_root.clone(),
            proc_root: config.proc_root.clone(),
        };
        let mut inv = Inventory::discover(&roots).map_err(no_driver)?;
        if config.driver_root.is_none() {
            roots.driver_root =
                detect_driver_root(Path::new("/"), DRIVER_ROOT_CANDIDATES, &inv.driver_version)
                    .map_err(no_driver)?;
            inv = Inventory::discover(&roots).map_err(no_driver)?;
        }
        log::info!(
            "discovered NVIDIA driver {} with {} GPU(s) under {}",
            inv.driver_version,
            inv.gpus.len(),
            roots.driver_root.display()
        );
        let inv = Arc::new(inv);
        *cache = Some(Arc::clone(&inv));
        Ok(inv)
    }

    /// Injects what the container at `bundle` asks for. `Ok(None)` when it asks for nothing:
    /// the spec is then not rewritten (byte for byte).
    pub fn inject(&self, id: &str, bundle: &Bundle, config: &Config) -> Result<Option<Injected>> {
        let spec_path = bundle.path().join("config.json");
        let bytes = std::fs::read(&spec_path)
            .map_err(|e| ShimError::io(id, format!("read {}", spec_path.display()), e))?;
        let mut spec: Spec =
            serde_json::from_slice(&bytes).map_err(|e| ShimError::InvalidArgument {
                id: id.to_owned(),
                reason: format!("cannot parse {}: {e}", spec_path.display()),
            })?;
        let what = request_text(&spec);
        let request = GpuRequest::from_spec(&spec, &config.request_policy()).map_err(|e| {
            ShimError::InvalidArgument {
                id: id.to_owned(),
                reason: format!("GPU request: {e}"),
            }
        })?;
        if request.env_ignored {
            log::warn!("container {id}: NVIDIA_VISIBLE_DEVICES ignored: unprivileged and accept_envvar_when_unprivileged = false");
        }
        if request.devices.is_void() {
            return Ok(None);
        }
        let inv = self.inventory(id, config, &what)?;
        let gpus = select(&inv, &request.devices).map_err(|e| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: format!("{what}: {e}"),
        })?;
        if config.check_requirements && !request.disable_require {
            let driver = Version::parse(&inv.driver_version);
            let host = HostFacts {
                cuda: driver.as_ref().and_then(cuda_for_driver),
                driver,
            };
            let devices: Vec<DeviceFacts> = gpus
                .iter()
                .map(|g| DeviceFacts {
                    arch: g.arch.clone(),
                    brand: g.brand.clone(),
                })
                .collect();
            check(&request.requirements, &host, &devices).map_err(|e| {
                ShimError::FailedPrecondition {
                    id: id.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        }
        let edits = edits_for(&inv, &request).map_err(|e| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: format!("{what}: {e}"),
        })?;
        apply(&mut spec, &edits);
        write_spec(id, &spec_path, &spec)?;
        let rootfs_err = |e: nvidia_shim_core::rootfs::RootfsError| ShimError::Runtime {
            id: id.to_owned(),
            op: "inject",
            message: e.to_string(),
        };
        let rootfs = Rootfs::open(&bundle.rootfs()).map_err(rootfs_err)?;
        for (link, target) in &edits.symlinks {
            rootfs.symlink(link, target).map_err(rootfs_err)?;
        }
        update_ld_cache(&rootfs, &edits).map_err(rootfs_err)?;
        let uuids = match &request.devices {
            DeviceSelection::NoGpu => Vec::new(),
            _ => gpus.iter().map(|g| g.uuid.clone()).collect(),
        };
        Ok(Some(Injected {
            gpus: uuids,
            devices: edits.devices.len(),
            mounts: edits.mounts.len(),
        }))
    }
}

/// Where the shim's ld.so.conf.d drop-in goes, so a later `ldconfig` in the container keeps
/// the injected directories.
const LD_CONF_DROP_IN: &str = "/etc/ld.so.conf.d/000-nvidia-container-shim.conf";

/// Adds the injected libraries (by SONAME, at their SONAME links) to the image's
/// `/etc/ld.so.cache`, and writes the ld.so.conf.d drop-in.
fn update_ld_cache(
    rootfs: &Rootfs,
    edits: &nvidia_shim_core::edits::ContainerEdits,
) -> std::result::Result<(), nvidia_shim_core::rootfs::RootfsError> {
    use nvidia_shim_core::ldcache::{merge, Entry, FLAGS_X86_64};
    let entries: Vec<Entry> = edits
        .symlinks
        .iter()
        .filter_map(|(link, _)| {
            Some(Entry {
                flags: FLAGS_X86_64,
                key: link.file_name()?.to_string_lossy().into_owned(),
                value: link.to_string_lossy().into_owned(),
                osversion: 0,
                hwcap: 0,
            })
        })
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let cache = Path::new("/etc/ld.so.cache");
    let merged = merge(rootfs.read_file(cache).as_deref(), &entries);
    rootfs.write_file(cache, &merged, 0o644)?;
    let mut dirs: Vec<String> = edits
        .symlinks
        .iter()
        .filter_map(|(l, _)| Some(l.parent()?.to_string_lossy().into_owned()))
        .collect();
    dirs.sort();
    dirs.dedup();
    rootfs.write_file(
        Path::new(LD_CONF_DROP_IN),
        format!("{}\n", dirs.join("\n")).as_bytes(),
        0o644,
    )
}

/// Replaces `config.json` atomically (libcontainer reads the spec only from the bundle).
fn write_spec(id: &str, path: &Path, spec: &Spec) -> Result<()> {
    let tmp = path.with_extension("json.nvidia-tmp");
    let json = serde_json::to_vec(spec)
        .map_err(|e| ShimError::io(id, "serialize spec", std::io::Error::other(e)))?;
    std::fs::write(&tmp, json)
        .map_err(|e| ShimError::io(id, format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| ShimError::io(id, format!("replace {}", path.display()), e))
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
