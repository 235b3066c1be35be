//! Events per second the endpoint accepts durably (204 / pong, i.e. acknowledged by Kafka),
//! through HTTP batches and through websockets, beside a direct rdkafka producer with the same
//! settings to the same broker in the same run. Not a test: it prints figures and ratios.
//!
//! ```sh
//! eval "$(deploy/local/stack env)"
//! cargo bench -p flowhouse-endpoint --bench throughput
//! ```
//!
//! `BENCH_EVENTS` (default 100 000) events per transport and round; `BENCH_ROUNDS` (default 3);
//! `BENCH_CLIENTS` (default 4) concurrent HTTP clients and websockets; `BENCH_BATCH` (default
//! 1000) events per HTTP batch. Websockets
//! checkpoint like Prefect's client: a ping every 700 events, waiting for its pong.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use flowhouse_endpoint::{App, Args};
use flowhouse_keys::Scope;
use flowhouse_schema::Envelope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use flowhouse_tests::unique_name;
use futures::{SinkExt as _, StreamExt as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use uuid::Uuid;

const CHECKPOINT_EVERY: usize = 700;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A flow-run state event of a typical size (~600 bytes).
fn event(i: usize) -> String {
    json!({
        "id": Uuid::now_v7(),
        "occurred": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "event": "prefect.flow-run.Completed",
        "resource": {
            "prefect.resource.id": format!("prefect.flow-run.{}", Uuid::new_v4()),
            "prefect.resource.name": "crimson-otter",
            "prefect.state-name": "Completed",
            "prefect.state-type": "COMPLETED",
        },
        "related": [
            {"prefect.resource.id": format!("prefect.flow.{}", Uuid::new_v4()), "prefect.resource.role": "flow"},
            {"prefect.resource.id": format!("prefect.deployment.{}", Uuid::new_v4()), "prefect.resource.role": "deployment"},
            {"prefect.resource.id": "prefect.tag.nightly", "prefect.resource.role": "tag"},
        ],
        "payload": {"intended": {"from": "RUNNING", "to": "COMPLETED"}, "seq": i},
    })
    .to_string()
}

fn topics() -> TopicArgs {
    TopicArgs {
        events_topic: unique_name("bench_events"),
        logs_topic: unique_name("bench_logs"),
        dlq_topic: unique_name("bench_dlq"),
        topic_partitions: 6,
    }
}

/// The direct producer: what the endpoint configures for itself, minus the endpoint.
async fn direct(kafka: &KafkaArgs, events: &[String], tenant: Tenant) -> f64 {
    let topic = unique_name("bench_direct");
    ensure_topics(
        kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 6,
        }],
    )
    .await
    .expect("topic");
    let producer: FutureProducer = kafka
        .config()
        .unwrap()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let envelope = Envelope {
        tenant,
        received: Some(Utc::now()),
    };
    let key = envelope.key();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(event)
            .headers(envelope.headers());
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for delivery in deliveries {
        delivery.await.expect("delivered").expect("acknowledged");
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}

async fn http(
    base: &str,
    tenant: Tenant,
    key: &str,
    events: &[String],
    clients: usize,
    batch: usize,
) -> f64 {
    let url = format!(
        "{base}/api/accounts/{}/workspaces/{}/events",
        tenant.account_id, tenant.workspace_id
    );
    let bodies: Vec<String> = events
        .chunks(batch)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect();
    let per_client: Vec<Vec<String>> = (0..clients)
        .map(|c| bodies.iter().skip(c).step_by(clients).cloned().collect())
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for bodies in per_client {
        let (http, url, key) = (http.clone(), url.clone(), key.to_owned());
        tasks.spawn(async move {
            for body in bodies {
                let response = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                let status = response.status();
                assert_eq!(status, 204, "{}", response.text().await.unwrap_or_default());
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("client");
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}

async fn websocket(
    base: &str,
    tenant: Tenant,
    key: &str,
    events: &[String],
    clients: usize,
) -> f64 {
    let url = format!(
        "{}/api/accounts/{}/workspaces/{}/events/in",
        base.replacen("http://", "ws://", 1),
        tenant.account_id,
        tenant.workspace_id
    );
    let per_socket = events.len().div_ceil(clients);
    let mut sockets = Vec::new();
    for chunk in events.chunks(per_socket) {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("bearer {key}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        sockets.push((socket, chunk.to_vec()));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut socket, chunk) in sockets {
        tasks.spawn(async move {
            for (i, event) in chunk.into_iter().enumerate() {
                socket.send(Message::text(event)).await.unwrap();
                if (i + 1) % CHECKPOINT_EVERY == 0 {
                    checkpoint(&mut socket).await;
                }
            }
            checkpoint(&mut socket).await;
            let _ = socket.close(None).await;
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("socket");
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}

async fn checkpoint<S>(socket: &mut S)
where
    S: futures::Sink<Message> + futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    S::Error: std::fmt::Debug,
{
    socket.send(Message::Ping(Vec::new().into())).await.unwrap();
    match socket.next().await {
        Some(Ok(Message::Pong(_))) => {}
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let brokers = std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS is not set: eval \"$(deploy/local/stack env)\" first");
    let kafka = KafkaArgs {
        brokers,
        properties: Vec::new(),
        replication_factor: 1,
        topic_configs: Vec::new(),
    };
    let count = env_usize("BENCH_EVENTS", 100_000);
    let clients = env_usize("BENCH_CLIENTS", 4);
    let batch = env_usize("BENCH_BATCH", 1000);

    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.json");
    let tenant = Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    };
    let key = flowhouse_keys::cli::create(
        &keys_file,
        tenant.account_id,
        vec![tenant.workspace_id],
        vec![Scope::Write],
        None,
    )
    .unwrap();
    let mut args = Args::new(kafka.clone(), keys_file, topics());
    args.uploads.rate_limit = 0.0;
    let app = App::start(&args, Default::default())
        .await
        .expect("endpoint");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let events: Vec<String> = (0..count).map(event).collect();
    let bytes: usize = events.iter().map(String::len).sum();
    println!(
        "{count} events of {} bytes on average, to {} ({clients} clients, HTTP batches of {batch}, \
         websocket pings every {CHECKPOINT_EVERY})",
        bytes / count,
        kafka.brokers
    );
    // A warm-up round so that no figure pays for connections and metadata.
    let warm: Vec<String> = events.iter().take(2_000).cloned().collect();
    direct(&kafka, &warm, tenant).await;
    http(&base, tenant, &key, &warm, clients, batch).await;

    // Rounds interleave the three, so that the broker's drift (other work on the machine)
    // spreads over all of them; medians are compared.
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let (mut direct_rates, mut http_rates, mut ws_rates) = (Vec::new(), Vec::new(), Vec::new());
    println!("round     direct      HTTP  websocket   (events/s)");
    for round in 1..=rounds {
        direct_rates.push(direct(&kafka, &events, tenant).await);
        http_rates.push(http(&base, tenant, &key, &events, clients, batch).await);
        ws_rates.push(websocket(&base, tenant, &key, &events, clients).await);
        println!(
            "{round:>5} {:>10.0} {:>9.0} {:>10.0}",
            direct_rates[round - 1],
            http_rates[round - 1],
            ws_rates[round - 1]
        );
    }
    let (direct_rate, http_rate, ws_rate) = (
        median(&mut direct_rates),
        median(&mut http_rates),
        median(&mut ws_rates),
    );
    println!("median {direct_rate:>10.0} {http_rate:>9.0} {ws_rate:>10.0}");
    println!("ratio HTTP / direct      {:>6.2}", http_rate / direct_rate);
    println!("ratio websocket / direct {:>6.2}", ws_rate / direct_rate);
    drop(app);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
