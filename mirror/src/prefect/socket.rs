//! Prefect's live streams, `/events/out` and `/logs/out` (prefect/server/api/events.py, logs.py,
//! `subscriptions.accept_prefect_socket`): the client offers the `prefect` subprotocol, sends
//! `{"type": "auth", "token": ...}` and gets `{"type": "auth_success"}`, then sends
//! `{"type": "filter", ...}`; the server then sends `{"type": "event", "event": ...}` or
//! `{"type": "log", "log": ...}` as they are published.
//!
//! The events filter is the one Prefect's own subscriber sends (the server checks `occurred`
//! in memory, and a missing `until` would be the time it parsed the filter, so a far `until`
//! is needed); no server backfill (the mirror backfills over HTTP). The log filter is empty:
//! every line.

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use flowhouse_schema::Stream;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Auth, Client, rfc3339};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct ServerMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    event: Option<Box<RawValue>>,
    #[serde(default)]
    log: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
}

/// `ws(s)://...` of the API URL's `path`, as Prefect's clients derive it.
pub fn socket_url(api_url: &str, path: &str) -> String {
    let ws = api_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    format!("{}{path}", ws.trim_end_matches('/'))
}

fn path(stream: Stream) -> &'static str {
    match stream {
        Stream::Events => "/events/out",
        Stream::Logs => "/logs/out",
    }
}

fn filter_message(stream: Stream) -> serde_json::Value {
    match stream {
        Stream::Events => {
            let now = Utc::now();
            json!({
                "type": "filter",
                "filter": {
                    "occurred": {
                        "since": rfc3339(now - chrono::Duration::minutes(1)),
                        "until": rfc3339(now + chrono::Duration::days(365)),
                    },
                    "order": "ASC",
                },
                "backfill": false,
            })
        }
        Stream::Logs => json!({"type": "filter", "filter": {}}),
    }
}

impl Client {
    /// Opens and authenticates the live stream of `stream`, subscribed to everything.
    pub async fn subscribe(&self, stream: Stream) -> anyhow::Result<Socket> {
        let url = socket_url(self.base(), path(stream));
        let subscribe = async {
            let mut request = url
                .as_str()
                .into_client_request()
                .with_context(|| format!("{url} is not a websocket URL"))?;
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("prefect"),
            );
            // Prefect Cloud also reads the key from the upgrade, like its HTTP routes.
            if let Auth::ApiKey(key) = self.auth() {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .context("the API key is not a header")?;
                value.set_sensitive(true);
                request.headers_mut().insert("Authorization", value);
            }
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .with_context(|| format!("cannot open {url}"))?;
            let auth = json!({"type": "auth", "token": self.auth().token()});
            socket.send(Message::text(auth.to_string())).await?;
            match next_message(&mut socket).await? {
                Some(message) if message.kind == "auth_success" => {}
                Some(message) => bail!(
                    "{url}: authentication refused ({}: {})",
                    message.kind,
                    message.reason.unwrap_or_default()
                ),
                None => bail!("{url}: closed during authentication"),
            }
            socket
                .send(Message::text(filter_message(stream).to_string()))
                .await?;
            anyhow::Ok(socket)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, subscribe)
            .await
            .with_context(|| format!("{url}: no answer within {HANDSHAKE_TIMEOUT:?}"))?
    }
}

/// What the live socket gave.
pub enum Received {
    Item(Box<RawValue>),
    /// Anything that is not an item (pong, a message of another type): proof of life.
    Other,
}

/// The next thing the server sent; an error when the socket ended or broke.
pub async fn receive(socket: &mut Socket, stream: Stream) -> anyhow::Result<Received> {
    match next_message(socket).await? {
        Some(message) => {
            let item = match stream {
                Stream::Events => message.event,
                Stream::Logs => message.log,
            };
            Ok(item.map_or(Received::Other, Received::Item))
        }
        None => Ok(Received::Other),
    }
}

/// The next JSON message, `None` for control frames; an error when the socket ended.
async fn next_message(socket: &mut Socket) -> anyhow::Result<Option<ServerMessage>> {
    let Some(frame) = socket.next().await else {
        bail!("Prefect closed the stream");
    };
    match frame.context("the stream broke")? {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .map(Some)
            .context("Prefect sent something that is not a message"),
        Message::Close(frame) => bail!(
            "Prefect closed the stream{}",
            frame.map_or(String::new(), |f| format!(" ({}: {})", f.code, f.reason))
        ),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_follow_the_api_url() {
        assert_eq!(
            socket_url("http://127.0.0.1:4200/api", "/events/out"),
            "ws://127.0.0.1:4200/api/events/out"
        );
        assert_eq!(
            socket_url(
                "https://api.prefect.cloud/api/accounts/a/workspaces/w/",
                "/logs/out"
            ),
            "wss://api.prefect.cloud/api/accounts/a/workspaces/w/logs/out"
        );
    }

    #[test]
    fn the_events_filter_reaches_far_ahead_and_asks_for_no_server_backfill() {
        let message = filter_message(Stream::Events);
        assert_eq!(message["backfill"], false);
        let until: chrono::DateTime<Utc> = message["filter"]["occurred"]["until"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(until > Utc::now() + chrono::Duration::days(300));
        assert_eq!(filter_message(Stream::Logs)["filter"], json!({}));
    }
}
