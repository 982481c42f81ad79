//! The process layer: the shim's containers ([`container`]), their init and exec processes
//! ([`process`]) with one state machine ([`state`]), and what each task request does to them
//! ([`Tasks`]), through the [`Runtime`] for everything on the host. Synchronous: the task
//! service calls it from the blocking pool, once per request. [`config`]: the configuration a
//! container is created with.

pub mod config;
pub mod container;
pub mod process;
pub mod state;
#[cfg(test)]
pub mod stub;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Process as ProcessSpec};

use crate::error::{Result, ShimError};
use crate::io::procio::StdioPaths;
use crate::runtime::exit::{ExitCell, ExitStatus};
use crate::runtime::{
    CreateRequest, ExecRequest, KillTarget, NewContainer, OnOom, Runtime, Teardown,
};
use crate::task::config::StartConfig;
use crate::task::container::Container;
use crate::task::process::{Kind, Process};
use crate::task::state::{State, Transition};

/// A container of runtime `R`.
pub type ContainerOf<R> = Container<<R as Runtime>::Container>;

/// What containerd's runtime options ask of the shim for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The runtime options' `ConfigPath`.
    pub config_path: Option<PathBuf>,
    /// The v1 runc options' `ShimCgroup`: the cgroup the shim process goes into.
    pub shim_cgroup: Option<String>,
}

/// What a Delete leaves to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    /// The process's host pid (0 if it never ran).
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
}

#[derive(Debug)]
struct Table<C> {
    containers: HashMap<String, Arc<Container<C>>>,
    /// Ids of creates in flight.
    reserved: HashSet<String>,
    ever_created: bool,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Self {
            containers: HashMap::new(),
            reserved: HashSet::new(),
            ever_created: false,
        }
    }
}

/// The shim's containers and what requests do to them.
#[derive(Debug)]
pub struct Tasks<R: Runtime> {
    runtime: R,
    config: StartConfig,
    table: Mutex<Table<R::Container>>,
}

/// Container id `id` held for a create in flight: requests for it wait for that create (see
/// [`Tasks::is_being_created`]) and a second create of it is refused. Released when dropped,
/// unless the create committed the container.
pub struct Reservation<R: Runtime> {
    tasks: Arc<Tasks<R>>,
    id: String,
}

impl<R: Runtime> Drop for Reservation<R> {
    fn drop(&mut self) {
        lock(&self.tasks.table).reserved.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_now(id: &str, reason: String) -> ShimError {
    ShimError::FailedPrecondition {
        id: id.to_owned(),
        reason,
    }
}

impl<R: Runtime> Tasks<R> {
    /// No containers yet; `config` is the daemon's start configuration.
    pub fn new(runtime: R, config: StartConfig) -> Self {
        Self {
            runtime,
            config,
            table: Mutex::default(),
        }
    }

    /// The runtime.
    #[cfg(test)]
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Container `id`.
    pub fn get(&self, id: &str) -> Result<Arc<ContainerOf<R>>> {
        lock(&self.table)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound { id: id.to_owned() })
    }

    /// Whether a create of `id` is in flight.
    pub fn is_being_created(&self, id: &str) -> bool {
        lock(&self.table).reserved.contains(id)
    }

    /// Whether a container was ever created, and whether creates are in flight.
    pub fn activity(&self) -> (bool, bool) {
        let t = lock(&self.table);
        (t.ever_created, !t.reserved.is_empty())
    }

    /// Whether the shim serves no container and creates none.
    pub fn is_idle(&self) -> bool {
        let t = lock(&self.table);
        t.containers.is_empty() && t.reserved.is_empty()
    }

    /// Reserves `id` for a create (see [`Reservation`]); fails if it is served or being
    /// created.
    pub fn reserve(self: &Arc<Self>, id: &str) -> Result<Reservation<R>> {
        let mut t = lock(&self.table);
        if t.containers.contains_key(id) || !t.reserved.insert(id.to_owned()) {
            return Err(ShimError::AlreadyExists { id: id.to_owned() });
        }
        Ok(Reservation {
            tasks: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    /// Creates a container: the runtime creates it (init parked until start), the shim then
    /// serves it and watches it for OOM kills (`on_oom`). Nothing is left when it fails.
    /// `reservation` is the id's, taken when the request came.
    pub fn create(
        &self,
        reservation: Reservation<R>,
        container: NewContainer,
        options: CreateOptions,
        on_oom: OnOom,
    ) -> Result<Arc<ContainerOf<R>>> {
        let id = container.id.clone();
        debug_assert_eq!(reservation.id, id, "created under its own reservation");
        let started = Instant::now();
        let config = self
            .config
            .for_container(&id, options.config_path.as_deref())?;
        let exit = Arc::new(ExitCell::default());
        let request = CreateRequest {
            container,
            config,
            shim_cgroup: options.shim_cgroup,
        };
        let created = self.runtime.create(&request, &exit)?;
        let NewContainer { bundle, stdio, .. } = request.container;
        let pid = created.init.pid;
        let init = Process::init(&id, stdio, exit, created.init);
        let container = Arc::new(Container::new(
            &id,
            bundle,
            init,
            created.private_pid_ns,
            created.container,
        ));
        {
            let mut t = lock(&self.table);
            t.containers.insert(id.clone(), Arc::clone(&container));
            t.ever_created = true;
        }
        drop(reservation);
        log::info!(
            "container {id}: created, init pid {pid}, in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        self.runtime.watch_oom(&container.runtime, pid, on_oom);
        Ok(container)
    }

    /// Starts process `p` of `c` (a created init, or a registered exec); returns its pid.
    pub fn start(&self, c: &ContainerOf<R>, p: &Process) -> Result<u32> {
        let _changing = p.changing();
        match &p.kind {
            Kind::Init => {
                p.allows(Transition::Start).map_err(|found| {
                    not_now(&c.id, format!("cannot start a task in state {found:?}"))
                })?;
                // A failed start leaves the task created (containerd may retry or delete it).
                self.runtime.start(&c.runtime)?;
                // An init that exited meanwhile is stopped already: nothing to move.
                let _ = p.advance(Transition::Start);
                log::info!("container {}: started", c.id);
            }
            Kind::Exec(spec) => {
                if c.init.state() == State::Stopped {
                    return Err(not_now(
                        &c.id,
                        format!("cannot start exec {}: the container is not running", p.id),
                    ));
                }
                p.allows(Transition::Start)
                    .map_err(|_| not_now(&c.id, format!("exec {} was already started", p.id)))?;
                let request = ExecRequest {
                    exec_id: p.id.clone(),
                    process: (**spec).clone(),
                    stdio: p.stdio.clone(),
                };
                let spawned = match self.runtime.exec(&c.runtime, &request, p.exit()) {
                    Ok(spawned) => spawned,
                    Err(e) => {
                        // containerd deletes the exec next; it is reported as failed to run.
                        p.set_exit(ExitStatus::now(127));
                        return Err(e);
                    }
                };
                let pid = spawned.pid;
                let _ = p.started(spawned);
                log::info!("container {}: exec {} started, pid {pid}", c.id, p.id);
            }
        }
        Ok(p.pid())
    }

    /// Registers exec `exec_id` of `c` to run the OCI process `spec` (its JSON); `Start` with
    /// its id runs it. The request's `terminal` wins over the process spec's, as with runc.
    pub fn exec(
        &self,
        c: &ContainerOf<R>,
        exec_id: &str,
        spec: Option<&[u8]>,
        stdio: StdioPaths,
    ) -> Result<()> {
        if c.init.state() == State::Stopped {
            return Err(not_now(
                &c.id,
                format!("cannot exec {exec_id}: the container is not running"),
            ));
        }
        let invalid = |reason: String| ShimError::InvalidArgument {
            id: c.id.clone(),
            reason,
        };
        let spec = spec.ok_or_else(|| invalid(format!("exec {exec_id} has no process spec")))?;
        // Decoded now, so a malformed spec fails Exec rather than Start.
        let mut process: ProcessSpec = serde_json::from_slice(spec).map_err(|e| {
            invalid(format!(
                "exec {exec_id}: process spec is not OCI Process JSON: {e}"
            ))
        })?;
        process.set_terminal(Some(stdio.terminal));
        if !c.add_exec(Process::exec(exec_id, process, stdio)) {
            return Err(ShimError::AlreadyExists {
                id: format!("{} exec {exec_id}", c.id),
            });
        }
        Ok(())
    }

    /// Signals process `p` of `c`; for init with `all`, every process of the container.
    pub fn kill(&self, c: &ContainerOf<R>, p: &Process, signal: u32, all: bool) -> Result<()> {
        if p.is_init() {
            if p.state() == State::Stopped {
                return Err(ShimError::ProcessFinished { id: c.id.clone() });
            }
            return match self
                .runtime
                .kill(&c.runtime, KillTarget::Init { signal, all })
            {
                Err(_) if p.state() == State::Stopped => {
                    Err(ShimError::ProcessFinished { id: c.id.clone() })
                }
                other => other,
            };
        }
        let finished = || ShimError::ProcessFinished {
            id: format!("{} exec {}", c.id, p.id),
        };
        let pid = p
            .host_pid()
            .ok_or_else(|| not_now(&c.id, format!("exec {} is not started", p.id)))?;
        if p.exit().get().is_some() {
            return Err(finished());
        }
        match self
            .runtime
            .kill(&c.runtime, KillTarget::Process { pid, signal })
        {
            Err(e @ ShimError::InvalidArgument { .. }) => Err(e),
            Err(_) => Err(finished()),
            Ok(()) => Ok(()),
        }
    }

    /// Deletes process `p` of `c`: an exec that is not running, or the container with every
    /// process of it once its init is stopped (or was never started).
    pub fn delete(&self, c: &ContainerOf<R>, p: &Process) -> Result<Deleted> {
        let _changing = p.changing();
        if !p.is_init() {
            p.advance(Transition::Delete)
                .map_err(|_| not_now(&c.id, format!("cannot delete running exec {}", p.id)))?;
            c.remove_exec(&p.id);
            p.release();
            let status = p.exit().get().unwrap_or_else(|| ExitStatus::now(0));
            return Ok(Deleted {
                pid: p.pid(),
                status,
            });
        }
        match p.state() {
            State::Created => self.runtime.delete(
                &c.runtime,
                Teardown::NeverStarted {
                    init_exit: p.exit(),
                },
            )?,
            State::Stopped => {
                self.end_the_rest(c);
                self.runtime.delete(&c.runtime, Teardown::Exited)?;
            }
            State::Running | State::Paused | State::Deleted => {
                return Err(not_now(
                    &c.id,
                    "cannot delete a running task; kill it first".into(),
                ))
            }
        }
        let _ = p.advance(Transition::Delete);
        p.release();
        for e in c.execs() {
            e.release();
            c.remove_exec(&e.id);
        }
        lock(&self.table).containers.remove(&c.id);
        log::info!("container {}: deleted", c.id);
        Ok(Deleted {
            pid: p.pid(),
            status: p.exit().get().unwrap_or_else(|| ExitStatus::now(137)),
        })
    }

    /// For a container without a pid namespace of its own, ends what its init left behind
    /// before a Wait answers or a Delete removes the cgroup, as the runc shim kills them before
    /// it reports the exit.
    pub fn end_the_rest(&self, c: &ContainerOf<R>) {
        if !c.private_pid_ns {
            self.runtime.kill_remaining(&c.runtime);
        }
    }

    /// Freezes (`pause`) or thaws the container.
    pub fn set_paused(&self, c: &ContainerOf<R>, pause: bool) -> Result<()> {
        let p = &c.init;
        let _changing = p.changing();
        let (t, verb) = if pause {
            (Transition::Pause, "pause")
        } else {
            (Transition::Resume, "resume")
        };
        p.allows(t)
            .map_err(|found| not_now(&c.id, format!("cannot {verb} a task in state {found:?}")))?;
        if pause {
            self.runtime.pause(&c.runtime)?;
        } else {
            self.runtime.resume(&c.runtime)?;
        }
        // An init that exited meanwhile is stopped: nothing to move.
        let _ = p.advance(t);
        Ok(())
    }

    /// Every process in the container, with the exec id of those that are execs.
    pub fn pids(&self, c: &ContainerOf<R>) -> Result<Vec<(i32, Option<String>)>> {
        let pids = self.runtime.pids(&c.runtime)?;
        let execs: HashMap<i32, String> = c
            .execs()
            .into_iter()
            .filter_map(|e| e.host_pid().map(|pid| (pid, e.id.clone())))
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, execs.get(&pid).cloned()))
            .collect())
    }

    /// The container's cgroup metrics.
    pub fn stats(&self, c: &ContainerOf<R>) -> Result<Any> {
        self.runtime.stats(&c.runtime)
    }

    /// Applies new resource limits.
    pub fn update(&self, c: &ContainerOf<R>, resources: &LinuxResources) -> Result<()> {
        self.runtime.update(&c.runtime, resources)
    }

    /// Closes the stdin of process `p` (nothing before it exists).
    pub fn close_stdin(&self, p: &Process) {
        if let Some(io) = p.io() {
            io.close_stdin();
        }
    }

    /// Resizes the terminal of process `p` of `c`; a process without one has nothing to
    /// resize (success, as with the runc shim).
    pub fn resize_pty(
        &self,
        c: &ContainerOf<R>,
        p: &Process,
        width: u32,
        height: u32,
    ) -> Result<()> {
        match p.io().as_ref().and_then(|io| io.console()) {
            Some(console) => console.resize(&c.id, width, height),
            None => Ok(()),
        }
    }
}
