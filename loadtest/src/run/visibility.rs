//! What ClickHouse shows: rows of the workload's tenants visible in `events` and `logs`,
//! sampled every second while the run goes (the end-to-end ingest rate), and the wait until
//! everything sent is there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flowhouse_schema::Tenant;

use super::rss::{self, RssSummary, Service};

/// Counts of the workload's rows, restricted to its tenants' workspaces so that other data in
/// the database (an earlier run, other tenants) is never counted.
#[derive(Clone)]
pub struct Counter {
    client: clickhouse::Client,
    workspaces: Vec<String>,
}

/// Rows visible at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visible {
    pub events: u64,
    pub logs: u64,
}

impl Visible {
    pub fn total(&self) -> u64 {
        self.events + self.logs
    }
}

impl Counter {
    pub fn new(client: clickhouse::Client, tenants: &[Tenant]) -> Self {
        Self {
            client,
            workspaces: tenants.iter().map(|t| t.workspace_id.to_string()).collect(),
        }
    }

    async fn count(&self, sql: &str) -> anyhow::Result<u64> {
        self.client
            .query(sql)
            .param("ws", &self.workspaces)
            .fetch_one::<u64>()
            .await
            .with_context(|| format!("cannot count rows: {sql}"))
    }

    /// Rows, duplicates of a resent event included until ClickHouse merges them away.
    pub async fn rows(&self) -> anyhow::Result<Visible> {
        Ok(Visible {
            events: self
                .count("SELECT count() FROM events WHERE workspace_id IN {ws:Array(UUID)}")
                .await?,
            logs: self
                .count("SELECT count() FROM logs WHERE workspace_id IN {ws:Array(UUID)}")
                .await?,
        })
    }

    /// Distinct events (by id) and log lines: what the ground truth counts.
    pub async fn distinct(&self) -> anyhow::Result<Visible> {
        Ok(Visible {
            events: self
                .count("SELECT uniqExact(id) FROM events WHERE workspace_id IN {ws:Array(UUID)}")
                .await?,
            logs: self
                .count("SELECT count() FROM logs WHERE workspace_id IN {ws:Array(UUID)}")
                .await?,
        })
    }
}

/// What the sampler collected.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// `(seconds since start, rows visible)`.
    pub visible: Vec<(f64, u64)>,
    pub rss: std::collections::BTreeMap<String, RssSummary>,
    /// Failed counts (ClickHouse busy or down), by message.
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Samples {
    /// Rows that became visible in each second, from the sampled totals.
    pub fn per_second(&self) -> Vec<(f64, f64)> {
        self.visible
            .windows(2)
            .map(|pair| {
                let ((t0, n0), (t1, n1)) = (pair[0], pair[1]);
                let rate = n1.saturating_sub(n0) as f64 / (t1 - t0).max(1e-3);
                (t1, rate)
            })
            .collect()
    }
}

/// Samples visible rows (and the services' memory) every second until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(counter: Counter, services: Vec<Service>, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(1));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let counted = counter.rows().await;
                    let at = start.elapsed().as_secs_f64();
                    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
                    match counted {
                        Ok(visible) => samples.visible.push((at, visible.total())),
                        Err(error) => {
                            *samples.errors.entry(format!("{error:#}")).or_default() += 1;
                        }
                    }
                    rss::sample(&services, &mut samples.rss);
                }
            })
        };
        Self {
            stop,
            samples,
            task,
        }
    }

    pub async fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Waits until every distinct event and log line sent is visible; after `timeout` fails saying
/// what is missing. Returns when it was all there.
pub async fn wait_all_visible(
    counter: &Counter,
    expected: Visible,
    timeout: Duration,
    progress: &crate::measure::Progress,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let bar = progress.counter("visible", Some(expected.total()), "rows");
    let mut last = Visible::default();
    loop {
        // Cheap row counts first; the exact distinct count only once they are high enough.
        match counter.rows().await {
            Ok(rows) => {
                bar.set_position(rows.total().min(expected.total()));
                if rows.events >= expected.events && rows.logs >= expected.logs {
                    let distinct = counter.distinct().await?;
                    last = distinct;
                    if distinct == expected {
                        bar.finish_and_clear();
                        return Ok(Instant::now());
                    }
                    if distinct.events > expected.events || distinct.logs > expected.logs {
                        bar.finish_and_clear();
                        bail!(
                            "ClickHouse holds more than was sent: {} distinct events (sent {}), \
                             {} log lines (sent {}); is another producer writing to these tenants?",
                            distinct.events,
                            expected.events,
                            distinct.logs,
                            expected.logs
                        );
                    }
                } else {
                    last = rows;
                }
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            bail!(
                "not everything sent became visible within {timeout:?}: events {} of {} ({} \
                 missing), log lines {} of {} ({} missing); check the ingest service's log",
                last.events,
                expected.events,
                expected.events.saturating_sub(last.events),
                last.logs,
                expected.logs,
                expected.logs.saturating_sub(last.logs)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
