//! Freshness: every `every`, a marker event with a unique id goes in through the same path as
//! the workload (Kafka, or the endpoint's `POST /events`) and ClickHouse is polled until it is
//! visible; the time from handing it over to seeing it is one sample. Markers belong to a
//! tenant of their own, so they never touch the workload's counts or metrics.

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

/// How a marker gets in.
#[derive(Clone)]
pub enum MarkerPath {
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    Endpoint {
        client: reqwest::Client,
        /// `.../workspaces/{w}/events`.
        url: String,
        key: String,
        /// The run's requests pass it (a chaos run closes it to quiesce the endpoint).
        gate: Option<Arc<crate::drive::gate::Gate>>,
    },
}

impl MarkerPath {
    pub fn kafka(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Self> {
        let producer = kafka
            .config()?
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .context("cannot create the marker producer")?;
        Ok(Self::Kafka {
            producer,
            topic: topic.to_string(),
        })
    }

    async fn send(&self, tenant: Tenant, json: &str) -> anyhow::Result<()> {
        match self {
            MarkerPath::Kafka { producer, topic } => {
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
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!("[{json}]"))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("POST /events: HTTP {}", response.status());
                }
            }
        }
        Ok(())
    }
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
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub struct Markers {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<FreshnessSamples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Markers {
    pub fn start(
        path: MarkerPath,
        client: clickhouse::Client,
        tenant: Tenant,
        every: Duration,
        start: Instant,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(FreshnessSamples::default()));
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let outcome = one_marker(&path, &client, tenant, &stop).await;
                    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(Some(freshness)) => samples.samples.push((
                            start.elapsed().as_secs_f64(),
                            freshness.as_secs_f64() * 1000.0,
                        )),
                        Ok(None) => {}
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

/// Sends one marker and polls until it is visible; `None` if stopped before it was.
async fn one_marker(
    path: &MarkerPath,
    client: &clickhouse::Client,
    tenant: Tenant,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Duration>> {
    let id = Uuid::new_v4();
    let json = marker_json(id);
    let sent = Instant::now();
    path.send(tenant, &json).await?;
    let give_up = sent + Duration::from_secs(600);
    loop {
        let seen: u64 = client
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
        if seen > 0 {
            return Ok(Some(sent.elapsed()));
        }
        if stop.load(Ordering::Relaxed) {
            // Everything of the workload is visible by then; a marker still on its way would
            // only measure the idle tail.
            return Ok(None);
        }
        if Instant::now() >= give_up {
            bail!("marker {id} not visible after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
