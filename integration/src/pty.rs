//! Running a client (`ctr run -t`, `ctr task exec -t`) on a pseudo-terminal, as a user's
//! shell would: `ctr` insists on a terminal for `-t`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// A child process whose stdio is the slave side of a pty we hold the master of.
#[derive(Debug)]
pub struct PtyChild {
    master: File,
    child: Child,
    seen: String,
}

impl PtyChild {
    /// Spawns `cmd` on a new pty of `rows` x `cols`, as the session leader with the pty as its
    /// controlling terminal.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Result<Self> {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors; the other pointers may be null or valid.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            master,
            child,
            seen: String::new(),
        })
    }

    /// Types `text`.
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.master.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Reads until `needle` appears in the output since the last match (15 s at most).
    pub fn expect(&mut self, needle: &str) -> Result<String> {
        match self.expect_within(needle, Duration::from_secs(15))? {
            Some(out) => Ok(out),
            None => bail!(
                "timed out waiting for {needle:?}; output so far: {:?}",
                self.seen
            ),
        }
    }

    /// Types `line` until `needle` shows in the answer (for state that settles
    /// asynchronously, such as a terminal size the client sets after start).
    pub fn retry_until(&mut self, line: &str, needle: &str) -> Result<String> {
        for _ in 0..30 {
            self.send(line)?;
            if let Some(out) = self.expect_within(needle, Duration::from_millis(500))? {
                return Ok(out);
            }
        }
        bail!(
            "{needle:?} never answered {line:?}; output so far: {:?}",
            self.seen
        )
    }

    /// Like [`PtyChild::expect`] with a limit; `None` when it passes.
    pub fn expect_within(&mut self, needle: &str, limit: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(pos) = self.seen.find(needle) {
                let upto = pos + needle.len();
                let out = self.seen[..upto].to_owned();
                self.seen.drain(..upto);
                return Ok(Some(out));
            }
            match self.master.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {} // EIO: the child closed its side; keep what we have
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the child (15 s at most), draining its output meanwhile.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.master.read(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("child did not exit; output: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
