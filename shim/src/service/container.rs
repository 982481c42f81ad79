//! One container served by the shim: what containerd told us at create, what libcontainer
//! gave back, and the task state machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::types::task::Status;

use crate::io::procio::ProcessIo;
use crate::runtime::bundle::Bundle;
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::driver::StateRef;
use crate::runtime::exit::ExitCell;
use crate::service::exec_process::ExecProcess;

/// Where the task is in its life. `Stopped` is derived from the exit cell, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created; init parked until `Start`.
    Created,
    /// Started.
    Running,
    /// Frozen by `Pause`.
    Paused,
    /// The init process exited.
    Stopped,
}

impl TaskState {
    /// containerd's name for the state.
    pub fn status(self) -> EnumOrUnknown<Status> {
        EnumOrUnknown::new(match self {
            Self::Created => Status::CREATED,
            Self::Running => Status::RUNNING,
            Self::Paused => Status::PAUSED,
            Self::Stopped => Status::STOPPED,
        })
    }
}

/// The stdio paths containerd gave at create, echoed back by `State`.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin FIFO, or empty.
    pub stdin: String,
    /// stdout FIFO or URI, or empty.
    pub stdout: String,
    /// stderr FIFO or URI, or empty.
    pub stderr: String,
    /// Whether a terminal was asked for.
    pub terminal: bool,
}

/// A container of this shim.
#[derive(Debug)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// Its bundle.
    pub bundle: Bundle,
    /// Where libcontainer keeps its state.
    pub state_ref: StateRef,
    /// Host pid of init.
    pub pid: i32,
    /// stdio paths.
    pub stdio: StdioPaths,
    /// Its cgroup.
    pub cgroup: ContainerCgroup,
    /// Init's exit.
    pub exit: Arc<ExitCell>,
    /// Whether the shim mounted the rootfs (and so must unmount it).
    pub rootfs_mounted: bool,
    /// Whether the container has a pid namespace of its own (its processes die with init).
    pub private_pid_ns: bool,
    /// Whether removing its cgroup and state directory is all a delete after exit needs
    /// ([`crate::runtime::driver::Created::plain_teardown`]).
    pub plain_teardown: bool,
    /// Init's I/O.
    pub io: ProcessIo,
    state: Mutex<TaskState>,
    execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a container is built from.
#[derive(Debug)]
pub struct ContainerParts {
    /// Container id.
    pub id: String,
    /// Its bundle.
    pub bundle: Bundle,
    /// libcontainer state.
    pub state_ref: StateRef,
    /// Host pid of init.
    pub pid: i32,
    /// stdio paths.
    pub stdio: StdioPaths,
    /// Its cgroup.
    pub cgroup: ContainerCgroup,
    /// Whether the shim mounted the rootfs.
    pub rootfs_mounted: bool,
    /// Whether the container has a pid namespace of its own.
    pub private_pid_ns: bool,
    /// Whether a delete after exit needs libcontainer.
    pub plain_teardown: bool,
    /// Init's I/O.
    pub io: ProcessIo,
}

impl Container {
    /// A freshly created container.
    pub fn new(parts: ContainerParts, exit: Arc<ExitCell>) -> Self {
        Self {
            id: parts.id,
            bundle: parts.bundle,
            state_ref: parts.state_ref,
            pid: parts.pid,
            stdio: parts.stdio,
            cgroup: parts.cgroup,
            exit,
            rootfs_mounted: parts.rootfs_mounted,
            private_pid_ns: parts.private_pid_ns,
            plain_teardown: parts.plain_teardown,
            io: parts.io,
            state: Mutex::new(TaskState::Created),
            execs: Mutex::default(),
        }
    }

    /// The current state; `Stopped` once init has exited.
    pub fn state(&self) -> TaskState {
        if self.exit.get().is_some() {
            TaskState::Stopped
        } else {
            *lock(&self.state)
        }
    }

    /// Moves from `from` to `to`; returns the state found when that is not `from`.
    pub fn transition(&self, from: TaskState, to: TaskState) -> Result<(), TaskState> {
        let mut s = lock(&self.state);
        if self.exit.get().is_some() {
            return Err(TaskState::Stopped);
        }
        if *s != from {
            return Err(*s);
        }
        *s = to;
        Ok(())
    }

    /// The exec process `exec_id`.
    pub fn exec(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        lock(&self.execs).get(exec_id).cloned()
    }

    /// Registers a new exec process; false if the id is taken.
    pub fn add_exec(&self, exec: Arc<ExecProcess>) -> bool {
        let mut execs = lock(&self.execs);
        if execs.contains_key(&exec.exec_id) {
            return false;
        }
        execs.insert(exec.exec_id.clone(), exec);
        true
    }

    /// Forgets exec process `exec_id`.
    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        lock(&self.execs).remove(exec_id)
    }

    /// Every exec process.
    pub fn execs(&self) -> Vec<Arc<ExecProcess>> {
        lock(&self.execs).values().cloned().collect()
    }
}
