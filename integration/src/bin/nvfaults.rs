//! Fault and load runs against a private containerd, each through this shim and through the Go
//! runc shim (`io.containerd.runc.v2`) in the same run, each ending with a count of what was
//! left behind (shim processes, shim sockets, mounts, cgroups, bundles, container processes).
//!
//! `nvfaults [--scale F] [--shim PATH] [--only NAME]` runs, scaled by F (1 = the issue's
//! figures):
//! - `load`: 200 `ctr run --rm` at 16 in flight;
//! - `cycles`: 1,000 run/rm cycles one after the other;
//! - `execs`: 1,000 `ctr task exec` in one container, 16 at a time, each checked for its output;
//! - `restart`: 10 containers running, containerd SIGKILLed and started again: each still
//!   runs, answers an exec, and is then stopped and removed;
//! - `helpers`: SIGKILL of each helper process of a shim (this shim's zygotes; the runc shim
//!   has none) with a container running: exec, kill and delete still work;
//! - `shim-kill`: SIGKILL of the shim with a container running: containerd reports the task
//!   gone and cleans up.
//!
//! Prints one line per run and runtime with its figures; exits non-zero if this shim failed a
//! request that the runc shim did not, or left anything. Run as root, with a release build of
//! the shim.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvidia_shim_integration::checks::{eventually, task_status, text};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE, RUNC, RUNTIME};
use nvidia_shim_integration::{leftovers, unique_id};

/// What one run of one runtime did.
#[derive(Debug, Default)]
struct Outcome {
    /// Requests made.
    requests: usize,
    /// Requests that failed, and the first failure.
    failed: usize,
    first_failure: Option<String>,
    /// What was left once the run had cleaned up as a user would.
    left: Vec<String>,
    elapsed: Duration,
}

impl Outcome {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(what);
    }

    /// One request through `ctr ARGS`, counted; a failure (or output other than `expect`,
    /// when given) is recorded as `what`'s.
    fn ctr(&mut self, c: &Containerd, args: &[&str], what: &str, expect: Option<&str>) {
        self.requests += 1;
        match c.ctr(args) {
            Ok(r) if r.status.success() && expect.is_none_or(|e| text(&r.stdout) == e) => {}
            Ok(r) if r.status.success() => {
                self.fail(format!("{what}: output {:?}", text(&r.stdout)))
            }
            Ok(r) => self.fail(format!("{what}: {}", text(&r.stderr))),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    /// Starts the sleeping container `id` a run needs; on failure, the outcome to return.
    fn start_sleeper(c: &Containerd, runtime: &str, id: &str) -> Result<Self, Self> {
        let mut o = Self::default();
        match sleeper(c, runtime, id) {
            Ok(()) => Ok(o),
            Err(e) => {
                o.fail(format!("{id}: {e}"));
                o.left = settle(c, &[id.to_owned()]);
                Err(o)
            }
        }
    }

    fn line(&self, run: &str, runtime: &str) -> String {
        format!(
            "{run:<10} {runtime:<24} {:>5} requests, {:>3} failed, left: {} ({:.1} s){}",
            self.requests,
            self.failed,
            if self.left.is_empty() {
                "nothing".to_owned()
            } else {
                self.left.join("; ")
            },
            self.elapsed.as_secs_f64(),
            self.first_failure
                .as_ref()
                .map(|f| format!("\n           first failure: {}", one_line(f)))
                .unwrap_or_default()
        )
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.len() > 240 {
        format!("{}...", &s[..s.floor_char_boundary(240)])
    } else {
        s
    }
}

/// Everything containers of `ids` (and shims of this containerd) left on the host.
fn leftovers_of(c: &Containerd, ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let socket = c.socket();
    let shims = leftovers::shim_pids(&socket).len()
        + leftovers::processes_of("containerd-shim-runc-v2", &socket.to_string_lossy()).len();
    if shims > 0 {
        left.push(format!("{shims} shim processes"));
    }
    let sockets = ids
        .iter()
        .filter(|id| leftovers::shim_socket(&socket, NAMESPACE, id).exists())
        .count();
    if sockets > 0 {
        left.push(format!("{sockets} shim sockets"));
    }
    let mounts = leftovers::mounts_under(&c.state_dir()).len();
    if mounts > 0 {
        left.push(format!("{mounts} mounts"));
    }
    let cgroups: usize = ids
        .iter()
        .map(|id| leftovers::cgroups_of(NAMESPACE, id).len())
        .sum();
    if cgroups > 0 {
        left.push(format!("{cgroups} cgroup dirs"));
    }
    let bundles = ids.iter().filter(|id| c.bundle(id).exists()).count();
    if bundles > 0 {
        left.push(format!("{bundles} bundles"));
    }
    let processes: usize = ids
        .iter()
        .map(|id| leftovers::processes_in_cgroup_named(id).len())
        .sum();
    if processes > 0 {
        left.push(format!("{processes} container processes"));
    }
    left
}

/// Waits (up to 20 s) for the host to be clean of `ids`; returns what stayed.
fn settle(c: &Containerd, ids: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers_of(c, ids);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes task and container `id` as a user would after a failure (errors ignored).
fn remove(c: &Containerd, id: &str) {
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let _ = eventually("the task to stop", || {
        task_status(c, id).is_none_or(|s| s == "STOPPED")
    });
    let _ = c.ctr(&["task", "rm", "-f", id]);
    let _ = c.ctr(&["container", "rm", id]);
}

/// `ctr run MODE --runtime RUNTIME busybox ID ARGS...`: Ok, or its error text.
fn ctr_run(
    c: &Containerd,
    mode: &str,
    runtime: &str,
    id: &str,
    args: &[&str],
) -> Result<(), String> {
    let mut all = vec!["run", mode, "--runtime", runtime, BUSYBOX_IMAGE, id];
    all.extend_from_slice(args);
    let out = c.ctr(&all).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr))
    }
}

/// `true` in container `id`, removed afterwards (`--rm`).
fn run_true(c: &Containerd, runtime: &str, id: &str) -> Result<(), String> {
    ctr_run(c, "--rm", runtime, id, &["true"])
}

/// A container `id` sleeping for a day, detached.
fn sleeper(c: &Containerd, runtime: &str, id: &str) -> Result<(), String> {
    ctr_run(c, "-d", runtime, id, &["sleep", "86400"])
}

/// `n` runs of `true`, `parallel` at a time.
fn load(c: &Containerd, runtime: &str, n: usize, parallel: usize) -> Outcome {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Outcome::default());
    let ids = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                if next.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
                let id = unique_id("load");
                let result = run_true(c, runtime, &id);
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                o.requests += 1;
                if let Err(e) = result {
                    o.fail(format!("{id}: {e}"));
                    drop(o);
                    remove(c, &id);
                }
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            });
        }
    });
    let mut o = out.into_inner().unwrap_or_else(|e| e.into_inner());
    o.left = settle(c, &ids.into_inner().unwrap_or_else(|e| e.into_inner()));
    o.elapsed = started.elapsed();
    o
}

/// `n` execs of `echo` in one container, `parallel` at a time; a success without its own line
/// of output counts as a failure.
fn execs(c: &Containerd, runtime: &str, n: usize, parallel: usize) -> Outcome {
    around_sleeper(c, runtime, "execs", |o, id| {
        let next = AtomicUsize::new(0);
        let out = Mutex::new(std::mem::take(o));
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let line = format!("exec-{i}");
                    let exec_id = format!("e{i}");
                    let args = ["task", "exec", "--exec-id", &exec_id, id, "echo", &line];
                    let mut mine = Outcome::default();
                    mine.ctr(c, &args, &exec_id, Some(&format!("{line}\n")));
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.requests += mine.requests;
                    if let Some(f) = mine.first_failure {
                        o.fail(f);
                    }
                });
            }
        });
        *o = out.into_inner().unwrap_or_else(|e| e.into_inner());
        remove(c, id);
    })
}

/// `n` containers running, containerd SIGKILLed and started again: each must still run and
/// answer an exec; then all are removed.
fn restart(c: &mut Containerd, runtime: &str, n: usize) -> Outcome {
    let started = Instant::now();
    let mut o = Outcome::default();
    let ids: Vec<String> = (0..n).map(|_| unique_id("restart")).collect();
    for id in &ids {
        o.requests += 1;
        if let Err(e) = sleeper(c, runtime, id) {
            o.fail(format!("{id}: {e}"));
        }
    }
    if let Some(pid) = c.pid() {
        // SAFETY: kill(2) on containerd's pid, which this process started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    if let Err(e) = c.restart() {
        o.fail(format!("containerd restart: {e}"));
    }
    for id in &ids {
        o.requests += 1;
        let status = task_status(c, id);
        if status.as_deref() != Some("RUNNING") {
            o.fail(format!("{id}: after the restart the task is {status:?}"));
            continue;
        }
        o.ctr(
            c,
            &["task", "exec", "--exec-id", "after", id, "echo", "alive"],
            &format!("{id}: exec after the restart"),
            Some("alive\n"),
        );
    }
    for id in &ids {
        remove(c, id);
    }
    o.left = settle(c, &ids);
    o.elapsed = started.elapsed();
    o
}

/// The daemon of `runtime`'s shim serving containerd `c` (the runc shim's oldest process).
fn shim_daemon(c: &Containerd, runtime: &str) -> Option<i32> {
    let socket = c.socket();
    if runtime == RUNTIME {
        leftovers::shim_daemon_pid(&socket)
    } else {
        leftovers::processes_of("containerd-shim-runc-v2", &socket.to_string_lossy())
            .into_iter()
            .min()
    }
}

/// Kills each helper process of a container's shim in turn (processes of the shim that are
/// its children); after each, an exec must work; then kill and delete.
fn helpers(c: &Containerd, runtime: &str) -> Outcome {
    around_sleeper(c, runtime, "helpers", |o, id| {
        let socket = c.socket();
        let shim_daemon = shim_daemon(c, runtime);
        let helpers: Vec<i32> = leftovers::shim_pids(&socket)
            .into_iter()
            .filter(|&p| shim_daemon.is_some() && leftovers::parent_pid(p) == shim_daemon)
            .collect();
        for (i, helper) in helpers.iter().enumerate() {
            // SAFETY: kill(2) on a helper process of the shim under test.
            unsafe { libc::kill(*helper, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(100));
            let exec_id = format!("h{i}");
            o.ctr(
                c,
                &["task", "exec", "--exec-id", &exec_id, id, "echo", "ok"],
                &format!("exec after killing helper {helper}"),
                None,
            );
        }
        o.ctr(c, &["task", "kill", "-s", "SIGKILL", id], "kill", None);
        let _ = eventually("the task to stop", || {
            task_status(c, id).as_deref() == Some("STOPPED")
        });
        o.ctr(c, &["task", "rm", id], "task rm", None);
        let _ = c.ctr(&["container", "rm", id]);
        o.first_failure = o
            .first_failure
            .take()
            .map(|f| format!("{f} (helpers killed: {})", helpers.len()));
    })
}

/// SIGKILL of the shim of a running container: containerd must see the task end and clean up.
fn shim_kill(c: &Containerd, runtime: &str) -> Outcome {
    around_sleeper(c, runtime, "shimkill", |o, id| {
        if let Some(pid) = shim_daemon(c, runtime) {
            // SAFETY: kill(2) on the shim under test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        o.requests += 1;
        if eventually("the task to be gone or stopped", || {
            task_status(c, id).is_none_or(|s| s == "STOPPED" || s == "UNKNOWN")
        })
        .is_err()
        {
            o.fail(format!(
                "{id}: still {:?} after its shim died",
                task_status(c, id)
            ));
        }
        remove(c, id);
    })
}

/// A run around one sleeping container through `runtime` (named from `name`): `f` makes the
/// run's requests and cleans up as a user would; then what is left is settled and the time
/// taken recorded.
fn around_sleeper(
    c: &Containerd,
    runtime: &str,
    name: &str,
    f: impl FnOnce(&mut Outcome, &str),
) -> Outcome {
    let started = Instant::now();
    let id = unique_id(name);
    let mut o = match Outcome::start_sleeper(c, runtime, &id) {
        Ok(o) => o,
        Err(o) => return o,
    };
    f(&mut o, &id);
    o.left = settle(c, &[id]);
    o.elapsed = started.elapsed();
    o
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shim = root.join("target/release/containerd-shim-nvidia-v2");
    let mut scale = 1.0f64;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().context("--scale F")?.parse()?,
            "--shim" => shim = PathBuf::from(args.next().context("--shim PATH")?),
            "--only" => only = Some(args.next().context("--only NAME")?),
            other => bail!(
                "unknown argument {other}; usage: nvfaults [--scale F] [--shim PATH] [--only NAME]"
            ),
        }
    }
    if !shim.exists() {
        bail!(
            "{} missing: cargo build --release -p containerd-shim-nvidia-v2",
            shim.display()
        );
    }
    let n = |full: usize| ((full as f64 * scale).round() as usize).max(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut c = Containerd::builder()
        .shim(&shim)
        .log_level("info")
        .start()?;
    c.import_busybox()?;
    let mut bad = Vec::new();
    // Each run through this shim, then through the runc shim, on the same containerd.
    let mut compare =
        |c: &mut Containerd, run: &str, f: &dyn Fn(&mut Containerd, &str) -> Outcome| {
            if !wanted(run) {
                return;
            }
            let ours = f(c, RUNTIME);
            let runc = f(c, RUNC);
            println!("{}", ours.line(run, RUNTIME));
            println!("{}", runc.line(run, RUNC));
            if !ours.left.is_empty() || ours.failed > runc.failed {
                bad.push(run.to_owned());
            }
        };
    compare(&mut c, "load", &|c, rt| load(c, rt, n(200), 16));
    compare(&mut c, "cycles", &|c, rt| load(c, rt, n(1000), 1));
    compare(&mut c, "execs", &|c, rt| execs(c, rt, n(1000), 16));
    compare(&mut c, "restart", &|c, rt| restart(c, rt, n(10)));
    compare(&mut c, "helpers", &|c, rt| helpers(c, rt));
    compare(&mut c, "shim-kill", &|c, rt| shim_kill(c, rt));
    if !bad.is_empty() {
        bail!("this shim failed more requests than runc's, or left something, in: {bad:?}");
    }
    Ok(())
}
