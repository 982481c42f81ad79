//! `containerd-shim-nvidia-v2 doctor [--json]`: checks a node end to end, one line per check
//! (OK, WARN, FAIL, or SKIP when an earlier failure decides it) with the fix for each failure;
//! exits non-zero when a check fails. The checks read the same roots the shim does (its
//! config's `proc_root`, `dev_root`, `driver_root`), so a fake or foreign root can be checked.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use nvidia_shim_core::cdi::spec::CdiSpec;
use nvidia_shim_core::config::MAX_CONFIG_SIZE;
use nvidia_shim_core::inventory::{DeviceNode, Inventory};
use nvidia_shim_core::quote::quoted;
use nvidia_shim_core::Config;
use nvidia_shim_core_host::regular_file::{self, RegularFileError};

use super::args::Args;
use super::configure::annotations::forwarded_requests;
use super::configure::containerd::registrations;
use super::containerd_process::{self, ContainerdProcess};

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 doctor [--json] [--config FILE] [--containerd-config PATH] [--containerd-socket PATH] [--docker-socket PATH]

Checks the node end to end: kernel module, device nodes, persistence daemon, driver libraries,
the shim on containerd's PATH, containerd reachable and configured with the runtime, the CDI
spec, the inventory cache directory, cgroups, and Docker when the node has it (version 23 or
later; nvidia-container-runtime-hook on dockerd's PATH for --gpus). Exits non-zero when a check
fails.

  --json                    one JSON array of {check, status, detail, fix}
  --config FILE             the shim's config; default /etc/containerd-shim-nvidia/config.toml
  --containerd-config PATH  default /etc/containerd/config.toml
  --containerd-socket PATH  default the config's [grpc] address, else /run/containerd/containerd.sock
  --docker-socket PATH      default /run/docker.sock

The shim is looked for where the containerd listening on that socket looks: its working
directory, its PATH, the directory of its binary.";

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Broken: GPU containers will fail.
    Fail,
    /// Not checked: an earlier failure decides it.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> Check {
    Check {
        check: name,
        status,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
    }
}

/// Where the checks look besides the shim's config.
#[derive(Debug, Clone)]
pub struct Targets {
    /// containerd's config.
    pub containerd_config: PathBuf,
    /// containerd's socket (the one whose process's `PATH` is checked).
    pub containerd_socket: PathBuf,
    /// The cgroupfs mount.
    pub cgroup_root: PathBuf,
    /// Docker's socket (the daemon whose version and `PATH` are checked).
    pub docker_socket: PathBuf,
}

/// Runs every check.
pub fn checks(config: &Config, targets: &Targets) -> Vec<Check> {
    let mut out = Vec::new();
    let version_file = config.proc_root.join("driver/nvidia/version");
    let module = read_text(&version_file);
    match &module {
        Ok(text) => out.push(check(
            "kernel module",
            Status::Ok,
            text.lines().next().unwrap_or_default().trim(),
            None,
        )),
        Err(e) => out.push(check(
            "kernel module",
            Status::Fail,
            format!("{e}: the NVIDIA kernel module is not loaded"),
            Some("install the NVIDIA driver (kernel module and userspace of one version) and load it: modprobe nvidia"),
        )),
    }
    let inventory = module.as_ref().ok().map(|_| crate::gpu::discover(config));
    match &inventory {
        None => {
            for name in ["device nodes", "persistence", "driver libraries"] {
                out.push(check(name, Status::Skip, "no kernel module", None));
            }
        }
        Some(Err(e)) => {
            out.push(check(
                "device nodes",
                Status::Skip,
                "no driver inventory",
                None,
            ));
            out.push(check(
                "persistence",
                Status::Skip,
                "no driver inventory",
                None,
            ));
            out.push(check(
                "driver libraries",
                Status::Fail,
                e.to_string(),
                Some("install the driver's userspace of the kernel module's version (Debian: libcuda1 libnvidia-ml1 nvidia-smi from contrib/non-free), or set driver_root in the shim's config"),
            ));
        }
        Some(Ok(inv)) => {
            out.push(device_nodes(inv));
            out.push(persistence(config));
            out.push(libraries(inv));
        }
    }
    out.push(shim_on_path(&targets.containerd_socket));
    out.push(containerd_reachable(&targets.containerd_socket));
    out.push(containerd_configured(
        &targets.containerd_config,
        &config.annotation_prefixes,
    ));
    out.push(cdi_spec(
        config,
        inventory.as_ref().and_then(|r| r.as_ref().ok()),
    ));
    out.push(cache_dir(&config.cache_dir));
    out.push(cgroups(&targets.cgroup_root));
    out.push(docker(&targets.docker_socket));
    out
}

/// Docker, when the node has it: a version that runs shim v2 runtimes, and the program
/// `docker run --gpus` needs on dockerd's `PATH`.
fn docker(socket: &Path) -> Check {
    use super::configure::docker_host::{Dockerd, LEGACY_HOOK};
    let dockerd = Dockerd::find(socket);
    if dockerd.process.is_none() && dockerd.exe.is_none() {
        return check("docker", Status::Skip, "no Docker on this node", None);
    }
    let who = dockerd.describe();
    let version = match dockerd.version() {
        Some(v) if !v.runs_shim_runtimes() => {
            return check(
                "docker",
                Status::Fail,
                format!("{who} is Docker {v}, which cannot run containerd shim v2 runtimes"),
                Some("install Docker 23 or later (Debian: docker.io from trixie or Docker's own packages)"),
            )
        }
        Some(v) => v.to_string(),
        None => "of unknown version".to_owned(),
    };
    let binary = std::env::current_exe().unwrap_or_default();
    match dockerd.look_path(LEGACY_HOOK) {
        None => check(
            "docker",
            Status::Warn,
            format!("{who}, Docker {version}: no {LEGACY_HOOK} on its PATH, so `docker run --gpus` fails"),
            Some("containerd-shim-nvidia-v2 configure docker, then restart Docker"),
        ),
        Some(found) => {
            let reached = dockerd
                .process
                .as_ref()
                .map_or_else(|| found.clone(), |p| p.reached_from_here(&found));
            let ours = std::fs::canonicalize(reached).ok() == std::fs::canonicalize(&binary).ok();
            let whose = if ours { "this runtime" } else { "another program" };
            check(
                "docker",
                Status::Ok,
                format!("{who}, Docker {version}; `docker run --gpus` runs {} ({whose})", found.display()),
                None,
            )
        }
    }
}

fn device_nodes(inv: &Inventory) -> Check {
    let majors = &inv.char_majors;
    let gpu_major = majors
        .get("nvidia-frontend")
        .or_else(|| majors.get("nvidia"))
        .copied();
    let mut problems = Vec::new();
    let mut modes = Vec::new();
    let mut nodes: Vec<(&DeviceNode, Option<u32>)> = vec![(&inv.ctl, gpu_major)];
    nodes.extend(inv.gpu_nodes.values().map(|n| (n, gpu_major)));
    let uvm_major = majors.get("nvidia-uvm").copied();
    nodes.extend(inv.uvm.iter().map(|n| (n, uvm_major)));
    for (node, want_major) in &nodes {
        match std::fs::metadata(&node.host_path) {
            Ok(m) if m.file_type().is_char_device() => {
                let major = nvidia_shim_core::inventory::rdev_major(m.rdev());
                if want_major.is_some_and(|w| w != major) {
                    problems.push(format!(
                        "{} has major {major}, /proc/devices says {}",
                        node.host_path.display(),
                        want_major.unwrap_or_default()
                    ));
                }
                if m.mode() & 0o666 != 0o666 {
                    modes.push(format!(
                        "{} has mode {:o}",
                        node.host_path.display(),
                        m.mode() & 0o777
                    ));
                }
            }
            _ => problems.push(format!(
                "{} is not a character device",
                node.host_path.display()
            )),
        }
    }
    if inv.uvm.is_none() {
        problems.push("no /dev/nvidia-uvm: CUDA needs it".to_owned());
    }
    if problems.is_empty() && !modes.is_empty() {
        return check(
            "device nodes",
            Status::Warn,
            format!(
                "{}; the driver's default is 0666 (NVreg_DeviceFileMode): containers get 0666 nodes of their own, but host users other than root cannot reach the GPUs",
                modes.join("; ")
            ),
            Some("chmod 0666 /dev/nvidia* (or load nvidia with NVreg_DeviceFileMode=0666)"),
        );
    }
    if problems.is_empty() {
        check(
            "device nodes",
            Status::Ok,
            format!(
                "{} nodes, majors as /proc/devices says, mode 0666",
                nodes.len()
            ),
            None,
        )
    } else {
        check(
            "device nodes",
            Status::Fail,
            problems.join("; "),
            Some("create the nodes with the driver's majors: nvidia-modprobe -c 0 -u (or load nvidia-uvm), and chmod 0666 /dev/nvidia*"),
        )
    }
}

fn persistence(config: &Config) -> Check {
    let socket = ["run", "var/run"]
        .iter()
        .map(|d| config.dev_root.join(d).join("nvidia-persistenced/socket"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()));
    match socket {
        Some(p) => check(
            "persistence",
            Status::Ok,
            format!("nvidia-persistenced is running ({})", p.display()),
            None,
        ),
        None => check(
            "persistence",
            Status::Warn,
            "nvidia-persistenced is not running: the driver tears a GPU down when no process holds it, so each container start initialises it again",
            Some("systemctl enable --now nvidia-persistenced"),
        ),
    }
}

fn libraries(inv: &Inventory) -> Check {
    let missing: Vec<&str> = ["libcuda", "libnvidia-ml"]
        .into_iter()
        .filter(|l| inv.library(l).is_none())
        .collect();
    if missing.is_empty() {
        check(
            "driver libraries",
            Status::Ok,
            format!(
                "{} libraries of version {} under {} (libcuda {})",
                inv.libraries.len(),
                inv.driver_version,
                inv.roots.driver_root.display(),
                inv.library("libcuda")
                    .map(|l| l.path.display().to_string())
                    .unwrap_or_default()
            ),
            None,
        )
    } else {
        check(
            "driver libraries",
            Status::Fail,
            format!(
                "no {} of version {} under {}",
                missing.join(", "),
                inv.driver_version,
                inv.roots.driver_root.display()
            ),
            Some("install the driver's userspace of the kernel module's version"),
        )
    }
}

/// The text of the regular file at `path`, at most [`MAX_CONFIG_SIZE`] bytes, opened without
/// blocking (a FIFO or `/dev/zero` there fails at once, naming it).
fn read_text(path: &Path) -> Result<String, RegularFileError> {
    regular_file::read_to_string(path, MAX_CONFIG_SIZE)
}

/// The default PATH of a containerd started by systemd.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The version `binary -v` reports.
fn version_of(binary: &Path) -> Option<String> {
    std::process::Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Version:")
                    .map(|v| v.trim().to_owned())
            })
        })
}

/// The shim where the containerd listening on `socket` looks for it (when none listens, on
/// the default PATH), at this binary's version.
fn shim_on_path(socket: &Path) -> Check {
    let name = env!("CARGO_BIN_NAME");
    let listener = containerd_process::listening_on(socket);
    let process = match &listener {
        Ok(Some(p)) => p.clone(),
        // The default PATH of a containerd started by systemd, from here.
        _ => ContainerdProcess {
            pid: 0,
            root: PathBuf::from("/"),
            cwd: None,
            path: Some(DEFAULT_PATH.to_owned()),
            exe: None,
        },
    };
    let whose = match &listener {
        Ok(Some(p)) => format!(
            "containerd pid {} (listening on {})",
            p.pid,
            socket.display()
        ),
        Ok(None) => format!(
            "the default PATH (no process listens on {})",
            socket.display()
        ),
        Err(e) => format!(
            "the default PATH (the process listening on {} cannot be found: {e})",
            socket.display()
        ),
    };
    let Some(found) = process.find(name) else {
        let looked = match (&listener, &process.cwd, &process.exe) {
            (Ok(Some(_)), cwd, exe) => format!(
                "its working directory {}, its PATH {}, its binary's directory {}",
                cwd.as_deref()
                    .map_or("(unknown)".into(), |c| c.display().to_string()),
                process.path.as_deref().map_or("(unset)".into(), quoted),
                exe.as_deref()
                    .and_then(Path::parent)
                    .map_or("(unknown)".into(), |d| d.display().to_string()),
            ),
            _ => DEFAULT_PATH.to_owned(),
        };
        return check(
            "shim on PATH",
            Status::Fail,
            format!("no {name} for {whose}: looked in {looked}"),
            Some("install the binary into a directory on that containerd's PATH, e.g. /usr/local/bin (deploy/installer/install.sh does)"),
        );
    };
    let ours = env!("CARGO_PKG_VERSION");
    match version_of(&process.reached_from_here(&found)) {
        Some(v) if v == ours => check(
            "shim on PATH",
            Status::Ok,
            format!("{} for {whose}, version {v}", found.display()),
            None,
        ),
        other => check(
            "shim on PATH",
            Status::Warn,
            format!(
                "{} for {whose} is version {}, this one is {ours}",
                found.display(),
                other.as_deref().unwrap_or("unknown")
            ),
            Some("install this binary over it (running shims keep the old one until their containers go)"),
        ),
    }
}

fn containerd_reachable(socket: &Path) -> Check {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => check(
            "containerd",
            Status::Ok,
            format!("{} accepts connections", socket.display()),
            None,
        ),
        Err(e) => check(
            "containerd",
            Status::Fail,
            format!("{}: {e}", socket.display()),
            Some("systemctl start containerd"),
        ),
    }
}

/// The files containerd reads as its config: the main file and its `imports`.
fn config_files(main: &Path) -> Vec<PathBuf> {
    let mut files = vec![main.to_owned()];
    let imports: Vec<String> = read_text(main)
        .ok()
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| {
            d.get("imports")
                .and_then(toml_edit::Item::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
        })
        .unwrap_or_default();
    for pattern in imports {
        match pattern.strip_suffix("*.toml") {
            Some(dir) => {
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                found.sort();
                files.extend(found);
            }
            None => files.push(PathBuf::from(pattern)),
        }
    }
    files
}

/// containerd's `[grpc] address` in its config at `main`, if it sets one.
pub fn grpc_address(main: &Path) -> Option<PathBuf> {
    let doc = read_text(main)
        .ok()?
        .parse::<toml_edit::DocumentMut>()
        .ok()?;
    doc.get("grpc")?.get("address")?.as_str().map(PathBuf::from)
}

/// The runtime registered in containerd's config (and its imports), and no GPU request
/// forwarded from pod annotations (`request_prefixes`: the shim's CDI annotation prefixes).
fn containerd_configured(main: &Path, request_prefixes: &[String]) -> Check {
    let fix = Some("containerd-shim-nvidia-v2 configure containerd, then restart containerd");
    if !main.exists() {
        return check(
            "containerd config",
            Status::Fail,
            format!("{} does not exist", main.display()),
            fix,
        );
    }
    let mut names = Vec::new();
    let mut forwarding = Vec::new();
    for file in config_files(main) {
        let text = match read_text(&file) {
            Ok(text) => text,
            Err(e) if e.is_not_found() && file != main => continue,
            Err(e) => return check(
                "containerd config",
                Status::Fail,
                e.to_string(),
                Some("containerd's config and its imports must be regular files of at most 1 MiB"),
            ),
        };
        match registrations(&text) {
            Ok(found) => {
                for r in found {
                    let mut patterns = Vec::new();
                    let mut prefixes: Vec<&str> = Vec::new();
                    for pattern in &r.pod_annotations {
                        let forwarded = forwarded_requests(pattern, request_prefixes);
                        if !forwarded.is_empty() {
                            patterns.push(quoted(pattern));
                        }
                        for p in forwarded {
                            if !prefixes.contains(&p) {
                                prefixes.push(p);
                            }
                        }
                    }
                    if !patterns.is_empty() {
                        forwarding.push(format!(
                            "{} ({}) forwards pod annotations {} ({})",
                            r.name,
                            file.display(),
                            patterns.join(", "),
                            prefixes.join(", ")
                        ));
                    }
                    names.push(format!("{} ({})", r.name, file.display()));
                }
            }
            Err(e) => {
                return check(
                    "containerd config",
                    Status::Fail,
                    format!("{}: {e}", file.display()),
                    Some("fix the file; containerd does not start with it either"),
                )
            }
        }
    }
    if names.is_empty() {
        check(
            "containerd config",
            Status::Fail,
            format!(
                "no runtime with runtime_type io.containerd.nvidia.v2 in {}",
                main.display()
            ),
            fix,
        )
    } else if !forwarding.is_empty() {
        check(
            "containerd config",
            Status::Fail,
            format!(
                "runtime {}: pod annotations are written by whoever writes the pod, so any pod can request GPUs past the device plugin (and the isolation profile)",
                forwarding.join("; ")
            ),
            Some("forward GPU requests as container_annotations only (the kubelet sets those): containerd-shim-nvidia-v2 configure containerd moves them, then restart containerd"),
        )
    } else {
        check(
            "containerd config",
            Status::Ok,
            format!("runtime {}", names.join(", ")),
            None,
        )
    }
}

fn cdi_spec(config: &Config, inv: Option<&Inventory>) -> Check {
    let fix = Some(
        "containerd-shim-nvidia-v2 cdi generate --hooks none --output /var/run/cdi/nvidia.yaml",
    );
    let mut specs = Vec::new();
    for dir in &config.cdi_spec_dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !path.extension().is_some_and(|e| e == "json" || e == "yaml") {
                continue;
            }
            let spec = read_text(&path)
                .ok()
                .and_then(|text| CdiSpec::parse(&path, &text).ok());
            if let Some(spec) = spec {
                if spec.kind == "nvidia.com/gpu" {
                    specs.push((path, spec));
                }
            }
        }
    }
    let Some((path, spec)) = specs.last() else {
        return check(
            "CDI spec",
            Status::Warn,
            "no nvidia.com/gpu spec in the CDI directories: only CDI consumers other than this shim need one (containerd 2.x's own CDI, Podman)",
            fix,
        );
    };
    let Some(inv) = inv else {
        return check("CDI spec", Status::Ok, format!("{}", path.display()), None);
    };
    let stale = spec
        .container_edits
        .mounts
        .iter()
        .find(|m| m.host_path.contains(".so.") && !m.host_path.ends_with(&inv.driver_version));
    match stale {
        Some(m) => check(
            "CDI spec",
            Status::Warn,
            format!(
                "{} is stale: it mounts {} but the driver is {}",
                path.display(),
                m.host_path,
                inv.driver_version
            ),
            fix,
        ),
        None => check(
            "CDI spec",
            Status::Ok,
            format!("{} ({} devices)", path.display(), spec.devices.len()),
            None,
        ),
    }
}

fn cache_dir(dir: &Path) -> Check {
    if dir.as_os_str().is_empty() {
        return check(
            "inventory cache",
            Status::Ok,
            "disabled (cache_dir = \"\")",
            None,
        );
    }
    match std::fs::symlink_metadata(dir) {
        Err(_) => check(
            "inventory cache",
            Status::Ok,
            format!("{} is created on first use (root, 0700)", dir.display()),
            None,
        ),
        Ok(m) if m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0 => check(
            "inventory cache",
            Status::Ok,
            format!("{} owned by root, mode {:o}", dir.display(), m.mode() & 0o777),
            None,
        ),
        Ok(m) => check(
            "inventory cache",
            Status::Fail,
            format!(
                "{} is {} owned by uid {} with mode {:o}: the shim does not trust it",
                dir.display(),
                if m.is_dir() { "a directory" } else { "not a directory" },
                m.uid(),
                m.mode() & 0o777
            ),
            Some("rm -rf the directory (the shim recreates it root-owned, 0700) or chown root:root and chmod 0700"),
        ),
    }
}

fn cgroups(root: &Path) -> Check {
    if root.join("cgroup.controllers").exists() {
        check(
            "cgroups",
            Status::Ok,
            "v2 (unified): device rules enforced by an eBPF program per container",
            None,
        )
    } else if root.join("devices").is_dir() {
        check(
            "cgroups",
            Status::Ok,
            "v1 with the devices controller: device rules enforced",
            None,
        )
    } else {
        check(
            "cgroups",
            Status::Warn,
            format!("{}: neither cgroup v2 nor the v1 devices controller; device rules cannot be enforced", root.display()),
            Some("mount cgroup2 at /sys/fs/cgroup (systemd.unified_cgroup_hierarchy=1)"),
        )
    }
}

/// The report as text: one line per check, the fix indented below a failure or warning.
pub fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out.push_str(&format!("{status:<5} {}: {}\n", c.check, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    out
}

/// Runs `doctor` with `args` (after the command word).
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(
        args,
        &[
            "--config",
            "--containerd-config",
            "--containerd-socket",
            "--docker-socket",
        ],
        &["--json"],
    )?;
    if let Some(extra) = args.positional.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let config = super::load_config(args.value("--config"))?;
    let containerd_config = PathBuf::from(
        args.value("--containerd-config")
            .unwrap_or("/etc/containerd/config.toml"),
    );
    let containerd_socket = match args.value("--containerd-socket") {
        Some(s) => PathBuf::from(s),
        None => grpc_address(&containerd_config)
            .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock")),
    };
    let targets = Targets {
        containerd_config,
        containerd_socket,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        docker_socket: PathBuf::from(
            args.value("--docker-socket")
                .unwrap_or(super::configure::docker_host::DOCKER_SOCKET),
        ),
    };
    let report = checks(&config, &targets);
    if args.has("--json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", text(&report));
    }
    let failed = report.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        eprintln!("doctor: {failed} check(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
