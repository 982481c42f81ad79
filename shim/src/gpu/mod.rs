//! GPU injection in Create, top to bottom: load the inputs (the spec's request, the CDI specs
//! on disk when it names CDI devices, the driver inventory when it needs one, a snapshot of the
//! host and the image), let core's [`plan`] decide, then apply: write the edited spec, make the
//! rootfs's links and ld cache through the confined writer, and write the `/proc/driver/nvidia`
//! overlay's sources for the driver to mount once the container exists. No hook, no
//! `nvidia-container-cli`: libcontainer then creates the nodes and mounts like any others.

mod inventory;
mod overlay;
pub mod proc_mount;
mod rootfs;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use nvidia_shim_core::cdi::{Registry, SpecCache};
use nvidia_shim_core::plan::{
    names_cdi, plan, request_text, split, HostPaths, HostSnapshot, PlanError, PlanInputs,
    PlanPolicy,
};
use nvidia_shim_core::request::GpuRequest;
use nvidia_shim_core::rootfs::Rootfs;
use nvidia_shim_core::Config;

use crate::error::{Result, ShimError};
use crate::runtime::bundle::Bundle;

pub use inventory::{discover, Inventories};

/// What an injection did, for the log and the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// GPUs given, by UUID, and CDI devices, by name.
    pub gpus: Vec<String>,
    /// Device nodes the container now has.
    pub devices: usize,
    /// Driver files and IPC endpoints mounted from the inventory.
    pub mounts: usize,
    /// The `/proc/driver/nvidia` overlay to attach once the container exists: (host source in
    /// the bundle, container target).
    pub proc_mounts: Vec<(PathBuf, PathBuf)>,
}

/// Discovers once, injects many times; CDI spec files are parsed once per change.
#[derive(Debug, Default)]
pub struct GpuInjector {
    inventories: Inventories,
    specs: Mutex<SpecCache>,
}

impl GpuInjector {
    /// Injects what the container at `bundle` asks for. `Ok(None)` when it asks for nothing:
    /// the spec is then not rewritten (byte for byte).
    pub fn inject(&self, id: &str, bundle: &Bundle, config: &Config) -> Result<Option<Injected>> {
        let gpu_err = |source: PlanError| ShimError::Gpu {
            id: id.to_owned(),
            source: Box::new(source),
        };
        let rootfs_err = |source| ShimError::Rootfs {
            id: id.to_owned(),
            source,
        };
        // Load the inputs.
        let mut spec = bundle.load_spec(id)?;
        let request = GpuRequest::from_spec(&spec, &config.request_policy()).map_err(|e| {
            ShimError::InvalidArgument {
                id: id.to_owned(),
                reason: format!("GPU request: {e}"),
            }
        })?;
        if !request.env_ignored.is_empty() {
            log::warn!(
                "container {id}: {} ignored: unprivileged and accept_envvar_when_unprivileged = false",
                request.env_ignored.join(", ")
            );
        }
        if request.devices.is_void() {
            return Ok(None);
        }
        let policy = PlanPolicy::from_config(config);
        let registry = names_cdi(&request.devices).then(|| self.spec_registry(id, config));
        let split = split(
            &request.devices,
            registry.as_deref(),
            policy.cdi_specs_on_disk_first,
        );
        let driver_loaded = || config.proc_root.join("driver/nvidia/version").exists();
        let inventory = if split.needs_inventory(&request, &policy, driver_loaded) {
            let inv = self.inventories.get(config).map_err(|source| {
                gpu_err(PlanError::NoDriver {
                    what: request_text(&spec),
                    source,
                })
            })?;
            Some(inv)
        } else {
            None
        };
        let rootfs = Rootfs::open(&bundle.rootfs_of(&spec)).map_err(rootfs_err)?;
        let host = HostSnapshot::gather(
            &HostPaths::from_config(config),
            &spec,
            &request,
            &split,
            inventory.as_deref(),
            registry.as_deref(),
            Some(&rootfs),
        );
        for (path, why) in host.skipped_sources.iter().chain(&host.image.skipped) {
            log::debug!(
                "container {id}: {} not read for its SONAME: {why}",
                path.display()
            );
        }
        // Plan.
        let Some(plan) = plan(PlanInputs {
            spec: &spec,
            request: &request,
            inventory: inventory.as_deref(),
            registry: registry.as_deref(),
            host: &host,
            policy,
        })
        .map_err(gpu_err)?
        else {
            return Ok(None);
        };
        // Apply.
        plan.apply_to(&mut spec)
            .map_err(|e| gpu_err(PlanError::CdiEdits(e)))?;
        bundle.write_spec(id, &spec)?;
        rootfs::apply(id, &rootfs, &plan.rootfs).map_err(rootfs_err)?;
        let proc_mounts = overlay::overlay_sources(id, bundle, &plan.overlay)?;
        Ok(Some(Injected {
            proc_mounts,
            gpus: plan.gpus,
            devices: spec
                .linux()
                .as_ref()
                .and_then(|l| l.devices().as_ref())
                .map_or(0, Vec::len),
            mounts: plan.driver_mounts,
        }))
    }
}

impl GpuInjector {
    /// The CDI specs of the config's directories, parsed again only where a file changed.
    fn spec_registry(&self, id: &str, config: &Config) -> Arc<Registry> {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        let before = specs.parses();
        let registry = specs.registry(&config.cdi_spec_dirs);
        let parsed = specs.parses() - before;
        if parsed > 0 {
            log::debug!(
                "container {id}: parsed {parsed} changed CDI spec file(s) in {:?}",
                config.cdi_spec_dirs
            );
        }
        registry
    }
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
