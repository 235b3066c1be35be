//! The shape of Flowhouse's data, defined once and shared by every service:
//!
//! - [`event`] and [`log`]: Prefect's wire model and its validation (used by the ingestion
//!   endpoint and the ingest consumer alike);
//! - [`contract`]: the Kafka message contract (topics, key, tenant headers) and [`Tenant`];
//! - [`stream`]: events or log lines, with their topic and table;
//! - [`decode`]: one Kafka message to one row, or the reason it is dead-lettered;
//! - [`rows`]: the ClickHouse rows of the raw tables;
//! - [`ddl`] and [`migrate`]: the ClickHouse schema, its rollups, and versioned migrations;
//! - [`access`]: the query API's read-only role and the tenant row policies.

pub mod access;
pub mod contract;
pub mod ddl;
pub mod decode;
pub mod event;
pub mod log;
pub mod migrate;
pub mod rows;
pub mod stream;
pub mod text;
pub mod validate;

pub use contract::{Envelope, Tenant};
pub use stream::Stream;
pub use validate::{DeadLetterKind, Problem, Rejection};
