//! The shim's process-level commands: `start` (find or spawn the shim daemon of a container's
//! group and print its address), `delete` (clean up after a shim that died) and serving.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim_async::Client;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{
    socket_address, spawn, Config, DeleteResponse, Error, ExitSignal, Flags, Shim, StartOpts,
};
use libcontainer::container::Container as YoukiContainer;

use crate::bundle::Bundle;
use crate::driver::{Driver, StateRef};
use crate::events::EventSink;
use crate::options::{config_path_from_bytes, CONFIG_PATH_ENV};
use crate::task::{TaskApi, TaskService};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.nvidia.v2";

/// The shim's `containerd_shim::Shim` implementation.
pub struct NvidiaShim {
    exit: Arc<ExitSignal>,
    /// The task service's event queue, flushed before the shim exits.
    events: OnceLock<EventSink>,
    namespace: String,
    id: String,
    address: String,
}

impl std::fmt::Debug for NvidiaShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvidiaShim")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn bundle_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

#[async_trait]
impl Shim for NvidiaShim {
    type T = TaskApi;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            events: OnceLock::new(),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            address: args.address.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd writes the runtime options (an Any) on our stdin.
        let mut raw = Vec::new();
        std::io::stdin()
            .read_to_end(&mut raw)
            .map_err(|e| Error::Other(format!("read runtime options from stdin: {e}")))?;
        let config_path = config_path_from_bytes(&opts.id, &raw)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;

        let group = Bundle::new(bundle_dir()).group(&opts.id);
        let address = socket_address(&opts.address, &opts.namespace, &group);
        if group != opts.id && Client::connect(&address).await.is_ok() {
            // The group's shim already runs: this container joins it.
            write_str_to_file("address", &address).await?;
            return Ok(address);
        }
        let config_env = config_path
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let vars = if config_env.is_empty() {
            Vec::new()
        } else {
            vec![(CONFIG_PATH_ENV, config_env.as_str())]
        };
        let address = spawn(opts, &group, vars).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = Bundle::new(bundle_dir());
        let state = StateRef {
            root: bundle.state_root(),
            id: self.id.clone(),
        };
        let pid = YoukiContainer::load(state.dir())
            .ok()
            .and_then(|c| c.pid())
            .map(|p| u32::try_from(p.as_raw()).unwrap_or_default())
            .unwrap_or_default();
        if state.dir().exists() {
            if let Err(e) = Driver.delete(&state, true).await {
                log::warn!("{e}");
            }
        }
        if let Err(e) = bundle.unmount_rootfs(&self.id) {
            log::warn!("{e}");
        }
        // A shim killed outright leaves its socket; remove it unless a live shim answers there.
        let address = socket_address(&self.address, &self.namespace, &bundle.group(&self.id));
        if Client::connect(&address).await.is_err() {
            let path = address.trim_start_matches("unix://");
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("remove stale shim socket {path}: {e}");
                }
            }
        }
        Ok(DeleteResponse {
            pid,
            exit_status: 137,
            exited_at: MessageField::some(timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if let Some(events) = self.events.get() {
            events.flush().await;
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config_path = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
        crate::logdriver::set_namespace(&self.namespace);
        // Events go out without the publisher's reflection (see `events`); only its address is used.
        let events = EventSink::new(&publisher.address, &self.namespace);
        let _ = self.events.set(events.clone());
        TaskApi(TaskService::new(events, Arc::clone(&self.exit), config_path).await)
    }
}
