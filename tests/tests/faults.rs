//! DynamoDB's faults and limits, which moto does not produce, injected by
//! `tms_tests::faults::FaultProxy`: first that each one reaches the SDK the
//! way DynamoDB's documented answer does, then what TMS does with them.
//! (The conformance suites run on the same proxy at a sustained rate, as
//! `dynamo_faults::*`; the serverless lifecycle too.)

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use tms::config::Config;
use tms_tests::faults::{Fault, FaultPlan, FaultProxy};
use tms_tests::{moto, Dynamo, Harness};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn key(pk: &str) -> std::collections::HashMap<String, AttributeValue> {
    [("pk".to_owned(), s(pk)), ("sk".to_owned(), s("META"))].into()
}

/// A client to the proxy that never retries, so each answer is seen as sent.
async fn raw(proxy: &FaultProxy) -> aws_sdk_dynamodb::Client {
    let sdk = moto::sdk_config_at(&proxy.url).await;
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}

fn put(table: &str, pk: &str) -> TransactWriteItem {
    TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(key(pk)))
                .build()
                .unwrap(),
        )
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_reaches_the_sdk_as_dynamodbs_documented_answer() {
    let proxy = FaultProxy::start(&moto::endpoint(), FaultPlan::none()).await;
    let table = moto::store_behind(&proxy).await.table().to_owned();
    let client = raw(&proxy).await;
    let put_item = || {
        client
            .put_item()
            .table_name(&table)
            .set_item(Some(key("a")))
            .send()
    };

    proxy.set_plan(FaultPlan::always(Fault::Throttling));
    let e = put_item().await.unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"), "{e:?}");

    proxy.set_plan(FaultPlan::always(Fault::ThroughputExceeded));
    let e = put_item().await.unwrap_err().into_service_error();
    assert!(e.is_provisioned_throughput_exceeded_exception(), "{e:?}");

    proxy.set_plan(FaultPlan::always(Fault::InternalError));
    let e = put_item().await.unwrap_err().into_service_error();
    assert!(e.is_internal_server_error(), "{e:?}");

    proxy.set_plan(FaultPlan::always(Fault::TransactionConflict));
    let e = put_item().await.unwrap_err();
    assert_eq!(e.code(), Some("TransactionConflictException"), "{e:?}");
    let e = client
        .transact_write_items()
        .transact_items(put(&table, "b"))
        .transact_items(put(&table, "c"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) = e else {
        panic!("not a cancellation: {e:?}");
    };
    let codes: Vec<_> = c
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or(""))
        .collect();
    assert_eq!(codes.len(), 2);
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == "TransactionConflict")
            .count(),
        1,
        "{codes:?}"
    );
    assert!(tms::adapters::dynamo::retry::only_conflicts(
        c.cancellation_reasons()
    ));

    // A 500 after the transaction was applied: the retry with the same
    // token succeeds without applying it again.
    proxy.set_plan(FaultPlan::always(Fault::InternalErrorAfterCommit));
    let count = || {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&table)
                    .set_key(Some(key("counter")))
                    .update_expression("ADD n :one")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let e = client
        .transact_write_items()
        .transact_items(count())
        .transact_items(put(&table, "d"))
        .client_request_token("same-token")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_internal_server_error(), "{e:?}");
    client
        .transact_write_items()
        .transact_items(count())
        .transact_items(put(&table, "d"))
        .client_request_token("same-token")
        .send()
        .await
        .expect("the repeat of a committed token succeeds");
    proxy.set_plan(FaultPlan::none());
    let counter = client
        .get_item()
        .table_name(&table)
        .set_key(Some(key("counter")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        counter.item.unwrap()["n"],
        AttributeValue::N("1".into()),
        "applied once"
    );

    proxy.set_plan(FaultPlan::always(Fault::UnprocessedItems));
    let writes: Vec<WriteRequest> = ["w1", "w2", "w3", "w4"]
        .iter()
        .map(|pk| {
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(key(pk)))
                        .build()
                        .unwrap(),
                )
                .build()
        })
        .collect();
    let out = client
        .batch_write_item()
        .request_items(&table, writes)
        .send()
        .await
        .unwrap();
    assert_eq!(out.unprocessed_items.unwrap()[&table].len(), 2);

    proxy.set_plan(FaultPlan::always(Fault::UnprocessedKeys));
    let keys = KeysAndAttributes::builder()
        .set_keys(Some(vec![key("w1"), key("w2"), key("w3"), key("w4")]))
        .build()
        .unwrap();
    let out = client
        .batch_get_item()
        .request_items(&table, keys)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.responses.unwrap()[&table].len(),
        2,
        "w1 and w2 were written"
    );
    assert_eq!(out.unprocessed_keys.unwrap()[&table].keys().len(), 2);

    // Limits hold whatever the plan.
    proxy.set_plan(FaultPlan::none());
    let mut big = key("big");
    big.insert("doc".into(), s(&"x".repeat(401 * 1024)));
    let e = client
        .put_item()
        .table_name(&table)
        .set_item(Some(big))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message().unwrap().contains("Item size has exceeded"),
        "{e:?}"
    );
    let mut transaction = client.transact_write_items();
    for i in 0..101 {
        transaction = transaction.transact_items(put(&table, &format!("many{i}")));
    }
    let e = transaction.send().await.unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"), "{e:?}");
}

/// Every assignment of a pass is a transaction on the execution item; while
/// other transactions hold it, each is a lost race, never a failed pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_transactions_keep_conflicting_succeeds_and_the_next_assigns() {
    let proxy = FaultProxy::start(&moto::endpoint(), FaultPlan::none()).await;
    let h = Harness::<Dynamo>::on(moto::store_behind(&proxy).await, Config::default());
    let runner = h.runner("busy", 4).await;
    let tests = (0..6).map(|i| format!("t{i}"));
    h.app
        .queue_execution(tms_tests::new_execution("conflicts", tests, 3), None)
        .await
        .unwrap();

    proxy.set_plan(FaultPlan::always(Fault::TransactionConflict));
    let assigned = h
        .app
        .schedule_pass()
        .await
        .expect("conflicts are lost races, not a failed pass");
    assert_eq!(assigned, 0);
    assert!(proxy.injected()[&Fault::TransactionConflict] >= 3);

    proxy.set_plan(FaultPlan::none());
    assert_eq!(h.app.schedule_pass().await.unwrap(), 3);
    assert_eq!(h.app.heartbeat(&runner, None).await.unwrap().len(), 3);
}

/// An oversized shard list is refused as the caller's input (422), before
/// anything is stored, on the 400 KB limit DynamoDB enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_over_dynamodbs_item_limit_is_refused_as_input() {
    let proxy = FaultProxy::start(&moto::endpoint(), FaultPlan::none()).await;
    let h = Harness::<Dynamo>::on(moto::store_behind(&proxy).await, Config::default());
    let tests = (0..2_000).map(|i| format!("tests/{i:04}/{}", "n".repeat(250)));
    let e = h
        .app
        .queue_execution(tms_tests::new_execution("huge", tests, 1), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, tms::Error::Validation { field, .. } if field == "tests"),
        "{e:?}"
    );
}
