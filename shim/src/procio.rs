//! A process's I/O from containerd's request to the running process: FIFO fds or a terminal,
//! prepared before libcontainer runs it and attached afterwards.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use zygote::WireFd;

use crate::console::{Console, ConsoleSocket};
use crate::driver::WireIo;
use crate::error::Result;
use crate::stdio::{ProcessStdio, StdinForwarder};

/// How long an exit report waits for a terminal's last output to reach the client.
const TTY_DRAIN: Duration = Duration::from_secs(2);

/// I/O prepared for a process about to be created.
#[derive(Debug)]
pub enum PreparedIo {
    /// FIFOs (or files, or /dev/null) as plain fds.
    Pipes(ProcessStdio),
    /// A terminal: libcontainer will send the pty master to this socket.
    Tty(ConsoleSocket),
}

/// The part of [`PreparedIo`] that stays with the shim while the process is created.
#[derive(Debug)]
pub enum PendingIo {
    /// The stdin forwarder, if stdin is a FIFO.
    Pipes(Option<StdinForwarder>),
    /// The console socket to receive the pty master from.
    Tty(ConsoleSocket),
}

impl PreparedIo {
    /// Opens what containerd asked for.
    pub fn open(id: &str, terminal: bool, stdin: &str, stdout: &str, stderr: &str) -> Result<Self> {
        if terminal {
            Ok(Self::Tty(ConsoleSocket::new(id)?))
        } else {
            Ok(Self::Pipes(ProcessStdio::open(id, stdin, stdout, stderr)?))
        }
    }

    /// Splits into what crosses to the zygote and what the shim keeps.
    pub fn split(self) -> (WireIo, PendingIo) {
        match self {
            Self::Pipes(ProcessStdio { fds, stdin }) => {
                (WireIo::Fds(fds.map(WireFd::new)), PendingIo::Pipes(stdin))
            }
            Self::Tty(socket) => (
                WireIo::Console(socket.path().to_owned()),
                PendingIo::Tty(socket),
            ),
        }
    }
}

impl PendingIo {
    /// Completes the I/O of a created process: for a terminal, takes the pty master and starts
    /// copying it to and from the FIFOs.
    pub fn attach(self, id: &str, stdin: &str, stdout: &str) -> Result<ProcessIo> {
        match self {
            Self::Pipes(forwarder) => Ok(ProcessIo {
                stdin: Mutex::new(forwarder),
                console: None,
            }),
            Self::Tty(socket) => {
                let master = socket.receive_master(id)?;
                Ok(ProcessIo {
                    stdin: Mutex::new(None),
                    console: Some(Console::start(id, master, stdin, stdout)?),
                })
            }
        }
    }
}

/// The I/O of a running process.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdin: Mutex<Option<StdinForwarder>>,
    console: Option<Console>,
}

impl ProcessIo {
    /// Closes the process's stdin (`CloseIO`).
    pub fn close_stdin(&self) {
        if let Some(fwd) = self
            .stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            fwd.close();
        }
    }

    /// The terminal, if the process has one.
    pub fn console(&self) -> Option<&Console> {
        self.console.as_ref()
    }

    /// Waits briefly for a terminal's output to drain; returns at once without a terminal.
    pub async fn drained(&self) {
        if let Some(c) = &self.console {
            c.drained(TTY_DRAIN).await;
        }
    }
}
