//! What every Flowhouse service shares, so that each service crate holds only its own job:
//!
//! - [`clickhouse`] and [`kafka`]: the connection flags (`CLICKHOUSE_URL`, `KAFKA_BROKERS`, ...)
//!   and the clients built from them, identical in tests and in production;
//! - [`fairness`]: per-tenant shares of shared resources;
//! - [`telemetry`]: tracing (JSON in production) and the Prometheus recorder;
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`;
//! - [`http`]: how the public API is reached (Prefect's paths, trailing slashes, single-tenant
//!   mode, CORS, the public base URL);
//! - [`openapi`]: what every service's OpenAPI document shares;
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token;
//! - [`websocket`]: the opening handshake of Prefect's websockets.

pub mod admin;
pub mod clickhouse;
pub mod fairness;
pub mod http;
pub mod kafka;
pub mod openapi;
pub mod shutdown;
pub mod telemetry;
pub mod websocket;
