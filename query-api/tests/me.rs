//! `GET /api/me/workspaces`: a key learns the workspaces it reads, and nothing else.

mod common;

use common::Harness;
use flowhouse_query_api::Settings;
use serde_json::{Value, json};

#[tokio::test]
async fn a_key_reads_only_its_own_workspaces() {
    let h = Harness::start("qa_me", 2, Settings::default()).await;
    let url = format!("{}/api/me/workspaces", h.base_url);
    for t in &h.tenants {
        let body = h.get_json(&t.key, &url, &[]).await;
        assert_eq!(
            body,
            json!([{
                "account_id": t.tenant.account_id,
                "workspace_id": t.tenant.workspace_id,
            }]),
            "tenants 0 and 1 share an account, yet each key holds only its workspace"
        );
    }
    // Where single-tenant mode's rewriting sends `/api/me/workspaces`: the same answer, whatever
    // workspace the path names.
    let (a, b) = (&h.tenants[0], &h.tenants[1]);
    let aliased = h
        .get_json(&a.key, &h.url(b.tenant, "me/workspaces"), &[])
        .await;
    assert_eq!(aliased, h.get_json(&a.key, &url, &[]).await);

    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(status(h.get(&h.write_only_key, &url, &[]).await), 403);
    assert_eq!(status(h.get("fh_nobody_secret", &url, &[]).await), 401);
    let anonymous = h.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let detail: Value = anonymous.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("no API key"));
    h.finish().await;
}
