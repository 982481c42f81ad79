//! Kubernetes through containerd's CRI plugin (issue 6): a real CRI client drives pods with the
//! `nvidia` runtime handler as the kubelet does; device-plugin request strategies against a fake
//! driver; nothing left once the pod is removed.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::ContainerState;
use nvidia_shim_core_host::fixture::{FakeDriver, Layout};
use nvidia_shim_integration::checks::{alike, eventually};
use nvidia_shim_integration::cri::{
    ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER, HANDLER_ISOLATED, HANDLER_RUNC,
    NO_ENV_IMAGE,
};
use nvidia_shim_integration::{can_run_containerd, leftovers};

fn cri(configs: &HandlerConfigs) -> Option<Cri> {
    if !can_run_containerd() {
        return None;
    }
    Some(Cri::start(configs).expect("start containerd with CRI"))
}

/// The parent pid of `pid`.
fn ppid(pid: i32) -> Result<i32> {
    leftovers::parent_pid(pid).with_context(|| format!("no ppid in /proc/{pid}/stat"))
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_pod_runs_through_the_nvidia_handler_and_leaves_nothing_behind() -> Result<()> {
    let Some(cri) = cri(&HandlerConfigs::default()) else {
        return Ok(());
    };
    let opts = PodOptions::default();
    let pod = cri.run_pod("web", HANDLER, &opts)?;
    assert_eq!(
        cri.pod_handler(&pod)?,
        HANDLER,
        "PodSandboxStatus echoes the handler"
    );

    let sleeper = |name: &str| ContainerOptions::sh(name, "echo started; exec sleep 1000");
    let app = cri.run_container(&pod, "web", &opts, &sleeper("app"))?;
    let side = cri.run_container(&pod, "web", &opts, &sleeper("sidecar"))?;
    assert_eq!(cri.container_state(&app)?, ContainerState::ContainerRunning);
    assert_eq!(
        cri.container_state(&side)?,
        ContainerState::ContainerRunning
    );

    // ExecSync: output and exit code.
    let out = cri.exec(&app, &["sh", "-c", "echo hi; echo oops >&2; exit 3"])?;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("hi\n", "oops\n")
    );
    assert_eq!(out.exit_code, 3);

    // Both app containers joined the sandbox's network namespace (a CNI network of its own,
    // not the host's), and one shim process serves the whole pod.
    let sandbox_pid = cri.pid_of(&pod)?;
    let net = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net"));
    let pod_net = net(sandbox_pid)?;
    assert_ne!(
        pod_net,
        net(std::process::id() as i32)?,
        "pod has its own netns"
    );
    for c in [&app, &side] {
        let inside = cri.sh(c, "readlink /proc/self/ns/net")?;
        assert_eq!(
            inside.trim(),
            pod_net.to_string_lossy(),
            "{c} shares the pod netns"
        );
        assert!(
            cri.sh(c, "ip -4 addr show eth0")?.contains("inet 10."),
            "{c} has the pod IP"
        );
    }
    let pids = [sandbox_pid, cri.pid_of(&app)?, cri.pid_of(&side)?];
    let shims: Vec<i32> = pids.iter().map(|&p| ppid(p)).collect::<Result<_>>()?;
    assert!(
        shims.windows(2).all(|w| w[0] == w[1]),
        "one shim per pod: {shims:?}"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0]))?;
    assert!(
        exe.ends_with("containerd-shim-nvidia-v2"),
        "the pod's parent is our shim, not {exe:?}"
    );
    assert!(leftovers::shim_pids(&cri.containerd.socket()).contains(&shims[0]));

    // ContainerStats: CPU and memory figures from the container's cgroup.
    cri.sh(&app, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")?;
    let stats = cri.stats(&app)?;
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(cpu.unwrap_or(0) > 0, "cpu usage: {cpu:?}");
    assert!(mem.unwrap_or(0) > 0, "memory working set: {mem:?}");

    // Stop and remove one container, then the pod (which removes the other).
    cri.remove_container(&side)?;
    ensure!(
        !alive(pids[2]),
        "sidecar process gone after RemoveContainer"
    );
    cri.remove_pod(&pod)?;
    eventually("the pod's shim to exit", || !alive(shims[0]))?;
    for p in pids {
        assert!(!alive(p), "process {p} of the pod is gone");
    }
    assert!(leftovers::shim_pids(&cri.containerd.socket()).is_empty());
    let mounts = leftovers::mounts_under(cri.containerd.dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cgroups = cri.leftover_cgroups();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let bundles = cri
        .containerd
        .state_dir()
        .join("io.containerd.runtime.v2.task/k8s.io");
    let left = leftovers::names_in(&bundles).unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
    Ok(())
}

/// The `/dev/nvidiaN` nodes a container sees, as `nvidia1 nvidia3`.
fn gpu_nodes(cri: &Cri, id: &str) -> Result<String> {
    let out = cri.sh(
        id,
        "cd /dev && ls -d nvidia[0-9]* 2>/dev/null | tr '\\n' ' '; true",
    )?;
    Ok(out.trim().to_owned())
}

#[test]
fn device_plugin_strategies_inject_exactly_the_allocated_gpu() -> Result<()> {
    let fake = FakeDriver::builder().gpus(4).layout(Layout::Distro).build();
    let configs = HandlerConfigs {
        nvidia: fake.shim_config(),
        isolated: format!(
            "{}{}",
            fake.shim_config(),
            HandlerConfigs::default().isolated
        ),
        ..HandlerConfigs::default()
    };
    let Some(cri) = cri(&configs) else {
        return Ok(());
    };
    let host = PodOptions {
        host_network: true,
        ..PodOptions::default()
    };
    let sleeper = |name: &str| ContainerOptions::sh(name, "exec sleep 1000");

    // envvar strategy (the default config accepts env requests).
    let env = ContainerOptions {
        env: vec![("NVIDIA_VISIBLE_DEVICES".into(), "1".into())],
        ..sleeper("envvar")
    };
    let [pod, c] = cri.run_pod_with("envvar", HANDLER, &host, &env)?;
    assert_eq!(gpu_nodes(&cri, &c)?, "nvidia1", "envvar strategy");
    // The container's own process sees the env the shim wrote back (an exec gets the process
    // spec containerd stored, as with runc).
    let init_env = cri.sh(
        &c,
        "ls /dev/nvidiactl >/dev/null && tr '\\0' '\\n' </proc/1/environ",
    )?;
    assert!(
        init_env.contains("NVIDIA_VISIBLE_DEVICES=void\n"),
        "{init_env}"
    );
    cri.remove_pod(&pod)?;

    // The isolation profile: mounts and annotations are authoritative, env is ignored for
    // unprivileged containers.
    let pod = cri.run_pod("isolated", HANDLER_ISOLATED, &host)?;
    let cases = [
        (
            "volume-mounts",
            ContainerOptions {
                env: vec![(
                    "NVIDIA_VISIBLE_DEVICES".into(),
                    "/var/run/nvidia-container-devices".into(),
                )],
                mounts: vec![(
                    "/dev/null".into(),
                    "/var/run/nvidia-container-devices/2".into(),
                )],
                ..sleeper("volume-mounts")
            },
            "nvidia2",
        ),
        (
            "cdi-annotations (device plugin kind)",
            ContainerOptions {
                annotations: HashMap::from([(
                    "cdi.k8s.io/k8s-device-plugin.nvidia.com_gpu".into(),
                    "k8s.device-plugin.nvidia.com/gpu=3".into(),
                )]),
                ..sleeper("cdi-plugin")
            },
            "nvidia3",
        ),
        (
            "cdi-annotations (nvidia.com/gpu)",
            ContainerOptions {
                annotations: HashMap::from([(
                    "cdi.k8s.io/nvidia".into(),
                    "nvidia.com/gpu=0".into(),
                )]),
                ..sleeper("cdi-nvidia")
            },
            "nvidia0",
        ),
        (
            "a CUDA image's NVIDIA_VISIBLE_DEVICES=all without an allocation",
            ContainerOptions {
                env: vec![("NVIDIA_VISIBLE_DEVICES".into(), "all".into())],
                ..sleeper("greedy")
            },
            "",
        ),
    ];
    for (what, opts, want) in &cases {
        let c = cri.run_container(&pod, "isolated", &host, opts)?;
        assert_eq!(&gpu_nodes(&cri, &c)?, want, "{what}");
        if want.is_empty() {
            let ctl = cri.exec(&c, &["ls", "/dev/nvidiactl"])?;
            assert_ne!(ctl.exit_code, 0, "{what}: no control node either");
        }
    }
    cri.remove_pod(&pod)?;
    eventually("every shim to exit", || {
        leftovers::shim_pids(&cri.containerd.socket()).is_empty()
    })?;
    Ok(())
}

#[test]
fn images_without_env_run_as_under_runc() -> Result<()> {
    let Some(cri) = cri(&HandlerConfigs::default()) else {
        return Ok(());
    };
    // The sandbox image has no Env (see ImageSpec::pause); the app's image neither. An
    // absolute program runs without PATH; a relative one is found in runc's default PATH, and
    // the process's environment stays without PATH.
    let opts = PodOptions::default();
    let seen = alike("images without env", [HANDLER, HANDLER_RUNC], |handler| {
        let pod = cri.run_pod("noenv", handler, &opts)?;
        let app = ContainerOptions {
            name: "app".into(),
            command: vec!["/bin/sleep".into(), "600".into()],
            image: Some(NO_ENV_IMAGE.into()),
            ..ContainerOptions::default()
        };
        let abs = cri.run_container(&pod, "noenv", &opts, &app)?;
        let rel = cri.run_container(
            &pod,
            "noenv",
            &opts,
            &ContainerOptions {
                name: "relative".into(),
                command: vec!["sleep".into(), "600".into()],
                ..app.clone()
            },
        )?;
        let mut out = Vec::new();
        for c in [&abs, &rel] {
            out.push(format!("{:?}", cri.container_state(c)?));
            let e = cri.exec(c, &["/bin/sh", "-c", "echo path=[$PATH]; exit 0"])?;
            out.push(e.stdout.trim().to_owned());
            let e = cri.exec(c, &["sh", "-c", "echo relative exec ok"])?;
            out.push(format!("{} {}", e.exit_code, e.stdout.trim()));
        }
        cri.remove_pod(&pod)?;
        Ok(out)
    })?;
    assert!(seen[0].contains("Running"), "{seen:?}");
    Ok(())
}

#[test]
fn a_bidirectional_volume_propagates_both_ways_as_under_runc() -> Result<()> {
    let Some(cri) = cri(&HandlerConfigs::default()) else {
        return Ok(());
    };
    // A shared host directory, as kubelet requires for Bidirectional (CSI drivers use it):
    // containerd's CRI then gives the container rootfsPropagation rshared and the mount rshared.
    let opts = PodOptions {
        privileged: true,
        ..PodOptions::default()
    };
    let seen = alike("both ways", [HANDLER, HANDLER_RUNC], |handler| {
        let host = std::env::temp_dir().join(nvidia_shim_integration::unique_id("bidir"));
        std::fs::create_dir_all(&host)?;
        let sh = |args: &[&str]| std::process::Command::new("mount").args(args).status();
        ensure!(sh(&[
            "--bind",
            host.to_str().unwrap_or_default(),
            host.to_str().unwrap_or_default()
        ])?
        .success());
        ensure!(sh(&["--make-shared", host.to_str().unwrap_or_default()])?.success());
        let app = ContainerOptions {
            mounts: vec![(host.display().to_string(), "/vol".into())],
            mount_propagation: 2,
            privileged: true,
            ..ContainerOptions::sh("app", "exec sleep 600")
        };
        let [pod, app] = cri.run_pod_with("bidir", handler, &opts, &app)?;
        // A mount made inside shows on the host; one the host makes shows inside.
        cri.sh(&app, "mkdir -p /vol/in && mount -t tmpfs inside /vol/in")?;
        let on_host = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .any(|l| {
                l.split_whitespace().nth(4) == Some(host.join("in").to_str().unwrap_or_default())
            });
        std::fs::create_dir_all(host.join("out"))?;
        ensure!(sh(&[
            "-t",
            "tmpfs",
            "outside",
            host.join("out").to_str().unwrap_or_default()
        ])?
        .success());
        let inside = cri.sh(&app, "grep -c ' /vol/out ' /proc/self/mountinfo || true")?;
        cri.remove_pod(&pod)?;
        for m in ["out", "in", ""] {
            let _ = std::process::Command::new("umount")
                .arg(host.join(m))
                .status();
        }
        Ok((on_host, inside.trim().to_owned()))
    })?;
    assert_eq!(seen, (true, "1".to_owned()), "both ways");
    Ok(())
}

/// Issue 22: under the isolation profile only what the kubelet sets counts. Pod annotations
/// are the pod author's, so the handler `configure containerd` registers must not forward the
/// CDI prefixes as pod annotations; the device plugin's CDI requests arrive as container
/// annotations (its Allocate response), which containerd forwards through
/// `container_annotations`.
#[test]
fn isolation_profile_honours_container_annotations_not_pod_annotations() -> Result<()> {
    let fake = FakeDriver::builder().gpus(4).layout(Layout::Distro).build();
    let configs = HandlerConfigs {
        // The handler registered by `configure containerd`, with the isolation profile.
        nvidia: format!(
            "{}{}",
            fake.shim_config(),
            HandlerConfigs::default().isolated
        ),
        nvidia_by_configure: true,
        ..HandlerConfigs::default()
    };
    let Some(cri) = cri(&configs) else {
        return Ok(());
    };
    let sleeper = |name: &str| ContainerOptions::sh(name, "exec sleep 1000");
    let annotation = |value: &str| HashMap::from([("cdi.k8s.io/x".to_owned(), value.to_owned())]);

    // An unprivileged pod whose author asks for every GPU through a pod annotation.
    let greedy = PodOptions {
        host_network: true,
        annotations: annotation("nvidia.com/gpu=all"),
        ..PodOptions::default()
    };
    let [pod, c] = cri.run_pod_with("pod-annotated", HANDLER, &greedy, &sleeper("greedy"))?;
    let spec = std::fs::read_to_string(
        cri.containerd
            .state_dir()
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(&c)
            .join("config.json"),
    )?;
    assert_eq!(
        gpu_nodes(&cri, &c)?,
        "",
        "a pod annotation gave GPUs; the container's spec: {spec}"
    );
    assert!(
        !spec.contains("cdi.k8s.io/x"),
        "the pod annotation reached the shim: {spec}"
    );
    cri.remove_pod(&pod)?;

    // A container the device plugin allocated GPU 0 to (a container annotation).
    let host = PodOptions {
        host_network: true,
        ..PodOptions::default()
    };
    let allocated = ContainerOptions {
        annotations: annotation("nvidia.com/gpu=0"),
        ..sleeper("allocated")
    };
    let [pod, c] = cri.run_pod_with("allocated", HANDLER, &host, &allocated)?;
    assert_eq!(gpu_nodes(&cri, &c)?, "nvidia0", "the container annotation");
    cri.remove_pod(&pod)?;
    eventually("every shim to exit", || {
        leftovers::shim_pids(&cri.containerd.socket()).is_empty()
    })?;
    Ok(())
}
