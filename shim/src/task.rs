//! The ttrpc Task service. `impl Task` is thin adapters; the work is in `TaskService`'s
//! inherent methods, which return [`ShimError`] and do not need a ttrpc context.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{DeleteResponse, ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::bundle::Bundle;
use crate::cgroup::{decode_resources, ContainerCgroup};
use crate::container::{Container, ContainerParts, StdioPaths, TaskState};
use crate::driver::{CreateArgs, Driver, ExecArgs, StateRef};
use crate::error::{Result, ShimError};
use crate::events::EventSink;
use crate::exec::{ExecProcess, Started};
use crate::exit::{ExitCell, ExitRouter, ExitStatus};
use crate::options::{config_path_from_any, load_config};
use crate::procio::PreparedIo;

/// How long a shim that has never been given a container waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// How long `Delete` of a created (never started) container waits for the killed init.
const KILLED_INIT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Table {
    containers: HashMap<String, Arc<Container>>,
    reserved: HashSet<String>,
    ever_created: bool,
}

/// The task service of one shim process (one container, or one pod when grouped).
pub struct TaskService {
    events: EventSink,
    table: Mutex<Table>,
    exits: Arc<ExitRouter>,
    driver: Driver,
    shutdown: Arc<ExitSignal>,
    start_config: Option<PathBuf>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("events", &self.events)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Releases a reserved id unless the create committed it.
struct Reservation<'a> {
    service: &'a TaskService,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.service.table).reserved.remove(&self.id);
    }
}

impl TaskService {
    /// A service publishing to `events`; `start_config` is the config path `start` received.
    pub async fn new(
        events: EventSink,
        shutdown: Arc<ExitSignal>,
        start_config: Option<PathBuf>,
    ) -> Arc<Self> {
        let exits = Arc::new(ExitRouter::default());
        if let Err(e) = exits.spawn().await {
            log::error!("cannot subscribe to process exits: {e}");
        }
        let service = Arc::new(Self {
            events,
            table: Mutex::default(),
            exits,
            driver: Driver,
            shutdown,
            start_config,
        });
        let weak = Arc::downgrade(&service);
        tokio::spawn(async move {
            tokio::time::sleep(IDLE_EXIT).await;
            if let Some(s) = weak.upgrade() {
                let t = lock(&s.table);
                if !t.ever_created && t.reserved.is_empty() {
                    log::warn!("no container was created within {IDLE_EXIT:?}; exiting");
                    s.shutdown.signal();
                }
            }
        });
        service
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.table)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound { id: id.to_owned() })
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let mut t = lock(&self.table);
        if t.containers.contains_key(id) || !t.reserved.insert(id.to_owned()) {
            return Err(ShimError::AlreadyExists { id: id.to_owned() });
        }
        Ok(Reservation {
            service: self,
            id: id.to_owned(),
        })
    }

    /// Creates the container: rootfs, stdio, then libcontainer in the zygote.
    pub async fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        let id = req.id.as_str();
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented {
                id: id.to_owned(),
                what: "restore from checkpoint",
            });
        }
        let reservation = self.reserve(id)?;
        let config_path = match req.options.as_ref() {
            Some(any) => config_path_from_any(id, any)?,
            None => None,
        }
        .or_else(|| self.start_config.clone());
        let config = load_config(id, config_path.as_deref())?;

        let bundle = Bundle::new(&req.bundle);
        bundle.mount_rootfs(id, &req.rootfs).await?;
        let rootfs_mounted = !req.rootfs.is_empty();
        let undo_rootfs = |bundle: &Bundle| {
            if rootfs_mounted {
                if let Err(e) = bundle.unmount_rootfs(id) {
                    log::warn!("{e}");
                }
            }
        };
        let io = match PreparedIo::open(id, req.terminal, &req.stdin, &req.stdout, &req.stderr) {
            Ok(io) => io,
            Err(e) => {
                undo_rootfs(&bundle);
                return Err(e);
            }
        };
        let private_pid_ns = bundle.has_private_pid_namespace();
        let state_ref = StateRef {
            root: bundle.state_root(),
            id: id.to_owned(),
        };
        let (wire_io, pending) = io.split();
        let exit = Arc::new(ExitCell::default());
        let guard = self.exits.begin_create();
        let created = self
            .driver
            .create(CreateArgs {
                state: state_ref.clone(),
                bundle: bundle.path().to_owned(),
                systemd: config.systemd_cgroup,
                io: wire_io,
            })
            .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                drop(pending);
                undo_rootfs(&bundle);
                return Err(e);
            }
        };
        self.exits.watch(created.pid, Arc::clone(&exit));
        drop(guard);
        let io = match pending.attach(id, &req.stdin, &req.stdout) {
            Ok(io) => io,
            Err(e) => {
                if let Err(del) = self.driver.delete(&state_ref, true).await {
                    log::warn!("{del}");
                }
                self.exits.forget(created.pid);
                undo_rootfs(&bundle);
                return Err(e);
            }
        };

        let container = Arc::new(Container::new(
            ContainerParts {
                id: id.to_owned(),
                cgroup: ContainerCgroup::new(id, created.cgroup_path, config.systemd_cgroup),
                bundle,
                state_ref,
                pid: created.pid,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                rootfs_mounted,
                private_pid_ns,
                io,
            },
            exit,
        ));
        {
            let mut t = lock(&self.table);
            t.containers.insert(id.to_owned(), Arc::clone(&container));
            t.ever_created = true;
        }
        drop(reservation);
        log::info!("container {id}: created, init pid {}", created.pid);
        crate::oom::watch(&container, self.events.clone());
        let pid = u32::try_from(created.pid).unwrap_or_default();
        self.events
            .publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id.to_owned(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(pid)
    }

    /// Starts a created container (or, with an exec id, one of its exec processes) and
    /// begins reporting its exit.
    pub async fn start(&self, req: &StartRequest) -> Result<u32> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.start_exec(&c, &req.exec_id).await;
        }
        if let Err(found) = c.transition(TaskState::Created, TaskState::Running) {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot start a task in state {found:?}"),
            });
        }
        self.driver.start(&c.state_ref).await?;
        log::info!("container {}: started", c.id);
        let pid = u32::try_from(c.pid).unwrap_or_default();
        self.events
            .publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: c.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        // Spawned after TaskStart is queued, so TaskExit always follows it.
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = c.exit.wait().await;
            c.io.drained().await;
            log::info!("container {}: exited with status {}", c.id, status.code);
            if !c.private_pid_ns {
                // No pid namespace of its own: nothing else ends the rest, so the shim does,
                // as the runc shim does.
                kill_remaining(&c);
            }
            events
                .publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: c.id.clone(),
                        id: c.id.clone(),
                        pid,
                        exit_status: status.code,
                        exited_at: MessageField::some(status.at),
                        ..Default::default()
                    }),
                )
                .await;
        });
        Ok(pid)
    }

    /// The task's state as containerd reads it.
    pub fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let exit = e.exit.get();
            return Ok(StateResponse {
                id: e.exec_id.clone(),
                exec_id: e.exec_id.clone(),
                bundle: c.bundle.path().to_string_lossy().into_owned(),
                pid: e.pid(),
                status: e.state().status(),
                stdin: e.stdio.stdin.clone(),
                stdout: e.stdio.stdout.clone(),
                stderr: e.stdio.stderr.clone(),
                terminal: e.stdio.terminal,
                exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                ..Default::default()
            });
        }
        let exit = c.exit.get();
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.path().to_string_lossy().into_owned(),
            pid: u32::try_from(c.pid).unwrap_or_default(),
            status: c.state().status(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    /// Signals init, or every process of the container with `all`.
    pub async fn kill(&self, req: &KillRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let not_running = || ShimError::ProcessFinished {
                id: format!("{} exec {}", c.id, e.exec_id),
            };
            let started = e.started().ok_or_else(|| ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("exec {} is not started", e.exec_id),
            })?;
            if e.exit.get().is_some() {
                return Err(not_running());
            }
            let signal =
                nix::sys::signal::Signal::try_from(i32::try_from(req.signal).unwrap_or(-1))
                    .map_err(|_| ShimError::InvalidArgument {
                        id: c.id.clone(),
                        reason: format!("invalid signal {}", req.signal),
                    })?;
            // The pid stays ours until the shim reaps it, and it is reaped only once exited.
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(started.pid), signal)
                .map_err(|_| not_running());
        }
        if c.state() == TaskState::Stopped {
            return Err(ShimError::ProcessFinished { id: c.id.clone() });
        }
        match self.driver.kill(&c.state_ref, req.signal, req.all).await {
            Err(_) if c.state() == TaskState::Stopped => {
                Err(ShimError::ProcessFinished { id: c.id.clone() })
            }
            other => other,
        }
    }

    /// Waits for init to exit.
    pub async fn wait(&self, req: &WaitRequest) -> Result<WaitResponse> {
        let c = self.get(&req.id)?;
        let status = if req.exec_id.is_empty() {
            let status = c.exit.wait().await;
            c.io.drained().await;
            status
        } else {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let status = e.exit.wait().await;
            if let Some(s) = e.started() {
                s.io.drained().await;
            }
            status
        };
        Ok(WaitResponse {
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// Deletes a stopped or never-started container and everything the shim made for it.
    pub async fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&c, &req.exec_id);
        }
        match c.state() {
            TaskState::Running | TaskState::Paused => {
                return Err(ShimError::FailedPrecondition {
                    id: c.id.clone(),
                    reason: "cannot delete a running task; kill it first".into(),
                })
            }
            TaskState::Created => {
                self.driver.delete(&c.state_ref, true).await?;
                if tokio::time::timeout(KILLED_INIT_WAIT, c.exit.wait())
                    .await
                    .is_err()
                {
                    log::warn!("container {}: killed init was not reaped in time", c.id);
                }
            }
            TaskState::Stopped => self.driver.delete(&c.state_ref, true).await?,
        }
        c.io.close_stdin();
        for e in c.execs() {
            if let Some(s) = e.started() {
                s.io.close_stdin();
                self.exits.forget(s.pid);
            }
            c.remove_exec(&e.exec_id);
        }
        if c.rootfs_mounted {
            c.bundle.unmount_rootfs(&c.id)?;
        }
        self.exits.forget(c.pid);
        lock(&self.table).containers.remove(&c.id);
        let status = c.exit.get().unwrap_or_else(|| ExitStatus::now(137));
        let pid = u32::try_from(c.pid).unwrap_or_default();
        log::info!("container {}: deleted", c.id);
        self.events
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: c.id.clone(),
                    pid,
                    exit_status: status.code,
                    exited_at: MessageField::some(status.at.clone()),
                    ..Default::default()
                }),
            )
            .await;
        Ok(DeleteResponse {
            pid,
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// Every process in the container's cgroup.
    pub async fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.get(&req.id)?;
        let cgroup = c.cgroup.clone();
        let pids = tokio::task::spawn_blocking(move || cgroup.pids())
            .await
            .map_err(|e| ShimError::io(&c.id, "pids", std::io::Error::other(e)))??;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .filter_map(|p| u32::try_from(p).ok())
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Freezes (`pause = true`) or thaws the container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.get(id)?;
        let (from, to) = if pause {
            (TaskState::Running, TaskState::Paused)
        } else {
            (TaskState::Paused, TaskState::Running)
        };
        if let Err(found) = c.transition(from, to) {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!(
                    "cannot {} a task in state {found:?}",
                    if pause { "pause" } else { "resume" }
                ),
            });
        }
        let done = if pause {
            self.driver.pause(&c.state_ref).await
        } else {
            self.driver.resume(&c.state_ref).await
        };
        if let Err(e) = done {
            let _ = c.transition(to, from);
            return Err(e);
        }
        if pause {
            self.events
                .publish(
                    topics::TASK_PAUSED_EVENT_TOPIC,
                    Box::new(TaskPaused {
                        container_id: c.id.clone(),
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            self.events
                .publish(
                    topics::TASK_RESUMED_EVENT_TOPIC,
                    Box::new(TaskResumed {
                        container_id: c.id.clone(),
                        ..Default::default()
                    }),
                )
                .await;
        }
        Ok(())
    }

    /// Cgroup metrics (v1 or v2 message, as the host has).
    pub async fn stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let c = self.get(&req.id)?;
        let cgroup = c.cgroup.clone();
        let any = tokio::task::spawn_blocking(move || cgroup.metrics())
            .await
            .map_err(|e| ShimError::io(&c.id, "stats", std::io::Error::other(e)))??;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    /// Applies new resource limits.
    pub async fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: "update without resources".into(),
            })?;
        let resources = decode_resources(&c.id, any)?;
        let cgroup = c.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.update(&resources))
            .await
            .map_err(|e| ShimError::io(&c.id, "update", std::io::Error::other(e)))?
    }

    /// Closes init's stdin.
    pub fn close_io(&self, req: &CloseIORequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if !req.stdin {
            return Ok(());
        }
        if req.exec_id.is_empty() {
            c.io.close_stdin();
        } else if let Some(s) = Self::get_exec(&c, &req.exec_id)?.started() {
            s.io.close_stdin();
        }
        Ok(())
    }

    /// Resizes the terminal of init or of an exec process.
    pub fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        let no_tty = || ShimError::FailedPrecondition {
            id: c.id.clone(),
            reason: "the process has no terminal".into(),
        };
        if req.exec_id.is_empty() {
            let console = c.io.console().ok_or_else(no_tty)?;
            return console.resize(&c.id, req.width, req.height);
        }
        let started = Self::get_exec(&c, &req.exec_id)?
            .started()
            .ok_or_else(no_tty)?;
        let console = started.io.console().ok_or_else(no_tty)?;
        console.resize(&c.id, req.width, req.height)
    }

    fn get_exec(c: &Container, exec_id: &str) -> Result<Arc<ExecProcess>> {
        c.exec(exec_id).ok_or_else(|| ShimError::NotFound {
            id: format!("{} exec {exec_id}", c.id),
        })
    }

    /// Registers an exec process (`Exec`); `Start` with its id runs it.
    pub async fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if c.state() == TaskState::Stopped {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot exec {}: the container is not running", req.exec_id),
            });
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!("exec {} has no process spec", req.exec_id),
            })?;
        // Validate now, so a malformed spec fails Exec rather than Start.
        serde_json::from_slice::<oci_spec::runtime::Process>(&any.value).map_err(|e| {
            ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!(
                    "exec {}: process spec is not OCI Process JSON: {e}",
                    req.exec_id
                ),
            }
        })?;
        let exec = Arc::new(ExecProcess::new(
            &req.exec_id,
            any.value.clone(),
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        ));
        if !c.add_exec(exec) {
            return Err(ShimError::AlreadyExists {
                id: format!("{} exec {}", c.id, req.exec_id),
            });
        }
        self.events
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(())
    }

    async fn start_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<u32> {
        let e = Self::get_exec(c, exec_id)?;
        if c.state() == TaskState::Stopped {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot start exec {exec_id}: the container is not running"),
            });
        }
        if !e.claim_start() {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("exec {exec_id} was already started"),
            });
        }
        let spec_file = c.bundle.path().join(format!(".exec-{exec_id}.json"));
        std::fs::write(&spec_file, &e.process)
            .map_err(|err| ShimError::io(&c.id, format!("write {}", spec_file.display()), err))?;
        let io = PreparedIo::open(
            &c.id,
            e.stdio.terminal,
            &e.stdio.stdin,
            &e.stdio.stdout,
            &e.stdio.stderr,
        );
        let io = match io {
            Ok(io) => io,
            Err(err) => {
                let _ = std::fs::remove_file(&spec_file);
                return Err(err);
            }
        };
        let (wire_io, pending) = io.split();
        let guard = self.exits.begin_create();
        let pid = self
            .driver
            .exec(ExecArgs {
                state: c.state_ref.clone(),
                process: spec_file.clone(),
                io: wire_io,
            })
            .await;
        let _ = std::fs::remove_file(&spec_file);
        let pid = match pid {
            Ok(pid) => pid,
            Err(err) => {
                drop(pending);
                // containerd deletes the exec next; report it as failed to run.
                e.exit.set(ExitStatus::now(127));
                return Err(err);
            }
        };
        self.exits.watch(pid, Arc::clone(&e.exit));
        drop(guard);
        let io = match pending.attach(&c.id, &e.stdio.stdin, &e.stdio.stdout) {
            Ok(io) => Arc::new(io),
            Err(err) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(err);
            }
        };
        e.set_started(Started {
            pid,
            io: Arc::clone(&io),
        });
        let upid = u32::try_from(pid).unwrap_or_default();
        log::info!("container {}: exec {exec_id} started, pid {pid}", c.id);
        self.events
            .publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id: exec_id.to_owned(),
                    pid: upid,
                    ..Default::default()
                }),
            )
            .await;
        let events = self.events.clone();
        let container_id = c.id.clone();
        tokio::spawn(async move {
            let status = e.exit.wait().await;
            io.drained().await;
            log::info!(
                "container {container_id}: exec {} exited with status {}",
                e.exec_id,
                status.code
            );
            events
                .publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id,
                        id: e.exec_id.clone(),
                        pid: upid,
                        exit_status: status.code,
                        exited_at: MessageField::some(status.at),
                        ..Default::default()
                    }),
                )
                .await;
        });
        Ok(upid)
    }

    fn delete_exec(&self, c: &Container, exec_id: &str) -> Result<DeleteResponse> {
        let e = Self::get_exec(c, exec_id)?;
        if e.state() == TaskState::Running {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot delete running exec {exec_id}"),
            });
        }
        c.remove_exec(exec_id);
        if let Some(s) = e.started() {
            s.io.close_stdin();
            self.exits.forget(s.pid);
        }
        let status = e.exit.get().unwrap_or_else(|| ExitStatus::now(0));
        Ok(DeleteResponse {
            pid: e.pid(),
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// The shim's and the task's pids.
    pub fn connect(&self, req: &ConnectRequest) -> Result<ConnectResponse> {
        let task_pid = self
            .get(&req.id)
            .map(|c| u32::try_from(c.pid).unwrap_or_default())
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    /// Exits the shim once it serves no container.
    pub fn shutdown(&self) {
        let t = lock(&self.table);
        if t.containers.is_empty() && t.reserved.is_empty() {
            log::info!("no containers left; shutting down");
            self.shutdown.signal();
        }
    }
}

/// SIGKILLs every process left in the container's cgroup.
fn kill_remaining(c: &Container) {
    match c.cgroup.pids() {
        Ok(pids) => {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Err(e) => log::warn!("{e}"),
    }
}

/// The ttrpc face of [`TaskService`].
#[derive(Debug, Clone)]
pub struct TaskApi(pub Arc<TaskService>);

#[async_trait]
impl Task for TaskApi {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = self
            .0
            .create(&req)
            .await
            .inspect_err(|e| log::error!("{e}"))?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self
            .0
            .start(&req)
            .await
            .inspect_err(|e| log::error!("{e}"))?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.0.state(&req)?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.0.kill(&req).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.0.wait(&req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self
            .0
            .delete(&req)
            .await
            .inspect_err(|e| log::error!("{e}"))?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.0.pids(&req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.0.set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.0.set_paused(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.0.stats(&req).await?)
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.0.update(&req).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.0.close_io(&req)?;
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        Ok(self.0.connect(&req)?)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.0
            .exec(&req)
            .await
            .inspect_err(|e| log::error!("{e}"))?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.0.resize_pty(&req)?;
        Ok(Empty::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.0.shutdown();
        Ok(Empty::new())
    }
}
