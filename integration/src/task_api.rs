//! A client of a shim's Task API, as containerd calls it: `containerd.task.v2.Task`, or
//! `containerd.task.v3.Task` for the shims of containerd 2.x that serve only that (the runc
//! shim of 2.3). The messages are the same; the service name is found on the first call.

use std::sync::Mutex;

use containerd_shim_protos::api::{
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
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

    /// `Create`.
    pub fn create(
        &self,
        ctx: ttrpc::context::Context,
        req: &CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        self.call(ctx, "Create", req)
    }

    /// `ResizePty`.
    pub fn resize_pty(
        &self,
        ctx: ttrpc::context::Context,
        req: &ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        self.call(ctx, "ResizePty", req)
    }

    /// `Update`.
    pub fn update(
        &self,
        ctx: ttrpc::context::Context,
        req: &UpdateTaskRequest,
    ) -> ttrpc::Result<Empty> {
        self.call(ctx, "Update", req)
    }

    /// `Exec`.
    pub fn exec(
        &self,
        ctx: ttrpc::context::Context,
        req: &ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.call(ctx, "Exec", req)
    }

    /// `Start`.
    pub fn start(
        &self,
        ctx: ttrpc::context::Context,
        req: &StartRequest,
    ) -> ttrpc::Result<StartResponse> {
        self.call(ctx, "Start", req)
    }

    /// `Wait`.
    pub fn wait(
        &self,
        ctx: ttrpc::context::Context,
        req: &WaitRequest,
    ) -> ttrpc::Result<WaitResponse> {
        self.call(ctx, "Wait", req)
    }

    /// `Delete`.
    pub fn delete(
        &self,
        ctx: ttrpc::context::Context,
        req: &DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        self.call(ctx, "Delete", req)
    }

    /// `Shutdown`: the shim exits once it serves no container.
    pub fn shutdown(
        &self,
        ctx: ttrpc::context::Context,
        req: &ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        self.call(ctx, "Shutdown", req)
    }
}
