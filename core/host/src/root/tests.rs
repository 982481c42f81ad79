use std::os::unix::fs::symlink;

use super::*;
use crate::fixture::{is_root, mkfifo, mknod};

/// What an image may point its symlinks at: `outside`, beside its rootfs on the host.
enum Outside {
    /// An empty directory.
    Dir,
    /// A file holding `keep`.
    File,
}

/// A host directory holding `rootfs/` (with `dirs` made in it) and `outside`, and the image's
/// symlinks `links` (path in the rootfs, target; `OUTSIDE` in a target stands for `outside`'s
/// absolute path).
struct Escape {
    _host: tempfile::TempDir,
    rootfs: PathBuf,
    outside: PathBuf,
}

impl Escape {
    fn new(outside: Outside, dirs: &[&str], links: &[(&str, &str)]) -> Self {
        let host = tempfile::tempdir().unwrap();
        let rootfs = host.path().join("rootfs");
        let out = host.path().join("outside");
        match outside {
            Outside::Dir => std::fs::create_dir(&out).unwrap(),
            Outside::File => std::fs::write(&out, "keep").unwrap(),
        }
        for d in dirs {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        for (link, target) in links {
            let target = target.replace("OUTSIDE", &out.display().to_string());
            symlink(target, rootfs.join(link)).unwrap();
        }
        Self {
            _host: host,
            rootfs,
            outside: out,
        }
    }

    fn root(&self) -> Root {
        Root::open(&self.rootfs).unwrap()
    }

    /// Whether nothing was written into `outside` (a directory) or next to it.
    fn untouched(&self) -> bool {
        let host = self.outside.parent().unwrap();
        std::fs::read_dir(&self.outside).unwrap().count() == 0
            && !host.join("f").exists()
            && !host.join("d").exists()
    }
}

#[test]
fn writes_land_inside_the_rootfs_despite_hostile_symlinks() {
    // The image points its library dir at a host path, absolute and relative.
    let e = Escape::new(
        Outside::Dir,
        &["usr/lib"],
        &[
            ("usr/lib/x86_64-linux-gnu", "OUTSIDE"),
            ("usr/lib64", "../../../outside"),
        ],
    );
    let r = e.root();
    r.symlink(
        Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "libcuda.so.580",
    )
    .unwrap();
    r.write_file(
        Path::new("/usr/lib64/x.conf"),
        b"hi",
        0o644,
        Durability::Synced,
    )
    .unwrap();
    r.write_file(
        Path::new("/../../etc/evil.conf"),
        b"hi",
        0o644,
        Durability::Synced,
    )
    .unwrap();
    assert!(e.untouched(), "nothing written outside");
    // The symlinks resolved as if the rootfs were /: the absolute one to the same path
    // inside the rootfs, the relative one clamped at the rootfs's /.
    let inside = e.rootfs.join(e.outside.strip_prefix("/").unwrap());
    assert!(inside.join("libcuda.so.1").symlink_metadata().is_ok());
    assert_eq!(
        std::fs::read(e.rootfs.join("outside/x.conf")).unwrap(),
        b"hi"
    );
    assert_eq!(
        std::fs::read(e.rootfs.join("etc/evil.conf")).unwrap(),
        b"hi"
    );
}

#[test]
fn chmod_stays_inside_and_never_follows_a_final_symlink() {
    let e = Escape::new(Outside::File, &["dev/dri"], &[("dev/link", "OUTSIDE")]);
    let r = e.root();
    r.chmod(Path::new("/dev/dri"), 0o711).unwrap();
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode(&e.rootfs.join("dev/dri")), 0o711);
    let before = mode(&e.outside);
    assert!(r.chmod(Path::new("/dev/link"), 0o777).is_err());
    assert!(r.chmod(Path::new("/../../outside"), 0o777).is_err());
    assert_eq!(mode(&e.outside), before);
}

#[test]
fn mount_points_are_made_inside_and_what_is_there_is_left() {
    let e = Escape::new(
        Outside::Dir,
        &["etc"],
        &[("etc/resolv.conf", "OUTSIDE"), ("run", "OUTSIDE")],
    );
    let r = e.root();
    r.create_mount_point(Path::new("/etc/hosts"), false)
        .unwrap();
    r.create_mount_point(Path::new("/dev/shm"), true).unwrap();
    assert!(e.rootfs.join("etc/hosts").is_file() && e.rootfs.join("dev/shm").is_dir());
    // A symlink there (to the host) stays as it is, and nothing is made through one.
    r.create_mount_point(Path::new("/etc/resolv.conf"), false)
        .unwrap();
    r.create_mount_point(Path::new("/run/secrets"), true)
        .unwrap();
    assert!(e.rootfs.join("etc/resolv.conf").is_symlink());
    assert!(e.untouched());
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    let e = Escape::new(Outside::File, &["etc"], &[("etc/ld.so.cache", "OUTSIDE")]);
    let r = e.root();
    assert!(
        matches!(
            r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20),
            Err(UntrustedError::NotAFile("a symlink"))
        ),
        "reads never follow it"
    );
    r.write_file(
        Path::new("/etc/ld.so.cache"),
        b"x",
        0o644,
        Durability::Synced,
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&e.outside).unwrap(), "keep");
    let meta = e.rootfs.join("etc/ld.so.cache").symlink_metadata().unwrap();
    assert!(meta.is_file(), "the symlink was replaced by a file");
    assert_eq!(
        r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20).unwrap(),
        b"x"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Whatever path an injection is asked to write, through whatever symlinks the image
    /// has, nothing lands outside the rootfs.
    #[test]
    fn no_write_leaves_the_rootfs(
        parts in proptest::collection::vec(
            proptest::sample::select(vec!["a", "b", "..", ".", "abs", "rel", "up"]), 1..6),
    ) {
        let e = Escape::new(
            Outside::Dir,
            &["a"],
            &[("abs", "OUTSIDE"), ("rel", "../outside"), ("a/up", "../../../../..")],
        );
        let r = e.root();
        let path = Path::new("/").join(parts.join("/")).join("f");
        let _ = r.write_file(&path, b"x", 0o644, Durability::Synced);
        let _ = r.symlink(&path.with_file_name("l"), "t");
        let _ = r.create_dir_all(&path.with_file_name("d"));
        proptest::prop_assert!(e.untouched(), "{:?}", path);
    }
}

#[test]
fn an_image_symlink_is_replaced_and_its_file_kept() {
    let host = tempfile::tempdir().unwrap();
    let r = Root::open(host.path()).unwrap();
    let link = Path::new("/lib/libcuda.so.1");
    assert_eq!(
        r.symlink(link, "libcuda.so.470.82.01").unwrap(),
        LinkOutcome::Created
    );
    assert_eq!(
        r.symlink(link, "libcuda.so.535.1").unwrap(),
        LinkOutcome::Replaced(PathBuf::from("libcuda.so.470.82.01"))
    );
    assert_eq!(
        r.symlink(link, "libcuda.so.535.1").unwrap(),
        LinkOutcome::Unchanged
    );
    assert_eq!(
        std::fs::read_link(host.path().join("lib/libcuda.so.1")).unwrap(),
        Path::new("libcuda.so.535.1")
    );
    std::fs::write(host.path().join("lib/libnvidia-ml.so.1"), b"image's own").unwrap();
    assert_eq!(
        r.symlink(Path::new("/lib/libnvidia-ml.so.1"), "libnvidia-ml.so.535.1")
            .unwrap(),
        LinkOutcome::KeptEntry
    );
    assert_eq!(
        std::fs::read(host.path().join("lib/libnvidia-ml.so.1")).unwrap(),
        b"image's own"
    );
}

#[test]
fn an_images_fifo_device_or_huge_file_is_refused_without_blocking() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("etc")).unwrap();
    mkfifo(&host.path().join("etc/ld.so.cache"));
    std::fs::write(host.path().join("etc/big"), vec![0u8; 2048]).unwrap();
    let r = Root::open(host.path()).unwrap();
    // No writer: a blocking open would never return.
    assert!(matches!(
        r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20),
        Err(UntrustedError::NotAFile("a FIFO"))
    ));
    assert!(matches!(
        r.read_file(Path::new("/etc/big"), 1024),
        Err(UntrustedError::TooLarge {
            size: 2048,
            max: 1024
        })
    ));
    assert!(r
        .read_file(Path::new("/etc/none"), 1024)
        .unwrap_err()
        .is_missing());
    if is_root() {
        mknod(&host.path().join("etc/tty.so"), 5, 0);
        assert!(matches!(
            r.open_file(Path::new("/etc/tty.so"), FinalLink::Refuse, 1 << 20),
            Err(UntrustedError::NotAFile("a device"))
        ));
    }
    // Written over, the FIFO is replaced by a file.
    r.write_file(
        Path::new("/etc/ld.so.cache"),
        b"cache",
        0o644,
        Durability::Synced,
    )
    .unwrap();
    assert_eq!(
        r.read_file(Path::new("/etc/ld.so.cache"), 1 << 20).unwrap(),
        b"cache"
    );
}

#[test]
fn a_write_on_a_full_disk_leaves_the_images_file_and_no_temporary() {
    if !is_root() {
        eprintln!("SKIP a_write_on_a_full_disk_leaves_the_images_file_and_no_temporary: mounting a tmpfs needs root");
        return;
    }
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let host = tempfile::tempdir().unwrap();
    let mnt = host.path().join("rootfs");
    std::fs::create_dir(&mnt).unwrap();
    mount("tmpfs", &mnt, "tmpfs", MountFlags::empty(), c"size=256k")
        .expect("mount a tmpfs on the test's own directory");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = unmount(self.0, UnmountFlags::DETACH);
        }
    }
    let _unmount = Unmount(&mnt);
    std::fs::create_dir(mnt.join("etc")).unwrap();
    let image = vec![7u8; 8192];
    std::fs::write(mnt.join("etc/ld.so.cache"), &image).unwrap();
    // Fill what is left.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
        while f.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
    }
    let r = Root::open(&mnt).unwrap();
    // Synced or not (the unsynced write's ENOSPC shows at its write, not at a sync).
    for durability in [Durability::Synced, Durability::Rewritten] {
        let err = r
            .write_file(
                Path::new("/etc/ld.so.cache"),
                &vec![1u8; 64 << 10],
                0o644,
                durability,
            )
            .unwrap_err();
        assert_eq!(
            err.source.raw_os_error(),
            Some(Errno::NOSPC.raw_os_error()),
            "{durability:?}: {err}"
        );
        assert!(
            err.to_string().contains("cannot write /etc/ld.so.cache"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(mnt.join("etc/ld.so.cache")).unwrap(),
            image,
            "{durability:?}: the image's file is as it was"
        );
        let names: Vec<_> = std::fs::read_dir(mnt.join("etc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
    // With room again, the same write replaces it whole.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    r.write_file(
        Path::new("/etc/ld.so.cache"),
        &vec![1u8; 64 << 10],
        0o644,
        Durability::Synced,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(mnt.join("etc/ld.so.cache")).unwrap().len(),
        64 << 10
    );
}

#[test]
fn alternatives_style_links_resolve_inside_the_root() {
    let host = tempfile::tempdir().unwrap();
    let root = host.path().join("root");
    let real = root.join("usr/lib/x86_64-linux-gnu/nvidia/current");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
    std::fs::write(real.join("libcuda.so.535.1"), b"lib").unwrap();
    symlink("libcuda.so.535.1", real.join("libcuda.so.1")).unwrap();
    symlink(
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1",
        root.join("etc/alternatives/libcuda.so.1"),
    )
    .unwrap();
    symlink(
        "/etc/alternatives/libcuda.so.1",
        root.join("usr/lib/x86_64-linux-gnu/libcuda.so.1"),
    )
    .unwrap();
    // An absolute link the host would resolve elsewhere, and one climbing out.
    symlink(
        "/etc/passwd",
        root.join("usr/lib/x86_64-linux-gnu/libpw.so"),
    )
    .unwrap();
    symlink("../../../../../etc/hostname", root.join("usr/lib/up.so")).unwrap();
    let r = Root::open(&root).unwrap();
    let open = |p: &str| r.open_file(Path::new(p), FinalLink::Follow, 1 << 20);
    let found = open("/usr/lib/x86_64-linux-gnu/libcuda.so.1").unwrap();
    let host_path = r.real_path(&found).unwrap();
    assert_eq!(host_path, real.join("libcuda.so.535.1"));
    assert_eq!(
        r.inside(&host_path).unwrap(),
        Path::new("/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.1")
    );
    assert!(open("usr/lib/x86_64-linux-gnu/libpw.so")
        .unwrap_err()
        .is_missing());
    assert!(open("usr/lib/up.so").unwrap_err().is_missing());
    let names: Vec<String> = r
        .list(Path::new("/usr/lib/x86_64-linux-gnu"))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["libcuda.so.1", "libpw.so", "nvidia"]);
    assert!(r.real_dir(Path::new("/etc/alternatives")).is_some());
    symlink("usr/lib", root.join("lib")).unwrap();
    assert_eq!(
        r.real_dir(Path::new("/lib/x86_64-linux-gnu")).unwrap(),
        Path::new("/usr/lib/x86_64-linux-gnu")
    );
    assert_eq!(r.real_dir(Path::new("/")).unwrap(), Path::new("/"));
    assert!(r
        .real_dir(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"))
        .is_none());
}
