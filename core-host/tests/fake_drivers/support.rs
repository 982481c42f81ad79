//! What the tests here share: fake drivers discovered, and the spec as edits leave it.

use nvidia_shim_core::cdi::{apply_edits, device_edits, ApplyError, HookPlan, Resolved};
use nvidia_shim_core::edits::DriverEdits;
use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::oci_spec::runtime::{LinuxDeviceCgroup, Spec};
use nvidia_shim_core_host::discover;
use nvidia_shim_core_host::fixture::{root_or_skip, FakeDriver, Layout};
use nvidia_shim_core_host::snapshot::node_facts;

/// Whether the test can make the fake driver's device nodes (root); says SKIP when not.
pub fn root() -> bool {
    root_or_skip("this test")
}

/// A fake driver of `gpus` GPUs in `layout`, discovered.
pub fn inventory(gpus: u32, layout: Layout) -> (FakeDriver, Inventory) {
    discovered(FakeDriver::builder().gpus(gpus).layout(layout).build())
}

/// `fake`, discovered.
pub fn discovered(fake: FakeDriver) -> (FakeDriver, Inventory) {
    let inv = discover::inventory(&fake.roots()).expect("discover the fake driver");
    (fake, inv)
}

/// Applies one set of driver edits through the one engine.
pub fn apply_one(spec: &mut Spec, edits: &DriverEdits) {
    apply_edits(spec, &[edits.to_cdi()]).expect("driver edits are complete");
}

/// Applies the devices' edits (and each touched spec's spec-wide edits, once) to `spec`, their
/// nodes completed from the host's.
pub fn apply_cdi(spec: &mut Spec, devices: &[Resolved<'_>]) -> Result<HookPlan, ApplyError> {
    let (edits, plan) = device_edits(devices, &node_facts(devices))?;
    apply_edits(spec, &edits)?;
    Ok(plan)
}

/// The spec's device nodes.
pub fn device_paths(spec: &Spec) -> Vec<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect()
}

/// The spec's device cgroup rules.
pub fn device_rules(spec: &Spec) -> Vec<LinuxDeviceCgroup> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default()
}

/// The spec's mount destinations, in order.
pub fn mount_dests(spec: &Spec) -> Vec<String> {
    spec.mounts()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect()
}
