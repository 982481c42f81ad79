//! Resolving a [`DeviceSelection`] against the host's GPUs.

use crate::inventory::{GpuDevice, Inventory, MigDevice};
use crate::request::{DeviceId, DeviceSelection};

/// A requested device the host does not have, or cannot give this way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No GPU matches the identifier.
    #[error("unknown GPU {}; this host has: {valid}", crate::quote::quoted(.id))]
    Unknown {
        /// The identifier as requested.
        id: String,
        /// The valid identifiers, index and UUID per GPU.
        valid: String,
    },
    /// The identifier form is not resolvable here (MIG UUIDs need NVML; CDI names of other
    /// kinds are resolved through CDI specs).
    #[error("GPU {} cannot be selected by {what}", crate::quote::quoted(.id))]
    Unsupported {
        /// The identifier.
        id: String,
        /// Why.
        what: &'static str,
    },
}

fn valid_ids(inventory: &Inventory) -> String {
    if inventory.gpus.is_empty() {
        return "no GPUs".to_owned();
    }
    let gpus = inventory
        .gpus
        .iter()
        .map(|g| format!("{} ({}, {})", g.index, g.uuid, g.bus_id));
    let migs = inventory.mig.iter().map(|m| match &m.uuid {
        Some(u) => format!("{}:{} ({u})", m.parent, m.index),
        None => format!("{}:{} (MIG gi{} ci{})", m.parent, m.index, m.gi, m.ci),
    });
    gpus.chain(migs).collect::<Vec<_>>().join(", ")
}

/// CDI kinds whose device names the built-in inventory answers without a CDI spec on disk:
/// `nvidia-ctk cdi generate`'s, the device plugin's, and the toolkit's jit-cdi kind. Their
/// names are `all`, an index or a `GPU-` UUID.
pub const BUILTIN_CDI_KINDS: [&str; 3] = [
    "nvidia.com/gpu",
    "k8s.device-plugin.nvidia.com/gpu",
    "runtime.nvidia.com/gpu",
];

/// What a selection resolves to: GPUs (including the parents of selected MIG devices, which
/// requirements are checked against and whose nodes MIG devices need) and MIG devices.
#[derive(Debug, Clone, Default)]
pub struct Selected<'a> {
    /// GPUs, in request order without duplicates.
    pub gpus: Vec<&'a GpuDevice>,
    /// MIG devices, in request order without duplicates.
    pub migs: Vec<&'a MigDevice>,
    /// The GPUs asked for as whole GPUs (not only as a selected MIG device's parent).
    pub whole: Vec<&'a GpuDevice>,
}

impl<'a> Selected<'a> {
    fn add_gpu(&mut self, g: &'a GpuDevice) {
        self.add_parent(g);
        if !self.whole.iter().any(|o| o.uuid == g.uuid) {
            self.whole.push(g);
        }
    }

    fn add_parent(&mut self, g: &'a GpuDevice) {
        if !self.gpus.iter().any(|o| o.uuid == g.uuid) {
            self.gpus.push(g);
        }
    }

    fn add_mig(&mut self, inventory: &'a Inventory, m: &'a MigDevice) {
        if let Some(parent) = inventory.gpus.iter().find(|g| g.index == m.parent) {
            self.add_parent(parent);
        }
        if !self
            .migs
            .iter()
            .any(|o| (o.parent, o.index) == (m.parent, m.index))
        {
            self.migs.push(m);
        }
    }
}

/// A request's devices resolved once against the inventory: what requirements, edits, the ld
/// plan and the `/proc` overlay all take.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    /// The devices `NVIDIA_VISIBLE_DEVICES` (or its other forms) names.
    pub devices: Selected<'a>,
    /// The GPUs `NVIDIA_MIG_CONFIG_DEVICES` names.
    pub mig_config: Vec<&'a GpuDevice>,
    /// The GPUs `NVIDIA_MIG_MONITOR_DEVICES` names.
    pub mig_monitor: Vec<&'a GpuDevice>,
}

impl<'a> Selection<'a> {
    /// Resolves `request`'s three selections; `devices` replaces the request's own (the part
    /// left to the inventory once CDI specs on disk took theirs).
    pub fn resolve(
        inventory: &'a Inventory,
        devices: &DeviceSelection,
        request: &crate::request::GpuRequest,
    ) -> Result<Self, SelectError> {
        Ok(Self {
            devices: select_devices(inventory, devices)?,
            mig_config: select(inventory, &request.mig_config)?,
            mig_monitor: select(inventory, &request.mig_monitor)?,
        })
    }

    /// The GPUs whose MIG configuration or monitoring the container is given.
    pub fn admin(&self) -> impl Iterator<Item = &'a GpuDevice> + '_ {
        self.mig_config.iter().chain(&self.mig_monitor).copied()
    }
}

/// The GPUs `selection` names, in request order without duplicates (`All` gives every GPU;
/// `Void` and `NoGpu` none); a MIG device counts as its parent GPU.
pub fn select<'a>(
    inventory: &'a Inventory,
    selection: &DeviceSelection,
) -> Result<Vec<&'a GpuDevice>, SelectError> {
    Ok(select_devices(inventory, selection)?.gpus)
}

/// The GPUs and MIG devices `selection` names. `All` gives every GPU and every MIG device,
/// as nvidia-container-cli does.
pub fn select_devices<'a>(
    inventory: &'a Inventory,
    selection: &DeviceSelection,
) -> Result<Selected<'a>, SelectError> {
    let mut out = Selected::default();
    let ids = match selection {
        DeviceSelection::Void | DeviceSelection::NoGpu => return Ok(out),
        DeviceSelection::All => {
            out.gpus = inventory.gpus.iter().collect();
            out.whole = out.gpus.clone();
            out.migs = inventory.mig.iter().collect();
            return Ok(out);
        }
        DeviceSelection::List(ids) => ids,
    };
    for id in ids {
        let unknown = || SelectError::Unknown {
            id: id.to_string(),
            valid: valid_ids(inventory),
        };
        let gpu = match id {
            DeviceId::Index(i) => inventory.gpus.iter().find(|g| g.index == *i),
            DeviceId::GpuUuid(u) => inventory
                .gpus
                .iter()
                .find(|g| g.uuid.eq_ignore_ascii_case(u)),
            DeviceId::BusId(b) => inventory
                .gpus
                .iter()
                .find(|g| g.bus_id.eq_ignore_ascii_case(b)),
            DeviceId::MigIndex(g, m) => {
                let mig = inventory
                    .mig
                    .iter()
                    .find(|d| (d.parent, d.index) == (*g, *m))
                    .ok_or_else(unknown)?;
                out.add_mig(inventory, mig);
                continue;
            }
            DeviceId::MigUuid(u) => {
                if inventory.mig.iter().all(|d| d.uuid.is_none()) && !inventory.mig.is_empty() {
                    return Err(SelectError::Unsupported {
                        id: id.to_string(),
                        what: "MIG UUID without NVML (use <gpu>:<mig> indices)",
                    });
                }
                let mig = inventory
                    .mig
                    .iter()
                    .find(|d| d.uuid.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(u)))
                    .ok_or_else(unknown)?;
                out.add_mig(inventory, mig);
                continue;
            }
            DeviceId::Cdi { kind, name } if BUILTIN_CDI_KINDS.contains(&kind.as_str()) => {
                let inner = if name == "all" {
                    DeviceSelection::All
                } else {
                    match DeviceId::parse(name).map_err(|_| unknown())? {
                        DeviceId::Cdi { .. } => return Err(unknown()),
                        inner => DeviceSelection::List(vec![inner]),
                    }
                };
                let found = select_devices(inventory, &inner).map_err(|_| unknown())?;
                for g in found.whole {
                    out.add_gpu(g);
                }
                for m in found.migs {
                    out.add_mig(inventory, m);
                }
                continue;
            }
            DeviceId::Cdi { .. } => {
                return Err(SelectError::Unsupported {
                    id: id.to_string(),
                    what: "a CDI kind without a CDI spec on disk (CDI specs are not read yet)",
                })
            }
        }
        .ok_or_else(unknown)?;
        out.add_gpu(gpu);
    }
    Ok(out)
}
