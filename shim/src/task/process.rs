//! One process of a container, init or exec, with its one [`State`]: it moves only as
//! [`State::after`] allows, and an exit the reaper delivered is folded in whenever the state
//! is read.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use oci_spec::runtime::Process as ProcessSpec;

use crate::io::procio::{ProcessIo, StdioPaths};
use crate::runtime::exit::{ExitCell, ExitRoute, ExitStatus};
use crate::runtime::Spawned;
use crate::task::state::{State, Transition};

/// Which process of its container it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The container's init (containerd's task).
    Init,
    /// An exec, with the OCI process it runs.
    Exec(Box<ProcessSpec>),
}

/// What exists once the process does.
#[derive(Debug)]
struct Live {
    pid: i32,
    io: Arc<ProcessIo>,
    /// Its exit's route; dropped when the process is deleted.
    route: Option<ExitRoute>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    live: Option<Live>,
}

/// A process of a container.
#[derive(Debug)]
pub struct Process {
    /// containerd's id for it: the container's id for init, the exec id for an exec.
    pub id: String,
    /// Init or exec.
    pub kind: Kind,
    /// Its stdio, as containerd asked.
    pub stdio: StdioPaths,
    exit: Arc<ExitCell>,
    /// Held by whoever changes the state through the runtime (start, pause, resume, delete),
    /// for the whole change: such changes of one process never overlap.
    change: Mutex<()>,
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A process's state as `State` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Its state.
    pub state: State,
    /// Its host pid, 0 before it exists.
    pub pid: u32,
    /// Its exit, once reaped.
    pub exit: Option<ExitStatus>,
}

impl Process {
    /// A container's init, created (parked) by the runtime; `exit` receives its exit.
    pub fn init(id: &str, stdio: StdioPaths, exit: Arc<ExitCell>, init: Spawned) -> Self {
        Self::new(id, Kind::Init, stdio, exit, Some(init))
    }

    /// An exec registered by `Exec`, to run `spec` once started.
    pub fn exec(exec_id: &str, spec: ProcessSpec, stdio: StdioPaths) -> Self {
        let exit = Arc::new(ExitCell::default());
        Self::new(exec_id, Kind::Exec(Box::new(spec)), stdio, exit, None)
    }

    fn new(
        id: &str,
        kind: Kind,
        stdio: StdioPaths,
        exit: Arc<ExitCell>,
        spawned: Option<Spawned>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            stdio,
            exit,
            change: Mutex::new(()),
            inner: Mutex::new(Inner {
                state: State::Created,
                live: spawned.map(live),
            }),
        }
    }

    /// Whether it is its container's init.
    pub fn is_init(&self) -> bool {
        self.kind == Kind::Init
    }

    /// Serialises the changes of this process made through the runtime: held for a whole
    /// start, pause, resume or delete.
    pub fn changing(&self) -> MutexGuard<'_, ()> {
        lock(&self.change)
    }

    /// Its state with its exit folded in, under the lock.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        let mut inner = lock(&self.inner);
        if self.exit.get().is_some() {
            if let Some(stopped) = inner.state.after(Transition::Exit) {
                inner.state = stopped;
            }
        }
        inner
    }

    /// Its state now.
    pub fn state(&self) -> State {
        self.inner().state
    }

    /// What `State` reports of it.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner();
        Snapshot {
            state: inner.state,
            pid: pid_of(inner.live.as_ref()),
            exit: self.exit.get(),
        }
    }

    /// Whether `t` is allowed now; the state found otherwise.
    pub fn allows(&self, t: Transition) -> Result<(), State> {
        let state = self.state();
        state.after(t).map(drop).ok_or(state)
    }

    /// Makes transition `t`; the state found when it is not allowed.
    pub fn advance(&self, t: Transition) -> Result<State, State> {
        let mut inner = self.inner();
        let next = inner.state.after(t).ok_or(inner.state)?;
        inner.state = next;
        Ok(next)
    }

    /// Records that the process now exists (an exec the runtime started) and makes the
    /// `Start` transition. A process that has exited already (a quick one: its exit can be
    /// reaped before the runtime's answer) is recorded all the same, its pid and I/O kept
    /// for `State` and `Wait`; its exit is folded in at the next read.
    pub fn started(&self, spawned: Spawned) -> Result<State, State> {
        let mut inner = lock(&self.inner);
        inner.live = Some(live(spawned));
        let next = inner.state.after(Transition::Start).ok_or(inner.state)?;
        inner.state = next;
        Ok(next)
    }

    /// Its host pid, 0 before it exists.
    pub fn pid(&self) -> u32 {
        pid_of(lock(&self.inner).live.as_ref())
    }

    /// Its host pid, once it exists.
    pub fn host_pid(&self) -> Option<i32> {
        lock(&self.inner).live.as_ref().map(|l| l.pid)
    }

    /// Its I/O, once it exists.
    pub fn io(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.inner).live.as_ref().map(|l| Arc::clone(&l.io))
    }

    /// Its exit.
    pub fn exit(&self) -> &Arc<ExitCell> {
        &self.exit
    }

    /// Records an exit the reaper will not deliver (an exec that failed to start).
    pub fn set_exit(&self, status: ExitStatus) {
        self.exit.set(status);
    }

    /// Ends what the shim holds of the process once it is deleted: its stdin is closed and
    /// its exit no longer routed. Blocks briefly (closing stdin may open its FIFO).
    pub fn release(&self) {
        let mut inner = lock(&self.inner);
        if let Some(live) = inner.live.as_mut() {
            live.io.close_stdin();
            live.route = None;
        }
    }
}

fn live(spawned: Spawned) -> Live {
    Live {
        pid: spawned.pid,
        io: Arc::new(spawned.io),
        route: Some(spawned.route),
    }
}

fn pid_of(live: Option<&Live>) -> u32 {
    live.and_then(|l| u32::try_from(l.pid).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawned(pid: i32, exit: &Arc<ExitCell>) -> Spawned {
        Spawned {
            pid,
            io: ProcessIo::default(),
            route: ExitRoute::unrouted(pid, Arc::clone(exit)),
        }
    }

    #[test]
    fn an_init_moves_only_as_the_table_allows_and_its_exit_stops_it() {
        let exit = Arc::new(ExitCell::default());
        let p = Process::init(
            "c",
            StdioPaths::default(),
            Arc::clone(&exit),
            spawned(7, &exit),
        );
        assert_eq!(p.snapshot().pid, 7);
        assert_eq!(p.allows(Transition::Pause), Err(State::Created));
        assert_eq!(p.advance(Transition::Start), Ok(State::Running));
        assert_eq!(p.advance(Transition::Start), Err(State::Running));
        assert_eq!(p.advance(Transition::Pause), Ok(State::Paused));
        assert_eq!(p.allows(Transition::Delete), Err(State::Paused));
        exit.set(ExitStatus::now(3));
        assert_eq!(p.state(), State::Stopped, "an exit stops a paused process");
        assert_eq!(p.snapshot().exit.map(|e| e.code), Some(3));
        assert_eq!(p.advance(Transition::Delete), Ok(State::Deleted));
        assert_eq!(
            p.state(),
            State::Deleted,
            "an exit is not folded into a deleted one"
        );
    }

    #[test]
    fn an_exec_exists_once_started_and_a_failed_start_stops_it() {
        let p = Process::exec("e1", ProcessSpec::default(), StdioPaths::default());
        assert_eq!((p.pid(), p.host_pid(), p.io().is_none()), (0, None, true));
        let exit = Arc::clone(p.exit());
        assert_eq!(p.started(spawned(9, &exit)), Ok(State::Running));
        assert_eq!(p.host_pid(), Some(9));
        assert!(p.io().is_some());
        p.release();

        let quick = Process::exec("e3", ProcessSpec::default(), StdioPaths::default());
        let exit = Arc::clone(quick.exit());
        exit.set(ExitStatus::now(0));
        assert_eq!(quick.started(spawned(11, &exit)), Ok(State::Running));
        assert_eq!(
            quick.state(),
            State::Stopped,
            "its exit came before the start's answer"
        );
        assert_eq!((quick.pid(), quick.io().is_some()), (11, true));

        let failed = Process::exec("e2", ProcessSpec::default(), StdioPaths::default());
        failed.set_exit(ExitStatus::now(127));
        assert_eq!(failed.state(), State::Stopped);
        assert_eq!(failed.allows(Transition::Start), Err(State::Stopped));
    }
}
