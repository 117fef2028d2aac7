//! How TMS's DynamoDB client retries.
//!
//! The SDK's standard mode already retries throttling
//! (`ThrottlingException`, `ProvisionedThroughputExceededException`) and
//! server errors with exponential backoff and full jitter. Two things are
//! changed:
//! - DynamoDB's own advice for its clients is many quick attempts (AWS's
//!   Java SDK used 10 retries from a 25 ms base for DynamoDB) rather than
//!   the generic three from one second: a request is retried up to 8 times
//!   from 25 ms, capped at 1 s a wait, so the worst case (about 4 s) stays
//!   inside the shortest function timeout;
//! - a transaction that DynamoDB cancelled only because another transaction
//!   held one of its items (`TransactionConflict`, and
//!   `TransactionConflictException` on a single-item write) or because an
//!   item was throttled is retried the same way: nothing was written, and
//!   the same request may succeed a few milliseconds later. A cancellation
//!   for a failed condition is an answer, not a fault, and is never retried
//!   here.
//!
//! `TransactWriteItems` carries a `ClientRequestToken` (the SDK fills it,
//! once per call), so retrying after an ambiguous 500 does not apply the
//! transaction twice.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::interceptors::InterceptorContext;
use aws_sdk_dynamodb::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use std::time::Duration;

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 8;

/// The DynamoDB client every TMS deployment uses.
pub fn client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(config(sdk).build())
}

/// [`client`]'s settings, for callers that add interceptors.
pub fn config(sdk: &SdkConfig) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(25))
                .with_max_backoff(Duration::from_secs(1)),
        )
        .retry_classifier(TransactionConflicts)
}

/// Whether DynamoDB cancelled a transaction only for items another
/// transaction held (no condition failed, nothing was invalid).
pub fn only_conflicts(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> bool {
    cancelled_only_for(reasons, &["TransactionConflict"])
}

/// Whether every reason DynamoDB gave for cancelling a transaction passes
/// with time: a conflict, or throttling of one of its items.
fn retryable_cancellation(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> bool {
    cancelled_only_for(
        reasons,
        &[
            "TransactionConflict",
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
        ],
    )
}

/// At least one item was cancelled, each for one of `codes` (the rest: `None`).
fn cancelled_only_for(
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
    codes: &[&str],
) -> bool {
    fn code(r: &aws_sdk_dynamodb::types::CancellationReason) -> &str {
        r.code().unwrap_or("None")
    }
    reasons.iter().any(|r| codes.contains(&code(r)))
        && reasons
            .iter()
            .all(|r| code(r) == "None" || codes.contains(&code(r)))
}

/// Retries writes that lost to a concurrent transaction.
#[derive(Debug, Clone, Copy)]
struct TransactionConflicts;

impl ClassifyRetry for TransactionConflicts {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(e)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let Some(e) = e.as_operation_error() else {
            return RetryAction::NoActionIndicated;
        };
        if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
            e.downcast_ref::<TransactWriteItemsError>()
        {
            if retryable_cancellation(c.cancellation_reasons()) {
                return RetryAction::transient_error();
            }
        }
        let code = e
            .downcast_ref::<PutItemError>()
            .and_then(ProvideErrorMetadata::code)
            .or_else(|| {
                e.downcast_ref::<UpdateItemError>()
                    .and_then(ProvideErrorMetadata::code)
            })
            .or_else(|| {
                e.downcast_ref::<DeleteItemError>()
                    .and_then(ProvideErrorMetadata::code)
            });
        if code == Some("TransactionConflictException") {
            return RetryAction::transient_error();
        }
        RetryAction::NoActionIndicated
    }

    fn name(&self) -> &'static str {
        "DynamoDB transaction conflicts"
    }
}
