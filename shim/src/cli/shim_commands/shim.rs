//! The shim's process-level commands: `start` (find or spawn the shim daemon of a container's
//! group and print its address), `delete` (clean up after a shim that died) and serving.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{
    socket_address, Config, DeleteResponse, Error, ExitSignal, Flags, Shim, StartOpts,
};
use libcontainer::container::Container as YoukiContainer;

use crate::runtime::bundle::Bundle;
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::driver::{self, StateRef};
use crate::service::events::EventSink;
use crate::service::options::{start_input, CONFIG_PATH_ENV};
use crate::service::{TaskApi, TaskService};

/// The shim's `containerd_shim::Shim` implementation.
pub struct NvidiaShim {
    exit: Arc<ExitSignal>,
    /// The task service's event queue, flushed before the shim exits.
    events: OnceLock<EventSink>,
    namespace: String,
    id: String,
    address: String,
    /// The `-socket` this daemon serves (`unix://...`).
    socket: String,
}

/// The socket file this daemon serves, as (path, device, inode), recorded once it is bound.
static SERVED_SOCKET: OnceLock<(PathBuf, u64, u64)> = OnceLock::new();

/// Records the socket `address` names as this daemon's, if it is bound, and makes it
/// reachable by root only (0600, as the runc shim's; containerd-shim binds it with the umask's
/// mode).
fn record_served_socket(address: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = PathBuf::from(address.trim_start_matches("unix://"));
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            log::warn!("shim socket {}: chmod 0600: {e}", path.display());
        }
        let _ = SERVED_SOCKET.set((path, m.dev(), m.ino()));
    }
}

/// Removes the socket this daemon served, once it has stopped serving. containerd may have
/// removed the bundle (and its `address` file, through which containerd-shim finds the socket)
/// by then, which left the socket behind; the `-socket` path recorded at start does not depend
/// on it. A socket a newer shim bound at the same path (another inode) is left alone.
pub fn remove_served_socket() {
    use std::os::unix::fs::MetadataExt;
    let Some((path, dev, ino)) = SERVED_SOCKET.get() else {
        return;
    };
    let ours = std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("remove shim socket {}: {e}", path.display());
        }
    }
}

impl std::fmt::Debug for NvidiaShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvidiaShim")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn bundle_dir() -> PathBuf {
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
        daemon.env(CONFIG_PATH_ENV, path);
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

/// The `delete` command: containerd runs it when a shim's connection closes, after the shim
/// exited or died. It kills what is left of container `id`, removes its state and cgroup,
/// unmounts its rootfs, removes the group's socket unless a live shim answers there, and
/// returns the reply containerd expects (exit status 137, the init pid if known).
///
/// It runs before any thread or runtime exists, so libcontainer runs here directly, without a
/// zygote; containerd waits for it on every container's delete, so it must be quick.
pub fn delete_command(
    namespace: &str,
    id: &str,
    address: &str,
) -> containerd_shim::Result<DeleteResponse> {
    let bundle = Bundle::new(bundle_dir());
    let state = StateRef {
        root: bundle.state_root(),
        id: id.to_owned(),
    };
    // No state: the shim deleted the container before it exited (the usual case).
    let mut pid = 0;
    if state.dir().exists() {
        let loaded = YoukiContainer::load(state.dir()).ok();
        pid = loaded
            .as_ref()
            .and_then(|c| c.pid())
            .map(|p| u32::try_from(p.as_raw()).unwrap_or_default())
            .unwrap_or_default();
        // The hierarchies libcontainer does not know of (see `cgroup`), known before its
        // state goes.
        let cgroup = loaded.as_ref().and_then(|c| {
            let config = c.spec().ok()?;
            Some(ContainerCgroup::new(id, config.cgroup_path, c.systemd()))
        });
        if let Err(e) = driver::delete_in_process(&state, true) {
            log::warn!("{e}");
        }
        if let Some(cgroup) = cgroup {
            cgroup.remove_hybrid();
        }
    }
    if let Err(e) = bundle.unmount_rootfs(id) {
        log::warn!("{e}");
    }
    // A shim killed outright leaves its socket; remove it unless a live shim answers there.
    let address = socket_address(address, namespace, &bundle.group(id));
    let path = address.trim_start_matches("unix://");
    if UnixStream::connect(path).is_err() {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("remove stale shim socket {path}: {e}");
            }
        }
    }
    Ok(DeleteResponse {
        pid,
        exit_status: 137,
        exited_at: MessageField::some(timestamp()?),
        ..Default::default()
    })
}

#[async_trait]
impl Shim for NvidiaShim {
    type T = TaskApi;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            events: OnceLock::new(),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // `main` runs `start` itself, before any runtime starts (see `start_command`); this is
        // the same command for a caller that goes through the trait.
        start_command(&opts.namespace, &opts.id, &opts.address, opts.debug)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // `main` runs `delete` itself, before any runtime starts (see `delete_command`); this
        // is the same cleanup for a caller that goes through the trait.
        delete_command(&self.namespace, &self.id, &self.address)
    }

    async fn wait(&mut self) {
        // containerd-shim calls this once the socket is bound and served.
        record_served_socket(&self.socket);
        self.exit.wait().await;
        if let Some(events) = self.events.get() {
            events.flush().await;
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config_path = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
        crate::io::logdriver::set_namespace(&self.namespace);
        // Events go out without the publisher's reflection (see `events`); only its address is used.
        let events = EventSink::new(&publisher.address, &self.namespace);
        let _ = self.events.set(events.clone());
        TaskApi(TaskService::new(events, Arc::clone(&self.exit), config_path).await)
    }
}
