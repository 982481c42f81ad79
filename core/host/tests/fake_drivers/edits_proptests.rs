//! Property tests of the spec edits over arbitrary requests on fake drivers.

use std::sync::OnceLock;

use nvidia_shim_core::edits::DriverEdits;
use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::request::{GpuRequest, RequestPolicy};
use nvidia_shim_core_host::fixture::{is_root, spec_with_env, FakeDriver, Layout};
use nvidia_shim_core_host::snapshot::edits_for;
use proptest::prelude::*;

use super::support::{apply_one, device_paths, inventory};

/// Fake drivers shared by all cases (building one compiles shared objects).
fn drivers() -> &'static [(FakeDriver, Inventory)] {
    static D: OnceLock<Vec<(FakeDriver, Inventory)>> = OnceLock::new();
    D.get_or_init(|| {
        [Layout::Distro, Layout::UsrLocalNvidia]
            .into_iter()
            .map(|l| inventory(4, l))
            .collect()
    })
}

fn devices_value() -> impl Strategy<Value = String> {
    let item = prop_oneof![
        (0u32..6).prop_map(|i| i.to_string()),
        Just("all".to_owned()),
        Just("none".to_owned()),
        Just("void".to_owned()),
        Just("nvidia.com/gpu=1".to_owned()),
        Just("00000000:00:07.0".to_owned()),
    ];
    prop::collection::vec(item, 0..4).prop_map(|v| v.join(","))
}

fn caps_value() -> impl Strategy<Value = String> {
    prop::sample::subsequence(
        vec![
            "compute", "utility", "video", "graphics", "display", "ngx", "compat32",
        ],
        0..4,
    )
    .prop_map(|v| v.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn edits_are_idempotent_and_stay_under_the_driver_root(
        devices in devices_value(),
        caps in caps_value(),
        layout in 0usize..2,
        preexisting in 0u32..4,
    ) {
        if !is_root() {
            return Ok(()); // fake device nodes need mknod
        }
        let (_, inv) = &drivers()[layout];
        let env = [format!("NVIDIA_VISIBLE_DEVICES={devices}"), format!("NVIDIA_DRIVER_CAPABILITIES={caps}")];
        let spec0 = spec_with_env(&env.each_ref().map(String::as_str));
        let Ok(request) = GpuRequest::from_spec(&spec0, &RequestPolicy::default()) else {
            return Ok(()); // malformed requests are rejected before any edit
        };
        let Ok(edits) = edits_for(inv, &request) else {
            return Ok(()); // unknown GPU: an error, no edit
        };
        for (host, container) in &edits.mounts {
            prop_assert!(host.starts_with(&inv.roots.driver_root), "{host:?} outside the driver root");
            prop_assert!(container.is_absolute());
            prop_assert!(!container.components().any(|c| matches!(c, std::path::Component::ParentDir)));
        }
        for (link, target) in &edits.symlinks {
            prop_assert!(link.is_absolute() && !target.contains('/'), "{link:?} -> {target}");
        }
        // A device plugin may already have put a node in the spec.
        let mut spec = spec0.clone();
        if let Some(node) = inv.gpu_nodes.get(&preexisting) {
            apply_one(&mut spec, &DriverEdits { devices: vec![node.clone()], ..Default::default() });
        }
        apply_one(&mut spec, &edits);
        let once = serde_json::to_string(&spec).unwrap();
        apply_one(&mut spec, &edits);
        prop_assert_eq!(serde_json::to_string(&spec).unwrap(), once);
        let paths = device_paths(&spec);
        let mut dedup = paths.clone();
        dedup.sort();
        dedup.dedup();
        prop_assert_eq!(paths.len(), dedup.len(), "no duplicate device nodes");
    }
}
