//! What a zygote's worker runs: the closed set of operations that need a process of their own
//! (libcontainer's create, exec and start fork, and start changes directory; an idmapped
//! rootfs needs a user namespace, made by forking), their arguments, and the one dispatcher.
//! Everything here crosses the zygote's socket as JSON, fds beside it; errors come back typed
//! ([`OpError`]), each libcontainer error with its whole chain.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use libcontainer::config::YoukiConfig;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::hooks;
use libcontainer::notify_socket::NOTIFY_FILE;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::error::chain_to_string;
use crate::error::wire::{lc, OpError, Wire};
use crate::io::procio::Stdio;
use crate::runtime::after_create::{AfterCreate, Detached};
use crate::runtime::causes::Causes;
use crate::runtime::executor::ShimExecutor;
use crate::runtime::mountinfo;

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
    /// propagation libcontainer leaves out, idmapped mounts, the `/proc/driver/nvidia`
    /// overlay).
    pub after: AfterCreate,
    /// The spec's root and mount sources that are absolute host paths.
    pub host_paths: Vec<PathBuf>,
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
    /// RDT group. The shim then does that itself (see `runtime::teardown`).
    pub plain_teardown: bool,
    /// Whether starting it runs nothing on the host side (no poststart hooks): the shim then
    /// starts it in place ([`start`]) instead of in a worker.
    pub plain_start: bool,
    /// How many overlay mounts had a target in the container.
    pub overlay_mounts: usize,
    /// How many host mounts whose mount table line is not UTF-8 were left out of the
    /// container's mount namespace (see [`mountinfo`]).
    pub detached_not_utf8: usize,
}

/// Loads a container's libcontainer state.
pub fn load(state: &StateRef) -> Wire<Container> {
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

/// Runs `op` in this (worker) process; `causes` collects what a failing init logs.
pub fn dispatch(op: Op, causes: &Causes) -> Wire<Done> {
    match op {
        Op::Create(args) => create(*args, causes).map(Done::Created),
        Op::Exec(args) => exec(*args, causes).map(Done::Execed),
        Op::Start(state) => start(&state, true).map(|()| Done::Started),
        Op::MountIdmapped(m) => {
            crate::runtime::idmap::mount_idmapped_overlay(&m.overlay, &m.target, &m.scratch)
                .map(|()| Done::Mounted)
                .map_err(|e| OpError::file("mount the idmapped rootfs on", &m.target, &e))
        }
    }
}

/// libcontainer's builder for container `state` with stdio `io`.
fn builder(state: &StateRef, io: Stdio) -> Wire<ContainerBuilder> {
    let builder = ContainerBuilder::new(state.id.clone(), SyscallType::default())
        .with_root_path(&state.root)
        .map_err(lc)?;
    match io {
        Stdio::Fds(Some([stdin, stdout, stderr])) => Ok(builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)),
        Stdio::Fds(None) => Err(OpError::Protocol("stdio fds missing".to_owned())),
        Stdio::Console(path) => Ok(builder.with_console_socket(Some(path))),
    }
}

/// Takes the mounts whose mount table line is not UTF-8 out of this worker's copy of the
/// mount namespace, and so out of the container's, which is copied from it (libcontainer reads
/// the table as UTF-8 and fails on any such line); a container that needs one of them (its
/// bundle, root or a mount source lies on it) fails instead.
fn leave_out_unreadable_mounts(args: &CreateArgs, not_utf8: &[PathBuf]) -> Wire<()> {
    let Some(first) = not_utf8.first() else {
        return Ok(());
    };
    let needed: Vec<&Path> = std::iter::once(args.bundle.as_path())
        .chain(args.host_paths.iter().map(PathBuf::as_path))
        .chain(args.after.mounts.iter().map(|(source, _)| source.as_path()))
        .chain(args.after.binds.iter().map(|b| b.source.as_path()))
        .collect();
    if let Some((path, point)) = mountinfo::needed_on(not_utf8, &needed) {
        return Err(OpError::File {
            what: "mount".to_owned(),
            path,
            message: format!(
                "it lies on the host mount at {point:?}, whose line in the mount table is not \
                 UTF-8, which libcontainer cannot read"
            ),
            errno: None,
        });
    }
    mountinfo::detach_in_own_namespace(not_utf8).map_err(|e| OpError::file("detach", first, &e))
}

fn create(args: CreateArgs, causes: &Causes) -> Wire<Created> {
    let (state, systemd) = (&args.state, args.systemd);
    let host = mountinfo::host_mounts()
        .map_err(|e| OpError::file("read", Path::new("/proc/self/mountinfo"), &e))?;
    leave_out_unreadable_mounts(&args, &host.not_utf8)?;
    let builder = builder(state, args.io)?.validate_id().map_err(lc)?;
    let (container, cause) = causes.watch(|| {
        builder
            .with_executor(ShimExecutor::default())
            .as_init(&args.bundle)
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
    let container = container.map_err(|err| undo(OpError::libcontainer(err, cause)))?;
    let pid = container.pid().ok_or(OpError::NoInitPid)?.as_raw();
    let config = container
        .spec()
        .map_err(|e| OpError::State(chain_to_string(&e)))?;
    let hooks = config.hooks.as_ref();
    let poststop = hooks
        .and_then(|h| h.poststop().as_ref())
        .is_some_and(|hooks| !hooks.is_empty());
    let poststart = hooks
        .and_then(|h| h.poststart().as_ref())
        .is_some_and(|hooks| !hooks.is_empty());
    let plain_teardown = !systemd
        && !poststop
        && container.intel_rdt_dir().is_none()
        && container.intel_rdt_monitoring_dir().is_none();
    // Last, as it leaves the shim's mount namespace: this worker is single-threaded, so it
    // may join the container's.
    let overlay_mounts = if args.after.is_empty() {
        0
    } else {
        Detached::new(&args.after, pid, host.devices)
            .and_then(|d| d.attach())
            .map_err(|e| undo(OpError::after_create(&e)))?
    };
    Ok(Created {
        pid,
        cgroup_path: config.cgroup_path,
        plain_teardown,
        plain_start: !poststart,
        overlay_mounts,
        detached_not_utf8: host.not_utf8.len(),
    })
}

/// Starts a process inside the running container: it joins every namespace and the cgroup of
/// the container (libcontainer's tenant builder) and is the shim's child.
fn exec(args: ExecArgs, causes: &Causes) -> Wire<i32> {
    for dir in &args.hybrid_cgroups {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()))
            .map_err(|e| OpError::file("join", dir, &e))?;
    }
    let builder = builder(&args.state, args.io)?;
    let (pid, cause) = causes.watch(|| {
        builder
            .with_executor(args.executor)
            .as_tenant()
            .with_process(Some(&args.process))
            .as_sibling(true)
            .with_detach(true)
            .build()
    });
    Ok(pid.map_err(|e| OpError::libcontainer(e, cause))?.as_raw())
}

/// Starts container `state` as libcontainer's `Container::start` does (the init, parked on
/// the state dir's notify socket, is told to go on; the state is saved as running; the
/// poststart hooks run), but without its process-wide `chdir` to reach that socket, which is
/// reached through `/proc/self/fd/<state dir>` instead, and with the hooks given the state as
/// runc gives it to them (status `created`, as before the start). A container with no
/// poststart hooks (`with_hooks` false: [`Created::plain_start`]) is started so in the
/// multi-threaded shim, sparing a worker's fork and round trip; one with hooks in a worker
/// ([`Op::Start`]), whose children the shim's reaper cannot take from it.
pub fn start(state: &StateRef, with_hooks: bool) -> Wire<()> {
    // Loading refreshes the status from the init process.
    let mut container = load(state)?;
    if !container.can_start() {
        return Err(lc(LibcontainerError::IncorrectStatus(container.status())));
    }
    // The hooks are read before the init goes on, as libcontainer does.
    let poststart = if with_hooks {
        let config = YoukiConfig::load(&container.root).map_err(lc)?;
        config.hooks.and_then(|h| h.poststart().clone())
    } else {
        None
    };
    let before = container.state.clone();
    let dir = state.dir();
    let socket = dir.join(NOTIFY_FILE);
    let dir_fd = std::fs::File::open(&dir).map_err(|e| OpError::file("open", &dir, &e))?;
    let short = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dir_fd.as_raw_fd());
    // The init reads to the end: the stream is closed once written.
    UnixStream::connect(&short)
        .and_then(|mut init| init.write_all(b"start container"))
        .map_err(|e| OpError::file("tell the init to start through", &socket, &e))?;
    container
        .set_status(ContainerStatus::Running)
        .save()
        .map_err(lc)?;
    if let Some(poststart) = poststart.filter(|h| !h.is_empty()) {
        hooks::run_hooks(
            Some(&poststart),
            Some(&before),
            Some(&container.root),
            None,
            None,
        )
        .map_err(lc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
