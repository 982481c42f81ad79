//! What containerd versions newer than the 1.6 of these tests ask of a shim binary, checked on
//! the binary itself (a containerd 2.x to drive it is built from source outside CI; see the
//! README).

use anyhow::{Context, Result};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

#[test]
fn info_reports_the_runtime_features_containerd_2_introspects() -> Result<()> {
    let out = std::process::Command::new(nvidia_shim_integration::shim_binary())
        .arg("-info")
        .output()
        .context("run the shim with -info")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&out.stdout)?;
    assert_eq!(info.name, "io.containerd.nvidia.v2");
    let features = info.features.as_ref().context("no features")?;
    assert_eq!(
        features.type_url,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    );
    let json: serde_json::Value = serde_json::from_slice(&features.value)?;
    // containerd's CRI reads recursive read-only mounts and user namespace support from these.
    assert!(
        json["mountOptions"]
            .as_array()
            .is_some_and(|o| o.iter().any(|v| v == "rro")),
        "{json}"
    );
    assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], true);
    Ok(())
}
