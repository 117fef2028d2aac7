//! Adapters: the embedded durable store and the in-process nudges and events
//! that `tms serve` uses, and the AWS ones (DynamoDB, SQS, EventBridge) that
//! the Lambda functions and `tms serve --backend aws` use.

pub mod aws;
pub mod dynamo;
pub mod local;
pub mod sqlite;
pub mod stack;

pub use aws::{AwsClients, AwsPorts, AwsResources, EventBridgeEvents, SqsNudges};
pub use dynamo::DynamoStore;

pub use local::{ChannelEvents, NotifyNudges};
pub use sqlite::SqliteStore;
