//! The ttrpc Task service. [`TaskApi`]'s `impl Task` is thin adapters; [`TaskService`]'s
//! methods each look the task up, call the process layer (`task`) on the blocking pool once
//! ([`edge`]), convert its answer into containerd's reply and publish the events it gives
//! ([`events`]). What containerd configures: [`options`].

pub mod edge;
pub mod events;
pub mod gone;
pub mod options;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::util::convert_to_any;
use containerd_shim::{DeleteResponse, ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::LinuxResources;

use crate::error::{Result, ShimError};
use crate::io::procio::StdioPaths;
use crate::runtime::{NewContainer, RootfsMount, Runtime};
use crate::service::edge::{blocking, detached};
use crate::service::events::{Event, EventSender};
use crate::service::gone::Gone;
use crate::service::options::create_options;
use crate::task::container::Container;
use crate::task::process::Process;
use crate::task::{ContainerOf, CreateOptions, Reservation, Tasks};
use crate::working_set::{Active, IdleTrim};

/// How long a shim that has never been given a container waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// How often such a shim looks whether its bundle is still there.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// How long a request for a container being created waits for the create to end.
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// The task service of one shim process (one container, or one pod when grouped).
pub struct TaskService<R: Runtime> {
    tasks: Arc<Tasks<R>>,
    events: Arc<dyn EventSender>,
    shutdown: Arc<ExitSignal>,
    /// A Shutdown came while a create ran (see [`TaskService::shutdown`]).
    shutdown_asked: AtomicBool,
    /// Containers deleted lately.
    gone: Gone,
    idle: IdleTrim,
}

impl<R: Runtime> std::fmt::Debug for TaskService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService").finish_non_exhaustive()
    }
}

/// Logs a request's failure for containerd's log, bounded as the reply is. A container that is
/// not there (containerd deletes a task whose Create failed) or a process that has already
/// exited (containerd kills what may have exited) is no error of the shim's.
fn report(e: &ShimError) {
    let text = nvidia_shim_core::quote::bounded(&e.to_string(), crate::error::MAX_MESSAGE);
    match e {
        ShimError::NotFound { .. } | ShimError::ProcessFinished { .. } => log::debug!("{text}"),
        _ => log::error!("{text}"),
    }
}

impl<R: Runtime> TaskService<R> {
    /// The service of `tasks`, reporting to `events`; `shutdown` ends the shim; `idle`
    /// releases the start-up code pages once requests stop.
    pub fn new(
        tasks: Arc<Tasks<R>>,
        events: Arc<dyn EventSender>,
        shutdown: Arc<ExitSignal>,
        idle: IdleTrim,
    ) -> Arc<Self> {
        Arc::new(Self {
            tasks,
            events,
            shutdown,
            shutdown_asked: AtomicBool::new(false),
            gone: Gone::default(),
            idle,
        })
    }

    /// Container `id` and its process `exec_id` (init when empty).
    fn lookup(&self, id: &str, exec_id: &str) -> Result<(Arc<ContainerOf<R>>, Arc<Process>)> {
        let c = self.tasks.get(id)?;
        let p = c.process(exec_id)?;
        Ok((c, p))
    }

    /// Container `id`; one still being created (by a request whose caller has given up, say)
    /// is waited for first.
    async fn lookup_created(&self, id: &str) -> Result<Arc<ContainerOf<R>>> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        while self.tasks.is_being_created(id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.tasks.get(id)
    }

    /// Creates the container; returns init's pid. The id is reserved as the request comes,
    /// before its work is scheduled, so a request for it that comes next (containerd's Delete
    /// once its deadline passed) waits for this create whatever order their work runs in.
    pub fn create(
        self: Arc<Self>,
        req: CreateTaskRequest,
    ) -> impl std::future::Future<Output = Result<u32>> + Send + 'static {
        let reserved = self.reserve(&req);
        async move {
            let (reservation, options) = reserved?;
            let id = req.id.clone();
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let container = NewContainer {
                id: id.clone(),
                bundle: req.bundle.clone().into(),
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| RootfsMount {
                        typ: m.type_.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
                stdio: stdio.clone(),
            };
            let (tasks, events) = (Arc::clone(&self.tasks), Arc::clone(&self.events));
            let oom_id = id.clone();
            let on_oom = Box::new(move || events.send(Event::Oom { id: oom_id.clone() }));
            let created = blocking(&id, "create", move || {
                tasks.create(reservation, container, options, on_oom)
            })
            .await;
            let c = created.inspect_err(|_| self.shutdown_if_asked())?;
            let pid = c.init.pid();
            self.events.send(Event::Create {
                id,
                bundle: req.bundle,
                rootfs: req.rootfs,
                stdio,
                checkpoint: req.checkpoint,
                pid,
            });
            Ok(pid)
        }
    }

    /// What a Create can be refused for at once, then the id's reservation.
    fn reserve(&self, req: &CreateTaskRequest) -> Result<(Reservation<R>, CreateOptions)> {
        let id = &req.id;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented {
                id: id.clone(),
                what: "restore from checkpoint",
            });
        }
        let options = match req.options.as_ref() {
            Some(any) => create_options(id, any)?,
            None => CreateOptions::default(),
        };
        let reservation = self.tasks.reserve(id)?;
        self.gone.forget(id);
        Ok((reservation, options))
    }

    /// Starts a created container (or one of its exec processes) and begins reporting its
    /// exit.
    pub async fn start(self: Arc<Self>, req: StartRequest) -> Result<u32> {
        let (c, p) = self.lookup(&req.id, &req.exec_id)?;
        let pid = {
            let (tasks, c, p) = (Arc::clone(&self.tasks), Arc::clone(&c), Arc::clone(&p));
            blocking(&req.id, "start", move || tasks.start(&c, &p)).await?
        };
        self.events.send(if p.is_init() {
            Event::Start {
                id: c.id.clone(),
                pid,
            }
        } else {
            Event::ExecStarted {
                id: c.id.clone(),
                exec_id: p.id.clone(),
                pid,
            }
        });
        // Spawned after the start's event is queued, so the exit's always follows it.
        tokio::spawn(Arc::clone(&self).report_exit(c, p, pid));
        Ok(pid)
    }

    /// Waits for process `p` of `c` to exit and its output to be out, then publishes its
    /// exit.
    async fn report_exit(self: Arc<Self>, c: Arc<ContainerOf<R>>, p: Arc<Process>, pid: u32) {
        let status = self.exited(&c, &p).await;
        if p.is_init() {
            log::info!("container {}: exited with status {}", c.id, status.code);
        } else {
            log::info!(
                "container {}: exec {} exited with status {}",
                c.id,
                p.id,
                status.code
            );
        }
        self.events.send(Event::Exit {
            id: c.id.clone(),
            process: p.id.clone(),
            pid,
            status,
        });
    }

    /// Process `p`'s exit, once what it wrote has reached the client and, for init of a
    /// container without a pid namespace of its own, once what it left behind is ended.
    async fn exited(
        &self,
        c: &Arc<ContainerOf<R>>,
        p: &Process,
    ) -> crate::runtime::exit::ExitStatus {
        let status = p.exit().wait().await;
        if let Some(io) = p.io() {
            io.drained().await;
        }
        if p.is_init() && !c.private_pid_ns {
            let (tasks, container) = (Arc::clone(&self.tasks), Arc::clone(c));
            let ended = blocking(&c.id, "end the rest", move || {
                tasks.end_the_rest(&container);
                Ok(())
            });
            if let Err(e) = ended.await {
                log::warn!("{e}");
            }
        }
        status
    }

    /// The task's state as containerd reads it.
    pub fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        match self.lookup(&req.id, &req.exec_id) {
            Ok((c, p)) => Ok(state_of(&c, &p, &req.exec_id)),
            Err(e) => self.gone.state(req).ok_or(e),
        }
    }

    /// Signals a process, or every process of the container with `all`.
    pub async fn kill(self: Arc<Self>, req: KillRequest) -> Result<()> {
        let (c, p) = self.lookup(&req.id, &req.exec_id)?;
        let tasks = Arc::clone(&self.tasks);
        blocking(&req.id, "kill", move || {
            tasks.kill(&c, &p, req.signal, req.all)
        })
        .await
    }

    /// Waits for a process to exit.
    pub async fn wait(&self, req: &WaitRequest) -> Result<WaitResponse> {
        let (c, p) = match self.lookup(&req.id, &req.exec_id) {
            Err(e) => return self.gone.wait(req).ok_or(e),
            Ok(found) => found,
        };
        let status = self.exited(&c, &p).await;
        Ok(WaitResponse {
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// Deletes an exec process, or the container with everything the shim made for it. A
    /// container deleted lately answers again as it did (see [`Gone`]).
    pub async fn delete(self: Arc<Self>, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = match self.lookup_created(&req.id).await {
            Err(e) => return self.gone.delete(&req).ok_or(e),
            Ok(c) => c,
        };
        let p = c.process(&req.exec_id)?;
        let deleted = {
            let (tasks, c, p) = (Arc::clone(&self.tasks), Arc::clone(&c), Arc::clone(&p));
            blocking(&req.id, "delete", move || tasks.delete(&c, &p)).await?
        };
        let reply = DeleteResponse {
            pid: deleted.pid,
            exit_status: deleted.status.code,
            exited_at: MessageField::some(deleted.status.at.clone()),
            ..Default::default()
        };
        if p.is_init() {
            self.gone
                .keep(&c.id, state_of(&c, &p, &req.exec_id), reply.clone());
            self.events.send(Event::Delete {
                id: c.id.clone(),
                pid: deleted.pid,
                status: deleted.status,
            });
        }
        Ok(reply)
    }

    /// Registers an exec process; `Start` with its id runs it.
    pub async fn exec(self: Arc<Self>, req: ExecProcessRequest) -> Result<()> {
        let c = self.tasks.get(&req.id)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req.spec.as_ref().map(|any| any.value.as_slice());
        self.tasks.exec(&c, &req.exec_id, spec, stdio)?;
        self.events.send(Event::ExecAdded {
            id: c.id.clone(),
            exec_id: req.exec_id,
        });
        Ok(())
    }

    /// Every process in the container's cgroup; an exec process's entry names its exec id,
    /// as the runc shim's does.
    pub async fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.tasks.get(&req.id)?;
        let tasks = Arc::clone(&self.tasks);
        let pids = blocking(&req.id, "pids", move || tasks.pids(&c)).await?;
        let processes = pids
            .into_iter()
            .filter_map(|(pid, exec_id)| {
                let info = exec_id.and_then(|exec_id| {
                    convert_to_any(Box::new(ProcessDetails {
                        exec_id,
                        ..Default::default()
                    }))
                    .ok()
                });
                Some(ProcessInfo {
                    pid: u32::try_from(pid).ok()?,
                    info: MessageField::from_option(info),
                    ..Default::default()
                })
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Freezes (`pause = true`) or thaws the container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.tasks.get(id)?;
        let tasks = Arc::clone(&self.tasks);
        let what = if pause { "pause" } else { "resume" };
        let container = Arc::clone(&c);
        blocking(id, what, move || tasks.set_paused(&container, pause)).await?;
        self.events.send(if pause {
            Event::Paused { id: c.id.clone() }
        } else {
            Event::Resumed { id: c.id.clone() }
        });
        Ok(())
    }

    /// Cgroup metrics (v1 or v2 message, as the host has).
    pub async fn stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let c = self.tasks.get(&req.id)?;
        let tasks = Arc::clone(&self.tasks);
        let any = blocking(&req.id, "stats", move || tasks.stats(&c)).await?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    /// Applies new resource limits.
    pub async fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.tasks.get(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: "update without resources".into(),
            })?;
        let resources = decode_resources(&c.id, any)?;
        let tasks = Arc::clone(&self.tasks);
        blocking(&req.id, "update", move || tasks.update(&c, &resources)).await
    }

    /// Closes a process's stdin.
    pub async fn close_io(&self, req: &CloseIORequest) -> Result<()> {
        let c = self.tasks.get(&req.id)?;
        if !req.stdin {
            return Ok(());
        }
        let p = c.process(&req.exec_id)?;
        let tasks = Arc::clone(&self.tasks);
        blocking(&req.id, "close stdin", move || {
            tasks.close_stdin(&p);
            Ok(())
        })
        .await
    }

    /// Resizes the terminal of init or of an exec process.
    pub async fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let (c, p) = self.lookup(&req.id, &req.exec_id)?;
        let (tasks, width, height) = (Arc::clone(&self.tasks), req.width, req.height);
        blocking(&req.id, "resize the terminal", move || {
            tasks.resize_pty(&c, &p, width, height)
        })
        .await
    }

    /// The shim's and the task's pids.
    pub fn connect(&self, req: &ConnectRequest) -> ConnectResponse {
        let task_pid = self
            .tasks
            .get(&req.id)
            .map(|c| c.init.pid())
            .unwrap_or_default();
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        }
    }

    /// Exits the shim once it serves no container. A Shutdown that comes while a create is
    /// still running (containerd gave up on it: its deadline passed) is kept, and carried out
    /// when that create fails and leaves the shim serving nothing; else nobody would ask again
    /// and the shim would wait for its idle limit.
    pub fn shutdown(&self) {
        if self.tasks.is_idle() {
            log::info!("no containers left; shutting down");
            self.shutdown.signal();
        } else if self.tasks.activity().1 {
            self.shutdown_asked.store(true, Ordering::SeqCst);
        }
    }

    /// Carries out a Shutdown kept while a create ran, now that it has failed.
    fn shutdown_if_asked(&self) {
        if self.shutdown_asked.load(Ordering::SeqCst) && self.tasks.is_idle() {
            log::info!(
                "the create containerd gave up on failed and no containers are left; shutting down"
            );
            self.shutdown.signal();
        }
    }
}

/// Process `p` of `c` as a State request for `exec_id` reads it.
fn state_of<C>(c: &Container<C>, p: &Process, exec_id: &str) -> StateResponse {
    let now = p.snapshot();
    StateResponse {
        id: p.id.clone(),
        exec_id: exec_id.to_owned(),
        bundle: c.bundle.to_string_lossy().into_owned(),
        pid: now.pid,
        status: now.state.status(),
        stdin: p.stdio.stdin.clone(),
        stdout: p.stdio.stdout.clone(),
        stderr: p.stdio.stderr.clone(),
        terminal: p.stdio.terminal,
        exit_status: now.exit.as_ref().map(|e| e.code).unwrap_or_default(),
        exited_at: MessageField::from_option(now.exit.map(|e| e.at)),
        ..Default::default()
    }
}

/// Decodes `UpdateTaskRequest.resources`: an `Any` whose value is the JSON of an OCI
/// `LinuxResources`, as containerd sends it.
pub fn decode_resources(id: &str, any: &Any) -> Result<LinuxResources> {
    serde_json::from_slice(&any.value).map_err(|e| ShimError::InvalidArgument {
        id: id.to_owned(),
        reason: format!(
            "resources ({}) are not OCI LinuxResources JSON: {e}",
            any.type_url
        ),
    })
}

/// Ends a shim that is never given a container: after [`IDLE_EXIT`], or at once when
/// containerd removed the bundle it was started in (a Create past its deadline: nobody will
/// come). `bundle` is the daemon's working directory, opened at its start.
pub fn exit_when_unused<R: Runtime>(service: &Arc<TaskService<R>>, bundle: Option<std::fs::File>) {
    let weak = Arc::downgrade(service);
    // A handle on the bundle tells when it is gone (renamed and removed, as containerd does),
    // wherever it went; its link count is in the inode the handle holds, so the check (an
    // `fstat` of that handle) reads no file and cannot block the async thread.
    let bundle_gone = move || {
        bundle
            .as_ref()
            .and_then(|dir| dir.metadata().ok())
            .is_none_or(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0)
    };
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        while started.elapsed() < IDLE_EXIT {
            tokio::time::sleep(IDLE_CHECK).await;
            let Some(s) = weak.upgrade() else { return };
            let (ever_created, creating) = s.tasks.activity();
            if ever_created {
                return;
            }
            if !creating && bundle_gone() {
                log::warn!("the bundle is gone and no container was created; exiting");
                s.shutdown.signal();
                return;
            }
        }
        if let Some(s) = weak.upgrade() {
            if s.tasks.activity() == (false, false) {
                log::warn!("no container was created within {IDLE_EXIT:?}; exiting");
                s.shutdown.signal();
            }
        }
    });
}

/// The ttrpc face of [`TaskService`].
#[derive(Debug)]
pub struct TaskApi<R: Runtime>(pub Arc<TaskService<R>>);

impl<R: Runtime> TaskApi<R> {
    /// The service, in use for one request: the idle trim waits for a quiet spell after it.
    fn svc(&self) -> Active<'_, TaskService<R>> {
        self.0.idle.active(&self.0)
    }

    /// Runs `body`, a request that changes state, on the service as a task of its own (see
    /// [`detached`]); its failure goes to the log.
    async fn changing<T, F, Fut>(&self, id: &str, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<TaskService<R>>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let svc = Arc::clone(&self.0);
        let active = Arc::clone(&self.0);
        let work = body(svc);
        detached(id, async move {
            let _active = active.idle.active(&*active);
            work.await
        })
        .await
        .inspect_err(report)
    }
}

#[async_trait]
impl<R: Runtime> Task for TaskApi<R> {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = self.changing(&req.id.clone(), |s| s.create(req)).await?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self.changing(&req.id.clone(), |s| s.start(req)).await?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.svc().state(&req)?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.changing(&req.id.clone(), |s| s.kill(req)).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.svc().wait(&req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.changing(&req.id.clone(), |s| s.delete(req)).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.svc().pids(&req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.svc().set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.svc().set_paused(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.svc().stats(&req).await?)
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.svc().update(&req).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.svc().close_io(&req).await?;
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        Ok(self.svc().connect(&req))
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.changing(&req.id.clone(), |s| s.exec(req)).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.svc().resize_pty(&req).await?;
        Ok(Empty::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.svc().shutdown();
        Ok(Empty::new())
    }
}
