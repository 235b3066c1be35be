//! Migration 4's definitions: automations (issue 16). The definitions, each automation's
//! evaluation state, its delivery log, and the leases that give one evaluator an automation at
//! a time. The argument for exactly-once firing is in `automations/src/lease.rs`.

use super::Table;

/// One row per version of an automation: the body is the automation as the API returned it
/// (JSON, Prefect's shape). The latest `updated` wins (read with FINAL); a deletion is a
/// version with `deleted = 1`.
pub(crate) const AUTOMATIONS: Table = Table {
    name: "automations",
    columns: "
    account_id UUID,
    workspace_id UUID,
    id UUID,
    name String,
    enabled UInt8,
    deleted UInt8,
    body String,
    created DateTime64(6, 'UTC'),
    updated DateTime64(6, 'UTC')
",
    engine: "ReplacingMergeTree",
    engine_args: "updated",
    partition_by: None,
    order_by: "account_id, workspace_id, id",
    ttl: None,
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 4,
};

/// The evaluation state of one automation's bucket (`bucket` is `''` without `for_each`):
/// whether it is breached, since when its current condition holds, how many transitions it
/// has made (`seq`, the firing sequence that names deliveries) and the delivery decided but
/// not yet acknowledged (`pending`, JSON, `''` when none). Written only by the lease's owner,
/// each write with the previous `version` plus one (ReplacingMergeTree, read with FINAL).
pub(crate) const AUTOMATION_STATE: Table = Table {
    name: "automation_state",
    columns: "
    account_id UUID,
    workspace_id UUID,
    automation_id UUID,
    bucket String,
    version UInt64,
    seq UInt64,
    breached UInt8,
    observed UInt8,
    observed_since DateTime64(6, 'UTC'),
    last_fired Nullable(DateTime64(6, 'UTC')),
    last_value Float64,
    pending String,
    updated DateTime64(6, 'UTC') DEFAULT now64(6)
",
    engine: "ReplacingMergeTree",
    engine_args: "version",
    partition_by: None,
    order_by: "account_id, workspace_id, automation_id, bucket",
    ttl: None,
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 4,
};

/// Every delivery attempt of every firing (webhook calls and emitted events), append-only:
/// `GET /automations/{id}/deliveries` reads it.
pub(crate) const AUTOMATION_DELIVERIES: Table = Table {
    name: "automation_deliveries",
    columns: "
    account_id UUID,
    workspace_id UUID,
    automation_id UUID,
    at DateTime64(6, 'UTC'),
    idempotency_key String,
    transition LowCardinality(String),
    action LowCardinality(String),
    attempt UInt32,
    outcome LowCardinality(String),
    status UInt16,
    error String,
    fired_at DateTime64(6, 'UTC'),
    bucket String,
    value Float64
",
    engine: "MergeTree",
    engine_args: "",
    partition_by: None,
    order_by: "account_id, workspace_id, automation_id, at",
    ttl: None,
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 4,
};

/// Claims and renewals of the evaluators' leases, append-only: one full copy on every node, like
/// the other bookkeeping. Rows expire a day after their lease.
pub(crate) const AUTOMATION_LEASES: Table = Table {
    name: "automation_leases",
    columns: "
    scope String,
    term UInt64,
    owner String,
    claimed_at DateTime64(6, 'UTC'),
    expires DateTime64(6, 'UTC')
",
    engine: "MergeTree",
    engine_args: "",
    partition_by: None,
    order_by: "scope, term, claimed_at",
    ttl: Some("toDateTime(expires) + toIntervalDay(1)"),
    settings: "",
    shard_key: "",
    everywhere: true,
    revision: 4,
};
