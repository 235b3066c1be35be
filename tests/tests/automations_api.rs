//! The automations API of `flowhouse serve` (a real process): the pinned Prefect SDK creates
//! automations from its own trigger models (`EventTrigger`, `MetricTrigger`, serialised by
//! `model_dump(mode="json")`) and parses Flowhouse's `/automations/filter` answer; bad input
//! gets a 422 naming the field; private webhook targets are refused by default; one tenant
//! never sees another's automations; `flowhouse automations list|create|delete` is a client of
//! the same API.

use std::process::Command;

use flowhouse_tests::served::Served;
use flowhouse_tests::{flowhouse_binary, prefect_python};
use serde_json::{Value, json};
use uuid::Uuid;

const SDK_PROGRAM: &str = r#"
import json, os, sys
from prefect.events.schemas.automations import (
    AutomationCore, EventTrigger, MetricTrigger, MetricTriggerQuery, Posture,
)
from prefect.events.actions import DoNothing
from prefect.client.orchestration import get_client

flow = os.environ["FLOW"]
event = EventTrigger(
    after={"prefect.flow-run.Running"}, expect={"prefect.flow-run.Completed"},
    for_each={"prefect.resource.id"}, posture=Posture.Proactive, within=600,
    match={"prefect.resource.id": "prefect.flow-run.*"},
)
metric = MetricTrigger(
    metric=MetricTriggerQuery(name="successes", threshold=0.8, operator="<", range=600, firing_for=600),
    match_related={"prefect.resource.role": "flow", "prefect.resource.id": f"prefect.flow.{flow}"},
)
dumps = {"event": event.model_dump(mode="json"), "metric": metric.model_dump(mode="json")}
with get_client(sync_client=True) as client:
    created = []
    for name, trigger in [("late runs", event), ("flow X fails", metric)]:
        core = AutomationCore(name=name, trigger=trigger, actions=[DoNothing()])
        created.append(str(client.create_automation(core)))
    found = client.read_automations()
    print(json.dumps({
        "dumps": dumps,
        "created": created,
        "read": [{"id": str(a.id), "name": a.name, "type": a.trigger.type,
                  "trigger": a.trigger.model_dump(mode="json")} for a in found],
    }))
"#;

fn sdk(served: &Served, flow: Uuid) -> Value {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(prefect_python())
        .args(["-c", SDK_PROGRAM])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("PREFECT_HOME", home.path().join(".prefect"))
        .env("PREFECT_LOGGING_LEVEL", "WARNING")
        .env("PREFECT_API_URL", served.workspace_url())
        .env("PREFECT_CLOUD_API_URL", format!("{}/api", served.base()))
        .env("PREFECT_API_KEY", &served.key)
        .env("FLOW", flow.to_string())
        .output()
        .expect("run the Prefect SDK");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK program failed:\n{stdout}\n{}\n--- flowhouse serve ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        served.process.log_text()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

fn cli(served: &Served, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(flowhouse_binary())
        .args(["automations"])
        .args(args)
        .args(["--url", &served.workspace_url(), "--key", &served.key])
        .output()
        .expect("run flowhouse automations");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn prefects_sdk_models_and_client_work_against_the_automations_api() {
    let started = std::time::Instant::now();
    let served = Served::start(&[]).await;
    eprintln!("serve ready after {:?}", started.elapsed());
    let http = reqwest::Client::new();
    let base = served.workspace_url();
    let flow = Uuid::new_v4();

    // The SDK creates from its own models and reads Flowhouse's answer back into them.
    let report = sdk(&served, flow);
    eprintln!("the SDK program done after {:?}", started.elapsed());
    let created: Vec<&str> = report["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 2);
    let read = report["read"].as_array().unwrap();
    assert_eq!(read.len(), 2, "{report}");
    // Sorted by name (Prefect's default): "flow X fails", then "late runs".
    assert_eq!(read[0]["name"], "flow X fails");
    assert_eq!(read[0]["type"], "metric");
    assert_eq!(read[1]["type"], "event");
    for r in read {
        assert!(created.contains(&r["id"].as_str().unwrap()));
    }
    // What the SDK reads back is what it sent, field by field (durations as seconds).
    let (sent, got) = (&report["dumps"]["metric"], &read[0]["trigger"]);
    assert_eq!(sent["metric"]["threshold"], got["metric"]["threshold"]);
    assert_eq!(sent["metric"]["operator"], got["metric"]["operator"]);
    assert_eq!(sent["metric"]["range"], got["metric"]["range"]);
    assert_eq!(sent["metric"]["firing_for"], got["metric"]["firing_for"]);
    assert_eq!(sent["match_related"], got["match_related"][0]);
    assert_eq!(sent["id"], got["id"]);
    let (sent, got) = (&report["dumps"]["event"], &read[1]["trigger"]);
    for field in [
        "after",
        "expect",
        "for_each",
        "posture",
        "threshold",
        "within",
        "match",
    ] {
        assert_eq!(sent[field], got[field], "{field}");
    }

    // The same through the HTTP API.
    let auth = format!("Bearer {}", served.key);
    let one: Value = http
        .get(format!("{base}/automations/{}", created[0]))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["trigger"]["type"], "event");
    assert_eq!(one["enabled"], true);

    // Bad input: 422s that name the field; a body that is not JSON: 400.
    let post = |body: Value| {
        http.post(format!("{base}/automations/"))
            .header("Authorization", &auth)
            .json(&body)
            .send()
    };
    let metric = |range: u64| {
        json!({"name": "x", "actions": [], "trigger": {"type": "metric",
            "metric": {"name": "successes", "threshold": 0.8, "operator": "<", "range": range, "firing_for": 300}}})
    };
    let refused = post(metric(60)).await.unwrap();
    assert_eq!(refused.status(), 422);
    let detail = refused.json::<Value>().await.unwrap()["detail"].to_string();
    assert!(
        detail.contains("trigger.metric.range") && detail.contains("300"),
        "{detail}"
    );
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
    ] {
        let refused = post(json!({"name": "x", "trigger": {"type": "event"},
            "actions": [{"type": "call-webhook", "url": url}]}))
        .await
        .unwrap();
        assert_eq!(refused.status(), 422, "{why}");
        let detail = refused.json::<Value>().await.unwrap()["detail"].to_string();
        assert!(
            detail.contains("FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE") && detail.contains("actions[0]"),
            "{detail}"
        );
    }
    let refused = post(
        json!({"name": "x", "trigger": {"type": "compound", "triggers": [], "require": "any"},
        "actions": []}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 422);
    let not_json = http
        .post(format!("{base}/automations/"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);

    // Another tenant: refused on this workspace's path, and its own workspace has none.
    let other = format!("Bearer {}", served.other_key);
    let foreign = http
        .get(format!("{base}/automations/{}", created[0]))
        .header("Authorization", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let theirs = served.url_of(served.other_tenant);
    let missing = http
        .get(format!("{theirs}/automations/{}", created[0]))
        .header("Authorization", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let listed: Vec<Value> = http
        .post(format!("{theirs}/automations/filter"))
        .header("Authorization", &other)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty());

    // PATCH disables, DELETE removes.
    let patched = http
        .patch(format!("{base}/automations/{}", created[0]))
        .header("Authorization", &auth)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 204);
    let one: Value = http
        .get(format!("{base}/automations/{}", created[0]))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["enabled"], false);

    eprintln!("API checks done after {:?}", started.elapsed());
    // The CLI: create from a file, list, delete.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("automation.json");
    std::fs::write(
        &file,
        json!({"name": "tell slack", "trigger": {"type": "metric",
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.id": format!("prefect.flow.{flow}")},
            "metric": {"name": "successes", "threshold": 0.8, "operator": "<", "range": 600, "firing_for": 600}},
            "actions": [{"type": "call-webhook", "url": "https://hooks.slack.com/services/T0/B0/x"}]})
        .to_string(),
    )
    .unwrap();
    let (ok, id, err) = cli(&served, &["create", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let (ok, list, err) = cli(&served, &["list"]);
    assert!(ok, "{err}");
    assert!(list.contains(&id) && list.contains("tell slack"), "{list}");
    assert_eq!(
        list.lines().count(),
        4,
        "a header and three automations:\n{list}"
    );
    let (ok, _, err) = cli(&served, &["delete", &id]);
    assert!(ok, "{err}");
    let gone = http
        .get(format!("{base}/automations/{id}"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let (ok, _, err) = cli(&served, &["delete", &id]);
    assert!(!ok && err.contains("404"), "{err}");
    eprintln!("CLI done after {:?}", started.elapsed());

    served.finish().await;
}
