//! Through the ingestion endpoint, as Prefect clients do: batches of events and logs POSTed to
//! `/api/accounts/{a}/workspaces/{w}/events` and `/logs` with `Authorization: Bearer <key>`, or
//! events one per text message on the websocket `/events/in` (logs still go by HTTP; Prefect
//! has no log websocket).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use flowhouse_schema::Tenant;
use futures::stream::SplitSink;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use super::gate::Gate;
use super::{DriveOptions, DriveStats, Paced, Sent, Tally};
use crate::measure::Progress;
use crate::workload::Message;

/// Who may write what: one key for every tenant, or a key per account.
#[derive(Clone, Debug)]
pub enum ApiKeys {
    One(String),
    PerAccount(HashMap<Uuid, String>),
}

impl ApiKeys {
    pub fn key(&self, tenant: &Tenant) -> Option<&str> {
        match self {
            ApiKeys::One(key) => Some(key),
            ApiKeys::PerAccount(keys) => keys.get(&tenant.account_id).map(String::as_str),
        }
    }
}

/// How the websocket authenticates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WsAuth {
    /// Prefect Cloud: the key in the upgrade request's `Authorization` header.
    #[default]
    Header,
    /// Self-hosted Prefect: `{"type":"auth","token":...}` first, then `{"type":"auth_success"}`.
    Message,
}

#[derive(Clone, Debug)]
pub struct EndpointTarget {
    /// The endpoint's base URL, e.g. `http://127.0.0.1:4200`.
    pub base_url: String,
    pub keys: ApiKeys,
    /// Messages per POST.
    pub batch_size: usize,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// A partial batch waits at most this long for more messages.
    pub max_batch_delay: Duration,
    pub ws_auth: WsAuth,
    /// Retries of a POST the server did not take (401, 429, 502–504, refused connection), with
    /// doubling delays from `retry_delay`.
    pub retries: u32,
    pub retry_delay: Duration,
    /// The longest delay between two retries.
    pub max_retry_delay: Duration,
    /// Also retry a request whose connection was cut before an answer (a restarting endpoint
    /// under `--chaos`). Off by default: in general the server may have taken such a request.
    pub retry_cut_requests: bool,
    /// Every request passes it (a chaos run closes it to quiesce the endpoint).
    pub gate: Option<Arc<Gate>>,
}

impl EndpointTarget {
    pub fn new(base_url: impl Into<String>, keys: ApiKeys) -> Self {
        Self {
            base_url: base_url.into(),
            keys,
            batch_size: 500,
            concurrency: 8,
            max_batch_delay: Duration::from_millis(200),
            ws_auth: WsAuth::Header,
            retries: 5,
            retry_delay: Duration::from_millis(250),
            // Above the last of the default five delays (4 s): no change unless asked.
            max_retry_delay: Duration::from_secs(4),
            retry_cut_requests: false,
            gate: None,
        }
    }

    /// `{base}/api/accounts/{a}/workspaces/{w}`.
    pub fn workspace_url(&self, tenant: &Tenant) -> String {
        format!(
            "{}/api/accounts/{}/workspaces/{}",
            self.base_url.trim_end_matches('/'),
            tenant.account_id,
            tenant.workspace_id
        )
    }

    fn websocket_url(&self, tenant: &Tenant) -> String {
        let url = self.workspace_url(tenant);
        let url = match url.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => format!("ws://{url}"),
        };
        format!("{url}/events/in")
    }
}

/// POSTs one batch, retrying what the server says it did not take (401 while a new key
/// propagates, 429, 502–504) and refused connections.
struct Post {
    client: reqwest::Client,
    url: String,
    key: String,
    body: Bytes,
    messages: u64,
    route: &'static str,
    retries: u32,
    retry_delay: Duration,
    max_retry_delay: Duration,
    retry_cut: bool,
    gate: Option<Arc<Gate>>,
}

async fn post(request: Post, tally: Arc<Tally>) {
    let Post {
        client,
        url,
        key,
        body,
        messages,
        route,
        retries,
        retry_delay,
        max_retry_delay,
        retry_cut,
        gate,
    } = request;
    let mut backoff = retry_delay;
    for attempt in 0..=retries {
        // Held until this attempt has its answer (not through the wait before a retry).
        let pass = match &gate {
            Some(gate) => Some(gate.pass().await),
            None => None,
        };
        let started = Instant::now();
        let response = client
            .post(&url)
            .bearer_auth(&key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let last = attempt == retries;
        match response {
            Ok(response) if response.status().is_success() => {
                tally.latency(route, started.elapsed());
                tally.ack(messages);
                return;
            }
            Ok(response) => {
                let status = response.status();
                if !last && matches!(status.as_u16(), 401 | 429 | 502 | 503 | 504) {
                    drop(pass);
                    tally.retry(messages, format!("HTTP {}", status.as_u16()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_retry_delay);
                    continue;
                }
                let text = response.text().await.unwrap_or_default();
                tally.fail(messages, format!("{route}: HTTP {status}: {}", text.trim()));
                return;
            }
            Err(error)
                if !last
                    && (error.is_connect()
                        || (retry_cut && error.is_request() && !error.is_timeout())) =>
            {
                drop(pass);
                tally.retry(
                    messages,
                    if error.is_connect() {
                        "cannot connect"
                    } else {
                        "connection cut before an answer"
                    },
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_retry_delay);
            }
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                tally.fail(messages, format!("{route}: {kind}: {error}"));
                return;
            }
        }
    }
}

struct Buffer {
    body: Vec<u8>,
    messages: u64,
    opened: Instant,
}

/// Per-tenant batches of events or logs, POSTed when full or old enough.
struct Batcher {
    client: reqwest::Client,
    target: EndpointTarget,
    tally: Arc<Tally>,
    permits: Arc<Semaphore>,
    buffers: HashMap<(Tenant, bool), Buffer>,
    last_sweep: Instant,
}

impl Batcher {
    fn new(target: &EndpointTarget, tally: Arc<Tally>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(target.concurrency.max(1))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            client,
            target: target.clone(),
            tally,
            permits: Arc::new(Semaphore::new(target.concurrency.max(1))),
            buffers: HashMap::new(),
            last_sweep: Instant::now(),
        })
    }

    async fn push(&mut self, tenant: Tenant, is_event: bool, json: &[u8]) {
        let buffer = self
            .buffers
            .entry((tenant, is_event))
            .or_insert_with(|| Buffer {
                body: Vec::with_capacity(64 * 1024),
                messages: 0,
                opened: Instant::now(),
            });
        buffer
            .body
            .push(if buffer.messages == 0 { b'[' } else { b',' });
        buffer.body.extend_from_slice(json);
        buffer.messages += 1;
        if buffer.messages as usize >= self.target.batch_size {
            self.dispatch((tenant, is_event)).await;
        }
        if self.last_sweep.elapsed() >= Duration::from_millis(10) {
            self.last_sweep = Instant::now();
            let old: Vec<(Tenant, bool)> = self
                .buffers
                .iter()
                .filter(|(_, b)| b.opened.elapsed() >= self.target.max_batch_delay)
                .map(|(k, _)| *k)
                .collect();
            for key in old {
                self.dispatch(key).await;
            }
        }
    }

    async fn dispatch(&mut self, key: (Tenant, bool)) {
        let Some(mut buffer) = self.buffers.remove(&key) else {
            return;
        };
        let (tenant, is_event) = key;
        buffer.body.push(b']');
        let route = if is_event {
            "POST /events"
        } else {
            "POST /logs"
        };
        let Some(api_key) = self.target.keys.key(&tenant) else {
            self.tally.fail(
                buffer.messages,
                format!("{route}: no API key for account {}", tenant.account_id),
            );
            return;
        };
        let url = format!(
            "{}/{}",
            self.target.workspace_url(&tenant),
            if is_event { "events" } else { "logs" }
        );
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let request = post(
            Post {
                client: self.client.clone(),
                url,
                key: api_key.to_string(),
                body: Bytes::from(buffer.body),
                messages: buffer.messages,
                route,
                retries: self.target.retries,
                retry_delay: self.target.retry_delay,
                max_retry_delay: self.target.max_retry_delay,
                retry_cut: self.target.retry_cut_requests,
                gate: self.target.gate.clone(),
            },
            self.tally.clone(),
        );
        tokio::spawn(async move {
            request.await;
            drop(permit);
        });
    }

    /// Sends what is buffered and waits for every request.
    async fn finish(mut self) {
        let keys: Vec<(Tenant, bool)> = self.buffers.keys().copied().collect();
        for key in keys {
            self.dispatch(key).await;
        }
        let all = self.target.concurrency.max(1) as u32;
        let _ = self.permits.acquire_many(all).await;
    }
}

/// POSTs the messages in per-tenant batches.
pub async fn post_batches<I: Iterator<Item = Message>>(
    source: &mut I,
    target: &EndpointTarget,
    options: &DriveOptions,
    progress: &Progress,
) -> anyhow::Result<DriveStats> {
    let tally = Arc::new(Tally::new());
    let mut batcher = Batcher::new(target, tally.clone())?;
    let bar = progress.counter("http", options.max_messages, "msgs");
    let mut sent = Sent::new(tally.start);
    let mut paced = Paced::new(source, options, tally.start);
    while let Some(message) = paced.next_async().await {
        let json = message.json();
        batcher
            .push(message.tenant, message.is_event(), &json)
            .await;
        sent.count(&message, json.len());
        bar.inc(1);
    }
    bar.set_message("waiting for the last requests");
    batcher.finish().await;
    bar.finish_and_clear();
    Ok(tally.stats("http", options, &sent))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Connection {
    sink: SplitSink<Socket, WsMessage>,
    /// Reads until the server closes; returns its close frame.
    reader: JoinHandle<Option<CloseFrame>>,
    sent: u64,
    unflushed: usize,
    broken: Option<String>,
}

fn retryable(error: &tungstenite::Error) -> bool {
    match error {
        tungstenite::Error::Http(response) => {
            matches!(response.status().as_u16(), 401 | 429 | 502 | 503 | 504)
        }
        tungstenite::Error::Io(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

async fn connect(
    target: &EndpointTarget,
    tenant: &Tenant,
    tally: &Tally,
) -> anyhow::Result<Connection> {
    let key = target
        .keys
        .key(tenant)
        .with_context(|| format!("no API key for account {}", tenant.account_id))?;
    let url = target.websocket_url(tenant);
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad websocket URL {url}"))?;
    if target.ws_auth == WsAuth::Header {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).context("bad API key")?,
        );
    }
    // Retried like a POST: a key just added takes the endpoint a few seconds to load.
    let mut backoff = target.retry_delay;
    let mut attempt = 0;
    let (socket, started) = loop {
        let started = Instant::now();
        match tokio_tungstenite::connect_async(request.clone()).await {
            Ok((socket, _)) => break (socket, started),
            Err(error) if attempt < target.retries && retryable(&error) => {
                attempt += 1;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => return Err(error).with_context(|| format!("cannot open {url}")),
        }
    };
    let (mut sink, mut stream) = socket.split();
    if target.ws_auth == WsAuth::Message {
        let auth = serde_json::json!({"type": "auth", "token": key}).to_string();
        sink.send(WsMessage::text(auth)).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("no answer to the auth message")?;
        match answer {
            Some(Ok(WsMessage::Text(text))) if text.contains("auth_success") => {}
            other => anyhow::bail!("websocket auth refused: {other:?}"),
        }
    }
    tally.latency("WS /events/in connect", started.elapsed());
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            match message {
                Ok(WsMessage::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });
    Ok(Connection {
        sink,
        reader,
        sent: 0,
        unflushed: 0,
        broken: None,
    })
}

/// Sends events over one websocket per tenant (Cloud-style auth by default) and logs as HTTP
/// batches. Events on a connection count as acknowledged when the server closes it normally.
pub async fn websocket<I: Iterator<Item = Message>>(
    source: &mut I,
    target: &EndpointTarget,
    options: &DriveOptions,
    progress: &Progress,
) -> anyhow::Result<DriveStats> {
    let tally = Arc::new(Tally::new());
    let mut batcher = Batcher::new(target, tally.clone())?;
    let mut connections: HashMap<Tenant, Result<Connection, String>> = HashMap::new();
    let bar = progress.counter("ws", options.max_messages, "msgs");
    let mut sent = Sent::new(tally.start);
    let mut paced = Paced::new(source, options, tally.start);
    let flush_every = target.batch_size.max(1);
    while let Some(message) = paced.next_async().await {
        let json = message.json();
        sent.count(&message, json.len());
        bar.inc(1);
        if !message.is_event() {
            batcher.push(message.tenant, false, &json).await;
            continue;
        }
        let connection = match connections.entry(message.tenant) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                connect(target, &message.tenant, &tally)
                    .await
                    .map_err(|error| format!("{error:#}")),
            ),
        };
        let connection = match connection {
            Ok(connection) if connection.broken.is_none() => connection,
            Ok(_) => {
                tally.fail(1, "WS /events/in: connection lost");
                continue;
            }
            Err(error) => {
                tally.fail(1, format!("WS /events/in: {error}"));
                continue;
            }
        };
        let text = String::from_utf8(json).expect("JSON is UTF-8");
        let result = if connection.unflushed + 1 >= flush_every {
            connection.unflushed = 0;
            connection.sink.send(WsMessage::text(text)).await
        } else {
            connection.unflushed += 1;
            connection.sink.feed(WsMessage::text(text)).await
        };
        match result {
            Ok(()) => connection.sent += 1,
            Err(error) => {
                tally.fail(1, format!("WS /events/in: {error}"));
                connection.broken = Some(error.to_string());
            }
        }
    }
    bar.set_message("closing");
    for mut connection in connections.into_values().flatten() {
        let closing = async {
            connection.sink.flush().await?;
            connection
                .sink
                .send(WsMessage::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                })))
                .await?;
            Ok::<_, tungstenite::Error>(())
        };
        let closed = closing.await;
        let frame = tokio::time::timeout(Duration::from_secs(30), &mut connection.reader).await;
        match (connection.broken, closed, frame) {
            (None, Ok(()), Ok(Ok(Some(frame)))) if frame.code == CloseCode::Normal => {
                tally.ack(connection.sent);
            }
            (None, Ok(()), Ok(Ok(Some(frame)))) => tally.fail(
                connection.sent,
                format!(
                    "WS /events/in: closed with {}: {}",
                    frame.code, frame.reason
                ),
            ),
            (broken, closed, _) => tally.fail(
                connection.sent,
                format!(
                    "WS /events/in: not closed normally, delivery unconfirmed ({})",
                    broken
                        .or(closed.err().map(|e| e.to_string()))
                        .unwrap_or_else(|| "no close frame".into())
                ),
            ),
        }
    }
    batcher.finish().await;
    bar.finish_and_clear();
    Ok(tally.stats("ws", options, &sent))
}
