//! containerd's `start` command: find or spawn the shim daemon of a container's group and
//! print its address.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim::{socket_address, Error};

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
/// Synchronous, with no runtime and no thread: containerd waits for it on every create. It
/// returns once the daemon listens (the daemon closes its stdout then).
pub fn start_command(
    namespace: &str,
    id: &str,
    containerd_address: &str,
    debug: bool,
) -> containerd_shim::Result<String> {
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
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("own path: {e}")))?;
    let mut daemon = Command::new(exe);
    daemon
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .args([
            "-namespace",
            namespace,
            "-id",
            id,
            "-address",
            containerd_address,
        ])
        .args(["-socket", &address]);
    if debug {
        daemon.arg("-debug");
    }
    if let Some(path) = config_path {
        daemon.arg(super::CONFIG_FLAG).arg(path);
    }
    // The daemon's OOM score is containerd's plus one, as the runc shim's. Set here, before
    // the spawn, so the daemon and its zygote (and so every exec) have it from their birth:
    // set on the daemon after the spawn, it raced the zygote's fork.
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(std::process::id()) {
        log::warn!("oom score: {e}");
    }
    let mut child = daemon
        .spawn()
        .map_err(|e| Error::Other(format!("spawn the shim daemon: {e}")))?;
    // The daemon closes its stdout once it listens; anything it printed before goes to stderr.
    let ready = match child.stdout.take() {
        Some(mut out) => std::io::copy(&mut out, &mut std::io::stderr())
            .map(drop)
            .map_err(|e| Error::Other(format!("wait for the shim daemon: {e}"))),
        None => Ok(()),
    };
    if let Err(e) = ready.and_then(|()| write_address(&cwd, &address)) {
        // containerd gives up on this shim: nothing of it may stay (its zygotes end with it).
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(socket_path);
        return Err(e);
    }
    Ok(address)
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
