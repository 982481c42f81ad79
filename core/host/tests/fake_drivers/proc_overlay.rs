use std::path::PathBuf;

use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::proc_overlay::{proc_overlay, ProcOverlay, CONTAINER_PROC_DRIVER};
use nvidia_shim_core::request::{DeviceSelection, GpuRequest};
use nvidia_shim_core::select::Selection;
use nvidia_shim_core_host::fixture::{request, FakeDriver, Layout};
use nvidia_shim_core_host::snapshot::proc_facts;

use super::support::{fake, fake_with};

/// The request of a container whose `NVIDIA_VISIBLE_DEVICES` is `devices`.
fn visible(devices: &str) -> GpuRequest {
    request(&[&format!("NVIDIA_VISIBLE_DEVICES={devices}")])
}

/// The overlay with the fake driver's proc facts, as if the kernel had the driver's tree.
fn overlay(inv: &Inventory, request: &GpuRequest) -> ProcOverlay {
    let selection = Selection::resolve(inv, &request.devices, request).unwrap();
    let mut facts = proc_facts(&inv.roots.proc_root, &inv.roots.proc_root, inv);
    facts.present = true;
    proc_overlay(inv, request, &selection, &facts)
}

fn shown(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            p.strip_prefix(CONTAINER_PROC_DRIVER)
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn unselected_gpus_are_hidden() {
    let Some((_fake, inv)) = fake(3, Layout::Distro) else {
        return;
    };
    let o = overlay(&inv, &visible("1"));
    assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0", "gpus/0000:00:08.0"]);
    assert!(o.hidden_files.is_empty());
    assert!(String::from_utf8(o.params.unwrap())
        .unwrap()
        .contains("ModifyDeviceFiles: 0"));
    assert!(overlay(&inv, &visible("all")).hidden.is_empty());
}

#[test]
fn a_mig_device_shows_only_its_own_gi_and_ci_access_files() {
    let Some((_f, inv)) = fake_with(FakeDriver::mig_host) else {
        return;
    };
    let o = overlay(&inv, &visible("1:1"));
    assert_eq!(
        shown(&o.hidden),
        [
            "gpus/0000:00:06.0",
            "capabilities/gpu1/mig/gi1/ci0",
            "capabilities/gpu1/mig/gi2"
        ]
    );
    assert_eq!(
        shown(&o.hidden_files),
        ["capabilities/mig/config", "capabilities/mig/monitor"]
    );
    // Every path the plan covers exists on the host, so every mount has a target.
    let host = inv.roots.proc_root.join("driver/nvidia");
    for p in o.hidden.iter().chain(&o.hidden_files) {
        let rel = p.strip_prefix(CONTAINER_PROC_DRIVER).unwrap();
        assert!(host.join(rel).exists(), "{}", rel.display());
    }
}

#[test]
fn whole_gpus_and_mig_admin_requests_show_their_capabilities() {
    let Some((_f, inv)) = fake_with(FakeDriver::mig_host) else {
        return;
    };
    // The whole GPU 1: its capability tree stays; GPU 0 has none to hide.
    let o = overlay(&inv, &visible("1"));
    assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0"]);
    // GPU 0 only: GPU 1's capability tree goes.
    let o = overlay(&inv, &visible("0"));
    assert_eq!(shown(&o.hidden), ["gpus/0000:00:07.0", "capabilities/gpu1"]);
    // MIG config on GPU 1 with one MIG device selected: the whole tree and mig/config show.
    let mut r = visible("1:0");
    r.mig_config = DeviceSelection::parse(Some("1"), false).unwrap();
    let o = overlay(&inv, &r);
    assert_eq!(shown(&o.hidden), ["gpus/0000:00:06.0"]);
    assert_eq!(shown(&o.hidden_files), ["capabilities/mig/monitor"]);
    r.mig_monitor = DeviceSelection::All;
    assert!(overlay(&inv, &r).hidden_files.is_empty());
}
