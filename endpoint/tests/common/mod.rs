//! What the endpoint's tests share: an endpoint served in-process on a free port with its own
//! keys file and its own topics, tenants with keys, Prefect-shaped events, real HTTP and
//! websocket clients, and a reader of everything a topic holds.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use flowhouse_endpoint::{App, Args};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::kafka::KafkaArgs;
use flowhouse_tests::unique_name;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A tenant and a key that may write to it.
#[derive(Clone, Debug)]
pub struct Writer {
    pub tenant: Tenant,
    pub key: String,
}

/// The keys file of one endpoint, filled before it starts.
pub struct Setup {
    dir: tempfile::TempDir,
    pub kafka: KafkaArgs,
}

impl Setup {
    pub fn new(kafka: KafkaArgs) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            kafka,
        }
    }

    pub fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    /// A key of `account` for `workspaces`, through the same code as `flowhouse keys create`.
    pub fn key(&self, account: Uuid, workspaces: &[Uuid], scopes: &[Scope]) -> String {
        flowhouse_keys::cli::create(
            &self.keys_file(),
            account,
            workspaces.to_vec(),
            scopes.to_vec(),
            Some("test".into()),
        )
        .expect("create key")
    }

    /// A fresh tenant with a write key.
    pub fn writer(&self) -> Writer {
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let key = self.key(tenant.account_id, &[tenant.workspace_id], &[Scope::Write]);
        Writer { tenant, key }
    }

    /// Starts the endpoint on its own topics; `tweak` changes its flags first.
    pub async fn start(self, tweak: impl FnOnce(&mut Args)) -> Endpoint {
        if !self.keys_file().exists() {
            self.writer();
        }
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 3,
        };
        let mut args = Args::new(self.kafka.clone(), self.keys_file(), topics);
        tweak(&mut args);
        let app = App::start(&args, Default::default())
            .await
            .expect("start the endpoint");
        let (addr, server) = serve(app.router()).await;
        let (admin_addr, admin_server) = serve(app.admin_router()).await;
        Endpoint {
            app,
            addr,
            admin_addr,
            args,
            http: reqwest::Client::new(),
            servers: [server, admin_server],
            _setup: self,
        }
    }
}

/// Serves `router` on a free loopback port.
async fn serve(router: axum::Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    (addr, server)
}

pub struct Endpoint {
    pub app: App,
    pub addr: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    pub args: Args,
    pub http: reqwest::Client,
    servers: [tokio::task::JoinHandle<()>; 2],
    _setup: Setup,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// `.../api/accounts/A/workspaces/W/<rest>`
    pub fn workspace_url(&self, tenant: &Tenant, rest: &str) -> String {
        self.url(&format!(
            "/api/accounts/{}/workspaces/{}/{rest}",
            tenant.account_id, tenant.workspace_id
        ))
    }

    /// POSTs `body` (already JSON text) to `rest` of the tenant's workspace with `key`.
    pub async fn post(
        &self,
        tenant: &Tenant,
        rest: &str,
        key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.workspace_url(tenant, rest))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("HTTP request")
    }

    pub async fn post_events(&self, writer: &Writer, events: &[Value]) -> reqwest::Response {
        self.post(
            &writer.tenant,
            "events",
            Some(&writer.key),
            json_list(events),
        )
        .await
    }

    /// Opens `/events/in`; with `key`, in the Cloud style (key on the upgrade request).
    pub async fn websocket(
        &self,
        tenant: &Tenant,
        key: Option<&str>,
    ) -> Result<Socket, tungstenite::Error> {
        let url = self
            .workspace_url(tenant, "events/in")
            .replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().expect("request");
        if let Some(key) = key {
            request.headers_mut().insert(
                "authorization",
                format!("bearer {key}").parse().expect("header value"),
            );
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, _)| socket)
    }

    pub fn events_topic(&self) -> &str {
        &self.args.topics.events_topic
    }

    /// Everything the topic holds now.
    pub async fn consume(&self, topic: &str) -> Vec<Record> {
        consume_all(&self.args.kafka, topic).await
    }
}

/// The JSON text of a list of values, as a client would send it.
pub fn json_list(items: &[Value]) -> String {
    let parts: Vec<String> = items.iter().map(Value::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// A valid flow-run state event carrying `marker` in its payload.
pub fn event(marker: &str) -> Value {
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
            {"prefect.resource.id": "prefect.tag.nightly", "prefect.resource.role": "tag"},
        ],
        "payload": {"intended": {"from": "RUNNING", "to": "COMPLETED"}, "marker": marker},
    })
}

/// A valid log line.
pub fn log_line(message: &str) -> Value {
    json!({
        "name": "prefect.flow_runs",
        "level": 20,
        "message": message,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "flow_run_id": Uuid::new_v4(),
        "task_run_id": null,
    })
}

/// One message read back from Kafka.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub value: Vec<u8>,
    pub partition: i32,
}

impl Record {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.value).expect("a JSON value")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing in {:?}", self.headers))
    }

    /// The tenant the headers name.
    pub fn tenant(&self) -> Tenant {
        Tenant {
            account_id: self.header("account_id").parse().expect("account UUID"),
            workspace_id: self.header("workspace_id").parse().expect("workspace UUID"),
        }
    }
}

/// The header that marks the messages [`consume_all`] writes itself.
const SENTINEL: &str = "flowhouse.test.sentinel";

/// Reads every message the topic holds now. A sentinel is first written to each partition (and
/// acknowledged); everything read before it is what Kafka held. (High watermarks would say the
/// same more cheaply, but tansu 0.6 reports a batch's base offset there, not the log's end.)
pub async fn consume_all(kafka: &KafkaArgs, topic: &str) -> Vec<Record> {
    let timeout = Duration::from_secs(30);
    let marker = Uuid::new_v4().to_string();
    let producer: FutureProducer = kafka
        .config()
        .expect("config")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Whatever the endpoint under test was given (tests slow its producer down on purpose).
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let partitions: Vec<i32> = producer
        .client()
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata")
        .topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    for &partition in &partitions {
        let headers = OwnedHeaders::new().insert(Header {
            key: SENTINEL,
            value: Some(&marker),
        });
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload("sentinel")
                    .headers(headers),
                timeout,
            )
            .await
            .map_err(|(error, _)| error)
            .expect("write a sentinel");
    }

    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .config()
            .expect("config")
            .set("group.id", unique_name("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut waiting: BTreeSet<i32> = partitions.into_iter().collect();
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !waiting.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no sentinel read back from partitions {waiting:?} of {topic}"
            );
            let Some(message) = consumer.poll(Duration::from_secs(1)) else {
                continue;
            };
            let message = message.expect("consume");
            let headers: BTreeMap<String, String> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let Some(sentinel) = headers.get(SENTINEL) {
                if *sentinel == marker {
                    waiting.remove(&message.partition());
                }
                continue;
            }
            records.push(Record {
                key: message
                    .key()
                    .map(|key| String::from_utf8_lossy(key).into_owned()),
                headers,
                value: message.payload().unwrap_or_default().to_vec(),
                partition: message.partition(),
            });
        }
        records
    })
    .await
    .expect("consumer thread")
}

/// The `detail` and `problems` of an error response.
pub async fn error_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a JSON error body: {text}"))
}

/// Polls `check` every 50 ms until it holds; panics after `limit` (a safety net against a hang,
/// not a measurement).
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
