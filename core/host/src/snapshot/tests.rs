use nvidia_shim_core::oci_spec::runtime::MountBuilder;
use nvidia_shim_core::plan::split;

use super::*;
use crate::fixture::{mkfifo, shared_object, spec_with_env};

#[test]
fn library_named_mount_sources_that_are_not_files_are_skipped_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = mkfifo(&dir.path().join("libfoo.so"));
    let lib = dir.path().join("libreal.so.1");
    std::fs::copy(shared_object("libreal.so.1"), &lib).unwrap();
    let mount = |src: &Path, dst: &str| {
        MountBuilder::default()
            .source(src)
            .destination(dst)
            .typ("bind")
            .build()
            .unwrap()
    };
    let mut spec = spec_with_env(&["NVIDIA_VISIBLE_DEVICES=0"]);
    spec.set_mounts(Some(vec![
        mount(&fifo, "/opt/libfoo.so"),
        mount(Path::new("/dev/zero"), "/opt/libzero.so.1"),
        mount(&lib, "/opt/libreal.so.1"),
        mount(&dir.path().join("missing.so"), "/opt/missing.so"),
    ]));
    let request = GpuRequest::from_spec(&spec, &Default::default()).unwrap();
    let split = split(&request.devices, None, true);
    let paths = HostPaths {
        host_root: dir.path().to_owned(),
        proc_root: dir.path().join("proc"),
        kernel_proc: dir.path().join("proc"),
        mps_pipe_dir: dir.path().join("mps"),
    };
    // No writer ever opens the FIFO: a blocking open would not return.
    let host = gather(&paths, &spec, &request, &split, None, None, None);
    assert_eq!(
        host.mounted_sonames.get(&lib).map(String::as_str),
        Some("libreal.so.1")
    );
    assert_eq!(
        host.skipped_sources,
        [
            (fifo, "is a FIFO, not a regular file".to_owned()),
            (
                PathBuf::from("/dev/zero"),
                "is a device, not a regular file".to_owned()
            ),
        ]
    );
}

#[test]
fn a_node_says_its_type_numbers_and_mode_and_anything_else_why_not() {
    let null = stat_node(Path::new("/dev/null")).unwrap();
    assert_eq!((null.typ, null.major, null.minor), (NodeType::Char, 1, 3));
    let err = stat_node(Path::new("/nonexistent/node")).unwrap_err();
    assert!(err.contains("No such file"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(stat_node(file.path()).unwrap_err(), "not a device node");
}
