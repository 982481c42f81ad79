//! A process's stdio from containerd's request: every fd the process gets is a pipe of the
//! shim's own, as under the runc shim, so no host file, FIFO or log file ever reaches the
//! container (through `/proc/self/fd` a process can read, truncate, `chmod` and `chown` the
//! file behind any fd it holds).
//!
//! stdout and stderr: pipes copied by the shim (see [`copy`](crate::io::copy)) into the FIFO
//! (opened read-write, as the Go shim keeps a reader open too, so a client that goes away does
//! not kill the container with SIGPIPE), the `file://` log (appended), the `binary://` logging
//! program's pipes, or nowhere. stdin: a pipe fed from the FIFO by a small task that
//! [`StdinForwarder::close`] ends (containerd's `CloseIO`), or a pipe at its end of file.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::error::{Result, ShimError};
use crate::io::copy::{unread, OutputCopy, Sink};
use crate::io::procio::StdioPaths;

/// The three fds handed to a new process, the forwarder feeding its stdin and the copies of
/// its output.
#[derive(Debug)]
pub struct ProcessStdio {
    /// stdin, stdout, stderr for the process: pipes, each.
    pub fds: [OwnedFd; 3],
    /// Present when stdin comes from a FIFO.
    pub stdin: Option<StdinForwarder>,
    /// The copies of stdout and stderr.
    pub outputs: Vec<OutputCopy>,
}

fn pipe(id: &str, what: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io(id, format!("create {what} pipe"), e.into()))
}

/// Where output for `path` goes, opened in the shim.
fn open_sink(id: &str, path: &str) -> Result<Sink> {
    if path.is_empty() {
        return OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map(|f| Sink::spliceable(f.into()))
            .map_err(|e| ShimError::io(id, "open /dev/null", e));
    }
    if let Some(file) = path.strip_prefix("file://") {
        // A log file: created if missing, appended to.
        if let Some(dir) = Path::new(file).parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ShimError::io(id, format!("create log dir {}", dir.display()), e))?;
        }
        return OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(file)
            .map(|f| Sink::appended(f.into()))
            .map_err(|e| ShimError::io(id, format!("open log file {file}"), e));
    }
    if path.contains("://") {
        return Err(ShimError::Unimplemented {
            id: id.to_owned(),
            what: "stdio URIs other than FIFOs, file:// and binary://",
        });
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(|f| Sink::spliceable(f.into()))
        .map_err(|e| ShimError::io(id, format!("open stdio {path}"), e))
}

impl ProcessStdio {
    /// Opens the stdio containerd asked for; empty paths give an empty stdin and discarded
    /// output; a `binary://` logger is told `namespace`.
    pub fn open(id: &str, namespace: &str, stdio: &StdioPaths) -> Result<Self> {
        let (stdin, stdout, stderr) = (
            stdio.stdin.as_str(),
            stdio.stdout.as_str(),
            stdio.stderr.as_str(),
        );
        let (out_sink, err_sink) = if stdout.starts_with("binary://") {
            let (out, err) = crate::io::logdriver::start(id, namespace, stdout)?;
            (Sink::spliceable(out), Sink::spliceable(err))
        } else if stderr == stdout && !stderr.is_empty() {
            // The same place (ctr's `--log-uri file://...`): opened once, written by both
            // copies, as the runc shim shares one writer.
            let sink = open_sink(id, stdout)?;
            let shared = sink
                .try_clone()
                .map_err(|e| ShimError::io(id, "share the output", e))?;
            (sink, shared)
        } else {
            (open_sink(id, stdout)?, open_sink(id, stderr)?)
        };
        // A pipe each, as under the runc shim, even to one place: a process that opens its
        // stderr for reading (`/proc/self/fd/2`) must not be able to take its stdout back.
        let (out, out_copy) = OutputCopy::start(id, "stdout", out_sink)?;
        let (err, err_copy) = OutputCopy::start(id, "stderr", err_sink)?;
        let outputs = vec![out_copy, err_copy];
        let (reader, writer) = pipe(id, "stdin")?;
        let stdin = if stdin.is_empty() {
            // No writer: the process reads end of file at once.
            drop(writer);
            None
        } else {
            Some(StdinForwarder::spawn(id, PathBuf::from(stdin), writer)?)
        };
        Ok(Self {
            fds: [reader, out, err],
            stdin,
            outputs,
        })
    }
}

/// Copies a stdin FIFO into the pipe a process reads, until the FIFO's writers are gone or
/// [`StdinForwarder::close`] is called; then closes the pipe, so the process sees EOF.
///
/// The FIFO is held by an `O_PATH` handle and opened through `/proc/self/fd`, as containerd's
/// Go `fifo` package does: the reader's blocking open (which waits for the client's writer, so
/// an early read never sees a false EOF) can then always be released by opening the write
/// side through the same handle, even after the client unlinked the FIFO.
#[derive(Debug)]
pub struct StdinForwarder {
    handle: Arc<OwnedFd>,
    close: Arc<Notify>,
    opened: Arc<AtomicBool>,
}

impl StdinForwarder {
    fn spawn(id: &str, fifo: PathBuf, writer: OwnedFd) -> Result<Self> {
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&fifo)
            .map(OwnedFd::from)
            .map_err(|e| ShimError::io(id, format!("open stdin {}", fifo.display()), e))?;
        let handle = Arc::new(handle);
        let sender = pipe::Sender::from_owned_fd(writer)
            .map_err(|e| ShimError::io(id, "register stdin pipe", e))?;
        let close = Arc::new(Notify::new());
        let opened = Arc::new(AtomicBool::new(false));
        let (h, notify, flag, id) = (
            Arc::clone(&handle),
            Arc::clone(&close),
            Arc::clone(&opened),
            id.to_owned(),
        );
        tokio::spawn(async move {
            tokio::select! {
                res = forward(h, sender, &flag) => {
                    if let Err(e) = res {
                        log::warn!("container {id}: stdin from {}: {e}", fifo.display());
                    }
                }
                _ = notify.notified() => {}
            }
        });
        Ok(Self {
            handle,
            close,
            opened,
        })
    }

    /// Closes the process's stdin now (containerd's `CloseIO`).
    pub fn close(&self) {
        self.close.notify_one();
        if !self.opened.load(Ordering::SeqCst) {
            // Release the pending blocking open: a writer that comes and goes at once.
            let _: Option<File> = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(proc_path(&self.handle))
                .ok();
        }
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        self.close();
    }
}

/// A process's output FIFOs, held by `O_PATH` handles (which neither read nor write), so that
/// its exit can wait until the client has read what it wrote.
///
/// containerd's client cancels its FIFO readers as soon as `Delete` returns (`ctr run`,
/// `ctr task exec`), so output still in a FIFO when the exit is reported may be lost under
/// load. The data is in the FIFO by the time the process has exited; what the shim waits for
/// is that a client reading it has taken it out.
#[derive(Debug, Default)]
pub struct OutputFifos(Vec<OwnedFd>);

impl OutputFifos {
    /// Handles on those of `paths` that are FIFOs (not `file://`, `binary://` or empty).
    pub fn open(paths: &[&str]) -> Self {
        let mut handles: Vec<OwnedFd> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for path in paths {
            if path.is_empty() || path.contains("://") || seen.contains(path) {
                continue;
            }
            seen.push(path);
            let Ok(file) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(path)
            else {
                continue;
            };
            if file
                .metadata()
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
            {
                handles.push(file.into());
            }
        }
        Self(handles)
    }

    /// Waits, up to `limit`, until no FIFO holds unread output while a client is there to
    /// read it; a FIFO without a reader is not waited for.
    pub async fn read_by_client(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for handle in &self.0 {
            // A writer of our own, to ask the pipe: it opens only while a reader is there
            // (ENXIO otherwise), and tells when that reader is gone (POLLERR).
            let Ok(writer) = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(proc_path(handle))
            else {
                continue;
            };
            let mut pause = std::time::Duration::from_millis(1);
            while unread(&writer) > 0 && has_reader(&writer) {
                if tokio::time::Instant::now() + pause > deadline {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Whether the pipe of `fifo` (a write end) still has a reader.
fn has_reader(fifo: &File) -> bool {
    let mut fd = libc::pollfd {
        fd: fifo.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n >= 0 && fd.revents & libc::POLLERR == 0
}

fn proc_path(handle: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Opens the FIFO behind `handle` for reading, which waits until the client opens its writer
/// (or [`StdinForwarder::close`] releases it): for as long as that takes, on a small thread of
/// its own, as the output copies have theirs (the blocking pool serves requests).
async fn open_reader(handle: Arc<OwnedFd>) -> std::io::Result<File> {
    let (opened, open) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-open".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = opened.send(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(proc_path(&handle)),
            );
        })?;
    open.await.map_err(std::io::Error::other)?
}

async fn forward(
    handle: Arc<OwnedFd>,
    mut sender: pipe::Sender,
    opened: &AtomicBool,
) -> std::io::Result<()> {
    let file = open_reader(handle).await?;
    opened.store(true, Ordering::SeqCst);
    let mut receiver = pipe::Receiver::from_file(file)?;
    match tokio::io::copy(&mut receiver, &mut sender).await {
        Ok(_) => Ok(()),
        // The process closed its stdin or exited: nothing more to deliver.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    fn fd_target(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    /// A client's reader of `fifo`, as containerd's opens it.
    fn client_reader(fifo: &Path) -> File {
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        reader.unwrap()
    }

    /// Writes `bytes` into `fifo` as a process's output would arrive.
    fn write_to(fifo: &Path, bytes: &[u8]) {
        let mut writer = OpenOptions::new().write(true).open(fifo).unwrap();
        writer.write_all(bytes).unwrap();
    }

    fn paths(stdin: &str, stdout: &str, stderr: &str) -> StdioPaths {
        StdioPaths {
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal: false,
        }
    }

    /// Stdio for `stdin` alone, and the pipe the process would read it from.
    fn with_stdin(fifo: &Path) -> (ProcessStdio, File) {
        let stdio =
            ProcessStdio::open("c", "default", &paths(fifo.to_str().unwrap(), "", "")).unwrap();
        let reader = File::from(stdio.fds[0].try_clone().unwrap());
        (stdio, reader)
    }

    /// What the process reads from `reader` until end of file, which must come within five
    /// seconds (read on a thread, as a process would block in it).
    async fn rest_of(mut reader: File, expect: &str) -> Vec<u8> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).unwrap();
            let _ = tx.send(rest);
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect(expect)
            .unwrap()
    }

    #[tokio::test]
    async fn the_process_gets_only_pipes_whatever_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        mkfifo(&fifo);
        let log = format!("file://{}", dir.path().join("log").display());
        let fifo = fifo.to_str().unwrap();
        for (stdin, stdout, stderr) in [("", "", ""), ("", fifo, fifo), ("", log.as_str(), "")] {
            let stdio = ProcessStdio::open("c", "default", &paths(stdin, stdout, stderr)).unwrap();
            for fd in &stdio.fds {
                let target = fd_target(fd);
                assert!(
                    target.to_string_lossy().starts_with("pipe:"),
                    "{stdout:?}: {target:?}"
                );
            }
            assert_eq!(stdio.outputs.len(), 2, "{stdout:?}");
            assert_ne!(
                fd_target(&stdio.fds[1]),
                fd_target(&stdio.fds[2]),
                "stdout and stderr are pipes of their own, also to one place"
            );
            // No stdin: end of file at once.
            let [reader, _, _] = stdio.fds;
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut File::from(reader), &mut rest).unwrap();
            assert!(rest.is_empty());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stdin_reaches_pipe_and_close_gives_eof() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        mkfifo(&fifo);
        let (stdio, mut reader) = with_stdin(&fifo);
        let ProcessStdio { fds, stdin, .. } = stdio;
        drop(fds);
        // The client writes and keeps its writer open, as ctr does.
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        stdin.as_ref().unwrap().close();
        let rest = rest_of(reader, "CloseIO must give the process EOF").await;
        assert!(rest.is_empty());
        drop(writer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_releases_a_forwarder_whose_client_never_came() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        mkfifo(&fifo);
        let (stdio, reader) = with_stdin(&fifo);
        let ProcessStdio { fds, stdin, .. } = stdio;
        drop(fds);
        // The client unlinks its FIFO without ever opening it.
        std::fs::remove_file(&fifo).unwrap();
        stdin.as_ref().unwrap().close();
        let rest = rest_of(reader, "close must end the forwarder").await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_exit_waits_for_its_output_to_be_read_while_a_reader_is_there() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("out");
        mkfifo(&fifo);
        let path = fifo.to_str().unwrap();
        let fifos = OutputFifos::open(&[path, path, "", "file:///x"]);
        assert_eq!(fifos.0.len(), 1);
        // No reader: nothing to wait for.
        let started = std::time::Instant::now();
        fifos.read_by_client(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        // A reader that takes its time: the wait ends once it has read the output.
        let mut reader = client_reader(&fifo);
        write_to(&fifo, b"last words\n");
        let read = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut s = String::new();
            let _ = reader.read_to_string(&mut s);
            s
        });
        let started = std::time::Instant::now();
        fifos.read_by_client(Duration::from_secs(5)).await;
        let waited = started.elapsed();
        assert_eq!(read.join().unwrap(), "last words\n");
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        // A reader that never reads: the wait is bounded.
        let _idle = client_reader(&fifo);
        write_to(&fifo, b"unread");
        let started = std::time::Instant::now();
        fifos.read_by_client(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn file_uri_output_is_appended_to_a_created_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/out.log");
        let uri = format!("file://{}", log.display());
        for _ in 0..2 {
            let stdio = ProcessStdio::open("c", "default", &paths("", &uri, &uri)).unwrap();
            let [_, out, err] = stdio.fds;
            File::from(out).write_all(b"x\n").unwrap();
            drop(err);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            for copy in &stdio.outputs {
                copy.flushed(deadline).await;
            }
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\nx\n");
    }

    #[test]
    fn unknown_uri_is_rejected() {
        let err = open_sink("c9", "syslog://host").unwrap_err();
        assert!(err.to_string().contains("container c9"));
    }
}
