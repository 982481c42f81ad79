//! The operator commands, run as an operator runs them (the built binary): `configure
//! containerd` on the installed containerd's own default config and on hand-written version 2
//! and 3 configs, then a private containerd started with the configured file runs a pod through
//! the `nvidia` handler; `configure docker`; `info --json` and `cdi list` on a fake driver and
//! on Debian's packaged driver (golden file); `doctor` on this machine and on a fake node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use nvidia_shim_core_host::fixture::FakeDriver;
use nvidia_shim_integration::command::{shim, shim_in, text, SYSTEM_PATH};
use nvidia_shim_integration::containerd::Containerd;
use nvidia_shim_integration::cri::{ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER};
use nvidia_shim_integration::debian_driver::debian_driver;
use nvidia_shim_integration::gpu::{write_config, Gpus};
use nvidia_shim_integration::{can_run_containerd, is_root, leftovers, shim_binary, skip, which};
use serde_json::Value;

/// `containerd-shim-nvidia-v2 configure WHAT --config CONFIG FLAGS...`.
fn configure(what: &str, config: &str, flags: &[&str]) -> Result<Output> {
    let mut args = vec!["configure", what, "--config", config];
    args.extend_from_slice(flags);
    shim(&args)
}

/// `containerd-shim-nvidia-v2 doctor --json --config SHIM_CONFIG --containerd-config
/// CONTAINERD_CONFIG FLAGS...`.
fn doctor_json(shim_config: &str, containerd_config: &Path, flags: &[&str]) -> Result<Output> {
    let containerd_config = containerd_config.display().to_string();
    let mut args = vec!["doctor", "--json", "--config", shim_config];
    args.extend_from_slice(&["--containerd-config", &containerd_config]);
    args.extend_from_slice(flags);
    shim(&args)
}

/// Whether the test runs as root, which the fake driver's device nodes need (mknod).
fn root() -> bool {
    is_root("the fake driver's device nodes need mknod")
}

#[test]
fn configure_containerd_edits_the_installed_containerds_default_config_and_a_pod_runs() -> Result<()>
{
    if which("containerd").is_none() {
        skip("containerd is not installed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("config.toml");
    let default = Command::new("containerd")
        .args(["config", "default"])
        .output()?;
    assert!(default.status.success(), "{}", text(&default.stderr));
    std::fs::write(&file, &default.stdout)?;
    let path = file.display().to_string();

    // --dry-run shows the change and writes nothing.
    let dry = configure("containerd", &path, &["--dry-run"])?;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("+runtime_type = \"io.containerd.nvidia.v2\""),
        "{}",
        text(&dry.stdout)
    );
    assert_eq!(std::fs::read(&file)?, default.stdout, "--dry-run wrote");

    let first = configure("containerd", &path, &[])?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let once = std::fs::read_to_string(&file)?;
    let second = configure("containerd", &path, &[])?;
    assert!(text(&second.stdout).contains("nothing changed"));
    assert_eq!(std::fs::read_to_string(&file)?, once, "not idempotent");
    assert_eq!(
        std::fs::read(dir.path().join("config.toml.bak"))?,
        default.stdout
    );
    // Every line of containerd's default is still there (only additions).
    let kept = text(&default.stdout);
    for line in kept.lines().filter(|l| !l.trim().is_empty()) {
        assert!(once.contains(line), "{line:?} lost");
    }
    // containerd itself reads the result and sees the runtime.
    let dump = Command::new("containerd")
        .args(["--config", &path, "config", "dump"])
        .output()?;
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    let dumped = text(&dump.stdout);
    assert!(
        dumped.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]")
            && dumped.contains("runtime_type = \"io.containerd.nvidia.v2\""),
        "{dumped}"
    );

    // A private containerd whose config the binary edited runs a pod through `nvidia`.
    if !can_run_containerd() {
        return Ok(());
    }
    let cri = Cri::start(&HandlerConfigs {
        nvidia_by_configure: true,
        ..HandlerConfigs::default()
    })?;
    let opts = PodOptions::default();
    let app = ContainerOptions::sh("app", "echo up; exec sleep 1000");
    let [_, app] = cri.run_pod_with("configured", HANDLER, &opts, &app)?;
    assert_eq!(
        cri.sh(&app, "echo through the configured handler")?.trim(),
        "through the configured handler"
    );
    let shim_pid = leftovers::parent_pid(cri.pid_of(&app)?).context("ppid")?;
    let exe = std::fs::read_link(format!("/proc/{shim_pid}/exe"))?;
    assert!(
        exe.ends_with("containerd-shim-nvidia-v2"),
        "{}",
        exe.display()
    );
    Ok(())
}

#[test]
fn configure_containerd_on_version_2_and_3_configs_with_comments() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // containerd 2.x's documented defaults, trimmed, with an operator's comments.
    let v3 = r#"# containerd 2.x, managed by ansible
version = 3
root = "/var/lib/containerd"

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc" # not ours

  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = true
"#;
    let file = dir.path().join("v3.toml");
    std::fs::write(&file, v3)?;
    let path = file.display().to_string();
    let flags = ["--set-as-default", "--runtime-name", "gpu"];
    let out = configure("containerd", &path, &flags)?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let edited = std::fs::read_to_string(&file)?;
    assert!(edited.contains("# containerd 2.x, managed by ansible"));
    assert!(edited.contains("SystemdCgroup = true"));
    let parsed: toml::Value = toml::from_str(&edited)?;
    let c = &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"];
    assert_eq!(c["default_runtime_name"].as_str(), Some("gpu"));
    assert_eq!(
        c["runtimes"]["gpu"]["runtime_type"].as_str(),
        Some("io.containerd.nvidia.v2")
    );
    assert_eq!(
        c["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    // A file it cannot parse is refused, naming the line, and left alone.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "version = 2\n\n[plugins\n")?;
    let out = configure("containerd", &broken.display().to_string(), &[])?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("line 3"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        std::fs::read_to_string(&broken)?,
        "version = 2\n\n[plugins\n"
    );
    Ok(())
}

#[test]
fn configure_docker_keeps_other_keys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("daemon.json");
    std::fs::write(
        &file,
        r#"{"log-driver": "journald", "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "data-root": "/srv/docker"}"#,
    )?;
    let path = file.display().to_string();
    let hooks = dir.path().join("hooks");
    let hook_dir = hooks.display().to_string();
    let cdi_hook = hooks.join("nvidia-cdi-hook").display().to_string();
    let docker = [
        "configure",
        "docker",
        "--config",
        &path,
        "--hook-dir",
        &hook_dir,
        "--cdi-hook-path",
        &cdi_hook,
    ];
    // The hooks are linked where asked, whatever /usr/local/bin holds.
    let out = shim_in(SYSTEM_PATH, &docker)?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    assert_eq!(v["log-driver"], "journald");
    assert_eq!(v["data-root"], "/srv/docker");
    assert_eq!(v["runtimes"]["crun"]["path"], "/usr/bin/crun");
    assert_eq!(
        v["runtimes"]["nvidia"]["runtimeType"],
        "io.containerd.nvidia.v2"
    );
    // The programs Docker's --gpus and the toolkit's CDI specs call, linked where asked.
    for name in ["nvidia-container-runtime-hook", "nvidia-cdi-hook"] {
        assert_eq!(
            std::fs::canonicalize(hooks.join(name))?,
            std::fs::canonicalize(shim_binary())?,
            "{name}"
        );
    }
    let again = shim_in(SYSTEM_PATH, &docker)?;
    let said = text(&again.stdout);
    assert!(said.contains("nothing changed"), "{said}");
    assert!(said.contains("is this runtime already"), "{said}");
    Ok(())
}

#[test]
fn configure_docker_refuses_a_docker_older_than_23() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    // Debian bookworm's own Docker, as its dockerd says it.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let dockerd = bin.join("dockerd");
    std::fs::write(
        &dockerd,
        "#!/bin/sh\necho 'Docker version 20.10.24+dfsg1, build 297e128'\n",
    )?;
    std::fs::set_permissions(&dockerd, std::fs::Permissions::from_mode(0o755))?;
    let file = dir.path().join("daemon.json");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shim_binary())
        .args(["configure", "docker", "--config"])
        .arg(&file)
        .args(["--docker-socket", "/nonexistent/docker.sock", "--hook-dir"])
        .arg(dir.path().join("hooks"))
        .env("PATH", &path)
        .output()?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Docker 20.10") && err.contains("Docker 23.0 or later"),
        "{err}"
    );
    assert!(
        !file.exists() && !dir.path().join("hooks").exists(),
        "nothing written"
    );
    // doctor says so too.
    let out = Command::new(shim_binary())
        .args([
            "doctor",
            "--json",
            "--docker-socket",
            "/nonexistent/docker.sock",
        ])
        .env("PATH", &path)
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let docker = report
        .as_array()
        .and_then(|r| r.iter().find(|c| c["check"] == "docker"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(docker["status"], "FAIL", "{docker}");
    assert!(
        docker["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Docker 20.10")),
        "{docker}"
    );
    Ok(())
}

#[test]
fn info_and_cdi_list_describe_a_fake_driver() -> Result<()> {
    if !root() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let g = Gpus::of(dir.path(), FakeDriver::builder().gpus(2).build())?;
    let cfg = g.config.clone();
    let out = shim(&["info", "--json", "--config", &cfg])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(info["gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(info["discovery_source"], "/proc");
    assert!(info["nvml_unavailable"]
        .as_str()
        .is_some_and(|r| r.contains("proc_root")));
    let compute = info["capabilities"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["capability"] == "compute"))
        .context("compute")?;
    let libcuda = compute["libraries"]
        .as_array()
        .and_then(|l| {
            l.iter().find(|f| {
                f["container"]
                    .as_str()
                    .is_some_and(|p| p.contains("libcuda.so."))
            })
        })
        .context("libcuda among compute's libraries")?;
    assert!(Path::new(libcuda["host"].as_str().unwrap_or_default()).is_file());
    assert_eq!(info["cache"]["state"], "absent");
    let text_out = shim(&["info", "--config", &cfg])?;
    assert!(text(&text_out.stdout).contains("GPUs:                2"));

    let list = shim(&["cdi", "list", "--config", &cfg])?;
    assert!(list.status.success(), "{}", text(&list.stderr));
    let names: Vec<String> = text(&list.stdout).lines().map(str::to_owned).collect();
    let uuid0 = info["gpus"][0]["uuid"].as_str().unwrap_or_default();
    assert_eq!(
        names,
        [
            "nvidia.com/gpu=0".to_owned(),
            format!("nvidia.com/gpu={uuid0}"),
            "nvidia.com/gpu=1".to_owned(),
            format!(
                "nvidia.com/gpu={}",
                info["gpus"][1]["uuid"].as_str().unwrap_or_default()
            ),
            "nvidia.com/gpu=all".to_owned(),
        ]
    );
    Ok(())
}

/// `info --json` on Debian's packaged driver (fake kernel side), against
/// `integration/testdata/info-debian.json` with the temporary roots and the driver version
/// written as placeholders (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn info_on_debians_packaged_driver_matches_its_golden_file() -> Result<()> {
    if !root() {
        return Ok(());
    }
    let driver = debian_driver()?;
    let dir = tempfile::tempdir()?;
    let g = Gpus::debian(dir.path(), 1)?;
    let kernel = &g.driver;
    let out = shim(&["info", "--json", "--config", &g.config])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = text(&out.stdout)
        .replace(&driver.root.display().to_string(), "<debian-root>")
        .replace(&kernel.host_root().display().to_string(), "<fake-kernel>")
        .replace(&driver.version, "<version>");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/info-debian.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &got)?;
    }
    let want = std::fs::read_to_string(&golden)
        .with_context(|| format!("{} (UPDATE_GOLDEN=1 writes it)", golden.display()))?;
    assert_eq!(got, want, "info --json differs from {}", golden.display());
    // The spec `cdi generate` would write for it holds the names nvidia-ctk gives.
    let list = shim(&["cdi", "list", "--config", &g.config])?;
    assert!(list.status.success(), "{}", text(&list.stderr));
    let info: Value = serde_json::from_slice(&out.stdout)?;
    let uuid = info["gpus"][0]["uuid"].as_str().unwrap_or_default();
    assert_eq!(
        text(&list.stdout),
        format!("nvidia.com/gpu=0\nnvidia.com/gpu={uuid}\nnvidia.com/gpu=all\n")
    );
    Ok(())
}

#[test]
fn doctor_fails_without_a_driver_and_checks_a_fake_node() -> Result<()> {
    // This machine: no NVIDIA kernel module.
    if !Path::new("/proc/driver/nvidia/version").exists() {
        let dir = tempfile::tempdir()?;
        let config = write_config(dir.path(), "")?;
        let out = shim(&["doctor", "--config", &config])?;
        assert!(!out.status.success(), "doctor passed without a driver");
        let report = text(&out.stdout);
        let first = report.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("FAIL  kernel module:") && first.contains("not loaded"),
            "{report}"
        );
        assert!(
            report.contains("fix: install the NVIDIA driver"),
            "{report}"
        );
    }
    if !can_run_containerd() {
        return Ok(());
    }
    // A fake node with a private containerd the binary configured.
    let c = Containerd::builder()
        .log_level("info")
        .configured_by_shim(|_| Vec::new())
        .start()?;
    let dir = tempfile::tempdir()?;
    let g = Gpus::of(dir.path(), FakeDriver::builder().gpus(2).build())?;
    let socket = c.socket().display().to_string();
    let flags = ["--containerd-socket", &socket];
    let out = doctor_json(&g.config, &c.dir().join("config.toml"), &flags)?;
    let report: Vec<Value> =
        serde_json::from_slice(&out.stdout).with_context(|| text(&out.stdout))?;
    let status = |name: &str| {
        report
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["detail"].clone(),
                )
            })
            .unwrap_or_default()
    };
    for ok in [
        "kernel module",
        "device nodes",
        "driver libraries",
        "containerd",
        "containerd config",
        "inventory cache",
    ] {
        assert_eq!(status(ok).0, "OK", "{ok}: {:?}", status(ok).1);
    }
    assert_eq!(
        status("persistence").0,
        "WARN",
        "no nvidia-persistenced on a fake node"
    );
    // Docker is checked only where a dockerd is; front_doors.rs checks it with one.
    assert!(!status("docker").0.is_empty(), "a docker line");
    assert_eq!(report.len(), 11, "{report:?}");
    Ok(())
}

#[test]
fn configure_edits_a_symlinked_config_through_its_link_and_keeps_the_first_backup() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let managed = dir.path().join("managed");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&managed)?;
    std::fs::create_dir_all(&etc)?;
    // containerd's config lives elsewhere (a config-management checkout); /etc has a link.
    let target = managed.join("containerd.toml");
    let original = "# managed by the platform team\nversion = 2\n";
    std::fs::write(&target, original)?;
    let link = etc.join("config.toml");
    std::os::unix::fs::symlink(&target, &link)?;
    let path = link.display().to_string();

    let first = configure("containerd", &path, &[])?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let bak = managed.join("containerd.toml.bak");
    assert!(
        text(&first.stdout).contains(&format!("the original is kept as {}", bak.display())),
        "{}",
        text(&first.stdout)
    );
    let second = configure("containerd", &path, &["--set-as-default"])?;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains(&format!("the original stays in {}", bak.display())),
        "{}",
        text(&second.stdout)
    );
    // The link is still the link; its target has both changes; the backup is the original.
    assert_eq!(std::fs::read_link(&link)?, target);
    let edited = std::fs::read_to_string(&target)?;
    assert!(
        edited.contains("# managed by the platform team")
            && edited.contains("runtime_type = \"io.containerd.nvidia.v2\"")
            && edited.contains("default_runtime_name = \"nvidia\""),
        "{edited}"
    );
    assert_eq!(std::fs::read_to_string(&bak)?, original);
    assert!(!etc.join("config.toml.bak").exists());

    // The same for daemon.json and the shim's config.
    let daemon = managed.join("daemon.json");
    std::fs::write(&daemon, "{\"data-root\": \"/srv/docker\"}")?;
    let daemon_link = etc.join("daemon.json");
    std::os::unix::fs::symlink(&daemon, &daemon_link)?;
    // The hook programs linked in the test's directory, never the host's /usr (where they
    // would change what every later `configure docker` does).
    let hooks = dir.path().join("hooks");
    let hook_dir = hooks.display().to_string();
    let cdi_hook = hooks.join("nvidia-cdi-hook").display().to_string();
    let flags = ["--hook-dir", &hook_dir, "--cdi-hook-path", &cdi_hook];
    let out = configure("docker", &daemon_link.display().to_string(), &flags)?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_link(&daemon_link)?, daemon);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&daemon)?)?;
    assert_eq!(
        v["runtimes"]["nvidia"]["runtimeType"],
        "io.containerd.nvidia.v2"
    );
    let shim_cfg = managed.join("shim.toml");
    std::fs::write(&shim_cfg, "log_level = \"debug\"\n")?;
    let shim_link = etc.join("shim.toml");
    std::os::unix::fs::symlink(&shim_cfg, &shim_link)?;
    for profile in ["kubernetes", "default"] {
        let out = shim(&[
            "configure",
            "shim",
            "--output",
            &shim_link.display().to_string(),
            "--profile",
            profile,
            "--force",
        ])?;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(std::fs::read_link(&shim_link)?, shim_cfg);
    assert_eq!(
        std::fs::read_to_string(managed.join("shim.toml.bak"))?,
        "log_level = \"debug\"\n"
    );
    let mut left: Vec<String> = std::fs::read_dir(&managed)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    left.sort();
    assert_eq!(
        left,
        [
            "containerd.toml",
            "containerd.toml.bak",
            "daemon.json",
            "daemon.json.bak",
            "shim.toml",
            "shim.toml.bak"
        ],
        "nothing staged is left"
    );
    Ok(())
}

/// Paths that are not small regular files, each with the cause an error must name.
fn hostile_paths(dir: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let fifo = dir.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; makes a FIFO in a temp dir.
    anyhow::ensure!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0, "mkfifo");
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20])?;
    let sub = dir.join("a-directory.toml");
    std::fs::create_dir_all(&sub)?;
    Ok(vec![
        (PathBuf::from("/dev/zero"), "is a device"),
        (fifo, "is a FIFO"),
        (sub, "is a directory"),
        (big, "is 2097152 bytes"),
    ])
}

#[test]
fn operator_commands_refuse_config_paths_that_are_not_small_regular_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty-shim.toml");
    std::fs::write(&empty, "")?;
    let empty = empty.display().to_string();
    for (path, cause) in hostile_paths(dir.path())? {
        let p = path.display().to_string();
        let commands: [&[&str]; 7] = [
            &["configure", "containerd", "--config", &p, "--dry-run"],
            &["configure", "containerd", "--config", &p],
            &["configure", "docker", "--config", &p],
            &["configure", "shim", "--output", &p, "--dry-run"],
            &["info", "--config", &p],
            &["cdi", "list", "--config", &p],
            &["doctor", "--config", &p],
        ];
        for args in commands {
            let out = shim(args)?;
            assert!(!out.status.success(), "{args:?} succeeded");
            let err = text(&out.stderr);
            assert!(err.contains(&format!("{p} {cause}")), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        }
        // doctor checks containerd's config as one of its checks: that check fails, naming it.
        let out = shim(&["doctor", "--config", &empty, "--containerd-config", &p])?;
        assert!(!out.status.success(), "doctor passed with {p}");
        let report = text(&out.stdout);
        let line = report
            .lines()
            .find(|l| l.contains("containerd config:"))
            .unwrap_or_default();
        assert!(
            line.starts_with("FAIL") && line.contains(&format!("{p} {cause}")),
            "{report}"
        );
    }
    // What they refused is as it was.
    assert_eq!(
        std::fs::metadata(dir.path().join("big.toml"))?.len(),
        2 << 20
    );
    Ok(())
}

/// doctor's report as JSON: `(status, detail, fix)` of the check `name`.
fn doctor_check(out: &Output, name: &str) -> Result<(String, String, String)> {
    let report: Vec<Value> =
        serde_json::from_slice(&out.stdout).with_context(|| text(&out.stdout))?;
    let c = report
        .iter()
        .find(|c| c["check"] == name)
        .with_context(|| format!("no check {name:?} in {report:?}"))?;
    let field = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
    Ok((field("status"), field("detail"), field("fix")))
}

#[test]
fn doctor_fails_gpu_requests_forwarded_as_pod_annotations_until_configure_moves_them() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let shim_cfg = dir.path().join("shim.toml");
    std::fs::write(&shim_cfg, "accept_envvar_when_unprivileged = false\n")?;
    let shim_cfg = shim_cfg.display().to_string();
    let doctor = |config: &Path| doctor_json(&shim_cfg, config, &[]);
    let runtime = |pod: &str| {
        format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\n  runtime_type = \"io.containerd.nvidia.v2\"\n  pod_annotations = [{pod}]\n  container_annotations = [\"cdi.k8s.io/*\", \"nvidia.com/*\"]\n"
        )
    };
    for (pod, forwards) in [
        // What `configure containerd` and config-v2.toml wrote before issue 22.
        (
            r#""cdi.k8s.io/*", "nvidia.com/*""#,
            "cdi.k8s.io/, nvidia.com/",
        ),
        (r#""example.com/x", "*/*""#, "cdi.k8s.io/, nvidia.com/"),
        (r#""cdi.k8s.io/x""#, "cdi.k8s.io/"),
    ] {
        let file = dir.path().join("config.toml");
        std::fs::write(&file, runtime(pod))?;
        let (status, detail, fix) = doctor_check(&doctor(&file)?, "containerd config")?;
        assert_eq!(status, "FAIL", "{pod}: {detail}");
        assert!(
            detail.contains(&format!("({forwards})"))
                && detail.contains("any pod can request GPUs"),
            "{pod}: {detail}"
        );
        assert!(fix.contains("container_annotations"), "{fix}");
        // configure moves them, says so, and doctor is then satisfied.
        let out = configure("containerd", &file.display().to_string(), &[])?;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("runtime \"nvidia\": ")
                && text(&out.stdout).contains(" pod_annotations "),
            "{}",
            text(&out.stdout)
        );
        let (status, detail, _) = doctor_check(&doctor(&file)?, "containerd config")?;
        assert_eq!(status, "OK", "{pod} after configure: {detail}");
        let again = configure("containerd", &file.display().to_string(), &[])?;
        assert!(
            text(&again.stdout).contains("nothing changed"),
            "{}",
            text(&again.stdout)
        );
        std::fs::remove_file(dir.path().join("config.toml.bak"))?;
    }
    // A pattern that forwards no GPU request is fine (`*` stops at the `/` of a prefix).
    let file = dir.path().join("harmless.toml");
    std::fs::write(&file, runtime(r#""*", "example.com/*""#))?;
    let (status, detail, _) = doctor_check(&doctor(&file)?, "containerd config")?;
    assert_eq!(status, "OK", "{detail}");
    Ok(())
}

/// Issue 24 item 5: with two containerds on the node, doctor looks for the shim where the one
/// listening on the checked config's `[grpc] address` looks, not where another one does.
#[test]
fn doctor_checks_the_shim_where_the_containerd_of_the_checked_config_looks() -> Result<()> {
    if !can_run_containerd() {
        return Ok(());
    }
    if which("containerd-shim-nvidia-v2").is_some() {
        skip("containerd-shim-nvidia-v2 is on this PATH, so no containerd lacks it");
        return Ok(());
    }
    let with = Containerd::start()?;
    let without = Containerd::start()?;
    // The harness put the shim first on each one's PATH; take it from the second.
    std::fs::remove_file(without.dir().join("bin/containerd-shim-nvidia-v2"))?;
    let dir = tempfile::tempdir()?;
    let shim_cfg = write_config(dir.path(), "")?;
    let doctor = |c: &Containerd| doctor_json(&shim_cfg, &c.dir().join("config.toml"), &[]);
    let pid = |c: &Containerd| c.pid().map(|p| p.to_string()).unwrap_or_default();

    let (status, detail, _) = doctor_check(&doctor(&with)?, "shim on PATH")?;
    assert_eq!(status, "OK", "{detail}");
    assert!(
        detail.starts_with(&format!(
            "{} for containerd pid {} (listening on {})",
            with.dir().join("bin/containerd-shim-nvidia-v2").display(),
            pid(&with),
            with.socket().display()
        )),
        "{detail}"
    );
    // Its socket came from the config's [grpc] address: the containerd check reached it.
    assert_eq!(doctor_check(&doctor(&with)?, "containerd")?.0, "OK");

    let (status, detail, fix) = doctor_check(&doctor(&without)?, "shim on PATH")?;
    assert_eq!(status, "FAIL", "{detail}");
    assert!(
        detail.starts_with(&format!(
            "no containerd-shim-nvidia-v2 for containerd pid {} (listening on {}): looked in its working directory ",
            pid(&without),
            without.socket().display()
        )) && detail.contains(&format!("{}:", without.dir().join("bin").display()))
            && detail.contains("its binary's directory /usr/bin"),
        "{detail}"
    );
    assert!(fix.contains("that containerd's PATH"), "{fix}");

    // No containerd on the socket: doctor says so and which PATH it checked instead.
    let gone = dir.path().join("gone.toml");
    std::fs::write(
        &gone,
        format!(
            "version = 2\n[grpc]\n  address = \"{}\"\n",
            dir.path().join("none.sock").display()
        ),
    )?;
    let out = doctor_json(&shim_cfg, &gone, &[])?;
    let (status, detail, _) = doctor_check(&out, "shim on PATH")?;
    assert_eq!(status, "FAIL", "{detail}");
    assert!(
        detail.contains(&format!(
            "the default PATH (no process listens on {})",
            dir.path().join("none.sock").display()
        )) && detail.contains("/usr/local/bin"),
        "{detail}"
    );
    Ok(())
}
