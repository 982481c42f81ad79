//! The ttrpc Task service. `impl Task` is thin adapters; the work is in `TaskService`'s
//! inherent methods, which return [`ShimError`] and do not need a ttrpc context: [`create`]
//! (Create and Start of the init process), [`exec`] (Exec processes), [`lifecycle`] (State,
//! Kill, Wait, Delete and the rest). The state it keeps: [`container`] (one container) and
//! [`exec_process`] (one exec'd process); what it publishes: [`events`]; what containerd
//! configures: [`options`].

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

use crate::error::{Result, ShimError};
use crate::gpu::proc_mount::OverlayArgs;
use crate::gpu::GpuInjector;
use crate::io::procio::PreparedIo;
use crate::runtime::bundle::{Adapted, Bundle};
use crate::runtime::cgroup::{decode_resources, ContainerCgroup};
use crate::runtime::driver::{CreateArgs, Driver, ExecArgs, StateRef};
use crate::runtime::exit::{ExitCell, ExitRouter, ExitStatus};
use crate::service::container::{Container, ContainerParts, StdioPaths, TaskState};
use crate::service::events::EventSink;
use crate::service::exec_process::{ExecProcess, Started};
use crate::service::options::{create_options, load_config, CreateOptions};
use crate::working_set::{Active, IdleTrim};

pub mod container;
mod create;
pub mod events;
mod exec;
pub mod exec_process;
mod lifecycle;
pub mod options;

/// How long a shim that has never been given a container waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// How long a request for a container being created waits for the create to end.
const CREATE_WAIT: Duration = Duration::from_secs(60);
/// How often such a shim looks whether its bundle is still there.
const IDLE_CHECK: Duration = Duration::from_millis(250);
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
    gpu: Arc<GpuInjector>,
    shutdown: Arc<ExitSignal>,
    start_config: Option<PathBuf>,
    idle: IdleTrim,
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

/// Runs blocking work (file, cgroup and socket calls that may wait: a logging binary's
/// readiness, a console master, a cgroup file) off the async thread, which serves every
/// container of the shim.
async fn blocking<T, F>(id: &str, what: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(ShimError::io(
            id,
            what,
            std::io::Error::other(e.to_string()),
        )),
    }
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

/// What the zygote gives back once the shim is quiet: its code pages.
fn release_zygote_pages() {
    match Driver::release_code_pages() {
        Ok(bytes) => log::trace!("quiet: the zygote released {bytes} bytes of code mappings"),
        Err(e) => log::debug!("quiet: the zygote released nothing: {e}"),
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
            // Without exits no Wait would ever answer: do not serve at all. containerd sees
            // the shim gone and cleans up after it.
            log::error!("cannot subscribe to process exits: {e}; exiting");
            crate::cli::shim_commands::shim::remove_served_socket();
            std::process::exit(1);
        }
        let service = Arc::new(Self {
            events,
            table: Mutex::default(),
            exits,
            driver: Driver,
            gpu: Arc::default(),
            shutdown,
            start_config,
            idle: IdleTrim::spawn(release_zygote_pages),
        });
        let weak = Arc::downgrade(&service);
        // The daemon runs in the bundle of the container it was started for: a handle on it
        // tells when it is gone (renamed and removed, as containerd does), wherever it went.
        let bundle = std::fs::File::open(".").ok();
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
                let t = lock(&s.table);
                if t.ever_created {
                    return;
                }
                // containerd removes the bundle when it gives up on a shim it was starting
                // (a Create past its deadline): nobody will come.
                if t.reserved.is_empty() && bundle_gone() {
                    log::warn!("the bundle is gone and no container was created; exiting");
                    s.shutdown.signal();
                    return;
                }
            }
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

    /// Container `id`; one still being created (by a request whose caller has given up, say)
    /// is waited for first.
    async fn get_when_created(&self, id: &str) -> Result<Arc<Container>> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        while lock(&self.table).reserved.contains(id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.get(id)
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

/// The ttrpc face of [`TaskService`].
#[derive(Debug, Clone)]
pub struct TaskApi(pub Arc<TaskService>);

impl TaskApi {
    /// The service, in use for one request: the idle trim waits for a quiet spell after it.
    fn svc(&self) -> Active<'_, TaskService> {
        self.0.idle.active(&self.0)
    }

    /// Runs a request that changes state as a task of its own: when the caller gives up
    /// (containerd's deadline drops the request), the request still runs to its end, success or
    /// undone failure, instead of stopping half-way; a later request then finds it done.
    async fn detached<T, F, Fut>(&self, id: &str, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<TaskService>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let svc = Arc::clone(&self.0);
        let task = tokio::spawn(async move {
            let _active = svc.idle.active(&*svc);
            body(Arc::clone(&svc)).await
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(ShimError::io(
                id,
                "request task",
                std::io::Error::other(e.to_string()),
            )),
        }
    }
}

/// Logs a request's failure for containerd's log, bounded as the reply is. A container that is
/// not there (containerd deletes a task whose Create failed) is no error of the shim's.
fn report(e: &ShimError) {
    let text = nvidia_shim_core::quote::bounded(&e.to_string(), crate::error::MAX_MESSAGE);
    match e {
        ShimError::NotFound { .. } => log::debug!("{text}"),
        _ => log::error!("{text}"),
    }
}

#[async_trait]
impl Task for TaskApi {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = self
            .detached(
                &req.id.clone(),
                move |svc| async move { svc.create(&req).await },
            )
            .await
            .inspect_err(report)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self
            .detached(
                &req.id.clone(),
                move |svc| async move { svc.start(&req).await },
            )
            .await
            .inspect_err(report)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.svc().state(&req)?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.detached(
            &req.id.clone(),
            move |svc| async move { svc.kill(&req).await },
        )
        .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.svc().wait(&req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self
            .detached(
                &req.id.clone(),
                move |svc| async move { svc.delete(&req).await },
            )
            .await
            .inspect_err(report)?)
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
        self.svc().close_io(&req)?;
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        Ok(self.svc().connect(&req)?)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.detached(
            &req.id.clone(),
            move |svc| async move { svc.exec(&req).await },
        )
        .await
        .inspect_err(report)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.svc().resize_pty(&req)?;
        Ok(Empty::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.svc().shutdown();
        Ok(Empty::new())
    }
}
