//! Latency recording per route with HDR histograms (microsecond values, 3 significant digits).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of one route, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Histograms by route name (e.g. `POST /events`, `GET /metrics/flow-runs`).
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    routes: BTreeMap<String, Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // Auto-resizing, so any latency fits.
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

impl Latencies {
    pub fn record(&mut self, route: &str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let h = match self.routes.get_mut(route) {
            Some(h) => h,
            None => self
                .routes
                .entry(route.to_string())
                .or_insert_with(histogram),
        };
        // `record` grows an auto-resizing histogram; `saturating_record` would clamp to its
        // current range.
        if h.record(micros).is_err() {
            h.saturating_record(micros);
        }
    }

    /// Adds another set of histograms (e.g. one per worker task) into this one.
    pub fn merge(&mut self, other: &Latencies) {
        for (route, h) in &other.routes {
            let target = self.routes.entry(route.clone()).or_insert_with(histogram);
            // Both auto-resize, so adding cannot fail on range.
            let _ = target.add(h);
        }
    }

    pub fn routes(&self) -> impl Iterator<Item = (&str, &Histogram<u64>)> {
        self.routes.iter().map(|(route, h)| (route.as_str(), h))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn summaries(&self) -> BTreeMap<String, LatencySummary> {
        self.routes
            .iter()
            .map(|(route, h)| (route.clone(), summarize(h)))
            .collect()
    }
}

pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// Latencies shared by concurrent tasks.
pub type SharedLatencies = Arc<Mutex<Latencies>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut latencies = Latencies::default();
        for ms in 1..=100 {
            latencies.record("GET /a", Duration::from_millis(ms));
        }
        latencies.record("GET /b", Duration::from_micros(250));
        latencies.record("GET /c", Duration::from_secs(20));
        let mut other = Latencies::default();
        other.record("GET /b", Duration::from_millis(3));
        latencies.merge(&other);
        let summaries = latencies.summaries();
        let a = &summaries["GET /a"];
        assert_eq!(a.count, 100);
        assert!((a.p50_ms - 50.0).abs() < 0.1, "{a:?}");
        assert!((a.p99_ms - 99.0).abs() < 0.1, "{a:?}");
        assert!((a.max_ms - 100.0).abs() < 0.1, "{a:?}");
        assert_eq!(summaries["GET /b"].count, 2);
        assert!((summaries["GET /c"].max_ms - 20_000.0).abs() < 20.0);
        assert!((summaries["GET /b"].max_ms - 3.0).abs() < 0.01);
    }
}
