//! `/events/out` and `/logs/out`, and the one filter semantics they share with the searches:
//!
//! - every filter decides the same in ClickHouse (`/events/filter`, `/logs/filter`) and in
//!   memory (the live feed), on the same generated data;
//! - a subscriber gets its backfill, then the live items of its tenant that match, in Prefect's
//!   message format, and never another tenant's;
//! - a revoked key's socket closes with 1008; a key of another tenant is refused before the
//!   upgrade.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::workload::{DAY, HOSTILE, HOUR, rfc3339};
use common::{Harness, new_tenant};
use flowhouse_keys::{Keys, Scope};
use flowhouse_query_api::events::filter::EventFilter;
use flowhouse_query_api::live::Feed;
use flowhouse_query_api::logs::LogFilter;
use flowhouse_query_api::{LiveArgs, Settings};
use flowhouse_schema::contract::{Envelope, TopicArgs};
use flowhouse_schema::{Stream, Tenant};
use flowhouse_service::kafka::ensure_topics;
use flowhouse_tests::unique_name;
use futures::{SinkExt as _, StreamExt as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use uuid::Uuid;

fn resolve(filter: &Value) -> EventFilter {
    let filter: EventFilter = serde_json::from_value(filter.clone()).unwrap();
    filter
        .resolve(chrono::Duration::days(366), "filter")
        .unwrap()
}

#[tokio::test]
async fn every_filter_decides_the_same_in_clickhouse_and_in_memory() {
    let mut h = Harness::start("qa_twins", 2, Settings::default()).await;
    h.load(23, 60).await;
    let t = &h.tenants[0];
    let since = h.base;
    let until = h.base + 6 * DAY;
    let occurred = json!({"since": rfc3339(since), "until": rfc3339(until)});
    let filters = vec![
        json!({}),
        json!({"event": {"prefix": ["prefect.flow-run."], "exclude_name": ["prefect.flow-run.Running"]}}),
        json!({"resource": {"labels": {"prefect.state-name": ["Fail*", "Crash?d", "!Completed"]}}}),
        json!({"resource": {"labels": {"prefect.resource.id": ["prefect.task-run.*"], "prefect.state-type": "!COMPLETED"}}}),
        json!({"resource": {"labels": {"prefect.resource.role": "flow"}}}),
        json!({"resource": {"labels": {"prefect.resource.id": []}}}),
        json!({"resource": {"labels": {"no.such.label": "!x"}}}),
        json!({"related": {"role": ["tag"], "labels": {"prefect.resource.id": "prefect.tag.n*"}}}),
        json!({"related": [{"labels": {"prefect.resource.role": ["flow"], "prefect.resource.name": "?*"}}, {"role": ["work-pool"]}]}),
        json!({"related": {"labels": {"prefect.resource.role": []}}}),
        json!({"any_resource": {"labels": {"prefect.resource.role": ["", "tag"]}}}),
        json!({"any_resource": [{"id_prefix": ["prefect.flow."]}, {"labels": {"prefect.resource.id": "*deployment*"}}]}),
        json!({"text": {"query": "failed -crashed"}}),
        json!({"text": {"query": "+nightly \"flow-run\""}}),
        json!({"text": {"query": HOSTILE}}),
        json!({"resource": {"labels": {HOSTILE: ["*", "!"]}}}),
    ];
    let rows: Vec<_> = common::workload::unique_rows(&h.events)
        .into_iter()
        .filter(|row| {
            row.account_id == t.tenant.account_id && row.workspace_id == t.tenant.workspace_id
        })
        .collect();
    for (i, mut filter) in filters.into_iter().enumerate() {
        filter["occurred"] = occurred.clone();
        let resolved = resolve(&filter);
        let in_memory: BTreeSet<String> = rows
            .iter()
            .filter(|row| resolved.matches(row))
            .map(|row| row.id.to_string())
            .collect();
        let (total, events) = h.walk(&t.key, t.tenant, filter.clone(), 200).await;
        let searched: BTreeSet<String> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(total as usize, searched.len(), "case {i}: total");
        assert_eq!(searched, in_memory, "case {i}: {filter}");
        // Not vacuous: the cases between them select some events and leave others out.
        if i == 0 {
            assert_eq!(in_memory.len(), rows.len());
        }
    }
    let log_filters = vec![
        json!({"level": {"ge_": 30}}),
        json!({"operator": "or_", "level": {"ge_": 50}, "text": {"query": "retry"}}),
        json!({"text": {"query": "-started +prefect"}}),
        json!({"task_run_id": {"is_null_": true}, "level": {"le_": 20}}),
        json!({"operator": "or_", "level": {}, "text": {"query": "nothing matches this"}}),
    ];
    let log_rows: Vec<_> = h
        .logs
        .iter()
        .map(|log| log.row())
        .filter(|row| {
            row.account_id == t.tenant.account_id && row.workspace_id == t.tenant.workspace_id
        })
        .collect();
    for (i, filter) in log_filters.into_iter().enumerate() {
        let parsed: LogFilter = serde_json::from_value(filter.clone()).unwrap();
        let in_memory = log_rows.iter().filter(|row| parsed.matches(row)).count();
        let mut searched = 0;
        let mut offset = 0;
        loop {
            let page = h
                .post_json(
                    &t.key,
                    &h.url(t.tenant, "logs/filter"),
                    &json!({"logs": filter, "limit": 200, "offset": offset}),
                )
                .await;
            let n = page.as_array().unwrap().len();
            searched += n;
            offset += n;
            if n < 200 {
                break;
            }
        }
        assert_eq!(searched, in_memory, "log case {i}: {filter}");
    }
    h.finish().await;
}

/// A subscriber's socket on the harness's API.
async fn subscribe(
    h: &Harness,
    tenant: Tenant,
    path: &str,
    header_key: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = h.url(tenant, path).replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "prefect".parse().unwrap());
    if let Some(key) = header_key {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

async fn close_code(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Some((frame.code.into(), frame.reason.to_string()));
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

fn event(name: &str, occurred: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "id": Uuid::now_v7(), "occurred": occurred.to_rfc3339(), "event": name,
        "resource": {"prefect.resource.id": format!("prefect.flow-run.{}", Uuid::new_v4())},
        "related": [{"prefect.resource.id": "prefect.tag.live", "prefect.resource.role": "tag"}],
        "payload": {"n": 1}
    })
}

#[tokio::test]
async fn subscribers_get_their_backfill_then_their_tenants_live_items_only() {
    let stack = flowhouse_tests::Stack::from_env();
    let topics = TopicArgs {
        events_topic: unique_name("live_events"),
        logs_topic: unique_name("live_logs"),
        dlq_topic: unique_name("live_dlq"),
        topic_partitions: 2,
    };
    ensure_topics(&stack.kafka, &topics.specs()).await.unwrap();
    let (feed, _pump) = Feed::start(&LiveArgs::new(stack.kafka.clone(), topics.clone()))
        .await
        .unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("keys.json");
    let (a, b) = (new_tenant(), new_tenant());
    let create = |tenant: Tenant| {
        flowhouse_keys::cli::create(
            &keys_file,
            tenant.account_id,
            vec![tenant.workspace_id],
            vec![Scope::Read],
            None,
        )
        .unwrap()
    };
    let (key_a, key_b) = (create(a), create(b));
    let keys = Keys::load(&keys_file).unwrap();
    let _watch = keys.watch(Duration::from_millis(200));
    let h = Harness::start_with("qa_live", keys, Settings::default(), Some(feed), &[a]).await;

    // One event already stored (backfill), inside the 15 minutes a subscriber may ask for.
    let now = chrono::Utc::now();
    let stored = event("flowhouse.live.stored", now - chrono::Duration::minutes(2));
    h.insert_raw_event(a, &stored).await;

    // Another tenant's key is refused before the upgrade.
    assert!(subscribe(&h, a, "events/out", Some(&key_b)).await.is_err());

    let mut socket = subscribe(&h, a, "events/out", None).await.unwrap();
    socket
        .send(Message::text(
            json!({"type": "auth", "token": key_a}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await.unwrap()["type"],
        "auth_success"
    );
    let filter = json!({"event": {"prefix": ["flowhouse.live."]},
        "occurred": {"since": rfc3339((now - chrono::Duration::minutes(5)).timestamp_micros()),
                     "until": rfc3339((now + chrono::Duration::days(365)).timestamp_micros())}});
    socket
        .send(Message::text(
            json!({"type": "filter", "filter": filter}).to_string(),
        ))
        .await
        .unwrap();
    let backfilled = next_json(&mut socket).await.unwrap();
    assert_eq!(backfilled["type"], "event");
    assert_eq!(backfilled["event"]["id"], stored["id"]);

    // Live: A's matching event, A's other event, B's matching event, through Kafka.
    let producer: FutureProducer = stack.kafka.config().unwrap().create().unwrap();
    let live_a = event("flowhouse.live.a", chrono::Utc::now());
    let ignored_a = event("prefect.flow-run.Completed", chrono::Utc::now());
    let live_b = event("flowhouse.live.b", chrono::Utc::now());
    for (tenant, value) in [(b, &live_b), (a, &ignored_a), (a, &live_a)] {
        let envelope = Envelope {
            tenant,
            received: Some(chrono::Utc::now()),
        };
        let payload = value.to_string();
        producer
            .send(
                FutureRecord::to(Stream::Events.topic(&topics))
                    .key(&envelope.key())
                    .payload(&payload)
                    .headers(envelope.headers()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let got = next_json(&mut socket).await.expect("a live event");
    assert_eq!(got["type"], "event");
    assert_eq!(
        got["event"]["id"], live_a["id"],
        "only A's matching event: {got}"
    );
    assert_eq!(got["event"]["related"], live_a["related"]);
    assert!(got["event"]["received"].is_string());

    // Revoking A's key closes the socket within seconds.
    let id = flowhouse_keys::KeysFile::read(&keys_file)
        .unwrap()
        .keys
        .iter()
        .find(|k| k.sha256 == flowhouse_keys::key_hash(&key_a))
        .unwrap()
        .id
        .clone();
    flowhouse_keys::cli::revoke(&keys_file, &id).unwrap();
    let (code, reason) = close_code(&mut socket)
        .await
        .expect("closed after revocation");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("unknown or revoked"), "{reason}");

    // A socket without any key is told which settings send one.
    let mut anonymous = subscribe(&h, b, "logs/out", None).await.unwrap();
    anonymous
        .send(Message::text(
            json!({"type": "auth", "token": null}).to_string(),
        ))
        .await
        .unwrap();
    let (code, reason) = close_code(&mut anonymous).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("PREFECT_API_AUTH_STRING"), "{reason}");
    // And a bad filter message is a 1002 with Prefect's words.
    let mut bad = subscribe(&h, b, "events/out", Some(&key_b)).await.unwrap();
    bad.send(Message::text(
        json!({"type": "auth", "token": key_b}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut bad).await.unwrap()["type"], "auth_success");
    bad.send(Message::text(
        json!({"type": "filter", "filter": {"colour": 1}}).to_string(),
    ))
    .await
    .unwrap();
    let (code, reason) = close_code(&mut bad).await.unwrap();
    assert_eq!(code, 1002);
    assert!(reason.starts_with("Invalid filter:"), "{reason}");
    let _ = (HOUR, key_b);
    h.finish().await;
}
