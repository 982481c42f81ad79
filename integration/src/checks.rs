//! Shared steps of the end-to-end tests: a containerd with the busybox image, polling, task
//! status, the comparison of a case run through both runtimes, and the check that a container
//! left nothing behind.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::containerd::{Containerd, ContainerdBuilder, NAMESPACE};
use crate::ctr_run::CtrRun;
use crate::{can_run_containerd, leftovers};

/// A private containerd with the busybox image, or `None` (with the reason printed) when the
/// tests cannot run here.
pub fn setup() -> Option<Containerd> {
    setup_from(Containerd::builder())
}

/// [`setup`] of the containerd `builder` describes (its own namespaces, a tmpfs, ...).
pub fn setup_from(builder: ContainerdBuilder<'_>) -> Option<Containerd> {
    if !can_run_containerd() {
        return None;
    }
    let c = builder.start().expect("start containerd");
    c.import_busybox().expect("import busybox image");
    Some(c)
}

pub use crate::command::text;

pub use crate::task_api::ctx;

/// Starts `sleep 600` detached through `runtime` with `extra` `ctr run` flags; returns its id.
pub fn sleeper(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<String> {
    CtrRun::new("conf")
        .runtime(runtime)
        .detach()
        .flags(extra)
        .cmd(&["sleep", "600"])
        .start(c)
}

/// Runs `case` through each of `runtimes` (this shim's and the Go runc shim's runtime or
/// handler names, in the order given) and asserts that both saw the same; returns what they
/// saw. `what` names the case in the failure.
pub fn alike<T: PartialEq + std::fmt::Debug>(
    what: impl std::fmt::Display,
    runtimes: [&str; 2],
    mut case: impl FnMut(&str) -> Result<T>,
) -> Result<T> {
    let first = case(runtimes[0])?;
    let second = case(runtimes[1])?;
    eprintln!(
        "{what}: {}: {first:?}; {}: {second:?}",
        runtimes[0], runtimes[1]
    );
    assert_eq!(
        first, second,
        "{what}: {} and {} differ\n{}: {first:#?}\n{}: {second:#?}",
        runtimes[0], runtimes[1], runtimes[0], runtimes[1]
    );
    Ok(first)
}

/// Asserts that `output` holds each of `wanted`: a needle, and what its absence would mean.
/// The failure names the first one missing and shows `output`.
pub fn assert_holds(output: &str, wanted: &[(&str, &str)]) {
    for (needle, why) in wanted {
        assert!(
            output.contains(needle),
            "{why}: no {needle:?} in:\n{output}"
        );
    }
}

/// Asserts that a run failed (no exit code 0) and that its standard error holds each of
/// `needles`; returns that standard error for further checks. The failure shows it.
#[track_caller]
pub fn assert_failed(seen: crate::ctr_run::Seen, needles: &[&str]) -> String {
    let (code, _, err) = seen;
    assert_ne!(code, Some(0), "the run succeeded: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "no {needle:?} in the error: {err:.2000}"
        );
    }
    err
}

/// Polls `f` until it returns true or 15 s pass.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

/// The status `ctr task ls` shows for `id`.
pub fn task_status(c: &Containerd, id: &str) -> Option<String> {
    task_column(c, id, 2)
}

/// The host pid `ctr task ls` shows for `id`.
pub fn task_pid(c: &Containerd, id: &str) -> Option<i32> {
    task_column(c, id, 1)?.parse().ok()
}

fn task_column(c: &Containerd, id: &str, column: usize) -> Option<String> {
    let out = c.ctr(&["task", "ls"]).ok()?;
    text(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(column).map(str::to_owned))
}

/// Asserts that container `id` (shim group `group`) left nothing behind: no shim process, no
/// shim socket, no mount, no cgroup, no bundle or state dir.
pub fn assert_clean(c: &Containerd, id: &str, group: &str) {
    if let Err(left) = wait_clean(c, id, group, Duration::from_secs(10)) {
        panic!("container {id} left: {left}\n{}", c.log());
    }
}

/// Waits up to `limit` until container `id` (shim group `group`) has left nothing behind;
/// else says what is left.
pub fn wait_clean(c: &Containerd, id: &str, group: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let shims = leftovers::shim_pids(&c.socket());
        let socket = leftovers::shim_socket(&c.socket(), NAMESPACE, group);
        let mounts = leftovers::mounts_under(&c.bundle(id));
        let cgroups = leftovers::cgroups_of(NAMESPACE, id);
        let bundle = c.bundle(id).exists();
        if shims.is_empty()
            && !socket.exists()
            && mounts.is_empty()
            && cgroups.is_empty()
            && !bundle
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "shims {shims:?}, socket {socket:?} exists {}, mounts {mounts:?}, cgroups {cgroups:?}, bundle dir {bundle}",
                socket.exists(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills task `id`, waits for it to stop, removes task and container, and checks that
/// nothing is left (for a container that is its own shim group).
pub fn stop_and_remove(c: &Containerd, id: &str) -> Result<()> {
    stop_and_remove_in_group(c, id, id)
}

/// [`stop_and_remove`] for the last container of shim group `group`.
pub fn stop_and_remove_in_group(c: &Containerd, id: &str, group: &str) -> Result<()> {
    kill_and_remove(c, id)?;
    assert_clean(c, id, group);
    Ok(())
}

/// Kills task `id`, waits for it to stop, removes task and container (the shim may serve
/// others of its group still).
pub fn kill_and_remove(c: &Containerd, id: &str) -> Result<()> {
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    eventually("task to stop", || {
        task_status(c, id).as_deref() == Some("STOPPED")
    })?;
    c.ctr_ok(&["task", "rm", id])?;
    c.ctr_ok(&["container", "rm", id])?;
    Ok(())
}

/// Removes what a client could not finish of container `id`: its task (forced) and the
/// container (either may already be gone).
pub fn remove_leftover(c: &Containerd, id: &str) {
    let _ = c.ctr(&["task", "rm", "-f", id]);
    let _ = c.ctr(&["container", "rm", id]);
}

/// Removes stopped task `id` and its container, checking that containerd reports exit status
/// `code`, then that nothing is left.
pub fn remove_stopped(c: &Containerd, id: &str, code: i32) -> Result<()> {
    let rm = c.ctr(&["task", "rm", id])?;
    let err = text(&rm.stderr);
    if !rm.status.success() {
        bail!("ctr task rm {id}: {err}");
    }
    // ctr warns with the exit status of a task that did not exit 0.
    if code != 0 && !err.contains(&format!("exit code {code}")) {
        bail!("task {id}: expected exit code {code}, ctr said: {err}");
    }
    c.ctr_ok(&["container", "rm", id])?;
    assert_clean(c, id, id);
    Ok(())
}

/// A ttrpc client of the Task API of shim group `group`, as containerd uses it.
pub fn shim_client(c: &Containerd, group: &str) -> Result<crate::task_api::TaskApi> {
    let socket = leftovers::shim_socket(&c.socket(), NAMESPACE, group);
    Ok(crate::task_api::TaskApi::connect(&format!(
        "unix://{}",
        socket.display()
    ))?)
}

/// `ctr events`, read line by line in the background.
#[derive(Debug)]
pub struct EventStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EventStream {
    /// Subscribes to containerd's events.
    pub fn start(c: &Containerd) -> Result<Self> {
        let mut child = c
            .ctr_cmd(&["events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("ctr events stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let the subscription settle before the caller acts.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self { child, lines })
    }

    /// The first event line with `topic` that names `id`, within 15 s.
    pub fn wait_for(&self, topic: &str, id: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(topic) && l.contains(id) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("no {topic} event for {id} within 15 s"),
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes free in the filesystem of `path`.
pub fn free_bytes(path: &std::path::Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: an all-zero statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    anyhow::ensure!(rc == 0, "statvfs {}", path.display());
    Ok(st.f_bavail * st.f_frsize)
}
