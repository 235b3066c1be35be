//! Many clients of several tenants at once, over HTTP and websockets, some of them pretending to
//! be another tenant in the body or the path: every message in Kafka carries the tenant whose
//! key sent it, and only that.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Endpoint, Setup, Writer, event};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_tests::Stack;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const HTTP_BATCHES: usize = 5;
const BATCH: usize = 100;
const SOCKET_EVENTS: usize = 300;
const CHECKPOINT_EVERY: usize = 70;

/// An event that names its real sender in the payload, and a victim everywhere else a careless
/// endpoint might look for a tenant.
fn tagged(sender: &Tenant, victim: &Tenant, i: usize) -> Value {
    let mut event = event(&format!("{i}"));
    event["payload"]["sender"] = json!(sender.to_string());
    event["account_id"] = json!(victim.account_id);
    event["workspace_id"] = json!(victim.workspace_id);
    event["resource"]["account_id"] = json!(victim.account_id.to_string());
    event["resource"]["workspace_id"] = json!(victim.workspace_id.to_string());
    event
}

async fn http_client(endpoint: Arc<Endpoint>, writer: Writer, victim: Tenant) -> usize {
    for batch in 0..HTTP_BATCHES {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| tagged(&writer.tenant, &victim, batch * BATCH + i))
            .collect();
        let response = endpoint.post_events(&writer, &events).await;
        assert_eq!(response.status(), 204);
        // The same key on the victim's path is refused.
        let response = endpoint
            .post(
                &victim,
                "events",
                Some(&writer.key),
                common::json_list(&events),
            )
            .await;
        assert_eq!(response.status(), 403);
    }
    HTTP_BATCHES * BATCH
}

async fn socket_client(
    endpoint: Arc<Endpoint>,
    writer: Writer,
    victim: Tenant,
    cloud: bool,
) -> usize {
    let mut socket = endpoint
        .websocket(&writer.tenant, cloud.then_some(writer.key.as_str()))
        .await
        .expect("websocket");
    if !cloud {
        socket
            .send(Message::text(
                json!({"type": "auth", "token": writer.key}).to_string(),
            ))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), r#"{"type":"auth_success"}"#);
    }
    for i in 0..SOCKET_EVENTS {
        let event = tagged(&writer.tenant, &victim, 10_000 + i);
        socket.send(Message::text(event.to_string())).await.unwrap();
        if (i + 1) % CHECKPOINT_EVERY == 0 || i + 1 == SOCKET_EVENTS {
            socket.send(Message::Ping(vec![1].into())).await.unwrap();
            match socket.next().await {
                Some(Ok(Message::Pong(_))) => {}
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    }
    socket.close(None).await.unwrap();
    SOCKET_EVENTS
}

#[tokio::test]
async fn concurrent_clients_of_several_tenants_never_mix() {
    let setup = Setup::new(Stack::from_env().kafka);
    let account = Uuid::new_v4();
    let (ws1, ws2, ws3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Two workspaces of one account with a key each, and one key that holds two workspaces of
    // another account: the tenant must come from the path, not from the key.
    let a = Writer {
        tenant: Tenant {
            account_id: account,
            workspace_id: ws1,
        },
        key: setup.key(account, &[ws1], &[Scope::Write]),
    };
    let b = Writer {
        tenant: Tenant {
            account_id: account,
            workspace_id: ws2,
        },
        key: setup.key(account, &[ws2], &[Scope::Write, Scope::Read]),
    };
    let other_account = Uuid::new_v4();
    let shared_key = setup.key(other_account, &[ws3, ws1], &[Scope::Write]);
    let c = Writer {
        tenant: Tenant {
            account_id: other_account,
            workspace_id: ws3,
        },
        key: shared_key.clone(),
    };
    let d = Writer {
        tenant: Tenant {
            account_id: other_account,
            workspace_id: ws1,
        },
        key: shared_key,
    };
    let writers = [a, b, c, d];
    let endpoint = Arc::new(setup.start(|args| args.uploads.rate_limit = 0.0).await);

    let mut tasks = tokio::task::JoinSet::new();
    for (i, writer) in writers.iter().enumerate() {
        // Each pretends to be a tenant of the other account, which its key does not hold.
        let victim = writers[(i + 2) % writers.len()].tenant;
        tasks.spawn(http_client(endpoint.clone(), writer.clone(), victim));
        tasks.spawn(socket_client(
            endpoint.clone(),
            writer.clone(),
            victim,
            true,
        ));
        tasks.spawn(socket_client(
            endpoint.clone(),
            writer.clone(),
            victim,
            false,
        ));
    }
    let mut sent = 0;
    while let Some(result) = tasks.join_next().await {
        sent += result.expect("client task");
    }

    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), sent, "every accepted event once");
    let mut per_tenant: BTreeMap<Tenant, usize> = BTreeMap::new();
    for record in &records {
        let tenant = record.tenant();
        let sender = record.json()["payload"]["sender"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(tenant.to_string(), sender, "headers name the sender");
        assert_eq!(
            record.key.as_deref(),
            Some(tenant.workspace_id.to_string().as_str())
        );
        *per_tenant.entry(tenant).or_default() += 1;
    }
    assert_eq!(per_tenant.len(), writers.len());
    for writer in &writers {
        assert_eq!(
            per_tenant[&writer.tenant],
            HTTP_BATCHES * BATCH + 2 * SOCKET_EVENTS
        );
    }
}
