//! The raw tables against the generator, per tenant: metrics alone could hide a loss that a
//! duplicate elsewhere makes up for, and the rollups are deduplicated by design, so the chaos
//! run counts rows too.
//!
//! - `events FINAL` and `logs FINAL`: distinct ids and rows must both equal what the generator
//!   made (its distinct events; its log lines). Both tables collapse a row stored twice with
//!   the same id (an event's own id; a log line's id, from its content when it has none): a
//!   replay or a client's resend leaves one row per id, and a row whose id is missing is lost.
//! - The same tables before merges: reported, not judged. Rows above what was sent are copies
//!   the table has not collapsed yet: harmless to every answer (reads use FINAL), and a
//!   background merge may remove them at any time.
//!
//! The generator's truth is everything it handed to the driver: the driver resends what a
//! restart refused until it is acknowledged, and a message never acknowledged fails the run
//! before this count, so nothing is left out of the truth.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::truth::GroundTruth;

/// One tenant's counts, expected and stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantCounts {
    pub account_id: String,
    pub workspace_id: String,
    /// The generator's distinct events, and its resends of some of them.
    pub events_expected: u64,
    pub duplicates_sent: u64,
    pub events_final_distinct_ids: u64,
    pub events_final_rows: u64,
    /// Rows of `events` without FINAL (copies not merged yet included).
    pub events_rows: u64,
    pub logs_expected: u64,
    pub logs_final_distinct_ids: u64,
    pub logs_final_rows: u64,
    /// Rows of `logs` without FINAL.
    #[serde(default)]
    pub logs_rows: u64,
}

impl TenantCounts {
    /// What differs from the generator, one line each.
    fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        let tenant = &self.workspace_id;
        let mut check = |what: &str, got: u64, want: u64| {
            if got != want {
                let how = if got < want { "lost" } else { "duplicated" };
                out.push(format!(
                    "workspace {tenant}: {what} {got}, generated {want} ({} {how})",
                    got.abs_diff(want)
                ));
            }
        };
        check(
            "events FINAL distinct ids",
            self.events_final_distinct_ids,
            self.events_expected,
        );
        check(
            "events FINAL rows",
            self.events_final_rows,
            self.events_expected,
        );
        check(
            "logs FINAL distinct ids",
            self.logs_final_distinct_ids,
            self.logs_expected,
        );
        check("logs FINAL rows", self.logs_final_rows, self.logs_expected);
        out
    }
}

/// The verdict over every tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawCounts {
    pub verified: bool,
    pub events_expected: u64,
    pub events_final_distinct_ids: u64,
    pub logs_expected: u64,
    pub logs_final_distinct_ids: u64,
    /// `events` and `logs` rows (before merges) above what was sent: copies not collapsed yet.
    pub events_unmerged_copies: u64,
    #[serde(default)]
    pub logs_unmerged_copies: u64,
    pub mismatches: Vec<String>,
    pub tenants: Vec<TenantCounts>,
}

#[derive(Row, Deserialize)]
struct Counted {
    /// Not named `workspace_id`: an alias shadows the column in ClickHouse, WHERE included.
    workspace: String,
    distinct_ids: u64,
    rows: u64,
}

async fn by_workspace(
    client: &clickhouse::Client,
    sql: &str,
    workspaces: &[String],
) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let rows: Vec<Counted> = client
        .query(sql)
        .param("ws", workspaces)
        .fetch_all()
        .await
        .with_context(|| format!("cannot count: {sql}"))?;
    Ok(rows
        .into_iter()
        .map(|r| (r.workspace, (r.distinct_ids, r.rows)))
        .collect())
}

/// Counts every tenant of `truth` in ClickHouse and compares.
pub async fn verify(client: &clickhouse::Client, truth: &GroundTruth) -> anyhow::Result<RawCounts> {
    let workspaces: Vec<String> = truth
        .tenants
        .iter()
        .map(|t| t.tenant.workspace_id.to_string())
        .collect();
    let events_final = by_workspace(
        client,
        "SELECT toString(workspace_id) AS workspace, uniqExact(id) AS distinct_ids, \
                count() AS rows \
         FROM events FINAL WHERE workspace_id IN {ws:Array(UUID)} GROUP BY workspace",
        &workspaces,
    )
    .await?;
    let events = by_workspace(
        client,
        "SELECT toString(workspace_id) AS workspace, uniqExact(id) AS distinct_ids, \
                count() AS rows \
         FROM events WHERE workspace_id IN {ws:Array(UUID)} GROUP BY workspace",
        &workspaces,
    )
    .await?;
    let logs_final = by_workspace(
        client,
        "SELECT toString(workspace_id) AS workspace, uniqExact(id) AS distinct_ids, \
                count() AS rows \
         FROM logs FINAL WHERE workspace_id IN {ws:Array(UUID)} GROUP BY workspace",
        &workspaces,
    )
    .await?;
    let logs = by_workspace(
        client,
        "SELECT toString(workspace_id) AS workspace, uniqExact(id) AS distinct_ids, \
                count() AS rows \
         FROM logs WHERE workspace_id IN {ws:Array(UUID)} GROUP BY workspace",
        &workspaces,
    )
    .await?;
    Ok(compare(
        truth,
        &Stored {
            events_final,
            events,
            logs_final,
            logs,
        },
    ))
}

/// (distinct ids, rows) per workspace of each table, with and without FINAL.
#[derive(Default)]
struct Stored {
    events_final: BTreeMap<String, (u64, u64)>,
    events: BTreeMap<String, (u64, u64)>,
    logs_final: BTreeMap<String, (u64, u64)>,
    logs: BTreeMap<String, (u64, u64)>,
}

/// The comparison itself, apart from ClickHouse.
fn compare(truth: &GroundTruth, stored: &Stored) -> RawCounts {
    let mut out = RawCounts::default();
    for tenant in &truth.tenants {
        let ws = tenant.tenant.workspace_id.to_string();
        let (final_ids, final_rows) = stored.events_final.get(&ws).copied().unwrap_or_default();
        let (log_ids, log_rows) = stored.logs_final.get(&ws).copied().unwrap_or_default();
        let counts = TenantCounts {
            account_id: tenant.tenant.account_id.to_string(),
            workspace_id: ws.clone(),
            events_expected: tenant.events,
            duplicates_sent: tenant.duplicates_sent,
            events_final_distinct_ids: final_ids,
            events_final_rows: final_rows,
            events_rows: stored.events.get(&ws).map_or(0, |c| c.1),
            logs_expected: tenant.logs,
            logs_final_distinct_ids: log_ids,
            logs_final_rows: log_rows,
            logs_rows: stored.logs.get(&ws).map_or(0, |c| c.1),
        };
        out.events_expected += counts.events_expected;
        out.events_final_distinct_ids += counts.events_final_distinct_ids;
        out.logs_expected += counts.logs_expected;
        out.logs_final_distinct_ids += counts.logs_final_distinct_ids;
        out.events_unmerged_copies += counts
            .events_rows
            .saturating_sub(counts.events_expected + counts.duplicates_sent);
        out.logs_unmerged_copies += counts.logs_rows.saturating_sub(counts.logs_expected);
        out.mismatches.extend(counts.differences());
        out.tenants.push(counts);
    }
    out.verified = !truth.tenants.is_empty() && out.mismatches.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::TenantTruth;
    use flowhouse_schema::Tenant;
    use uuid::Uuid;

    fn truth(events: u64, logs: u64) -> (GroundTruth, String) {
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let mut one = TenantTruth::new(tenant, Vec::new(), Vec::new(), Vec::new(), Vec::new());
        (one.events, one.logs, one.duplicates_sent) = (events, logs, 2);
        let truth = GroundTruth {
            seed: 1,
            resolution_secs: 60,
            tenants: vec![one],
        };
        (truth, tenant.workspace_id.to_string())
    }

    fn one(ws: &str, distinct: u64, rows: u64) -> BTreeMap<String, (u64, u64)> {
        BTreeMap::from([(ws.to_string(), (distinct, rows))])
    }

    fn stored(ws: &str, events: [(u64, u64); 2], logs: [(u64, u64); 2]) -> Stored {
        Stored {
            events_final: one(ws, events[0].0, events[0].1),
            events: one(ws, events[1].0, events[1].1),
            logs_final: one(ws, logs[0].0, logs[0].1),
            logs: one(ws, logs[1].0, logs[1].1),
        }
    }

    #[test]
    fn exact_counts_verify_and_unmerged_copies_are_only_reported() {
        let (truth, ws) = truth(100, 40);
        let raw = compare(
            &truth,
            &stored(&ws, [(100, 100), (100, 105)], [(40, 40), (40, 43)]),
        );
        assert!(raw.verified, "{:?}", raw.mismatches);
        // 105 rows for 100 events and 2 resends: 3 copies not merged yet; 43 for 40 lines: 3.
        assert_eq!(raw.events_unmerged_copies, 3);
        assert_eq!(raw.logs_unmerged_copies, 3);
    }

    #[test]
    fn a_lost_event_and_a_duplicated_log_line_are_named() {
        let (truth, ws) = truth(100, 40);
        let raw = compare(
            &truth,
            &stored(&ws, [(99, 99), (99, 99)], [(40, 41), (40, 41)]),
        );
        assert!(!raw.verified);
        assert_eq!(raw.mismatches.len(), 3, "{:?}", raw.mismatches);
        assert!(
            raw.mismatches[0].contains("(1 lost)"),
            "{:?}",
            raw.mismatches
        );
        assert!(
            raw.mismatches[2].contains("logs FINAL rows 41, generated 40 (1 duplicated)"),
            "{:?}",
            raw.mismatches
        );
    }

    #[test]
    fn a_tenant_missing_altogether_is_all_lost() {
        let (truth, _) = truth(10, 5);
        let raw = compare(&truth, &Stored::default());
        assert!(!raw.verified);
        assert_eq!(raw.mismatches.len(), 4);
    }
}
