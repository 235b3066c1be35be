//! The dashboard metrics: `GET .../metrics/{flow-runs|late-runs|durations|top-failing|task-runs|logs}`.
//!
//! Query parameters: `since`, `until` (RFC 3339; default: the 7 days ending with the current
//! bucket), `bucket` (`hour` | `day`), and the run filters `flow`, `deployment`, `work_pool`,
//! `tag`, each repeatable (values of one filter are alternatives, filters combine with AND).
//! `top-failing` also takes `by` (`flow` | `deployment` | `work-pool`) and `limit` (default 5,
//! at most 100). Unknown parameters are refused, so a typo never silently widens a query.
//!
//! Modules: [`params`] (the parameters, parsed and documented from one definition),
//! [`handlers`], [`responses`], [`tally`] (counting rows into totals and buckets), and
//! [`queries`] (the SQL, over the rollups; docs/metrics.md is binding).

pub mod handlers;
pub mod params;
pub mod queries;
pub mod responses;
pub mod tally;

pub use handlers::mean_seconds;
pub use params::RunFilters;
