//! A container's create, top to bottom: the shim joins a `ShimCgroup` when asked; the rootfs
//! is mounted; the bundle is prepared once (the spec read, adapted for libcontainer, edited by
//! the spec editor, written); stdio is opened; libcontainer creates the container in a zygote
//! worker, which then applies [`AfterCreate`](crate::runtime::after_create::AfterCreate) in
//! its mount namespace; the shim puts init in the cgroups libcontainer leaves out, sets the
//! spec's pids limit back and attaches init's I/O. What was done is undone when a step fails
//! ([`CreateUndo`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Result, ShimError};
use crate::io::procio::PreparedIo;
use crate::runtime::bundle::Bundle;
use crate::runtime::cgroup::ContainerCgroup;
use crate::runtime::exit::ExitCell;
use crate::runtime::libcontainer::{delete_in_process, unexpected, LcContainer, Libcontainer};
use crate::runtime::ops::{CreateArgs, Done, IdmappedRootfs, Op, StateRef};
use crate::runtime::{CreateRequest, Created, NewContainer, Spawned};

/// Creates the container `req` asks for; `exit` receives init's exit.
pub(super) fn create(
    rt: &Libcontainer,
    req: &CreateRequest,
    exit: &Arc<ExitCell>,
) -> Result<Created<LcContainer>> {
    let NewContainer {
        id,
        bundle,
        rootfs,
        stdio,
    } = &req.container;
    let id = id.as_str();
    let mut steps = Steps::new();
    // The cgroup migration grace period starts now, alongside the work before the attach.
    let warmup = crate::runtime::attach_warmup::now_in_background();
    if let Some(cgroup) = &req.shim_cgroup {
        // As the runc shim does with its ShimCgroup: the shim process joins that cgroup.
        containerd_shim::cgroup::add_task_to_cgroup(cgroup, std::process::id()).map_err(|e| {
            ShimError::InvalidArgument {
                id: id.to_owned(),
                reason: format!("cannot move the shim into ShimCgroup {cgroup:?}: {e}"),
            }
        })?;
        log::info!("container {id}: the shim joined cgroup {cgroup}");
    }
    let bundle = Bundle::new(bundle);
    // Everything from here on is undone unless the create commits.
    let mut undo = CreateUndo::new(id);
    bundle.mount_rootfs(id, rootfs, |m| mount_idmapped(rt, id, m))?;
    let rootfs_mounted = !rootfs.is_empty();
    if rootfs_mounted {
        undo.rootfs = Some(bundle.clone());
    }
    steps.done("rootfs");
    let prepared = bundle.prepare(id, &req.config, rt.editor.as_ref())?;
    let editing = steps.done("bundle");
    if let Some(edits) = &prepared.edits {
        edits.log(id, editing);
    }
    let io = PreparedIo::open(id, &rt.namespace, stdio)?;
    steps.done("stdio");
    let state = StateRef {
        root: bundle.state_root(),
        id: id.to_owned(),
    };
    let (wire_io, pending) = io.split();
    let guard = rt.exits.begin_create();
    let args = CreateArgs {
        state: state.clone(),
        bundle: bundle.path().to_owned(),
        systemd: req.config.systemd_cgroup,
        io: wire_io,
        after: prepared.after,
        host_paths: prepared.host_paths,
    };
    let created = match rt.call(id, "create", Op::Create(Box::new(args))) {
        Ok(Done::Created(c)) => c,
        Ok(other) => return Err(unexpected(id, "create", &other)),
        Err(e) => {
            let systemd = req.config.systemd_cgroup;
            remove_left_cgroup(id, prepared.cgroups_path.as_deref(), systemd);
            return Err(e);
        }
    };
    steps.done("libcontainer");
    let route = guard.watch(created.pid, Arc::clone(exit));
    if created.detached_not_utf8 > 0 {
        log::warn!(
            "container {id}: {} host mount(s) whose mount table line is not UTF-8 left out of \
             its mount namespace (libcontainer cannot read such lines)",
            created.detached_not_utf8
        );
    }
    if created.overlay_mounts > 0 {
        log::info!(
            "container {id}: /proc/driver/nvidia overlay: {} mounts",
            created.overlay_mounts
        );
    }
    let cgroup = ContainerCgroup::new(id, created.cgroup_path.clone(), req.config.systemd_cgroup);
    undo.container = Some((state.clone(), cgroup.clone()));
    cgroup.join_hybrid(created.pid)?;
    // The spec's own pids limit, now that libcontainer's intermediate process is gone.
    if let Some(limit) = prepared.pids_limit {
        cgroup.set_pids_max(limit)?;
    }
    steps.done("cgroups");
    // A terminal's master comes over the console socket: up to seconds.
    let io = pending.attach(id, stdio, prepared.console_size)?;
    steps.done("attach");
    undo.commit();
    log::info!("container {id}: create steps: {steps}");
    if let Some(open) = warmup.and_then(|w| w.through_after(steps.started)) {
        // How much of this Create the kernel's grace period alone would have taken.
        log::info!(
            "container {id}: cgroup migrations open {:.2} ms into Create",
            open.as_secs_f64() * 1e3
        );
    }
    Ok(Created {
        container: LcContainer {
            id: id.to_owned(),
            bundle,
            state,
            cgroup,
            rootfs_mounted,
            plain_teardown: created.plain_teardown,
            plain_start: created.plain_start,
            seccomp: prepared.seccomp,
            user_ns: prepared.user_ns,
        },
        init: Spawned {
            pid: created.pid,
            io,
            route,
        },
        private_pid_ns: prepared.private_pid_ns,
    })
}

/// How long [`remove_left_cgroup`] waits for a failed create's init to leave its cgroup.
const LEFT_CGROUP_WAIT: Duration = Duration::from_secs(2);

/// Removes the cgroup a failed libcontainer create may have left. Its own clean-up gives the
/// dying init 100 ms to leave the cgroup, too little on a loaded host; here the directories
/// are removed once empty, for up to [`LEFT_CGROUP_WAIT`]. Only a plain cgroupfs path of the
/// spec's (libcontainer's own default and systemd slices are left to it).
fn remove_left_cgroup(id: &str, cgroups_path: Option<&std::path::Path>, systemd: bool) {
    let Some(path) = cgroups_path.filter(|p| p.is_absolute() && !systemd) else {
        return;
    };
    let cgroup = ContainerCgroup::new(id, path.to_owned(), systemd);
    let deadline = Instant::now() + LEFT_CGROUP_WAIT;
    loop {
        match cgroup.remove_emptied() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                log::warn!("container {id}: the failed create's cgroup stays: {e}");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// How long each step of one create took, in order: the breakdown `nvbench` prints.
struct Steps {
    started: Instant,
    last: Instant,
    taken: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            taken: Vec::with_capacity(6),
        }
    }

    /// Ends step `name` now; how long it took.
    fn done(&mut self, name: &'static str) -> Duration {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        self.taken.push((name, took));
        took
    }
}

/// `rootfs 0.31 ms, bundle 0.92 ms, ...`.
impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.taken.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.2} ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Mounts an idmapped overlay rootfs (user-namespace pods): its lower layers idmapped, the
/// overlay over them, in a worker (a user namespace is made by forking).
fn mount_idmapped(rt: &Libcontainer, id: &str, m: IdmappedRootfs) -> Result<()> {
    match rt.call(id, "mount the rootfs", Op::MountIdmapped(Box::new(m)))? {
        Done::Mounted => Ok(()),
        other => Err(unexpected(id, "mount the rootfs", &other)),
    }
}

/// What a create has done so far, undone when it is dropped before [`CreateUndo::commit`]: the
/// container libcontainer created (its init killed, its state and cgroups removed), then the
/// rootfs it mounted. (The exit route of the init, made after it, is dropped before it.)
struct CreateUndo {
    id: String,
    rootfs: Option<Bundle>,
    container: Option<(StateRef, ContainerCgroup)>,
}

impl CreateUndo {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            rootfs: None,
            container: None,
        }
    }

    /// The create succeeded: nothing is undone.
    fn commit(&mut self) {
        self.rootfs = None;
        self.container = None;
    }
}

impl Drop for CreateUndo {
    fn drop(&mut self) {
        if let Some((state, cgroup)) = self.container.take() {
            if let Err(e) = delete_in_process(&state, true) {
                log::warn!("{e}");
            }
            cgroup.remove_hybrid();
        }
        if let Some(bundle) = self.rootfs.take() {
            if let Err(e) = bundle.unmount_rootfs(&self.id) {
                log::warn!("{e}");
            }
        }
    }
}
