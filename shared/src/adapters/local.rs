//! In-process stand-ins for SQS nudges and the EventBridge bus.

use crate::error::{Error, Result};
use crate::ports::{DispatchOrder, Event, Events, Nudges};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Wakes the local scheduler loop (coalescing many nudges into one pass)
/// and hands dispatch orders to the local dispatcher task.
#[derive(Clone)]
pub struct LocalNudges {
    pub wake: Arc<Notify>,
    dispatch: mpsc::UnboundedSender<DispatchOrder>,
}

impl LocalNudges {
    /// The nudges and the dispatcher's inbox.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<DispatchOrder>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            LocalNudges {
                wake: Arc::default(),
                dispatch: tx,
            },
            rx,
        )
    }
}

impl Nudges for LocalNudges {
    async fn schedule(&self) {
        self.wake.notify_one();
    }

    async fn dispatch(&self, order: DispatchOrder) {
        if self.dispatch.send(order).is_err() {
            tracing::warn!("dispatcher stopped; the timeout sweep will take the lease back");
        }
    }
}

/// Delivers events to the in-process aggregator task.
#[derive(Clone)]
pub struct ChannelEvents(pub mpsc::UnboundedSender<Event>);

impl ChannelEvents {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelEvents(tx), rx)
    }
}

impl Events for ChannelEvents {
    async fn publish(&self, event: Event) -> Result<()> {
        self.0
            .send(event)
            .map_err(|_| Error::Internal("event bus is closed".into()))
    }
}
