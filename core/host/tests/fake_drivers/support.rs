//! What the tests here share: fake drivers discovered, and the spec as edits leave it.

use nvidia_shim_core::cdi::{apply_edits, device_edits, ApplyError, HookPlan, Resolved};
use nvidia_shim_core::edits::DriverEdits;
use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::oci_spec::runtime::{LinuxDeviceCgroup, Spec};
use nvidia_shim_core_host::discover;
use nvidia_shim_core_host::fixture::{request, root_or_skip, spec_with_env, FakeDriver, Layout};
use nvidia_shim_core_host::snapshot::{edits_for, node_facts};

/// A fake driver of `gpus` GPUs in `layout`, discovered (root only: its device nodes need
/// `mknod`).
pub fn inventory(gpus: u32, layout: Layout) -> (FakeDriver, Inventory) {
    discovered(FakeDriver::builder().gpus(gpus).layout(layout).build())
}

/// `fake`, discovered.
pub fn discovered(fake: FakeDriver) -> (FakeDriver, Inventory) {
    let inv = discover::inventory(&fake.roots()).expect("discover the fake driver");
    (fake, inv)
}

/// The fake driver `make` builds, discovered; `None` (and SKIP said) when not root.
pub fn fake_with(make: impl FnOnce() -> FakeDriver) -> Option<(FakeDriver, Inventory)> {
    root_or_skip("this test").then(|| discovered(make()))
}

/// [`inventory`]`(gpus, layout)`; `None` (and SKIP said) when not root.
pub fn fake(gpus: u32, layout: Layout) -> Option<(FakeDriver, Inventory)> {
    fake_with(|| FakeDriver::builder().gpus(gpus).layout(layout).build())
}

/// [`fake`]`(gpus, layout)` and the edits a container whose environment is `env` gets on it.
pub fn fake_edits(
    gpus: u32,
    layout: Layout,
    env: &[&str],
) -> Option<(FakeDriver, Inventory, DriverEdits)> {
    let (fake, inv) = fake(gpus, layout)?;
    let edits = edits(&inv, env);
    Some((fake, inv, edits))
}

/// The edits a container whose environment is `env` gets on `inv`.
pub fn edits(inv: &Inventory, env: &[&str]) -> DriverEdits {
    edits_for(inv, &request(env)).expect("edits")
}

/// The spec of a container whose environment is `env`, and the edits it gets on `inv`.
pub fn container(inv: &Inventory, env: &[&str]) -> (Spec, DriverEdits) {
    (spec_with_env(env), edits(inv, env))
}

/// Why a container whose environment is `env` gets no edits on `inv`.
pub fn edits_err(inv: &Inventory, env: &[&str]) -> String {
    edits_for(inv, &request(env)).unwrap_err().to_string()
}

/// The container paths of the edits' device nodes.
pub fn node_paths(e: &DriverEdits) -> Vec<String> {
    e.devices
        .iter()
        .map(|d| d.path.display().to_string())
        .collect()
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
