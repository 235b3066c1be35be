//! What every Flowhouse service shares, so that each service crate holds only its own job:
//!
//! - [`clickhouse`] and [`kafka`]: the connection flags (`CLICKHOUSE_URL`, `KAFKA_BROKERS`, ...)
//!   and the clients built from them, identical in tests and in production;
//! - [`telemetry`]: tracing (JSON in production) and the Prometheus recorder;
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`;
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.

pub mod admin;
pub mod clickhouse;
pub mod kafka;
pub mod shutdown;
pub mod telemetry;
