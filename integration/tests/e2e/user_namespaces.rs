//! User-namespace pods (Kubernetes `hostUsers: false`) as containerd 2.x runs them (issue 24):
//! the rootfs an overlay whose options carry `uidmap=`/`gidmap=`, a volume a spec mount with
//! `uidMappings`/`gidMappings`. containerd 1.6 sends neither, so the test sends the Task API
//! requests itself, to a shim containerd started (a group's), with a bundle and layers of its
//! own: the image's files, owned by root on the host, must be root's inside the container's
//! user namespace, and what it writes must land as its mapped ids on the host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{ensure, Result};
use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::types::mount::Mount;
use nvidia_shim_integration::checks::{
    alike, ctx, eventually, kill_and_remove, setup, shim_client,
};
use nvidia_shim_integration::containerd::Containerd;
use nvidia_shim_integration::cri::{
    ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER, HANDLER_RUNC,
};
use nvidia_shim_integration::ctr_run::{busybox_rootfs, oci_spec, Group};
use nvidia_shim_integration::{leftovers, unique_id};

/// Host ids the container's 0..65536 map to.
const HOST_UID: u32 = 200_000;
const HOST_GID: u32 = 300_000;

/// A lower layer: busybox and its applets, owned by root on the host.
fn lower_layer(dir: &Path) -> Result<()> {
    busybox_rootfs(dir, &["sh", "stat", "id", "touch", "cat"])?;
    for d in ["etc", "data"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

/// What the container says of its files, run through the Task API of shim group `group`'s
/// socket with rootfs mount `rootfs` and the spec's idmapped volume of `volume`; its output.
fn run_in_userns(
    c: &Containerd,
    group: &str,
    rootfs: Mount,
    volume: &Path,
    idmap_volume: bool,
) -> Result<String> {
    let id = unique_id("userns");
    let bundle = c.dir().join(format!("bundle-{id}"));
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    let script = "stat -c %u:%g /bin/busybox; id -u; touch /written; stat -c %u /written; \
                  stat -c %u /data/file";
    let mut spec = oci_spec(c, &id, Path::new("rootfs"), &["/bin/sh", "-c", script])?;
    spec["process"]["terminal"] = serde_json::json!(false);
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.push(serde_json::json!({ "type": "user" }));
    spec["linux"]["uidMappings"] =
        serde_json::json!([{ "containerID": 0, "hostID": HOST_UID, "size": 65536 }]);
    spec["linux"]["gidMappings"] =
        serde_json::json!([{ "containerID": 0, "hostID": HOST_GID, "size": 65536 }]);
    let mut data = serde_json::json!({
        "destination": "/data",
        "type": "bind",
        "source": volume,
        "options": ["rbind", "rw"],
    });
    if idmap_volume {
        data["uidMappings"] = spec["linux"]["uidMappings"].clone();
        data["gidMappings"] = spec["linux"]["gidMappings"].clone();
    }
    spec["mounts"].as_array_mut().expect("mounts").push(data);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let out = bundle.join("out.txt");
    let api = shim_client(c, group)?;
    let created = api.create(
        ctx(),
        &CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: vec![rootfs],
            stdout: format!("file://{}", out.display()),
            stderr: format!("file://{}", out.display()),
            ..Default::default()
        },
    );
    let outcome = created
        .map_err(|e| anyhow::anyhow!("create: {e}"))
        .and_then(|_| {
            api.start_process(&id, "")?;
            let status = api.wait_process(&id, "")?.exit_status;
            let said = std::fs::read_to_string(&out);
            ensure!(status == 0, "exit {status}: {said:?}");
            Ok(said?)
        });
    let _ = api.delete_process(&id, "");
    // Nothing of it is left: the rootfs (and the idmapped lower layers under it) unmounted.
    let mounts = leftovers::mounts_under(&bundle);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    std::fs::remove_dir_all(&bundle)?;
    outcome
}

#[test]
fn a_user_namespace_pods_rootfs_and_volume_are_idmapped() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // A shim for the test's containers: a group's, started by containerd.
    let group = Group::start(&c, "usergrp", &["sleep", "600"])?;

    let layers = c.dir().join("layers");
    let lower = layers.join("lower");
    lower_layer(&lower)?;
    let volume = layers.join("volume");
    std::fs::create_dir_all(&volume)?;
    std::fs::write(volume.join("file"), "root's")?;
    let overlay = |idmapped: bool| -> Result<Mount> {
        let n = unique_id("snap");
        let (upper, work) = (
            layers.join(format!("{n}-upper")),
            layers.join(format!("{n}-work")),
        );
        for d in [&upper, &work] {
            std::fs::create_dir_all(d)?;
            // The container's root writes here: its host uid.
            std::os::unix::fs::chown(d, Some(HOST_UID), Some(HOST_GID))?;
        }
        let mut options = vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ];
        if idmapped {
            options.push(format!("uidmap=0:{HOST_UID}:65536"));
            options.push(format!("gidmap=0:{HOST_GID}:65536"));
        }
        Ok(Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        })
    };
    // Idmapped: the image's and the volume's root-owned files are root's inside; what the
    // container writes is its mapped uid on the host.
    let mapped = run_in_userns(&c, &group.name, overlay(true)?, &volume, true)?;
    assert_eq!(mapped, "0:0\n0\n0\n0\n");
    // Without the mappings the same files are nobody's inside (the kernel's overflow id).
    let unmapped = run_in_userns(&c, &group.name, overlay(false)?, &volume, false)?;
    assert_eq!(unmapped, "65534:65534\n0\n0\n65534\n");
    let written = std::fs::read_dir(&layers)?
        .flatten()
        .map(|e| e.path().join("written"))
        .find(|p| p.exists())
        .expect("a written file in an upper layer");
    assert_eq!(std::fs::metadata(&written)?.uid(), HOST_UID);
    // The host's own files are untouched.
    assert_eq!(std::fs::metadata(lower.join("bin/busybox"))?.uid(), 0);
    assert_eq!(std::fs::metadata(volume.join("file"))?.uid(), 0);
    kill_and_remove(&c, &group.anchor)?;
    eventually("the group's shim to exit", || {
        leftovers::shim_pids(&c.socket()).is_empty()
    })?;
    Ok(())
}

/// A `hostUsers: false` pod through containerd 2.x's CRI and the `nvidia` handler, beside the
/// `runc` handler: containerd gives the shim the idmapped overlay rootfs itself. containerd 2.x
/// is not packaged for Debian: this runs when `NVIDIA_TEST_CONTAINERD2` names the directory
/// of a built one (`containerd`, `ctr`, `containerd-shim-runc-v2`), and skips otherwise.
#[test]
fn a_host_users_false_pod_runs_through_containerd_2_as_under_runc() -> Result<()> {
    if !nvidia_shim_integration::can_run_containerd() {
        return Ok(());
    }
    let Some(release) = std::env::var_os("NVIDIA_TEST_CONTAINERD2") else {
        nvidia_shim_integration::skip(
            "NVIDIA_TEST_CONTAINERD2 (a containerd 2.x bin directory) is not set",
        );
        return Ok(());
    };
    let cri = Cri::start(&HandlerConfigs {
        containerd_release: Some(release.into()),
        nvidia_without_options: true,
        // libcontainer opens the pod's network namespace from inside the user namespace, which
        // cannot traverse the CRI plugin's state directory (runc opens it before).
        netns_under_run: true,
        ..HandlerConfigs::default()
    })?;
    let opts = PodOptions {
        userns: Some((HOST_UID, HOST_GID, 65536)),
        ..PodOptions::default()
    };
    // What the container sees, written into its own rootfs (read here through the bundle):
    // not through an exec, which this runtime refuses in a user namespace (below).
    let script = "{ cat /proc/self/uid_map | tr -s ' '; stat -c %u:%g /bin/busybox; \
        touch /w && stat -c %u /w; } > /seen; exec sleep 1000";
    let mut refused = Vec::new();
    let seen = alike(
        "a hostUsers: false pod",
        [HANDLER_RUNC, HANDLER],
        |handler| {
            let app = ContainerOptions::sh("app", script);
            let [pod, app] = cri.run_pod_with("userns", handler, &opts, &app)?;
            let file = cri
                .containerd
                .state_dir()
                .join("io.containerd.runtime.v2.task/k8s.io")
                .join(&app)
                .join("rootfs/seen");
            eventually("the container's report", || {
                std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 3)
            })?;
            let inside = std::fs::read_to_string(&file)?;
            let pid = cri.pid_of(&app)?;
            let host_uid = std::fs::metadata(format!("/proc/{pid}"))?.uid();
            let exec = cri.exec(&app, &["id", "-u"]);
            refused.push(exec.map(|o| o.stdout).map_err(|e| format!("{e:#}")));
            cri.remove_pod(&pod)?;
            Ok((inside, host_uid))
        },
    )?;
    // runc's exec joins the user namespace; libcontainer 0.7's cannot, so this runtime
    // refuses the exec instead of running it as the host's root.
    assert_eq!(refused[0].as_deref(), Ok("0\n"), "runc: {refused:?}");
    let err = refused[1].as_ref().expect_err("nvidia refuses");
    assert!(
        err.contains("user namespace") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(
        seen.1, HOST_UID,
        "the container runs as its mapped uid on the host"
    );
    Ok(())
}
