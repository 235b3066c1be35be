//! Freshness: every `every`, a marker event with a unique id and a marker log line go in
//! through the same path as the workload (Kafka, or the endpoint's `POST /events` and
//! `POST /logs`). Two samples per marker, from handing them over:
//! - until the event is visible in ClickHouse (`samples`);
//! - until the log line is counted in a dashboard answer: the tenant's `logs` card, read through
//!   the query API and its cache as a dashboard reads it, shows every marker line sent so far
//!   (`dashboard_samples`). A log line because the `logs` card counts any line, where the other
//!   cards count only flow and task runs.
//!
//! Markers belong to a tenant of their own, so they never touch the workload's counts or
//! metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{SecondsFormat, Utc};
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::Envelope;
use flowhouse_service::kafka::KafkaArgs;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::api::{CARDS, QueryApi};

/// How a marker gets in.
#[derive(Clone)]
pub enum MarkerPath {
    Kafka {
        producer: FutureProducer,
        events_topic: String,
        logs_topic: String,
    },
    Endpoint {
        client: reqwest::Client,
        /// `.../workspaces/{w}`: `/events` and `/logs` are appended.
        url: String,
        key: String,
        /// The run's requests pass it (a chaos run closes it to quiesce the endpoint).
        gate: Option<Arc<crate::drive::gate::Gate>>,
    },
}

impl MarkerPath {
    pub fn kafka(kafka: &KafkaArgs, events_topic: &str, logs_topic: &str) -> anyhow::Result<Self> {
        let producer = kafka
            .config()?
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .context("cannot create the marker producer")?;
        Ok(Self::Kafka {
            producer,
            events_topic: events_topic.to_string(),
            logs_topic: logs_topic.to_string(),
        })
    }

    async fn send(&self, tenant: Tenant, kind: Kind, json: &str) -> anyhow::Result<()> {
        match self {
            MarkerPath::Kafka {
                producer,
                events_topic,
                logs_topic,
            } => {
                let topic = match kind {
                    Kind::Event => events_topic,
                    Kind::Log => logs_topic,
                };
                let envelope = Envelope {
                    tenant,
                    received: None,
                };
                let key = envelope.key();
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&key)
                            .payload(json)
                            .headers(envelope.headers()),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(error, _)| anyhow::anyhow!("kafka: {error}"))?;
            }
            MarkerPath::Endpoint {
                client,
                url,
                key,
                gate,
            } => {
                let _pass = match gate {
                    Some(gate) => Some(gate.pass().await),
                    None => None,
                };
                let route = match kind {
                    Kind::Event => "events",
                    Kind::Log => "logs",
                };
                let response = client
                    .post(format!("{url}/{route}"))
                    .bearer_auth(key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!("[{json}]"))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("POST /{route}: HTTP {}", response.status());
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Event,
    Log,
}

fn marker_log_json(id: Uuid) -> String {
    serde_json::json!({
        "name": "flowhouse.loadtest.marker",
        "level": 20,
        "message": format!("freshness marker {id}"),
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
    })
    .to_string()
}

fn marker_json(id: Uuid) -> String {
    serde_json::json!({
        "id": id,
        "occurred": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "event": "flowhouse.loadtest.marker",
        "resource": {"prefect.resource.id": format!("flowhouse.loadtest.marker.{id}")},
        "related": [],
        "payload": {},
    })
    .to_string()
}

#[derive(Clone, Debug, Default)]
pub struct FreshnessSamples {
    /// `(seconds since start, milliseconds from send to visible)`.
    pub samples: Vec<(f64, f64)>,
    /// `(seconds since start, milliseconds from send to counted by the logs card)`.
    pub dashboard_samples: Vec<(f64, f64)>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub struct Markers {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<FreshnessSamples>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a marker is looked for.
#[derive(Clone)]
pub struct Watch {
    pub clickhouse: clickhouse::Client,
    /// The query API, and a key that reads the markers' tenant.
    pub api: QueryApi,
    pub key: String,
    pub tenant: Tenant,
}

impl Markers {
    pub fn start(path: MarkerPath, watch: Watch, every: Duration, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(FreshnessSamples::default()));
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Marker log lines the logs card has to count: every one handed over so far.
                let mut lines_sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let outcome = one_marker(&path, &watch, &mut lines_sent, &stop).await;
                    let at = start.elapsed().as_secs_f64();
                    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(seen) => {
                            if let Some(visible) = seen.visible {
                                samples.samples.push((at, visible.as_secs_f64() * 1000.0));
                            }
                            if let Some(dashboard) = seen.dashboard {
                                samples
                                    .dashboard_samples
                                    .push((at, dashboard.as_secs_f64() * 1000.0));
                            }
                        }
                        Err(error) => {
                            *samples.errors.entry(format!("{error:#}")).or_default() += 1;
                        }
                    }
                }
            })
        };
        Self {
            stop,
            samples,
            task,
        }
    }

    /// Stops after the marker in flight (if any) is seen or given up on.
    pub async fn stop(self) -> FreshnessSamples {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// When one marker was seen, from its send; `None` where it was not seen before the stop.
#[derive(Default)]
struct Seen {
    visible: Option<Duration>,
    dashboard: Option<Duration>,
}

/// Sends one marker event and log line, and polls until the event is visible in ClickHouse and
/// the logs card counts the line.
async fn one_marker(
    path: &MarkerPath,
    watch: &Watch,
    lines_sent: &mut u64,
    stop: &AtomicBool,
) -> anyhow::Result<Seen> {
    let id = Uuid::new_v4();
    let tenant = watch.tenant;
    let sent = Instant::now();
    path.send(tenant, Kind::Event, &marker_json(id)).await?;
    path.send(tenant, Kind::Log, &marker_log_json(id)).await?;
    *lines_sent += 1;
    let logs_card = CARDS
        .into_iter()
        .find(|card| card.route == "logs")
        .context("no logs card")?;
    let give_up = sent + Duration::from_secs(600);
    let mut seen = Seen::default();
    loop {
        if seen.visible.is_none() {
            let found: u64 = watch
                .clickhouse
                .query(
                    "SELECT count() FROM events WHERE account_id = {a:UUID} \
                     AND workspace_id = {w:UUID} AND id = {id:UUID}",
                )
                .param("a", tenant.account_id.to_string())
                .param("w", tenant.workspace_id.to_string())
                .param("id", id.to_string())
                .fetch_one()
                .await
                .context("cannot look for the marker")?;
            if found > 0 {
                seen.visible = Some(sent.elapsed());
            }
        }
        if seen.dashboard.is_none() {
            // A failed answer (busy, restarting) is asked again, as a dashboard would.
            if let Ok((answer, _)) = watch.api.card(&tenant, &watch.key, logs_card, None).await
                && answer["total"].as_u64().is_some_and(|n| n >= *lines_sent)
            {
                seen.dashboard = Some(sent.elapsed());
            }
        }
        if seen.visible.is_some() && seen.dashboard.is_some() {
            return Ok(seen);
        }
        if stop.load(Ordering::Relaxed) {
            // Everything of the workload is visible by then; a marker still on its way would
            // only measure the idle tail.
            return Ok(seen);
        }
        if Instant::now() >= give_up {
            bail!("marker {id} not seen after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
