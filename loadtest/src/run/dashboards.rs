//! Simulated dashboards: `users` people each watching one tenant's dashboard (every card, the
//! API's default window: the past week by hour), refreshed every `refresh`, concurrently with
//! ingestion. The users are spread over the tenants round-robin and start staggered over one
//! refresh period, as real viewers do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowhouse_schema::Tenant;

use super::api::{CARDS, QueryApi};
use crate::measure::{Latencies, SharedLatencies};

/// What the dashboards saw.
#[derive(Clone, Debug, Default)]
pub struct DashboardStats {
    pub latencies: Latencies,
    pub requests: u64,
    /// Failed requests by kind (`HTTP 503`, `timed out`...).
    pub errors: BTreeMap<String, u64>,
}

pub struct Dashboards {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, BTreeMap<String, u64>)>>,
    latencies: SharedLatencies,
}

impl Dashboards {
    /// Starts the users; `tenants` pairs each tenant with a key that may read it.
    pub fn start(
        api: &QueryApi,
        tenants: &[(Tenant, String)],
        users: u32,
        refresh: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let latencies: SharedLatencies = Arc::new(Mutex::new(Latencies::default()));
        let tasks = if tenants.is_empty() {
            Vec::new()
        } else {
            (0..users)
                .map(|user| {
                    let (tenant, key) = tenants[user as usize % tenants.len()].clone();
                    let offset = refresh.mul_f64(f64::from(user) / f64::from(users.max(1)));
                    let (api, stop, latencies) = (api.clone(), stop.clone(), latencies.clone());
                    tokio::spawn(async move {
                        user_loop(api, tenant, key, offset, refresh, stop, latencies).await
                    })
                })
                .collect()
        };
        Self {
            stop,
            tasks,
            latencies,
        }
    }

    /// Stops the users (each finishes its current refresh) and sums what they saw.
    pub async fn stop(self) -> DashboardStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut stats = DashboardStats::default();
        for task in self.tasks {
            if let Ok((requests, errors)) = task.await {
                stats.requests += requests;
                for (kind, n) in errors {
                    *stats.errors.entry(kind).or_default() += n;
                }
            }
        }
        stats.latencies = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        stats
    }
}

async fn user_loop(
    api: QueryApi,
    tenant: Tenant,
    key: String,
    offset: Duration,
    refresh: Duration,
    stop: Arc<AtomicBool>,
    latencies: SharedLatencies,
) -> (u64, BTreeMap<String, u64>) {
    let mut requests = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    tokio::time::sleep(offset).await;
    let mut ticks = tokio::time::interval(refresh);
    // A slow refresh is not made up for with a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // A dashboard loads its cards in parallel.
        let answers = futures::future::join_all(CARDS.iter().map(|&card| {
            let (api, tenant, key) = (&api, &tenant, &key);
            async move { (card, api.card(tenant, key, card, None).await) }
        }))
        .await;
        let mut recorded = latencies.lock().unwrap_or_else(|e| e.into_inner());
        for (card, answer) in answers {
            requests += 1;
            match answer {
                Ok((_, latency)) => recorded.record(&card.name(), latency),
                Err(failure) => *errors.entry(failure.kind).or_default() += 1,
            }
        }
    }
    (requests, errors)
}
