//! GPU injection in Create, top to bottom: load the inputs (the spec's request, the CDI specs
//! on disk when it names CDI devices, the driver inventory when it needs one, a snapshot of the
//! host and the image), let core's [`plan`] decide, then apply: edit the spec in memory (the
//! runtime writes it, once), make the rootfs's links and ld cache through the confined writer,
//! and write the `/proc/driver/nvidia` overlay's sources for the runtime to mount once the
//! container exists. No hook, no `nvidia-container-cli`: libcontainer then creates the nodes
//! and mounts like any others. [`GpuInjector`] is the runtime's [`SpecEditor`].

mod inventory;
mod overlay;
mod rootfs;

use std::sync::{Arc, Mutex, PoisonError};

use nvidia_shim_core::cdi::{remove_toolkit_hooks, take_toolkit_hooks, HookPlan, Registry};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::plan::{
    names_cdi, plan, plan_applied_cdi, request_text, split, InjectionPlan, PlanError, PlanInputs,
    PlanPolicy, Split,
};
use nvidia_shim_core::proc_overlay::{params_without_device_modification, ProcOverlay};
use nvidia_shim_core::request::{cli_hook, GpuRequest};
use nvidia_shim_core::Config;
use nvidia_shim_core_host::cdi::SpecCache;
use nvidia_shim_core_host::root::{Root, RootError};
use nvidia_shim_core_host::snapshot::{self, HostPaths};

use crate::error::{Result, ShimError};
use crate::runtime::bundle::{Bundle, EditTarget, Edits, SpecEditor};

pub use inventory::{discover, Inventories};

/// Makes a rootfs plan's links and ld cache in `rootfs` (see `rootfs::apply`): Create's own
/// step, which the CDI hook commands share.
pub fn apply_rootfs_plan(
    id: &str,
    rootfs: &Root,
    plan: &nvidia_shim_core::plan::RootfsPlan,
) -> std::result::Result<(), RootError> {
    rootfs::apply(id, rootfs, plan)
}

/// Discovers once, injects many times; CDI spec files are parsed once per change.
#[derive(Debug, Default)]
pub struct GpuInjector {
    inventories: Inventories,
    specs: Mutex<SpecCache>,
}

impl SpecEditor for GpuInjector {
    /// Injects what the container asks for into its `spec`. `Ok(None)` when it asks for
    /// nothing: the spec is then left as it was, unless a hook asked for GPUs that are not
    /// granted (the hook is taken out, so that it does not run either).
    fn edit(&self, target: &EditTarget<'_>, spec: &mut Spec) -> Result<Option<Edits>> {
        let EditTarget { id, bundle, config } = *target;
        let gpu_err = |source: PlanError| ShimError::Gpu {
            id: id.to_owned(),
            source: Box::new(source),
        };
        let rootfs_err = |source| ShimError::Rootfs {
            id: id.to_owned(),
            source,
        };
        // Load the inputs: the spec, with the requests other front doors left in its hooks
        // taken out (containerd's `--gpus` hook becomes the request the environment would
        // make; the toolkit's CDI hook steps are done natively below).
        let translated = cli_hook::take(spec).map_err(|e| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let spec_hooks = take_toolkit_hooks(spec);
        remove_toolkit_hooks(spec);
        check_hook_paths(id, spec)?;
        if translated.is_some() {
            log::info!("container {id}: containerd's --gpus hook taken as the request");
        }
        let request = GpuRequest::from_spec(spec, &config.request_policy()).map_err(|e| {
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
        let policy = PlanPolicy::from_config(config);
        if request.devices.is_void() {
            if spec_hooks.is_empty() {
                // Asked through a hook and not granted (the isolation profile), the hook is
                // out of the spec: it must not run either.
                return Ok(None);
            }
            return complete_applied_cdi(id, bundle, config, (spec, &request), &spec_hooks, policy);
        }
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
                    what: request_text(spec),
                    source,
                })
            })?;
            Some(inv)
        } else {
            None
        };
        let rootfs = Root::open(&bundle.rootfs_of(spec)).map_err(rootfs_err)?;
        let host = snapshot::gather(
            &HostPaths::from_config(config),
            spec,
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
            spec,
            request: &request,
            inventory: inventory.as_deref(),
            registry: registry.as_deref(),
            host: &host,
            spec_hooks: &spec_hooks,
            policy,
        })
        .map_err(gpu_err)?
        else {
            return Ok(None);
        };
        plan.apply_to(spec)
            .map_err(|e| gpu_err(PlanError::CdiEdits(e)))?;
        apply(id, bundle, spec, &rootfs, plan).map(Some)
    }
}

/// A spec a CDI consumer already edited (see [`plan_applied_cdi`]), whose request is `void`:
/// the toolkit hook steps it carried, done natively (the spec is left without them).
fn complete_applied_cdi(
    id: &str,
    bundle: &Bundle,
    config: &Config,
    (spec, request): (&Spec, &GpuRequest),
    hooks: &HookPlan,
    policy: PlanPolicy,
) -> Result<Option<Edits>> {
    let rootfs = Root::open(&bundle.rootfs_of(spec)).map_err(|source| ShimError::Rootfs {
        id: id.to_owned(),
        source,
    })?;
    // Nothing for the inventory: only the mounted libraries and the image are read.
    let nothing = Split {
        cdi_names: Vec::new(),
        from_inventory: None,
    };
    let host = snapshot::gather(
        &HostPaths::from_config(config),
        spec,
        request,
        &nothing,
        None,
        None,
        Some(&rootfs),
    );
    let overlay = if hooks.disable_device_node_modification {
        params_overlay(config)
    } else {
        ProcOverlay::default()
    };
    let plan = plan_applied_cdi(spec, hooks, &host, overlay, policy);
    log::info!("container {id}: the CDI hook steps of its spec done natively");
    apply(id, bundle, spec, &rootfs, plan).map(Some)
}

/// Applies `plan` (its spec edits already in `spec`): makes the rootfs's links and ld cache,
/// writes the overlay's sources.
fn apply(
    id: &str,
    bundle: &Bundle,
    spec: &Spec,
    rootfs: &Root,
    plan: InjectionPlan,
) -> Result<Edits> {
    rootfs::apply(id, rootfs, &plan.rootfs).map_err(|source| ShimError::Rootfs {
        id: id.to_owned(),
        source,
    })?;
    let proc_mounts = overlay::overlay_sources(id, bundle, &plan.overlay)?;
    Ok(Edits {
        proc_mounts,
        gpus: plan.gpus,
        devices: spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_ref())
            .map_or(0, Vec::len),
        mounts: plan.driver_mounts,
        chmods: plan.chmods,
    })
}

/// The host's `/proc/driver/nvidia/params` with `ModifyDeviceFiles: 0`, as the toolkit's
/// `disable-device-node-modification` step shows it in the container (nothing without a
/// loaded driver, or when it says so already).
fn params_overlay(config: &Config) -> ProcOverlay {
    let file = config.proc_root.join("driver/nvidia/params");
    let params = nvidia_shim_core_host::untrusted::read(
        &file,
        nvidia_shim_core_host::untrusted::FinalLink::Follow,
        64 << 10,
    )
    .ok()
    .and_then(|b| String::from_utf8(b).ok())
    .and_then(|p| params_without_device_modification(&p));
    ProcOverlay {
        params: params.map(String::into_bytes),
        ..ProcOverlay::default()
    }
}

/// Fails when a hook left in the spec names a program that is not there, naming it (the hook
/// would fail the create later with libcontainer's bare `No such file or directory`).
fn check_hook_paths(id: &str, spec: &Spec) -> Result<()> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let stages = [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
        ("poststart", hooks.poststart()),
        ("poststop", hooks.poststop()),
    ];
    for (stage, list) in stages {
        for hook in list.iter().flatten() {
            if let Err(e) = std::fs::metadata(hook.path()) {
                return Err(ShimError::InvalidArgument {
                    id: id.to_owned(),
                    reason: format!(
                        "{stage} hook {}: {e}",
                        nvidia_shim_core::quote::quoted(&hook.path().to_string_lossy())
                    ),
                });
            }
        }
    }
    Ok(())
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

    use crate::runtime::bundle::spec_from_json as spec;

    /// Container `id` of `bundle` under `config`.
    fn target<'a>(id: &'a str, bundle: &'a Bundle, config: &'a Config) -> EditTarget<'a> {
        EditTarget { id, bundle, config }
    }

    #[test]
    fn no_request_leaves_the_spec_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let original = spec(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["sh"],"env":["PATH=/bin","NVIDIA_VISIBLE_DEVICES=void"]},"root":{"path":"rootfs"}}"#,
        );
        let mut edited = original.clone();
        let got = GpuInjector::default()
            .edit(
                &target("c1", &Bundle::new(dir.path()), &Config::default()),
                &mut edited,
            )
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(edited, original);
    }

    #[test]
    fn malformed_env_value_names_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","env":["NVIDIA_VISIBLE_DEVICES=gpu0"]},"root":{"path":"rootfs"}}"#,
        );
        let err = GpuInjector::default()
            .edit(
                &target("c2", &Bundle::new(dir.path()), &Config::default()),
                &mut s,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("container c2") && err.contains("gpu0"),
            "{err}"
        );
    }
}
