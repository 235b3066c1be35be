//! The Prefect-compatible endpoints equal the answers computed from the generated data; paging
//! walks every match once; no route ever shows another tenant's rows; hostile strings are data;
//! caching headers; clear 4xx for bad requests.

#[path = "prefect/caching.rs"]
mod caching;
mod common;
#[path = "prefect/isolation.rs"]
mod isolation;
#[path = "prefect/paging.rs"]
mod paging;

use std::collections::{BTreeMap, BTreeSet};

use common::truth::{self, Run};
use common::workload::{DAY, Ev, HOSTILE, HOUR, rfc3339};
use common::{Harness, q};
use flowhouse_query_api::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn micros(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

fn has_related(ev: &Ev, role: &str, id: &str) -> bool {
    ev.related.iter().any(|r| {
        r.iter()
            .any(|(k, v)| k == "prefect.resource.role" && v == role)
            && r.iter().any(|(k, v)| k == "prefect.resource.id" && v == id)
    })
}

async fn walk(
    h: &Harness,
    key: &str,
    tenant: flowhouse_schema::Tenant,
    filter: Value,
    limit: u64,
) -> (u64, Vec<Value>) {
    h.walk(key, tenant, filter, limit).await
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn event_search_count_logs_and_history_equal_ground_truth() {
    let mut h = Harness::start("qa_prefect", 2, Settings::default()).await;
    h.load(11, 120).await;
    let events = truth::unique(&h.events);
    let t = &h.tenants[0];
    let mine: Vec<&Ev> = events.iter().filter(|e| e.tenant == t.tenant).collect();
    let (since, until) = (h.base + DAY + 3 * HOUR, h.base + 4 * DAY);
    let occurred = json!({"since": rfc3339(since), "until": rfc3339(until)});
    let in_window = |e: &&&Ev| e.occurred >= since && e.occurred <= until;
    let runs = truth::runs(&events, t.tenant, "flow-run");
    let flow = runs.values().next().unwrap().flow.clone();
    let hostile_flow = runs
        .values()
        .find(|r| r.flow.starts_with(HOSTILE))
        .unwrap()
        .flow
        .clone();
    let a_task = mine
        .iter()
        .find(|e| {
            e.event.starts_with("prefect.task-run.") && e.occurred >= since && e.occurred <= until
        })
        .unwrap();
    let a_task_id = a_task.label("prefect.resource.id").unwrap().to_string();

    type Pred<'a> = Box<dyn Fn(&Ev) -> bool + 'a>;
    let cases: Vec<(Value, Pred)> = vec![
        (
            json!({"occurred": occurred, "order": "ASC"}),
            Box::new(|_| true),
        ),
        (
            json!({"occurred": occurred, "event": {"prefix": ["prefect.flow-run."]}}),
            Box::new(|e| e.event.starts_with("prefect.flow-run.")),
        ),
        (
            json!({"occurred": occurred, "event": {"name": ["prefect.flow-run.Late", "prefect.task-run.Failed"]}}),
            Box::new(|e| {
                e.event == "prefect.flow-run.Late" || e.event == "prefect.task-run.Failed"
            }),
        ),
        (
            json!({"occurred": occurred, "event": {"prefix": ["prefect.flow-run."], "exclude_name": ["prefect.flow-run.Completed"], "exclude_prefix": ["prefect.flow-run.P"]}}),
            Box::new(|e| {
                e.event.starts_with("prefect.flow-run.")
                    && e.event != "prefect.flow-run.Completed"
                    && !e.event.starts_with("prefect.flow-run.P")
            }),
        ),
        (
            json!({"occurred": occurred, "related": {"role": ["flow"], "id": [format!("prefect.flow.{flow}")]}}),
            Box::new(|e| has_related(e, "flow", &format!("prefect.flow.{flow}"))),
        ),
        (
            json!({"occurred": occurred, "related": [{"resources_in_roles": [[format!("prefect.flow.{hostile_flow}"), "flow"]]}, {"role": ["tag"]}]}),
            Box::new(|e| {
                has_related(e, "flow", &format!("prefect.flow.{hostile_flow}"))
                    && e.related.iter().any(|r| {
                        r.iter()
                            .any(|(k, v)| k == "prefect.resource.role" && v == "tag")
                    })
            }),
        ),
        (
            json!({"occurred": occurred, "resource": {"labels": {"prefect.resource.id": "prefect.task-run.*", "prefect.state-type": ["FAILED", "CRASHED"]}}}),
            Box::new(|e| {
                e.event.starts_with("prefect.task-run.")
                    && matches!(e.label("prefect.state-type"), Some("FAILED" | "CRASHED"))
            }),
        ),
        (
            json!({"occurred": occurred, "resource": {"id_prefix": ["prefect.flow-run."], "labels": {"prefect.state-name": "!Completed"}}}),
            Box::new(|e| {
                e.event.starts_with("prefect.flow-run.")
                    && e.label("prefect.state-name")
                        .is_some_and(|n| n != "Completed")
            }),
        ),
        // A label's patterns are alternatives (Prefect ORs them), globs with `*` and `?`.
        (
            json!({"occurred": occurred, "resource": {"id_prefix": ["prefect.flow-run."], "labels": {"prefect.state-name": ["Pend*", "Lat?", "!*"]}}}),
            Box::new(|e| {
                e.event.starts_with("prefect.flow-run.")
                    && e.label("prefect.state-name").is_some_and(|n| {
                        n.starts_with("Pend") || (n.len() == 4 && n.starts_with("Lat"))
                    })
            }),
        ),
        (
            json!({"occurred": occurred, "resource": {"id": [a_task_id.clone()]}}),
            Box::new(|e| e.label("prefect.resource.id") == Some(a_task_id.as_str())),
        ),
        (
            json!({"occurred": occurred, "any_resource": {"id": ["prefect.tag.nightly"]}}),
            Box::new(|e| has_related(e, "tag", "prefect.tag.nightly")),
        ),
        (
            json!({"occurred": occurred, "any_resource": [{"id_prefix": ["prefect.task-run."]}, {"labels": {"prefect.resource.role": "work-pool"}}]}),
            Box::new(|e| {
                e.event.starts_with("prefect.task-run.")
                    && e.related.iter().any(|r| {
                        r.iter()
                            .any(|(k, v)| k == "prefect.resource.role" && v == "work-pool")
                    })
            }),
        ),
        (
            json!({"occurred": occurred, "id": {"id": [a_task.id]}}),
            Box::new(|e| e.id == a_task.id),
        ),
        // Hostile strings are plain data: they match what equals them, and nothing breaks.
        (
            json!({"occurred": occurred, "resource": {"labels": {HOSTILE: HOSTILE}}}),
            Box::new(|_| false),
        ),
        (
            json!({"occurred": occurred, "event": {"prefix": [HOSTILE], "name": ["x' OR 1=1 --"]}}),
            Box::new(|_| false),
        ),
        (
            json!({"occurred": occurred, "related": {"id": [format!("prefect.tag.{HOSTILE}")]}}),
            Box::new(|e| has_related(e, "tag", &format!("prefect.tag.{HOSTILE}"))),
        ),
    ];
    for (i, (filter, keep)) in cases.iter().enumerate() {
        let expected: BTreeSet<String> = mine
            .iter()
            .filter(in_window)
            .filter(|e| keep(e))
            .map(|e| e.id.to_string())
            .collect();
        let asc = filter["order"] == "ASC";
        let (total, got) = walk(&h, &t.key, t.tenant, filter.clone(), 37).await;
        assert_eq!(total as usize, expected.len(), "case {i}: total");
        let got_ids = ids(&got);
        let unique: BTreeSet<String> = got_ids.iter().cloned().collect();
        assert_eq!(unique.len(), got_ids.len(), "case {i}: an event repeated");
        assert_eq!(unique, expected, "case {i}: {filter}");
        let times: Vec<i64> = got.iter().map(|e| micros(&e["occurred"])).collect();
        let mut sorted = times.clone();
        sorted.sort();
        if !asc {
            sorted.reverse();
        }
        assert_eq!(times, sorted, "case {i}: order");
    }
    // The shape of a returned event is Prefect's ReceivedEvent.
    let page = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "events/filter"),
            &json!({"filter": {"occurred": occurred, "id": {"id": [a_task.id]}}}),
        )
        .await;
    let e = &page["events"][0];
    assert_eq!(e["id"], a_task.id.to_string());
    assert_eq!(e["event"], a_task.event);
    assert_eq!(e["resource"]["prefect.resource.id"], a_task_id);
    assert_eq!(e["payload"], a_task.payload);
    assert_eq!(micros(&e["occurred"]), a_task.occurred);
    assert_eq!(micros(&e["received"]), a_task.received);
    assert!(
        e["related"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["prefect.resource.role"].is_string())
    );
    assert!(page["next_page"].is_null());

    // count-by event and resource.
    let windowed: Vec<&&Ev> = mine.iter().filter(in_window).collect();
    let body = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "events/count-by/event"),
            &json!({"filter": {"occurred": occurred}}),
        )
        .await;
    let mut expected: BTreeMap<String, (u64, i64, i64)> = BTreeMap::new();
    for e in &windowed {
        let x = expected
            .entry(e.event.clone())
            .or_insert((0, i64::MAX, i64::MIN));
        *x = (x.0 + 1, x.1.min(e.occurred), x.2.max(e.occurred));
    }
    let mut expected: Vec<(String, u64, i64, i64)> = expected
        .into_iter()
        .map(|(k, (n, a, b))| (k, n, a, b))
        .collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got: Vec<(String, u64, i64, i64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["value"], c["label"]);
            (
                c["value"].as_str().unwrap().into(),
                c["count"].as_u64().unwrap(),
                micros(&c["start_time"]),
                micros(&c["end_time"]),
            )
        })
        .collect();
    assert_eq!(got, expected, "count by event");

    let body = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "events/count-by/resource"),
            &json!({"filter": {"occurred": occurred, "event": {"prefix": ["prefect.flow-run."]}}}),
        )
        .await;
    let mut expected: BTreeMap<String, (u64, i64, String)> = BTreeMap::new();
    for e in windowed
        .iter()
        .filter(|e| e.event.starts_with("prefect.flow-run."))
    {
        let id = e.label("prefect.resource.id").unwrap().to_string();
        let x = expected.entry(id).or_insert((0, i64::MIN, String::new()));
        x.0 += 1;
        if e.occurred > x.1 {
            x.1 = e.occurred;
            x.2 = e.label("prefect.resource.name").unwrap().to_string();
        }
    }
    let mut expected: Vec<(String, String, u64)> = expected
        .into_iter()
        .map(|(id, (n, _, label))| (id, label, n))
        .collect();
    expected.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
    let got: Vec<(String, String, u64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["value"].as_str().unwrap().into(),
                c["label"].as_str().unwrap().into(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let sorted_counts = |v: &[(String, String, u64)]| {
        v.iter()
            .map(|x| (x.2, x.1.clone(), x.0.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        sorted_counts(&got),
        sorted_counts(&expected),
        "count by resource"
    );

    // count-by time: 6-hour buckets from Prefect's pivot, gap-filled.
    let body = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "events/count-by/time"),
            &json!({"filter": {"occurred": occurred}, "time_unit": "hour", "time_interval": 6}),
        )
        .await;
    let pivot = 1_711_929_600_000_000i64;
    let width = 6 * HOUR;
    let first = (since - pivot).div_euclid(width);
    let list = body.as_array().unwrap();
    let mut total = 0;
    for (i, c) in list.iter().enumerate() {
        let start = pivot + (first + i as i64) * width;
        assert_eq!(c["value"], i.to_string());
        assert_eq!(micros(&c["start_time"]), start);
        assert_eq!(micros(&c["end_time"]), start + width - 1);
        let n = windowed
            .iter()
            .filter(|e| e.occurred >= start && e.occurred < start + width)
            .count() as u64;
        assert_eq!(c["count"].as_u64().unwrap(), n, "time bucket {i}");
        total += n;
    }
    assert_eq!(total as usize, windowed.len());
    let last = micros(&list.last().unwrap()["start_time"]);
    assert!(
        last < until && last + width >= until,
        "buckets run up to until"
    );

    // day: the legacy countable is time with one-day buckets.
    let body = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "events/count-by/day"),
            &json!({"filter": {"occurred": occurred}, "time_unit": "second"}),
        )
        .await;
    assert_eq!(
        body.as_array()
            .unwrap()
            .iter()
            .map(|c| c["count"].as_u64().unwrap())
            .sum::<u64>() as usize,
        windowed.len()
    );

    // logs/filter: one run's logs in order; then levels and a time range, paged.
    let run_id = h
        .logs
        .iter()
        .find(|l| l.tenant == t.tenant && l.flow_run_id.is_some())
        .unwrap()
        .flow_run_id
        .unwrap();
    let mut expected: Vec<(i64, String)> = h
        .logs
        .iter()
        .filter(|l| l.tenant == t.tenant && l.flow_run_id == Some(run_id))
        .map(|l| (l.timestamp, l.message.clone()))
        .collect();
    expected.sort();
    let body = h
        .post_json(
            &t.key,
            &h.url(t.tenant, "logs/filter"),
            &json!({"logs": {"operator": "and_", "flow_run_id": {"any_": [run_id]}}}),
        )
        .await;
    let got: Vec<(i64, String)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                micros(&l["timestamp"]),
                l["message"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(got, expected, "logs of one run");
    let mut expected: Vec<i64> = h
        .logs
        .iter()
        .filter(|l| {
            l.tenant == t.tenant
                && l.level >= 30
                && l.timestamp >= since
                && l.timestamp <= until
                && l.task_run_id.is_none()
        })
        .map(|l| l.timestamp)
        .collect();
    expected.sort();
    expected.reverse();
    let mut got = Vec::new();
    for offset in (0..).step_by(25) {
        let body = h.post_json(&t.key, &h.url(t.tenant, "logs/filter"), &json!({
            "logs": {"level": {"ge_": 30}, "timestamp": {"after_": rfc3339(since), "before_": rfc3339(until)}, "task_run_id": {"is_null_": true}},
            "sort": "TIMESTAMP_DESC", "limit": 25, "offset": offset})).await;
        let page = body.as_array().unwrap();
        got.extend(page.iter().map(|l| micros(&l["timestamp"])));
        for l in page {
            assert!(
                l["id"].is_string()
                    && l["created"].is_string()
                    && l["level"].as_u64().unwrap() >= 30
            );
        }
        if page.len() < 25 {
            break;
        }
    }
    assert_eq!(got, expected, "logs by level and time, paged");

    // flow_runs/history: 6-hour intervals over the data, by current state.
    let (start, end) = (h.base, h.base + 5 * DAY + 7 * HOUR);
    let body = h.post_json(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({
        "history_start": rfc3339(start), "history_end": rfc3339(end), "history_interval_seconds": 21600.0,
        "flows": {"operator": "and_"}, "flow_runs": {"tags": {"any_": ["nightly", HOSTILE]}}})).await;
    let keep = |r: &Run| r.tags.contains("nightly") || r.tags.contains(HOSTILE);
    check_history(&body, &runs, start, end, 6 * HOUR, keep);
    let body = h.post_json(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({
        "history_start": rfc3339(start), "history_end": rfc3339(end), "history_interval_seconds": 86400,
        "flow_runs": {"state": {"type": {"any_": ["FAILED", "RUNNING"]}}}})).await;
    check_history(&body, &runs, start, end, DAY, |r| {
        let t = current_type(r);
        t == "FAILED" || t == "RUNNING"
    });
    // Prefect's filter semantics beyond the basics, each against the ground truth.
    let some = runs.values().find(|r| !r.deployment.is_empty()).unwrap();
    let fragment = some.flow_name[..some.flow_name.len().min(3)].to_lowercase();
    let (some_deployment, some_name) = (some.deployment.clone(), some.name.clone());
    type Keep = Box<dyn Fn(&Run) -> bool>;
    let cases: Vec<(Value, Keep)> = vec![
        // or_ combines a filter's criteria.
        (
            json!({"flow_runs": {"operator": "or_", "name": {"any_": [some_name.clone()]}, "deployment_id": {"any_": [some_deployment.clone()]}}}),
            Box::new(move |r: &Run| r.name == some_name || r.deployment == some_deployment),
        ),
        // A present deployments filter keeps runs that have a deployment (Prefect's EXISTS).
        (
            json!({"deployments": {}}),
            Box::new(|r: &Run| !r.deployment.is_empty()),
        ),
        (
            json!({"work_pools": {"operator": "and_"}}),
            Box::new(|r: &Run| !r.work_pool.is_empty()),
        ),
        // like_ is a case-insensitive substring.
        (
            json!({"flows": {"name": {"like_": fragment.to_uppercase()}}}),
            Box::new(move |r: &Run| r.flow_name.to_lowercase().contains(&fragment)),
        ),
        (
            json!({"deployments": {"flow_or_deployment_name": {"like_": "hourly"}}}),
            Box::new(|r: &Run| {
                !r.deployment.is_empty()
                    && (r.deployment_name.to_lowercase().contains("hourly")
                        || r.flow_name.to_lowercase().contains("hourly"))
            }),
        ),
        (
            json!({"flow_runs": {"start_time": {"is_null_": true}}}),
            Box::new(|r: &Run| r.start.is_none()),
        ),
        (
            json!({"flow_runs": {"end_time": {"after_": rfc3339(start + 2 * DAY)}}}),
            Box::new(move |r: &Run| r.end.is_some_and(|e| e >= start + 2 * DAY)),
        ),
        // Prefect ignores a state part with both any_ and not_any_.
        (
            json!({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"], "not_any_": ["FAILED"]}, "name": {"not_any_": ["Completed"]}}}}),
            Box::new(|r: &Run| r.last_name != "Completed"),
        ),
        (
            json!({"flow_runs": {"id": {"any_": []}}}),
            Box::new(|_: &Run| false),
        ),
    ];
    for (i, (filters, keep)) in cases.into_iter().enumerate() {
        let mut body = json!({"history_start": rfc3339(start), "history_end": rfc3339(end), "history_interval_seconds": 86400});
        for (k, v) in filters.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = h
            .post_json(&t.key, &h.url(t.tenant, "flow_runs/history"), &body)
            .await;
        eprintln!("history case {i}: {filters}");
        check_history(&answer, &runs, start, end, DAY, keep);
    }
    // More than 500 intervals are truncated to the first 500, as in Prefect.
    let body = h.post_json(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({
        "history_start": rfc3339(start), "history_end": rfc3339(end), "history_interval_seconds": 60})).await;
    assert_eq!(body.as_array().unwrap().len(), 500);
    check_history(
        &body,
        &runs,
        start,
        start + 500 * 60_000_000,
        60_000_000,
        |_| true,
    );
    let empty = h.post_json(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({
        "history_start": rfc3339(end), "history_end": rfc3339(start), "history_interval_seconds": 60})).await;
    assert_eq!(empty, json!([]));
    h.finish().await;
}

fn current_type(r: &Run) -> String {
    if r.end == Some(r.last_seen) {
        r.final_type.clone()
    } else {
        truth::prefect_type(&r.last_name)
    }
}

fn check_history(
    body: &Value,
    runs: &BTreeMap<String, Run>,
    start: i64,
    end: i64,
    width: i64,
    keep: impl Fn(&Run) -> bool,
) {
    let n = (end - start + width - 1) / width;
    let list = body.as_array().unwrap();
    assert_eq!(list.len() as i64, n);
    let mut expected: BTreeMap<(i64, String, String), (u64, i64, i64)> = BTreeMap::new();
    for r in runs.values().filter(|r| keep(r)) {
        let anchor = r.expected.unwrap_or(r.first_seen);
        if anchor < start || anchor >= start + n * width {
            continue;
        }
        let i = (anchor - start) / width;
        let run_time = r.start.map_or(0, |s| r.last_seen - s);
        let lateness = match (r.start, r.expected) {
            (Some(s), Some(e)) => (s - e).max(0),
            _ => 0,
        };
        let x = expected
            .entry((i, current_type(r), r.last_name.clone()))
            .or_default();
        *x = (x.0 + 1, x.1 + run_time, x.2 + lateness);
    }
    let mut got = BTreeMap::new();
    for (i, interval) in list.iter().enumerate() {
        assert_eq!(
            micros(&interval["interval_start"]),
            start + i as i64 * width
        );
        assert_eq!(
            micros(&interval["interval_end"]),
            start + (i as i64 + 1) * width
        );
        for s in interval["states"].as_array().unwrap() {
            got.insert(
                (
                    i as i64,
                    s["state_type"].as_str().unwrap().to_string(),
                    s["state_name"].as_str().unwrap().to_string(),
                ),
                (
                    s["count_runs"].as_u64().unwrap(),
                    (s["sum_estimated_run_time"].as_f64().unwrap() * 1e6).round() as i64,
                    (s["sum_estimated_lateness"].as_f64().unwrap() * 1e6).round() as i64,
                ),
            );
        }
    }
    assert_eq!(got, expected, "flow run history");
}
