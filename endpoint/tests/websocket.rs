//! `/events/in` with a real websocket client (tokio-tungstenite): both ways Prefect clients
//! authenticate, pongs only for events Kafka has, and what happens to bad input.

mod common;

use std::time::Duration;

use common::{Endpoint, Setup, Socket, Writer, event};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_tests::Stack;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

/// The next frame from the server (a safety net against a hang, not a measurement).
async fn next(socket: &mut Socket) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(Duration::from_secs(60), socket.next())
        .await
        .expect("the server said something within 60 s")
}

/// Sends a ping and waits for its pong.
async fn checkpoint(socket: &mut Socket, tag: &str) {
    socket
        .send(Message::Ping(tag.as_bytes().to_vec().into()))
        .await
        .unwrap();
    match next(socket).await {
        Some(Ok(Message::Pong(data))) => assert_eq!(data.as_ref(), tag.as_bytes()),
        other => panic!("expected a pong, got {other:?}"),
    }
}

async fn send_events(socket: &mut Socket, events: &[Value]) {
    for event in events {
        socket.send(Message::text(event.to_string())).await.unwrap();
    }
}

/// The close frame's code and reason, once the server closes.
async fn closed(socket: &mut Socket) -> (u16, String) {
    match next(socket).await {
        Some(Ok(Message::Close(Some(frame)))) => (frame.code.into(), frame.reason.to_string()),
        Some(Ok(Message::Close(None))) | None => (1005, String::new()),
        Some(Ok(other)) => panic!("expected a close, got {other:?}"),
        Some(Err(error)) => panic!("expected a close frame, got {error}"),
    }
}

async fn endpoint() -> (Endpoint, Writer) {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    (setup.start(|_| {}).await, writer)
}

#[tokio::test]
async fn cloud_style_events_are_in_kafka_when_the_pong_arrives() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    // Messages wait five seconds in librdkafka before going out: a pong sent before Kafka's
    // acknowledgement would be caught by the read below.
    let endpoint = setup
        .start(|args| args.kafka.properties.push("linger.ms=5000".into()))
        .await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .expect("upgrade with the key in the header");
    let mut sent = Vec::new();
    for round in 0..2 {
        let events: Vec<Value> = (0..200).map(|i| event(&format!("{round}-{i}"))).collect();
        send_events(&mut socket, &events).await;
        sent.extend(events);
        checkpoint(&mut socket, &format!("round {round}")).await;

        // Read right after the pong, without waiting: it must all be there already.
        let records = endpoint.consume(endpoint.events_topic()).await;
        assert_eq!(
            records.len(),
            sent.len(),
            "a pong means every earlier event is in Kafka"
        );
        for record in &records {
            assert_eq!(record.tenant(), writer.tenant);
            assert_eq!(
                record.key.as_deref(),
                Some(writer.tenant.workspace_id.to_string().as_str())
            );
            assert!(sent.contains(&record.json()));
            assert!(record.headers.contains_key("received"));
        }
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn a_cloud_style_client_that_also_sends_an_auth_message_is_answered() {
    let (endpoint, writer) = endpoint().await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .unwrap();
    socket
        .send(Message::text(
            json!({"type": "auth", "token": writer.key}).to_string(),
        ))
        .await
        .unwrap();
    match next(&mut socket).await {
        Some(Ok(Message::Text(text))) => {
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap()["type"],
                "auth_success"
            );
        }
        other => panic!("expected auth_success, got {other:?}"),
    }
    send_events(&mut socket, &[event("after auth")]).await;
    checkpoint(&mut socket, "x").await;
    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), 1, "the auth message is not an event");
}

#[tokio::test]
async fn self_hosted_handshake_then_events() {
    let (endpoint, writer) = endpoint().await;
    let mut socket = endpoint
        .websocket(&writer.tenant, None)
        .await
        .expect("upgrade without a key");
    // Prefect's client pings right after connecting, before authenticating.
    checkpoint(&mut socket, "hello").await;
    socket
        .send(Message::text(
            json!({"type": "auth", "token": writer.key}).to_string(),
        ))
        .await
        .unwrap();
    match next(&mut socket).await {
        Some(Ok(Message::Text(text))) => {
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                json!({"type": "auth_success"})
            );
        }
        other => panic!("expected auth_success, got {other:?}"),
    }
    let events: Vec<Value> = (0..50).map(|i| event(&format!("s{i}"))).collect();
    send_events(&mut socket, &events).await;
    checkpoint(&mut socket, "done").await;
    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), 50);
    assert!(records.iter().all(|r| r.tenant() == writer.tenant));
}

#[tokio::test]
async fn a_failed_handshake_closes_the_socket_with_the_reason() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let other = setup.writer();
    let reader = setup.key(
        writer.tenant.account_id,
        &[writer.tenant.workspace_id],
        &[Scope::Read],
    );
    let endpoint = setup
        .start(|args| args.auth_timeout = Duration::from_millis(500))
        .await;
    let cases: Vec<(&str, Option<Value>, u16, &str)> = vec![
        (
            "unknown key",
            Some(json!({"type": "auth", "token": "fh_nobody_nothing"})),
            1008,
            "unknown or revoked API key",
        ),
        (
            "no token",
            Some(json!({"type": "auth", "token": null})),
            1008,
            "no key: set PREFECT_API_AUTH_STRING=<key>, or PREFECT_API_KEY=<key> with PREFECT_CLOUD_API_URL",
        ),
        (
            "another tenant's key",
            Some(json!({"type": "auth", "token": other.key})),
            1008,
            "does not hold workspace",
        ),
        (
            "a read-only key",
            Some(json!({"type": "auth", "token": reader})),
            1008,
            "lacks the `write` scope",
        ),
        (
            "an event first",
            Some(event("too early")),
            1008,
            "the first message must be",
        ),
        ("silence", None, 1008, "no auth message within"),
    ];
    for (what, first, code, reason) in cases {
        let mut socket = endpoint.websocket(&writer.tenant, None).await.unwrap();
        if let Some(first) = first {
            socket.send(Message::text(first.to_string())).await.unwrap();
        }
        let (got_code, got_reason) = closed(&mut socket).await;
        assert_eq!(got_code, code, "{what}: {got_reason}");
        assert!(got_reason.contains(reason), "{what}: {got_reason}");
    }
    assert!(endpoint.consume(endpoint.events_topic()).await.is_empty());
}

#[tokio::test]
async fn a_bad_key_on_the_upgrade_is_refused_before_upgrading() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let endpoint = setup.start(|_| {}).await;
    let elsewhere = Tenant {
        account_id: writer.tenant.account_id,
        workspace_id: Uuid::new_v4(),
    };
    for (what, tenant, key, status) in [
        ("unknown key", &writer.tenant, "fh_nobody_nothing", 401),
        ("another workspace", &elsewhere, writer.key.as_str(), 403),
    ] {
        match endpoint.websocket(tenant, Some(key)).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), status, "{what}"),
            Err(other) => panic!("{what}: expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{what}: the upgrade was accepted"),
        }
    }
}

#[tokio::test]
async fn invalid_events_on_a_websocket_are_dead_lettered_with_the_reason() {
    let (endpoint, writer) = endpoint().await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .unwrap();
    let good = event("good");
    let mut bad = event("bad");
    bad["resource"] = json!({});
    let not_json = "{\"id\": ";
    send_events(&mut socket, &[good.clone(), bad.clone()]).await;
    socket.send(Message::text(not_json)).await.unwrap();
    checkpoint(&mut socket, "dlq").await;

    let events = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].json(), good);
    let mut dead = endpoint.consume(&endpoint.args.topics.dlq_topic).await;
    dead.sort_by_key(|r| r.header("flowhouse.dlq.kind").to_owned());
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].header("flowhouse.dlq.kind"), "invalid");
    assert!(
        dead[0]
            .header("flowhouse.dlq.reason")
            .contains("prefect.resource.id")
    );
    assert_eq!(dead[0].json(), bad);
    assert_eq!(dead[1].header("flowhouse.dlq.kind"), "not_json");
    assert_eq!(dead[1].value, not_json.as_bytes());
    for record in &dead {
        assert_eq!(record.tenant(), writer.tenant);
    }
}

#[tokio::test]
async fn an_oversized_message_closes_the_socket_with_1009() {
    let (endpoint, writer) = endpoint().await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .unwrap();
    let huge = event(&"x".repeat(3_000_000)).to_string();
    socket.send(Message::text(huge)).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(endpoint.consume(endpoint.events_topic()).await.is_empty());
}

#[tokio::test]
async fn draining_closes_sockets_only_once_their_events_are_in_kafka() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    // Events linger three seconds in the producer, so the drain starts while they are in flight.
    let endpoint = setup
        .start(|args| args.kafka.properties.push("linger.ms=3000".into()))
        .await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .unwrap();
    let events: Vec<Value> = (0..100).map(|i| event(&format!("d{i}"))).collect();
    send_events(&mut socket, &events).await;
    common::wait_until(
        "the events to be in flight",
        Duration::from_secs(60),
        || async { endpoint.app.in_flight() == 100 },
    )
    .await;

    endpoint
        .app
        .drain(Duration::from_secs(60))
        .await
        .expect("drain");
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 1001, "{reason}");
    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(
        records.len(),
        100,
        "closed only after every event was acknowledged"
    );
    assert!(!endpoint.app.readiness().is_ready());
}

#[tokio::test]
async fn a_revoked_key_closes_its_open_socket() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let endpoint = setup.start(|_| {}).await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .unwrap();
    send_events(&mut socket, &[event("before")]).await;
    checkpoint(&mut socket, "before").await;

    let file = flowhouse_keys::KeysFile::read(&endpoint.args.keys_file).unwrap();
    let id = file
        .keys
        .iter()
        .find(|k| k.sha256 == flowhouse_keys::key_hash(&writer.key))
        .unwrap()
        .id
        .clone();
    flowhouse_keys::cli::revoke(&endpoint.args.keys_file, &id).unwrap();
    let revoked = std::time::Instant::now();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("unknown or revoked"), "{reason}");
    // The keys file is polled every 2 s and open sockets check their key every 2 s.
    assert!(
        revoked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        revoked.elapsed()
    );
    let stored = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(stored.len(), 1, "only the event sent before revocation");
}
