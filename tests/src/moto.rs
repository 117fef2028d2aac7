//! DynamoDB, SQS and EventBridge for tests: the moto server that the test
//! command (`scripts/test`, via `scripts/moto`) starts on a free 127.0.0.1
//! port and names in `TMS_TEST_AWS_ENDPOINT`.

use crate::faults::{FaultPlan, FaultProxy};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use tms::adapters::dynamo::{DynamoStore, TableSpec};

/// The variable that carries the moto server's URL.
pub const ENDPOINT_VAR: &str = "TMS_TEST_AWS_ENDPOINT";

/// The moto server's URL; a clear failure when the test command did not start one.
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VAR} is not set: the DynamoDB tests need the moto server that \
             ./scripts/test starts (or run `eval \"$(scripts/moto start)\"` first)"
        )
    })
}

/// SDK settings for moto: fixed test credentials, us-east-1, the local endpoint.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_at(&endpoint()).await
}

/// [`sdk_config`] with another endpoint (a proxy in front of moto).
pub async fn sdk_config_at(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .endpoint_url(url)
        .load()
        .await
}

/// A name no other test uses, within DynamoDB's and SQS's naming rules.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A store on a new table, created from `template.yaml`'s definition.
pub async fn store() -> DynamoStore {
    let client = tms::adapters::dynamo::retry::client(&sdk_config().await);
    let table = unique_name("tms-test");
    TableSpec::from_template()
        .expect("template table")
        .create(&client, &table)
        .await
        .expect("create the table on moto");
    DynamoStore::new(client, table)
}

/// A store on a new table whose requests go through a [`FaultProxy`] with
/// `plan`; the proxy runs until the test's runtime ends.
pub async fn faulty_store(plan: FaultPlan) -> DynamoStore {
    let proxy = FaultProxy::start(&endpoint(), plan).await;
    let store = store_behind(&proxy).await;
    proxy.keep_running();
    store
}

/// A store on a new table whose requests go through `proxy`.
pub async fn store_behind(proxy: &FaultProxy) -> DynamoStore {
    let table = store().await.table().to_owned();
    let client = tms::adapters::dynamo::retry::client(&sdk_config_at(&proxy.url).await);
    DynamoStore::new(client, table)
}

/// The template's stateful resources on moto, under a stage no other test uses.
pub async fn stack() -> (
    tms::adapters::stack::Template,
    tms::adapters::stack::Stack,
    SdkConfig,
) {
    let sdk = sdk_config().await;
    let template = tms::adapters::stack::Template::builtin().expect("template.yaml parses");
    let stage = unique_name("t");
    // The operator allows this machine's recording servers as dispatch hosts.
    let params = [
        ("Stage", stage.as_str()),
        ("PublicUrl", crate::PUBLIC_URL),
        ("DispatchAllowedHosts", "127.0.0.1"),
    ];
    let stack = tms::adapters::stack::create(&template, &params, &sdk)
        .await
        .expect("create the template's resources on moto");
    (template, stack, sdk)
}
