//! The shim's zygote: a single-threaded process that forks one short-lived worker per
//! operation ([`Op`]: libcontainer's create, exec and start), so that libcontainer's `clone`
//! and process-global `chdir` never run in the multi-threaded shim (runwasi #357, youki
//! #2425). Workers are forked with `CLONE_PARENT`: they, and the container processes they
//! start `as_sibling`, are the shim's children, which it reaps.
//!
//! The first zygote is forked by `main`, before any other thread exists ([`Zygote::fork`]), and
//! the [`Zygote`] value, the shim's handle on it, is given to the runtime. A zygote
//! is a plain process and can be killed (an OOM kill, an operator's `pkill`): the next
//! operation then starts a new one by executing the shim's own binary afresh
//! (`/proc/self/exe --zygote`), never by forking the multi-threaded shim, and goes on in the
//! same request. So no reserve is kept, and no helper's death costs a request.
//!
//! The protocol is the shim's own, so that a zygote from a fresh exec (other addresses) speaks
//! it too: a [`Request`] as JSON in one `SOCK_SEQPACKET` message with its fds beside it
//! (`SCM_RIGHTS`), the first of them a socket of the request's own on which the answer comes.
//! A dead zygote shows as a failed send, a dead worker as the end of its answer socket: the
//! shim never waits on a process that cannot answer.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::error::wire::{OpError, Wire, ZygoteError};
use crate::io::spawn::{spawn, Program};
use crate::runtime::causes::Causes;
use crate::runtime::ops::{self, Done, Op};

/// The argument that makes the binary a zygote (`containerd-shim-nvidia-v2 --zygote LEVEL
/// SHIM-ARGS...`), its socket on fd 3 and the shim log on fd 4.
pub const ZYGOTE_FLAG: &str = "--zygote";
/// Where an executed zygote finds its socket.
const SOCKET_FD: RawFd = 3;
/// Where an executed zygote finds the shim log.
const LOG_FD: RawFd = 4;
/// The largest message: far above any operation's.
const MAX_MESSAGE: usize = 256 * 1024;
/// The most fds a message carries: the answer socket and three stdio fds.
const MAX_FDS: usize = 4;

/// What the shim asks a zygote.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a worker that runs the operation and answers.
    Run(Box<Op>),
    /// Drop the code pages it mapped (see `working_set`) and say how many bytes.
    ReleaseCodePages,
}

/// What comes back on a request's answer socket.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// The worker's outcome.
    Done(Wire<Done>),
    /// The zygote releases its code mappings: their size in bytes.
    Released(usize),
}

/// A live zygote: the shim's end of its socket.
#[derive(Debug)]
struct Live {
    control: OwnedFd,
    pid: u32,
}

/// The shim's handle on its zygote, which it replaces when it finds it dead.
#[derive(Debug)]
pub struct Zygote {
    live: Mutex<Option<Live>>,
    /// The shim log, for a zygote started afresh (it logs to the same FIFO).
    log: Option<OwnedFd>,
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Sends `bytes` and `fds` as one message.
fn send(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The length of the next message, which stays queued (0 once the other end is gone).
fn next_len(socket: BorrowedFd<'_>) -> std::io::Result<usize> {
    loop {
        // A peek leaves the message and its fds for the `recvmsg` that takes them.
        let peek = MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC;
        match nix::sys::socket::recv(socket.as_raw_fd(), &mut [], peek) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Receives one message and its fds; `None` once the other end is gone. The buffer is the
/// message's size (a few kilobytes): a buffer of the largest allowed size, zeroed for every
/// message, cost each operation a quarter megabyte of fresh pages.
fn recv(socket: BorrowedFd<'_>) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    // One byte over the limit, so a message above it shows as truncated.
    let mut buf = vec![0u8; next_len(socket)?.min(MAX_MESSAGE + 1)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors for this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        || len > MAX_MESSAGE;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a message over the size or fd limit",
        ));
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

impl Zygote {
    /// Forks the first zygote, which collects its workers' init causes through `causes` (the
    /// logger's error hook); `log` is the shim log, for a zygote started afresh later. Must
    /// run before any other thread exists. The zygote points its stdout at `/dev/null`:
    /// during `start` the shim's stdout is the pipe containerd reads the socket address from
    /// until its end, and a zygote holding it would keep that pipe open forever.
    pub fn fork(log: Option<OwnedFd>, causes: &Causes) -> Arc<Self> {
        let live = match seqpacket_pair() {
            Ok((ours, theirs)) => {
                // SAFETY: the process is single-threaded here (the caller's contract), so the
                // child may run anything.
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        drop(ours);
                        detach_stdout();
                        serve(theirs, causes)
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => Some(Live {
                        control: ours,
                        pid: child.as_raw().unsigned_abs(),
                    }),
                    Err(e) => {
                        log::warn!("zygote: fork: {e}; one is started when first needed");
                        None
                    }
                }
            }
            Err(e) => {
                log::warn!("zygote: socketpair: {e}; one is started when first needed");
                None
            }
        };
        Arc::new(Self {
            live: Mutex::new(live),
            log,
        })
    }

    /// Starts a zygote by executing this binary afresh, its socket on fd 3 and the shim log on
    /// fd 4: nothing of the multi-threaded shim is forked. A failed exec is an error here
    /// (`io::spawn` reports it for sure).
    fn exec_zygote(&self) -> std::io::Result<Live> {
        let (ours, theirs) = seqpacket_pair()?;
        let fds: Vec<RawFd> = std::iter::once(theirs.as_raw_fd())
            .chain(self.log.as_ref().map(AsRawFd::as_raw_fd))
            .collect();
        // The shim's own arguments after the level: `ps` shows whose zygote it is (read from
        // the kernel: the daemon rewrote the command line it was forked with).
        let args: Vec<OsString> = [ZYGOTE_FLAG, log::max_level().as_str()]
            .into_iter()
            .map(OsString::from)
            .chain(crate::proc_title::current().into_iter().skip(1))
            .collect();
        let program = Program::new("/proc/self/exe", &args, &[])?.named(env!("CARGO_BIN_NAME"))?;
        let pid = spawn(&program, &fds, SOCKET_FD)?;
        drop(theirs);
        Ok(Live {
            control: ours,
            pid: pid.as_raw().unsigned_abs(),
        })
    }

    /// Sends `request` and its `fds` to the zygote, with a fresh answer socket first; a dead
    /// zygote is replaced by a new one (a fresh exec) and the request sent to that. Returns
    /// the answer socket. Blocks.
    fn submit(&self, request: &Request, fds: &[OwnedFd]) -> Result<OwnedFd, ZygoteError> {
        let bytes =
            serde_json::to_vec(request).map_err(|e| ZygoteError::Protocol(e.to_string()))?;
        let (ours, theirs) = seqpacket_pair()?;
        let raw: Vec<RawFd> = std::iter::once(theirs.as_raw_fd())
            .chain(fds.iter().map(AsRawFd::as_raw_fd))
            .collect();
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(z) = live.as_ref() {
            match send(z.control.as_fd(), &bytes, &raw) {
                Ok(()) => return Ok(ours),
                Err(e) => log::warn!(
                    "the shim's zygote {} is gone ({e}); starting a new one from the binary",
                    z.pid
                ),
            }
        }
        let fresh = self
            .exec_zygote()
            .map_err(|e| ZygoteError::Gone(e.to_string()))?;
        log::info!("zygote {} started from the binary", fresh.pid);
        let sent = send(fresh.control.as_fd(), &bytes, &raw);
        *live = Some(fresh);
        sent?;
        Ok(ours)
    }

    /// Runs `op` in a fresh worker; its fds travel beside it. Blocks.
    pub fn run(&self, mut op: Op) -> Result<Wire<Done>, ZygoteError> {
        let fds = op.take_fds();
        let socket = self.submit(&Request::Run(Box::new(op)), &fds)?;
        // The worker holds its copies now; the shim's go.
        drop(fds);
        match answer(&socket)? {
            Answer::Done(outcome) => Ok(outcome),
            Answer::Released(_) => Err(ZygoteError::Protocol("a release answer to a run".into())),
        }
    }

    /// Lets the zygote drop the code pages it mapped (see `working_set`); returns the bytes
    /// released. A dead zygote is not replaced for this. Blocks.
    pub fn release_code_pages(&self) -> Result<usize, ZygoteError> {
        let (ours, theirs) = seqpacket_pair()?;
        {
            let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            let z = live
                .as_ref()
                .ok_or_else(|| ZygoteError::Gone("none running".into()))?;
            let bytes = serde_json::to_vec(&Request::ReleaseCodePages)
                .map_err(|e| ZygoteError::Protocol(e.to_string()))?;
            send(z.control.as_fd(), &bytes, &[theirs.as_raw_fd()])?;
        }
        drop(theirs);
        match answer(&ours)? {
            Answer::Released(n) => Ok(n),
            Answer::Done(_) => Err(ZygoteError::Protocol("a run answer to a release".into())),
        }
    }
}

fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
    }
}

/// The executed zygote's `main`: logs to the shim's log at `level` and serves fd 3.
pub fn serve_inherited(level: &str) -> ! {
    // SAFETY: fds 3 and 4 were placed by `exec_zygote` for this process, and nothing else
    // owns them.
    let (socket, log) = unsafe {
        (
            OwnedFd::from_raw_fd(SOCKET_FD),
            OwnedFd::from_raw_fd(LOG_FD),
        )
    };
    let causes = Causes::default();
    let hook = causes.clone();
    crate::logging::init_on(
        std::fs::File::from(log),
        level.parse().unwrap_or(log::LevelFilter::Info),
        Some(Arc::new(move |message: &str| hook.record(message))),
    );
    serve(socket, &causes)
}

/// The zygote's loop: one request at a time until the shim is gone.
fn serve(control: OwnedFd, causes: &Causes) -> ! {
    open_procfs_once();
    loop {
        let (bytes, mut fds) = match recv(control.as_fd()) {
            Ok(Some(m)) => m,
            // The shim is gone (or its socket broke): nothing is left to serve.
            Ok(None) | Err(_) => std::process::exit(0),
        };
        if fds.is_empty() {
            continue;
        }
        let answer = fds.remove(0);
        match serde_json::from_slice::<Request>(&bytes) {
            Ok(Request::ReleaseCodePages) => {
                // Answer first: the code that answers would otherwise be mapped again right
                // after the release.
                let bytes = crate::working_set::read_only_bytes();
                reply(&answer, &Answer::Released(bytes));
                drop(answer);
                crate::working_set::release_code_pages();
            }
            Ok(Request::Run(op)) => fork_worker(&control, &answer, *op, fds, causes),
            Err(e) => reply(
                &answer,
                &Answer::Done(Err(OpError::Protocol(format!(
                    "a request that does not parse: {e}"
                )))),
            ),
        }
    }
}

/// Opens the private procfs (a detached `fsopen("proc")` mount with `subset=pid`) through
/// which libcontainer and libcgroups read `/proc`, once, here: pathrs keeps it in a
/// process-wide cache that every worker and container process forked from this zygote
/// inherits. Otherwise each create's intermediate process mounts a procfs of its own for its
/// first read, and unmounts it when it exits. Where the kernel cannot make a detached one,
/// pathrs caches nothing, and each process opens `/proc` as before.
fn open_procfs_once() {
    if let Err(e) = pathrs::procfs::ProcfsHandle::new() {
        log::debug!("zygote: no procfs handle to share ({e}); each process opens its own");
    }
}

fn reply(socket: &OwnedFd, answer: &Answer) {
    if let Ok(bytes) = serde_json::to_vec(answer) {
        let _ = send(socket.as_fd(), &bytes, &[]);
    }
}

/// Forks a worker (a sibling of this zygote: the shim's child) that runs `op` and answers on
/// `answer`, then exits. This zygote's copies of the fds are closed when the caller drops them.
fn fork_worker(
    control: &OwnedFd,
    answer: &OwnedFd,
    mut op: Op,
    fds: Vec<OwnedFd>,
    causes: &Causes,
) {
    // SAFETY: a raw clone with CLONE_PARENT and no new stack behaves as fork: the child runs
    // on a copy of this stack. This process is single-threaded, so the child inherits no
    // lock held by another thread.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match pid {
        0 => {
            // The worker: it serves no further request.
            // SAFETY: closing the control socket's descriptor in this process only; the
            // `OwnedFd` it belongs to is never used or dropped here (the process exits).
            unsafe { libc::close(control.as_raw_fd()) };
            let outcome = op.put_fds(fds).and_then(|()| run_caught(op, causes));
            reply(answer, &Answer::Done(outcome));
            // SAFETY: ends the worker at once; nothing of the zygote's is to be dropped here.
            unsafe { libc::_exit(0) }
        }
        -1 => reply(
            answer,
            &Answer::Done(Err(OpError::Protocol(format!(
                "fork a worker: {}",
                std::io::Error::last_os_error()
            )))),
        ),
        _ => {}
    }
}

/// Runs `op`, turning a panic into an error.
fn run_caught(op: Op, causes: &Causes) -> Wire<Done> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ops::dispatch(op, causes)))
        .unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(OpError::Panic(text))
        })
}

/// Receives the answer on `socket`.
fn answer(socket: &OwnedFd) -> Result<Answer, ZygoteError> {
    let (bytes, _) = recv(socket.as_fd())?.ok_or(ZygoteError::WorkerDied)?;
    serde_json::from_slice(&bytes).map_err(|e| ZygoteError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_and_its_fds_cross_whole_and_the_end_is_seen() {
        let (a, b) = seqpacket_pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send(a.as_fd(), b"hello", &[file.as_raw_fd()]).unwrap();
        let (bytes, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(fds.len(), 1);
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fds[0].as_raw_fd())).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"));
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none(), "the other end is gone");
    }

    #[test]
    fn queued_messages_come_one_by_one_at_their_size_and_one_over_the_limit_is_refused() {
        let (a, b) = seqpacket_pair().unwrap();
        // Large enough a socket buffer for the oversized message.
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
        nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::RcvBuf, &(1 << 20)).unwrap();
        send(a.as_fd(), b"first", &[]).unwrap();
        send(a.as_fd(), &[7u8; 3000], &[]).unwrap();
        send(a.as_fd(), &vec![1u8; MAX_MESSAGE + 1], &[]).unwrap();
        let (first, _) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(first, b"first");
        let (second, _) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!((second.len(), second.capacity()), (3000, 3000));
        let over = recv(b.as_fd()).unwrap_err();
        assert_eq!(over.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_send_to_a_dead_peer_fails_instead_of_waiting() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(b);
        assert!(send(a.as_fd(), b"x", &[]).is_err());
    }
}
