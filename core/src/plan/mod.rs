//! The Create path's GPU decisions as one pure function: [`plan`] takes the container's spec
//! and request, the driver inventory, the CDI specs on disk and a [`HostSnapshot`] the host
//! gathered once per Create, and returns an [`InjectionPlan`]: the spec edits (one model, CDI's), the rootfs
//! plan (links, ld cache entries, the CUDA compat choice) and the `/proc/driver/nvidia` overlay.
//! It reads nothing itself, so every decision is testable with literal inputs and no root.
//!
//! Who serves what: a CDI name whose kind has a spec on disk is served by that spec (for the
//! built-in kinds only when [`PlanPolicy::cdi_specs_on_disk_first`], the toolkit's `cdi`
//! mode); every other request form, and the built-in kinds otherwise, by the driver inventory
//! through the same edits [`crate::cdi::generate`] writes into a generated spec. The inventory's
//! edits are applied first and those of specs on disk after them, so that an operator's spec
//! replaces the inventory's entry at the same node path or mount destination.

mod rootfs_plan;
pub mod snapshot;

use std::path::Path;

use oci_spec::runtime::Spec;

use crate::cdi::spec::ContainerEdits;
use crate::cdi::{
    apply_edits, device_edits, ApplyError, HookPlan, Registry, ResolveError, Resolved,
};
use crate::edits::{driver_edits, DriverEdits, EditsError};
use crate::inventory::{DiscoverError, Inventory};
use crate::proc_overlay::{proc_overlay, ProcOverlay};
use crate::quote::{bounded, MAX_QUOTED};
use crate::request::{DeviceId, DeviceSelection, GpuRequest};
use crate::require::{check, cuda_for_driver, DeviceFacts, HostFacts, RequireError, Version};
use crate::select::{SelectError, Selection, BUILTIN_CDI_KINDS};
use crate::Config;

pub use rootfs_plan::{ld_dirs, rootfs_plan, rootfs_plan_in_place, RootfsPlan, LD_CONF_DROP_IN};
pub use snapshot::{HostSnapshot, ImageFacts};

/// The configuration [`plan`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanPolicy {
    /// Enforce `NVIDIA_REQUIRE_*`.
    pub check_requirements: bool,
    /// Use an image's CUDA forward-compat libraries when they fit the host driver.
    pub cuda_compat: bool,
    /// A CDI spec on disk for a built-in kind serves its names (else the inventory does).
    pub cdi_specs_on_disk_first: bool,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl PlanPolicy {
    /// The policy `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            check_requirements: config.check_requirements,
            cuda_compat: config.cuda_compat,
            cdi_specs_on_disk_first: config.cdi_specs_on_disk_first,
        }
    }
}

/// Why a container's GPUs cannot be planned. `what` is the request as errors name it
/// ([`request_text`]).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A requested GPU is not on this host or cannot be selected that way.
    #[error("{what}: {source}")]
    Select {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: SelectError,
    },
    /// The inventory cannot give what the request needs.
    #[error("{what}: {source}")]
    Edits {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: EditsError,
    },
    /// A CDI name cannot be resolved against the specs on disk.
    #[error("{what}: {source}")]
    Cdi {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// A resolved CDI device's edits cannot be applied.
    #[error(transparent)]
    CdiEdits(#[from] ApplyError),
    /// An `NVIDIA_REQUIRE_*` term does not hold (or does not parse).
    #[error(transparent)]
    Requirement(#[from] RequireError),
    /// The request needs the driver, and none was found.
    #[error("{what} asks for GPUs, but {source}")]
    NoDriver {
        /// The request.
        what: String,
        /// Why discovery failed.
        #[source]
        source: DiscoverError,
    },
    /// The caller gave no inventory although [`Split::needs_inventory`] asked for one.
    #[error("{what}: the driver inventory was not loaded for a request that needs it")]
    NoInventory {
        /// The request.
        what: String,
    },
}

impl PlanError {
    /// Whether the request itself is at fault (containerd's `InvalidArgument`), rather than the
    /// host (`FailedPrecondition`).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Self::Select { .. } | Self::Edits { .. } | Self::Cdi { .. } | Self::CdiEdits(_)
        )
    }
}

/// The request as errors name it: `NVIDIA_VISIBLE_DEVICES=...` (its value bounded), or a
/// description when the request comes from elsewhere.
pub fn request_text(spec: &Spec) -> String {
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

/// A request's devices split between CDI specs on disk and the driver inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Qualified CDI names the specs on disk serve.
    pub cdi_names: Vec<String>,
    /// What the inventory serves (`None` when nothing is left for it).
    pub from_inventory: Option<DeviceSelection>,
}

/// Whether the selection names any device by a CDI name (then the specs on disk are read).
pub fn names_cdi(devices: &DeviceSelection) -> bool {
    matches!(devices, DeviceSelection::List(ids) if ids.iter().any(|i| matches!(i, DeviceId::Cdi { .. })))
}

/// Splits `devices` between the specs of `registry` and the inventory: a CDI name of a kind
/// that is not built in goes to the specs; one of a built-in kind goes there only when
/// `disk_first` and a spec of its kind is on disk.
pub fn split(devices: &DeviceSelection, registry: Option<&Registry>, disk_first: bool) -> Split {
    let (DeviceSelection::List(ids), Some(registry)) = (devices, registry) else {
        return Split {
            cdi_names: Vec::new(),
            from_inventory: Some(devices.clone()),
        };
    };
    let mut cdi_names = Vec::new();
    let mut rest = Vec::new();
    for id in ids {
        match id {
            DeviceId::Cdi { kind, .. }
                if !BUILTIN_CDI_KINDS.contains(&kind.as_str())
                    || (disk_first && registry.has_kind(kind)) =>
            {
                cdi_names.push(id.to_string());
            }
            _ => rest.push(id.clone()),
        }
    }
    Split {
        cdi_names,
        from_inventory: (!rest.is_empty()).then_some(DeviceSelection::List(rest)),
    }
}

impl Split {
    /// Whether [`plan`] needs the driver inventory: something is left for it, or only specs on
    /// disk serve the request but its `NVIDIA_REQUIRE_*` terms are to be checked against the
    /// loaded driver (`driver_loaded`, asked only then: it reads the host).
    pub fn needs_inventory(
        &self,
        request: &GpuRequest,
        policy: &PlanPolicy,
        driver_loaded: impl FnOnce() -> bool,
    ) -> bool {
        self.from_inventory.is_some() || (requirements_apply(policy, request) && driver_loaded())
    }

    /// The CDI devices of `registry` the specs on disk serve (none when they serve nothing or
    /// a name does not resolve: [`plan`] then says why).
    pub fn resolved<'a>(&self, registry: Option<&'a Registry>) -> Vec<Resolved<'a>> {
        registry
            .filter(|_| !self.cdi_names.is_empty())
            .and_then(|r| r.resolve(&self.cdi_names).ok())
            .unwrap_or_default()
    }
}

/// The sources whose SONAME the rootfs plan needs, each once, in order: of `spec`'s mounts and
/// the mounts of the `resolved` CDI devices, those mounted at a path named like a library
/// (`*.so*`).
pub fn library_sources<'a>(spec: &'a Spec, resolved: &[Resolved<'a>]) -> Vec<&'a Path> {
    let spec_mounts = spec
        .mounts()
        .iter()
        .flatten()
        .filter_map(|m| Some((m.source().as_deref()?, m.destination().as_path())));
    let cdi_mounts = resolved
        .iter()
        .flat_map(|r| [&r.spec.container_edits, &r.device.container_edits])
        .flat_map(|e| &e.mounts)
        .map(|m| (Path::new(&m.host_path), Path::new(&m.container_path)));
    let mut out: Vec<&Path> = Vec::new();
    for (source, destination) in spec_mounts.chain(cdi_mounts) {
        let is_library = destination
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".so"));
        if is_library && !out.contains(&source) {
            out.push(source);
        }
    }
    out
}

/// Everything [`plan`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs<'a> {
    /// The container's spec as containerd wrote it.
    pub spec: &'a Spec,
    /// Its GPU request, read from `spec`.
    pub request: &'a GpuRequest,
    /// The driver inventory, when [`Split::needs_inventory`] said so.
    pub inventory: Option<&'a Inventory>,
    /// The CDI specs on disk, when the request names CDI devices.
    pub registry: Option<&'a Registry>,
    /// What the host and image hold.
    pub host: &'a HostSnapshot,
    /// The toolkit hook steps a CDI consumer left in the spec (taken out of it with
    /// [`crate::cdi::take_toolkit_hooks`]), done with the request's own.
    pub spec_hooks: &'a HookPlan,
    /// The configuration.
    pub policy: PlanPolicy,
}

/// What to do to give a container its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InjectionPlan {
    /// Spec edits, in the order [`apply_edits`] is to apply them.
    pub edits: Vec<ContainerEdits>,
    /// Links and the ld cache in the rootfs.
    pub rootfs: RootfsPlan,
    /// The `/proc/driver/nvidia` overlay to attach once the container exists.
    pub overlay: ProcOverlay,
    /// What was given: GPU UUIDs and CDI names.
    pub gpus: Vec<String>,
    /// Driver files mounted by the inventory's edits.
    pub driver_mounts: usize,
    /// Permission bits to set in the container once it exists (the toolkit's `chmod` step):
    /// (path in the container, mode).
    pub chmods: Vec<(std::path::PathBuf, u32)>,
}

impl InjectionPlan {
    /// `spec` with the edits applied.
    pub fn apply_to(&self, spec: &mut Spec) -> Result<(), ApplyError> {
        apply_edits(spec, &self.edits)
    }
}

/// Decides everything a container asking for `inputs.request` gets. `Ok(None)` when it asks
/// for nothing (`void`, or no request).
pub fn plan(inputs: PlanInputs<'_>) -> Result<Option<InjectionPlan>, PlanError> {
    let PlanInputs {
        spec,
        request,
        inventory,
        registry,
        host,
        spec_hooks,
        policy,
    } = inputs;
    if request.devices.is_void() {
        return Ok(None);
    }
    let what = request_text(spec);
    let split = split(&request.devices, registry, policy.cdi_specs_on_disk_first);
    let mut gpus = Vec::new();
    let (cdi_edits, hooks) = match registry.filter(|_| !split.cdi_names.is_empty()) {
        Some(registry) => {
            let resolved = registry
                .resolve(&split.cdi_names)
                .map_err(|source| PlanError::Cdi {
                    what: what.clone(),
                    source,
                })?;
            gpus.extend(split.cdi_names.iter().cloned());
            device_edits(&resolved, &host.cdi_nodes)?
        }
        None => (Vec::new(), HookPlan::default()),
    };
    let mut hooks = hooks;
    hooks.merge(spec_hooks.clone());
    let mut compat_host = hooks.cuda_compat_host_version.clone();
    let mut driver = DriverEdits::default();
    let mut overlay = ProcOverlay::default();
    if let Some(devices) = &split.from_inventory {
        let inventory = inventory.ok_or_else(|| PlanError::NoInventory { what: what.clone() })?;
        let selection = Selection::resolve(inventory, devices, request).map_err(|source| {
            PlanError::Select {
                what: what.clone(),
                source,
            }
        })?;
        check_requirements(&policy, request, inventory, &selection)?;
        driver = driver_edits(inventory, request, &selection, &host.ipc, &host.gated).map_err(
            |source| PlanError::Edits {
                what: what.clone(),
                source,
            },
        )?;
        if !matches!(devices, DeviceSelection::NoGpu) {
            gpus.extend(selection.devices.gpus.iter().map(|g| g.uuid.clone()));
        }
        overlay = proc_overlay(inventory, request, &selection, &host.proc);
        if request.capabilities.needs_compute() {
            compat_host = Some(inventory.driver_version.clone());
        }
    } else if let Some(inventory) = inventory.filter(|_| requirements_apply(&policy, request)) {
        check_requirements(&policy, request, inventory, &Selection::default())?;
    }
    let mut edits = Vec::with_capacity(cdi_edits.len() + 2);
    if driver != DriverEdits::default() {
        edits.push(driver.to_cdi());
    }
    edits.extend(cdi_edits);
    if driver.env.is_empty() {
        // No hook or runtime after us may act on the request again.
        edits.push(ContainerEdits {
            env: vec!["NVIDIA_VISIBLE_DEVICES=void".to_owned()],
            ..ContainerEdits::default()
        });
    }
    let mut edited = spec.clone();
    apply_edits(&mut edited, &edits)?;
    let mounts = edited.mounts().clone().unwrap_or_default();
    let rootfs = rootfs_plan(
        &driver,
        &hooks,
        &mounts,
        host,
        policy.cuda_compat,
        compat_host,
    );
    Ok(Some(InjectionPlan {
        edits,
        rootfs,
        overlay,
        gpus,
        driver_mounts: driver.mounts.len() + driver.ipc.len(),
        chmods: hooks.chmods,
    }))
}

/// What to do for a spec a CDI consumer already edited (Docker, containerd's CRI, podman,
/// `nvidia-ctk`: its devices, mounts and env applied, `NVIDIA_VISIBLE_DEVICES=void`) and whose
/// toolkit hook steps `hooks` were taken out of it: those steps, done natively, with nothing
/// injected again. The mounted libraries' SONAMEs come from `host` as for a request's own.
pub fn plan_applied_cdi(
    spec: &Spec,
    hooks: &HookPlan,
    host: &HostSnapshot,
    overlay: ProcOverlay,
    policy: PlanPolicy,
) -> InjectionPlan {
    let mounts = spec.mounts().clone().unwrap_or_default();
    InjectionPlan {
        edits: Vec::new(),
        rootfs: rootfs_plan(
            &DriverEdits::default(),
            hooks,
            &mounts,
            host,
            policy.cuda_compat,
            hooks.cuda_compat_host_version.clone(),
        ),
        overlay,
        gpus: Vec::new(),
        driver_mounts: 0,
        chmods: hooks.chmods.clone(),
    }
}

/// Whether the container has `NVIDIA_REQUIRE_*` terms that are to be enforced.
fn requirements_apply(policy: &PlanPolicy, request: &GpuRequest) -> bool {
    policy.check_requirements && !request.disable_require && !request.requirements.is_empty()
}

/// Enforces `NVIDIA_REQUIRE_*` unless disabled, against the host's driver and the selected
/// GPUs.
fn check_requirements(
    policy: &PlanPolicy,
    request: &GpuRequest,
    inv: &Inventory,
    selection: &Selection<'_>,
) -> Result<(), RequireError> {
    if !requirements_apply(policy, request) {
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
    let devices: Vec<DeviceFacts> = selection
        .devices
        .gpus
        .iter()
        .map(|g| DeviceFacts {
            arch: g.arch.clone(),
            brand: g.brand.clone(),
        })
        .collect();
    check(&request.requirements, &host, &devices)
}

#[cfg(test)]
mod tests;
