//! What a zygote's worker runs: the closed set of operations that need a process of their own
//! (libcontainer's create, exec and start fork, and start changes directory), their arguments,
//! and the one dispatcher. Everything here crosses the zygote's socket as JSON, fds beside it;
//! errors come back typed ([`OpError`]), each libcontainer error with its whole chain.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::error::chain_to_string;
use crate::gpu::proc_mount::{OverlayArgs, Prepared};
use crate::runtime::executor::ShimExecutor;

/// Where libcontainer keeps a container's state: `<root>/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRef {
    /// libcontainer's root directory.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
}

impl StateRef {
    /// The container's own state directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }
}

/// A new process's stdio: three fds, or a terminal whose master libcontainer sends to a
/// console socket. The fds travel beside the operation's message (`SCM_RIGHTS`), not in it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Stdio {
    /// stdin, stdout, stderr (`None` while they travel).
    Fds(#[serde(skip)] Option<[OwnedFd; 3]>),
    /// The console socket's path.
    Console(PathBuf),
}

impl Stdio {
    /// Takes the fds out, to travel beside the message.
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        match self {
            Self::Fds(fds) => fds.take().map(Vec::from).unwrap_or_default(),
            Self::Console(_) => Vec::new(),
        }
    }

    /// Puts back the fds that travelled beside the message.
    fn put_fds(&mut self, fds: Vec<OwnedFd>) -> Result<(), OpError> {
        if let Self::Fds(slot) = self {
            let three: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
                OpError::Protocol(format!("{} stdio fds instead of 3", fds.len()))
            })?;
            *slot = Some(three);
        }
        Ok(())
    }
}

fn with_io(builder: ContainerBuilder, io: Stdio) -> Result<ContainerBuilder, OpError> {
    match io {
        Stdio::Fds(Some([stdin, stdout, stderr])) => Ok(builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)),
        Stdio::Fds(None) => Err(OpError::Protocol("stdio fds missing".to_owned())),
        Stdio::Console(path) => Ok(builder.with_console_socket(Some(path))),
    }
}

/// What a worker needs to create a container.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateArgs {
    /// Where the state goes.
    pub state: StateRef,
    /// The OCI bundle (holding `config.json` and `rootfs`).
    pub bundle: PathBuf,
    /// Use the systemd cgroup driver.
    pub systemd: bool,
    /// The init process's stdio.
    pub io: Stdio,
    /// What to apply in the container's mount namespace once it is created (mount flags and
    /// propagation libcontainer leaves out, the `/proc/driver/nvidia` overlay).
    pub after: OverlayArgs,
}

/// What a worker needs to start an extra process in a running container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecArgs {
    /// The container.
    pub state: StateRef,
    /// A file holding the OCI `Process` JSON of the new process.
    pub process: PathBuf,
    /// Its stdio.
    pub io: Stdio,
    /// What to apply before its program runs (the container's seccomp profile).
    pub executor: ShimExecutor,
    /// The container's cgroups in the hierarchies libcontainer does not manage (`name=systemd`
    /// and the unified one of a hybrid host): the worker joins them first, so the process is
    /// born there.
    pub hybrid_cgroups: Vec<PathBuf>,
}

/// What a successful create returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// Host pid of the container's init process, parked until start.
    pub pid: i32,
    /// The cgroup path libcontainer derived from the spec.
    pub cgroup_path: PathBuf,
    /// Whether, once the container has stopped, libcontainer's delete would do nothing but
    /// remove its cgroup and its state directory: cgroupfs driver, no poststop hooks, no Intel
    /// RDT group. The shim then does that itself (see `task::lifecycle`).
    pub plain_teardown: bool,
    /// How many overlay mounts had a target in the container.
    pub overlay_mounts: usize,
}

/// Why a libcontainer operation failed, as it crosses the zygote's channel (serialised, so
/// libcontainer's error chain travels as its text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// libcontainer refused or failed the operation.
    #[error("{message}{}", cause.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Libcontainer {
        /// Its error chain.
        message: String,
        /// What the container's init process logged when it failed (see `causes`), when that
        /// adds something.
        cause: Option<String>,
    },
    /// The container's libcontainer state cannot be loaded.
    #[error("container state: {0}")]
    State(String),
    /// libcontainer created a container without an init pid.
    #[error("libcontainer returned no init pid")]
    NoInitPid,
    /// A signal number libcontainer does not know.
    #[error("signal {signal}: {message}")]
    Signal {
        /// The number.
        signal: i32,
        /// libcontainer's reason.
        message: String,
    },
    /// A file operation of the shim's own around libcontainer failed.
    #[error("{what} {path}: {message}")]
    File {
        /// What was being done (`join`, `remove`, ...).
        what: String,
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
        /// Its `errno`, so a caller can tell `ENOENT` from `EBUSY`.
        errno: Option<i32>,
    },
    /// What the shim applies in a created container's mount namespace (its mount flags,
    /// propagation, the `/proc/driver/nvidia` overlay) could not be applied.
    #[error("after create: {0}")]
    AfterCreate(String),
    /// The operation's message or its answer did not make sense (a shim and a worker that
    /// disagree: a bug).
    #[error("zygote protocol: {0}")]
    Protocol(String),
    /// The worker panicked running the operation.
    #[error("the worker panicked: {0}")]
    Panic(String),
}

impl OpError {
    /// The OS error number behind it, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::File { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// An operation's outcome.
pub type Wire<T> = std::result::Result<T, OpError>;

/// A libcontainer error with its chain, and the init's logged cause when it adds something.
pub(crate) fn libcontainer(err: impl std::error::Error, cause: Option<String>) -> OpError {
    let message = chain_to_string(&err);
    OpError::Libcontainer {
        cause: cause.filter(|c| !message.contains(c.as_str())),
        message,
    }
}

/// A libcontainer error with its chain.
pub(crate) fn lc(err: impl std::error::Error) -> OpError {
    libcontainer(err, None)
}

/// A file operation's error, with its `errno`.
pub(crate) fn file_error(what: &str, path: &std::path::Path, err: &std::io::Error) -> OpError {
    OpError::File {
        what: what.to_owned(),
        path: path.to_owned(),
        message: err.to_string(),
        errno: err.raw_os_error(),
    }
}

/// Loads a container's libcontainer state.
pub(crate) fn load(state: &StateRef) -> Wire<Container> {
    Container::load(state.dir()).map_err(|e| OpError::State(chain_to_string(&e)))
}

/// An operation a worker runs.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    /// Create a container; its init is parked until [`Op::Start`].
    Create(Box<CreateArgs>),
    /// Start a process in a running container.
    Exec(Box<ExecArgs>),
    /// Let a created container's init exec its process.
    Start(StateRef),
    /// Mount an overlay rootfs whose lower layers are idmapped (user-namespace pods).
    MountIdmapped(Box<IdmappedRootfs>),
}

/// What a worker needs to mount an idmapped overlay rootfs.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdmappedRootfs {
    /// The overlay and its mappings.
    pub overlay: crate::runtime::idmap::IdmappedOverlay,
    /// Where (`<bundle>/rootfs`).
    pub target: PathBuf,
    /// A directory for the idmapped lower layers while the overlay is mounted (removed after).
    pub scratch: PathBuf,
}

/// What an operation returned.
#[derive(Debug, Serialize, Deserialize)]
pub enum Done {
    /// [`Op::Create`]'s container.
    Created(Created),
    /// [`Op::Exec`]'s process's host pid.
    Execed(i32),
    /// [`Op::Start`] is done.
    Started,
    /// [`Op::MountIdmapped`] is done.
    Mounted,
}

impl Op {
    /// Takes out the fds that travel beside the operation's message.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        match self {
            Self::Create(a) => a.io.take_fds(),
            Self::Exec(a) => a.io.take_fds(),
            Self::Start(_) | Self::MountIdmapped(_) => Vec::new(),
        }
    }

    /// Puts back the fds that travelled beside its message.
    pub fn put_fds(&mut self, fds: Vec<OwnedFd>) -> Result<(), OpError> {
        match self {
            Self::Create(a) => a.io.put_fds(fds),
            Self::Exec(a) => a.io.put_fds(fds),
            Self::Start(_) | Self::MountIdmapped(_) if fds.is_empty() => Ok(()),
            Self::Start(_) | Self::MountIdmapped(_) => Err(OpError::Protocol(
                "fds sent with an operation that takes none".to_owned(),
            )),
        }
    }
}

/// Runs `op` in this (worker) process.
pub fn dispatch(op: Op) -> Wire<Done> {
    match op {
        Op::Create(args) => create(*args).map(Done::Created),
        Op::Exec(args) => exec(*args).map(Done::Execed),
        Op::Start(state) => start(state).map(|()| Done::Started),
        Op::MountIdmapped(m) => {
            crate::runtime::idmap::mount_idmapped_overlay(&m.overlay, &m.target, &m.scratch)
                .map(|()| Done::Mounted)
                .map_err(|e| file_error("mount the idmapped rootfs on", &m.target, &e))
        }
    }
}

fn create(args: CreateArgs) -> Wire<Created> {
    let CreateArgs {
        state,
        bundle,
        systemd,
        io,
        after,
    } = args;
    let builder = ContainerBuilder::new(state.id.clone(), SyscallType::default())
        .with_root_path(&state.root)
        .map_err(lc)?
        .validate_id()
        .map_err(lc)?;
    let builder = with_io(builder, io)?;
    let (container, cause) = crate::runtime::causes::watch(|| {
        builder
            .with_executor(ShimExecutor::default())
            .as_init(&bundle)
            .with_systemd(systemd)
            .with_detach(true)
            .as_sibling(true)
            .build()
    });
    // libcontainer may have left a state dir and a cgroup behind: remove both.
    let undo = |error: OpError| {
        if let Ok(mut c) = Container::load(state.dir()) {
            let _ = c.delete(true);
        }
        let _ = std::fs::remove_dir_all(state.dir());
        error
    };
    let container = container.map_err(|err| undo(libcontainer(err, cause)))?;
    let pid = container.pid().ok_or(OpError::NoInitPid)?.as_raw();
    let config = container
        .spec()
        .map_err(|e| OpError::State(chain_to_string(&e)))?;
    let poststop = config
        .hooks
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
        .is_some_and(|hooks| !hooks.is_empty());
    let plain_teardown = !systemd
        && !poststop
        && container.intel_rdt_dir().is_none()
        && container.intel_rdt_monitoring_dir().is_none();
    // Last, as it leaves the shim's mount namespace: this worker is single-threaded, so it
    // may join the container's.
    let overlay_mounts = if after.is_empty() {
        0
    } else {
        Prepared::new(&after, pid)
            .and_then(|p| p.attach())
            .map_err(|e| undo(OpError::AfterCreate(e.to_string())))?
    };
    Ok(Created {
        pid,
        cgroup_path: config.cgroup_path,
        plain_teardown,
        overlay_mounts,
    })
}

/// Starts a process inside the running container: it joins every namespace and the cgroup of
/// the container (libcontainer's tenant builder) and is the shim's child.
fn exec(args: ExecArgs) -> Wire<i32> {
    let ExecArgs {
        state,
        process,
        io,
        executor,
        hybrid_cgroups,
    } = args;
    for dir in &hybrid_cgroups {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()))
            .map_err(|e| file_error("join", dir, &e))?;
    }
    let builder = ContainerBuilder::new(state.id.clone(), SyscallType::default())
        .with_root_path(&state.root)
        .map_err(lc)?;
    let builder = with_io(builder, io)?;
    let (pid, cause) = crate::runtime::causes::watch(|| {
        builder
            .with_executor(executor)
            .as_tenant()
            .with_process(Some(&process))
            .as_sibling(true)
            .with_detach(true)
            .build()
    });
    let pid = pid.map_err(|e| libcontainer(e, cause))?;
    Ok(pid.as_raw())
}

fn start(state: StateRef) -> Wire<()> {
    load(&state)?.start().map_err(lc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_errors_cross_the_channel_typed_and_print_their_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "exec format error");
        let with_new_cause = libcontainer(&io, Some("/app: no such file".to_owned()));
        let with_known_cause = libcontainer(&io, Some("exec format error".to_owned()));
        assert_eq!(
            with_new_cause.to_string(),
            "exec format error: /app: no such file"
        );
        assert_eq!(
            with_known_cause,
            OpError::Libcontainer {
                message: "exec format error".to_owned(),
                cause: None,
            }
        );
        let busy = file_error(
            "remove",
            std::path::Path::new("/sys/fs/cgroup/x"),
            &std::io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert_eq!(busy.errno(), Some(libc::EBUSY));
        for e in [
            with_new_cause,
            OpError::State("missing state.json".to_owned()),
            OpError::NoInitPid,
            busy,
        ] {
            let wire = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<OpError>(&wire).unwrap(), e);
        }
    }

    #[test]
    fn stdio_fds_travel_beside_the_message() {
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut op = Op::Exec(Box::new(ExecArgs {
            state: StateRef {
                root: PathBuf::from("/r"),
                id: "c".to_owned(),
            },
            process: PathBuf::from("/p.json"),
            io: Stdio::Fds(Some([fd(), fd(), fd()])),
            executor: ShimExecutor::default(),
            hybrid_cgroups: Vec::new(),
        }));
        let fds = op.take_fds();
        assert_eq!(fds.len(), 3);
        let wire = serde_json::to_vec(&op).unwrap();
        let mut back: Op = serde_json::from_slice(&wire).unwrap();
        assert!(back.put_fds(Vec::new()).is_err(), "three fds are needed");
        back.put_fds(fds).unwrap();
        assert!(matches!(back, Op::Exec(a) if matches!(a.io, Stdio::Fds(Some(_)))));
    }
}
