use super::fixture::{FakeDriver, Layout};
use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn discovers_a_four_gpu_distro_layout() {
    if !is_root() {
        eprintln!("SKIP discovers_a_four_gpu_distro_layout: mknod of device nodes needs root");
        return;
    }
    let fake = FakeDriver::builder().gpus(4).build();
    let inv = Inventory::discover(&fake.roots()).unwrap();
    assert_eq!(inv.driver_version, "580.159.04");
    assert_eq!(inv.gpus.len(), 4);
    assert_eq!((inv.ctl.major, inv.ctl.minor), (195, 255));
    assert_eq!(inv.uvm.as_ref().map(|n| (n.major, n.minor)), Some((238, 0)));
    assert_eq!(inv.gpu_nodes[&3].path, Path::new("/dev/nvidia3"));
    let cuda = inv
        .libraries
        .iter()
        .find(|l| l.path.file_name().unwrap() == "libcuda.so.580.159.04")
        .unwrap();
    assert_eq!(cuda.soname.as_deref(), Some("libcuda.so.1"));
    assert_eq!(cuda.group, LibraryGroup::Compute);
    assert_eq!(
        inv.container_path(&cuda.path),
        Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04")
    );
    assert!(inv
        .binaries
        .iter()
        .any(|(p, _)| p.ends_with("usr/bin/nvidia-smi")));
    assert_eq!(inv.firmware.len(), 2);
    assert_eq!(inv.char_majors.get("nvidia-uvm"), Some(&238));
}

#[test]
fn finds_the_usr_local_nvidia_layout() {
    let fake = FakeDriver::builder()
        .gpus(1)
        .layout(Layout::UsrLocalNvidia)
        .build();
    let root = detect_driver_root(fake.host_root(), DRIVER_ROOT_CANDIDATES, "580.159.04").unwrap();
    assert_eq!(root, fake.host_root().join("usr/local/nvidia"));
    let libs = files::libraries(&root, "580.159.04").unwrap();
    let ml = libs
        .iter()
        .find(|l| l.soname.as_deref() == Some("libnvidia-ml.so.1"))
        .unwrap();
    assert!(ml.path.starts_with(root.join("lib64")), "{:?}", ml.path);
    assert!(files::binaries(&root)
        .iter()
        .any(|(p, _)| p.ends_with("bin/nvidia-smi")));
    assert_eq!(files::firmware(&root, "580.159.04").len(), 2);
}

#[test]
fn no_driver_root_is_a_clear_error() {
    let fake = FakeDriver::builder().gpus(1).build();
    let err = detect_driver_root(fake.host_root(), &["/opt/none"], "580.159.04").unwrap_err();
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
    let err = Inventory::discover(&roots).unwrap_err();
    assert!(matches!(err, DiscoverError::NoDriver { .. }), "{err}");
    assert!(err.to_string().contains("driver/nvidia/version"));
}

#[test]
fn soname_of_a_non_elf_file_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("libcuda.so.580.159.04");
    std::fs::write(&f, b"not elf").unwrap();
    let err = soname(&f).unwrap_err();
    assert!(err.to_string().contains("libcuda.so.580.159.04"), "{err}");
}

#[test]
fn rdev_split_matches_glibc() {
    // makedev(195, 255) and makedev(238, 1) as glibc encodes them.
    let enc = |maj: u64, min: u64| {
        ((maj & 0xfffff000) << 32)
            | ((maj & 0xfff) << 8)
            | ((min & 0xffffff00) << 12)
            | (min & 0xff)
    };
    for (maj, min) in [(195, 255), (238, 1), (4095, 1 << 20)] {
        let r = enc(maj, min);
        assert_eq!(
            (u64::from(rdev_major(r)), u64::from(rdev_minor(r))),
            (maj, min)
        );
    }
}
