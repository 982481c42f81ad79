use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::request::DeviceSelection;
use nvidia_shim_core::select::{select, SelectError};
use nvidia_shim_core_host::fixture::Layout;

use super::support::fake;

fn ids(inv: &Inventory, value: &str) -> Result<Vec<u32>, SelectError> {
    let sel = DeviceSelection::parse(Some(value), false).unwrap();
    Ok(select(inv, &sel)?.iter().map(|g| g.index).collect())
}

#[test]
fn builtin_cdi_kinds_resolve_against_the_inventory() {
    let Some((_fake, inv)) = fake(3, Layout::Distro) else {
        return;
    };
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
