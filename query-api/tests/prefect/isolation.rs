//! No route ever returns another tenant's rows; hostile strings are data.

use super::*;

#[tokio::test]
async fn no_route_ever_returns_another_tenants_rows() {
    let mut h = Harness::start("qa_tenants", 3, Settings::default()).await;
    h.load(3, 60).await;
    let (a, b) = (&h.tenants[0], &h.tenants[1]);
    let window = json!({"since": rfc3339(h.base), "until": rfc3339(h.base + 6 * DAY)});
    let metric_query = q(&[
        ("since", &rfc3339(h.base)),
        ("until", &rfc3339(h.base + 6 * DAY)),
    ]);
    let gets = [
        "metrics/flow-runs",
        "metrics/late-runs",
        "metrics/durations",
        "metrics/top-failing",
        "metrics/task-runs",
        "metrics/logs",
    ];
    // Tenant-looking fields in bodies are either refused or ignored, never obeyed.
    let smuggle = json!({"account_id": b.tenant.account_id, "workspace_id": b.tenant.workspace_id, "tenant": b.tenant.workspace_id});
    let posts = vec![
        (
            "events/filter",
            json!({"filter": {"occurred": window}, "limit": 200, "account_id": b.tenant.account_id, "workspace_id": b.tenant.workspace_id}),
        ),
        (
            "events/count-by/resource",
            json!({"filter": {"occurred": window}, "workspace": b.tenant.workspace_id}),
        ),
        (
            "events/count-by/time",
            json!({"filter": {"occurred": window}, "time_unit": "hour", "account": b.tenant.account_id}),
        ),
        (
            "logs/filter",
            json!({"logs": {"timestamp": {"after_": rfc3339(h.base)}}, "limit": 200, "account_id": b.tenant.account_id}),
        ),
        (
            "flow_runs/history",
            json!({"history_start": rfc3339(h.base), "history_end": rfc3339(h.base + 5 * DAY), "history_interval_seconds": 86400, "workspace_id": b.tenant.workspace_id}),
        ),
    ];
    let unknown = "fh_nobody_0000";
    // Wrong key, no key, unknown key, write-only key: 403 / 401 on every route.
    for path in gets {
        let url = h.url(a.tenant, path);
        assert_eq!(
            h.get(&b.key, &url, &metric_query).await.status(),
            StatusCode::FORBIDDEN,
            "{path} with another tenant's key"
        );
        assert_eq!(
            h.http.get(&url).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a key"
        );
        assert_eq!(
            h.get(unknown, &url, &metric_query).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            h.get(&h.write_only_key, &url, &metric_query).await.status(),
            StatusCode::FORBIDDEN
        );
    }
    for (path, body) in &posts {
        let url = h.url(a.tenant, path);
        assert_eq!(
            h.post(&b.key, &url, body).await.status(),
            StatusCode::FORBIDDEN,
            "{path} with another tenant's key"
        );
        assert_eq!(
            h.http.post(&url).json(body).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            h.post(unknown, &url, body).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            h.post(&h.write_only_key, &url, body).await.status(),
            StatusCode::FORBIDDEN
        );
    }
    // With its own key, tenant A sees only its own rows whatever the body says.
    let events = truth::unique(&h.events);
    let a_resources: BTreeSet<String> = events
        .iter()
        .filter(|e| e.tenant == a.tenant)
        .map(|e| e.label("prefect.resource.id").unwrap().to_string())
        .collect();
    let a_ids: BTreeSet<String> = events
        .iter()
        .filter(|e| e.tenant == a.tenant)
        .map(|e| e.id.to_string())
        .collect();
    let a_runs: BTreeSet<String> = h
        .logs
        .iter()
        .filter(|l| l.tenant == a.tenant)
        .filter_map(|l| l.flow_run_id.map(|i| i.to_string()))
        .collect();
    let page = h
        .post_json(&a.key, &h.url(a.tenant, posts[0].0), &posts[0].1)
        .await;
    assert!(
        ids(page["events"].as_array().unwrap())
            .iter()
            .all(|id| a_ids.contains(id))
    );
    assert_eq!(page["total"].as_u64().unwrap() as usize, a_ids.len());
    let counts = h
        .post_json(&a.key, &h.url(a.tenant, posts[1].0), &posts[1].1)
        .await;
    assert!(
        counts
            .as_array()
            .unwrap()
            .iter()
            .all(|c| a_resources.contains(c["value"].as_str().unwrap()))
    );
    let logs = h
        .post_json(&a.key, &h.url(a.tenant, posts[3].0), &posts[3].1)
        .await;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .all(|l| l["flow_run_id"].is_null()
                || a_runs.contains(l["flow_run_id"].as_str().unwrap()))
    );
    // Tenant-looking fields inside a filter are refused (Prefect's filters forbid extra fields).
    let response = h
        .post(
            &a.key,
            &h.url(a.tenant, "events/filter"),
            &json!({"filter": smuggle}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.unwrap().contains("account_id"));
    // Path tricks: another workspace of the same account, malformed ids.
    let same_account = flowhouse_schema::Tenant {
        account_id: a.tenant.account_id,
        workspace_id: h.tenants[1].tenant.workspace_id,
    };
    assert_eq!(
        h.get(&a.key, &h.url(same_account, "metrics/logs"), &[])
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let bad = format!(
        "{}/api/accounts/{}/workspaces/not-a-uuid/metrics/logs",
        h.base_url, a.tenant.account_id
    );
    assert_eq!(
        h.get(&a.key, &bad, &[]).await.status(),
        StatusCode::NOT_FOUND
    );

    // Page tokens: B's token on A's path with A's key, and tampered tokens, are 403s.
    let b_page = h
        .post_json(
            &b.key,
            &h.url(b.tenant, "events/filter"),
            &json!({"filter": {"occurred": window}, "limit": 5}),
        )
        .await;
    let b_next = b_page["next_page"].as_str().unwrap();
    let token = b_next.split("page-token=").nth(1).unwrap();
    let a_next = h.url(a.tenant, &format!("events/filter/next?page-token={token}"));
    assert_eq!(
        h.http
            .get(&a_next)
            .bearer_auth(&a.key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.http
            .get(b_next)
            .bearer_auth(&a.key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.http
            .get(b_next)
            .bearer_auth(&b.key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (payload, mac) = token.split_once('.').unwrap();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut state: Value = serde_json::from_slice(&engine.decode(payload).unwrap()).unwrap();
    state["tenant"]["workspace_id"] = json!(a.tenant.workspace_id);
    state["tenant"]["account_id"] = json!(a.tenant.account_id);
    let forged = format!(
        "{}.{mac}",
        engine.encode(serde_json::to_vec(&state).unwrap())
    );
    for token in [forged.as_str(), "garbage", "", "a.b"] {
        let url = h.url(a.tenant, &format!("events/filter/next?page-token={token}"));
        assert_eq!(
            h.http
                .get(&url)
                .bearer_auth(&a.key)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::FORBIDDEN,
            "token {token:?}"
        );
    }
    h.finish().await;
}
