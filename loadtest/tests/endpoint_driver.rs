//! The HTTP and websocket drivers against a stand-in endpoint that serves Prefect's paths:
//! every message arrives once (duplicates as sent), at its tenant's path, with its account's
//! key, and what the server refuses is counted as failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message as AxumWs, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Duration as Span, TimeZone, Utc};
use flowhouse_loadtest::drive::DriveOptions;
use flowhouse_loadtest::drive::endpoint::{ApiKeys, EndpointTarget, post_batches, websocket};
use flowhouse_loadtest::measure::Progress;
use flowhouse_loadtest::workload::{Message, Workload, WorkloadConfig};
use flowhouse_schema::Tenant;
use flowhouse_schema::event::{Limits, parse_event};
use flowhouse_schema::log::parse_log;
use uuid::Uuid;

#[derive(Default)]
struct Received {
    /// (tenant, "event"/"log", the message as JSON text)
    messages: Vec<(Tenant, &'static str, String)>,
    posts: u64,
}

#[derive(Clone)]
struct Server {
    keys: Arc<HashMap<Uuid, String>>,
    received: Arc<Mutex<Received>>,
    /// Answer 503 to this many event POSTs first.
    unavailable: Arc<AtomicU64>,
}

fn authorized(server: &Server, account: Uuid, headers: &HeaderMap) -> bool {
    let expected = server.keys.get(&account).map(|k| format!("Bearer {k}"));
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    expected.is_some() && expected == given
}

async fn receive(
    server: &Server,
    account: Uuid,
    workspace: Uuid,
    headers: &HeaderMap,
    body: &str,
    kind: &'static str,
) -> Response {
    if !authorized(server, account, headers) {
        return (StatusCode::UNAUTHORIZED, "unknown or revoked API key").into_response();
    }
    if kind == "event"
        && server
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(body) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "not a JSON list").into_response();
    };
    let tenant = Tenant {
        account_id: account,
        workspace_id: workspace,
    };
    let mut received = server.received.lock().unwrap();
    received.posts += 1;
    for item in items {
        received.messages.push((tenant, kind, item.to_string()));
    }
    if kind == "event" {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::CREATED.into_response()
    }
}

async fn events(
    State(server): State<Server>,
    Path((account, workspace)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    receive(&server, account, workspace, &headers, &body, "event").await
}

async fn logs(
    State(server): State<Server>,
    Path((account, workspace)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    receive(&server, account, workspace, &headers, &body, "log").await
}

async fn events_in(
    State(server): State<Server>,
    Path((account, workspace)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !authorized(&server, account, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let tenant = Tenant {
        account_id: account,
        workspace_id: workspace,
    };
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        // Read until the client's close has been answered (recv drives the close reply).
        while let Some(Ok(message)) = socket.recv().await {
            if let AxumWs::Text(text) = message {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                server
                    .received
                    .lock()
                    .unwrap()
                    .messages
                    .push((tenant, "event", value.to_string()));
            }
        }
    })
}

async fn serve(server: Server) -> String {
    let app = Router::new()
        .route(
            "/api/accounts/{account}/workspaces/{workspace}/events",
            post(events),
        )
        .route(
            "/api/accounts/{account}/workspaces/{workspace}/logs",
            post(logs),
        )
        .route(
            "/api/accounts/{account}/workspaces/{workspace}/events/in",
            get(events_in),
        )
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn config() -> WorkloadConfig {
    let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    WorkloadConfig {
        tenants: 5,
        runs: 40,
        max_tasks: 12,
        duplicate_rate: 0.05,
        ..WorkloadConfig::new(3, start, start + Span::days(2))
    }
}

fn keys_for(tenants: &[Tenant]) -> HashMap<Uuid, String> {
    tenants
        .iter()
        .map(|t| (t.account_id, format!("fh_test_{}", t.account_id.simple())))
        .collect()
}

fn server(keys: HashMap<Uuid, String>, unavailable: u64) -> Server {
    Server {
        keys: Arc::new(keys),
        received: Arc::default(),
        unavailable: Arc::new(AtomicU64::new(unavailable)),
    }
}

/// The messages as the server should have them: sorted (tenant, kind, JSON) triples.
fn expected(messages: &[Message]) -> Vec<(Tenant, &'static str, String)> {
    let mut expected: Vec<_> = messages
        .iter()
        .map(|m| {
            let value: serde_json::Value = serde_json::from_slice(&m.json()).unwrap();
            (
                m.tenant,
                if m.is_event() { "event" } else { "log" },
                value.to_string(),
            )
        })
        .collect();
    expected.sort();
    expected
}

fn sorted(received: &Mutex<Received>) -> Vec<(Tenant, &'static str, String)> {
    let mut messages = received.lock().unwrap().messages.clone();
    messages.sort();
    messages
}

fn assert_valid(messages: &[(Tenant, &'static str, String)], now: chrono::DateTime<Utc>) {
    for (_, kind, json) in messages {
        if *kind == "event" {
            parse_event(json.as_bytes(), &Limits::default(), now).unwrap();
        } else {
            parse_log(json.as_bytes(), &Limits::default(), now).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batches_reach_each_tenants_paths_with_its_key() {
    let config = config();
    let all: Vec<Message> = Workload::new(config.clone()).unwrap().collect();
    let mut workload = Workload::new(config.clone()).unwrap();
    let keys = keys_for(&workload.tenants());
    let server = server(keys.clone(), 2);
    let base = serve(server.clone()).await;
    let target = EndpointTarget {
        batch_size: 50,
        concurrency: 4,
        retry_delay: Duration::from_millis(10),
        ..EndpointTarget::new(base, ApiKeys::PerAccount(keys))
    };
    let limit = all.len() as u64 - 100;
    let options = DriveOptions {
        max_messages: Some(limit),
        ..DriveOptions::default()
    };
    let stats = post_batches(&mut workload, &target, &options, &Progress::hidden())
        .await
        .unwrap();
    assert_eq!(stats.messages_sent, limit);
    assert_eq!(stats.messages_acked, limit, "{:?}", stats.errors);
    assert_eq!(stats.messages_failed, 0);
    assert_eq!(stats.events_sent + stats.logs_sent, limit);
    assert!(stats.latency.contains_key("POST /events") && stats.latency.contains_key("POST /logs"));
    let received = sorted(&server.received);
    assert_eq!(received, expected(&all[..limit as usize]));
    assert_valid(&received, config.end);
    // Batches of at most 50, per tenant and kind: far fewer requests than messages.
    let posts = server.received.lock().unwrap().posts;
    assert!(posts >= limit / 50 && posts < limit / 10, "{posts} POSTs");
    // The truth is that of what was sent.
    let truth = workload.into_truth();
    let duplicates: u64 = truth.tenants.iter().map(|t| t.duplicates_sent).sum();
    assert_eq!(truth.events() + truth.logs() + duplicates, limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_counted_as_failed_with_the_reason() {
    let config = config();
    let mut workload = Workload::new(config).unwrap();
    let tenants = workload.tenants();
    let mut keys = keys_for(&tenants);
    let server = server(keys.clone(), 0);
    let base = serve(server.clone()).await;
    // The driver holds a wrong key for the first account.
    keys.insert(tenants[0].account_id, "fh_wrong".into());
    let target = EndpointTarget {
        batch_size: 50,
        retries: 1,
        retry_delay: Duration::from_millis(10),
        ..EndpointTarget::new(base, ApiKeys::PerAccount(keys))
    };
    let stats = post_batches(
        &mut workload,
        &target,
        &DriveOptions::default(),
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert!(stats.messages_failed > 0);
    assert_eq!(
        stats.messages_failed + stats.messages_acked,
        stats.messages_sent
    );
    let received = server.received.lock().unwrap().messages.len() as u64;
    assert_eq!(received, stats.messages_acked);
    assert!(
        stats.errors.keys().all(|e| e.contains("HTTP 401")),
        "{:?}",
        stats.errors
    );
    assert!(
        server
            .received
            .lock()
            .unwrap()
            .messages
            .iter()
            .all(|(t, _, _)| t.account_id != tenants[0].account_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_events_and_http_logs_all_arrive() {
    let config = config();
    let all: Vec<Message> = Workload::new(config.clone()).unwrap().collect();
    let mut workload = Workload::new(config.clone()).unwrap();
    let keys = keys_for(&workload.tenants());
    let server = server(keys.clone(), 0);
    let base = serve(server.clone()).await;
    let target = EndpointTarget {
        batch_size: 64,
        ..EndpointTarget::new(base, ApiKeys::PerAccount(keys))
    };
    let stats = websocket(
        &mut workload,
        &target,
        &DriveOptions::default(),
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(stats.messages_sent, all.len() as u64);
    assert_eq!(stats.messages_acked, all.len() as u64, "{:?}", stats.errors);
    assert!(stats.latency.contains_key("WS /events/in connect"));
    let received = sorted(&server.received);
    assert_eq!(received, expected(&all));
    assert_valid(&received, config.end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_a_valid_key_fails_its_events() {
    let config = config();
    let mut workload = Workload::new(config).unwrap();
    let server = server(keys_for(&workload.tenants()), 0);
    let base = serve(server.clone()).await;
    let target = EndpointTarget {
        retries: 0,
        ..EndpointTarget::new(base, ApiKeys::One("fh_nobody".into()))
    };
    let stats = websocket(
        &mut workload,
        &target,
        &DriveOptions {
            max_messages: Some(300),
            ..DriveOptions::default()
        },
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(stats.messages_acked, 0);
    assert_eq!(stats.messages_failed, 300);
    assert!(server.received.lock().unwrap().messages.is_empty());
}
