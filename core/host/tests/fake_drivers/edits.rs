use std::path::{Path, PathBuf};

use nvidia_shim_core::edits::{DriverEdits, FILE_MOUNT_OPTIONS};
use nvidia_shim_core::request::DeviceSelection;
use nvidia_shim_core_host::discover;
use nvidia_shim_core_host::fixture::{mknod, request, root_or_skip, FakeDriver, Layout, VERSION};
use nvidia_shim_core_host::snapshot::edits_for;

use super::support::{
    apply_one, container, device_paths, device_rules, edits, edits_err, fake, fake_edits,
    fake_with, inventory, mount_dests, node_paths,
};

#[test]
fn all_gpus_get_nodes_rules_libraries_binaries_and_env() {
    let Some((_fake, inv)) = fake(4, Layout::Distro) else {
        return;
    };
    let (mut spec, edits) = container(&inv, &["NVIDIA_VISIBLE_DEVICES=all"]);
    apply_one(&mut spec, &edits);
    let devs = device_paths(&spec);
    for d in [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia0",
        "/dev/nvidia3",
    ] {
        assert!(devs.contains(&d.to_owned()), "{d} missing from {devs:?}");
    }
    assert!(
        !devs.contains(&"/dev/nvidia-modeset".to_owned()),
        "modeset only with display"
    );
    let rules = device_rules(&spec);
    assert_eq!(rules.len(), devs.len());
    assert!(rules
        .iter()
        .all(|r| r.allow() && r.access().as_deref() == Some("rwm")));
    let mounts = mount_dests(&spec);
    assert!(mounts.contains(&"/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04".to_owned()));
    assert!(mounts.contains(&"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04".to_owned()));
    assert!(mounts.contains(&"/usr/bin/nvidia-smi".to_owned()));
    assert!(mounts.iter().any(|m| m.ends_with("gsp_ga10x.bin")));
    assert!(edits.symlinks.contains(&(
        PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "libcuda.so.580.159.04".to_owned()
    )));
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env, ["NVIDIA_VISIBLE_DEVICES=void"]);
    let ours: Vec<_> = spec
        .mounts()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|m| edits.mounts.iter().any(|(_, c)| c == m.destination()))
        .collect();
    assert_eq!(ours.len(), edits.mounts.len());
    for m in ours {
        assert_eq!(
            m.options().clone().unwrap(),
            FILE_MOUNT_OPTIONS.map(str::to_owned).to_vec()
        );
        assert!(m
            .source()
            .as_ref()
            .unwrap()
            .starts_with(&inv.roots.driver_root));
        assert!(m.destination().is_absolute());
    }
}

#[test]
fn one_gpu_by_index_uuid_or_bus_gets_only_its_node() {
    let Some((_fake, inv)) = fake(4, Layout::Distro) else {
        return;
    };
    let uuid = inv.gpus[1].uuid.clone();
    let bus = inv.gpus[1].bus_id.clone();
    for value in ["1".to_owned(), uuid, bus] {
        let edits = edits(&inv, &[&format!("NVIDIA_VISIBLE_DEVICES={value}")]);
        let mut gpu_nodes = node_paths(&edits);
        gpu_nodes.retain(|p| p.trim_start_matches("/dev/nvidia").parse::<u32>().is_ok());
        assert_eq!(gpu_nodes, ["/dev/nvidia1"], "{value}");
    }
}

#[test]
fn none_gives_control_nodes_and_libraries_but_no_gpu() {
    let Some((_fake, _, edits)) = fake_edits(2, Layout::Distro, &["NVIDIA_VISIBLE_DEVICES=none"])
    else {
        return;
    };
    let paths = node_paths(&edits);
    assert!(paths.contains(&"/dev/nvidiactl".to_owned()));
    assert!(!paths
        .iter()
        .any(|p| p == "/dev/nvidia0" || p == "/dev/nvidia1"));
    assert!(edits
        .mounts
        .iter()
        .any(|(h, _)| h.ends_with("libcuda.so.580.159.04")));
}

#[test]
fn void_or_unset_changes_nothing() {
    let Some((_fake, inv)) = fake(1, Layout::Distro) else {
        return;
    };
    for env in [
        &[][..],
        &["NVIDIA_VISIBLE_DEVICES=void"][..],
        &["NVIDIA_VISIBLE_DEVICES="][..],
    ] {
        let (mut spec, edits) = container(&inv, env);
        assert_eq!(edits, DriverEdits::default());
        let before = spec.clone();
        apply_one(&mut spec, &edits);
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }
}

#[test]
fn utility_only_has_no_uvm_and_no_compute_libraries() {
    let Some((_fake, _, edits)) = fake_edits(
        1,
        Layout::Distro,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
    ) else {
        return;
    };
    assert!(!edits
        .devices
        .iter()
        .any(|d| d.path.to_string_lossy().contains("uvm")));
    assert!(!edits
        .mounts
        .iter()
        .any(|(h, _)| h.to_string_lossy().contains("libcuda")));
    assert!(edits
        .mounts
        .iter()
        .any(|(h, _)| h.to_string_lossy().contains("libnvidia-ml")));
    assert!(edits.mounts.iter().any(|(h, _)| h.ends_with("nvidia-smi")));
}

#[test]
fn apply_is_idempotent_and_keeps_existing_nodes_single() {
    let Some((_fake, inv)) = fake(2, Layout::Distro) else {
        return;
    };
    let (mut spec, edits) = container(&inv, &["NVIDIA_VISIBLE_DEVICES=all"]);
    // A device plugin already passed /dev/nvidia0 as a DeviceSpec.
    apply_one(
        &mut spec,
        &DriverEdits {
            devices: vec![inv.gpu_nodes[&0].clone()],
            ..Default::default()
        },
    );
    apply_one(&mut spec, &edits);
    let once = serde_json::to_string(&spec).unwrap();
    apply_one(&mut spec, &edits);
    assert_eq!(serde_json::to_string(&spec).unwrap(), once);
    let devs = device_paths(&spec);
    assert_eq!(devs.iter().filter(|d| *d == "/dev/nvidia0").count(), 1);
}

#[test]
fn unknown_gpu_lists_the_valid_ones() {
    let Some((_fake, inv)) = fake(2, Layout::Distro) else {
        return;
    };
    let err = edits_err(&inv, &["NVIDIA_VISIBLE_DEVICES=7"]);
    assert!(
        err.contains("\"7\"") && err.contains(&inv.gpus[0].uuid) && err.contains(&inv.gpus[1].uuid),
        "{err}"
    );
}

#[test]
fn usr_local_nvidia_files_keep_their_paths_under_the_root() {
    let Some((_fake, _, edits)) =
        fake_edits(1, Layout::UsrLocalNvidia, &["NVIDIA_VISIBLE_DEVICES=all"])
    else {
        return;
    };
    let dests: Vec<_> = edits
        .mounts
        .iter()
        .map(|(_, c)| c.display().to_string())
        .collect();
    assert!(
        dests.contains(&"/lib64/libcuda.so.580.159.04".to_owned()),
        "{dests:?}"
    );
    assert!(dests.contains(&"/bin/nvidia-smi".to_owned()), "{dests:?}");
}

#[test]
fn imex_channels_become_nodes_with_the_driver_major() {
    let Some((fake, _, edits)) = fake_edits(
        1,
        Layout::Distro,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=channel2"],
    ) else {
        return;
    };
    let node = edits
        .devices
        .iter()
        .find(|d| d.path == Path::new("/dev/nvidia-caps-imex-channels/channel2"))
        .expect("channel node");
    assert_eq!((node.major, node.minor), (242, 2));
    // A driver without IMEX support: a clear error, not a container without its channel.
    let devices = fake.proc_root().join("devices");
    let text = std::fs::read_to_string(&devices).unwrap();
    std::fs::write(
        &devices,
        text.replace("242 nvidia-caps-imex-channels\n", ""),
    )
    .unwrap();
    let inv = discover::inventory(&fake.roots()).unwrap();
    let err = edits_err(
        &inv,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=2"],
    );
    assert!(
        err.contains("IMEX channel 2") && err.contains("devices"),
        "{err}"
    );
}

#[test]
fn gated_features_bring_their_host_devices_only_when_enabled() {
    let Some((fake, inv)) = fake(1, Layout::Distro) else {
        return;
    };
    let dev = fake.roots().dev_root.join("dev");
    mknod(&dev.join("nvidia-fs0"), 246, 0);
    mknod(&dev.join("infiniband/uverbs0"), 231, 192);
    mknod(&dev.join("infiniband/rdma_cm"), 10, 58);
    mknod(&dev.join("nvidia-nvswitchctl"), 507, 255);
    mknod(&dev.join("nvidia-nvswitch0"), 507, 0);
    mknod(&dev.join("gdrdrv"), 510, 0);
    std::fs::create_dir_all(fake.roots().dev_root.join("run/udev")).unwrap();
    let paths = |env: &[&str]| -> (Vec<String>, Vec<String>) {
        let e = edits(&inv, env);
        (
            node_paths(&e),
            e.mounts
                .iter()
                .map(|(_, c)| c.display().to_string())
                .collect(),
        )
    };
    let (plain, _) = paths(&["NVIDIA_VISIBLE_DEVICES=0"]);
    assert!(!plain
        .iter()
        .any(|p| p.contains("fs0") || p.contains("infiniband")));
    let (all, mounts) = paths(&[
        "NVIDIA_VISIBLE_DEVICES=0",
        "NVIDIA_GDS=enabled",
        "NVIDIA_MOFED=enabled",
        "NVIDIA_NVSWITCH=enabled",
        "NVIDIA_GDRCOPY=enabled",
    ]);
    for want in [
        "/dev/nvidia-fs0",
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/rdma_cm",
        "/dev/nvidia-nvswitchctl",
        "/dev/nvidia-nvswitch0",
        "/dev/gdrdrv",
    ] {
        assert!(all.contains(&want.to_owned()), "{want} in {all:?}");
    }
    assert!(mounts.contains(&"/run/udev".to_owned()), "{mounts:?}");
}

fn nodes(e: &DriverEdits) -> Vec<String> {
    e.devices
        .iter()
        .map(|d| format!("{} {}:{}", d.path.display(), d.major, d.minor))
        .collect()
}

#[test]
fn mig_devices_are_read_from_proc_and_selected_by_index() {
    let Some((_f, inv)) = fake_with(FakeDriver::mig_host) else {
        return;
    };
    let layout: Vec<(u32, u32, u32, u32)> = inv
        .mig
        .iter()
        .map(|m| (m.parent, m.index, m.gi, m.ci))
        .collect();
    assert_eq!(layout, [(1, 0, 1, 0), (1, 1, 1, 1), (1, 2, 2, 0)]);
    // 1:2 is GI 2 / CI 0: the parent's node plus the GI and CI access nodes (minors 6 and 7:
    // config 1, monitor 2, then gi1 3, gi1/ci0 4, gi1/ci1 5, gi2 6, gi2/ci0 7).
    let e = edits(&inv, &["NVIDIA_VISIBLE_DEVICES=1:2"]);
    let n = nodes(&e);
    assert!(n.contains(&"/dev/nvidia1 195:1".to_owned()), "{n:?}");
    assert!(!n.contains(&"/dev/nvidia0 195:0".to_owned()), "{n:?}");
    assert!(
        n.contains(&"/dev/nvidia-caps/nvidia-cap6 241:6".to_owned()),
        "{n:?}"
    );
    assert!(
        n.contains(&"/dev/nvidia-caps/nvidia-cap7 241:7".to_owned()),
        "{n:?}"
    );
    assert_eq!(n.iter().filter(|x| x.contains("nvidia-cap")).count(), 2);
    // all: every GPU and every MIG device.
    let e = edits(&inv, &["NVIDIA_VISIBLE_DEVICES=all"]);
    assert_eq!(
        nodes(&e)
            .iter()
            .filter(|x| x.contains("nvidia-cap"))
            .count(),
        6
    );
}

#[test]
fn unknown_mig_ids_list_the_valid_ones_and_uuids_need_nvml() {
    let Some((_f, inv)) = fake_with(FakeDriver::mig_host) else {
        return;
    };
    let text = edits_err(&inv, &["NVIDIA_VISIBLE_DEVICES=1:3"]);
    assert!(
        text.contains("\"1:3\"") && text.contains("1:2 (MIG gi2 ci0)"),
        "{text}"
    );
    let err = edits_err(&inv, &["NVIDIA_VISIBLE_DEVICES=MIG-0c6f3c5a-0000"]);
    assert!(err.contains("MIG UUID without NVML"), "{err}");
}

#[test]
fn mig_config_gives_the_config_cap_and_the_gpus_mig_caps() {
    let Some((_f, inv)) = fake_with(FakeDriver::mig_host) else {
        return;
    };
    let mut r = request(&["NVIDIA_VISIBLE_DEVICES=1"]);
    r.mig_config = DeviceSelection::parse(Some("1"), false).unwrap();
    let n = nodes(&edits_for(&inv, &r).unwrap());
    let caps: Vec<&String> = n.iter().filter(|x| x.contains("nvidia-cap")).collect();
    // config (1) then every MIG minor of GPU 1 (3..=7).
    assert_eq!(caps.len(), 6, "{caps:?}");
    assert!(n.contains(&"/dev/nvidia-caps/nvidia-cap1 241:1".to_owned()));
    r.mig_config = DeviceSelection::Void;
    r.mig_monitor = DeviceSelection::All;
    let n = nodes(&edits_for(&inv, &r).unwrap());
    assert!(
        n.contains(&"/dev/nvidia-caps/nvidia-cap2 241:2".to_owned()),
        "{n:?}"
    );
    // A host without MIG support says so.
    let (_g, plain) = inventory(1, Layout::Distro);
    let mut r = request(&["NVIDIA_VISIBLE_DEVICES=0"]);
    r.mig_monitor = DeviceSelection::All;
    let err = edits_for(&plain, &r).unwrap_err().to_string();
    assert!(
        err.contains("MIG monitor requested") && err.contains("mig-minors"),
        "{err}"
    );
}

#[test]
fn graphics_gets_vulkan_and_egl_configs_at_usr_share_in_both_layouts() {
    if !root_or_skip("graphics_gets_vulkan_and_egl_configs_at_usr_share_in_both_layouts") {
        return;
    }
    for layout in [Layout::Distro, Layout::UsrLocalNvidia] {
        let (_f, inv) = inventory(1, layout);
        let configs = |caps: &str| -> Vec<String> {
            let r = request(&[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("NVIDIA_DRIVER_CAPABILITIES={caps}"),
            ]);
            edits_for(&inv, &r)
                .unwrap()
                .mounts
                .iter()
                .map(|(_, c)| c.display().to_string())
                .filter(|c| c.ends_with(".json"))
                .collect()
        };
        assert_eq!(
            configs("graphics"),
            [
                "/usr/share/vulkan/icd.d/nvidia_icd.json",
                "/usr/share/glvnd/egl_vendor.d/10_nvidia.json"
            ],
            "{layout:?}"
        );
        assert!(configs("utility,compute").is_empty(), "{layout:?}");
    }
}

#[test]
fn every_library_gets_an_ld_cache_entry_and_the_toolkits_extra_links() {
    let Some((_fake, inv)) = fake(1, Layout::Distro) else {
        return;
    };
    let env = [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=all",
    ];
    let edits = edits(&inv, &env);
    let v = VERSION;
    let dir = Path::new("/usr/lib/x86_64-linux-gnu");
    for l in &inv.libraries {
        let soname = l.soname.clone().unwrap();
        assert!(
            edits
                .ld_cache
                .contains(&(soname.clone(), l.container_path.clone())),
            "{soname} has no ld cache entry: {:?}",
            edits.ld_cache
        );
    }
    // SONAME = file name (libnvidia-glcore.so.<v>): an entry, no link.
    let glcore = format!("libnvidia-glcore.so.{v}");
    assert!(edits.ld_cache.iter().any(|(k, _)| *k == glcore));
    assert!(!edits.symlinks.iter().any(|(l, _)| l.ends_with(&glcore)));
    for (link, target) in [
        ("libcuda.so", "libcuda.so.1".to_owned()),
        ("libGLX_indirect.so.0", format!("libGLX_nvidia.so.{v}")),
    ] {
        if link == "libGLX_indirect.so.0" && inv.library("libGLX_nvidia").is_none() {
            continue; // the fake driver has no GLX library
        }
        assert!(
            edits.symlinks.contains(&(dir.join(link), target.clone())),
            "{link} -> {target} missing: {:?}",
            edits.symlinks
        );
        assert!(edits.ld_cache.iter().any(|(k, _)| k == link));
    }
    // Each link is made once.
    let mut links: Vec<_> = edits.symlinks.iter().map(|(l, _)| l).collect();
    let n = links.len();
    links.sort();
    links.dedup();
    assert_eq!(links.len(), n, "{:?}", edits.symlinks);
}

#[test]
fn a_root_without_a_capabilitys_core_library_fails_naming_it() {
    let Some((fake, _)) = fake(1, Layout::Distro) else {
        return;
    };
    let v = VERSION;
    let lib = fake
        .driver_root()
        .join(format!("usr/lib/x86_64-linux-gnu/libcuda.so.{v}"));
    std::fs::remove_file(&lib).unwrap();
    let inv = discover::inventory(&fake.roots()).unwrap();
    let err = edits_err(&inv, &["NVIDIA_VISIBLE_DEVICES=all"]);
    assert!(
        err.contains(&format!("compute needs libcuda.so.{v}"))
            && err.contains("etc/ld.so.cache")
            && err.contains("usr/lib/x86_64-linux-gnu"),
        "{err}"
    );
    // utility alone does not need libcuda.
    edits(
        &inv,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
    );
}
