//! Every line of the input is one `KEY=value` env entry (or an annotation when it starts
//! with `@`); reading the request must never panic, under both privilege policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::request::{DeviceSelection, GpuRequest, RequestPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = DeviceSelection::parse(Some(text), false);
    let _ = DeviceSelection::parse(Some(text), true);
    let mut env = Vec::new();
    let mut annotations = serde_json::Map::new();
    for line in text.lines() {
        match line.strip_prefix('@').and_then(|a| a.split_once('=')) {
            Some((k, v)) => {
                annotations.insert(k.to_owned(), v.into());
            }
            None => env.push(line.to_owned()),
        }
    }
    let json = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": env},
        "root": {"path": "rootfs"},
        "annotations": annotations,
    });
    let Ok(spec) = serde_json::from_value::<Spec>(json) else {
        return;
    };
    let _ = GpuRequest::from_spec(&spec, &RequestPolicy::default());
    let strict = RequestPolicy {
        accept_envvar_when_unprivileged: false,
        accept_volume_mounts: true,
        ..RequestPolicy::default()
    };
    let _ = GpuRequest::from_spec(&spec, &strict);
});
