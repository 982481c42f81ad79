use nvidia_shim_core::inventory::{LibraryGroup, DRIVER_ROOT_CANDIDATES, LD_CACHE};

use super::*;
use crate::fixture::{is_root, layouts, FakeDriver, Layout};

#[test]
fn discovers_a_four_gpu_distro_layout() {
    if !is_root() {
        eprintln!("SKIP discovers_a_four_gpu_distro_layout: mknod of device nodes needs root");
        return;
    }
    let fake = FakeDriver::builder().gpus(4).build();
    let inv = inventory(&fake.roots()).unwrap();
    assert_eq!(inv.driver_version, "580.159.04");
    assert_eq!(inv.gpus.len(), 4);
    assert_eq!((inv.ctl.major, inv.ctl.minor), (195, 255));
    assert_eq!(inv.uvm.as_ref().map(|n| (n.major, n.minor)), Some((238, 0)));
    assert_eq!(inv.gpu_nodes[&3].path, Path::new("/dev/nvidia3"));
    let cuda = inv.library("libcuda").unwrap();
    assert_eq!(cuda.soname.as_deref(), Some("libcuda.so.1"));
    assert_eq!(cuda.group, LibraryGroup::Compute);
    assert_eq!(
        cuda.container_path,
        Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04")
    );
    assert!(inv
        .binaries
        .iter()
        .any(|b| b.container_path == Path::new("/usr/bin/nvidia-smi")));
    assert_eq!(inv.firmware.len(), 2);
    assert_eq!(inv.char_majors.get("nvidia-uvm"), Some(&238));
    assert_eq!(inv.nvml_unavailable.as_deref(), Some(NVML_NOT_TRIED));
}

#[test]
fn finds_the_usr_local_nvidia_layout() {
    let fake = FakeDriver::builder()
        .gpus(1)
        .layout(Layout::UsrLocalNvidia)
        .build();
    let root = detect_driver_root(
        fake.host_root(),
        DRIVER_ROOT_CANDIDATES,
        "580.159.04",
        Arch::X86_64,
    )
    .unwrap();
    assert_eq!(root, fake.host_root().join("usr/local/nvidia"));
}

#[test]
fn no_driver_root_is_a_clear_error() {
    let fake = FakeDriver::builder().gpus(1).build();
    let err = detect_driver_root(fake.host_root(), &["/opt/none"], "580.159.04", Arch::X86_64)
        .unwrap_err();
    assert!(
        err.to_string().contains("/opt/none") && err.to_string().contains("580.159.04"),
        "{err}"
    );
}

#[test]
fn missing_driver_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        driver_root: dir.path().to_owned(),
        dev_root: dir.path().to_owned(),
        proc_root: dir.path().join("proc"),
    };
    let err = inventory(&roots).unwrap_err();
    assert!(matches!(err, DiscoverError::NoDriver { .. }), "{err}");
    assert!(err.to_string().contains("driver/nvidia/version"));
}

const V: &str = "535.261.03";

/// A host root with `items` installed for `arch`, and, as root, the ld cache the host's own
/// `ldconfig -r` builds for it (`None` when it cannot run here: the layouts are then found
/// through their directories alone).
fn host_with(items: &[layouts::Item], arch: Arch) -> (tempfile::TempDir, Option<()>) {
    let dir = tempfile::tempdir().unwrap();
    layouts::install(dir.path(), items, V, arch);
    let cache = (is_root() && arch == Arch::X86_64)
        .then(|| {
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            let conf = dir.path().join("etc/ld.so.conf");
            if !conf.exists() {
                std::fs::write(&conf, "include /etc/ld.so.conf.d/*.conf\n").unwrap();
            }
            let status = std::process::Command::new("ldconfig")
                .arg("-r")
                .arg(dir.path())
                .status()
                .ok()?;
            (status.success() && dir.path().join(LD_CACHE).exists()).then_some(())
        })
        .flatten();
    if cache.is_none() {
        eprintln!("note: no ld cache for this layout (needs root and ldconfig): directories only");
    }
    (dir, cache)
}

/// The libraries of `root` as (name, container path, host path relative to the host root).
fn found(host: &Path, root: &Path, arch: Arch) -> Vec<(String, String, String)> {
    let set = libraries(&Root::open(root).unwrap(), arch, V);
    set.libraries
        .iter()
        .map(|l| {
            (
                l.name().to_owned(),
                l.container_path.display().to_string(),
                Path::new("/")
                    .join(l.path.strip_prefix(host).unwrap())
                    .display()
                    .to_string(),
            )
        })
        .collect()
}

fn lib<'a>(libs: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    libs.iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("{name} not found in {libs:#?}"))
}

#[test]
fn debian_packages_are_found_through_alternatives_and_injected_where_the_cache_names_them() {
    let (host, cache) = host_with(&layouts::debian(), Arch::X86_64);
    let libs = found(host.path(), host.path(), Arch::X86_64);
    let cuda = lib(&libs, "libcuda");
    assert_eq!(cuda.1, format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"));
    assert_eq!(
        cuda.2,
        format!("/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.{V}")
    );
    let ml = lib(&libs, "libnvidia-ml");
    assert_eq!(
        ml.1,
        format!("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{V}")
    );
    // libnvidia-cfg.so.1 is linked into .../nvidia/ only, which no cache or directory lists:
    // it is found where its real file is.
    let cfg = lib(&libs, "libnvidia-cfg");
    assert_eq!(
        cfg.1,
        format!("/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-cfg.so.{V}")
    );
    // libvdpau_nvidia.so.1 is linked into .../vdpau/ only: the same.
    assert_eq!(
        lib(&libs, "libvdpau_nvidia").1,
        format!("/usr/lib/x86_64-linux-gnu/nvidia/current/libvdpau_nvidia.so.{V}")
    );
    let glsi = lib(&libs, "libnvidia-glsi");
    assert_eq!(glsi.1, glsi.2, "real files in the multiarch dir stay there");
    let names: Vec<&str> = libs.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        libs.len(),
        layouts::SONAMES.len(),
        "every library of the packages: {names:?}"
    );
    let root = Root::open(host.path()).unwrap();
    let set = libraries(&root, Arch::X86_64, V);
    let bins = files::binaries(&root, &set.libraries);
    let smi = bins
        .iter()
        .find(|b| b.container_path == Path::new("/usr/bin/nvidia-smi"));
    assert_eq!(
        smi.map(|b| b.path.strip_prefix(host.path()).unwrap().to_owned()),
        Some(PathBuf::from("usr/lib/nvidia/current/nvidia-smi"))
    );
    assert!(bins
        .iter()
        .any(|b| b.container_path == Path::new("/usr/sbin/nvidia-cuda-mps-server")));
    assert_eq!(files::firmware(&root, V, &set.libraries).len(), 2);
    assert_eq!(files::graphics_configs(&root).len(), 2);
    // No version of these files is another driver's: a 470 root finds nothing.
    assert!(libraries(&root, Arch::X86_64, "470.82.01")
        .libraries
        .is_empty());
    if cache.is_some() {
        // The cache alone (directories emptied of links) still finds what it lists.
        let bytes = std::fs::read(host.path().join(LD_CACHE)).unwrap();
        let cached = nvidia_shim_core::ldcache::parse(&bytes).unwrap();
        assert!(cached.iter().any(|e| e.key == "libcuda.so.1"));
    }
}

#[test]
fn a_flat_multiarch_install_and_a_lib64_install_are_found_in_place() {
    for (items, dir) in [
        (layouts::flat(), "/usr/lib/x86_64-linux-gnu"),
        (layouts::rhel(), "/usr/lib64"),
    ] {
        let (host, _) = host_with(&items, Arch::X86_64);
        let libs = found(host.path(), host.path(), Arch::X86_64);
        assert_eq!(libs.len(), layouts::SONAMES.len(), "{dir}: {libs:#?}");
        for l in &libs {
            assert_eq!(l.1, l.2, "real files are injected where they are");
            assert!(l.1.starts_with(dir), "{l:?}");
        }
        // VDPAU's driver lives in the vdpau/ subdirectory, beside libcuda's directory.
        assert_eq!(
            lib(&libs, "libvdpau_nvidia").1,
            format!("{dir}/vdpau/libvdpau_nvidia.so.{V}")
        );
        let root = Root::open(host.path()).unwrap();
        let set = libraries(&root, Arch::X86_64, V);
        assert!(
            !files::firmware(&root, V, &set.libraries).is_empty(),
            "{dir}"
        );
        assert!(files::binaries(&root, &set.libraries)
            .iter()
            .any(|b| b.container_path == Path::new("/usr/bin/nvidia-smi")));
    }
}

#[test]
fn usr_local_nvidia_as_its_own_root_or_behind_host_links_never_gives_its_glibc() {
    let (host, _) = host_with(&layouts::usr_local_nvidia(), Arch::X86_64);
    // As the driver root (the config's driver_root, or detected).
    let root = host.path().join("usr/local/nvidia");
    let libs = found(host.path(), &root, Arch::X86_64);
    assert_eq!(libs.len(), layouts::SONAMES.len(), "{libs:#?}");
    assert_eq!(lib(&libs, "libcuda").1, format!("/lib64/libcuda.so.{V}"));
    assert!(
        !libs.iter().any(|l| l.2.contains("glibc")),
        "its glibc is never a driver library: {libs:#?}"
    );
    let opened = Root::open(&root).unwrap();
    let set = libraries(&opened, Arch::X86_64, V);
    assert!(files::binaries(&opened, &set.libraries)
        .iter()
        .any(|b| b.container_path == Path::new("/bin/nvidia-smi")));
    // As `/`, through the host's links and ld cache into it: the binaries and firmware beside
    // its lib64 are found too, and binaries land on the container's PATH.
    let as_host = Root::open(host.path()).unwrap();
    let set = libraries(&as_host, Arch::X86_64, V);
    assert!(set.libraries.iter().any(|l| l.name() == "libnvidia-ml"));
    assert!(!set
        .libraries
        .iter()
        .any(|l| l.path.to_string_lossy().contains("glibc")));
    let smi = files::binaries(&as_host, &set.libraries)
        .into_iter()
        .find(|b| b.path.ends_with("usr/local/nvidia/bin/nvidia-smi"))
        .expect("nvidia-smi beside lib64");
    assert_eq!(smi.container_path, Path::new("/usr/bin/nvidia-smi"));
    assert_eq!(files::firmware(&as_host, V, &set.libraries).len(), 1);
    assert_eq!(
        detect_driver_root(host.path(), DRIVER_ROOT_CANDIDATES, V, Arch::X86_64).unwrap(),
        host.path(),
        "`/` holds libnvidia-ml through its links"
    );
}

#[test]
fn aarch64_hosts_use_their_triplet_flags_and_machine() {
    let (host, _) = host_with(&layouts::debian_aarch64(), Arch::Aarch64);
    let libs = found(host.path(), host.path(), Arch::Aarch64);
    assert_eq!(
        lib(&libs, "libcuda").1,
        format!("/usr/lib/aarch64-linux-gnu/libcuda.so.{V}")
    );
    assert_eq!(libs.len(), layouts::SONAMES.len());
    // Looked for as x86_64, nothing matches: other directories, and the machine differs.
    assert!(found(host.path(), host.path(), Arch::X86_64).is_empty());
    // An aarch64 ld cache names them with aarch64 flags.
    let entries: Vec<nvidia_shim_core::ldcache::Entry> = ["libcuda.so.1", "libnvidia-ml.so.1"]
        .iter()
        .map(|k| nvidia_shim_core::ldcache::Entry {
            flags: Arch::Aarch64.ldcache_flags(),
            key: (*k).to_owned(),
            value: format!("/usr/lib/aarch64-linux-gnu/{k}"),
            osversion: 0,
            hwcap: 0,
        })
        .collect();
    std::fs::write(
        host.path().join(LD_CACHE),
        nvidia_shim_core::ldcache::build(entries),
    )
    .unwrap();
    assert_eq!(
        found(host.path(), host.path(), Arch::Aarch64).len(),
        layouts::SONAMES.len()
    );
    // x86_64 objects in an aarch64 directory are refused by their machine.
    let other = tempfile::tempdir().unwrap();
    layouts::install(other.path(), &layouts::debian_aarch64(), V, Arch::X86_64);
    assert!(found(other.path(), other.path(), Arch::Aarch64).is_empty());
}

#[test]
fn only_the_ld_cache_of_the_architecture_counts() {
    let (host, _) = host_with(&layouts::flat(), Arch::X86_64);
    // A cache naming the libraries only under other flags (i386's): they are still found
    // through the directories, never through those entries.
    let entries = vec![nvidia_shim_core::ldcache::Entry {
        flags: 0x0003,
        key: "libcuda.so.1".into(),
        value: "/usr/lib/i386-linux-gnu/libcuda.so.1".into(),
        osversion: 0,
        hwcap: 0,
    }];
    std::fs::create_dir_all(host.path().join("etc")).unwrap();
    std::fs::write(
        host.path().join(LD_CACHE),
        nvidia_shim_core::ldcache::build(entries),
    )
    .unwrap();
    let libs = found(host.path(), host.path(), Arch::X86_64);
    assert_eq!(
        lib(&libs, "libcuda").1,
        format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}")
    );
}

#[test]
fn the_gpu_operators_driver_container_root_is_detected_and_its_paths_are_relative_to_it() {
    // The GPU Operator's driver container exposes its own `/` (a distribution with the driver
    // installed flat) at /run/nvidia/driver on the host.
    let host = tempfile::tempdir().unwrap();
    let items: Vec<layouts::Item> = layouts::flat()
        .into_iter()
        .map(|i| match i {
            layouts::Item::Lib(p, s) => layouts::Item::Lib(format!("run/nvidia/driver/{p}"), s),
            layouts::Item::Link(p, t) => layouts::Item::Link(format!("run/nvidia/driver/{p}"), t),
            layouts::Item::Exe(p) => layouts::Item::Exe(format!("run/nvidia/driver/{p}")),
            layouts::Item::Data(p) => layouts::Item::Data(format!("run/nvidia/driver/{p}")),
        })
        .collect();
    layouts::install(host.path(), &items, V, Arch::X86_64);
    let root = detect_driver_root(host.path(), DRIVER_ROOT_CANDIDATES, V, Arch::X86_64).unwrap();
    assert_eq!(root, host.path().join("run/nvidia/driver"));
    let libs = found(host.path(), &root, Arch::X86_64);
    assert_eq!(libs.len(), layouts::SONAMES.len());
    assert_eq!(
        lib(&libs, "libcuda"),
        &(
            "libcuda".to_owned(),
            format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"),
            format!("/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"),
        )
    );
}

#[test]
fn libraries_linked_only_from_subdirectories_are_found_beside_libcudas_real_file() {
    // Debian's Tesla flavour: the real files in nvidia/tesla-535, which no library directory
    // and no ld cache lists; libnvidia-cfg.so.1 is linked from .../nvidia/ only and
    // libvdpau_nvidia.so.1 from .../vdpau/ only.
    let (host, _) = host_with(&layouts::debian_tesla(), Arch::X86_64);
    let libs = found(host.path(), host.path(), Arch::X86_64);
    let flavour = "/usr/lib/x86_64-linux-gnu/nvidia/tesla-535";
    assert_eq!(
        lib(&libs, "libcuda").1,
        format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"),
        "found through its alternatives link"
    );
    for name in ["libnvidia-cfg", "libvdpau_nvidia"] {
        let l = lib(&libs, name);
        assert_eq!(l.1, format!("{flavour}/{name}.so.{V}"), "{l:?}");
        assert_eq!(l.1, l.2, "injected where its real file is");
    }
    assert_eq!(libs.len(), layouts::SONAMES.len(), "{libs:#?}");
    let set = libraries(&Root::open(host.path()).unwrap(), Arch::X86_64, V);
    assert!(
        set.searched
            .iter()
            .any(|p| p.ends_with("x86_64-linux-gnu/nvidia/tesla-535")),
        "the flavour directory is named among the places searched: {:?}",
        set.searched
    );
    // Another driver version's files there are not taken.
    assert!(
        libraries(&Root::open(host.path()).unwrap(), Arch::X86_64, "535.1.1")
            .libraries
            .is_empty()
    );
}

#[test]
fn every_library_every_capability_needs_is_found_on_every_packaging() {
    let layouts: [(&str, Vec<layouts::Item>, &str, Arch); 6] = [
        ("Debian", layouts::debian(), "", Arch::X86_64),
        ("Debian Tesla", layouts::debian_tesla(), "", Arch::X86_64),
        ("Ubuntu/runfile", layouts::flat(), "", Arch::X86_64),
        ("RHEL", layouts::rhel(), "", Arch::X86_64),
        (
            "/usr/local/nvidia",
            layouts::usr_local_nvidia(),
            "usr/local/nvidia",
            Arch::X86_64,
        ),
        (
            "Debian aarch64",
            layouts::debian_aarch64(),
            "",
            Arch::Aarch64,
        ),
    ];
    for (what, items, root, arch) in layouts {
        let (host, _) = host_with(&items, arch);
        let libs = found(host.path(), &host.path().join(root), arch);
        for (name, _) in layouts::SONAMES {
            assert!(
                libs.iter().any(|l| l.0 == *name),
                "{what}: {name} not found among {:?}",
                libs.iter().map(|l| &l.0).collect::<Vec<_>>()
            );
        }
    }
}
