//! Running containers without runc: the [`Runtime`] the process layer (`task`) drives, and its
//! implementation on libcontainer ([`libcontainer::Libcontainer`]).
//!
//! - The seam: [`Runtime`] and what crosses it ([`CreateRequest`], [`Created`], [`Spawned`],
//!   [`ExecRequest`], [`KillTarget`], [`Teardown`]); synchronous, called on the blocking pool.
//! - [`libcontainer`]: the runtime (kill, pause, resume, delete in the shim itself); [`create`],
//!   [`exec`] and [`teardown`]: its longer procedures.
//! - [`zygote`]: the single-threaded helper (forked before any thread, executed afresh when it
//!   dies) whose workers run [`ops`], libcontainer's create, exec and start;
//!   [`after_create`]: what a create worker applies in the container's mount namespace;
//!   [`mount_api`]: detached mounts; [`idmap`]: idmapped mounts; [`executor`]: the last step
//!   of every process libcontainer starts; [`causes`]: why an init failed.
//! - [`bundle`]: the OCI bundle (rootfs mounts; the spec read once, adapted, edited and
//!   written once); [`spec_adapt`]: where libcontainer would treat a spec otherwise than runc.
//! - [`cgroup`]: cgroup reads and writes; [`mountinfo`]: the mount table, read cheaply;
//!   [`attach_warmup`]: the cgroup migration warm-up;
//!   [`exit`]: the reaper's exits routed to processes; [`oom`]: OOM events.

pub mod after_create;
pub mod attach_warmup;
pub mod bundle;
pub mod causes;
pub mod cgroup;
pub mod create;
pub mod exec;
pub mod executor;
pub mod exit;
pub mod idmap;
pub mod libcontainer;
pub mod mount_api;
pub mod mountinfo;
pub mod oom;
pub mod ops;
pub mod spec_adapt;
pub mod teardown;
pub mod zygote;

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use nvidia_shim_core::Config;
use oci_spec::runtime::{LinuxResources, Process};

use crate::error::Result;
use crate::io::procio::{ProcessIo, StdioPaths};
use crate::runtime::exit::{ExitCell, ExitRoute};

/// One rootfs mount as containerd passes it in Create (onto `<bundle>/rootfs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsMount {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub typ: String,
    /// Source.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// A new container as containerd's Create describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewContainer {
    /// Container id.
    pub id: String,
    /// The OCI bundle containerd prepared.
    pub bundle: PathBuf,
    /// The rootfs mounts, mounted on `<bundle>/rootfs` (none: the bundle has its rootfs).
    pub rootfs: Vec<RootfsMount>,
    /// The init process's stdio.
    pub stdio: StdioPaths,
}

/// What a Create asks of the runtime.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The container.
    pub container: NewContainer,
    /// The shim's configuration for it.
    pub config: Arc<Config>,
    /// A cgroup the shim process itself joins (the v1 runc options' `ShimCgroup`).
    pub shim_cgroup: Option<String>,
}

/// A process the runtime started: a created container's init (parked until start) or an
/// exec.
#[derive(Debug)]
pub struct Spawned {
    /// Its host pid.
    pub pid: i32,
    /// Its I/O.
    pub io: ProcessIo,
    /// Its exit's route from the reaper.
    pub route: ExitRoute,
}

/// A container the runtime created.
#[derive(Debug)]
pub struct Created<C> {
    /// What the runtime keeps of it, given back with every later call.
    pub container: C,
    /// Its init process.
    pub init: Spawned,
    /// Whether it has a pid namespace of its own (its processes die with init); otherwise
    /// what init leaves behind is killed by [`Runtime::kill_remaining`].
    pub private_pid_ns: bool,
}

/// What an Exec asks of the runtime once it is started.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// containerd's exec id.
    pub exec_id: String,
    /// The OCI process to run (its `terminal` already the request's).
    pub process: Process,
    /// Its stdio.
    pub stdio: StdioPaths,
}

/// Which processes a signal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillTarget {
    /// The container's init, or every process of the container with `all`.
    Init {
        /// The signal number.
        signal: u32,
        /// Every process of the container.
        all: bool,
    },
    /// One process of the container (an exec), by its host pid.
    Process {
        /// Its pid.
        pid: i32,
        /// The signal number.
        signal: u32,
    },
}

/// The state a container is deleted in.
#[derive(Debug, Clone, Copy)]
pub enum Teardown<'a> {
    /// Created and never started: its parked init is killed, and waited for through
    /// `init_exit`.
    NeverStarted {
        /// The init's exit.
        init_exit: &'a ExitCell,
    },
    /// Its init has exited.
    Exited,
}

/// Called when the kernel's OOM killer acts in a container's memory cgroup.
pub type OnOom = Box<dyn Fn() + Send + Sync>;

/// The container runtime the process layer drives: one method per host operation, each
/// synchronous (it may fork, wait for a helper, write cgroup files, mount), so called from
/// the blocking pool. Implemented on libcontainer by [`libcontainer::Libcontainer`], and by
/// stubs in the unit tests of the layers above.
pub trait Runtime: Send + Sync + 'static {
    /// What the runtime keeps of one container.
    type Container: Send + Sync + 'static;

    /// Creates a container: its rootfs mounted, its bundle prepared, its init created and
    /// parked until [`Runtime::start`], its I/O attached; `exit` receives init's exit.
    /// Nothing is left behind when it fails.
    fn create(&self, req: &CreateRequest, exit: &Arc<ExitCell>)
        -> Result<Created<Self::Container>>;

    /// Lets a created container's init run its process.
    fn start(&self, c: &Self::Container) -> Result<()>;

    /// Starts an extra process in the running container; `exit` receives its exit.
    fn exec(&self, c: &Self::Container, req: &ExecRequest, exit: &Arc<ExitCell>)
        -> Result<Spawned>;

    /// Sends a signal.
    fn kill(&self, c: &Self::Container, target: KillTarget) -> Result<()>;

    /// Kills what is left in the container's cgroup once its init has exited (a container
    /// without a pid namespace of its own), waiting, bounded, until none is left.
    fn kill_remaining(&self, c: &Self::Container);

    /// Removes the container: its libcontainer state, cgroups and rootfs mounts.
    fn delete(&self, c: &Self::Container, teardown: Teardown<'_>) -> Result<()>;

    /// Freezes the container.
    fn pause(&self, c: &Self::Container) -> Result<()>;

    /// Thaws the container.
    fn resume(&self, c: &Self::Container) -> Result<()>;

    /// Applies new resource limits.
    fn update(&self, c: &Self::Container, resources: &LinuxResources) -> Result<()>;

    /// The container's cgroup metrics, as containerd's `Stats` carries them.
    fn stats(&self, c: &Self::Container) -> Result<Any>;

    /// The pids of every process in the container.
    fn pids(&self, c: &Self::Container) -> Result<Vec<i32>>;

    /// Starts watching the container (whose init is `init_pid`) for OOM kills.
    fn watch_oom(&self, c: &Self::Container, init_pid: i32, on_oom: OnOom);
}

/// `/proc/<pid>/cgroup` text as procfs parses it (nothing when it does not parse), for the
/// tests of the modules that read it.
#[cfg(test)]
pub fn parse_proc_cgroup(text: &str) -> Vec<procfs::ProcessCGroup> {
    use procfs::FromBufRead;
    procfs::ProcessCGroups::from_buf_read(text.as_bytes())
        .map(|c| c.0)
        .unwrap_or_default()
}
