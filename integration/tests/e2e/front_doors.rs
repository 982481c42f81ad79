//! The front doors people run containers through, driving the shim (issue 23): Docker 26
//! (Debian trixie's `dockerd`, a `runtimes` entry written by the shim's own `configure docker`)
//! against a private containerd, each case also through Docker's default runc runtime in the
//! same test and compared; containerd 1.7 (Debian trixie's) with its CRI plugin and its own
//! CDI; podman 4.3 (bookworm's) under crun or runc with a private `/etc/cdi`. Each test checks
//! that nothing is left behind: no dockerd, containerd, shim or conmon, no mount, no cgroup.
//! A front door that cannot be fetched or run here makes its tests SKIP with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::ContainerState;
use nvidia_shim_integration::checks::{alike, assert_clean, assert_failed, eventually};
use nvidia_shim_integration::command::{text, Cli};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE};
use nvidia_shim_integration::cri::{ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER};
use nvidia_shim_integration::ctr_run::Seen;
use nvidia_shim_integration::debian_packages::{self, or_skip, Unpacked};
use nvidia_shim_integration::docker::Docker;
use nvidia_shim_integration::gpu::{write_config, Gpus};
use nvidia_shim_integration::image::{Entry, ImageSpec};
use nvidia_shim_integration::podman::Podman;
use nvidia_shim_integration::probe::{self, IMAGE as PROBE_IMAGE};
use nvidia_shim_integration::pty::PtyChild;
use nvidia_shim_integration::{
    can_run_containerd, has_programs, leftovers, skip, skip_part, which,
};

/// The runtime name `configure docker` registers; Docker's own is `runc`.
const NVIDIA: &str = "nvidia";
/// Both runtimes of a Docker test, the reference first.
const RUNTIMES: [&str; 2] = ["runc", NVIDIA];

/// A CDI spec with one device whose only edit is an environment variable: what a front door
/// that applies CDI itself (podman, containerd 1.7 with `enable_cdi`) puts in the spec.
const CDI_SPEC: &str = r#"{"cdiVersion": "0.3.0", "kind": "nvtest.example/dev",
  "devices": [{"name": "one", "containerEdits": {"env": ["FROM_CDI=one"]}}]}"#;
const CDI_DEVICE: &str = "nvtest.example/dev=one";

/// Debian trixie's Docker, or `None` after saying why the test skips.
fn docker_release() -> Option<&'static Unpacked> {
    or_skip("Debian trixie's Docker", debian_packages::docker)
}

/// Debian trixie's containerd 1.7, or `None` after saying why the test skips.
fn containerd17() -> Option<&'static Unpacked> {
    or_skip(
        "Debian trixie's containerd 1.7",
        debian_packages::containerd17,
    )
}

/// dockerd with the `nvidia` runtime registered by `configure docker` with the shim config
/// `config` (and `configure`'s flags; the hook programs linked in the test's own directory),
/// `daemon_json` and the busybox image.
fn dockerd<'a>(
    release: &Unpacked,
    c: &'a Containerd,
    config: &str,
    daemon_json: &str,
    configure: &[&str],
) -> Result<Docker<'a>> {
    Docker::with_runtime(release, c, daemon_json, (NVIDIA, config), configure)
}

/// The `daemon.json` of a dockerd with Docker's own CDI on, reading specs from `dir`.
fn cdi_daemon_json(dir: &Path) -> String {
    serde_json::json!({"features": {"cdi": true}, "cdi-spec-dirs": [dir]}).to_string()
}

/// A temp dir for CDI specs.
fn cdi_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("nvcdi")
        .tempdir_in("/tmp")?)
}

/// Asserts that process `pid` (a daemon the test stopped) no longer runs.
fn assert_gone(what: &str, pid: Option<u32>) {
    if let Some(p) = pid {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "{what} {p} still runs"
        );
    }
}

/// Stops dockerd and checks that neither it nor anything of its containers is left:
/// processes, mounts, cgroups.
fn finish_docker(mut d: Docker<'_>) {
    let left = d.leftovers();
    assert!(
        left.is_empty(),
        "left behind with every container removed: {left:?}"
    );
    let dockerd = d.pid();
    let dir = d.dir().to_path_buf();
    d.shutdown();
    drop(d);
    assert_gone("dockerd", dockerd);
    let mounts = leftovers::mounts_under(&dir);
    assert!(
        mounts.is_empty(),
        "mounts left under dockerd's dir: {mounts:?}"
    );
}

/// Stops containerd and checks that neither it nor a shim or mount of it is left.
fn finish_containerd(mut c: Containerd) {
    let containerd = c.pid();
    c.shutdown();
    assert_no_containerd(containerd, &c.socket());
    let mounts = leftovers::mounts_under(c.dir());
    assert!(
        mounts.is_empty(),
        "mounts left under containerd's dir: {mounts:?}"
    );
}

/// Asserts that containerd `pid`, stopped, and the shims of its `socket` are gone.
fn assert_no_containerd(pid: Option<u32>, socket: &Path) {
    assert_gone("containerd", pid);
    let shims = leftovers::shim_pids(socket);
    assert!(shims.is_empty(), "shims left: {shims:?}");
}

/// Runs `case` against dockerd whose `nvidia` runtime has the shim configuration of `gpus`
/// (made in the containerd's directory; an empty configuration for `None`), with
/// `daemon_json`, on a private containerd; `case` gets dockerd, the configuration's path and
/// the GPUs. Then checks that neither left anything behind. Skips where Docker cannot run.
fn with_dockerd(
    gpus: impl FnOnce(&Path) -> Result<Option<Gpus>>,
    daemon_json: &str,
    case: impl FnOnce(&Docker<'_>, &str, Option<&Gpus>) -> Result<()>,
) -> Result<()> {
    let Some(release) = docker_release() else {
        return Ok(());
    };
    let c = Containerd::start()?;
    let gpus = gpus(c.dir())?;
    let config = match &gpus {
        Some(g) => g.config.clone(),
        None => write_config(c.dir(), "")?,
    };
    let d = dockerd(release, &c, &config, daemon_json, &[])?;
    case(&d, &config, gpus.as_ref())?;
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

/// No GPUs: an empty shim configuration.
fn no_gpus(_: &Path) -> Result<Option<Gpus>> {
    Ok(None)
}

/// Runs `case` on a dockerd without GPUs through Docker's runc and through the runtime, and
/// asserts that both saw `expected`.
fn docker_alike<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: T,
    mut case: impl FnMut(&Docker<'_>, &str) -> Result<T>,
) -> Result<()> {
    with_dockerd(no_gpus, "", |d, _, _| {
        let seen = alike(what, RUNTIMES, |runtime| case(d, runtime))?;
        assert_eq!(seen, expected, "{what}: runc and nvidia");
        Ok(())
    })
}

/// `n` fake GPUs.
fn fake_gpus(n: u32) -> impl FnOnce(&Path) -> Result<Option<Gpus>> {
    move |dir| Ok(Some(Gpus::fake(dir, n)?))
}

/// `docker run --rm --runtime RUNTIME FLAGS... BUSYBOX sh -c SCRIPT`: what it showed, once
/// checked that the container left nothing behind.
fn docker_sh(d: &Docker<'_>, runtime: &str, flags: &[&str], script: &str) -> Result<Seen> {
    let mut args = vec!["--rm", "--runtime", runtime];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[BUSYBOX_IMAGE, "sh", "-c", script]);
    let (out, id) = d.run(&args)?;
    d.assert_clean(&id);
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

/// `docker run -it --rm --runtime RUNTIME BUSYBOX sh` on a 24x80 terminal; the container's
/// id is written to the returned file.
fn docker_tty(d: &Docker<'_>, name: &str, runtime: &str) -> Result<(PtyChild, PathBuf)> {
    let cidfile = d.dir().join(format!("{name}-{runtime}.cid"));
    let cid = cidfile.display().to_string();
    let args = [
        "run",
        "-it",
        "--rm",
        "--cidfile",
        &cid,
        "--runtime",
        runtime,
    ];
    let mut args = args.to_vec();
    args.extend_from_slice(&[BUSYBOX_IMAGE, "sh"]);
    Ok((PtyChild::spawn(d.command(&args), 24, 80)?, cidfile))
}

/// The container id in `cidfile`.
fn cid(cidfile: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(cidfile)?.trim().to_owned())
}

#[test]
fn docker_run_output_exit_code_and_tty_match_runc() -> Result<()> {
    with_dockerd(no_gpus, "", |d, config, _| {
        let json: serde_json::Value = serde_json::from_str(&d.daemon_json())?;
        assert_eq!(
            json["runtimes"][NVIDIA]["runtimeType"], "io.containerd.nvidia.v2",
            "configure docker wrote the runtime entry: {json}"
        );
        assert_eq!(json["runtimes"][NVIDIA]["options"]["ConfigPath"], config);

        let seen = alike("docker run", RUNTIMES, |runtime| {
            // Output, exit code and --rm.
            let plain = "echo out; echo err >&2; exit 3";
            let (out, id) = d.run(&[
                "--rm",
                "--runtime",
                runtime,
                BUSYBOX_IMAGE,
                "sh",
                "-c",
                plain,
            ])?;
            let plain = (out.status.code(), text(&out.stdout), text(&out.stderr));
            d.assert_clean(&id);
            let gone = d.cli(&["inspect", &id])?;
            assert!(!gone.status.success(), "{runtime}: --rm removed {id}");

            // -it: a terminal of its own, what is typed, its size once the client has set it,
            // the exit code.
            let (mut tty, cidfile) = docker_tty(d, "tty", runtime)?;
            tty.send("tty; echo $((6 * 7))-done\n")?;
            let shown = tty.expect("42-done")?;
            let sized = tty.retry_until("stty size\n", "24 80")?;
            tty.send("exit 5\n")?;
            let status = tty.wait()?;
            d.assert_clean(&cid(&cidfile)?);
            let terminal = (
                status.code(),
                [("/dev/pts/0", &shown), ("24 80", &sized)]
                    .iter()
                    .filter(|(s, out)| out.contains(s))
                    .map(|(s, _)| format!("{s}\n"))
                    .collect::<String>(),
                String::new(),
            );
            Ok((plain, terminal))
        })?;
        let expected = (
            (Some(3), "out\n".to_owned(), "err\n".to_owned()),
            (Some(5), "/dev/pts/0\n24 80\n".to_owned(), String::new()),
        );
        assert_eq!(seen, expected, "runc and nvidia");
        Ok(())
    })
}

/// Docker puts the client's terminal size in the spec's `process.consoleSize`; runc gives the
/// terminal that size before the process starts, so `stty size` answers at once; so does the
/// shim, when it receives the terminal (it left it 0x0 until the client's first `ResizePty`).
#[test]
fn docker_tty_has_the_spec_console_size_from_the_start_as_under_runc() -> Result<()> {
    docker_alike("stty size at once", true, |d, runtime| {
        let (mut tty, cidfile) = docker_tty(d, "size", runtime)?;
        tty.send("stty size; echo $((6 * 7))-done\n")?;
        let shown = tty.expect("42-done")?;
        let id = cid(&cidfile)?;
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(
            d.containerd()
                .state_dir()
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
        Ok(shown.contains("\r\n24 80\r\n"))
    })
}

#[test]
fn docker_exec_logs_stop_kill_wait_match_runc() -> Result<()> {
    let expected = (
        (Some(4), "exec-out\n".to_owned(), "exec-err\n".to_owned()),
        "running".to_owned(),
        "7".to_owned(),
        "7".to_owned(),
        "started\ngot-term\n".to_owned(),
        "137".to_owned(),
    );
    docker_alike(
        "docker exec, logs, stop, kill, wait",
        expected,
        |d, runtime| {
            let detached = |cmd: &[&str]| -> Result<String> {
                let mut args = vec!["-d", "--runtime", runtime, BUSYBOX_IMAGE];
                args.extend_from_slice(cmd);
                let (out, id) = d.run(&args)?;
                ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
                Ok(id)
            };
            let script =
                "echo started; trap 'echo got-term; exit 7' TERM; while true; do sleep 0.1; done";
            let id = detached(&["sh", "-c", script])?;
            eventually("the container's first line in docker logs", || {
                d.cli_ok(&["logs", &id])
                    .is_ok_and(|l| l.contains("started"))
            })?;
            let script = "echo exec-out; echo exec-err >&2; exit 4";
            let exec = d.cli(&["exec", &id, "sh", "-c", script])?;
            let exec = (exec.status.code(), text(&exec.stdout), text(&exec.stderr));
            let state = d.inspect(&id, "{{.State.Status}}")?;
            // stop: SIGTERM, which the trap turns into exit 7; wait and inspect report it.
            d.cli_ok(&["stop", "-t", "20", &id])?;
            let waited = d.cli_ok(&["wait", &id])?;
            let code = d.inspect(&id, "{{.State.ExitCode}}")?;
            let logs = text(&d.cli(&["logs", &id])?.stdout);
            d.cli_ok(&["rm", &id])?;
            d.assert_clean(&id);

            // kill: SIGKILL; wait reports 137.
            let id = detached(&["sleep", "600"])?;
            d.cli_ok(&["kill", &id])?;
            let killed = d.cli_ok(&["wait", &id])?;
            d.cli_ok(&["rm", &id])?;
            d.assert_clean(&id);
            Ok((exec, state, waited, code, logs, killed))
        },
    )
}

#[test]
fn docker_restart_on_failure_matches_runc() -> Result<()> {
    let expected = ("exited 2 5".to_owned(), "run\nrun\nrun\n".to_owned());
    docker_alike(
        "docker run --restart on-failure:2",
        expected,
        |d, runtime| {
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
            let logs = text(&d.cli(&["logs", &id])?.stdout);
            d.cli_ok(&["rm", &id])?;
            d.assert_clean(&id);
            Ok((state, logs))
        },
    )
}

#[test]
fn docker_nvidia_visible_devices_all_gets_both_fake_gpus() -> Result<()> {
    with_dockerd(fake_gpus(2), "", |d, _, _| {
        let script = "cd /dev && for n in nvidia[0-9]*; do test -e \"$n\" && stat -c \"$n %t:%T\" \"$n\"; done; true";
        let env = ["-e", "NVIDIA_VISIBLE_DEVICES=all"];
        let mut nodes = Vec::new();
        for runtime in RUNTIMES {
            let (code, out, err) = docker_sh(d, runtime, &env, script)?;
            ensure!(code == Some(0), "{runtime}: {err}");
            nodes.push(out);
        }
        assert_eq!(nodes[0], "", "runc injects nothing");
        assert_eq!(
            nodes[1], "nvidia0 c3:0\nnvidia1 c3:1\n",
            "both GPUs through the runtime's options.ConfigPath"
        );
        Ok(())
    })
}

/// `podman run --rm ARGS...`: exit code and stdout.
fn podman_run(p: &Podman, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    let out = p.cli(&all)?;
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

/// A podman smoke run under `runtime`: output and exit code, a detached container with exec
/// and stop, a CDI device from the private `/etc/cdi`; nothing left.
fn podman_smoke(runtime: &str) -> Result<()> {
    let mut p = Podman::start(runtime)?;
    p.import(&ImageSpec::busybox()?, BUSYBOX_IMAGE)?;
    let script = "echo out; echo err >&2; exit 3";
    assert_eq!(
        podman_run(&p, &[BUSYBOX_IMAGE, "sh", "-c", script])?,
        (Some(3), "out\n".to_owned(), "err\n".to_owned()),
        "{runtime}"
    );
    let id = p.cli_ok(&["run", "-d", BUSYBOX_IMAGE, "sleep", "600"])?;
    let exec = p.cli(&["exec", &id, "sh", "-c", "echo in; exit 4"])?;
    assert_eq!(
        (exec.status.code(), text(&exec.stdout)),
        (Some(4), "in\n".to_owned())
    );
    p.cli_ok(&["stop", "-t", "1", &id])?;
    p.cli_ok(&["rm", &id])?;

    // podman sees the test's CDI directory as /etc/cdi.
    std::fs::write(p.cdi_dir().join("nvtest.json"), CDI_SPEC)?;
    let cdi = [
        "--device",
        CDI_DEVICE,
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "echo $FROM_CDI",
    ];
    let (code, out, err) = podman_run(&p, &cdi)?;
    assert_eq!((code, out.as_str()), (Some(0), "one\n"), "{runtime}: {err}");
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

/// Whether podman can run here; says why not when it cannot.
fn podman_can_run() -> bool {
    let why = "podman not installed (scripts/install-deps.sh installs it)";
    can_run_containerd() && has_programs(&["podman", "nsenter"], why)
}

/// Why podman cannot run crun here, if it cannot.
fn crun_missing() -> Option<&'static str> {
    let why = "crun not installed (scripts/install-deps.sh installs it)";
    which("crun").is_none().then_some(why)
}

#[test]
fn podman_runs_a_container_under_runc() -> Result<()> {
    if !podman_can_run() {
        return Ok(());
    }
    podman_smoke("runc")
}

#[test]
fn podman_runs_a_container_under_crun() -> Result<()> {
    if !podman_can_run() {
        return Ok(());
    }
    if let Some(why) = crun_missing() {
        skip(why);
        return Ok(());
    }
    podman_smoke("crun")
}

/// A CRI containerd of `release` with its own CDI on, reading specs from `cdi`, with the
/// `nvidia` handler's shim config `nvidia`.
fn cri17(release: &Unpacked, cdi: &Path, nvidia: String) -> Result<Cri> {
    Cri::start(&HandlerConfigs {
        nvidia,
        containerd_release: Some(release.bin_dir()),
        cdi_spec_dirs: vec![cdi.to_path_buf()],
        ..HandlerConfigs::default()
    })
}

/// A pod through the `nvidia` handler with one app container (`image`, default busybox)
/// sleeping, given the CDI devices `devices`; the pod's and the app's ids.
fn cdi_pod(cri: &Cri, name: &str, image: Option<&str>, devices: &[&str]) -> Result<[String; 2]> {
    let app = ContainerOptions {
        cdi_devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        image: image.map(str::to_owned),
        ..ContainerOptions::sh("app", "exec sleep 1000")
    };
    cri.run_pod_with(name, HANDLER, &PodOptions::default(), &app)
}

#[test]
fn containerd17_cri_pod_runs_through_the_nvidia_handler_with_cdi_devices() -> Result<()> {
    let Some(release) = containerd17() else {
        return Ok(());
    };
    let cdi = cdi_dir()?;
    std::fs::write(cdi.path().join("nvtest.json"), CDI_SPEC)?;
    let cri = cri17(release, cdi.path(), String::new())?;
    let version = text(&cri.containerd.ctr(&["version"])?.stdout);
    assert!(
        version.contains("Version:  1.7."),
        "the server is trixie's containerd 1.7: {version}"
    );
    let [pod, app] = cdi_pod(&cri, "door", None, &[CDI_DEVICE])?;
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
    let pid = cri.containerd.pid();
    drop(cri);
    assert_no_containerd(pid, &socket);
    Ok(())
}

// ---- GPUs through every front door ----

/// What a GPU container sees: its `/dev/nvidia<N>` nodes, and which of the driver's
/// libraries its dynamic loader finds (`libcuda.so.1`, `libnvidia-ml.so.1`: a link in the
/// library directory and an entry in the ld cache).
const SEEN_SCRIPT: &str = "cd /dev; echo $(ls -d nvidia[0-9]* 2>/dev/null); \
    for l in libcuda.so.1 libnvidia-ml.so.1; do \
      test -e /usr/lib/x86_64-linux-gnu/$l && grep -q $l /etc/ld.so.cache && echo $l; \
    done; true";

/// `docker run --rm ARGS... BUSYBOX sh -c SEEN_SCRIPT`: exit code, what it saw, stderr.
fn docker_seen(d: &Docker<'_>, args: &[&str]) -> Result<Seen> {
    let mut all = vec!["--rm"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[BUSYBOX_IMAGE, "sh", "-c", SEEN_SCRIPT]);
    let (out, id) = d.run(&all)?;
    if out.status.success() {
        d.assert_clean(&id);
    }
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

#[test]
fn docker_gpus_reaches_the_runtime_without_the_toolkit() -> Result<()> {
    let Some(release) = docker_release() else {
        return Ok(());
    };
    let c = Containerd::start()?;
    let g = Gpus::fake(c.dir(), 2)?;
    let d = dockerd(release, &c, &g.config, "", &[])?;
    // configure docker linked this binary as the program dockerd needs for --gpus.
    let hook = d.hooks_dir().join("nvidia-container-runtime-hook");
    assert_eq!(
        std::fs::canonicalize(&hook)?,
        std::fs::canonicalize(nvidia_shim_integration::shim_binary())?
    );
    let both = "nvidia0 nvidia1\nlibcuda.so.1\nlibnvidia-ml.so.1\n";
    for (gpus, expected) in [
        ("all", both),
        ("1", "nvidia0\nlibcuda.so.1\nlibnvidia-ml.so.1\n"),
        ("\"device=1\"", "nvidia1\nlibcuda.so.1\nlibnvidia-ml.so.1\n"),
        (
            "all,\"capabilities=utility\"",
            "nvidia0 nvidia1\nlibnvidia-ml.so.1\n",
        ),
    ] {
        let seen = docker_seen(&d, &["--runtime", NVIDIA, "--gpus", gpus])?;
        assert_eq!(
            seen,
            (Some(0), expected.to_owned(), String::new()),
            "--gpus {gpus}"
        );
    }
    // Under runc the hook runs, and fails the container with one line and the fix.
    let seen = docker_seen(&d, &["--gpus", "all"])?;
    assert_failed(
        seen,
        &["run it with `--runtime nvidia`", "--set-as-default"],
    );
    finish_docker(d);
    // As Docker's default runtime, `docker run --gpus all` needs nothing else.
    let d = dockerd(release, &c, &g.config, "", &["--set-as-default"])?;
    let seen = docker_seen(&d, &["--gpus", "all"])?;
    assert_eq!(
        seen,
        (Some(0), both.to_owned(), String::new()),
        "the default runtime"
    );
    // The command every guide starts from (the fake driver's nvidia-smi is a script that
    // names one H100; the README shows this output).
    let (out, id) = d.run(&["--rm", "--gpus", "all", BUSYBOX_IMAGE, "nvidia-smi"])?;
    eprintln!(
        "docker run --rm --gpus all {BUSYBOX_IMAGE} nvidia-smi:\n{}",
        text(&out.stdout)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-"),
        "{}",
        text(&out.stdout)
    );
    d.assert_clean(&id);
    finish_docker(d);
    finish_containerd(c);
    Ok(())
}

/// Debian's packaged driver with a fake 2-GPU kernel side, its config in `dir`.
fn debian_gpus(dir: &Path) -> Result<Gpus> {
    Gpus::debian(dir, 2)
}

/// The probe's codes in `output` and the host's: what a container given the Debian driver
/// answers, beside what the probe answers on the host against the same root.
fn codes(output: &str) -> Result<[(Option<i32>, Option<i32>); 2]> {
    let driver = nvidia_shim_integration::debian_driver::debian_driver()?;
    Ok([probe::codes(output), driver.host_codes()?])
}

/// Writes a CDI spec of `g`'s driver, from `cdi generate ARGS`, into `dir` as `nvidia.json`.
fn cdi_spec(g: &Gpus, dir: &Path, args: &[&str]) -> Result<()> {
    let output = dir.join("nvidia.json").display().to_string();
    let mut all = vec!["--output", output.as_str()];
    all.extend_from_slice(args);
    g.cdi_generate(&all)?;
    Ok(())
}

#[test]
fn docker_gpus_and_cdi_devices_load_debians_driver_as_on_the_host() -> Result<()> {
    let cdi = cdi_dir()?;
    let debian = |dir: &Path| Ok(Some(debian_gpus(dir)?));
    with_dockerd(debian, &cdi_daemon_json(cdi.path()), |d, _, g| {
        let g = g.context("Debian's driver")?;
        d.import(&probe::image()?, PROBE_IMAGE)?;
        let probe = |args: &[&str]| -> Result<String> {
            let mut all = vec!["--rm"];
            all.extend_from_slice(args);
            all.extend_from_slice(&[PROBE_IMAGE, "nvprobe", "cuInit", "nvmlInit"]);
            let (out, id) = d.run(&all)?;
            ensure!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            d.assert_clean(&id);
            Ok(text(&out.stdout))
        };
        // docker run --gpus in each form through the runtime: the driver loads as on the host;
        // with the utility capability alone there is no libcuda to load.
        for gpus in ["all", "1", "\"device=1\"", "all,\"capabilities=utility\""] {
            let out = probe(&["--runtime", NVIDIA, "--gpus", gpus])?;
            let [seen, host] = codes(&out)?;
            assert_eq!(
                host,
                (Some(100), Some(9)),
                "no kernel module: the host's answers"
            );
            let expected = if gpus.contains("utility") {
                (None, host.1)
            } else {
                host
            };
            assert_eq!(seen, expected, "--gpus {gpus}: {out}");
        }
        // Docker's own CDI, with the spec `cdi generate` writes (hooks calling this binary), under
        // runc (which runs the hooks) and under the runtime (which does them itself); then the
        // toolkit's form (nvidia-cdi-hook, here the link configure docker made).
        let cdi_hook = d.hooks_dir().join("nvidia-cdi-hook");
        let cdi_hook = cdi_hook.display().to_string();
        for generate in [
            vec![],
            vec![
                "--hooks",
                "nvidia-cdi-hook",
                "--hook-path",
                cdi_hook.as_str(),
            ],
        ] {
            cdi_spec(g, cdi.path(), &generate)?;
            for runtime in RUNTIMES {
                let out = probe(&["--runtime", runtime, "--device", "nvidia.com/gpu=all"])?;
                let [seen, host] = codes(&out)?;
                assert_eq!(seen, host, "CDI {generate:?} under {runtime}: {out}");
            }
        }
        Ok(())
    })
}

#[test]
fn podman_cdi_devices_load_debians_driver_as_on_the_host() -> Result<()> {
    if !podman_can_run() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let g = debian_gpus(work.path())?;
    let mut runtimes = vec!["runc"];
    match crun_missing() {
        // Half of this test does not run here: said as a skip (the runc half runs).
        Some(why) => skip_part("under crun", why),
        None => runtimes.insert(0, "crun"),
    }
    for runtime in runtimes {
        let mut p = Podman::start(runtime)?;
        p.import(&probe::image()?, PROBE_IMAGE)?;
        cdi_spec(&g, &p.cdi_dir(), &[])?;
        let probes = ["--device", "nvidia.com/gpu=all", PROBE_IMAGE, "nvprobe"];
        let mut probes = probes.to_vec();
        probes.extend_from_slice(&["cuInit", "nvmlInit"]);
        let (code, out, err) = podman_run(&p, &probes)?;
        ensure!(code == Some(0), "{runtime}: {err}");
        let [seen, host] = codes(&out)?;
        assert_eq!(seen, host, "podman under {runtime}: {out}");
        let left = p.leftovers();
        assert!(left.is_empty(), "{runtime}: left behind: {left:?}");
        p.shutdown();
    }
    Ok(())
}

#[test]
fn containerd17_cdi_devices_load_debians_driver_through_the_handler_once() -> Result<()> {
    let Some(release) = containerd17() else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let g = debian_gpus(work.path())?;
    let cdi = cdi_dir()?;
    cdi_spec(&g, cdi.path(), &[])?;
    let cri = cri17(release, cdi.path(), g.driver.shim_config())?;
    cri.containerd
        .import_in("k8s.io", &probe::image()?, PROBE_IMAGE)?;
    let [pod, app] = cdi_pod(&cri, "gpu", Some(PROBE_IMAGE), &["nvidia.com/gpu=all"])?;
    let out = cri.exec(&app, &["nvprobe", "cuInit", "nvmlInit"])?;
    let [seen, host] = codes(&out.stdout)?;
    assert_eq!(seen, host, "{}{}", out.stdout, out.stderr);
    // Once: containerd applied the spec, the runtime did its hook steps, and nothing more.
    let cache = cri.sh(&app, "grep -o libcuda.so.1 /etc/ld.so.cache | wc -l")?;
    let log = cri.containerd.log();
    assert_eq!(
        log.matches("the CDI hook steps of its spec done natively")
            .count(),
        1
    );
    let injected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("injected GPUs"))
        .collect();
    assert!(injected.is_empty(), "nothing injected again: {injected:?}");
    assert!(
        cache.trim().parse::<u32>()? >= 1,
        "libcuda.so.1 in the ld cache: {cache}"
    );
    let links = cri.sh(&app, "readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1")?;
    assert!(links.trim().starts_with("libcuda.so."), "{links}");
    cri.remove_pod(&pod)?;
    Ok(())
}

/// A stand-in `nvidia-container-cli` that records being run, for ctr's `--gpus` (which only
/// looks it up); `containerd` (which ctr names in the hook) is on the host's PATH.
fn stand_in_cli(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("stand-in-bin");
    std::fs::create_dir_all(&bin)?;
    let cli = bin.join("nvidia-container-cli");
    std::fs::write(
        &cli,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}/cli-ran\nexit 1\n",
            dir.display()
        ),
    )?;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

#[test]
fn ctr_gpus_is_served_by_the_runtime_and_the_cli_never_runs() -> Result<()> {
    if !can_run_containerd() {
        return Ok(());
    }
    let c = Containerd::start()?;
    let g = Gpus::fake(c.dir(), 2)?;
    c.import_busybox()?;
    let bin = stand_in_cli(c.dir())?;
    let path = format!("{}:{}", bin.display(), c.path_env());
    for (gpu, expected) in [
        ("0", "nvidia0\nlibcuda.so.1\nlibnvidia-ml.so.1\n"),
        ("1", "nvidia1\nlibcuda.so.1\nlibnvidia-ml.so.1\n"),
    ] {
        let run = g.ctr_run().rm().flags(&["--gpus", gpu]).sh(SEEN_SCRIPT);
        let out = run.command(&c).env("PATH", &path).output()?;
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), expected.to_owned()),
            "--gpus {gpu}: {}",
            text(&out.stderr)
        );
        assert_clean(&c, run.id(), run.id());
    }
    assert!(
        !c.dir().join("cli-ran").exists(),
        "nvidia-container-cli ran: {:?}",
        std::fs::read_to_string(c.dir().join("cli-ran"))
    );
    finish_containerd(c);
    Ok(())
}

/// An image that sets `LD_PRELOAD` to a library writing a marker wherever it is loaded, and
/// whose library directory is a symlink to a host path (CVE-2024-0132's shape): the CDI hook
/// (under runc) and the runtime (natively) must neither load it nor write through the link.
#[test]
fn hostile_images_cannot_steer_the_cdi_hook_or_the_runtime() -> Result<()> {
    let cdi = cdi_dir()?;
    with_dockerd(fake_gpus(1), &cdi_daemon_json(cdi.path()), |d, _, g| {
        let g = g.context("the fake GPU")?;
        let work = tempfile::Builder::new()
            .prefix("nvhostile")
            .tempdir_in("/tmp")?;
        // The preloaded library: its constructor writes a marker named after the process.
        let marker_dir = work.path().join("markers");
        std::fs::create_dir(&marker_dir)?;
        let src = work.path().join("evil.c");
        std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void evil(void) {{\n  char p[512]; snprintf(p, sizeof p, \"{}/loaded-%d\", (int)getpid());\n  FILE *f = fopen(p, \"w\"); if (f) fclose(f);\n}}\n",
            marker_dir.display()
        ),
    )?;
        let evil = work.path().join("evil.so");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&evil)
            .arg(&src)
            .status()?;
        ensure!(status.success(), "cc evil.so");
        // It works: a host program given it writes its marker.
        let control = std::process::Command::new("/bin/true")
            .env("LD_PRELOAD", &evil)
            .status()?;
        ensure!(control.success());
        ensure!(
            std::fs::read_dir(&marker_dir)?.count() == 1,
            "the preload writes its marker"
        );
        for e in std::fs::read_dir(&marker_dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        let escape = work.path().join("escape");
        std::fs::create_dir(&escape)?;
        let mut image = ImageSpec::glibc()?;
        image.env.push("LD_PRELOAD=/evil.so".into());
        let evil = std::fs::read(&evil)?;
        image
            .entries
            .push(Entry::File("evil.so".into(), 0o755, evil));
        let image_name = "docker.io/library/nvtest-hostile:latest";
        d.import(&image, image_name)?;
        // The image's library directory, a symlink to the host directory `escape`.
        let linked = "docker.io/library/nvtest-hostile-link:latest";
        let mut link_image = ImageSpec::busybox()?;
        let lib_dir = "usr/lib/x86_64-linux-gnu".into();
        let link = Entry::Symlink(lib_dir, escape.display().to_string());
        link_image.entries.push(link);
        d.import(&link_image, linked)?;
        cdi_spec(g, cdi.path(), &[])?;
        for runtime in RUNTIMES {
            for image in [image_name, linked] {
                for request in [
                    &["--device", "nvidia.com/gpu=all"][..],
                    &["--gpus", "all"][..],
                ] {
                    if runtime == "runc" && request[0] == "--gpus" {
                        continue; // fails by design (see the --gpus test)
                    }
                    let mut args = vec!["--rm", "--runtime", runtime];
                    args.extend_from_slice(request);
                    args.extend_from_slice(&[image, "true"]);
                    let (out, id) = d.run(&args)?;
                    ensure!(
                        out.status.success(),
                        "{runtime} {image} {request:?}: {}",
                        text(&out.stderr)
                    );
                    d.assert_clean(&id);
                }
            }
        }
        // The container's own processes load the preload (it is the container's business) in
        // their own mount namespace, where the marker directory does not exist: no marker on the
        // host means no hook and no runtime step ever loaded it here.
        let markers = leftovers::names_in(&marker_dir)?;
        assert!(
            markers.is_empty(),
            "the image's LD_PRELOAD ran on the host side: {markers:?}"
        );
        let written = leftovers::names_in(&escape)?;
        assert!(
            written.is_empty(),
            "written through the image's symlink: {written:?}"
        );
        Ok(())
    })
}
