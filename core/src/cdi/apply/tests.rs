use std::path::{Path, PathBuf};

use oci_spec::runtime::{HookBuilder, HooksBuilder, Spec};

use super::*;
use crate::cdi::{CdiSpec, Registry};

fn base_spec() -> Spec {
    serde_json::from_str(
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":1000,"gid":1000},"cwd":"/","env":["PATH=/bin","A=old"]},
            "root":{"path":"rootfs"},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/dev","type":"tmpfs","source":"tmpfs"},
                      {"destination":"/opt/x","type":"bind","source":"/old","options":["rbind"]}]}"#,
    )
    .unwrap()
}

/// The spec `text` alone in a spec directory.
fn registry(text: &str) -> Registry {
    let path = PathBuf::from("/etc/cdi/vendor.yaml");
    let spec = CdiSpec::parse(&path, text).unwrap();
    Registry::from_specs([(path, spec)])
}

/// What the host says of the nodes these specs name: `/dev/null` (1:3) is there, the rest not.
fn host_nodes(devices: &[Resolved<'_>]) -> NodeFactsByPath {
    nodes_to_stat(devices)
        .into_iter()
        .map(|path| {
            let facts = match path {
                "/dev/null" => Ok(NodeFacts {
                    typ: NodeType::Char,
                    major: 1,
                    minor: 3,
                    mode: 0o666,
                }),
                _ => Err("No such file or directory (os error 2)".to_owned()),
            };
            (path.to_owned(), facts)
        })
        .collect()
}

/// The devices' edits, completed from [`host_nodes`], applied to `spec`.
fn apply(spec: &mut Spec, devices: &[Resolved<'_>]) -> Result<HookPlan, ApplyError> {
    let (edits, plan) = device_edits(devices, &host_nodes(devices))?;
    apply_edits(spec, &edits)?;
    Ok(plan)
}

const SPEC: &str = r#"
cdiVersion: "0.7.0"
kind: vendor.com/dev
containerEdits:
  env: ["A=new", "SPEC=1"]
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, create-symlinks, --link, "libcuda.so.1::/usr/lib64/libcuda.so", "--link=b::/c"]
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache, --folder, /usr/lib64]
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, disable-device-node-modification]
  - hookName: poststop
    path: /usr/local/bin/cleanup
    args: [cleanup, --all]
devices:
- name: x
  containerEdits:
    deviceNodes:
    - path: /dev/vendor-x
      type: c
      major: 300
      minor: 7
      fileMode: 432
      permissions: rw
    - path: /dev/null-alias
      hostPath: /dev/null
    mounts:
    - hostPath: /srv/x
      containerPath: /opt/x
      options: [ro, rbind]
    - hostPath: /srv/x/deep
      containerPath: /a
      options: [ro, bind]
    additionalGids: [44, 0]
- name: y
  containerEdits:
    env: ["Y=1"]
"#;

#[test]
fn edits_follow_cdi_semantics_and_toolkit_hooks_become_a_plan() {
    let reg = registry(SPEC);
    let resolved = reg
        .resolve(&["vendor.com/dev=x".into(), "vendor.com/dev=y".into()])
        .unwrap();
    let mut spec = base_spec();
    let plan = apply(&mut spec, &resolved).unwrap();

    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env, ["PATH=/bin", "A=new", "SPEC=1", "Y=1"]);

    let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    let x = devices
        .iter()
        .find(|d| d.path() == Path::new("/dev/vendor-x"))
        .unwrap();
    assert_eq!((x.major(), x.minor(), x.file_mode()), (300, 7, Some(0o660)));
    assert_eq!(
        (x.uid(), x.gid()),
        (Some(1000), Some(1000)),
        "defaults to the process user"
    );
    let null = devices
        .iter()
        .find(|d| d.path() == Path::new("/dev/null-alias"))
        .unwrap();
    assert_eq!(
        (null.major(), null.minor()),
        (1, 3),
        "completed from the host node"
    );
    let rules = spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(rules.iter().any(|r| r.major() == Some(300)
        && r.minor() == Some(7)
        && r.access().as_deref() == Some("rw")));
    assert!(rules
        .iter()
        .any(|r| r.major() == Some(1) && r.minor() == Some(3)));

    let mounts = spec.mounts().clone().unwrap();
    let dests: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().to_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        ["/proc", "/dev", "/a", "/opt/x"],
        "replaced, then sorted by depth"
    );
    assert_eq!(mounts[3].source().as_deref(), Some(Path::new("/srv/x")));
    assert_eq!(mounts[3].typ().as_deref(), Some("bind"));

    let hooks = spec.hooks().clone().unwrap();
    assert!(
        hooks.create_container().is_none(),
        "toolkit hooks are done natively"
    );
    assert_eq!(
        hooks.poststop().as_ref().unwrap()[0].path(),
        Path::new("/usr/local/bin/cleanup")
    );
    assert_eq!(
        plan.symlinks,
        [
            (
                PathBuf::from("/usr/lib64/libcuda.so"),
                "libcuda.so.1".to_owned()
            ),
            (PathBuf::from("/c"), "b".to_owned())
        ]
    );
    assert_eq!(plan.ld_folders, [PathBuf::from("/usr/lib64")]);
    assert!(plan.disable_device_node_modification);

    let gids = spec
        .process()
        .as_ref()
        .unwrap()
        .user()
        .additional_gids()
        .clone();
    assert_eq!(gids, Some(vec![44]));
}

#[test]
fn spec_wide_edits_apply_once_and_applying_twice_changes_nothing() {
    let reg = registry(SPEC);
    let resolved = reg.resolve(&["vendor.com/dev=x".into()]).unwrap();
    let mut once = base_spec();
    apply(&mut once, &resolved).unwrap();
    let mut twice = once.clone();
    apply(&mut twice, &resolved).unwrap();
    assert_eq!(
        serde_json::to_value(&once).unwrap(),
        serde_json::to_value(&twice).unwrap()
    );
}

#[test]
fn a_missing_host_node_names_device_and_path() {
    let reg = registry(
        r#"{"cdiVersion":"0.5.0","kind":"vendor.com/dev","devices":[{"name":"gone","containerEdits":{"deviceNodes":[{"path":"/dev/vendor-gone","hostPath":"/nonexistent/node"}]}}]}"#,
    );
    let resolved = reg.resolve(&["vendor.com/dev=gone".into()]).unwrap();
    let err = apply(&mut base_spec(), &resolved).unwrap_err().to_string();
    assert!(
        err.contains("vendor.com/dev=gone") && err.contains("/nonexistent/node"),
        "{err}"
    );
}

#[test]
fn unsupported_edits_are_refused() {
    let spec = CdiSpec::parse(
        Path::new("x.json"),
        r#"{"cdiVersion":"1.1.0","kind":"vendor.com/net","devices":[{"name":"n","containerEdits":{"netDevices":[{"hostInterfaceName":"eth9","name":"eth9"}]}}]}"#,
    )
    .unwrap();
    let reg = Registry::from_specs([(PathBuf::from("/etc/cdi/n.json"), spec)]);
    let resolved = reg.resolve(&["vendor.com/net=n".into()]).unwrap();
    let err = apply(&mut base_spec(), &resolved).unwrap_err().to_string();
    assert!(err.contains("netDevices"), "{err}");
}

#[test]
fn toolkit_hooks_are_removed_and_others_kept() {
    let hook = |p: &str| HookBuilder::default().path(p).build().unwrap();
    let mut spec = base_spec();
    spec.set_hooks(Some(
        HooksBuilder::default()
            .prestart(vec![
                hook("/usr/bin/nvidia-container-runtime-hook"),
                hook("/usr/bin/other"),
            ])
            .build()
            .unwrap(),
    ));
    apply_edits(&mut spec, &[ContainerEdits::default()]).unwrap();
    let prestart = spec.hooks().as_ref().unwrap().prestart().clone().unwrap();
    assert_eq!(prestart.len(), 1);
    assert_eq!(prestart[0].path(), Path::new("/usr/bin/other"));
}
