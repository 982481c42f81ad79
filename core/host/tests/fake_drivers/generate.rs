use nvidia_shim_core::cdi::generate::{generate, Hooks};
use nvidia_shim_core::cdi::spec::HookStage;
use nvidia_shim_core::request::{Capabilities, GpuRequest, RequestPolicy};
use nvidia_shim_core_host::cdi::load_registry;
use nvidia_shim_core_host::discover::{mps_pipe_dir, present_endpoints};
use nvidia_shim_core_host::fixture::Layout;
use nvidia_shim_core_host::snapshot::edits_for;

use super::support::{apply_cdi, fake};

#[test]
fn generated_spec_round_trips_and_names_devices_like_nvidia_ctk() {
    let Some((_fake, inv)) = fake(2, Layout::Distro) else {
        return;
    };
    let spec = generate(&inv, Capabilities::all(), &Hooks::default(), &[]).unwrap();
    let names: Vec<_> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        ["0", &inv.gpus[0].uuid, "1", &inv.gpus[1].uuid, "all"]
    );
    assert_eq!(spec.cdi_version, "0.5.0");

    let dir = tempfile::tempdir().unwrap();
    let yaml = serde_norway::to_string(&spec).unwrap();
    std::fs::write(dir.path().join("nvidia.yaml"), &yaml).unwrap();
    let reg = load_registry(&[dir.path()]);
    assert!(reg.errors().is_empty(), "{:?}", reg.errors());
    let resolved = reg.resolve(&["nvidia.com/gpu=1".into()]).unwrap();
    let mut oci: oci_spec::runtime::Spec = serde_json::from_str(
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","env":[]},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    let plan = apply_cdi(&mut oci, &resolved).unwrap();
    let devices = oci.linux().as_ref().unwrap().devices().clone().unwrap();
    let paths: Vec<_> = devices
        .iter()
        .map(|d| d.path().to_str().unwrap().to_owned())
        .collect();
    assert!(
        paths.contains(&"/dev/nvidiactl".to_owned()) && paths.contains(&"/dev/nvidia1".to_owned())
    );
    assert!(!paths.contains(&"/dev/nvidia0".to_owned()), "{paths:?}");
    assert!(plan
        .symlinks
        .iter()
        .any(|(l, t)| l.ends_with("libcuda.so.1") && t.starts_with("libcuda.so.")));
    assert!(!plan.ld_folders.is_empty());
}

#[test]
fn the_spec_mounts_what_the_built_in_path_injects_for_all_capabilities() {
    let Some((_fake, inv)) = fake(2, Layout::Distro) else {
        return;
    };
    let ipc = present_endpoints(&inv.roots.dev_root, &mps_pipe_dir());
    let spec = generate(&inv, Capabilities::all(), &Hooks::None, &ipc).unwrap();
    let oci: oci_spec::runtime::Spec = serde_json::from_str(
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","env":["NVIDIA_VISIBLE_DEVICES=all","NVIDIA_DRIVER_CAPABILITIES=all"]},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    let request = GpuRequest::from_spec(&oci, &RequestPolicy::default()).unwrap();
    let built_in = edits_for(&inv, &request).unwrap();
    let mut want: Vec<(String, String)> = built_in
        .mounts
        .iter()
        .chain(&built_in.ipc)
        .map(|(h, c)| (h.display().to_string(), c.display().to_string()))
        .collect();
    let mut got: Vec<(String, String)> = spec
        .container_edits
        .mounts
        .iter()
        .map(|m| (m.host_path.clone(), m.container_path.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(spec.container_edits.hooks.is_empty(), "no hooks asked for");
    // With the toolkit's hook: at the given path, with an explicit environment, and the
    // links the built-in path makes.
    let hooked = generate(
        &inv,
        Capabilities::all(),
        &Hooks::NvidiaCdiHook("/opt/nvidia/bin/nvidia-cdi-hook".into()),
        &ipc,
    )
    .unwrap();
    let hooks = &hooked.container_edits.hooks;
    assert!(hooks
        .iter()
        .all(|h| h.path == "/opt/nvidia/bin/nvidia-cdi-hook"
            && h.env == ["NVIDIA_CTK_DEBUG=false"]
            && h.hook_name == HookStage::CreateContainer));
    let names: Vec<&str> = hooks.iter().map(|h| h.args[1].as_str()).collect();
    assert_eq!(
        names,
        ["create-symlinks", "enable-cuda-compat", "update-ldcache"]
    );
    for (link, target) in &built_in.symlinks {
        let arg = format!("{target}::{}", link.display());
        assert!(hooks[0].args.contains(&arg), "{arg} missing");
    }
}
