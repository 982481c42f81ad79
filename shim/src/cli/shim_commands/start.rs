//! containerd's `start` command: find or spawn the shim daemon of a container's group and
//! print its address.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use containerd_shim::{socket_address, Error, Flags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{dup2, fork, pipe2, ForkResult};

use crate::runtime::bundle::Bundle;
use crate::service::options::start_input;

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
    let containerd_address = start.address.as_str();
    // containerd writes the runtime options (an Any), or from 2.3 its BootstrapParams, on our
    // stdin; read once and bounded.
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
    let input =
        start_input(id, namespace, &raw).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let config_path = input.config_path;

    let cwd = bundle_dir();
    let group = Bundle::new(&cwd).group(id);
    let address = socket_address(containerd_address, namespace, &group);
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
        address: containerd_address.to_owned(),
        socket: address.clone(),
        debug: start.debug,
        ..Flags::default()
    };
    // The daemon's OOM score is containerd's plus one, as the runc shim's. Set here, before
    // the fork, so the daemon and its zygote (and so every exec) have it from their birth.
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(std::process::id()) {
        log::warn!("oom score: {e}");
    }
    let (ready, ready_in_daemon) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Other(format!("pipe for the shim daemon: {e}")))?;
    // SAFETY: `start` has a single thread (it made none; the attach warm-up is a process), so
    // the child may go on running any code: it becomes the daemon and never returns here.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(ready);
            let code = daemon_main(&daemon, config_path, ready_in_daemon);
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(Error::Other(format!("fork the shim daemon: {e}"))),
    };
    drop(ready_in_daemon);
    // The daemon closes its end once it listens; anything it wrote before goes to stderr.
    let ready = std::io::copy(&mut File::from(ready), &mut std::io::stderr())
        .map(drop)
        .map_err(|e| Error::Other(format!("wait for the shim daemon: {e}")));
    if let Err(e) = ready.and_then(|()| write_address(&cwd, &address)) {
        // containerd gives up on this shim: nothing of it may stay (its zygotes end with it).
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        let _ = std::fs::remove_file(socket_path);
        return Err(e);
    }
    Ok(address)
}

/// The forked daemon: standard input and error on `/dev/null` and standard output on the
/// readiness pipe (what the executed daemon had), containerd's daemon flags as its command
/// line, then the daemon itself.
fn daemon_main(flags: &Flags, config_path: Option<PathBuf>, ready: OwnedFd) -> ExitCode {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = dup2(null.as_raw_fd(), libc::STDIN_FILENO);
        let _ = dup2(null.as_raw_fd(), libc::STDERR_FILENO);
    }
    let _ = dup2(ready.as_raw_fd(), libc::STDOUT_FILENO);
    drop(ready);
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
