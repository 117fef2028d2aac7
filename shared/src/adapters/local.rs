//! In-process stand-ins for SQS nudges and the EventBridge bus.

use crate::error::{Error, Result};
use crate::ports::{Event, Events, Nudges};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Wakes the local scheduler loop; coalesces many nudges into one pass.
#[derive(Clone, Default)]
pub struct NotifyNudges(pub Arc<Notify>);

impl Nudges for NotifyNudges {
    async fn schedule(&self) {
        self.0.notify_one();
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
