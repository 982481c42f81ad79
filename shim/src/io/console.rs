//! Terminals: the console socket libcontainer sends a process's pty master over (runc's
//! protocol: one `SCM_RIGHTS` message), and the copy between that master and containerd's FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::sync::watch;

use crate::error::{Result, ShimError};

/// A listening console socket for one process, alone in a fresh directory only root can enter
/// (`/tmp/nvshim-console-XXXXXX/sock`, mode 0700: no other user can connect to it or predict
/// it; the path stays short, under the 108-byte limit of socket addresses).
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    dir: PathBuf,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a fresh socket in a fresh private directory.
    pub fn new(id: &str) -> Result<Self> {
        let template = std::env::temp_dir().join("nvshim-console-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
            ShimError::io(
                id,
                format!("create a console socket directory {}", template.display()),
                e.into(),
            )
        })?;
        let path = dir.join("sock");
        let listener = UnixListener::bind(&path).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            ShimError::io(id, format!("bind console socket {}", path.display()), e)
        })?;
        Ok(Self {
            listener,
            dir,
            path,
        })
    }

    /// The socket's path, for libcontainer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the pty master libcontainer sent. Call after the process was created: the
    /// connection and its message are queued by then.
    pub fn receive_master(self, id: &str) -> Result<OwnedFd> {
        let err =
            |what: &str, e: std::io::Error| ShimError::io(id, format!("console socket: {what}"), e);
        self.listener
            .set_nonblocking(true)
            .map_err(|e| err("set non-blocking", e))?;
        let (stream, _) = self.listener.accept().map_err(|e| err("accept", e))?;
        // Only this shim's own user (root, as libcontainer runs) may hand over a terminal.
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|e| err("read the peer's credentials", e.into()))?;
        if peer.uid() != nix::unistd::geteuid().as_raw() {
            return Err(err(
                &format!(
                    "refused a connection from uid {} pid {}",
                    peer.uid(),
                    peer.pid()
                ),
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| err("set timeout", e))?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| err("receive pty master", e.into()))?;
        for cmsg in msg
            .cmsgs()
            .map_err(|e| err("read control message", e.into()))?
        {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(err(
            "no pty master in message",
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A running process's terminal: the master, and the threads copying it to and from the FIFOs.
#[derive(Debug)]
pub struct Console {
    master: OwnedFd,
    drained: watch::Receiver<bool>,
}

impl Console {
    /// Starts copying `master` to the `stdout` FIFO and the `stdin` FIFO (if any) to `master`.
    pub fn start(id: &str, master: OwnedFd, stdin: &str, stdout: &str) -> Result<Self> {
        let dup = |what: &str| {
            master
                .try_clone()
                .map(File::from)
                .map_err(|e| ShimError::io(id, format!("dup pty master for {what}"), e))
        };
        let (tx, drained) = watch::channel(false);
        let mut from_master = dup("output")?;
        let mut out: Box<dyn Write + Send> = if stdout.is_empty() {
            Box::new(std::io::sink())
        } else {
            Box::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(stdout)
                    .map_err(|e| ShimError::io(id, format!("open stdout {stdout}"), e))?,
            )
        };
        std::thread::Builder::new()
            .name("tty-out".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = [0u8; 8192];
                // EIO once every slave fd is closed: the process (and its children) are gone.
                while let Ok(n) = from_master.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = tx.send(true);
            })
            .map_err(|e| ShimError::io(id, "spawn tty output thread", e))?;
        if !stdin.is_empty() {
            let mut to_master = dup("input")?;
            let path = stdin.to_owned();
            std::thread::Builder::new()
                .name("tty-in".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    if let Ok(mut fifo) = File::open(&path) {
                        let _ = std::io::copy(&mut fifo, &mut to_master);
                    }
                })
                .map_err(|e| ShimError::io(id, "spawn tty input thread", e))?;
        }
        Ok(Self { master, drained })
    }

    /// Sets the terminal size (`ResizePty`).
    pub fn resize(&self, id: &str, width: u32, height: u32) -> Result<()> {
        let ws = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(ShimError::io(
                id,
                "resize pty",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits (up to `limit`) until the output copy ended, so an exit is reported after the
    /// process's last output reached the client.
    pub async fn drained(&self, limit: Duration) {
        let mut rx = self.drained.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|d| *d)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_socket_lives_alone_in_a_private_directory_removed_with_it() {
        let s = ConsoleSocket::new("c1").unwrap();
        let dir = s.path().parent().unwrap().to_owned();
        assert!(s.path().as_os_str().len() < 108, "fits a socket address");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let other = ConsoleSocket::new("c1").unwrap();
        assert_ne!(other.path(), s.path(), "unpredictable and distinct");
        drop(s);
        assert!(!dir.exists(), "removed with the socket");
    }
}
