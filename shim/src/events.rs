//! Task events published to containerd. A failed publish is logged, never fatal: containerd
//! also learns of state through `State` and `Wait`.

use std::sync::Arc;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// Publishes events into one containerd namespace.
#[derive(Clone)]
pub struct EventSink {
    publisher: Arc<RemotePublisher>,
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
    /// A sink over containerd's publisher for `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher: Arc::new(publisher),
            namespace: namespace.to_owned(),
        }
    }

    /// Queues `event` under `topic`; events are delivered in the order they are queued.
    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::warn!("publish {topic}: {e}");
        }
    }
}
