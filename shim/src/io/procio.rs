//! A process's I/O from containerd's request to the running process: FIFO fds or a terminal,
//! prepared before libcontainer runs it ([`PreparedIo`], whose [`Stdio`] crosses to the
//! zygote) and attached afterwards ([`ProcessIo`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::wire::OpError;
use crate::error::Result;
use crate::io::console::{Console, ConsoleSocket};
use crate::io::copy::OutputCopy;
use crate::io::stdio::{OutputFifos, ProcessStdio, StdinForwarder};

/// The stdio containerd asked for a process: FIFO paths or URIs, echoed back by `State`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO, or empty.
    pub stdin: String,
    /// stdout FIFO or URI (`file://`, `binary://`), or empty.
    pub stdout: String,
    /// stderr FIFO or URI, or empty.
    pub stderr: String,
    /// Whether a terminal was asked for.
    pub terminal: bool,
}

/// A new process's stdio as it crosses to the zygote: three fds, or a terminal whose master
/// libcontainer sends to a console socket. The fds travel beside the operation's message
/// (`SCM_RIGHTS`), not in it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Stdio {
    /// stdin, stdout, stderr (`None` while they travel).
    Fds(#[serde(skip)] Option<[OwnedFd; 3]>),
    /// The console socket's path.
    Console(PathBuf),
}

impl Stdio {
    /// Takes the fds out, to travel beside the message.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        match self {
            Self::Fds(fds) => fds.take().map(Vec::from).unwrap_or_default(),
            Self::Console(_) => Vec::new(),
        }
    }

    /// Puts back the fds that travelled beside the message.
    pub fn put_fds(&mut self, fds: Vec<OwnedFd>) -> Result<(), OpError> {
        if let Self::Fds(slot) = self {
            let three: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
                OpError::Protocol(format!("{} stdio fds instead of 3", fds.len()))
            })?;
            *slot = Some(three);
        }
        Ok(())
    }
}

/// How long an exit report waits for a terminal's last output to reach the client.
const TTY_DRAIN: Duration = Duration::from_secs(2);

/// How long an exit report waits for the output to be copied out of the process's pipes and
/// for a reading client to take it out of its FIFOs.
const FIFO_DRAIN: Duration = Duration::from_secs(2);

/// I/O prepared for a process about to be created.
#[derive(Debug)]
pub struct PreparedIo {
    kind: PreparedKind,
    outputs: OutputFifos,
}

#[derive(Debug)]
enum PreparedKind {
    /// FIFOs (or files, or /dev/null) as plain fds.
    Pipes(ProcessStdio),
    /// A terminal: libcontainer will send the pty master to this socket.
    Tty(ConsoleSocket),
}

/// The part of [`PreparedIo`] that stays with the shim while the process is created.
#[derive(Debug)]
pub struct PendingIo {
    kind: PendingKind,
    outputs: OutputFifos,
}

#[derive(Debug)]
enum PendingKind {
    /// The stdin forwarder, if stdin is a FIFO, and the output copies.
    Pipes(Option<StdinForwarder>, Vec<OutputCopy>),
    /// The console socket to receive the pty master from.
    Tty(ConsoleSocket),
}

impl PreparedIo {
    /// Opens what containerd asked for; a `binary://` logger is told `namespace`. Blocks (a
    /// logging binary's readiness, up to seconds).
    pub fn open(id: &str, namespace: &str, stdio: &StdioPaths) -> Result<Self> {
        let kind = if stdio.terminal {
            PreparedKind::Tty(ConsoleSocket::new(id)?)
        } else {
            PreparedKind::Pipes(ProcessStdio::open(id, namespace, stdio)?)
        };
        Ok(Self {
            kind,
            outputs: OutputFifos::open(&[&stdio.stdout, &stdio.stderr]),
        })
    }

    /// Splits into what crosses to the zygote and what the shim keeps.
    pub fn split(self) -> (Stdio, PendingIo) {
        let (wire, kind) = match self.kind {
            PreparedKind::Pipes(ProcessStdio {
                fds,
                stdin,
                outputs,
            }) => (Stdio::Fds(Some(fds)), PendingKind::Pipes(stdin, outputs)),
            PreparedKind::Tty(socket) => (
                Stdio::Console(socket.path().to_owned()),
                PendingKind::Tty(socket),
            ),
        };
        let outputs = self.outputs;
        (wire, PendingIo { kind, outputs })
    }
}

impl PendingIo {
    /// Completes the I/O of a created process: for a terminal, takes the pty master, gives it
    /// `size` (width, height) when the spec has one, and starts copying it to and from the
    /// FIFOs of `stdio`. Blocks (a terminal's master comes over the console socket).
    pub fn attach(
        self,
        id: &str,
        stdio: &StdioPaths,
        size: Option<(u32, u32)>,
    ) -> Result<ProcessIo> {
        let (stdin, console, copies) = match self.kind {
            PendingKind::Pipes(forwarder, copies) => (forwarder, None, copies),
            PendingKind::Tty(socket) => {
                let master = socket.receive_master(id)?;
                let console = Console::start(id, master, &stdio.stdin, &stdio.stdout)?;
                if let Some((width, height)) = size {
                    console.resize(id, width, height)?;
                }
                (None, Some(console), Vec::new())
            }
        };
        Ok(ProcessIo {
            stdin: Mutex::new(stdin),
            console,
            copies,
            outputs: self.outputs,
        })
    }
}

/// The I/O of a running process.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdin: Mutex<Option<StdinForwarder>>,
    console: Option<Console>,
    copies: Vec<OutputCopy>,
    outputs: OutputFifos,
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

    /// Waits briefly until the process's last output has reached the client: a terminal's
    /// copy has ended, or the output is out of the process's pipes; and a reading client has
    /// taken it out of its FIFOs.
    pub async fn drained(&self) {
        if let Some(c) = &self.console {
            c.drained(TTY_DRAIN).await;
        }
        let deadline = tokio::time::Instant::now() + FIFO_DRAIN;
        for copy in &self.copies {
            copy.flushed(deadline).await;
        }
        self.outputs.read_by_client(FIFO_DRAIN).await;
    }
}
