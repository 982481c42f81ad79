//! Exec processes: extra processes started in a running container (`ctr task exec`,
//! `kubectl exec`, CRI `ExecSync`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::io::procio::ProcessIo;
use crate::runtime::exit::ExitCell;
use crate::service::container::{StdioPaths, TaskState};

/// One exec process of a container.
#[derive(Debug)]
pub struct ExecProcess {
    /// containerd's exec id.
    pub exec_id: String,
    /// The OCI `Process` JSON containerd sent.
    pub process: Vec<u8>,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// Its exit.
    pub exit: Arc<ExitCell>,
    claimed: AtomicBool,
    started: Mutex<Option<Started>>,
}

/// What exists once an exec process runs.
#[derive(Debug, Clone)]
pub struct Started {
    /// Host pid.
    pub pid: i32,
    /// Its I/O.
    pub io: Arc<ProcessIo>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ExecProcess {
    /// A process registered by `Exec`, not started yet.
    pub fn new(exec_id: &str, process: Vec<u8>, stdio: StdioPaths) -> Self {
        Self {
            exec_id: exec_id.to_owned(),
            process,
            stdio,
            exit: Arc::new(ExitCell::default()),
            claimed: AtomicBool::new(false),
            started: Mutex::new(None),
        }
    }

    /// Its state: `Created` until started, `Stopped` once exited.
    pub fn state(&self) -> TaskState {
        if self.exit.get().is_some() {
            TaskState::Stopped
        } else if lock(&self.started).is_some() {
            TaskState::Running
        } else {
            TaskState::Created
        }
    }

    /// Pid and I/O, once started.
    pub fn started(&self) -> Option<Started> {
        lock(&self.started).clone()
    }

    /// Claims the one start this process gets; false if another `Start` had it.
    pub fn claim_start(&self) -> bool {
        !self.claimed.swap(true, Ordering::SeqCst)
    }

    /// Records the start.
    pub fn set_started(&self, started: Started) {
        *lock(&self.started) = Some(started);
    }

    /// Host pid, 0 before start.
    pub fn pid(&self) -> u32 {
        self.started()
            .and_then(|s| u32::try_from(s.pid).ok())
            .unwrap_or_default()
    }
}
