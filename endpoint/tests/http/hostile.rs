//! Hostile input, and the admin listener's routes.

use super::*;

#[tokio::test]
async fn hostile_input_is_refused_or_contained_to_the_callers_tenant() {
    let setup = Setup::new(Stack::from_env().kafka);
    let writer = setup.writer();
    let victim = setup.writer();
    let endpoint = setup.start(|_| {}).await;

    // Huge labels: over the per-label limit, named.
    let mut huge = event("huge");
    huge["resource"]["note"] = json!("x".repeat(20_000));
    huge["related"] =
        json!((0..600)
        .map(|i| json!({"prefect.resource.id": format!("r{i}"), "prefect.resource.role": "tag"}))
        .collect::<Vec<_>>());
    let response = endpoint.post_events(&writer, &[huge]).await;
    assert_eq!(response.status(), 422);
    let body = error_body(response).await;
    let fields: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["resource[\"note\"]", "related"]);

    // Deep nesting: unbalanced is not JSON; balanced is JSON but not an event; a deep payload
    // inside the limits is an object like any other and travels verbatim.
    let depth = 100_000;
    let unbalanced = "[".repeat(depth);
    let response = endpoint
        .post(&writer.tenant, "events", Some(&writer.key), unbalanced)
        .await;
    assert_eq!(response.status(), 400);
    let balanced = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
    let response = endpoint
        .post(&writer.tenant, "events", Some(&writer.key), balanced)
        .await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_body(response).await["problems"][0]["index"], 0);
    let deep = event("deep");
    let nested = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_text = format!(
        "{{\"id\":\"{}\",\"occurred\":{},\"event\":\"prefect.flow-run.Running\",\
         \"resource\":{{\"prefect.resource.id\":\"prefect.flow-run.1\"}},\"payload\":{{\"deep\":{nested}}}}}",
        Uuid::now_v7(),
        deep["occurred"]
    );
    let response = endpoint
        .post(
            &writer.tenant,
            "events",
            Some(&writer.key),
            format!("[{deep_text}]"),
        )
        .await;
    assert_eq!(response.status(), 204);

    // Wrong types everywhere.
    let mut wrong = event("wrong");
    wrong["resource"] = json!(["prefect.resource.id", "x"]);
    wrong["related"] = json!("flow");
    wrong["payload"] = json!([1, 2]);
    wrong["follows"] = json!(7);
    let response = endpoint
        .post(
            &writer.tenant,
            "events",
            Some(&writer.key),
            format!("[{wrong}, \"an event\", 42, null]"),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body = error_body(response).await;
    let indexed: BTreeSet<(u64, &str)> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), p["field"].as_str().unwrap()))
        .collect();
    for expected in [
        (0, "resource"),
        (0, "related"),
        (0, "payload"),
        (0, "follows"),
        (1, ""),
        (2, ""),
        (3, ""),
    ] {
        assert!(indexed.contains(&expected), "{expected:?} in {indexed:?}");
    }

    // Tenant-looking fields in the body change nothing: the tenant is the path's.
    let mut pretender = event("pretender");
    for (field, value) in [
        ("account_id", victim.tenant.account_id.to_string()),
        ("workspace_id", victim.tenant.workspace_id.to_string()),
        ("received", "2001-01-01T00:00:00Z".to_owned()),
    ] {
        pretender[field] = json!(value);
        pretender["resource"][field] = json!(value);
    }
    pretender["tenant"] = json!({"account_id": victim.tenant.account_id});
    let response = endpoint.post_events(&writer, &[pretender]).await;
    assert_eq!(response.status(), 204);

    let records = endpoint.consume(endpoint.events_topic()).await;
    assert_eq!(records.len(), 2, "the deep payload and the pretender");
    for record in &records {
        assert_eq!(record.tenant(), writer.tenant);
        assert_eq!(
            record.key.as_deref(),
            Some(writer.tenant.workspace_id.to_string().as_str())
        );
        assert_ne!(record.header("received"), "2001-01-01T00:00:00Z");
    }
    assert!(
        records.iter().any(|r| r.value == deep_text.as_bytes()),
        "the deep payload is stored as sent"
    );
    let health = endpoint
        .http
        .get(endpoint.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still standing");
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_on_the_admin_listener_only() {
    let (endpoint, writer) = endpoint().await;
    assert_eq!(
        endpoint.post_events(&writer, &[event("m")]).await.status(),
        204
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = endpoint.http.get(endpoint.url(path)).send().await.unwrap();
        assert_eq!(public.status(), 404, "{path} on the public API");
    }
    let get = |path: &'static str| {
        let url = endpoint.admin_url(path);
        let http = endpoint.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    let ready = get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let report: Value = ready.json().await.unwrap();
    assert_eq!(report["components"]["kafka"]["ready"], true);
    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("flowhouse_endpoint_accepted_total"),
        "{metrics}"
    );
    assert!(metrics.contains("flowhouse_endpoint_delivery_seconds"));
}
