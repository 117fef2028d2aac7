//! Adapters: the embedded durable store and the in-process nudges and events
//! that `tms serve` uses, the AWS ones (DynamoDB, SQS, EventBridge, Secrets
//! Manager) that the Lambda functions and `tms serve --backend aws` use, and
//! the HTTP client that dispatches shards to CI platforms.

pub mod aws;
pub mod dynamo;
pub mod local;
pub mod platform;
pub mod sqlite;
pub mod stack;

pub use aws::{AwsClients, AwsPorts, AwsResources, EventBridgeEvents, SqsNudges};
pub use dynamo::DynamoStore;

pub use local::{ChannelEvents, LocalNudges};
pub use platform::{EnvSecrets, ReqwestHttp, SecretsManagerSecrets};
pub use sqlite::SqliteStore;
