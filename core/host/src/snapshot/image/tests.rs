use nvidia_shim_core::compat::{decide, Decision};
use nvidia_shim_core::require::Version;

use super::*;
use crate::fixture::compat_libcuda as install_compat_libcuda;

const NOTE_550: &str = r#"{"format":1,"CUDA version":"12.4","driver":[470,525,535],"device":[]}"#;

fn rootfs_with(version: &str, note: Option<&str>) -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    install_compat_libcuda(dir.path(), version, note);
    let root = Root::open(dir.path()).unwrap();
    (dir, root)
}

fn find(root: &Root) -> Option<CompatLibcuda> {
    compat_libcuda(root, &mut Vec::new())
}

/// [`find`] then core's [`decide`].
fn compat_for(root: &Root, host_driver: &str) -> Decision {
    match find(root) {
        Some(lib) => decide(lib, host_driver),
        None => Decision::NoCompat,
    }
}

#[test]
fn the_note_is_read_from_the_elf() {
    let (_d, rootfs) = rootfs_with("550.54.15", Some(NOTE_550));
    let lib = find(&rootfs).expect("compat libcuda found");
    assert_eq!(
        lib.path,
        Path::new("/usr/local/cuda/compat/libcuda.so.550.54.15")
    );
    assert_eq!(lib.version, Version::parse("550.54.15").unwrap());
    assert_eq!(lib.soname.as_deref(), Some("libcuda.so.1"));
    let note = lib.note.expect("note");
    assert_eq!(note.cuda_version, "12.4");
    assert_eq!(note.driver, [470, 525, 535]);
}

#[test]
fn with_a_note_the_host_major_must_be_listed_and_older() {
    let (_d, rootfs) = rootfs_with("550.54.15", Some(NOTE_550));
    assert!(matches!(
        compat_for(&rootfs, "535.104.05"),
        Decision::Use(_)
    ));
    // 545 is older, but the library was not made for it.
    let Decision::Skip(_, why) = compat_for(&rootfs, "545.23.08") else {
        panic!("545 not in the note's driver list")
    };
    assert!(
        why.contains("[470, 525, 535]") && why.contains("545.23.08"),
        "{why}"
    );
    // The host's driver (of a listed major) is newer: keep the host's.
    let note = r#"{"format":1,"CUDA version":"12.4","driver":[535,550]}"#;
    let (_d, rootfs) = rootfs_with("550.54.15", Some(note));
    let Decision::Skip(_, why) = compat_for(&rootfs, "550.90.07") else {
        panic!("host newer")
    };
    assert!(why.contains("not newer"), "{why}");
}

#[test]
fn without_a_note_only_a_greater_major_counts() {
    let (_d, rootfs) = rootfs_with("550.54.15", None);
    assert!(find(&rootfs).unwrap().note.is_none());
    assert!(matches!(
        compat_for(&rootfs, "535.104.05"),
        Decision::Use(_)
    ));
    assert!(matches!(
        compat_for(&rootfs, "550.10.01"),
        Decision::Skip(..)
    ));
    assert!(matches!(
        compat_for(&rootfs, "not-a-version"),
        Decision::Skip(..)
    ));
}

#[test]
fn no_or_ambiguous_compat_dir_means_no_compat() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = Root::open(dir.path()).unwrap();
    assert_eq!(compat_for(&rootfs, "535.104.05"), Decision::NoCompat);
    install_compat_libcuda(dir.path(), "550.54.15", None);
    install_compat_libcuda(dir.path(), "560.28.03", None);
    assert_eq!(
        compat_for(&rootfs, "535.104.05"),
        Decision::NoCompat,
        "two candidates"
    );
}

#[test]
fn a_compat_dir_symlinked_out_of_the_rootfs_is_read_inside_it() {
    // The image's /usr/local/cuda is a symlink to a host directory holding a compat lib: the
    // lookup resolves it inside the rootfs, where nothing is.
    let host = tempfile::tempdir().unwrap();
    install_compat_libcuda(host.path(), "550.54.15", Some(NOTE_550));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("usr/local")).unwrap();
    std::os::unix::fs::symlink(
        host.path().join("usr/local/cuda"),
        dir.path().join("usr/local/cuda"),
    )
    .unwrap();
    let rootfs = Root::open(dir.path()).unwrap();
    assert_eq!(compat_for(&rootfs, "535.104.05"), Decision::NoCompat);
}
