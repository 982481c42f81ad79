//! The copy of a process's output from the pipe it writes to into where containerd asked for it
//! (a FIFO, a log file, a logging binary's pipe, or nowhere), as the runc shim copies: the
//! process never holds a host file, so it cannot read, truncate, `chmod` or `chown` one
//! through `/proc/self/fd`.
//!
//! One thread per pipe, blocking in `poll` until the process writes, then moving the data with
//! `splice` (no copy through user space) or, where the kernel refuses that (a file opened for
//! append), `read` and `write`. The thread ends at the pipe's end of file, once every process
//! holding its write end is gone. [`OutputCopy::flushed`] tells an exit report when what the
//! process wrote has reached the destination.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::SpliceFFlags;
use rustix::event::{PollFd, PollFlags};
use tokio::sync::watch;

use crate::error::{Result, ShimError};

/// How much one `splice` or `read` moves at most: a default pipe's capacity.
const CHUNK: usize = 64 * 1024;

/// Where a copy writes.
#[derive(Debug)]
pub struct Sink {
    fd: OwnedFd,
    /// Whether `splice` may write to it (not to a file opened with `O_APPEND`).
    splice: bool,
}

impl Sink {
    /// A pipe, a FIFO or a device: written with `splice`.
    pub fn spliceable(fd: OwnedFd) -> Self {
        Self { fd, splice: true }
    }

    /// A file opened for append, which `splice` refuses: written with `write`.
    pub fn appended(fd: OwnedFd) -> Self {
        Self { fd, splice: false }
    }

    /// The same destination, for a second copy (stderr to where stdout goes).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            splice: self.splice,
        })
    }
}

/// What the copy thread and the exit report share.
#[derive(Debug)]
struct Progress {
    /// The pipe's read end (the thread reads it; `flushed` asks how much it holds).
    pipe: OwnedFd,
    /// Set while the thread holds data it has taken from the pipe and not written yet.
    busy: AtomicBool,
}

/// A running copy of one output pipe.
#[derive(Debug)]
pub struct OutputCopy {
    progress: Arc<Progress>,
    done: watch::Receiver<bool>,
}

impl OutputCopy {
    /// Makes a pipe for a process's output and starts copying it into `sink`; returns the
    /// pipe's write end, for the process, and the copy.
    pub fn start(id: &str, what: &str, sink: Sink) -> Result<(OwnedFd, Self)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ShimError::io(id, format!("create {what} pipe"), e.into()))?;
        let progress = Arc::new(Progress {
            pipe: read,
            busy: AtomicBool::new(false),
        });
        let (tx, done) = watch::channel(false);
        let shared = Arc::clone(&progress);
        std::thread::Builder::new()
            .name(format!("copy-{what}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                copy(&shared, &sink);
                let _ = tx.send(true);
            })
            .map_err(|e| ShimError::io(id, format!("start the {what} copy"), e))?;
        Ok((write, Self { progress, done }))
    }

    /// Waits, until `deadline`, for what the process wrote to reach the destination: the copy
    /// ended (every writer is gone and the pipe is empty), or the pipe is empty and the copy
    /// holds nothing (a process the container left behind still holds the pipe).
    pub async fn flushed(&self, deadline: tokio::time::Instant) {
        let mut done = self.done.clone();
        let mut pause = Duration::from_millis(1);
        loop {
            if *done.borrow() || self.progress.idle() {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let wake = (now + pause).min(deadline);
            tokio::select! {
                _ = done.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Progress {
    /// Nothing is in the pipe and nothing is on its way out.
    fn idle(&self) -> bool {
        // Taken in this order: data leaves the pipe only after `busy` is set.
        unread(&self.pipe) == 0 && !self.busy.load(Ordering::SeqCst)
    }
}

/// Bytes in the pipe of `fd` not read yet.
pub fn unread(fd: &impl AsRawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: a valid pipe descriptor and an int out-parameter, as FIONREAD takes.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// Waits until the pipe has data or has no writer left; false once it will give no more.
fn wait_readable(pipe: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pipe, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {
                let revents = fds[0].revents();
                // POLLHUP with data still there: read that first.
                return revents.contains(PollFlags::IN)
                    || (revents.contains(PollFlags::HUP) && unread(pipe) > 0);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The copy thread: moves the pipe's data into `sink` until the pipe's end of file. A sink
/// that fails (a logging binary that exited) no longer takes data, but the pipe is still
/// drained, so the process never blocks on a full pipe.
fn copy(progress: &Progress, sink: &Sink) {
    let mut use_splice = sink.splice;
    let mut sink_ok = true;
    let mut buf = Vec::new();
    while wait_readable(&progress.pipe) {
        progress.busy.store(true, Ordering::SeqCst);
        let moved = if !sink_ok {
            discard(&progress.pipe, &mut buf)
        } else if use_splice {
            match nix::fcntl::splice(
                progress.pipe.as_fd(),
                None,
                sink.fd.as_fd(),
                None,
                CHUNK,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(n) => Ok(n),
                Err(Errno::EINVAL) => {
                    // A sink splice cannot write to: copy through a buffer from now on.
                    use_splice = false;
                    Ok(1)
                }
                Err(Errno::EINTR | Errno::EAGAIN) => Ok(1),
                Err(e) => Err(Some(e)),
            }
        } else {
            read_write(&progress.pipe, &sink.fd, &mut buf)
        };
        progress.busy.store(false, Ordering::SeqCst);
        match moved {
            Ok(0) | Err(None) => break,
            Ok(_) => {}
            Err(Some(_)) => sink_ok = false,
        }
    }
}

/// One `read` from the pipe and a complete `write` of it to `sink`: `Ok(0)` at end of file,
/// `Err(None)` when the pipe fails, `Err(Some(_))` when the sink does.
fn read_write(
    pipe: &OwnedFd,
    sink: &OwnedFd,
    buf: &mut Vec<u8>,
) -> std::result::Result<usize, Option<Errno>> {
    buf.resize(CHUNK, 0);
    let n = match nix::unistd::read(pipe.as_raw_fd(), buf) {
        Ok(n) => n,
        Err(Errno::EINTR | Errno::EAGAIN) => return Ok(1),
        Err(_) => return Err(None),
    };
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        match nix::unistd::write(sink, rest) {
            Ok(written) => rest = &rest[written..],
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(n)
}

/// Reads and drops what the pipe holds (the sink failed).
fn discard(pipe: &OwnedFd, buf: &mut Vec<u8>) -> std::result::Result<usize, Option<Errno>> {
    buf.resize(CHUNK, 0);
    match nix::unistd::read(pipe.as_raw_fd(), buf) {
        Ok(n) => Ok(n),
        Err(Errno::EINTR | Errno::EAGAIN) => Ok(1),
        Err(_) => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    fn deadline(secs: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn output_reaches_an_appended_file_and_the_copy_ends_with_its_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "before\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let (writer, copy) = OutputCopy::start("c", "stdout", Sink::appended(file.into())).unwrap();
        let mut writer = File::from(writer);
        writer.write_all(b"one\n").unwrap();
        writer.write_all(&vec![b'x'; 200_000]).unwrap();
        drop(writer);
        copy.flushed(deadline(5)).await;
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), "before\none\n".len() + 200_000);
        assert!(got.starts_with(b"before\none\n"));
        ended(&copy).await;
    }

    /// Waits for the copy to end, failing the test after 5 s.
    async fn ended(copy: &OutputCopy) {
        let mut done = copy.done.clone();
        tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d))
            .await
            .expect("the copy ends once its writers are gone")
            .unwrap();
    }

    #[tokio::test]
    async fn output_is_spliced_into_a_fifo_and_flushed_while_a_writer_lingers() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let sink = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&fifo)
            .unwrap();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let (writer, copy) =
            OutputCopy::start("c", "stdout", Sink::spliceable(sink.into())).unwrap();
        // A process left behind holds the write end: no end of file, but the output is out.
        let lingering = writer.try_clone().unwrap();
        File::from(writer).write_all(b"hello\n").unwrap();
        copy.flushed(deadline(5)).await;
        assert!(!*copy.done.borrow());
        let mut got = String::new();
        let _ = reader.read_to_string(&mut got);
        assert_eq!(got, "hello\n");
        drop(lingering);
        ended(&copy).await;
    }

    #[tokio::test]
    async fn a_failed_sink_still_drains_the_pipe() {
        let (sink_read, sink_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(sink_read);
        // SAFETY: ignoring SIGPIPE for the test process: the write then fails with EPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let (writer, copy) =
            OutputCopy::start("c", "stderr", Sink::spliceable(sink_write)).unwrap();
        let mut writer = File::from(writer);
        // More than a pipe holds: it would block for ever if nobody drained it.
        for _ in 0..8 {
            writer.write_all(&vec![b'y'; 64 * 1024]).unwrap();
        }
        drop(writer);
        ended(&copy).await;
    }
}
