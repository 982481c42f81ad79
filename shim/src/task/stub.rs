//! A [`Runtime`] for unit tests: it records every call, fails the operations a test asks to
//! fail, and makes processes exit when they are killed (or when a test says so), without
//! touching the host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;

use crate::error::wire::OpError;
use crate::error::{Result, ShimError};
use crate::io::procio::ProcessIo;
use crate::runtime::exit::{ExitCell, ExitRoute, ExitStatus};
use crate::runtime::{
    CreateRequest, Created, ExecRequest, KillTarget, OnOom, Runtime, Spawned, Teardown,
};

/// What the stub keeps of a container.
#[derive(Debug)]
pub struct StubContainer {
    /// Its id.
    pub id: String,
}

/// The stub runtime.
#[derive(Default)]
pub struct Stub {
    calls: Mutex<Vec<String>>,
    failing: Mutex<Vec<&'static str>>,
    next_pid: AtomicI32,
    /// Live processes' exit cells, by pid, with their container.
    processes: Mutex<HashMap<i32, (String, Arc<ExitCell>)>>,
    oom: Mutex<HashMap<String, OnOom>>,
    shares_pid_ns: AtomicBool,
    /// Whether exec'd processes exit before the exec returns.
    quick_execs: AtomicBool,
    /// What the last create was asked.
    pub last_create: Mutex<Option<CreateRequest>>,
    /// What the last exec was asked.
    pub last_exec: Mutex<Option<ExecRequest>>,
    /// The resources of the last update.
    pub last_update: Mutex<Option<LinuxResources>>,
    /// While true, creates wait (a slow create).
    held: Mutex<bool>,
    released: Condvar,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stub {:?}", self.calls())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stub {
    /// A stub whose first pid is 100.
    pub fn new() -> Self {
        Self {
            next_pid: AtomicI32::new(100),
            ..Self::default()
        }
    }

    /// The calls so far, as `"op id"` strings.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Makes the next call of `op` fail (as libcontainer failing it).
    pub fn fail_next(&self, op: &'static str) {
        lock(&self.failing).push(op);
    }

    /// Containers created from now on share the host's pid namespace.
    pub fn share_pid_namespace(&self) {
        self.shares_pid_ns.store(true, Ordering::SeqCst);
    }

    /// Exec'd processes exit (status 0) before the exec returns, as a quick process's exit can
    /// be reaped before the runtime answers.
    pub fn quick_execs(&self) {
        self.quick_execs.store(true, Ordering::SeqCst);
    }

    /// Process `pid` exits with `code`, as the reaper would report it.
    pub fn exit(&self, pid: i32, code: i32) {
        if let Some((_, cell)) = lock(&self.processes).remove(&pid) {
            cell.set(ExitStatus::now(code));
        }
    }

    /// Makes creates wait until [`Stub::release_creates`] (a create that takes its time).
    pub fn hold_creates(&self) {
        *lock(&self.held) = true;
    }

    /// Lets held creates go on.
    pub fn release_creates(&self) {
        *lock(&self.held) = false;
        self.released.notify_all();
    }

    /// The kernel's OOM killer acts in container `id`.
    pub fn oom(&self, id: &str) {
        if let Some(on_oom) = lock(&self.oom).get(id) {
            on_oom();
        }
    }

    fn call(&self, op: &'static str, id: &str) -> Result<()> {
        lock(&self.calls).push(format!("{op} {id}"));
        self.refused(op, id)
    }

    /// The failure a test asked of the next `op`, if it asked one.
    fn refused(&self, op: &'static str, id: &str) -> Result<()> {
        let mut failing = lock(&self.failing);
        match failing.iter().position(|f| *f == op) {
            Some(i) => {
                failing.remove(i);
                Err(ShimError::Runtime {
                    id: id.to_owned(),
                    op,
                    source: OpError::Libcontainer {
                        message: format!("stub: {op} refused"),
                        cause: None,
                    },
                })
            }
            None => Ok(()),
        }
    }

    fn spawn(&self, id: &str, exit: &Arc<ExitCell>) -> Spawned {
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        lock(&self.processes).insert(pid, (id.to_owned(), Arc::clone(exit)));
        Spawned {
            pid,
            io: ProcessIo::default(),
            route: ExitRoute::unrouted(pid, Arc::clone(exit)),
        }
    }

    /// The pids of container `id`'s live processes, lowest first.
    fn live(&self, id: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = lock(&self.processes)
            .iter()
            .filter(|(_, (c, _))| c == id)
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }
}

impl Runtime for Stub {
    type Container = StubContainer;

    fn create(&self, req: &CreateRequest, exit: &Arc<ExitCell>) -> Result<Created<StubContainer>> {
        let id = &req.container.id;
        lock(&self.calls).push(format!("create {id}"));
        let held = lock(&self.held);
        drop(
            self.released
                .wait_while(held, |held| *held)
                .unwrap_or_else(PoisonError::into_inner),
        );
        // A held create fails, if asked to, once released: as a slow create that fails.
        self.refused("create", id)?;
        *lock(&self.last_create) = Some(req.clone());
        Ok(Created {
            container: StubContainer { id: id.clone() },
            init: self.spawn(id, exit),
            private_pid_ns: !self.shares_pid_ns.load(Ordering::SeqCst),
        })
    }

    fn start(&self, c: &StubContainer) -> Result<()> {
        self.call("start", &c.id)
    }

    fn exec(&self, c: &StubContainer, req: &ExecRequest, exit: &Arc<ExitCell>) -> Result<Spawned> {
        self.call("exec", &format!("{} {}", c.id, req.exec_id))?;
        *lock(&self.last_exec) = Some(req.clone());
        let spawned = self.spawn(&c.id, exit);
        if self.quick_execs.load(Ordering::SeqCst) {
            self.exit(spawned.pid, 0);
        }
        Ok(spawned)
    }

    /// A signal ends its process (its status 128 + the signal), as the default action of the
    /// signals the tests send; signal 0 only checks.
    fn kill(&self, c: &StubContainer, target: KillTarget) -> Result<()> {
        self.call("kill", &c.id)?;
        let (pids, signal) = match target {
            KillTarget::Init { signal, all: true } => (self.live(&c.id), signal),
            KillTarget::Init { signal, all: false } => {
                (self.live(&c.id).into_iter().take(1).collect(), signal)
            }
            KillTarget::Process { pid, signal } => (vec![pid], signal),
        };
        if signal == 0 {
            return Ok(());
        }
        let code = 128
            + i32::try_from(signal).map_err(|_| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!("signal {signal} out of range"),
            })?;
        for pid in pids {
            self.exit(pid, code);
        }
        Ok(())
    }

    fn kill_remaining(&self, c: &StubContainer) {
        lock(&self.calls).push(format!("kill_remaining {}", c.id));
        for pid in self.live(&c.id) {
            self.exit(pid, 137);
        }
    }

    fn delete(&self, c: &StubContainer, teardown: Teardown<'_>) -> Result<()> {
        let op = match teardown {
            Teardown::NeverStarted { .. } => "delete-created",
            Teardown::Exited => "delete-exited",
        };
        self.call(op, &c.id)?;
        for pid in self.live(&c.id) {
            self.exit(pid, 137);
        }
        Ok(())
    }

    fn pause(&self, c: &StubContainer) -> Result<()> {
        self.call("pause", &c.id)
    }

    fn resume(&self, c: &StubContainer) -> Result<()> {
        self.call("resume", &c.id)
    }

    fn update(&self, c: &StubContainer, resources: &LinuxResources) -> Result<()> {
        self.call("update", &c.id)?;
        *lock(&self.last_update) = Some(resources.clone());
        Ok(())
    }

    fn stats(&self, c: &StubContainer) -> Result<Any> {
        self.call("stats", &c.id)?;
        Ok(Any {
            type_url: "stub.Metrics".to_owned(),
            value: c.id.clone().into_bytes(),
            ..Default::default()
        })
    }

    fn pids(&self, c: &StubContainer) -> Result<Vec<i32>> {
        self.call("pids", &c.id)?;
        Ok(self.live(&c.id))
    }

    fn watch_oom(&self, c: &StubContainer, _init_pid: i32, on_oom: OnOom) {
        lock(&self.oom).insert(c.id.clone(), on_oom);
    }
}
