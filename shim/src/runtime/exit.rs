//! Process exits: the shim's SIGCHLD reaper (in `containerd-shim`) publishes every reaped pid
//! on its monitor; [`ExitRouter`] hands each exit to the [`ExitCell`] of the process it belongs
//! to. An exit that arrives before its pid is known (a process that dies while it is being
//! created) is kept while a create is in flight, so it is never lost; it is given only to a
//! process whose create began before that exit was reaped, so an unrelated process reaped
//! earlier under the same pid number (pid reuse) never lends its status to a later one.

use std::collections::{BTreeMap, HashMap};
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
    /// Exits of pids not watched yet, with the sequence number they were reaped at.
    early: HashMap<i32, (u64, ExitStatus)>,
    /// Creates in flight, by the sequence number they began at (how many began then).
    creating: BTreeMap<u64, usize>,
    /// The sequence number of the last reaped exit.
    seq: u64,
}

impl Inner {
    /// Drops the early exits no create in flight can claim: those reaped before the oldest
    /// of them began (all of them when none is in flight).
    fn prune(&mut self) {
        match self.creating.keys().next().copied() {
            None => self.early.clear(),
            Some(oldest) => self.early.retain(|_, (seq, _)| *seq > oldest),
        }
    }
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

    /// Marks a create in flight until the guard drops or watches its process; exits of unknown
    /// pids reaped meanwhile are kept for it.
    pub fn begin_create(self: &Arc<Self>) -> CreateGuard {
        let mut inner = self.lock();
        let since = inner.seq;
        *inner.creating.entry(since).or_default() += 1;
        CreateGuard {
            router: Arc::clone(self),
            since,
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
        inner.seq += 1;
        if let Some(cell) = inner.watched.remove(&pid) {
            cell.set(status);
        } else if !inner.creating.is_empty() {
            let seq = inner.seq;
            inner.early.insert(pid, (seq, status));
        }
    }
}

/// A create in flight; see [`ExitRouter::begin_create`].
#[derive(Debug)]
pub struct CreateGuard {
    router: Arc<ExitRouter>,
    /// The sequence number of the last exit reaped before this create began.
    since: u64,
}

impl CreateGuard {
    /// Delivers the exit of `pid`, the process this create made, to `cell`: now, if it was
    /// reaped after the create began; else when it is.
    pub fn watch(self, pid: i32, cell: Arc<ExitCell>) {
        let mut inner = self.router.lock();
        match inner.early.remove(&pid) {
            Some((seq, status)) if seq > self.since => cell.set(status),
            // An exit of another process that had this pid before ours was made.
            _ => {
                inner.watched.insert(pid, cell);
            }
        }
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        let mut inner = self.router.lock();
        if let Some(n) = inner.creating.get_mut(&self.since) {
            *n -= 1;
            if *n == 0 {
                inner.creating.remove(&self.since);
            }
        }
        inner.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_exit_to_watched_cell() {
        let router = Arc::new(ExitRouter::default());
        let cell = Arc::new(ExitCell::default());
        router.begin_create().watch(42, Arc::clone(&cell));
        router.on_exit(42, 3);
        assert_eq!(cell.wait().await.code, 3);
    }

    #[test]
    fn keeps_early_exit_during_create() {
        let router = Arc::new(ExitRouter::default());
        let guard = router.begin_create();
        router.on_exit(7, 137);
        let cell = Arc::new(ExitCell::default());
        guard.watch(7, Arc::clone(&cell));
        assert_eq!(cell.get().map(|s| s.code), Some(137));
        assert!(router.lock().early.is_empty());
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
        router.begin_create().watch(10, Arc::clone(&cell));
        router.begin_create().watch(9, Arc::clone(&cell));
        assert!(cell.get().is_none());
        assert!(router.lock().early.is_empty());
    }

    #[test]
    fn an_exit_reaped_before_a_create_began_is_not_its_process() {
        // A slow create keeps unknown exits; an exec begun later gets a pid number that an
        // unrelated process reaped meanwhile had: its status must not be given to the exec.
        let router = Arc::new(ExitRouter::default());
        let slow = router.begin_create();
        router.on_exit(500, 0);
        let exec = router.begin_create();
        let cell = Arc::new(ExitCell::default());
        exec.watch(500, Arc::clone(&cell));
        assert!(cell.get().is_none(), "a stale exit was attributed");
        router.on_exit(500, 7);
        assert_eq!(cell.get().map(|s| s.code), Some(7));
        // The slow create's own process, reaped after it began, still gets its exit.
        router.on_exit(600, 3);
        let own = Arc::new(ExitCell::default());
        slow.watch(600, Arc::clone(&own));
        assert_eq!(own.get().map(|s| s.code), Some(3));
        assert!(router.lock().early.is_empty());
        assert!(router.lock().creating.is_empty());
    }

    #[test]
    fn early_exits_are_kept_only_while_a_create_could_claim_them() {
        let router = Arc::new(ExitRouter::default());
        let first = router.begin_create();
        router.on_exit(1, 0);
        let second = router.begin_create();
        router.on_exit(2, 0);
        drop(first);
        // Only the second create is in flight: the exit reaped before it began is dropped.
        assert_eq!(
            router.lock().early.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        drop(second);
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
