use super::*;
use crate::fixture::NotSmallFiles;
use nvidia_shim_core::cdi::ResolveError;

/// A spec of `kind` whose devices `names` each set `env`.
pub(super) fn spec_text(kind: &str, names: &[&str], env: &str) -> String {
    let devices: Vec<String> = names
        .iter()
        .map(|n| format!(r#"{{"name":"{n}","containerEdits":{{"env":["{env}"]}}}}"#))
        .collect();
    format!(
        r#"{{"cdiVersion":"0.5.0","kind":"{kind}","devices":[{}]}}"#,
        devices.join(",")
    )
}

/// The env entry `vendor.com/dev=x` sets in `reg`.
pub(super) fn env_of(reg: &Registry) -> String {
    reg.resolve(&["vendor.com/dev=x".into()]).unwrap()[0]
        .device
        .container_edits
        .env[0]
        .clone()
}

#[test]
fn later_dirs_override_and_broken_files_are_kept_by_path() {
    let etc = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let write = |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        etc.path(),
        "a.json",
        &spec_text("vendor.com/dev", &["x", "y"], "FROM=etc"),
    );
    write(
        run.path(),
        "b.json",
        &spec_text("vendor.com/dev", &["x"], "FROM=run"),
    );
    write(run.path(), "broken.yaml", "cdiVersion: [");
    write(run.path(), "ignored.txt", "not a spec");
    let reg = load_registry(&[etc.path(), run.path(), Path::new("/nonexistent")]);
    assert_eq!(env_of(&reg), "FROM=run");
    let y = reg.resolve(&["vendor.com/dev=y".into()]).unwrap();
    assert_eq!(y[0].device.container_edits.env, ["FROM=etc"]);
    // The broken file is kept, by its path, to name when a device does not resolve.
    let broken: Vec<&Path> = reg.errors().iter().map(|e| e.path.as_path()).collect();
    assert_eq!(broken, [run.path().join("broken.yaml")]);
}

#[test]
fn a_conflict_within_one_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, env) in [("a.json", "A=1"), ("b.yaml", "B=1")] {
        std::fs::write(
            dir.path().join(name),
            spec_text("vendor.com/dev", &["x"], env),
        )
        .unwrap();
    }
    let reg = load_registry(&[dir.path()]);
    let Err(ResolveError::Conflict { files, .. }) = reg.resolve(&["vendor.com/dev=x".into()])
    else {
        panic!("x is defined twice in one directory")
    };
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.yaml"));
    assert_eq!(files, format!("{}, {}", a.display(), b.display()));
    assert!(reg.has_kind("vendor.com/dev"));
}

#[test]
fn a_fifo_a_device_a_directory_or_a_huge_file_is_named_not_read() {
    let files = NotSmallFiles::new(".json", MAX_SPEC_SIZE + 1);
    for (path, what) in files.not_files() {
        let err = load_spec(path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}: is {what}", path.display())),
            "{err}"
        );
    }
    let err = load_spec(&files.big).unwrap_err().to_string();
    assert!(
        err.contains("more than the 4194304 a CDI spec may have"),
        "{err}"
    );
}
