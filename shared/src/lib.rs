//! TMS: a test-execution orchestrator for CI.
//!
//! The crate is layered so that the core never touches I/O:
//! - [`domain`] and [`scheduling`]: pure types, state machines, strategies and shard planning;
//! - [`dispatch`]: pure planning of the HTTP exchanges that start a shard on a CI platform;
//! - [`ports`]: what the use cases need from the outside (store, clock, nudges, events);
//! - [`usecases`]: the orchestrator's operations, generic over the ports;
//! - [`adapters`]: the embedded SQLite store and in-process channels;
//! - [`http`]: the axum routes, auth and problem+json mapping;
//! - [`server`]: `tms serve`, wiring adapters, routes and sweeps into one process.

pub mod adapters;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod http;
pub mod ids;
pub mod junit;
pub use tms_junit::naming;
pub mod ports;
pub mod scheduling;
pub mod server;
pub mod time;
pub mod usecases;

pub use error::{Entity, Error, Result};
