//! Process exits: the daemon's SIGCHLD reaper hands every reaped pid to [`ExitRouter`], which
//! gives each exit to the [`ExitCell`] of the process it belongs to; an [`ExitRoute`] is one
//! process's registration, undone when it is dropped. An exit that arrives before its pid is known (a process that dies while it is being
//! created) is kept while a create is in flight, so it is never lost; it is given only to a
//! process whose create began before that exit was reaped, so an unrelated process reaped
//! earlier under the same pid number (pid reuse) never lends its status to a later one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::util::timestamp;
use tokio::sync::Notify;

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

/// A one-shot slot for a process's exit that any number of tasks (and blocking callers) can
/// wait on.
#[derive(Debug, Default)]
pub struct ExitCell {
    status: Mutex<Option<ExitStatus>>,
    /// Wakes blocking waiters.
    set: Condvar,
    /// Wakes async waiters.
    changed: Notify,
}

impl ExitCell {
    fn slot(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the exit; later calls keep the first status.
    pub fn set(&self, status: ExitStatus) {
        {
            let mut slot = self.slot();
            if slot.is_some() {
                return;
            }
            *slot = Some(status);
        }
        self.set.notify_all();
        self.changed.notify_waiters();
    }

    /// The exit, if it happened.
    pub fn get(&self) -> Option<ExitStatus> {
        self.slot().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitStatus {
        loop {
            // Made before the check: a `notify_waiters` after it is not missed.
            let changed = self.changed.notified();
            if let Some(status) = self.get() {
                return status;
            }
            changed.await;
        }
    }

    /// Waits for the exit for at most `limit`, blocking the calling thread; `None` if it did
    /// not come.
    pub fn wait_blocking(&self, limit: Duration) -> Option<ExitStatus> {
        let slot = self.slot();
        let (slot, _) = self
            .set
            .wait_timeout_while(slot, limit, |s| s.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        slot.clone()
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

    /// Stops routing `pid` to `cell` (its process was deleted before it exited); a later
    /// process that has the same pid now keeps its route.
    fn forget(&self, pid: i32, cell: &Arc<ExitCell>) {
        let mut inner = self.lock();
        if inner
            .watched
            .get(&pid)
            .is_some_and(|w| Arc::ptr_eq(w, cell))
        {
            inner.watched.remove(&pid);
        }
    }

    /// Handles one reaped pid (`code`: its exit status, or 128 + the signal that killed it).
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
    /// reaped after the create began; else when it is. The route lasts until it is dropped.
    pub fn watch(self, pid: i32, cell: Arc<ExitCell>) -> ExitRoute {
        let mut inner = self.router.lock();
        match inner.early.remove(&pid) {
            Some((seq, status)) if seq > self.since => cell.set(status),
            // An exit of another process that had this pid before ours was made.
            _ => {
                inner.watched.insert(pid, Arc::clone(&cell));
            }
        }
        ExitRoute {
            router: Some(Arc::clone(&self.router)),
            pid,
            cell,
        }
    }
}

/// One process's route from the reaper to its exit cell (see [`CreateGuard::watch`]):
/// dropping it stops routing its pid there (a process deleted before it exited).
#[derive(Debug)]
pub struct ExitRoute {
    router: Option<Arc<ExitRouter>>,
    pid: i32,
    cell: Arc<ExitCell>,
}

impl ExitRoute {
    /// A route no reaper feeds: for a process whose exits are set by hand (tests' runtimes).
    #[cfg(test)]
    pub fn unrouted(pid: i32, cell: Arc<ExitCell>) -> Self {
        Self {
            router: None,
            pid,
            cell,
        }
    }
}

impl Drop for ExitRoute {
    fn drop(&mut self) {
        if let Some(router) = &self.router {
            router.forget(self.pid, &self.cell);
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

    /// A fresh cell for process `pid` of the create `guard`, with its route.
    fn watched(guard: CreateGuard, pid: i32) -> (Arc<ExitCell>, ExitRoute) {
        let cell = Arc::new(ExitCell::default());
        let route = guard.watch(pid, Arc::clone(&cell));
        (cell, route)
    }

    /// The exit code `cell` holds.
    fn code(cell: &ExitCell) -> Option<u32> {
        cell.get().map(|s| s.code)
    }

    /// A router of the shim's shape.
    fn router() -> Arc<ExitRouter> {
        Arc::new(ExitRouter::default())
    }

    /// Asserts that `router` keeps no early exit and no create in flight.
    #[track_caller]
    fn assert_nothing_kept(router: &ExitRouter) {
        let inner = router.lock();
        assert!(inner.early.is_empty(), "early exits kept");
        assert!(inner.creating.is_empty(), "creates in flight");
    }

    #[tokio::test]
    async fn routes_exit_to_watched_cell() {
        let router = router();
        let (cell, _route) = watched(router.begin_create(), 42);
        router.on_exit(42, 3);
        assert_eq!(cell.wait().await.code, 3);
    }

    #[test]
    fn keeps_early_exit_during_create() {
        let router = router();
        let guard = router.begin_create();
        router.on_exit(7, 137);
        let (cell, _route) = watched(guard, 7);
        assert_eq!(code(&cell), Some(137));
        assert_nothing_kept(&router);
    }

    #[test]
    fn drops_unknown_exits_outside_create() {
        let router = router();
        router.on_exit(9, 1);
        {
            let _guard = router.begin_create();
            router.on_exit(10, 1);
        }
        let (ten, _ten) = watched(router.begin_create(), 10);
        let (nine, _nine) = watched(router.begin_create(), 9);
        assert_eq!((code(&ten), code(&nine)), (None, None));
        assert_nothing_kept(&router);
    }

    #[test]
    fn an_exit_reaped_before_a_create_began_is_not_its_process() {
        // A slow create keeps unknown exits; an exec begun later gets a pid number that an
        // unrelated process reaped meanwhile had: its status must not be given to the exec.
        let router = router();
        let slow = router.begin_create();
        router.on_exit(500, 0);
        let (cell, _exec) = watched(router.begin_create(), 500);
        assert_eq!(code(&cell), None, "a stale exit was attributed");
        router.on_exit(500, 7);
        assert_eq!(code(&cell), Some(7));
        // The slow create's own process, reaped after it began, still gets its exit.
        router.on_exit(600, 3);
        let (own, _slow) = watched(slow, 600);
        assert_eq!(code(&own), Some(3));
        assert_nothing_kept(&router);
    }

    #[test]
    fn early_exits_are_kept_only_while_a_create_could_claim_them() {
        let router = router();
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
        assert_nothing_kept(&router);
    }

    #[test]
    fn a_dropped_route_forgets_only_its_own_cell() {
        let router = router();
        let (old, old_route) = watched(router.begin_create(), 77);
        router.on_exit(77, 0);
        assert_eq!(code(&old), Some(0));
        // The pid is reused by a later process before the first is deleted.
        let (new, _new_route) = watched(router.begin_create(), 77);
        drop(old_route);
        router.on_exit(77, 9);
        assert_eq!(code(&new), Some(9), "the new route was kept");
        let (gone, route) = watched(router.begin_create(), 78);
        drop(route);
        router.on_exit(78, 1);
        assert_eq!(code(&gone), None, "a dropped route is forgotten");
    }

    #[tokio::test]
    async fn waiters_of_either_kind_see_the_exit() {
        let cell = Arc::new(ExitCell::default());
        assert_eq!(cell.wait_blocking(Duration::from_millis(10)), None);
        let setter = Arc::clone(&cell);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set(ExitStatus::now(4));
        });
        assert_eq!(cell.wait().await.code, 4);
        thread.join().unwrap();
        assert_eq!(
            cell.wait_blocking(Duration::from_secs(1)).map(|s| s.code),
            Some(4)
        );
    }

    #[test]
    fn first_exit_wins() {
        let cell = ExitCell::default();
        cell.set(ExitStatus::now(1));
        cell.set(ExitStatus::now(2));
        assert_eq!(code(&cell), Some(1));
    }

    #[test]
    fn signal_codes_are_kept() {
        assert_eq!(ExitStatus::now(137).code, 137);
        assert_eq!(ExitStatus::now(-1).code, 255);
    }
}
