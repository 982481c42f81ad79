//! The front doors people run containers through, driving the shim (issue 23): Docker 26
//! (Debian trixie's `dockerd`, a `runtimes` entry written by the shim's own `configure docker`)
//! against a private containerd, each case also through Docker's default runc runtime in the
//! same test and compared; containerd 1.7 (Debian trixie's) with its CRI plugin and its own
//! CDI; podman 4.3 (bookworm's) under crun or runc with a private `/etc/cdi`. Each test checks
//! that nothing is left behind: no dockerd, containerd, shim or conmon, no mount, no cgroup.
//! A front door that cannot be fetched or run here makes its tests SKIP with the reason.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::ContainerState;
use nvidia_shim_core::discover::fixture::{FakeDriver, Layout};
use nvidia_shim_integration::checks::eventually;
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE};
use nvidia_shim_integration::cri::{ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER};
use nvidia_shim_integration::debian_packages::{self, Unpacked};
use nvidia_shim_integration::docker::Docker;
use nvidia_shim_integration::image::ImageSpec;
use nvidia_shim_integration::podman::{crun_unusable, Podman};
use nvidia_shim_integration::pty::PtyChild;
use nvidia_shim_integration::{can_run_containerd, leftovers, skip, which};

/// The runtime name `configure docker` registers; Docker's own is `runc`.
const NVIDIA: &str = "nvidia";
/// Both runtimes of a Docker test, the reference first.
const RUNTIMES: [&str; 2] = ["runc", NVIDIA];

/// A CDI spec with one device whose only edit is an environment variable: what a front door
/// that applies CDI itself (podman, containerd 1.7 with `enable_cdi`) puts in the spec.
const CDI_SPEC: &str = r#"{"cdiVersion": "0.3.0", "kind": "nvtest.example/dev",
  "devices": [{"name": "one", "containerEdits": {"env": ["FROM_CDI=one"]}}]}"#;
const CDI_DEVICE: &str = "nvtest.example/dev=one";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Debian trixie's Docker, or `None` after saying why the test skips.
fn docker_release(test: &str) -> Option<&'static Unpacked> {
    if !can_run_containerd(test) {
        return None;
    }
    match debian_packages::docker() {
        Ok(r) => Some(r),
        Err(e) => {
            skip(
                test,
                &format!("Debian trixie's Docker could not be fetched: {e:#}"),
            );
            None
        }
    }
}

/// A private containerd with the shim under test, and a shim config file for `fake` (an empty
/// config without one).
fn containerd_with_config(fake: Option<&FakeDriver>) -> Result<(Containerd, std::path::PathBuf)> {
    let c = Containerd::start()?;
    let config = c.dir().join("shim-config.toml");
    std::fs::write(
        &config,
        fake.map(FakeDriver::shim_config).unwrap_or_default(),
    )?;
    Ok((c, config))
}

/// dockerd with the `nvidia` runtime registered by `configure docker`, and the busybox image.
fn dockerd<'a>(release: &Unpacked, c: &'a Containerd, config: &Path) -> Result<Docker<'a>> {
    let d = Docker::start_configured(release, c, "", NVIDIA, config)?;
    d.import(&ImageSpec::busybox()?, BUSYBOX_IMAGE)?;
    Ok(d)
}

/// Stops dockerd and checks that neither it nor anything of its containers is left:
/// processes, mounts, cgroups.
fn finish_docker(mut d: Docker<'_>) {
    let left = d.leftovers();
    assert!(
        left.is_empty(),
        "left behind with every container removed: {left:?}"
    );
    let dockerd = d.pid().map(|p| p as i32);
    let dir = d.dir().to_path_buf();
    d.shutdown();
    drop(d);
    if let Some(p) = dockerd {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "dockerd {p} still runs"
        );
    }
    let mounts = leftovers::mounts_under(&dir);
    assert!(
        mounts.is_empty(),
        "mounts left under dockerd's dir: {mounts:?}"
    );
}

/// Stops containerd and checks that neither it nor a shim or mount of it is left.
fn finish_containerd(mut c: Containerd) {
    let containerd = c.pid().map(|p| p as i32);
    c.shutdown();
    if let Some(p) = containerd {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "containerd {p} still runs"
        );
    }
    let shims = leftovers::shim_pids(&c.socket());
    assert!(shims.is_empty(), "shims left: {shims:?}");
    let mounts = leftovers::mounts_under(c.dir());
    assert!(
        mounts.is_empty(),
        "mounts left under containerd's dir: {mounts:?}"
    );
}

/// What a run showed: exit code, stdout, stderr.
type Seen = (Option<i32>, String, String);

#[test]
fn docker_run_output_exit_code_and_tty_match_runc() -> Result<()> {
    let test = "docker_run_output_exit_code_and_tty_match_runc";
    let Some(release) = docker_release(test) else {
        return Ok(());
    };
    let (c, config) = containerd_with_config(None)?;
    let d = dockerd(release, &c, &config)?;
    let json: serde_json::Value = serde_json::from_str(&d.daemon_json())?;
    assert_eq!(
        json["runtimes"][NVIDIA]["runtimeType"], "io.containerd.nvidia.v2",
        "configure docker wrote the runtime entry: {json}"
    );
    assert_eq!(
        json["runtimes"][NVIDIA]["options"]["ConfigPath"],
        config.display().to_string()
    );

    let mut seen: Vec<(Seen, Seen)> = Vec::new();
    for runtime in RUNTIMES {
        // Output, exit code and --rm.
        let (out, id) = d.run(&[
            "--rm",
            "--runtime",
            runtime,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])?;
        let plain = (out.status.code(), text(&out.stdout), text(&out.stderr));
        d.assert_clean(&id);
        let gone = d.docker(&["inspect", &id])?;
        assert!(!gone.status.success(), "{runtime}: --rm removed {id}");

        // -it: a terminal of its own, what is typed, its size once the client has set it,
        // the exit code.
        let cidfile = d.dir().join(format!("tty-{runtime}.cid"));
        let cid = cidfile.display().to_string();
        let mut tty = PtyChild::spawn(
            d.docker_cmd(&[
                "run",
                "-it",
                "--rm",
                "--cidfile",
                &cid,
                "--runtime",
                runtime,
                BUSYBOX_IMAGE,
                "sh",
            ]),
            24,
            80,
        )?;
        tty.send("tty; echo $((6 * 7))-done\n")?;
        let shown = tty.expect("42-done")?;
        let sized = tty.retry_until("stty size\n", "24 80")?;
        tty.send("exit 5\n")?;
        let status = tty.wait()?;
        let id = std::fs::read_to_string(&cidfile)?.trim().to_owned();
        d.assert_clean(&id);
        let terminal = (
            status.code(),
            [("/dev/pts/0", &shown), ("24 80", &sized)]
                .iter()
                .filter(|(s, out)| out.contains(s))
                .map(|(s, _)| format!("{s}\n"))
                .collect::<String>(),
            String::new(),
        );
        seen.push((plain, terminal));
    }
    let expected = (
        (Some(3), "out\n".to_owned(), "err\n".to_owned()),
        (Some(5), "/dev/pts/0\n24 80\n".to_owned(), String::new()),
    );
    assert_eq!(seen[0], expected, "runc");
    assert_eq!(seen[1], seen[0], "nvidia as runc");
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

/// Docker puts the client's terminal size in the spec's `process.consoleSize`; runc gives the
/// terminal that size before the process starts, so `stty size` answers at once; so does the
/// shim, when it receives the terminal (it left it 0x0 until the client's first `ResizePty`).
#[test]
fn docker_tty_has_the_spec_console_size_from_the_start_as_under_runc() -> Result<()> {
    let test = "docker_tty_has_the_spec_console_size_from_the_start_as_under_runc";
    let Some(release) = docker_release(test) else {
        return Ok(());
    };
    let (c, config) = containerd_with_config(None)?;
    let d = dockerd(release, &c, &config)?;
    let mut seen = Vec::new();
    for runtime in RUNTIMES {
        let cidfile = d.dir().join(format!("size-{runtime}.cid"));
        let cid = cidfile.display().to_string();
        let mut tty = PtyChild::spawn(
            d.docker_cmd(&[
                "run",
                "-it",
                "--rm",
                "--cidfile",
                &cid,
                "--runtime",
                runtime,
                BUSYBOX_IMAGE,
                "sh",
            ]),
            24,
            80,
        )?;
        tty.send("stty size; echo $((6 * 7))-done\n")?;
        let shown = tty.expect("42-done")?;
        let id = std::fs::read_to_string(&cidfile)?.trim().to_owned();
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(
            c.state_dir()
                .join("io.containerd.runtime.v2.task/moby")
                .join(&id)
                .join("config.json"),
        )?)?;
        tty.send("exit\n")?;
        tty.wait()?;
        d.assert_clean(&id);
        assert_eq!(
            spec["process"]["consoleSize"],
            serde_json::json!({"height": 24, "width": 80}),
            "{runtime}"
        );
        seen.push(shown.contains("\r\n24 80\r\n"));
    }
    assert_eq!(seen, [true, true], "stty size at once under runc, nvidia");
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

#[test]
fn docker_exec_logs_stop_kill_wait_match_runc() -> Result<()> {
    let test = "docker_exec_logs_stop_kill_wait_match_runc";
    let Some(release) = docker_release(test) else {
        return Ok(());
    };
    let (c, config) = containerd_with_config(None)?;
    let d = dockerd(release, &c, &config)?;
    let mut seen = Vec::new();
    for runtime in RUNTIMES {
        let (out, id) = d.run(&[
            "-d",
            "--runtime",
            runtime,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "echo started; trap 'echo got-term; exit 7' TERM; while true; do sleep 0.1; done",
        ])?;
        ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        eventually("the container's first line in docker logs", || {
            d.docker_ok(&["logs", &id])
                .is_ok_and(|l| l.contains("started"))
        })?;
        let exec = d.docker(&[
            "exec",
            &id,
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 4",
        ])?;
        let exec = (exec.status.code(), text(&exec.stdout), text(&exec.stderr));
        let state = d.inspect(&id, "{{.State.Status}}")?;
        // stop: SIGTERM, which the trap turns into exit 7; wait and inspect report it.
        d.docker_ok(&["stop", "-t", "20", &id])?;
        let waited = d.docker_ok(&["wait", &id])?;
        let code = d.inspect(&id, "{{.State.ExitCode}}")?;
        let logs = d.docker(&["logs", &id])?;
        let logs = text(&logs.stdout);
        d.docker_ok(&["rm", &id])?;
        d.assert_clean(&id);

        // kill: SIGKILL; wait reports 137.
        let (out, id) = d.run(&["-d", "--runtime", runtime, BUSYBOX_IMAGE, "sleep", "600"])?;
        ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        d.docker_ok(&["kill", &id])?;
        let killed = d.docker_ok(&["wait", &id])?;
        d.docker_ok(&["rm", &id])?;
        d.assert_clean(&id);
        seen.push((exec, state, waited, code, logs, killed));
    }
    let expected = (
        (Some(4), "exec-out\n".to_owned(), "exec-err\n".to_owned()),
        "running".to_owned(),
        "7".to_owned(),
        "7".to_owned(),
        "started\ngot-term\n".to_owned(),
        "137".to_owned(),
    );
    assert_eq!(seen[0], expected, "runc");
    assert_eq!(seen[1], seen[0], "nvidia as runc");
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

#[test]
fn docker_restart_on_failure_matches_runc() -> Result<()> {
    let test = "docker_restart_on_failure_matches_runc";
    let Some(release) = docker_release(test) else {
        return Ok(());
    };
    let (c, config) = containerd_with_config(None)?;
    let d = dockerd(release, &c, &config)?;
    let mut seen = Vec::new();
    for runtime in RUNTIMES {
        let (out, id) = d.run(&[
            "-d",
            "--restart",
            "on-failure:2",
            "--runtime",
            runtime,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "echo run; exit 5",
        ])?;
        ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        // Two restarts (back-off 100 ms, then 200 ms), then exited for good.
        let format = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}";
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let s = d.inspect(&id, format)?;
            if s == "exited 2 5" || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let logs = text(&d.docker(&["logs", &id])?.stdout);
        d.docker_ok(&["rm", &id])?;
        d.assert_clean(&id);
        seen.push((state, logs));
    }
    assert_eq!(
        seen[0],
        ("exited 2 5".to_owned(), "run\nrun\nrun\n".to_owned()),
        "runc"
    );
    assert_eq!(seen[1], seen[0], "nvidia as runc");
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

#[test]
fn docker_nvidia_visible_devices_all_gets_both_fake_gpus() -> Result<()> {
    let test = "docker_nvidia_visible_devices_all_gets_both_fake_gpus";
    let Some(release) = docker_release(test) else {
        return Ok(());
    };
    let fake = FakeDriver::builder().gpus(2).layout(Layout::Distro).build();
    let (c, config) = containerd_with_config(Some(&fake))?;
    let d = dockerd(release, &c, &config)?;
    let mut nodes = HashMap::new();
    for runtime in RUNTIMES {
        let (out, id) = d.run(&[
            "--rm",
            "--runtime",
            runtime,
            "-e",
            "NVIDIA_VISIBLE_DEVICES=all",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "cd /dev && for n in nvidia[0-9]*; do test -e \"$n\" && stat -c \"$n %t:%T\" \"$n\"; done; true",
        ])?;
        ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        d.assert_clean(&id);
        nodes.insert(runtime, text(&out.stdout));
    }
    assert_eq!(nodes["runc"], "", "runc injects nothing");
    assert_eq!(
        nodes[NVIDIA], "nvidia0 c3:0\nnvidia1 c3:1\n",
        "both GPUs through the runtime's options.ConfigPath"
    );
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

/// A podman smoke run under `runtime`: output and exit code, a detached container with exec
/// and stop, a CDI device from the private `/etc/cdi`; nothing left.
fn podman_smoke(runtime: &str) -> Result<()> {
    let mut p = Podman::start(runtime)?;
    p.import(&ImageSpec::busybox()?, BUSYBOX_IMAGE)?;
    let out = p.podman(&[
        "run",
        "--rm",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(3), "out\n".to_owned(), "err\n".to_owned()),
        "{runtime}"
    );
    let id = p.podman_ok(&["run", "-d", BUSYBOX_IMAGE, "sleep", "600"])?;
    let exec = p.podman(&["exec", &id, "sh", "-c", "echo in; exit 4"])?;
    assert_eq!(
        (exec.status.code(), text(&exec.stdout)),
        (Some(4), "in\n".to_owned())
    );
    p.podman_ok(&["stop", "-t", "1", &id])?;
    p.podman_ok(&["rm", &id])?;

    // podman sees the test's CDI directory as /etc/cdi.
    std::fs::write(p.cdi_dir().join("nvtest.json"), CDI_SPEC)?;
    let out = p.podman(&[
        "run",
        "--rm",
        "--device",
        CDI_DEVICE,
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "echo $FROM_CDI",
    ])?;
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "one\n".to_owned()),
        "{runtime}: {}",
        text(&out.stderr)
    );
    assert!(
        !Path::new("/etc/cdi/nvtest.json").exists(),
        "the host's /etc/cdi is untouched"
    );

    let left = p.leftovers();
    assert!(left.is_empty(), "{runtime}: left behind: {left:?}");
    let parent = p.cgroup_parent().trim_start_matches('/').to_owned();
    p.shutdown();
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")?
        .flatten()
        .map(|e| e.path().join(&parent))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroup parent left: {cgroups:?}");
    Ok(())
}

fn podman_can_run(test: &str) -> bool {
    if !can_run_containerd(test) {
        return false;
    }
    if which("podman").is_none() || which("nsenter").is_none() {
        skip(
            test,
            "podman not installed (scripts/install-deps.sh installs it)",
        );
        return false;
    }
    true
}

#[test]
fn podman_runs_a_container_under_runc() -> Result<()> {
    if !podman_can_run("podman_runs_a_container_under_runc") {
        return Ok(());
    }
    podman_smoke("runc")
}

#[test]
fn podman_runs_a_container_under_crun() -> Result<()> {
    let test = "podman_runs_a_container_under_crun";
    if !podman_can_run(test) {
        return Ok(());
    }
    if which("crun").is_none() {
        skip(
            test,
            "crun not installed (scripts/install-deps.sh installs it)",
        );
        return Ok(());
    }
    if let Some(why) = crun_unusable() {
        skip(test, &why);
        return Ok(());
    }
    podman_smoke("crun")
}

#[test]
fn containerd17_cri_pod_runs_through_the_nvidia_handler_with_cdi_devices() -> Result<()> {
    let test = "containerd17_cri_pod_runs_through_the_nvidia_handler_with_cdi_devices";
    if !can_run_containerd(test) {
        return Ok(());
    }
    let release = match debian_packages::containerd17() {
        Ok(r) => r,
        Err(e) => {
            skip(
                test,
                &format!("Debian trixie's containerd 1.7 could not be fetched: {e:#}"),
            );
            return Ok(());
        }
    };
    let cdi = tempfile::Builder::new()
        .prefix("nvcdi")
        .tempdir_in("/tmp")?;
    std::fs::write(cdi.path().join("nvtest.json"), CDI_SPEC)?;
    let cri = Cri::start(&HandlerConfigs {
        containerd_release: Some(release.bin_dir()),
        cdi_spec_dirs: vec![cdi.path().to_path_buf()],
        ..HandlerConfigs::default()
    })?;
    let version = text(&cri.containerd.ctr(&["version"])?.stdout);
    assert!(
        version.contains("Version:  1.7."),
        "the server is trixie's containerd 1.7: {version}"
    );
    let opts = PodOptions::default();
    let pod = cri.run_pod("door", HANDLER, &opts)?;
    let app = cri.run_container(
        &pod,
        "door",
        &opts,
        &ContainerOptions {
            cdi_devices: vec![CDI_DEVICE.into()],
            ..ContainerOptions::sh("app", "exec sleep 1000")
        },
    )?;
    assert_eq!(cri.container_state(&app)?, ContainerState::ContainerRunning);
    let out = cri.exec(&app, &["sh", "-c", "echo $FROM_CDI; exit 3"])?;
    assert_eq!(
        (out.exit_code, out.stdout.as_str()),
        (3, "one\n"),
        "{}",
        out.stderr
    );
    // The pod's processes are children of this shim.
    let pid = cri.pid_of(&app)?;
    let shim = leftovers::parent_pid(pid).context("the container's parent")?;
    let exe = std::fs::read_link(format!("/proc/{shim}/exe"))?;
    assert!(
        exe.ends_with("containerd-shim-nvidia-v2"),
        "parent is {exe:?}"
    );

    cri.remove_pod(&pod)?;
    eventually("the pod's shim to exit", || {
        leftovers::shim_pids(&cri.containerd.socket()).is_empty()
    })?;
    let mounts = leftovers::mounts_under(cri.containerd.dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cgroups = cri.leftover_cgroups();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let socket = cri.containerd.socket();
    let pid = cri.containerd.pid().map(|p| p as i32);
    drop(cri);
    if let Some(p) = pid {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "containerd {p} still runs"
        );
    }
    let shims = leftovers::shim_pids(&socket);
    assert!(shims.is_empty(), "shims left: {shims:?}");
    Ok(())
}
