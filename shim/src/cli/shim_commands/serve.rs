//! The shim daemon `start` spawns: it loads the configuration once, opens the shim log and
//! forks the zygote while it is still single-threaded, binds its socket, then serves the task
//! service on a current-thread tokio runtime, reaping its children (container processes,
//! zygote workers, loggers) and routing their exits, until the service tells it to stop.
//!
//! Everything the service needs is made here and passed down: the configuration, the zygote,
//! the exit router, the runtime, the event sender; nothing is a process-wide global.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::{ExitSignal, Flags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::RUNTIME_ID;
use crate::gpu::GpuInjector;
use crate::runtime::causes::Causes;
use crate::runtime::exit::ExitRouter;
use crate::runtime::libcontainer::Libcontainer;
use crate::runtime::zygote::Zygote;
use crate::service::edge::off_thread;
use crate::service::events::EventSink;
use crate::service::{exit_when_unused, TaskApi, TaskService};
use crate::task::config::StartConfig;
use crate::task::Tasks;
use crate::working_set::IdleTrim;

/// The environment variable containerd gives a shim its ttrpc address in.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// How long, at most, a blocking task left at the end may keep the shim.
const SHUTDOWN_LIMIT: Duration = Duration::from_millis(100);

/// Runs the daemon with containerd's `flags` and the configuration file `start` was given.
pub fn run(flags: &Flags, config_path: Option<PathBuf>) -> ExitCode {
    crate::working_set::one_heap();
    let config = StartConfig::load(config_path);
    let causes = Causes::default();
    // Before the zygote forks, so libcontainer's logs from the zygote reach containerd too.
    let log = open_log(flags, &config, &causes);
    let zygote = Zygote::fork(log, &causes);
    let listener = match listen(&flags.socket) {
        Ok(Some(listener)) => listener,
        Ok(None) => {
            // Another shim serves this socket already: it is this container's.
            signal_server_started();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = ServedSocket::record(&flags.socket);
    // The daemon runs in the bundle of the container it was started for.
    let bundle = File::open(".").ok();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(crate::working_set::BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served_result = runtime.block_on(serve(flags, config, zygote, listener, bundle));
    if let Some(served) = served {
        served.remove();
    }
    // A blocking task that cannot finish (a FIFO open nobody answers) must not keep the shim.
    runtime.shutdown_timeout(SHUTDOWN_LIMIT);
    match served_result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the shim log at the configuration's level (`RUST_LOG` wins, `-debug` raises it);
/// returns a copy of its descriptor for a zygote started afresh later.
fn open_log(flags: &Flags, config: &StartConfig, causes: &Causes) -> Option<OwnedFd> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let level = crate::logging::level(config.log_level(), rust_log.as_deref(), flags.debug);
    match crate::logging::open_fifo() {
        Ok(fifo) => {
            let copy = fifo.try_clone().ok().map(OwnedFd::from);
            let causes = causes.clone();
            crate::logging::init_on(
                fifo,
                level,
                Some(Arc::new(move |message: &str| causes.record(message))),
            );
            copy
        }
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot open the shim log: {e}");
            None
        }
    }
}

/// Binds the daemon's socket (`unix://PATH`). `None` when a live shim answers there already
/// (two `start`s of one group raced): the bundle's `address` file is then pointed at it.
fn listen(socket: &str) -> Result<Option<UnixListener>, String> {
    if socket.is_empty() {
        return Err("Shim socket cannot be empty".to_owned());
    }
    let path = Path::new(socket.trim_start_matches("unix://"));
    let bind = || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        UnixListener::bind(path)
    };
    match bind() {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            for _ in 0..200 {
                if UnixStream::connect(path).is_ok() {
                    std::fs::write("address", socket)
                        .map_err(|e| format!("write the address file: {e}"))?;
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Nobody answers: a socket a dead shim left.
            let _ = std::fs::remove_file(path);
            bind()
                .map(Some)
                .map_err(|e| format!("failed to start listener {socket}: {e}"))
        }
        Err(e) => Err(format!("failed to start listener {socket}: {e}")),
    }
}

/// Tells `start`, which reads the daemon's stdout to its end, that the daemon serves: stdout
/// becomes stderr's copy, closing the pipe.
fn signal_server_started() {
    // SAFETY: dup2 on the process's own standard descriptors; no memory is involved.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        log::warn!(
            "closing stdout for start: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The socket file this daemon serves, as (path, device, inode), recorded once it is bound.
struct ServedSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl ServedSocket {
    /// Records the socket `address` names as this daemon's and makes it reachable by root only
    /// (0600, as the runc shim's; a bound socket has the umask's mode).
    fn record(address: &str) -> Option<Self> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = PathBuf::from(address.trim_start_matches("unix://"));
        let m = std::fs::symlink_metadata(&path).ok()?;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            log::warn!("shim socket {}: chmod 0600: {e}", path.display());
        }
        Some(Self {
            path,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Removes the socket once the daemon has stopped serving. containerd may have removed
    /// the bundle (and its `address` file) by then; the path recorded at the start does not
    /// depend on it. A socket a newer shim bound at the same path (another inode) is left.
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("remove shim socket {}: {e}", self.path.display());
            }
        }
    }
}

/// The signals the daemon handles: SIGCHLD (reaping), and SIGTERM, SIGINT and SIGPIPE, which
/// only get logged: containerd stops a shim through the task API's `Shutdown`.
struct Signals {
    child: Signal,
    term: Signal,
    int: Signal,
    pipe: Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        Ok(Self {
            child: signal(SignalKind::child())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            pipe: signal(SignalKind::pipe())?,
        })
    }

    /// Reaps every exited child at each SIGCHLD and hands its exit to `exits`, until the
    /// process ends.
    async fn reap(mut self, exits: Arc<ExitRouter>) {
        loop {
            tokio::select! {
                _ = self.child.recv() => reap_exited(&exits),
                _ = self.term.recv() => log::debug!("received SIGTERM"),
                _ = self.int.recv() => log::debug!("received SIGINT"),
                _ = self.pipe.recv() => {}
            }
        }
    }
}

/// Reaps every child that has exited, without waiting; its exit status, or 128 + the signal
/// that killed it, goes to `exits`.
fn reap_exited(exits: &ExitRouter) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.on_exit(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                exits.on_exit(pid.as_raw(), 128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) => {}
            Err(e) => {
                log::warn!("reaping children: {e}");
                return;
            }
        }
    }
}

/// Makes the daemon the reaper of its orphaned descendants (containers' processes whose
/// parent, a zygote worker, is gone).
fn set_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER and an integer argument; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Serves the task service on `listener` until it asks the shim to stop.
async fn serve(
    flags: &Flags,
    config: StartConfig,
    zygote: Arc<Zygote>,
    listener: UnixListener,
    bundle: Option<File>,
) -> Result<(), String> {
    let signals = Signals::listen().map_err(|e| format!("signal setup failed: {e}"))?;
    set_subreaper().map_err(|e| format!("set the child subreaper: {e}"))?;
    let ttrpc_address =
        std::env::var(TTRPC_ADDRESS).map_err(|e| format!("{TTRPC_ADDRESS}: {e}"))?;
    let exits = Arc::new(ExitRouter::default());
    let events = EventSink::new(&ttrpc_address, &flags.namespace);
    let runtime = Libcontainer::new(
        Arc::clone(&zygote),
        Arc::clone(&exits),
        Arc::new(GpuInjector::default()),
        &flags.namespace,
    );
    let shutdown = Arc::new(ExitSignal::default());
    let service = TaskService::new(
        Arc::new(Tasks::new(runtime, config)),
        Arc::new(events.clone()),
        Arc::clone(&shutdown),
        IdleTrim::spawn(move || release_zygote_pages(Arc::clone(&zygote))),
    );
    exit_when_unused(&service, bundle);
    let listener =
        Listener::try_from(listener).map_err(|e| format!("creating ttrpc listener: {e}"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_task(Arc::new(TaskApi(service))));
    server.start().await.map_err(|e| e.to_string())?;
    signal_server_started();
    log::info!("Shim successfully started, waiting for exit signal...");
    tokio::spawn(signals.reap(exits));
    shutdown.wait().await;
    // The last events (TaskExit, TaskDelete) reach containerd instead of dying with the shim.
    events.flush().await;
    log::info!("Shutting down shim instance");
    server.shutdown().await.unwrap_or_default();
    Ok(())
}

/// What the zygote gives back once the shim is quiet: its code pages.
async fn release_zygote_pages(zygote: Arc<Zygote>) {
    match off_thread(move || zygote.release_code_pages()).await {
        Ok(Ok(bytes)) => log::trace!("quiet: the zygote released {bytes} bytes of code mappings"),
        Ok(Err(e)) => log::debug!("quiet: the zygote released nothing: {e}"),
        Err(e) => log::debug!("quiet: the zygote's release: {e}"),
    }
}
