//! The shims' own time per container, phase by phase. Each shim is driven through its Task API
//! exactly as containerd 1.6 drives it for `ctr run --rm` (the `start` exec with containerd's
//! flags and environment, `Create` with an overlay rootfs, `Start`, `Wait`, `Delete`,
//! `Shutdown`, then the `delete` exec containerd runs once the shim is gone), and each call is
//! timed from the client: containerd's and ctr's own work is out of the figures, so what is
//! left is the shim's (and, for the Go shim, the runc it execs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, ShutdownRequest, StartRequest, WaitRequest,
};
use containerd_shim_protos::types::mount::Mount;
use nvidia_shim_integration::containerd::Containerd;
use nvidia_shim_integration::image::ImageSpec;
use nvidia_shim_integration::task_api::TaskApi;
use nvidia_shim_integration::unique_id;

/// The namespace the benchmark's containers are in (containerd only forwards their events).
const NAMESPACE: &str = "nvbench";

/// What a shim wrote to its log FIFO.
type SharedLog = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Makes the `log` FIFO a shim opens in its bundle (panics when it cannot: the benchmark's own
/// temporary directory) and reads it as containerd does, in a thread that ends when the last
/// writer (the shim, its helpers) has gone.
fn drain_log_fifo(path: &Path, log: &SharedLog) {
    nvidia_shim_core_host::fixture::mkfifo(path);
    let (path, log) = (path.to_owned(), log.clone());
    std::thread::spawn(move || {
        use std::io::Read;
        let Ok(mut fifo) = std::fs::File::open(&path) else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = fifo.read(&mut buf) {
            if let Ok(mut l) = log.lock() {
                l.extend_from_slice(&buf[..n]);
            }
        }
    });
}

/// The phases, in the order containerd goes through them.
pub const PHASES: [&str; 7] = [
    "start exec (to serving)",
    "Create",
    "Start",
    "Wait (exit to reply)",
    "Delete",
    "Shutdown",
    "delete exec",
];

/// One container's time in each of [`PHASES`].
pub type Phases = [Duration; PHASES.len()];

/// One container's run: its phases and, from a shim that logs them (this one), Create's steps
/// by name in order.
pub struct Run {
    pub phases: Phases,
    pub create_steps: Vec<(String, Duration)>,
    /// How far into Create the kernel let cgroup migrations pass again (its grace period), as
    /// the shim logged it: the part of Create that waited for the kernel.
    pub migrations_open: Option<Duration>,
    /// The binary's bare execution (`-v`, from fork to exit), run right after the container:
    /// the floor of the `start` and `delete` executions.
    pub bare_exec: Duration,
}

/// `rootfs 0.31 ms, bundle 0.92 ms, ...` (up to the log record's closing quote), as steps.
fn parse_steps(list: &str) -> Vec<(String, Duration)> {
    let list = list.split('"').next().unwrap_or_default();
    list.split(", ")
        .filter_map(|step| {
            let (name, ms) = step.trim().strip_suffix(" ms")?.rsplit_once(' ')?;
            let ms: f64 = ms.parse().ok()?;
            Some((name.to_owned(), Duration::from_secs_f64(ms / 1e3)))
        })
        .collect()
}

/// The text after `container ID: WHAT` on the first line of the shim's `log` that has it.
pub fn line_about<'a>(log: &'a str, id: &str, what: &str) -> Option<&'a str> {
    let marker = format!("container {id}: {what}");
    log.lines()
        .find_map(|l| l.find(&marker).map(|at| &l[at + marker.len()..]))
}

/// The steps of container `id`'s `create steps: rootfs 0.31 ms, bundle 0.92 ms, ...` line in
/// the shim's `log`, if any.
pub fn create_steps_of(log: &str, id: &str) -> Vec<(String, Duration)> {
    line_about(log, id, "create steps: ")
        .map(parse_steps)
        .unwrap_or_default()
}

/// How far into its Create the kernel's grace period for cgroup migrations lasted for container
/// `id`, from the shim's `container ID: cgroup migrations open 3.17 ms into Create` line in
/// `log`, if any.
pub fn migrations_open(log: &str, id: &str) -> Option<Duration> {
    let tail = line_about(log, id, "cgroup migrations open ")?;
    let ms: f64 = tail.split_once(" ms into Create")?.0.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

/// A bundle source shared by every run: the busybox image unpacked once (the overlay's lower
/// layer, as a snapshotter's would be) and containerd's default spec running `/bin/true`.
pub struct PhaseBench<'a> {
    containerd: &'a Containerd,
    work: tempfile::TempDir,
    lower: PathBuf,
    spec: serde_json::Value,
    publish_binary: PathBuf,
}

impl<'a> PhaseBench<'a> {
    /// Prepares the image and the spec next to `containerd` (whose socket receives the
    /// shims' events).
    pub fn new(containerd: &'a Containerd) -> Result<Self> {
        let work = tempfile::Builder::new()
            .prefix("nvbench")
            .tempdir_in("/tmp")?;
        let lower = work.path().join("lower");
        std::fs::create_dir(&lower)?;
        ImageSpec::busybox()?.unpack(&lower)?;
        let out = containerd.ctr(&["oci", "spec"])?;
        ensure!(out.status.success(), "ctr oci spec failed");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ctr oci spec's output")?;
        spec["process"]["args"] = serde_json::json!(["/bin/true"]);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"] = serde_json::json!({"path": "rootfs"});
        let publish_binary =
            nvidia_shim_integration::which("containerd").context("containerd not on PATH")?;
        Ok(Self {
            containerd,
            work,
            lower,
            spec,
            publish_binary,
        })
    }

    /// Runs one container through `shim` (a shim binary), returning each phase's time; a
    /// failure carries the end of what the shim logged.
    pub fn run(&self, shim: &Path) -> Result<Run> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let id = unique_id("ph");
        let phases = self.run_logged(shim, &id, &log).map_err(|e| {
            let text = log.lock().map(|l| String::from_utf8_lossy(&l).into_owned());
            let text = text.unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!(
                "{}; its log ends:\n{}",
                shim.display(),
                tail.join("\n")
            ))
        })?;
        let text = log.lock().map(|l| String::from_utf8_lossy(&l).into_owned());
        let text = text.unwrap_or_default();
        let clock = Instant::now();
        let version = Command::new(shim).arg("-v").stdin(Stdio::null()).output()?;
        let bare_exec = clock.elapsed();
        ensure!(version.status.success(), "{} -v failed", shim.display());
        Ok(Run {
            phases,
            create_steps: create_steps_of(&text, &id),
            migrations_open: migrations_open(&text, &id),
            bare_exec,
        })
    }

    fn run_logged(&self, shim: &Path, id: &str, log: &SharedLog) -> Result<Phases> {
        let bundle = self.work.path().join(id);
        let (upper, workdir) = (bundle.join("upper"), bundle.join("work"));
        for d in [&bundle.join("rootfs"), &upper, &workdir] {
            std::fs::create_dir_all(d)?;
        }
        drain_log_fifo(&bundle.join("log"), log);
        let mut spec = self.spec.clone();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{id}"));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;

        let mut t = [Duration::ZERO; PHASES.len()];
        let clock = Instant::now();
        let out = self.shim_command(shim, id, &bundle, "start").output()?;
        t[0] = clock.elapsed();
        ensure!(
            out.status.success(),
            "{} start: {}",
            shim.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let api = TaskApi::connect(&address).with_context(|| format!("connect to {address}"))?;
        let ctx = || {
            let mut c = containerd_shim_protos::ttrpc::context::with_timeout(30_000_000_000);
            c.add("containerd-namespace".into(), NAMESPACE.into());
            c
        };
        let timed = |slot: &mut Duration, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let clock = Instant::now();
            f()?;
            *slot = clock.elapsed();
            Ok(())
        };
        let mut mount = Mount::new();
        mount.type_ = "overlay".into();
        mount.source = "overlay".into();
        mount.options = vec![
            format!("lowerdir={}", self.lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", workdir.display()),
        ];
        let mut create = CreateTaskRequest::new();
        create.id = id.to_owned();
        create.bundle = bundle.display().to_string();
        create.rootfs = vec![mount];
        let by_id = |id: &str| {
            let mut s = StartRequest::new();
            s.id = id.to_owned();
            s
        };
        let [_, c, s, w, d, sd, _] = &mut t;
        timed(c, &mut || Ok(api.create(ctx(), &create).map(drop)?))?;
        timed(s, &mut || Ok(api.start(ctx(), &by_id(id)).map(drop)?))?;
        timed(w, &mut || {
            let mut req = WaitRequest::new();
            req.id = id.to_owned();
            let status = api.wait(ctx(), &req)?.exit_status;
            ensure!(status == 0, "/bin/true exited {status}");
            Ok(())
        })?;
        timed(d, &mut || {
            let mut req = DeleteRequest::new();
            req.id = id.to_owned();
            Ok(api.delete(ctx(), &req).map(drop)?)
        })?;
        timed(sd, &mut || {
            let mut req = ShutdownRequest::new();
            req.id = id.to_owned();
            // The shim exits while answering: a closed connection is its answer too.
            let _ = api.shutdown(ctx(), &req);
            Ok(())
        })?;
        drop(api);
        let clock = Instant::now();
        let out = self.shim_command(shim, id, &bundle, "delete").output()?;
        t[6] = clock.elapsed();
        if !out.status.success() {
            bail!(
                "{} delete: {}",
                shim.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&bundle).with_context(|| format!("remove {}", bundle.display()))?;
        Ok(t)
    }

    /// The command containerd 1.6 runs for a shim's `start` or `delete`: its flags, its
    /// environment, the bundle as the working directory, containerd's PATH.
    fn shim_command(&self, shim: &Path, id: &str, bundle: &Path, action: &str) -> Command {
        let sock = self.containerd.socket();
        let mut c = Command::new(shim);
        c.args(["-namespace", NAMESPACE, "-address"])
            .arg(&sock)
            .arg("-publish-binary")
            .arg(&self.publish_binary)
            .args(["-id", id, action])
            .current_dir(bundle)
            .env("PATH", self.containerd.path_env())
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", sock.display()))
            .env("GRPC_ADDRESS", &sock)
            .env("NAMESPACE", NAMESPACE)
            .env("GOMAXPROCS", "2")
            .stdin(Stdio::null());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_steps_are_read_from_the_shims_log_line() {
        let log = "time=\"2026-12-07T16:00:00.000000000Z\" level=info msg=\"container ph-1: created\"\n\
            time=\"2026-12-07T16:00:00.000000001Z\" level=info msg=\"container ph-1: create steps: rootfs 0.31 ms, bundle 1.50 ms, libcontainer 6.00 ms\"\n";
        let steps = create_steps_of(log, "ph-1");
        let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rootfs", "bundle", "libcontainer"]);
        assert_eq!(steps[1].1, Duration::from_micros(1500));
        assert!(create_steps_of("no such line", "ph-1").is_empty());
        assert!(create_steps_of(log, "ph-2").is_empty());
    }

    #[test]
    fn a_line_about_a_container_is_its_own_not_a_longer_ids() {
        let log = "msg=\"container ph-10: created, init pid 7, in 9.0 ms\"\n\
            msg=\"container ph-1: created, init pid 5, in 4.5 ms\"\n";
        assert_eq!(
            line_about(log, "ph-1", "created"),
            Some(", init pid 5, in 4.5 ms\"")
        );
        assert_eq!(line_about(log, "ph-2", "created"), None);
    }

    #[test]
    fn the_grace_period_is_read_from_the_shims_log_line() {
        let log = "time=\"2026-12-07T16:00:00.000000001Z\" level=info msg=\"container ph-1: create steps: rootfs 0.31 ms\"\n\
            time=\"2026-12-07T16:00:00.000000002Z\" level=info msg=\"container ph-1: cgroup migrations open 3.17 ms into Create\"\n";
        assert_eq!(
            migrations_open(log, "ph-1"),
            Some(Duration::from_micros(3170))
        );
        assert_eq!(migrations_open(log, "ph-2"), None);
        assert_eq!(
            migrations_open("container ph-1: create steps: rootfs 0.31 ms", "ph-1"),
            None
        );
    }
}
