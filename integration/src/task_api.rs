//! A client of a shim's Task API, as containerd calls it: `containerd.task.v2.Task`, or
//! `containerd.task.v3.Task` for the shims of containerd 2.x that serve only that (the runc
//! shim of 2.3). The messages are the same; the service name is found on the first call.

use std::sync::Mutex;

use containerd_shim_protos::api::{
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{CodedInputStream, Message, MessageField};
use containerd_shim_protos::ttrpc;

const SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// A Task API client on one shim socket.
pub struct TaskApi {
    client: ttrpc::Client,
    service: Mutex<Option<&'static str>>,
}

impl std::fmt::Debug for TaskApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskApi")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn unimplemented_service(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::RpcStatus(s)
        if s.code() == ttrpc::Code::UNIMPLEMENTED && s.message.starts_with("service "))
}

impl TaskApi {
    /// Connects to the shim socket at `address` (`unix://…`).
    pub fn connect(address: &str) -> ttrpc::Result<Self> {
        Ok(Self {
            client: ttrpc::Client::connect(address)?,
            service: Mutex::new(None),
        })
    }

    fn call_on<Req: Message, Resp: Message>(
        &self,
        service: &str,
        ctx: &ttrpc::context::Context,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let mut creq = ttrpc::Request::new();
        creq.set_service(service.to_owned());
        creq.set_method(method.to_owned());
        creq.set_timeout_nano(ctx.timeout_nano);
        creq.set_metadata(ttrpc::context::to_pb(ctx.metadata.clone()));
        creq.payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        let res = self.client.request(creq)?;
        let mut resp = Resp::new();
        resp.merge_from(&mut CodedInputStream::from_bytes(&res.payload))
            .map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        Ok(resp)
    }

    fn call<Req: Message, Resp: Message>(
        &self,
        ctx: ttrpc::context::Context,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let known = *self.service.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(service) = known {
            return self.call_on(service, &ctx, method, req);
        }
        let mut last = None;
        for service in SERVICES {
            match self.call_on(service, &ctx, method, req) {
                Err(e) if unimplemented_service(&e) => last = Some(e),
                other => {
                    *self.service.lock().unwrap_or_else(|e| e.into_inner()) = Some(service);
                    return other;
                }
            }
        }
        Err(last.unwrap_or_else(|| ttrpc::Error::Others("no Task service".into())))
    }
}

/// The Task API's methods the tests call: `name(ctx, &Request) -> Response`, each the RPC
/// `Method`.
macro_rules! methods {
    ($($name:ident $method:literal: $req:ty => $resp:ty;)*) => {
        impl TaskApi {
            $(
                #[doc = concat!("`", $method, "`.")]
                pub fn $name(&self, ctx: ttrpc::context::Context, req: &$req) -> ttrpc::Result<$resp> {
                    self.call(ctx, $method, req)
                }
            )*
        }
    };
}

methods! {
    create "Create": CreateTaskRequest => CreateTaskResponse;
    resize_pty "ResizePty": ResizePtyRequest => Empty;
    update "Update": UpdateTaskRequest => Empty;
    exec "Exec": ExecProcessRequest => Empty;
    start "Start": StartRequest => StartResponse;
    wait "Wait": WaitRequest => WaitResponse;
    delete "Delete": DeleteRequest => DeleteResponse;
    shutdown "Shutdown": ShutdownRequest => Empty;
}

/// An `Update` of task `id` to `resources` (OCI `LinuxResources` as JSON), as containerd sends
/// it.
pub fn update_request(id: &str, resources: &str) -> UpdateTaskRequest {
    any_request(
        id,
        "/opencontainers/runtime-spec/1/LinuxResources",
        resources.as_bytes(),
    )
}

/// An `Update` of task `id` whose resources are `value` typed `type_url`.
pub fn any_request(id: &str, type_url: &str, value: &[u8]) -> UpdateTaskRequest {
    UpdateTaskRequest {
        id: id.to_owned(),
        resources: MessageField::some(Any {
            type_url: type_url.to_owned(),
            value: value.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A ttrpc context with containerd's usual 10 s deadline, for calls to a shim's Task API.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

impl TaskApi {
    /// `Exec` of process `exec_id` in task `id` as containerd's client sends it: `process`,
    /// an OCI process spec as JSON, its stdout and stderr at the paths `stdio` (empty: none),
    /// with a terminal when `terminal`.
    pub fn exec_process(
        &self,
        (id, exec_id): (&str, &str),
        process: &serde_json::Value,
        stdio: [&str; 2],
        terminal: bool,
    ) -> ttrpc::Result<Empty> {
        let value = serde_json::to_vec(process).map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        let req = ExecProcessRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            terminal,
            stdout: stdio[0].to_owned(),
            stderr: stdio[1].to_owned(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.exec(ctx(), &req)
    }
}

/// The Task API's calls on one process, by task id and exec id (empty: the init process or
/// the task): `name(id, exec_id)`, each the RPC `Method` with containerd's deadline.
macro_rules! process_methods {
    ($($name:ident $method:ident: $req:ident => $resp:ty;)*) => {
        impl TaskApi {
            $(
                #[doc = concat!("`", stringify!($method), "` of process `exec_id` of task `id`.")]
                pub fn $name(&self, id: &str, exec_id: &str) -> ttrpc::Result<$resp> {
                    let req = $req {
                        id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        ..Default::default()
                    };
                    self.$method(ctx(), &req)
                }
            )*
        }
    };
}

process_methods! {
    start_process start: StartRequest => StartResponse;
    wait_process wait: WaitRequest => WaitResponse;
    delete_process delete: DeleteRequest => DeleteResponse;
}
