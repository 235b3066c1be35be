//! The OpenAPI contract: schemathesis (pinned, in the stack's venv for it) generates requests
//! from the document `flowhouse serve` publishes — every route of the endpoint and the query
//! API — and checks every answer against it: no server errors, only documented statuses and
//! headers, bodies that match their schemas, schema-violating requests refused, schema-valid
//! ones accepted. Schema-valid requests may still get a 422 where a bound cannot be written in
//! JSON Schema (dates Flowhouse cannot store, windows longer than allowed): the configuration
//! below says so, and nothing else is tolerated.
//!
//! `make test` runs a short pass (`FLOWHOUSE_CONTRACT_EXAMPLES`, 25 per operation);
//! `make contract` a long one.

use std::process::Command;

use flowhouse_tests::served::Served;
use flowhouse_tests::workspace_root;

fn schemathesis() -> std::path::PathBuf {
    let output = Command::new(workspace_root().join("deploy/local/stack"))
        .arg("schemathesis")
        .output()
        .expect("run deploy/local/stack schemathesis");
    assert!(
        output.status.success(),
        "deploy/local/stack schemathesis failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    python.with_file_name("schemathesis")
}

#[tokio::test]
async fn both_services_answer_exactly_as_their_document_says() {
    let served = Served::start(&[
        // The fuzzer sends thousands of batches; the rate limit is not what is under test.
        ("FLOWHOUSE_ENDPOINT_RATE_LIMIT", "0".into()),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[parameters]
"path.account_id" = "{account}"
"path.workspace_id" = "{workspace}"

# Bounds JSON Schema cannot state (dates Flowhouse stores, window lengths): a 422 naming them.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "422"]

# 413 and 414 are how the server refuses what is too large to read.
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 414, 415, 422, 428, 429, "5xx"]
"#,
            account = served.tenant.account_id,
            workspace = served.tenant.workspace_id,
        ),
    )
    .unwrap();
    let examples =
        std::env::var("FLOWHOUSE_CONTRACT_EXAMPLES").unwrap_or_else(|_| "25".to_string());
    let output = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", served.base())])
        .args(["-H", &format!("Authorization: Bearer {}", served.key)])
        .args([
            "--checks",
            "all",
            // One worker: with two, hypothesis parses lambda sources with `ast.parse` from two
            // threads, which CPython 3.11 can fail ("AST constructor recursion depth mismatch"),
            // a runtime error of the tool, not a finding (seen once in a clean-clone run).
            "--workers",
            "1",
            "--max-examples",
            &examples,
        ])
        .args(["--seed", "20261128"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report.lines().rev().take(20).collect();
    eprintln!(
        "{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("Selected: 26/26") && report.contains("Tested: 26"),
        "every operation of both services is tested:\n{report}"
    );
    served.finish().await;
}
