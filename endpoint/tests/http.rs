//! `POST /events` and `POST /logs` with a real HTTP client against the endpoint served
//! in-process, producing to the stack's broker (`KAFKA_BROKERS`): every status code, the 10k-event
//! round trip into Kafka, and hostile input.

mod common;
#[path = "http/hostile.rs"]
mod hostile;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use common::{Endpoint, Setup, error_body, event, json_list, log_line};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_tests::Stack;
use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

async fn endpoint() -> (Endpoint, common::Writer) {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    (setup.start(|_| {}).await, writer)
}

#[tokio::test]
async fn a_batch_of_10k_events_round_trips_into_kafka_with_key_and_headers() {
    let (endpoint, writer) = endpoint().await;
    let events: Vec<Value> = (0..10_000).map(|i| event(&format!("e{i}"))).collect();
    let texts: Vec<String> = events.iter().map(Value::to_string).collect();
    let before = Utc::now();

    let response = endpoint.post_events(&writer, &events).await;
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());

    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), 10_000, "exactly the batch, nothing twice");
    let sent: BTreeSet<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    let stored: BTreeSet<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(stored, sent, "each event is stored as the exact bytes sent");
    let workspace = writer.tenant.workspace_id.to_string();
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(workspace.as_str()));
        assert_eq!(record.tenant(), writer.tenant);
        let received: DateTime<Utc> = record.header("received").parse().expect("RFC 3339");
        assert!(received >= before - chrono::Duration::milliseconds(1));
    }
    // One key, one partition: the workspace's order is kept.
    let partitions: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 1);
}

#[tokio::test]
async fn an_empty_list_is_accepted_and_produces_nothing() {
    let (endpoint, writer) = endpoint().await;
    assert_eq!(endpoint.post_events(&writer, &[]).await.status(), 204);
    assert!(endpoint.consume(endpoint.events_topic()).await.is_empty());
}

#[tokio::test]
async fn keys_are_checked_against_the_path_before_anything_is_read() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let sibling = Uuid::new_v4();
    // Same account, another workspace the key does not hold.
    let other_workspace = Tenant {
        account_id: writer.tenant.account_id,
        workspace_id: sibling,
    };
    let other_account = Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: writer.tenant.workspace_id,
    };
    let reader = setup.key(
        writer.tenant.account_id,
        &[writer.tenant.workspace_id],
        &[Scope::Read],
    );
    let endpoint = setup.start(|_| {}).await;
    let body = json_list(&[event("x")]);
    let tenant = writer.tenant;

    for (what, key) in [
        ("no key", None),
        ("unknown key", Some("fh_knope_notakey")),
        ("empty key", Some("")),
    ] {
        let response = endpoint.post(&tenant, "events", key, body.clone()).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(
            error_body(response).await["detail"]
                .as_str()
                .unwrap()
                .contains("key")
        );
    }
    // Prefect clients with an auth string send Basic credentials: the key as the password,
    // or as the whole string.
    for credentials in [format!("user:{}", writer.key), writer.key.clone()] {
        let basic = endpoint
            .http
            .post(endpoint.workspace_url(&tenant, "events"))
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(&credentials)),
            )
            // Nothing to produce: this test checks that nothing refused reaches Kafka.
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 204, "Basic {credentials}");
    }
    let wrong = endpoint
        .http
        .post(endpoint.workspace_url(&tenant, "events"))
        .basic_auth("user", Some("fh_nobody_nothing"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "a Basic password that is no key");

    for (what, path, key) in [
        ("another workspace", &other_workspace, &writer.key),
        ("another account", &other_account, &writer.key),
        ("a read-only key", &tenant, &reader),
    ] {
        let response = endpoint.post(path, "events", Some(key), body.clone()).await;
        assert_eq!(response.status(), 403, "{what}");
        let detail = error_body(response).await["detail"].to_string();
        assert!(
            detail.contains("does not hold") || detail.contains("scope"),
            "{detail}"
        );
    }
    for rest in ["logs", "events"] {
        let response = endpoint
            .post(&other_workspace, rest, Some(&writer.key), "[]")
            .await;
        assert_eq!(response.status(), 403);
    }

    let not_a_workspace = endpoint
        .http
        .post(endpoint.url("/api/accounts/acme/workspaces/prod/events"))
        .bearer_auth(&writer.key)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_workspace.status(), 404);

    assert!(
        endpoint.consume(endpoint.events_topic()).await.is_empty(),
        "nothing refused reached Kafka"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let (endpoint, writer) = endpoint().await;
    let valid = event("x").to_string();
    let truncated = format!("[{}", &valid[..valid.len() / 2]);
    let bodies: Vec<Vec<u8>> = vec![
        truncated.into_bytes(),
        b"not json".to_vec(),
        b"".to_vec(),
        b"[{\"id\": \"\xff\xfe\"}]".to_vec(),
        format!("[{valid}] trailing").into_bytes(),
    ];
    for body in bodies {
        let response = endpoint
            .post(&writer.tenant, "events", Some(&writer.key), body.clone())
            .await;
        assert_eq!(
            response.status(),
            400,
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            error_body(response).await["detail"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
    }
    assert!(endpoint.consume(endpoint.events_topic()).await.is_empty());
}

#[tokio::test]
async fn invalid_events_are_a_422_naming_each_index_and_field() {
    let (endpoint, writer) = endpoint().await;
    let good = event("good");
    let mut no_resource_id = event("bad");
    no_resource_id["resource"] = json!({"prefect.resource.name": "x"});
    let mut wrong_types = event("bad");
    wrong_types["id"] = json!(42);
    wrong_types["occurred"] = json!("yesterday");
    let mut no_role = event("bad");
    no_role["related"] = json!([{"prefect.resource.id": "prefect.tag.a"}]);

    let response = endpoint
        .post_events(&writer, &[good, no_resource_id, wrong_types, no_role])
        .await;
    assert_eq!(response.status(), 422);
    let body = error_body(response).await;
    assert_eq!(
        body["detail"],
        "3 of 4 events are invalid; none of the batch was accepted"
    );
    let problems: Vec<(u64, String)> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()));
            (
                p["index"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        vec![
            (1, "resource[\"prefect.resource.id\"]".to_owned()),
            (2, "id".to_owned()),
            (2, "occurred".to_owned()),
            (3, "related[0][\"prefect.resource.role\"]".to_owned()),
        ]
    );

    for not_a_list in ["{}", "null", "\"events\"", "42"] {
        let response = endpoint
            .post(&writer.tenant, "events", Some(&writer.key), not_a_list)
            .await;
        assert_eq!(response.status(), 422, "{not_a_list}");
        assert_eq!(
            error_body(response).await["detail"],
            "the body must be a JSON list of events"
        );
    }
    assert!(
        endpoint.consume(endpoint.events_topic()).await.is_empty(),
        "all or nothing: the valid event of the refused batch was not produced"
    );
}

/// Sends `head` on a raw connection and reads the response's status line, sending nothing more:
/// the server must answer without the body it was promised.
async fn raw_status(endpoint: &Endpoint, head: &str, body_start: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(endpoint.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body_start).await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    // A safety net, not a measurement: a server waiting for the rest would hang here.
    tokio::time::timeout(Duration::from_secs(60), async {
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("the server answered before the body was sent");
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_oversized_body_is_a_413_without_being_read() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let limit = 64 * 1024;
    let endpoint = setup
        .start(|args| args.uploads.max_body_bytes = limit)
        .await;
    let path = format!(
        "/api/accounts/{}/workspaces/{}/events",
        writer.tenant.account_id, writer.tenant.workspace_id
    );

    // Content-Length over the limit: refused on the headers alone.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
        writer.key
    );
    let status = raw_status(&endpoint, &head, b"[").await;
    assert!(status.contains(" 413 "), "{status}");

    // Chunked, so the size is unknown: refused once the bytes read pass the limit, while the
    // client still has more to send.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        writer.key
    );
    let chunk = vec![b' '; limit + 1024];
    let mut body = format!("{:x}\r\n", chunk.len()).into_bytes();
    body.extend_from_slice(&chunk);
    body.extend_from_slice(b"\r\n");
    let status = raw_status(&endpoint, &head, &body).await;
    assert!(status.contains(" 413 "), "{status}");

    // The same through an ordinary client, body and all.
    let big = json_list(&[event(&"x".repeat(limit))]);
    let response = endpoint
        .post(&writer.tenant, "events", Some(&writer.key), big)
        .await;
    assert_eq!(response.status(), 413);
    assert!(
        error_body(response).await["detail"]
            .as_str()
            .unwrap()
            .contains("limit of 65536 bytes")
    );

    // Under the limit is fine.
    let small = vec![event("small")];
    assert_eq!(endpoint.post_events(&writer, &small).await.status(), 204);
    assert_eq!(endpoint.consume(endpoint.events_topic()).await.len(), 1);
}

#[tokio::test]
async fn a_workspace_over_its_rate_limit_gets_429_with_retry_after() {
    let setup = Setup::new(Stack::from_env().kafka);
    let (noisy, quiet) = (setup.writer(), setup.writer());
    // A bucket of 10 refilled at one event per 100 s: nothing refills during the test.
    let endpoint = setup
        .start(|args| {
            args.uploads.rate_limit = 0.01;
            args.uploads.rate_burst = 10.0;
        })
        .await;
    let ten: Vec<Value> = (0..10).map(|i| event(&format!("n{i}"))).collect();
    assert_eq!(endpoint.post_events(&noisy, &ten).await.status(), 204);

    let response = endpoint.post_events(&noisy, &[event("one more")]).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert!(
        error_body(response).await["detail"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    let logs = endpoint
        .post(
            &noisy.tenant,
            "logs",
            Some(&noisy.key),
            json_list(&[log_line("x")]),
        )
        .await;
    assert_eq!(logs.status(), 429, "logs count against the same budget");

    // Another workspace has its own bucket.
    assert_eq!(endpoint.post_events(&quiet, &ten).await.status(), 204);
    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), 20);
}

#[tokio::test]
async fn a_full_producer_queue_is_a_503_with_retry_after() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let other = setup.writer();
    // Messages wait a minute in librdkafka before being sent, so ten of them fill a queue of
    // ten for the rest of the test.
    let endpoint = setup
        .start(|args| {
            args.uploads.max_in_flight = 10;
            args.uploads.max_in_flight_per_tenant = 10;
            args.uploads.delivery_timeout = Duration::from_secs(300);
            args.kafka.properties.push("linger.ms=60000".into());
        })
        .await;
    let mut socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .expect("websocket");
    for i in 0..10 {
        socket
            .send(tungstenite::Message::text(
                event(&format!("q{i}")).to_string(),
            ))
            .await
            .unwrap();
    }
    common::wait_until(
        "ten messages in flight",
        Duration::from_secs(60),
        || async { endpoint.app.in_flight() == 10 },
    )
    .await;

    // The same workspace is refused from its own share...
    let response = endpoint.post_events(&writer, &[event("no room")]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let detail = error_body(response).await["detail"].clone();
    assert!(detail.as_str().unwrap().contains("its share"), "{detail}");
    // ...and another one by the whole queue, which the first filled.
    let response = endpoint.post_events(&other, &[event("no room")]).await;
    assert_eq!(response.status(), 503);
    let detail = error_body(response).await["detail"].clone();
    assert!(
        detail.as_str().unwrap().contains("queue is full"),
        "{detail}"
    );
}

#[tokio::test]
async fn one_workspace_cannot_take_the_whole_producer_queue() {
    let setup = Setup::new(Stack::from_env().kafka);
    let (greedy, other) = (setup.writer(), setup.writer());
    let endpoint = setup
        .start(|args| {
            args.uploads.max_in_flight = 10;
            args.uploads.max_in_flight_per_tenant = 6;
            args.uploads.delivery_timeout = Duration::from_secs(300);
            args.kafka.properties.push("linger.ms=60000".into());
        })
        .await;
    let mut socket = endpoint
        .websocket(&greedy.tenant, Some(&greedy.key))
        .await
        .expect("websocket");
    // The greedy workspace sends ten; only its share of six goes in flight, the socket waits.
    for i in 0..10 {
        socket
            .send(tungstenite::Message::text(
                event(&format!("g{i}")).to_string(),
            ))
            .await
            .unwrap();
    }
    common::wait_until(
        "six messages in flight",
        Duration::from_secs(60),
        || async { endpoint.app.in_flight() == 6 },
    )
    .await;
    // Room is left for the other workspace.
    let four: Vec<_> = (0..4).map(|i| event(&format!("o{i}"))).collect();
    assert_eq!(endpoint.post_events(&other, &four).await.status(), 204);
}

#[tokio::test]
async fn logs_are_validated_and_produced_like_events() {
    let (endpoint, writer) = endpoint().await;
    let logs: Vec<Value> = (0..3).map(|i| log_line(&format!("line {i}"))).collect();
    let response = endpoint
        .post(&writer.tenant, "logs/", Some(&writer.key), json_list(&logs))
        .await;
    // Prefect's answer to the SDK's `POST /logs/`.
    assert_eq!(response.status(), 201);
    let records = endpoint.consume(&endpoint.args.topics.logs_topic).await;
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(record.tenant(), writer.tenant);
        assert!(logs.contains(&record.json()));
    }

    let mut loud = log_line("x");
    loud["level"] = json!(256);
    let response = endpoint
        .post(
            &writer.tenant,
            "logs",
            Some(&writer.key),
            json_list(&[log_line("fine"), loud]),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body = error_body(response).await;
    assert_eq!(body["problems"][0]["index"], 1);
    assert_eq!(body["problems"][0]["field"], "level");
    assert!(
        endpoint.consume(endpoint.events_topic()).await.is_empty(),
        "logs never land in the events topic"
    );
}
