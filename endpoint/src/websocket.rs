//! `GET /events/in`: Prefect's event websocket, one JSON event per text message.
//!
//! ## Authentication, both styles Prefect clients use
//! - Cloud: the key is in the upgrade request (`Authorization: bearer <key>`); a bad key is an
//!   HTTP 401/403 and no socket is opened.
//! - Self-hosted: no header; the first message must be `{"type": "auth", "token": "<key>"}`,
//!   answered `{"type": "auth_success"}`, or the socket is closed (1008) with the reason.
//!
//! ## A pong is a durability checkpoint
//! Prefect clients ping every few hundred events and forget every event sent before the pong.
//! So a pong here means: every event received before the ping is acknowledged by Kafka.
//! tungstenite queues the pong itself when it reads a ping, and writes it with the next read or
//! write on the socket. The session therefore does neither after a ping until every earlier
//! delivery has resolved. If one failed, not even a close frame can be sent (the queued pong
//! would go out with it), so the connection is dropped: the client sees an abnormal closure and
//! resends everything it has not had a pong for.
//!
//! An invalid event cannot be refused one by one (the protocol has no per-message answer, and
//! closing would make the client resend it forever), so it is written to the dead-letter topic
//! with the reason, like the poison messages the ingest consumer finds.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use flowhouse_keys::key_from_auth_string;
use flowhouse_schema::contract::header;
use flowhouse_schema::{Envelope, Stream, Tenant};
use flowhouse_service::websocket::{
    AUTH_SUCCESS, NO_SOCKET_CREDENTIAL, Opening, auth_message, read_opening,
};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use rdkafka::message::Header;
use rdkafka::types::RDKafkaErrorCode;

use crate::Shared;
use crate::batch::validate;
use crate::error::ApiError;
use crate::producer::{Delivery, Permit};
use crate::routes::{WorkspacePath, request_key, workspace_ids};
use crate::telemetry;

/// Room for the largest valid event; larger messages close the socket (1009).
const MESSAGE_SLACK: usize = 64 * 1024;
/// How often an open socket's key is checked again (revocation takes effect within this).
const RECHECK_KEY: Duration = Duration::from_secs(2);

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Path(path): WorkspacePath,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Cloud style: checked before upgrading, so a bad key is a plain 401/403.
    let tenant = match request_key(&headers) {
        Some(key) => Some((shared.authorize(Some(&key), &path)?, key)),
        None => {
            // Self-hosted style: the key comes in the first message; the path must still
            // name a workspace.
            workspace_ids(&path)?;
            None
        }
    };
    // Counted from now, so draining waits for sockets whose upgrade is still completing.
    let open = shared.sockets.token();
    let max_message = shared.limits.max_event_bytes + MESSAGE_SLACK;
    Ok(upgrade
        .protocols(["prefect"])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            let _open = open;
            metrics::gauge!(telemetry::WEBSOCKETS).increment(1);
            serve(shared, socket, path, tenant).await;
            metrics::gauge!(telemetry::WEBSOCKETS).decrement(1);
        }))
}

async fn serve(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    path: (String, String),
    tenant: Option<(Tenant, String)>,
) {
    let cloud_style = tenant.is_some();
    let (tenant, key) = match tenant {
        Some(known) => known,
        None => match handshake(&shared, &mut socket, &path).await {
            Ok(known) => known,
            Err(Some(error)) => {
                close(&mut socket, &error).await;
                return;
            }
            Err(None) => return,
        },
    };
    let mut session = Session {
        shared,
        tenant,
        key,
        path,
        pending: FuturesUnordered::new(),
        may_auth: cloud_style,
    };
    let end = session.pump(&mut socket).await;
    match end {
        End::Client => {
            // Writes the reply to the client's close frame, if it sent one.
            let _ = socket.flush().await;
        }
        End::Closing => match session.settle().await {
            Ok(()) => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "the server is shutting down; reconnect".into(),
                    })))
                    .await;
            }
            Err(error) => close(&mut socket, &error).await,
        },
        End::Failed(error) => {
            tracing::warn!(tenant = %tenant, %error, "closing a websocket");
            close(&mut socket, &error).await;
        }
        End::FailedAtPing(error) => {
            tracing::warn!(
                tenant = %tenant, %error,
                "events before a ping were not acknowledged; dropping the websocket without a pong"
            );
            drop(socket);
        }
    }
    // Whatever is still in flight is delivered (or not) without this socket; waiting keeps the
    // in-flight bound honest until it is.
    let _ = session.settle().await;
}

/// How a session ended.
enum End {
    /// The client closed or went away.
    Client,
    /// The endpoint is draining.
    Closing,
    /// Refused, with a reason the client can be sent.
    Failed(ApiError),
    /// A delivery failed while a pong was waiting to be sent.
    FailedAtPing(ApiError),
}

/// The self-hosted handshake: `{"type": "auth", "token": ...}` first (pings before it are fine:
/// Prefect's client pings right after connecting).
async fn handshake(
    shared: &Shared,
    socket: &mut WebSocket,
    path: &(String, String),
) -> Result<(Tenant, String), Option<ApiError>> {
    let token = match read_opening(socket, shared.auth_timeout).await {
        Opening::Auth(token) => token,
        Opening::NotAuth => {
            return Err(Some(ApiError::Unauthorized(
                "the first message must be {\"type\": \"auth\", \"token\": \"<key>\"}".into(),
            )));
        }
        Opening::TimedOut => {
            return Err(Some(ApiError::Unauthorized(format!(
                "no auth message within {:?}: send {{\"type\": \"auth\", \"token\": \"<key>\"}} first",
                shared.auth_timeout
            ))));
        }
        Opening::Gone => return Err(None),
    };
    let tenant = authorize_token(shared, token.as_deref(), path)?;
    socket
        .send(Message::text(AUTH_SUCCESS))
        .await
        .map_err(|_| None)?;
    let key = token
        .as_deref()
        .map(key_from_auth_string)
        .unwrap_or_default();
    Ok((tenant, key.to_string()))
}

/// The tenant of an auth message's token; a socket without any key is told which Prefect
/// settings send one.
fn authorize_token(
    shared: &Shared,
    token: Option<&str>,
    path: &(String, String),
) -> Result<Tenant, ApiError> {
    match token.map(key_from_auth_string) {
        Some(key) if !key.is_empty() => shared.authorize(Some(key), path),
        _ => Err(ApiError::Unauthorized(NO_SOCKET_CREDENTIAL.into())),
    }
}

async fn close(socket: &mut WebSocket, error: &ApiError) {
    flowhouse_service::websocket::close(socket, error.close_code(), &error.to_string()).await;
}

struct Session {
    shared: Arc<Shared>,
    tenant: Tenant,
    /// The key that opened the socket, checked again every few seconds: a revoked key's
    /// socket closes (1008) rather than writing on.
    key: String,
    path: (String, String),
    /// Deliveries of the events received so far, until they resolve.
    pending: FuturesUnordered<Pending>,
    /// A Cloud-style client may still send an auth message first; it gets its `auth_success`.
    may_auth: bool,
}

impl Session {
    async fn pump(&mut self, socket: &mut WebSocket) -> End {
        let mut recheck = tokio::time::interval(RECHECK_KEY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        loop {
            let message = tokio::select! {
                biased;
                Some(result) = self.pending.next(), if !self.pending.is_empty() => {
                    match result {
                        Ok(()) => continue,
                        Err(error) => return End::Failed(error),
                    }
                }
                () = self.shared.closing.cancelled() => return End::Closing,
                _ = recheck.tick() => {
                    // Safe to close here: a pong is only ever queued after every earlier
                    // delivery resolved (see the module's notes).
                    match self.shared.authorize(Some(&self.key), &self.path) {
                        Ok(_) => continue,
                        Err(error) => return End::Failed(error),
                    }
                }
                message = socket.recv() => message,
            };
            let raw = match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message.into_data(),
                Some(Ok(Message::Ping(_))) => {
                    // The pong is queued; nothing is read or written until it is true.
                    match self.settle().await {
                        Ok(()) => continue,
                        Err(error) => return End::FailedAtPing(error),
                    }
                }
                Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return End::Client,
                Some(Err(error)) => return read_error(&error),
            };
            if std::mem::take(&mut self.may_auth)
                && let Some(token) = auth_message(&raw)
            {
                if let Err(error) = authorize_token(&self.shared, token.as_deref(), &self.path) {
                    return End::Failed(error);
                }
                let reply = Message::text(AUTH_SUCCESS);
                if socket.send(reply).await.is_err() {
                    return End::Client;
                }
                continue;
            }
            if let Err(error) = self.accept(raw).await {
                return End::Failed(error);
            }
        }
    }

    /// Takes one event: waits for the rate limit and for room in the producer's queue (reading
    /// nothing meanwhile, which is the client's backpressure), then hands it to Kafka.
    async fn accept(&mut self, raw: Bytes) -> Result<(), ApiError> {
        let shared = self.shared.clone();
        while let Err(wait) = shared.limiter.take(self.tenant, 1) {
            self.drive(tokio::time::sleep(wait)).await?;
        }
        let permit = self.drive(shared.producer.reserve(self.tenant, 1)).await?;

        let received = Utc::now();
        let envelope = Envelope {
            tenant: self.tenant,
            received: Some(received),
        };
        let mut headers = envelope.headers();
        let topic = match validate(Stream::Events, &raw, &shared.limits, received) {
            Ok(()) => &shared.topics.events_topic,
            Err(rejection) => {
                let reason = rejection.to_string();
                tracing::info!(tenant = %self.tenant, reason, "invalid event on a websocket; dead-lettered");
                metrics::counter!(telemetry::DEAD_LETTERED).increment(1);
                headers = headers
                    .insert(Header {
                        key: header::DLQ_REASON,
                        value: Some(&reason),
                    })
                    .insert(Header {
                        key: header::DLQ_KIND,
                        value: Some(rejection.kind().as_str()),
                    });
                &shared.topics.dlq_topic
            }
        };
        let key = envelope.key();
        loop {
            match shared.producer.send(topic, &key, headers.clone(), &raw) {
                Ok(delivery) => {
                    self.pending.push(Pending {
                        delivery,
                        _permit: permit,
                    });
                    metrics::counter!(telemetry::ACCEPTED, "kind" => "events", "transport" => "websocket")
                        .increment(1);
                    return Ok(());
                }
                // librdkafka's own queue (bounded in bytes too) is full: wait for room.
                Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.drive(tokio::time::sleep(Duration::from_millis(10)))
                        .await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Awaits `future` while still collecting deliveries (their permits are what `future` may
    /// be waiting for); fails as soon as one delivery does.
    async fn drive<T>(&mut self, future: impl Future<Output = T>) -> Result<T, ApiError> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                biased;
                output = &mut future => return Ok(output),
                Some(result) = self.pending.next(), if !self.pending.is_empty() => result?,
            }
        }
    }

    /// Waits until every delivery so far resolved; the first failure is returned.
    async fn settle(&mut self) -> Result<(), ApiError> {
        let mut first_error = None;
        while let Some(result) = self.pending.next().await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn read_error(error: &axum::Error) -> End {
    match error
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
    {
        Some(tungstenite::Error::Capacity(capacity)) => {
            End::Failed(ApiError::TooLarge(format!("message refused: {capacity}")))
        }
        _ => End::Client,
    }
}

/// One event's delivery, holding its room in the producer's queue until it resolves.
struct Pending {
    delivery: Delivery,
    _permit: Permit,
}

impl Future for Pending {
    type Output = Result<(), ApiError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.delivery.poll_unpin(cx)
    }
}
