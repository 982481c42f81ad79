//! Task events published to containerd.
//!
//! Events go through a queue: [`EventSink::publish`] returns at once and one forwarder task
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

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::util::timestamp;
use tokio::sync::{mpsc, oneshot};

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

/// A ttrpc client of containerd's `Events` service at `address` (its ttrpc socket).
/// [`connect`], a blocking call, run off the async thread.
async fn connect_off_thread(address: &str) -> std::io::Result<EventsClient> {
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || connect(&address))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
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

    /// Queues `event` (a message of package `containerd.events`) under `topic`; returns at
    /// once.
    pub fn publish<M: Message>(&self, topic: &str, event: M) {
        let envelope = match event.write_to_bytes() {
            Ok(value) => Envelope {
                timestamp: MessageField::from_option(timestamp().ok()),
                namespace: self.namespace.clone(),
                topic: topic.to_owned(),
                event: MessageField::some(Any {
                    type_url: format!("{EVENTS_PACKAGE}.{}", M::NAME),
                    value,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Err(e) => {
                log::warn!("publish {topic}: encode {}: {e}", M::NAME);
                return;
            }
        };
        if self.queue.send(Queued::Event(envelope)).is_err() {
            log::warn!("publish {topic}: the event forwarder has stopped");
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
}
