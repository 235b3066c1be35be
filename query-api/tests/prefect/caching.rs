//! Caching headers, clear 4xx for bad requests, and the OpenAPI document.

use super::*;

#[tokio::test]
async fn caching_headers_bad_requests_and_openapi() {
    let mut h = Harness::start("qa_http", 1, Settings::default()).await;
    h.load(9, 30).await;
    let t = &h.tenants[0];
    let url = h.url(t.tenant, "metrics/flow-runs");
    let query = q(&[
        ("since", &rfc3339(h.base)),
        ("until", &rfc3339(h.base + 2 * DAY)),
    ]);
    let first = h.get(&t.key, &url, &query).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let cache_control = first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cache_control.starts_with("private, max-age="),
        "{cache_control}"
    );
    // A window over settled buckets lives long: more than the freshness.
    let max_age: u64 = cache_control.rsplit('=').next().unwrap().parse().unwrap();
    assert!(max_age > 10, "settled window: long max-age, got {max_age}");
    let again = h
        .http
        .get(&url)
        .bearer_auth(&t.key)
        .query(&query)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    let other = h
        .http
        .get(&url)
        .bearer_auth(&t.key)
        .query(&query)
        .header("if-none-match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // The default window covers the open bucket: a short freshness (1 s by default), so a
    // client keeps it for at most a few seconds, or revalidates every time (`no-cache`, once
    // less than a second of freshness is left).
    let open = h.get(&t.key, &url, &[]).await;
    let cache_control = open.headers()["cache-control"].to_str().unwrap();
    let open_age: u64 = match cache_control.split_once("max-age=") {
        Some((_, age)) => age.parse().unwrap(),
        None => {
            assert_eq!(cache_control, "private, no-cache");
            0
        }
    };
    assert!(
        open_age <= 10,
        "open bucket: short max-age, got {cache_control}"
    );

    // Bad requests: a 4xx and a message saying what is wrong.
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (h.get(&t.key, &url, &q(&[("bucket", "week")])).await, 400, "bucket"),
        (h.get(&t.key, &url, &q(&[("since", "yesterday")])).await, 400, "since"),
        // Readable but beyond a bound: 422, naming it.
        (h.get(&t.key, &url, &q(&[("since", &rfc3339(h.base - 60 * DAY))])).await, 422, "days"),
        (h.get(&t.key, &url, &q(&[("until", "2400-01-01T00:00:00Z")])).await, 422, "2299"),
        (h.get(&t.key, &url, &q(&[("flows", "x")])).await, 400, "unknown query parameter `flows`"),
        (h.get(&t.key, &h.url(t.tenant, "metrics/top-failing"), &q(&[("limit", "1000")])).await, 400, "limit"),
        (h.post(&t.key, &h.url(t.tenant, "events/filter"), &json!({"filter": {"event": {"prefix": "x"}}})).await, 422, "filter.event.prefix"),
        (h.post(&t.key, &h.url(t.tenant, "events/filter"), &json!({"filter": {"text": {"query": "x".repeat(201)}}})).await, 422, "longer than 200 characters"),
        (h.post(&t.key, &h.url(t.tenant, "events/filter"), &json!({"limit": 100000})).await, 422, "limit"),
        (h.post(&t.key, &h.url(t.tenant, "events/count-by/color"), &json!({"filter": {}})).await, 422, "countable"),
        (h.post(&t.key, &h.url(t.tenant, "events/count-by/time"), &json!({"filter": {}, "time_unit": "second"})).await, 422, "buckets"),
        // Prefect requires the filter of a count.
        (h.post(&t.key, &h.url(t.tenant, "events/count-by/event"), &json!({})).await, 422, "filter"),
        (h.post(&t.key, &h.url(t.tenant, "events/count-by/time"), &json!({"filter": {}, "time_interval": 1e300})).await, 422, "time_interval: 1e+300 is greater than the maximum of 1000000"),
        (h.post(&t.key, &h.url(t.tenant, "logs/filter"), &json!({"logs": {"level": {"gt_": 3}}})).await, 422, "gt_"),
        (h.post(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({"history_start": rfc3339(h.base), "history_end": rfc3339(h.base + DAY), "history_interval_seconds": 0.5})).await, 422, "1 second"),
        (h.post(&t.key, &h.url(t.tenant, "flow_runs/history"), &json!({"history_start": rfc3339(h.base)})).await, 422, "history_end"),
        (h.http.post(h.url(t.tenant, "events/filter")).bearer_auth(&t.key).body("{not json").send().await.unwrap(), 400, "JSON"),
    ];
    for (response, status, needle) in cases {
        assert_eq!(response.status().as_u16(), status, "case {needle:?}");
        let text = response.text().await.unwrap();
        assert!(text.contains(needle), "expected {needle:?} in {text}");
    }

    // The OpenAPI document lists every route, and the admin routes answer.
    let doc: Value = h
        .http
        .get(format!("{}/openapi.json", h.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "metrics/flow-runs",
        "metrics/late-runs",
        "metrics/durations",
        "metrics/top-failing",
        "metrics/task-runs",
        "metrics/logs",
        "events/filter",
        "events/filter/next",
        "events/count-by/{countable}",
        "logs/filter",
        "flow_runs/history",
    ] {
        assert!(
            paths.contains_key(&format!(
                "/api/accounts/{{account_id}}/workspaces/{{workspace_id}}/{p}"
            )),
            "{p} in openapi.json"
        );
    }
    // The admin routes answer on the admin listener only, never on the public API.
    for admin in ["healthz", "readyz", "metrics"] {
        let status = |base: &str| {
            let request = h.http.get(format!("{base}/{admin}")).send();
            async move { request.await.unwrap().status() }
        };
        assert_eq!(
            status(&h.admin_url).await,
            200,
            "{admin} on the admin listener"
        );
        assert_eq!(status(&h.base_url).await, 404, "{admin} on the public API");
    }
    h.finish().await;
}
