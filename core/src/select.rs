//! Resolving a [`DeviceSelection`] against the host's GPUs.

use crate::discover::{GpuDevice, Inventory};
use crate::request::{DeviceId, DeviceSelection};

/// A requested device the host does not have, or cannot give this way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No GPU matches the identifier.
    #[error("unknown GPU {id:?}; this host has: {valid}")]
    Unknown {
        /// The identifier as requested.
        id: String,
        /// The valid identifiers, index and UUID per GPU.
        valid: String,
    },
    /// The identifier form is not resolvable here yet (MIG devices need NVML; CDI names are
    /// resolved through CDI specs).
    #[error("GPU {id:?} cannot be selected by {what}")]
    Unsupported {
        /// The identifier.
        id: String,
        /// Why.
        what: &'static str,
    },
}

fn valid_ids(gpus: &[GpuDevice]) -> String {
    if gpus.is_empty() {
        return "no GPUs".to_owned();
    }
    gpus.iter()
        .map(|g| format!("{} ({}, {})", g.index, g.uuid, g.bus_id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GPUs `selection` names, in request order without duplicates (`All` gives every GPU;
/// `Void` and `NoGpu` none).
pub fn select<'a>(
    inventory: &'a Inventory,
    selection: &DeviceSelection,
) -> Result<Vec<&'a GpuDevice>, SelectError> {
    let ids = match selection {
        DeviceSelection::Void | DeviceSelection::NoGpu => return Ok(Vec::new()),
        DeviceSelection::All => return Ok(inventory.gpus.iter().collect()),
        DeviceSelection::List(ids) => ids,
    };
    let mut out: Vec<&GpuDevice> = Vec::new();
    for id in ids {
        let unknown = || SelectError::Unknown {
            id: id.to_string(),
            valid: valid_ids(&inventory.gpus),
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
            DeviceId::MigIndex(..) | DeviceId::MigUuid(_) => {
                return Err(SelectError::Unsupported {
                    id: id.to_string(),
                    what: "MIG identifier without NVML discovery",
                })
            }
            DeviceId::Cdi { .. } => {
                return Err(SelectError::Unsupported {
                    id: id.to_string(),
                    what: "CDI name outside CDI resolution",
                })
            }
        }
        .ok_or_else(unknown)?;
        if !out.iter().any(|g| g.uuid == gpu.uuid) {
            out.push(gpu);
        }
    }
    Ok(out)
}
