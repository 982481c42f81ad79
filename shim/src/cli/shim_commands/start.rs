//! containerd's `start` command: find or spawn the shim daemon of a container's group and
//! print its address.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use containerd_shim::{socket_address, Error, Flags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, ForkResult, Pid};

use crate::runtime::bundle::Bundle;
use crate::service::options::{start_input, StartInput};

/// The bundle: containerd runs the shim's commands in it.
pub fn bundle_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// The most bytes `start` reads from its stdin (the options are a few hundred bytes; a 2.3
/// bootstrap with a pod's sandbox config a few kB).
const MAX_START_INPUT: u64 = 1 << 20;

/// The `start` command: containerd runs it for every new container and reads the shim's
/// ttrpc address from its stdout. When the container's group (see `Bundle::group`) already
/// has a live shim, the container joins it; otherwise a shim daemon is spawned for the group.
/// The runtime options on stdin may name the shim's config file, which the daemon is given.
///
/// Synchronous, with no runtime and no thread: containerd waits for it on every create. The
/// daemon is this process forked, not the binary executed again (a second exec and dynamic
/// link cost about 0.7 ms of every container's start); it shows containerd's daemon flags as
/// its command line. `start` returns once the daemon listens (it closes its end of the
/// readiness pipe then).
pub fn start_command(start: &Flags) -> containerd_shim::Result<String> {
    let (namespace, id) = (start.namespace.as_str(), start.id.as_str());
    let input = read_input(id, namespace)?;
    let cwd = bundle_dir();
    let group = Bundle::new(&cwd).group(id);
    let address = socket_address(&start.address, namespace, &group);
    // containerd 2.3 may name another directory for the socket; the name stays the same.
    let address = match &input.socket_dir {
        Some(dir) => format!(
            "unix://{}/{}",
            dir.display(),
            address.rsplit('/').next().unwrap_or_default()
        ),
        None => address,
    };
    let socket_path = address.trim_start_matches("unix://");
    if group != id && UnixStream::connect(socket_path).is_ok() {
        // The group's shim already runs: this container joins it.
        write_address(&cwd, &address)?;
        return Ok(address);
    }
    let daemon = Flags {
        namespace: namespace.to_owned(),
        id: id.to_owned(),
        address: start.address.clone(),
        socket: address.clone(),
        debug: start.debug,
        ..Flags::default()
    };
    // The daemon's OOM score is containerd's plus one, as the runc shim's. Set here, before
    // the fork, so the daemon and its zygote (and so every exec) have it from their birth.
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(std::process::id()) {
        log::warn!("oom score: {e}");
    }
    let (child, ready) = fork_daemon(&daemon, input.config_path)?;
    // The daemon closes its end once it listens (or once it found the group's shim serving);
    // anything it wrote before goes to stderr.
    let ready = std::io::copy(&mut File::from(ready), &mut std::io::stderr())
        .map_err(|e| Error::Other(format!("wait for the shim daemon: {e}")))
        .and_then(|_| match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            // It serves.
            Ok(WaitStatus::StillAlive) => Ok(true),
            // Another shim of the group serves the socket: it is not this daemon's.
            Ok(WaitStatus::Exited(_, 0)) => Ok(false),
            other => Err(Error::Other(format!(
                "container {id}: the shim daemon ended before it served ({other:?})"
            ))),
        });
    if let Err(e) = ready.and_then(|bound| {
        write_address(&cwd, &address).inspect_err(|_| {
            if bound {
                let _ = std::fs::remove_file(socket_path);
            }
        })
    }) {
        // containerd gives up on this shim: nothing of it may stay (its zygotes end with it).
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    Ok(address)
}

/// The runtime options (an Any), or from containerd 2.3 its BootstrapParams, that containerd
/// writes on `start`'s stdin: read once, bounded, decoded.
fn read_input(id: &str, namespace: &str) -> containerd_shim::Result<StartInput> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_START_INPUT + 1)
        .read_to_end(&mut raw)
        .map_err(|e| Error::Other(format!("read runtime options from stdin: {e}")))?;
    if raw.len() as u64 > MAX_START_INPUT {
        return Err(Error::InvalidArgument(format!(
            "container {id}: more than {MAX_START_INPUT} bytes of runtime options on stdin"
        )));
    }
    start_input(id, namespace, &raw).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Forks the daemon; its pid and the read end of its readiness pipe. `/dev/null` is opened
/// first, so that a child that could not let go of containerd's pipes never exists.
fn fork_daemon(
    daemon: &Flags,
    config_path: Option<PathBuf>,
) -> containerd_shim::Result<(Pid, OwnedFd)> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::Other(format!("open /dev/null for the shim daemon: {e}")))?;
    let (ready, ready_in_daemon) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Other(format!("pipe for the shim daemon: {e}")))?;
    // SAFETY: `start` has a single thread (it made none; the attach warm-up is a process), so
    // the child may go on running any code: it becomes the daemon and never returns here.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(ready);
            let code = daemon_main(daemon, config_path, null, ready_in_daemon);
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        Ok(ForkResult::Parent { child }) => Ok((child, ready)),
        Err(e) => Err(Error::Other(format!("fork the shim daemon: {e}"))),
    }
}

/// The forked daemon: standard input and error on `null` and standard output on the
/// readiness pipe (what the executed daemon had), no signal blocked, containerd's daemon
/// flags as its command line, then the daemon itself. A daemon that cannot let go of
/// containerd's pipes (which containerd reads to their end) ends at once.
fn daemon_main(
    flags: &Flags,
    config_path: Option<PathBuf>,
    null: File,
    ready: OwnedFd,
) -> ExitCode {
    let redirected = [
        (null.as_raw_fd(), libc::STDIN_FILENO),
        (ready.as_raw_fd(), libc::STDOUT_FILENO),
        (null.as_raw_fd(), libc::STDERR_FILENO),
    ]
    .into_iter()
    .all(|(fd, target)| dup2(fd, target).is_ok());
    if !redirected {
        // SAFETY: leaves at once, closing every descriptor, without running anything else.
        unsafe { libc::_exit(1) }
    }
    drop((null, ready));
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    crate::proc_title::set(&daemon_args(flags));
    super::serve::run(flags, config_path)
}

/// The command line containerd gives a shim daemon: `-namespace NS -id ID -address ADDR`.
fn daemon_args(flags: &Flags) -> Vec<&str> {
    let mut args = vec!["-namespace", &flags.namespace, "-id", &flags.id];
    args.extend(["-address", flags.address.as_str()]);
    if flags.debug {
        args.push("-debug");
    }
    args
}

/// Writes the bundle's `address` file (through a temporary file and a rename, as
/// containerd-shim does), which containerd reads to reconnect after a restart.
fn write_address(bundle: &Path, address: &str) -> containerd_shim::Result<()> {
    let tmp = bundle.join(".address");
    let done = bundle.join("address");
    std::fs::write(&tmp, address)
        .and_then(|()| std::fs::rename(&tmp, &done))
        .map_err(|e| Error::Other(format!("write {}: {e}", done.display())))
}
