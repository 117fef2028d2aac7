//! Adapters: the embedded durable store and the in-process nudges and events
//! that `tms serve` uses. The AWS adapters will sit beside them.

pub mod local;
pub mod sqlite;

pub use local::{ChannelEvents, NotifyNudges};
pub use sqlite::SqliteStore;
