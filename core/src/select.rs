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

/// CDI kinds whose device names the built-in inventory answers without a CDI spec on disk:
/// `nvidia-ctk cdi generate`'s, the device plugin's, and the toolkit's jit-cdi kind. Their
/// names are `all`, an index or a `GPU-` UUID.
pub const BUILTIN_CDI_KINDS: [&str; 3] = [
    "nvidia.com/gpu",
    "k8s.device-plugin.nvidia.com/gpu",
    "runtime.nvidia.com/gpu",
];

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
            DeviceId::Cdi { kind, name } if BUILTIN_CDI_KINDS.contains(&kind.as_str()) => {
                if name == "all" {
                    for g in &inventory.gpus {
                        if !out.iter().any(|o| o.uuid == g.uuid) {
                            out.push(g);
                        }
                    }
                    continue;
                }
                let inner = DeviceId::parse(name).map_err(|_| unknown())?;
                if matches!(inner, DeviceId::Cdi { .. }) {
                    return Err(unknown());
                }
                let mut found = select(inventory, &DeviceSelection::List(vec![inner]))
                    .map_err(|_| unknown())?;
                found.pop()
            }
            DeviceId::Cdi { .. } => {
                return Err(SelectError::Unsupported {
                    id: id.to_string(),
                    what: "a CDI kind without a CDI spec on disk (CDI specs are not read yet)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixture::FakeDriver;

    fn ids(inv: &Inventory, value: &str) -> Result<Vec<u32>, SelectError> {
        let sel = DeviceSelection::parse(Some(value), false).unwrap();
        Ok(select(inv, &sel)?.iter().map(|g| g.index).collect())
    }

    #[test]
    fn builtin_cdi_kinds_resolve_against_the_inventory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP builtin_cdi_kinds_resolve_against_the_inventory: fake nodes need mknod (root)");
            return;
        }
        let fake = FakeDriver::builder().gpus(3).build();
        let inv = Inventory::discover(&fake.roots()).unwrap();
        assert_eq!(ids(&inv, "nvidia.com/gpu=1").unwrap(), [1]);
        let uuid = inv.gpus[2].uuid.clone();
        assert_eq!(
            ids(&inv, &format!("k8s.device-plugin.nvidia.com/gpu={uuid}")).unwrap(),
            [2]
        );
        assert_eq!(ids(&inv, "nvidia.com/gpu=all").unwrap(), [0, 1, 2]);
        assert_eq!(
            ids(&inv, "2,nvidia.com/gpu=2,runtime.nvidia.com/gpu=0").unwrap(),
            [2, 0]
        );
        let err = ids(&inv, "nvidia.com/gpu=9").unwrap_err().to_string();
        assert!(
            err.contains("nvidia.com/gpu=9") && err.contains(&uuid),
            "{err}"
        );
        let err = ids(&inv, "vendor.example/fpga=0").unwrap_err().to_string();
        assert!(err.contains("vendor.example/fpga=0"), "{err}");
    }
}
