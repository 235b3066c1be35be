//! `GET /events/out` and `GET /logs/out`: Prefect's subscriber protocol.
//!
//! 1. Authentication: a key in the upgrade's `Authorization` header (checked before
//!    upgrading: 401/403), and/or the `{"type": "auth", "token": ...}` message every Prefect
//!    subscriber sends first, answered `{"type": "auth_success"}` or closed with 1008.
//! 2. `{"type": "filter", "filter": {...}, "backfill": true}`: Prefect's `EventFilter` (or
//!    `LogFilter`); anything else closes with 1002 and the reason, as Prefect does.
//! 3. Backfill (unless `backfill` is false), as Prefect's server does for events: the matching
//!    items of the last 15 minutes at most, oldest first, from ClickHouse. Flowhouse backfills
//!    logs the same way (Prefect sends none), so a reconnecting log subscriber has no gap.
//! 4. Live items from the [`super::Feed`], matching the same filter (one semantics for both,
//!    see `events::matches`), skipping what the backfill already sent: `{"type": "event",
//!    "event": ...}` / `{"type": "log", "log": ...}`.
//!
//! The key is checked again every few seconds: a revoked key's socket closes with 1008.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use flowhouse_keys::key_from_auth_string;
use flowhouse_schema::{Stream, Tenant};
use flowhouse_service::websocket::{
    AUTH_SUCCESS, NO_SOCKET_CREDENTIAL, Opening, close, read_opening,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{Item, Subscription};
use crate::AppState;
use crate::auth::PathWorkspace;
use crate::events::filter::{EventFilter, Order};
use crate::events::{self, ReceivedEvent};
use crate::logs::{self, Log, LogFilter};
use crate::request::parse_json;
use crate::window;

/// Prefect's `PREFECT_SERVER_EVENTS_MAXIMUM_WEBSOCKET_BACKFILL`.
const MAX_BACKFILL: Duration = Duration::from_secs(15 * 60);
/// Prefect's `PREFECT_SERVER_EVENTS_WEBSOCKET_BACKFILL_PAGE_SIZE`.
const BACKFILL_PAGE: u32 = 250;
/// How long a client has for its auth and filter messages.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open socket's key is checked again.
const RECHECK_KEY: Duration = Duration::from_secs(2);

/// Close codes (RFC 6455 section 7.4.1).
const POLICY: u16 = 1008;
const PROTOCOL: u16 = 1002;
const TRY_AGAIN: u16 = 1013;
const NORMAL: u16 = 1000;

pub async fn events_out(
    State(state): State<AppState>,
    workspace: PathWorkspace,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, crate::error::ApiError> {
    open(state, workspace, headers, upgrade, Stream::Events)
}

pub async fn logs_out(
    State(state): State<AppState>,
    workspace: PathWorkspace,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, crate::error::ApiError> {
    open(state, workspace, headers, upgrade, Stream::Logs)
}

fn open(
    state: AppState,
    workspace: PathWorkspace,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    stream: Stream,
) -> Result<Response, crate::error::ApiError> {
    let header_key = flowhouse_keys::key_from_authorization(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    );
    // Cloud style: checked before upgrading, so a bad key is a plain 401/403.
    if let Some(key) = &header_key {
        workspace.authorize(&state, Some(key))?;
    }
    Ok(upgrade
        .protocols(["prefect"])
        .on_upgrade(move |mut socket| async move {
            let Some((tenant, key)) = handshake(&state, &workspace, header_key, &mut socket).await
            else {
                return;
            };
            let session = Session {
                state,
                workspace,
                tenant,
                key,
            };
            session.serve(socket, stream).await;
        }))
}

/// The auth message; the tenant and the key that proved it.
async fn handshake(
    state: &AppState,
    workspace: &PathWorkspace,
    header_key: Option<String>,
    socket: &mut WebSocket,
) -> Option<(Tenant, String)> {
    let token = match read_opening(socket, OPENING_TIMEOUT).await {
        Opening::Auth(token) => token,
        Opening::NotAuth => {
            close(socket, POLICY, "Expected 'auth' message").await;
            return None;
        }
        Opening::TimedOut => {
            close(socket, POLICY, "no auth message within 10 s").await;
            return None;
        }
        Opening::Gone => return None,
    };
    let key = token
        .as_deref()
        .map(key_from_auth_string)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .or(header_key);
    let Some(key) = key else {
        close(socket, POLICY, NO_SOCKET_CREDENTIAL).await;
        return None;
    };
    match workspace.authorize(state, Some(&key)) {
        Ok(tenant) => {
            socket.send(Message::text(AUTH_SUCCESS)).await.ok()?;
            Some((tenant, key))
        }
        Err(error) => {
            close(socket, POLICY, &error.to_string()).await;
            None
        }
    }
}

/// The filter message.
#[derive(Deserialize)]
struct FilterMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    filter: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    backfill: Option<bool>,
}

/// What a subscriber asked for.
enum Wanted {
    Events(Box<EventFilter>),
    Logs(LogFilter),
}

struct Session {
    state: AppState,
    workspace: PathWorkspace,
    tenant: Tenant,
    key: String,
}

impl Session {
    async fn serve(self, mut socket: WebSocket, stream: Stream) {
        let Some((wanted, backfill)) = self.read_filter(&mut socket, stream).await else {
            return;
        };
        // Subscribe first, then backfill, so nothing falls between the two.
        let subscription = self
            .state
            .live
            .as_ref()
            .map(|feed| feed.subscribe(self.tenant, stream));
        let sent = if backfill {
            match self.backfill(&mut socket, &wanted).await {
                Some(sent) => sent,
                None => return,
            }
        } else {
            HashSet::new()
        };
        match subscription {
            Some(subscription) => self.stream_live(socket, &wanted, subscription, sent).await,
            None => close(&mut socket, NORMAL, "no live feed on this server").await,
        }
    }

    async fn read_filter(&self, socket: &mut WebSocket, stream: Stream) -> Option<(Wanted, bool)> {
        let raw = loop {
            let message = tokio::time::timeout(OPENING_TIMEOUT, socket.recv()).await;
            match message {
                Ok(Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))) => {
                    break message.into_data();
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return None,
                Err(_) => {
                    close(socket, PROTOCOL, "Expected 'filter' message").await;
                    return None;
                }
            }
        };
        let message = match serde_json::from_slice::<FilterMessage>(&raw) {
            Ok(message) if message.kind == "filter" => message,
            _ => {
                close(socket, PROTOCOL, "Expected 'filter' message").await;
                return None;
            }
        };
        let filter = message.filter.as_ref().map_or("{}", |raw| raw.get());
        let wanted = match stream {
            Stream::Events => parse_json::<EventFilter>(filter.as_bytes())
                .and_then(|f| f.resolve(events::max_search(&self.state), "filter"))
                .map(|mut f| {
                    // As Prefect: at most 15 minutes of backfill, oldest first.
                    let earliest = Utc::now() - MAX_BACKFILL;
                    f.occurred.since = f.occurred.since.map(|since| since.max(earliest));
                    f.order = Order::Asc;
                    Wanted::Events(Box::new(f))
                }),
            Stream::Logs => parse_json::<LogFilter>(filter.as_bytes())
                .and_then(|f| f.check("filter").map(|()| Wanted::Logs(f))),
        };
        match wanted {
            Ok(wanted) => Some((wanted, message.backfill.unwrap_or(true))),
            Err(error) => {
                close(socket, PROTOCOL, &format!("Invalid filter: {error}")).await;
                None
            }
        }
    }

    /// Sends the backfill; the ids sent, or `None` when the socket is gone.
    async fn backfill(&self, socket: &mut WebSocket, wanted: &Wanted) -> Option<HashSet<Uuid>> {
        let mut sent = HashSet::new();
        match wanted {
            Wanted::Events(filter) => {
                let mut after = None;
                loop {
                    let (rows, more) = match events::read_page(
                        &self.state,
                        self.tenant,
                        filter,
                        BACKFILL_PAGE,
                        after,
                    )
                    .await
                    {
                        Ok(page) => page,
                        Err(error) => {
                            close(socket, TRY_AGAIN, &format!("backfill failed: {error}")).await;
                            return None;
                        }
                    };
                    after = rows.last().map(|row| events::page_token::Cursor {
                        occurred: window::micros(row.occurred),
                        id: row.id,
                    });
                    for row in rows {
                        sent.insert(row.id);
                        send(socket, event_message(ReceivedEvent::from(row))).await?;
                    }
                    if !more {
                        break;
                    }
                }
            }
            Wanted::Logs(filter) => {
                let rows = match logs::read_recent(
                    &self.state,
                    self.tenant,
                    filter,
                    window::micros(Utc::now() - MAX_BACKFILL),
                )
                .await
                {
                    Ok(rows) => rows,
                    Err(error) => {
                        close(socket, TRY_AGAIN, &format!("backfill failed: {error}")).await;
                        return None;
                    }
                };
                for row in rows {
                    let log = Log::from(row);
                    sent.insert(log.id);
                    send(socket, log_message(log)).await?;
                }
            }
        }
        Some(sent)
    }

    async fn stream_live(
        self,
        mut socket: WebSocket,
        wanted: &Wanted,
        mut subscription: Subscription,
        mut sent: HashSet<Uuid>,
    ) {
        let mut recheck = tokio::time::interval(RECHECK_KEY);
        recheck.tick().await;
        loop {
            tokio::select! {
                item = subscription.receiver.recv() => {
                    let Some(item) = item else {
                        if subscription.lagged() {
                            close(&mut socket, TRY_AGAIN, "this subscriber fell too far behind the live feed; reconnect").await;
                        }
                        return;
                    };
                    let message = match (&*item, wanted) {
                        (Item::Event(row), Wanted::Events(filter)) if filter.matches(row) => {
                            if sent.remove(&row.id) {
                                continue;
                            }
                            event_message(ReceivedEvent::from(row.clone()))
                        }
                        (Item::Log(row), Wanted::Logs(filter)) if filter.matches(row) => {
                            let log = Log::from(row.clone());
                            if sent.remove(&log.id) {
                                continue;
                            }
                            log_message(log)
                        }
                        _ => continue,
                    };
                    if send(&mut socket, message).await.is_none() {
                        return;
                    }
                }
                incoming = socket.recv() => match incoming {
                    // Prefect's subscribers send nothing after the filter; pings are answered.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                _ = recheck.tick() => {
                    if let Err(error) = self.workspace.authorize(&self.state, Some(&self.key)) {
                        close(&mut socket, POLICY, &error.to_string()).await;
                        return;
                    }
                }
            }
        }
    }
}

fn event_message(event: ReceivedEvent) -> String {
    json!({"type": "event", "event": event}).to_string()
}

fn log_message(log: Log) -> String {
    json!({"type": "log", "log": log}).to_string()
}

async fn send(socket: &mut WebSocket, text: String) -> Option<()> {
    socket.send(Message::text(text)).await.ok()
}
