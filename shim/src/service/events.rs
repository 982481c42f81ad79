//! Task events published to containerd: what the service reports ([`Event`], built into
//! containerd's messages in one place, [`Event::into_message`]), the seam it reports through
//! ([`EventSender`]) and the sender to containerd ([`EventSink`]).
//!
//! Events go through a queue: [`EventSink::send`] returns at once and one forwarder task
//! delivers the queue in order over a ttrpc connection to containerd's `Events` service, as
//! the Go runc shim does. A failed delivery is logged (after one reconnect), never fatal:
//! containerd also learns of state through `State` and `Wait`. Before the shim exits it calls
//! [`EventSink::flush`], so that the last events (`TaskExit`, `TaskDelete`) reach containerd
//! instead of dying with the process.
//!
//! The envelope's `Any` is built from the message's static name rather than through
//! `containerd-shim`'s `RemotePublisher`, which asks rust-protobuf's reflection for it: building
//! those descriptors costs every shim about 500 KB of heap for as long as it lives.

use std::time::Duration;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::util::timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::io::procio::StdioPaths;
use crate::runtime::exit::ExitStatus;

/// A task event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A container was created (`TaskCreate`).
    Create {
        /// Container id.
        id: String,
        /// Its bundle.
        bundle: String,
        /// Its rootfs mounts, as containerd sent them.
        rootfs: Vec<Mount>,
        /// Init's stdio.
        stdio: StdioPaths,
        /// The checkpoint it was restored from (none: unsupported).
        checkpoint: String,
        /// Init's pid.
        pid: u32,
    },
    /// A container's init started (`TaskStart`).
    Start {
        /// Container id.
        id: String,
        /// Init's pid.
        pid: u32,
    },
    /// An exec was registered (`TaskExecAdded`).
    ExecAdded {
        /// Container id.
        id: String,
        /// The exec id.
        exec_id: String,
    },
    /// An exec started (`TaskExecStarted`).
    ExecStarted {
        /// Container id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Its pid.
        pid: u32,
    },
    /// A process exited (`TaskExit`).
    Exit {
        /// Container id.
        id: String,
        /// The process: the container id for init, else the exec id.
        process: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A container was deleted (`TaskDelete`).
    Delete {
        /// Container id.
        id: String,
        /// Init's pid.
        pid: u32,
        /// How init ended.
        status: ExitStatus,
    },
    /// A container was frozen (`TaskPaused`).
    Paused {
        /// Container id.
        id: String,
    },
    /// A container was thawed (`TaskResumed`).
    Resumed {
        /// Container id.
        id: String,
    },
    /// The OOM killer acted in a container (`TaskOOM`).
    Oom {
        /// Container id.
        id: String,
    },
}

/// `$message` (a message of package `containerd.events`) of `$fields`, every other field its
/// default, under topic `$topic`: (topic, message name, its encoding).
macro_rules! message {
    ($topic:ident => $message:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        (
            topics::$topic,
            $message::NAME,
            $message { $($field $(: $value)?,)* ..Default::default() }
                .write_to_bytes()
                .map_err(|e| e.to_string()),
        )
    };
}

/// An event as containerd's message: its topic, the message's name and its encoding.
pub type Encoded = (&'static str, &'static str, Result<Vec<u8>, String>);

impl Event {
    /// The event's topic and containerd's message for it (`containerd.events.Task*`), encoded:
    /// the one place the shim's events become containerd's.
    pub fn into_message(self) -> Encoded {
        match self {
            Self::Create {
                id,
                bundle,
                rootfs,
                stdio,
                checkpoint,
                pid,
            } => {
                let io = MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                });
                message!(TASK_CREATE_EVENT_TOPIC => TaskCreate { container_id: id, bundle, rootfs, io, checkpoint, pid })
            }
            Self::Start { id, pid } => {
                message!(TASK_START_EVENT_TOPIC => TaskStart { container_id: id, pid })
            }
            Self::ExecAdded { id, exec_id } => {
                message!(TASK_EXEC_ADDED_EVENT_TOPIC => TaskExecAdded { container_id: id, exec_id })
            }
            Self::ExecStarted { id, exec_id, pid } => {
                message!(TASK_EXEC_STARTED_EVENT_TOPIC => TaskExecStarted { container_id: id, exec_id, pid })
            }
            Self::Exit {
                id,
                process,
                pid,
                status,
            } => message!(TASK_EXIT_EVENT_TOPIC => TaskExit {
                container_id: id, id: process, pid, exit_status: status.code, exited_at: MessageField::some(status.at)
            }),
            Self::Delete { id, pid, status } => message!(TASK_DELETE_EVENT_TOPIC => TaskDelete {
                container_id: id, pid, exit_status: status.code, exited_at: MessageField::some(status.at)
            }),
            Self::Paused { id } => {
                message!(TASK_PAUSED_EVENT_TOPIC => TaskPaused { container_id: id })
            }
            Self::Resumed { id } => {
                message!(TASK_RESUMED_EVENT_TOPIC => TaskResumed { container_id: id })
            }
            Self::Oom { id } => message!(TASK_OOM_EVENT_TOPIC => TaskOOM { container_id: id }),
        }
    }
}

/// What the task service reports events through: to containerd ([`EventSink`]), or to a
/// recorder in tests. `send` returns at once.
pub trait EventSender: Send + Sync + 'static {
    /// Reports `event`.
    fn send(&self, event: Event);
}

/// How long [`EventSink::flush`] waits for containerd to take the queued events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The protobuf package of containerd's task events (`containerd.events.TaskCreate`, ...).
const EVENTS_PACKAGE: &str = "containerd.events";

enum Queued {
    Event(Envelope),
    Flush(oneshot::Sender<()>),
}

/// Publishes events into one containerd namespace, in the order they are queued.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::UnboundedSender<Queued>,
    namespace: String,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A ttrpc client of containerd's `Events` service at `address` (its ttrpc socket), connected
/// on the blocking pool.
async fn connect_off_thread(address: &str) -> std::io::Result<EventsClient> {
    let address = address.to_owned();
    crate::service::edge::off_thread(move || connect(&address))
        .await
        .and_then(|connected| connected)
}

fn connect(address: &str) -> std::io::Result<EventsClient> {
    let fd = containerd_shim::util::connect(address)
        .map_err(|e| std::io::Error::other(format!("connect to {address}: {e}")))?;
    // SAFETY: `connect` returns a connected unix socket that nothing else owns; the client
    // takes ownership of it.
    let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
    Ok(EventsClient::new(client))
}

impl EventSink {
    /// A sink delivering to containerd's ttrpc socket `address` for `namespace`; spawns its
    /// forwarder on the current tokio runtime. The connection is made on the first event.
    pub fn new(address: &str, namespace: &str) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        let address = address.to_owned();
        tokio::spawn(async move {
            let mut client: Option<EventsClient> = None;
            while let Some(item) = rx.recv().await {
                let envelope = match item {
                    Queued::Event(envelope) => envelope,
                    Queued::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let req = ForwardRequest {
                    envelope: MessageField::some(envelope),
                    ..Default::default()
                };
                // One retry on a fresh connection: containerd may have restarted.
                for attempt in 0..2 {
                    let c = match client.take() {
                        Some(c) => c,
                        None => match connect_off_thread(&address).await {
                            Ok(c) => c,
                            Err(e) => {
                                log::warn!("publish {}: {e}", req.envelope.topic);
                                break;
                            }
                        },
                    };
                    match c.forward(Context::default(), &req).await {
                        Ok(_) => {
                            client = Some(c);
                            break;
                        }
                        Err(e) if attempt == 0 => {
                            log::debug!("publish {}: {e}; reconnecting", req.envelope.topic)
                        }
                        Err(e) => log::warn!("publish {}: {e}", req.envelope.topic),
                    }
                }
            }
        });
        Self {
            queue,
            namespace: namespace.to_owned(),
        }
    }

    /// Waits until every event queued before this call has been delivered to containerd (or
    /// given up on), for at most five seconds.
    pub async fn flush(&self) {
        let (done, delivered) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_err() {
            return;
        }
        if tokio::time::timeout(FLUSH_TIMEOUT, delivered)
            .await
            .is_err()
        {
            log::warn!("events not delivered to containerd within {FLUSH_TIMEOUT:?}");
        }
    }
}

impl EventSender for EventSink {
    /// Queues `event` for containerd; returns at once.
    fn send(&self, event: Event) {
        let (topic, name, value) = event.into_message();
        let envelope = match value {
            Ok(value) => Envelope {
                timestamp: MessageField::from_option(timestamp().ok()),
                namespace: self.namespace.clone(),
                topic: topic.to_owned(),
                event: MessageField::some(Any {
                    type_url: format!("{EVENTS_PACKAGE}.{name}"),
                    value,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Err(e) => {
                log::warn!("publish {topic}: encode {name}: {e}");
                return;
            }
        };
        if self.queue.send(Queued::Event(envelope)).is_err() {
            log::warn!("publish {topic}: the event forwarder has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::events::task::TaskExit;
    use containerd_shim::protos::protobuf::MessageFull;

    use super::*;

    #[test]
    fn the_static_type_url_is_the_one_reflection_gives() {
        assert_eq!(
            format!("{EVENTS_PACKAGE}.{}", TaskExit::NAME),
            TaskExit::descriptor().full_name()
        );
    }

    #[test]
    fn each_event_is_its_topic_and_message() {
        let status = ExitStatus::now(7);
        let (topic, name, value) = Event::Exit {
            id: "c".into(),
            process: "e1".into(),
            pid: 42,
            status: status.clone(),
        }
        .into_message();
        assert_eq!((topic, name), ("/tasks/exit", "TaskExit"));
        let exit = TaskExit::parse_from_bytes(&value.unwrap()).unwrap();
        assert_eq!(
            (exit.container_id.as_str(), exit.id.as_str(), exit.pid),
            ("c", "e1", 42)
        );
        assert_eq!(exit.exit_status, 7);
        assert_eq!(exit.exited_at.unwrap(), status.at);
        let (topic, name, _) = Event::Oom { id: "c".into() }.into_message();
        assert_eq!((topic, name), ("/tasks/oom", "TaskOOM"));
        let (_, name, value) = Event::Create {
            id: "c".into(),
            bundle: "/b".into(),
            rootfs: Vec::new(),
            stdio: StdioPaths {
                stdout: "/fifo".into(),
                terminal: true,
                ..StdioPaths::default()
            },
            checkpoint: String::new(),
            pid: 9,
        }
        .into_message();
        assert_eq!(name, "TaskCreate");
        let create = TaskCreate::parse_from_bytes(&value.unwrap()).unwrap();
        assert_eq!((create.bundle.as_str(), create.pid), ("/b", 9));
        assert_eq!(create.io.stdout, "/fifo");
        assert!(create.io.terminal);
    }
}
