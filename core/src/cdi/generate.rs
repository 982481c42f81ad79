//! A CDI spec for the host's GPUs from a discovered [`Inventory`], named as
//! `nvidia-ctk cdi generate` names them: kind `nvidia.com/gpu`, one device per index and per
//! UUID, and `all`. Common nodes and driver files go into the spec-wide edits; the SONAME links
//! and ld cache are expressed as `nvidia-cdi-hook` steps, which this shim performs natively
//! (other runtimes need the toolkit's hook installed).

use std::path::Path;

use super::spec::{CdiDevice, CdiSpec, ContainerEdits, DeviceNode, Hook, Mount};
use crate::discover::{DeviceNode as HostNode, Inventory};
use crate::edits::{edits_for, FILE_MOUNT_OPTIONS, IPC_MOUNT_OPTIONS};
use crate::request::{Capabilities, DeviceSelection, GpuRequest, RequestSource};

/// The kind of generated specs.
pub const KIND: &str = "nvidia.com/gpu";
/// Where the toolkit's hook program is installed.
pub const HOOK_PATH: &str = "/usr/bin/nvidia-cdi-hook";

fn node(n: &HostNode) -> DeviceNode {
    let host = n.host_path.to_string_lossy().into_owned();
    let path = n.path.to_string_lossy().into_owned();
    DeviceNode {
        host_path: (host != path).then_some(host),
        path,
        ..DeviceNode::default()
    }
}

/// Generates the spec for `inventory` with `capabilities` (use `all` for a general spec).
pub fn generate(inventory: &Inventory, capabilities: Capabilities) -> CdiSpec {
    let request = GpuRequest {
        devices: DeviceSelection::NoGpu,
        source: RequestSource::Env,
        capabilities,
        requirements: Default::default(),
        disable_require: true,
        privileged: true,
        env_ignored: false,
        imex_channels: Vec::new(),
        gated: Vec::new(),
        mig_config: DeviceSelection::Void,
        mig_monitor: DeviceSelection::Void,
    };
    // `none` selects no GPU, so this cannot fail.
    let common = edits_for(inventory, &request).unwrap_or_default();
    let mut edits = ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".to_owned()],
        device_nodes: common.devices.iter().map(node).collect(),
        mounts: common
            .mounts
            .iter()
            .map(|m| (m, &FILE_MOUNT_OPTIONS))
            .chain(common.ipc.iter().map(|m| (m, &IPC_MOUNT_OPTIONS)))
            .map(|((host, container), options)| Mount {
                host_path: host.to_string_lossy().into_owned(),
                container_path: container.to_string_lossy().into_owned(),
                options: options.map(str::to_owned).to_vec(),
                typ: None,
            })
            .collect(),
        ..ContainerEdits::default()
    };
    if !common.symlinks.is_empty() {
        let mut args = vec!["nvidia-cdi-hook".to_owned(), "create-symlinks".to_owned()];
        for (link, target) in &common.symlinks {
            args.push("--link".to_owned());
            args.push(format!("{target}::{}", link.display()));
        }
        edits.hooks.push(hook(args));
        let mut folders: Vec<&Path> = common
            .symlinks
            .iter()
            .filter_map(|(l, _)| l.parent())
            .collect();
        folders.sort();
        folders.dedup();
        let mut args = vec!["nvidia-cdi-hook".to_owned(), "update-ldcache".to_owned()];
        for f in folders {
            args.push("--folder".to_owned());
            args.push(f.display().to_string());
        }
        edits.hooks.push(hook(args));
    }
    let gpu_edits = |minors: &[u32]| ContainerEdits {
        device_nodes: minors
            .iter()
            .filter_map(|m| inventory.gpu_nodes.get(m))
            .map(node)
            .collect(),
        ..ContainerEdits::default()
    };
    let mut devices = Vec::new();
    for g in &inventory.gpus {
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(CdiDevice {
                name,
                annotations: Default::default(),
                container_edits: gpu_edits(&[g.minor]),
            });
        }
    }
    let all: Vec<u32> = inventory.gpus.iter().map(|g| g.minor).collect();
    devices.push(CdiDevice {
        name: "all".to_owned(),
        annotations: Default::default(),
        container_edits: gpu_edits(&all),
    });
    let mut spec = CdiSpec {
        cdi_version: String::new(),
        kind: KIND.to_owned(),
        annotations: Default::default(),
        devices,
        container_edits: edits,
    };
    spec.cdi_version = spec.required_version().to_string();
    spec
}

fn hook(args: Vec<String>) -> Hook {
    Hook {
        hook_name: "createContainer".to_owned(),
        path: HOOK_PATH.to_owned(),
        args,
        env: Vec::new(),
        timeout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::{apply, Registry};
    use crate::discover::fixture::FakeDriver;

    #[test]
    fn generated_spec_round_trips_and_names_devices_like_nvidia_ctk() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP generated_spec_round_trips: fake nodes need mknod (root)");
            return;
        }
        let fake = FakeDriver::builder().gpus(2).build();
        let inv = Inventory::discover(&fake.roots()).unwrap();
        let spec = generate(&inv, Capabilities::all());
        let names: Vec<_> = spec.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["0", &inv.gpus[0].uuid, "1", &inv.gpus[1].uuid, "all"]
        );
        assert_eq!(spec.cdi_version, "0.5.0");

        let dir = tempfile::tempdir().unwrap();
        let yaml = serde_yaml::to_string(&spec).unwrap();
        std::fs::write(dir.path().join("nvidia.yaml"), &yaml).unwrap();
        let reg = Registry::load(&[dir.path()]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let resolved = reg.resolve(&["nvidia.com/gpu=1".into()]).unwrap();
        let mut oci: oci_spec::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","env":[]},"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        let plan = apply(&mut oci, &resolved).unwrap();
        let devices = oci.linux().as_ref().unwrap().devices().clone().unwrap();
        let paths: Vec<_> = devices
            .iter()
            .map(|d| d.path().to_str().unwrap().to_owned())
            .collect();
        assert!(
            paths.contains(&"/dev/nvidiactl".to_owned())
                && paths.contains(&"/dev/nvidia1".to_owned())
        );
        assert!(!paths.contains(&"/dev/nvidia0".to_owned()), "{paths:?}");
        assert!(plan
            .symlinks
            .iter()
            .any(|(l, t)| l.ends_with("libcuda.so.1") && t.starts_with("libcuda.so.")));
        assert!(!plan.ld_folders.is_empty());
    }
}
