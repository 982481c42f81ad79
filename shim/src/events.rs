//! Task events published to containerd.
//!
//! Publishing is a ttrpc round trip to containerd, so a request handler never waits for it:
//! [`EventSink::publish`] queues the event and one forwarder task delivers the queue in order,
//! as the Go runc shim does. A failed publish is logged, never fatal: containerd also learns of
//! state through `State` and `Wait`. Before the shim exits it calls [`EventSink::flush`], so
//! that the last events (`TaskExit`, `TaskDelete`) are delivered, not dropped with the process.

use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use tokio::sync::{mpsc, oneshot};

/// How long [`EventSink::flush`] waits for containerd to take the queued events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

enum Queued {
    Event(String, Box<dyn MessageDyn>),
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

impl EventSink {
    /// A sink over containerd's publisher for `namespace`; spawns its forwarder on the current
    /// tokio runtime.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        let ns = namespace.to_owned();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Queued::Event(topic, event) => {
                        if let Err(e) = publisher
                            .publish(Context::default(), &topic, &ns, event)
                            .await
                        {
                            log::warn!("publish {topic}: {e}");
                        }
                    }
                    Queued::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self {
            queue,
            namespace: namespace.to_owned(),
        }
    }

    /// Queues `event` under `topic`; returns at once.
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if self
            .queue
            .send(Queued::Event(topic.to_owned(), event))
            .is_err()
        {
            log::warn!("publish {topic}: the event forwarder has stopped");
        }
    }

    /// Waits until every event queued before this call has been handed to containerd (or
    /// failed), for at most five seconds.
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
