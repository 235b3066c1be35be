//! The broker goes away under the endpoint. Runs on a private local stack (its own broker, with
//! storage that survives a restart), never the shared one; skipped against a real cluster.
//!
//! - HTTP: requests are refused with 503 and `Retry-After` while Kafka is down, accepted again
//!   after.
//! - Websocket: a ping sent after events the broker could not take gets no pong while the broker
//!   is down; once it is back, the pong arrives and the events are in Kafka (or, had the
//!   producer given up, the socket would close with an error instead of ponging).

mod common;

use std::time::Duration;

use common::{Setup, Socket, event};
use flowhouse_tests::{PrivateStack, workspace_root};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Stops or starts the private broker. (`Stack::control` does not pass the storage on, so the
/// broker would come back with empty memory storage and without the topics.)
fn broker(stack: &flowhouse_tests::Stack, action: &str) {
    let dir = stack.stack_dir.as_ref().expect("a local stack");
    let status = std::process::Command::new(workspace_root().join("deploy/local/stack"))
        .args([action, "kafka"])
        .env("FLOWHOUSE_STACK_DIR", dir)
        .env("FLOWHOUSE_KAFKA_STORAGE", "sqlite")
        .status()
        .expect("run deploy/local/stack");
    assert!(status.success(), "deploy/local/stack {action} kafka failed");
}

/// Forwards every frame the server sends, so the test can look at what arrived so far.
fn reader(
    mut stream: futures::stream::SplitStream<Socket>,
) -> mpsc::UnboundedReceiver<Result<Message, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(frame) = stream.next().await {
            let end = frame.is_err();
            if tx.send(frame.map_err(|e| e.to_string())).is_err() || end {
                break;
            }
        }
        let _ = tx.send(Err("closed".into()));
    });
    rx
}

#[tokio::test]
async fn a_pong_waits_for_kafka_and_http_is_refused_while_it_is_down() {
    let Some(private) = PrivateStack::start("sqlite") else {
        eprintln!("skipped: needs the local stack to run a private broker");
        return;
    };
    let setup = Setup::new(private.stack.kafka.clone());
    let writer = setup.writer();
    // The producer keeps retrying for the whole outage rather than giving up.
    let endpoint = setup
        .start(|args| args.uploads.delivery_timeout = Duration::from_secs(600))
        .await;
    let socket = endpoint
        .websocket(&writer.tenant, Some(&writer.key))
        .await
        .expect("websocket");
    let (mut sink, stream) = socket.split();
    let mut frames = reader(stream);

    let before: Vec<Value> = (0..5).map(|i| event(&format!("before {i}"))).collect();
    for event in &before {
        sink.send(Message::text(event.to_string())).await.unwrap();
    }
    sink.send(Message::Ping(b"before".to_vec().into()))
        .await
        .unwrap();
    match frames.recv().await {
        Some(Ok(Message::Pong(data))) => assert_eq!(data.as_ref(), b"before"),
        other => panic!("expected the first pong, got {other:?}"),
    }

    broker(&private.stack, "stop");
    let readyz = endpoint.admin_url("/readyz");
    common::wait_until(
        "the endpoint to see Kafka down",
        Duration::from_secs(120),
        || {
            let (http, url) = (endpoint.http.clone(), readyz.clone());
            async move { http.get(url).send().await.unwrap().status() == 503 }
        },
    )
    .await;

    let refused = endpoint.post_events(&writer, &[event("refused")]).await;
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    let during: Vec<Value> = (0..20).map(|i| event(&format!("during {i}"))).collect();
    for event in &during {
        sink.send(Message::text(event.to_string())).await.unwrap();
    }
    sink.send(Message::Ping(b"during".to_vec().into()))
        .await
        .unwrap();
    // Give a wrong pong every chance to arrive, then look: the broker is down, so none may.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        frames.try_recv().is_err(),
        "nothing, and above all no pong, while the events cannot be in Kafka"
    );

    broker(&private.stack, "start");
    let outcome = tokio::time::timeout(Duration::from_secs(300), frames.recv())
        .await
        .expect("a pong or a close once the broker is back");
    let mut expected: Vec<Value> = before.clone();
    match outcome {
        Some(Ok(Message::Pong(data))) => {
            assert_eq!(data.as_ref(), b"during");
            expected.extend(during);
        }
        // The other honest answer: the socket closed with an error instead of a pong. Then
        // the client sends the unconfirmed events again, as Prefect's does, on a new socket.
        other => {
            assert!(
                !matches!(other, Some(Ok(Message::Pong(_)))),
                "unexpected {other:?}"
            );
            eprintln!("socket closed instead of ponging ({other:?}); resending");
            let mut again = endpoint
                .websocket(&writer.tenant, Some(&writer.key))
                .await
                .expect("reconnect");
            for event in &during {
                again.send(Message::text(event.to_string())).await.unwrap();
            }
            again
                .send(Message::Ping(b"again".to_vec().into()))
                .await
                .unwrap();
            assert!(matches!(again.next().await, Some(Ok(Message::Pong(_)))));
            expected.extend(during);
        }
    }

    let records = endpoint.consume(endpoint.events_topic()).await;
    let stored: Vec<Value> = records.iter().map(|r| r.json()).collect();
    for event in &expected {
        assert!(stored.contains(event), "{event} is in Kafka after its pong");
    }
    assert!(records.iter().all(|r| r.tenant() == writer.tenant));
    assert!(
        !stored.iter().any(|e| e["payload"]["marker"] == "refused"),
        "what got a 503 was not produced"
    );

    common::wait_until(
        "the endpoint to see Kafka back",
        Duration::from_secs(120),
        || {
            let (http, url) = (endpoint.http.clone(), readyz.clone());
            async move { http.get(url).send().await.unwrap().status() == 200 }
        },
    )
    .await;
    let after = endpoint.post_events(&writer, &[event("after")]).await;
    assert_eq!(after.status(), 204);
}
