//! One container served by the shim: what containerd told us at create, what libcontainer
//! gave back, and the task state machine.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::types::task::Status;

use crate::bundle::Bundle;
use crate::cgroup::ContainerCgroup;
use crate::driver::StateRef;
use crate::exit::ExitCell;
use crate::stdio::StdinForwarder;

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
    state: Mutex<TaskState>,
    stdin: Mutex<Option<StdinForwarder>>,
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
    /// stdin forwarder, if stdin is a FIFO.
    pub stdin: Option<StdinForwarder>,
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
            state: Mutex::new(TaskState::Created),
            stdin: Mutex::new(parts.stdin),
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

    /// Closes init's stdin (`CloseIO`).
    pub fn close_stdin(&self) {
        if let Some(fwd) = lock(&self.stdin).take() {
            fwd.close();
        }
    }
}
