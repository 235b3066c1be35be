//! Measurement plumbing: latency histograms, rate series, progress bars, the JSON report and
//! its PNG plots.

pub mod latency;
pub mod plot;
pub mod progress;
pub mod report;
pub mod series;

pub use latency::{Latencies, LatencySummary, SharedLatencies};
pub use progress::Progress;
pub use report::{DashboardSummary, Headline, Report, Series, WorkloadSummary};
pub use series::RateCounter;
