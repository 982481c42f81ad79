//! libcontainer operations: create, exec and start inside a zygote worker; kill, pause, resume
//! and delete in the shim itself.
//!
//! The zygotes (see `zygotes`) are single-threaded processes forked at the top of `main`,
//! before tokio starts any thread, so libcontainer's `clone` and its process-global `chdir`
//! (create, exec, and start's notify socket) never meet another thread's locks (runwasi #357,
//! youki #2425). Every function that crosses into one is a plain `fn` over serde types; errors
//! come back as an [`OpError`], typed by what failed, each libcontainer error with its whole
//! chain. Kill, pause, resume and delete neither fork nor
//! change directory, so the shim runs them itself: stopping and removing a container never
//! depends on a helper process. Calls block, so the async service reaches them all through
//! [`Driver`], which runs them on tokio's blocking pool.
//!
//! Containers are created `as_sibling`: the init process becomes a child of the shim (the
//! zygote's parent), which reaps it and reports its exit.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};
use zygote::WireFd;

use crate::gpu::proc_mount::{OverlayArgs, Prepared};
use crate::runtime::executor::ShimExecutor;
use crate::runtime::zygotes::ZygoteError;

use crate::error::{chain_to_string, Result, ShimError};

/// Where libcontainer keeps a container's state: `<root>/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRef {
    /// libcontainer's root directory.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
}

impl StateRef {
    /// The container's own state directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }
}

/// A new process's stdio: three fds, or a terminal whose master libcontainer sends to a
/// console socket.
#[derive(Serialize, Deserialize)]
pub enum WireIo {
    /// stdin, stdout, stderr.
    Fds([WireFd<OwnedFd>; 3]),
    /// The console socket's path.
    Console(PathBuf),
}

fn with_io(builder: ContainerBuilder, io: WireIo) -> ContainerBuilder {
    match io {
        WireIo::Fds([stdin, stdout, stderr]) => builder
            .with_stdin(stdin.into_inner())
            .with_stdout(stdout.into_inner())
            .with_stderr(stderr.into_inner()),
        WireIo::Console(path) => builder.with_console_socket(Some(path)),
    }
}

/// What the zygote needs to create a container.
#[derive(Serialize, Deserialize)]
pub struct CreateArgs {
    /// Where the state goes.
    pub state: StateRef,
    /// The OCI bundle (holding `config.json` and `rootfs`).
    pub bundle: PathBuf,
    /// Use the systemd cgroup driver.
    pub systemd: bool,
    /// The init process's stdio.
    pub io: WireIo,
    /// What to apply in the container's mount namespace once it is created (mount flags and
    /// propagation libcontainer leaves out, the `/proc/driver/nvidia` overlay).
    pub after: OverlayArgs,
}

/// What the zygote needs to start an extra process in a running container.
#[derive(Serialize, Deserialize)]
pub struct ExecArgs {
    /// The container.
    pub state: StateRef,
    /// A file holding the OCI `Process` JSON of the new process.
    pub process: PathBuf,
    /// Its stdio.
    pub io: WireIo,
    /// What to apply before its program runs (the container's seccomp profile).
    pub executor: ShimExecutor,
    /// The container's cgroups in the hierarchies libcontainer does not manage (`name=systemd`
    /// and the unified one of a hybrid host): the worker joins them first, so the process is
    /// born there.
    pub hybrid_cgroups: Vec<PathBuf>,
}

/// What a successful create returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// Host pid of the container's init process, parked until start.
    pub pid: i32,
    /// The cgroup path libcontainer derived from the spec.
    pub cgroup_path: PathBuf,
    /// Whether, once the container has stopped, libcontainer's delete would do nothing but
    /// remove its cgroup and its state directory: cgroupfs driver, no poststop hooks, no Intel
    /// RDT group. The shim then does that itself (see `task::lifecycle`).
    pub plain_teardown: bool,
    /// How many overlay mounts had a target in the container.
    pub overlay_mounts: usize,
}

/// Why a libcontainer operation failed, as it crosses the zygote's channel (serialised, so
/// libcontainer's error chain travels as its text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// libcontainer refused or failed the operation.
    #[error("{message}{}", cause.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Libcontainer {
        /// Its error chain.
        message: String,
        /// What the container's init process logged when it failed (see `causes`), when that
        /// adds something.
        cause: Option<String>,
    },
    /// The container's libcontainer state cannot be loaded.
    #[error("container state: {0}")]
    State(String),
    /// libcontainer created a container without an init pid.
    #[error("libcontainer returned no init pid")]
    NoInitPid,
    /// A signal number libcontainer does not know.
    #[error("signal {signal}: {message}")]
    Signal {
        /// The number.
        signal: i32,
        /// libcontainer's reason.
        message: String,
    },
    /// A file operation of the shim's own around libcontainer failed.
    #[error("{what} {path}: {message}")]
    File {
        /// What was being done (`join`, `remove`, ...).
        what: String,
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// What the shim applies in a created container's mount namespace (its mount flags,
    /// propagation, the `/proc/driver/nvidia` overlay) could not be applied.
    #[error("after create: {0}")]
    AfterCreate(String),
}

type Wire<T> = std::result::Result<T, OpError>;

/// A libcontainer error with its chain, and the init's logged cause when it adds something.
fn libcontainer(err: impl std::error::Error, cause: Option<String>) -> OpError {
    let message = chain_to_string(&err);
    OpError::Libcontainer {
        cause: cause.filter(|c| !message.contains(c.as_str())),
        message,
    }
}

fn lc(err: impl std::error::Error) -> OpError {
    libcontainer(err, None)
}

fn file_error(what: &str, path: &std::path::Path, err: &std::io::Error) -> OpError {
    OpError::File {
        what: what.to_owned(),
        path: path.to_owned(),
        message: err.to_string(),
    }
}

fn zy_create(args: CreateArgs) -> Wire<Created> {
    let CreateArgs {
        state,
        bundle,
        systemd,
        io,
        after,
    } = args;
    let builder = ContainerBuilder::new(state.id.clone(), SyscallType::default())
        .with_root_path(&state.root)
        .map_err(lc)?
        .validate_id()
        .map_err(lc)?;
    let (container, cause) = crate::runtime::causes::watch(|| {
        with_io(builder, io)
            .with_executor(ShimExecutor::default())
            .as_init(&bundle)
            .with_systemd(systemd)
            .with_detach(true)
            .as_sibling(true)
            .build()
    });
    // libcontainer may have left a state dir and a cgroup behind: remove both.
    let undo = |error: OpError| {
        if let Ok(mut c) = Container::load(state.dir()) {
            let _ = c.delete(true);
        }
        let _ = std::fs::remove_dir_all(state.dir());
        error
    };
    let container = container.map_err(|err| undo(libcontainer(err, cause)))?;
    let pid = container.pid().ok_or(OpError::NoInitPid)?.as_raw();
    let config = container
        .spec()
        .map_err(|e| OpError::State(chain_to_string(&e)))?;
    let poststop = config
        .hooks
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
        .is_some_and(|hooks| !hooks.is_empty());
    let plain_teardown = !systemd
        && !poststop
        && container.intel_rdt_dir().is_none()
        && container.intel_rdt_monitoring_dir().is_none();
    // Last, as it leaves the shim's mount namespace: this worker is single-threaded, so it
    // may join the container's.
    let overlay_mounts = if after.is_empty() {
        0
    } else {
        Prepared::new(&after, pid)
            .and_then(|p| p.attach())
            .map_err(|e| undo(OpError::AfterCreate(e.to_string())))?
    };
    Ok(Created {
        pid,
        cgroup_path: config.cgroup_path,
        plain_teardown,
        overlay_mounts,
    })
}

/// Starts a process inside the running container: it joins every namespace and the cgroup of
/// the container (libcontainer's tenant builder) and is the shim's child.
fn zy_exec(args: ExecArgs) -> Wire<i32> {
    let ExecArgs {
        state,
        process,
        io,
        executor,
        hybrid_cgroups,
    } = args;
    for dir in &hybrid_cgroups {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()))
            .map_err(|e| file_error("join", dir, &e))?;
    }
    let builder = ContainerBuilder::new(state.id.clone(), SyscallType::default())
        .with_root_path(&state.root)
        .map_err(lc)?;
    let (pid, cause) = crate::runtime::causes::watch(|| {
        with_io(builder, io)
            .with_executor(executor)
            .as_tenant()
            .with_process(Some(&process))
            .as_sibling(true)
            .with_detach(true)
            .build()
    });
    let pid = pid.map_err(|e| libcontainer(e, cause))?;
    Ok(pid.as_raw())
}

fn zy_detach_stdout((): ()) -> Wire<()> {
    // Runs once, in the first zygote, before anything else.
    let null_path = std::path::Path::new("/dev/null");
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open(null_path)
        .map_err(|e| file_error("open", null_path, &e))?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), libc::STDOUT_FILENO)
        .map(drop)
        .map_err(|e| file_error("dup2 onto stdout", null_path, &e.into()))
}

fn zy_release_code_pages((): ()) -> usize {
    crate::working_set::release_code_pages()
}

fn load(state: &StateRef) -> Wire<Container> {
    Container::load(state.dir()).map_err(|e| OpError::State(chain_to_string(&e)))
}

fn zy_start(state: StateRef) -> Wire<()> {
    load(&state)?.start().map_err(lc)
}

fn lc_kill((state, signal, all): (StateRef, i32, bool)) -> Wire<()> {
    let signal = Signal::try_from(signal).map_err(|e| OpError::Signal {
        signal,
        message: chain_to_string(&e),
    })?;
    load(&state)?.kill(signal, all).map_err(lc)
}

fn lc_pause(state: StateRef) -> Wire<()> {
    load(&state)?.pause().map_err(lc)
}

fn lc_resume(state: StateRef) -> Wire<()> {
    load(&state)?.resume().map_err(lc)
}

/// Deletes the container's state and cgroup, killing what is left when `force`. A missing state
/// directory is not an error: the container is already gone.
fn lc_delete((state, force): (StateRef, bool)) -> Wire<()> {
    if !state.dir().exists() {
        return Ok(());
    }
    match Container::load(state.dir()) {
        Ok(mut c) => c.delete(force).map_err(lc),
        // A state dir without a readable state.json is a create that died half-way.
        Err(_) => {
            std::fs::remove_dir_all(state.dir()).map_err(|e| file_error("remove", &state.dir(), &e))
        }
    }
}

/// Deletes a container's state and cgroup in this process, killing what is left: for the
/// `delete` command, which has no other thread and so needs no zygote.
pub fn delete_in_process(state: &StateRef, force: bool) -> Result<()> {
    lc_delete((state.clone(), force)).map_err(|source| ShimError::Runtime {
        id: state.id.clone(),
        op: "delete",
        source,
    })
}

/// The async face of the zygote: each method runs one libcontainer operation there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Driver;

impl Driver {
    /// Forks the zygotes. Must run before any other thread exists.
    ///
    /// The first zygote then points its stdout at `/dev/null` (its reserve inherits that):
    /// during `start` the shim's stdout is the pipe containerd reads the socket address from
    /// until EOF, and a zygote holding it would keep that pipe open forever.
    pub fn init() {
        crate::runtime::zygotes::init(zy_detach_stdout);
    }

    /// Lets the idle zygotes drop their code mappings (see `working_set`); returns the bytes
    /// released.
    pub fn release_code_pages() -> std::result::Result<usize, ZygoteError> {
        crate::runtime::zygotes::each(zy_release_code_pages)
    }

    fn failed<'a>(id: &'a str, op: &'static str) -> impl Fn(OpError) -> ShimError + 'a {
        move |source| ShimError::Runtime {
            id: id.to_owned(),
            op,
            source,
        }
    }

    /// Runs `f` in a fresh zygote worker.
    async fn call<A, R>(id: &str, op: &'static str, f: fn(A) -> Wire<R>, args: A) -> Result<R>
    where
        A: Serialize + for<'de> Deserialize<'de> + Send + 'static,
        R: Serialize + for<'de> Deserialize<'de> + Send + 'static,
    {
        // Each operation runs in a short-lived zygote worker: the pages libcontainer touches
        // are released when it exits, so the shim's idle footprint stays that of the task
        // service alone. The answer comes back before the worker is killed and waited for
        // (its exit unmaps its memory, about 0.5 ms), so a request never waits for that.
        let (answer, answered) = tokio::sync::oneshot::channel();
        drop(tokio::task::spawn_blocking(move || {
            let result = crate::runtime::zygotes::worker()
                .and_then(|worker| worker.try_run(f, args).map_err(ZygoteError::from));
            let _ = answer.send(result);
        }));
        match answered.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(source))) => Err(Self::failed(id, op)(source)),
            Ok(Err(source)) => Err(ShimError::Zygote {
                id: id.to_owned(),
                op,
                source,
            }),
            Err(_) => Err(ShimError::Zygote {
                id: id.to_owned(),
                op,
                source: ZygoteError::Spawn("the worker's task ended without an answer".into()),
            }),
        }
    }

    /// Runs `f` in the shim itself, on the blocking pool: for operations that neither fork nor
    /// change directory.
    async fn local<A, R>(id: &str, op: &'static str, f: fn(A) -> Wire<R>, args: A) -> Result<R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        match tokio::task::spawn_blocking(move || f(args)).await {
            Ok(result) => result.map_err(Self::failed(id, op)),
            Err(e) => Err(ShimError::Zygote {
                id: id.to_owned(),
                op,
                source: ZygoteError::Spawn(format!("the operation's blocking task failed: {e}")),
            }),
        }
    }

    /// Creates the container; its init is parked until [`Driver::start`].
    pub async fn create(&self, args: CreateArgs) -> Result<Created> {
        let id = args.state.id.clone();
        Self::call(&id, "create", zy_create, args).await
    }

    /// Starts an exec process; returns its host pid.
    pub async fn exec(&self, args: ExecArgs) -> Result<i32> {
        let id = args.state.id.clone();
        Self::call(&id, "exec", zy_exec, args).await
    }

    /// Lets the parked init exec the container's process.
    pub async fn start(&self, state: &StateRef) -> Result<()> {
        Self::call(&state.id, "start", zy_start, state.clone()).await
    }

    /// Signals the init process, or every process of the container when `all`.
    pub async fn kill(&self, state: &StateRef, signal: u32, all: bool) -> Result<()> {
        let signal = i32::try_from(signal).map_err(|_| ShimError::InvalidArgument {
            id: state.id.clone(),
            reason: format!("signal {signal} out of range"),
        })?;
        Self::local(&state.id, "kill", lc_kill, (state.clone(), signal, all)).await
    }

    /// Freezes the container's cgroup.
    pub async fn pause(&self, state: &StateRef) -> Result<()> {
        Self::local(&state.id, "pause", lc_pause, state.clone()).await
    }

    /// Thaws the container's cgroup.
    pub async fn resume(&self, state: &StateRef) -> Result<()> {
        Self::local(&state.id, "resume", lc_resume, state.clone()).await
    }

    /// Removes the container's cgroup and state; with `force`, kills its processes first.
    pub async fn delete(&self, state: &StateRef, force: bool) -> Result<()> {
        Self::local(&state.id, "delete", lc_delete, (state.clone(), force)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_errors_cross_the_channel_typed_and_print_their_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "exec format error");
        let with_new_cause = libcontainer(&io, Some("/app: no such file".to_owned()));
        let with_known_cause = libcontainer(&io, Some("exec format error".to_owned()));
        assert_eq!(
            with_new_cause.to_string(),
            "exec format error: /app: no such file"
        );
        assert_eq!(
            with_known_cause,
            OpError::Libcontainer {
                message: "exec format error".to_owned(),
                cause: None,
            }
        );
        for e in [
            with_new_cause,
            OpError::State("missing state.json".to_owned()),
            OpError::NoInitPid,
            file_error("join", std::path::Path::new("/sys/fs/cgroup/x"), &io),
        ] {
            let wire = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<OpError>(&wire).unwrap(), e);
        }
    }
}
