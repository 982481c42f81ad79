//! The [`Runtime`] on libcontainer: create, exec and a start with poststart hooks run in a
//! zygote worker (`zygote`, `ops`); kill, pause, resume, delete and any other start run in the
//! shim itself.
//!
//! libcontainer's create and exec fork, so they never run in the multi-threaded shim: a
//! single-threaded zygote forks a worker for each (runwasi #357, youki #2425). Start is the
//! shim's own, without libcontainer's `chdir` ([`crate::runtime::ops::start`]); a start with
//! poststart hooks runs in a worker, which reaps their processes. Kill, pause, resume and delete neither fork nor change
//! directory, so the shim runs them itself: stopping and removing a container never depends on
//! a helper process. Every method blocks; the task service calls them from the blocking pool.
//!
//! Containers are created `as_sibling`: the init process becomes a child of the shim (the
//! worker's parent), which reaps it and reports its exit.

use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::{LinuxResources, LinuxSeccomp};
use libcontainer::signal::Signal;

use crate::error::wire::{lc, OpError, Wire};
use crate::error::{chain_to_string, Result, ShimError};
use crate::runtime::bundle::{Bundle, SpecEditor};
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::exit::{ExitCell, ExitRouter};
use crate::runtime::ops::{load, Done, Op, StateRef};
use crate::runtime::zygote::Zygote;
use crate::runtime::{
    CreateRequest, Created, ExecRequest, KillTarget, OnOom, Runtime, Spawned, Teardown,
};

/// The runtime on libcontainer, one per shim.
pub struct Libcontainer {
    pub(super) zygote: Arc<Zygote>,
    pub(super) exits: Arc<ExitRouter>,
    pub(super) editor: Arc<dyn SpecEditor>,
    /// containerd's namespace, for logging binaries.
    pub(super) namespace: String,
}

impl std::fmt::Debug for Libcontainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libcontainer")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What the runtime keeps of one container.
#[derive(Debug)]
pub struct LcContainer {
    /// Container id.
    pub(super) id: String,
    /// Its bundle.
    pub(super) bundle: Bundle,
    /// Where libcontainer keeps its state.
    pub(super) state: StateRef,
    /// Its cgroup.
    pub(super) cgroup: ContainerCgroup,
    /// Whether the shim mounted the rootfs (and so must unmount it).
    pub(super) rootfs_mounted: bool,
    /// Whether removing its cgroup and state directory is all a delete after exit needs
    /// ([`crate::runtime::ops::Created::plain_teardown`]).
    pub(super) plain_teardown: bool,
    /// Whether the shim starts it in place
    /// ([`crate::runtime::ops::Created::plain_start`]).
    pub(super) plain_start: bool,
    /// The container's seccomp profile, which libcontainer does not give its execs.
    pub(super) seccomp: Option<LinuxSeccomp>,
    /// Whether it has a user namespace of its own (its execs are refused: see `exec`).
    pub(super) user_ns: bool,
}

impl Libcontainer {
    /// The runtime: `zygote` runs libcontainer's forking calls, `exits` routes the reaper's
    /// exits, `editor` edits each spec before libcontainer reads it (GPU injection),
    /// `namespace` is containerd's.
    pub fn new(
        zygote: Arc<Zygote>,
        exits: Arc<ExitRouter>,
        editor: Arc<dyn SpecEditor>,
        namespace: &str,
    ) -> Self {
        Self {
            zygote,
            exits,
            editor,
            namespace: namespace.to_owned(),
        }
    }

    /// Runs `op` in a fresh zygote worker. Each operation runs in a short-lived worker: the
    /// pages libcontainer touches are released when it exits, so the shim's idle footprint
    /// stays that of the task service alone.
    pub(super) fn call(&self, id: &str, name: &'static str, op: Op) -> Result<Done> {
        match self.zygote.run(op) {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(source)) => Err(failed(id, name)(source)),
            Err(source) => Err(ShimError::Zygote {
                id: id.to_owned(),
                op: name,
                source,
            }),
        }
    }
}

/// A runtime error of operation `op` on container `id`.
pub(super) fn failed<'a>(id: &'a str, op: &'static str) -> impl Fn(OpError) -> ShimError + 'a {
    move |source| ShimError::Runtime {
        id: id.to_owned(),
        op,
        source,
    }
}

/// An answer that is not the operation's own (a bug).
pub(super) fn unexpected(id: &str, op: &'static str, done: &Done) -> ShimError {
    ShimError::Zygote {
        id: id.to_owned(),
        op,
        source: crate::error::ZygoteError::Protocol(format!("{done:?} answered {op}")),
    }
}

fn lc_kill(state: &StateRef, signal: i32, all: bool) -> Wire<()> {
    let signal = Signal::try_from(signal).map_err(|e| OpError::Signal {
        signal,
        message: chain_to_string(&e),
    })?;
    load(state)?.kill(signal, all).map_err(lc)
}

/// Deletes the container's state and cgroup, killing what is left when `force`. A missing state
/// directory is not an error: the container is already gone.
fn lc_delete(state: &StateRef, force: bool) -> Wire<()> {
    if !state.dir().exists() {
        return Ok(());
    }
    match Container::load(state.dir()) {
        Ok(mut c) => c.delete(force).map_err(lc),
        // A state dir without a readable state.json is a create that died half-way.
        Err(_) => std::fs::remove_dir_all(state.dir())
            .map_err(|e| OpError::file("remove", &state.dir(), &e)),
    }
}

/// Deletes a container's state and cgroup in this process, killing what is left (for the
/// `delete` command and for undoing a create; neither forks).
pub fn delete_in_process(state: &StateRef, force: bool) -> Result<()> {
    lc_delete(state, force).map_err(failed(&state.id, "delete"))
}

impl Runtime for Libcontainer {
    type Container = LcContainer;

    fn create(&self, req: &CreateRequest, exit: &Arc<ExitCell>) -> Result<Created<LcContainer>> {
        crate::runtime::create::create(self, req, exit)
    }

    fn start(&self, c: &LcContainer) -> Result<()> {
        if c.plain_start {
            return crate::runtime::ops::start(&c.state, false).map_err(failed(&c.id, "start"));
        }
        match self.call(&c.id, "start", Op::Start(c.state.clone()))? {
            Done::Started => Ok(()),
            other => Err(unexpected(&c.id, "start", &other)),
        }
    }

    fn exec(&self, c: &LcContainer, req: &ExecRequest, exit: &Arc<ExitCell>) -> Result<Spawned> {
        crate::runtime::exec::exec(self, c, req, exit)
    }

    fn kill(&self, c: &LcContainer, target: KillTarget) -> Result<()> {
        let (signal, all, pid) = match target {
            KillTarget::Init { signal, all } => (signal, all, None),
            KillTarget::Process { pid, signal } => (signal, false, Some(pid)),
        };
        let Some(pid) = pid else {
            let signal = i32::try_from(signal).map_err(|_| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!("signal {signal} out of range"),
            })?;
            return lc_kill(&c.state, signal, all).map_err(failed(&c.id, "kill"));
        };
        let signal = nix::sys::signal::Signal::try_from(i32::try_from(signal).unwrap_or(-1))
            .map_err(|_| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!("invalid signal {signal}"),
            })?;
        // The pid stays the process's until the shim reaps it, and it is reaped only once
        // exited.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| ShimError::io(&c.id, format!("kill {pid}"), e.into()))
    }

    fn kill_remaining(&self, c: &LcContainer) {
        crate::runtime::teardown::kill_remaining(&c.id, &c.cgroup);
    }

    fn delete(&self, c: &LcContainer, teardown: Teardown<'_>) -> Result<()> {
        crate::runtime::teardown::delete(c, teardown)
    }

    fn pause(&self, c: &LcContainer) -> Result<()> {
        load(&c.state)
            .and_then(|mut lc_container| lc_container.pause().map_err(lc))
            .map_err(failed(&c.id, "pause"))
    }

    fn resume(&self, c: &LcContainer) -> Result<()> {
        load(&c.state)
            .and_then(|mut lc_container| lc_container.resume().map_err(lc))
            .map_err(failed(&c.id, "resume"))
    }

    fn update(&self, c: &LcContainer, resources: &LinuxResources) -> Result<()> {
        c.cgroup.update(resources)
    }

    fn stats(&self, c: &LcContainer) -> Result<Any> {
        c.cgroup.metrics()
    }

    fn pids(&self, c: &LcContainer) -> Result<Vec<i32>> {
        c.cgroup.pids()
    }

    fn watch_oom(&self, c: &LcContainer, init_pid: i32, on_oom: OnOom) {
        crate::runtime::oom::watch(&c.id, init_pid, on_oom);
    }
}
