//! The shim's zygotes: single-threaded processes, forked before any other thread exists, that
//! fork the short-lived workers libcontainer's create, exec and start run in (see `driver`).
//!
//! A zygote is a plain child of the shim and can be killed like any process. So the shim keeps
//! two: the one workers come from, and a reserve forked from it at start-up. When the first is
//! found dead (it no longer answers), the reserve takes its place and a new reserve is forked
//! from it, in the same call: a killed zygote costs one request nothing. Only when both are gone
//! at once does a create or exec fail ([`ZygoteError::Gone`]); kill, pause, resume and delete
//! never need a zygote (they run in the shim itself).
//!
//! A zygote cannot be made again from the multi-threaded shim: that is what it exists to avoid.

use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock, PoisonError};

use zygote::Zygote;

/// Why no worker could be had.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// Every zygote of the shim has died: no container can be created or exec'd in any more.
    #[error(
        "the shim's zygote and its reserve have died (killed?); restart the shim's containers"
    )]
    Gone,
    /// A live zygote could not fork a worker.
    #[error("the zygote could not fork a worker: {0}")]
    Spawn(String),
    /// The worker died or failed while running an operation.
    #[error("zygote worker: {0}")]
    Worker(#[from] zygote::Error),
}

/// A live zygote, with a pidfd of the shim's own to tell whether it still runs: asking the
/// zygote itself could wait forever once it is dead, as a process forked from it may still
/// hold its end of the pipe.
struct Live {
    zygote: Zygote,
    pid: i32,
    pidfd: OwnedFd,
}

impl Live {
    /// Takes a fresh zygote: learns its pid and opens a pidfd on it.
    fn adopt(zygote: Zygote) -> Result<Self, ZygoteError> {
        let pid = zygote.try_run(|()| std::process::id() as i32, ())?;
        // The zygote is the shim's child and has just answered, so the pid is still its own.
        let pidfd = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| ZygoteError::Spawn(format!("the zygote answered pid {pid}")))
            .and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    .map_err(|e| ZygoteError::Spawn(format!("pidfd_open {pid}: {e}")))
            })?;
        Ok(Self { zygote, pid, pidfd })
    }

    /// Whether the zygote still runs (its pidfd is not readable yet).
    fn alive(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        matches!(
            rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())),
            Ok(0)
        )
    }

    /// A new zygote forked from this one, which first closes its copies of the sockets this one
    /// held (its pipe to the shim among them), so that this one's death is not hidden from the
    /// shim by a sibling holding its pipe open.
    fn fork_reserve(&self) -> Result<Live, ZygoteError> {
        let inherited = socket_inodes(&format!("/proc/{}/fd", self.pid));
        let reserve = Live::adopt(spawn_from(&self.zygote)?)?;
        reserve.zygote.try_run(settle_reserve, inherited)?;
        Ok(reserve)
    }
}

/// The inodes of the sockets open in the fd directory `dir`.
fn socket_inodes(dir: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Readies a new reserve zygote, which then waits, perhaps for ever: closes its copies of the
/// sockets with one of `inodes` and drops the code pages it maps (see `working_set`).
fn settle_reserve(inodes: Vec<u64>) {
    close_sockets(&inodes);
    crate::working_set::release_code_pages();
}

/// Closes this process's fds on sockets with one of `inodes`.
fn close_sockets(inodes: &[u64]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            let inode: u64 = t
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            inodes.contains(&inode).then_some(fd)
        })
        .collect();
    for fd in fds {
        // SAFETY: closing an fd this process holds and does not use (inherited, see
        // `fork_reserve`); nothing else in this single-threaded process refers to it.
        unsafe { libc::close(fd) };
    }
}

/// The live zygotes, the one workers come from first.
struct Pool {
    live: Mutex<Vec<Live>>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// `z.spawn()`, which panics when `z` has died between a check and the fork.
fn spawn_from(z: &Zygote) -> Result<Zygote, ZygoteError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| z.spawn())).map_err(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        ZygoteError::Spawn(text)
    })
}

/// Forks the first zygote and runs `setup` in it, then forks its reserve (which inherits what
/// `setup` did). Must run before any other thread exists; a second call does nothing.
pub fn init<E>(setup: fn(()) -> Result<(), E>)
where
    E: std::fmt::Display + serde::Serialize + for<'de> serde::Deserialize<'de> + 'static,
{
    if POOL.get().is_some() {
        return;
    }
    let first = Zygote::new();
    match first.try_run(setup, ()) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("zygote set-up: {e}"),
        Err(e) => log::warn!("zygote set-up: {e}"),
    }
    let first = match Live::adopt(first) {
        Ok(first) => first,
        Err(e) => {
            log::error!("zygote: {e}");
            let _ = POOL.set(Pool {
                live: Mutex::new(Vec::new()),
            });
            return;
        }
    };
    let mut live = Vec::with_capacity(2);
    match first.fork_reserve() {
        Ok(reserve) => {
            live.push(first);
            live.push(reserve);
        }
        Err(e) => {
            log::warn!("no reserve zygote: {e}");
            live.push(first);
        }
    }
    let _ = POOL.set(Pool {
        live: Mutex::new(live),
    });
}

/// A fresh worker, forked from the first live zygote; a dead zygote is dropped (and reaped) and
/// the reserve replaced on the way.
pub fn worker() -> Result<Zygote, ZygoteError> {
    let pool = POOL.get().ok_or(ZygoteError::Gone)?;
    let mut live = pool.live.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|z| {
        let alive = z.alive();
        if !alive {
            log::warn!("the shim's zygote {} died; dropped", z.pid);
        }
        alive
    });
    let first = live.first().ok_or(ZygoteError::Gone)?;
    let worker = spawn_from(&first.zygote)?;
    if live.len() < 2 {
        match live[0].fork_reserve() {
            Ok(reserve) => {
                log::info!("reserve zygote {} forked from {}", reserve.pid, live[0].pid);
                live.push(reserve);
            }
            Err(e) => log::warn!("no reserve zygote: {e}"),
        }
    }
    Ok(worker)
}

/// Runs `f` in every live zygote (for what each should do once the shim is quiet); returns
/// the sum of the answers.
pub fn each(f: fn(()) -> usize) -> Result<usize, ZygoteError> {
    let pool = POOL.get().ok_or(ZygoteError::Gone)?;
    let live = pool.live.lock().unwrap_or_else(PoisonError::into_inner);
    let running: Vec<&Live> = live.iter().filter(|z| z.alive()).collect();
    if running.is_empty() {
        return Err(ZygoteError::Gone);
    }
    Ok(running
        .iter()
        .filter_map(|z| z.zygote.try_run(f, ()).ok())
        .sum())
}
