//! Process exits: the shim's SIGCHLD reaper (in `containerd-shim`) publishes every reaped pid
//! on its monitor; [`ExitRouter`] hands each exit to the [`ExitCell`] of the process it belongs
//! to. An exit that arrives before its pid is known (a container that dies during create) is
//! kept while a create is in flight, so it is never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use containerd_shim::monitor::{ExitEvent, Subject, Topic};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::util::timestamp;
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: u32,
    /// When the shim reaped it.
    pub at: Timestamp,
}

impl ExitStatus {
    /// An exit with status `code`, stamped now.
    pub fn now(code: i32) -> Self {
        Self {
            code: u32::try_from(code).unwrap_or(255),
            at: timestamp().unwrap_or_default(),
        }
    }
}

/// A one-shot slot for a process's exit that any number of tasks can wait on.
#[derive(Debug)]
pub struct ExitCell {
    tx: watch::Sender<Option<ExitStatus>>,
}

impl Default for ExitCell {
    fn default() -> Self {
        Self {
            tx: watch::channel(None).0,
        }
    }
}

impl ExitCell {
    /// Records the exit; later calls keep the first status.
    pub fn set(&self, status: ExitStatus) {
        self.tx.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(status);
                true
            } else {
                false
            }
        });
    }

    /// The exit, if it happened.
    pub fn get(&self) -> Option<ExitStatus> {
        self.tx.borrow().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.tx.subscribe();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => status.clone(),
            // The sender lives in `self`, so it cannot be dropped while we borrow it.
            Err(_) => None,
        };
        status.unwrap_or_else(|| ExitStatus::now(255))
    }
}

#[derive(Debug, Default)]
struct Inner {
    watched: HashMap<i32, Arc<ExitCell>>,
    early: HashMap<i32, ExitStatus>,
    creating: usize,
}

/// Routes reaped pids to the cells of the processes the shim runs.
#[derive(Debug, Default)]
pub struct ExitRouter {
    inner: Mutex<Inner>,
}

impl ExitRouter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to the shim's reaper and routes exits until the reaper goes away.
    pub async fn spawn(self: &Arc<Self>) -> containerd_shim::Result<()> {
        let mut sub = containerd_shim::monitor::monitor_subscribe(Topic::Pid).await?;
        let router = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(ExitEvent { subject, exit_code }) = sub.rx.recv().await {
                if let Subject::Pid(pid) = subject {
                    router.on_exit(pid, exit_code);
                }
            }
        });
        Ok(())
    }

    /// Marks a create in flight until the guard drops; exits of unknown pids are kept meanwhile.
    pub fn begin_create(self: &Arc<Self>) -> CreateGuard {
        self.lock().creating += 1;
        CreateGuard {
            router: Arc::clone(self),
        }
    }

    /// Delivers `pid`'s exit to `cell`, now if it already happened.
    pub fn watch(&self, pid: i32, cell: Arc<ExitCell>) {
        let mut inner = self.lock();
        match inner.early.remove(&pid) {
            Some(status) => cell.set(status),
            None => {
                inner.watched.insert(pid, cell);
            }
        }
    }

    /// Stops routing `pid` (its container was deleted before it exited).
    pub fn forget(&self, pid: i32) {
        self.lock().watched.remove(&pid);
    }

    /// Handles one reaped pid.
    pub fn on_exit(&self, pid: i32, code: i32) {
        let status = ExitStatus::now(code);
        let mut inner = self.lock();
        if let Some(cell) = inner.watched.remove(&pid) {
            cell.set(status);
        } else if inner.creating > 0 {
            inner.early.insert(pid, status);
        }
    }
}

/// Keeps early exits while alive; see [`ExitRouter::begin_create`].
#[derive(Debug)]
pub struct CreateGuard {
    router: Arc<ExitRouter>,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        let mut inner = self.router.lock();
        inner.creating = inner.creating.saturating_sub(1);
        if inner.creating == 0 {
            inner.early.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_exit_to_watched_cell() {
        let router = Arc::new(ExitRouter::default());
        let cell = Arc::new(ExitCell::default());
        router.watch(42, Arc::clone(&cell));
        router.on_exit(42, 3);
        assert_eq!(cell.wait().await.code, 3);
    }

    #[test]
    fn keeps_early_exit_during_create() {
        let router = Arc::new(ExitRouter::default());
        let guard = router.begin_create();
        router.on_exit(7, 137);
        let cell = Arc::new(ExitCell::default());
        router.watch(7, Arc::clone(&cell));
        drop(guard);
        assert_eq!(cell.get().map(|s| s.code), Some(137));
    }

    #[test]
    fn drops_unknown_exits_outside_create() {
        let router = Arc::new(ExitRouter::default());
        router.on_exit(9, 1);
        {
            let _guard = router.begin_create();
            router.on_exit(10, 1);
        }
        let cell = Arc::new(ExitCell::default());
        router.watch(10, Arc::clone(&cell));
        router.watch(9, Arc::clone(&cell));
        assert!(cell.get().is_none());
        assert!(router.lock().early.is_empty());
    }

    #[test]
    fn first_exit_wins() {
        let cell = ExitCell::default();
        cell.set(ExitStatus::now(1));
        cell.set(ExitStatus::now(2));
        assert_eq!(cell.get().map(|s| s.code), Some(1));
    }

    #[test]
    fn signal_codes_are_kept() {
        assert_eq!(ExitStatus::now(137).code, 137);
        assert_eq!(ExitStatus::now(-1).code, 255);
    }
}
