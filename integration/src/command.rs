//! Running the programs the tests drive (`ctr`, `docker`, `podman`, the shim's operator
//! commands): output collected, a time limit, and failures that say what ran and what it
//! printed.

use std::fmt::Display;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wait_timeout::ChildExt;

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` with no stdin, collecting its output; kills it past `limit`. An error names
/// `what`.
pub fn output_within(cmd: &mut Command, limit: Duration, what: impl Display) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    wait_output(&mut child, limit).with_context(|| what.to_string())
}

/// `out`'s stdout, trimmed, when it exited 0; else an error naming `what` with its exit code
/// and output.
pub fn stdout_ok(what: impl Display, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} exited {:?}: {}{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(text(&out.stdout).trim().to_owned())
}

/// The first line of what a command that failed said (its stderr), or `ok` when it succeeded:
/// an outcome to record beside another runtime's.
pub fn answer(out: &Output, ok: &str) -> String {
    if out.status.success() {
        return ok.to_owned();
    }
    text(&out.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The command-line client of a private container engine a test drives (`docker` against
/// its dockerd, `podman` with its storage): its commands, run with a 120 s limit.
pub trait Cli {
    /// The client program, for errors.
    const NAME: &'static str;

    /// The engine's temp dir, holding everything of it.
    fn dir(&self) -> &Path;

    /// The client command with `args`, against this engine.
    fn command(&self, args: &[&str]) -> Command;

    /// Runs the client with `args`, no stdin and a 120 s limit.
    fn cli(&self, args: &[&str]) -> Result<Output> {
        output_within(
            &mut self.command(args),
            Duration::from_secs(120),
            format_args!("{} {args:?}", Self::NAME),
        )
    }

    /// [`Cli::cli`], failing unless it exits 0; returns its stdout, trimmed.
    fn cli_ok(&self, args: &[&str]) -> Result<String> {
        stdout_ok(format_args!("{} {args:?}", Self::NAME), &self.cli(args)?)
    }

    /// `image` written as an OCI image layout archive naming it `name`, in a fresh file of
    /// [`Cli::dir`], for the engine to load.
    fn archive(&self, image: &crate::image::ImageSpec, name: &str) -> Result<PathBuf> {
        let archive = self
            .dir()
            .join(format!("{}.tar", crate::unique_id("image")));
        image.write_archive(name, &archive)
    }
}

/// Flags naming paths under `dir`: `[flag, dir/sub]` for each `(flag, sub)` of `flags`, as
/// arguments of a daemon or client whose state lives under a test's temp dir.
pub fn dir_flags(dir: &Path, flags: &[(&str, &str)]) -> Vec<std::ffi::OsString> {
    flags
        .iter()
        .flat_map(|(flag, sub)| [flag.into(), dir.join(sub).into_os_string()])
        .collect()
}

/// The system's own program directories, without `/usr/local`: where an operator's installs
/// (or what another run of these tests linked there) would change what `configure docker`
/// finds on its PATH and does.
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the shim binary under test with `args` (an operator command), killed past 20 s: a read
/// that blocks on a FIFO or never ends on `/dev/zero` fails the test instead of hanging it.
pub fn shim(args: &[&str]) -> Result<Output> {
    output_within(
        Command::new(crate::shim_binary()).args(args),
        Duration::from_secs(20),
        format_args!("containerd-shim-nvidia-v2 {args:?}"),
    )
}

/// [`shim`] with `path` as its `PATH`.
pub fn shim_in(path: &str, args: &[&str]) -> Result<Output> {
    output_within(
        Command::new(crate::shim_binary())
            .args(args)
            .env("PATH", path),
        Duration::from_secs(20),
        format_args!("containerd-shim-nvidia-v2 {args:?}"),
    )
}

/// Waits for `child` with a limit, collecting its output; kills it past the limit.
pub fn wait_output(child: &mut Child, limit: Duration) -> Result<Output> {
    let reader = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut b);
            }
            b
        })
    };
    let out_t = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err_t = reader(child.stderr.take().map(|s| Box::new(s) as _));
    // The wait blocks until the exit (a polling loop would round every duration up to its
    // period, which `nvbench` measures).
    let Some(status) = child.wait_timeout(limit)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("timed out after {limit:?}");
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Stops our child `child`: SIGTERM, then SIGKILL once `grace` has passed.
pub fn terminate(child: &mut Child, grace: Duration) {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
