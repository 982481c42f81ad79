//! The operations the task service calls: create, exec and start run in a zygote worker
//! (`zygote`, `ops`), kill, pause, resume and delete in the shim itself.
//!
//! libcontainer's create, exec and start fork (and start's notify socket changes directory),
//! so they never run in the multi-threaded shim: a single-threaded zygote forks a worker for
//! each (runwasi #357, youki #2425). Kill, pause, resume and delete neither fork nor change
//! directory, so the shim runs them itself: stopping and removing a container never depends on
//! a helper process. Calls block, so the async service reaches them all through [`Driver`],
//! which runs them on tokio's blocking pool.
//!
//! Containers are created `as_sibling`: the init process becomes a child of the shim (the
//! worker's parent), which reaps it and reports its exit.

use libcontainer::container::Container;
use libcontainer::signal::Signal;

use crate::runtime::ops::{file_error, lc, load, Done, Op, Wire};
pub use crate::runtime::ops::{CreateArgs, Created, ExecArgs, IdmappedRootfs, OpError, StateRef};
use crate::runtime::zygote::{self, ZygoteError};

use crate::error::{chain_to_string, Result, ShimError};

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

/// The async face of the runtime: each method runs one libcontainer operation, in a zygote
/// worker or in the shim, on tokio's blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Driver;

impl Driver {
    /// Forks the zygote. Must run before any other thread exists.
    pub fn init() {
        zygote::init();
    }

    /// Lets the idle zygote drop its code mappings (see `working_set`); returns the bytes
    /// released.
    pub fn release_code_pages() -> std::result::Result<usize, ZygoteError> {
        zygote::release_code_pages()
    }

    fn failed<'a>(id: &'a str, op: &'static str) -> impl Fn(OpError) -> ShimError + 'a {
        move |source| ShimError::Runtime {
            id: id.to_owned(),
            op,
            source,
        }
    }

    /// Runs `op` in a fresh zygote worker. Each operation runs in a short-lived worker: the
    /// pages libcontainer touches are released when it exits, so the shim's idle footprint
    /// stays that of the task service alone.
    async fn call(id: &str, name: &'static str, op: Op) -> Result<Done> {
        let zygote_err = |source| ShimError::Zygote {
            id: id.to_owned(),
            op: name,
            source,
        };
        match tokio::task::spawn_blocking(move || zygote::run(op)).await {
            Ok(Ok(Ok(done))) => Ok(done),
            Ok(Ok(Err(source))) => Err(Self::failed(id, name)(source)),
            Ok(Err(source)) => Err(zygote_err(source)),
            Err(e) => Err(zygote_err(ZygoteError::Protocol(format!(
                "the operation's blocking task failed: {e}"
            )))),
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
                source: ZygoteError::Protocol(format!("the operation's blocking task failed: {e}")),
            }),
        }
    }

    /// An answer that is not the operation's own (a bug).
    fn unexpected(id: &str, op: &'static str, done: &Done) -> ShimError {
        ShimError::Zygote {
            id: id.to_owned(),
            op,
            source: ZygoteError::Protocol(format!("{done:?} answered {op}")),
        }
    }

    /// Creates the container; its init is parked until [`Driver::start`].
    pub async fn create(&self, args: CreateArgs) -> Result<Created> {
        let id = args.state.id.clone();
        match Self::call(&id, "create", Op::Create(Box::new(args))).await? {
            Done::Created(c) => Ok(c),
            other => Err(Self::unexpected(&id, "create", &other)),
        }
    }

    /// Starts an exec process; returns its host pid.
    pub async fn exec(&self, args: ExecArgs) -> Result<i32> {
        let id = args.state.id.clone();
        match Self::call(&id, "exec", Op::Exec(Box::new(args))).await? {
            Done::Execed(pid) => Ok(pid),
            other => Err(Self::unexpected(&id, "exec", &other)),
        }
    }

    /// Lets the parked init exec the container's process.
    pub async fn start(&self, state: &StateRef) -> Result<()> {
        match Self::call(&state.id, "start", Op::Start(state.clone())).await? {
            Done::Started => Ok(()),
            other => Err(Self::unexpected(&state.id, "start", &other)),
        }
    }

    /// Mounts an idmapped overlay rootfs (user-namespace pods): its lower layers idmapped, the
    /// overlay over them, in a worker (a user namespace is made by forking).
    pub async fn mount_idmapped(&self, id: &str, m: IdmappedRootfs) -> Result<()> {
        match Self::call(id, "mount the rootfs", Op::MountIdmapped(Box::new(m))).await? {
            Done::Mounted => Ok(()),
            other => Err(Self::unexpected(id, "mount the rootfs", &other)),
        }
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
