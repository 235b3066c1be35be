//! One evaluator per automation at a time: leases over shards of automations, kept in
//! ClickHouse, and the argument that a firing is delivered exactly once (by idempotency key).
//!
//! ## Leases
//! Metric automations are split into `shards` by id; event automations go with the partition
//! of the events topic their tenant's events are in (`crate::stream`). A shard's or a
//! partition's lease is a sequence of *terms*; the
//! table `automation_leases` is append-only: a claim or a renewal is a row `(scope, term,
//! owner, claimed_at, expires)`.
//!
//! - The **owner of term T** is the owner of the earliest claim of T (least `claimed_at`,
//!   then least owner id): a deterministic function of the rows, the same for every reader
//!   that sees them.
//! - **Claiming**: an evaluator reads the latest term T. If T's owner is someone else and T
//!   has not expired, it does nothing. Otherwise it inserts a claim for T+1, waits `settle`,
//!   reads T+1's claims back and owns the shard only if its claim is the earliest.
//! - **Renewing**: the owner inserts a row of its term with a later `expires`; a term's
//!   expiry is its owner's latest `expires`. An owner that finds its term expired never
//!   renews it: it claims a new term like anyone else.
//! - **Acting**: an owner evaluates and delivers only while `now + margin < expires`, where
//!   `margin` covers one evaluation round with its deliveries (timeouts bound it).
//!
//! Why two evaluators never own one term: say A and B both claim T+1. ClickHouse inserts are
//! visible once acknowledged. If B's claim is visible when A reads back, both compute the same
//! earliest claim, and one of them defers. If it is not, B inserted after A's read-back, at
//! A's `claimed_at + settle` or later in A's clock, so B's `claimed_at` is later than A's as
//! long as the clocks differ by less than `settle`: B sees A's earlier claim and defers.
//! Assumption, stated: **clock skew between evaluators is below `settle`** (default 1 s) and
//! **an evaluator is not paused for longer than `margin`** between checking its lease and
//! finishing a delivery. If that is violated, two evaluators may both deliver a firing, and
//! the idempotency key (below) is what the receiver deduplicates on.
//!
//! ## A firing, step by step (see `evaluate::Evaluator`)
//! A transition (breached → resolved or back) of one automation's bucket is named by a
//! deterministic key: `{automation}/{bucket hash}/{seq}/{triggered|resolved}`, `seq` the
//! bucket's transition count, kept in its state row.
//!
//! 1. **decided**: the state row with the new `seq`, the new breached flag and the pending
//!    delivery (key, context) is written. Crash before: nothing happened; the next owner
//!    evaluates from the old state and decides the same transition (same `seq`, same key).
//! 2. **sent**: each action is delivered with `Idempotency-Key: {key}/{action index}`, retried
//!    with backoff within the attempt; the event `prefect.automation.triggered|resolved` gets
//!    the id `uuid5(key)`, so a second copy collapses in `events` (ReplacingMergeTree).
//!    Each attempt is appended to the delivery log. Crash during or after: the state row still
//!    has the pending delivery, and the next owner re-sends it, with the same key, before it
//!    evaluates anything: at most one extra attempt per action after a crash.
//! 3. **acknowledged**: the state row is written again without the pending delivery. Crash
//!    after: nothing is re-sent.
//!
//! A state row is written only by the lease's owner, each time with the previous version plus
//! one (ReplacingMergeTree on `version`), so the latest write wins however merges go.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

#[derive(Debug, Row, Serialize, Deserialize)]
struct LeaseRow {
    scope: String,
    term: u64,
    owner: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    claimed_at: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    expires: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// How long a claim or a renewal holds.
    pub ttl: Duration,
    /// How long a claimant waits before reading its claim back (> clock skew).
    pub settle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            settle: Duration::from_secs(1),
        }
    }
}

/// A held term of a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub term: u64,
    pub expires: DateTime<Utc>,
}

/// The state of one scope's latest term, as every reader computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub term: u64,
    pub owner: String,
    pub expires: DateTime<Utc>,
}

/// The owner of a term from its rows: the earliest claim, then the least owner id; its
/// expiry is that owner's latest `expires`.
fn owner_of(rows: &[(String, DateTime<Utc>, DateTime<Utc>)]) -> Option<(String, DateTime<Utc>)> {
    let (owner, _, _) = rows
        .iter()
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))?;
    let expires = rows.iter().filter(|r| &r.0 == owner).map(|r| r.2).max()?;
    Some((owner.clone(), expires))
}

#[derive(Clone)]
pub struct Leases {
    client: Client,
    owner: String,
    config: LeaseConfig,
}

impl Leases {
    pub fn new(client: Client, owner: String, config: LeaseConfig) -> Self {
        Self {
            client,
            owner,
            config,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn term_rows(
        &self,
        scope: &str,
        term: Option<u64>,
    ) -> anyhow::Result<(u64, Vec<(String, DateTime<Utc>, DateTime<Utc>)>)> {
        let rows: Vec<LeaseRow> = match term {
            Some(term) => self
                .client
                .query(
                    "SELECT ?fields FROM automation_leases
                     WHERE scope = {scope:String} AND term = {term:UInt64}",
                )
                .param("scope", scope)
                .param("term", term),
            None => self
                .client
                .query(
                    "SELECT ?fields FROM automation_leases
                     WHERE scope = {scope:String} AND term =
                        (SELECT max(term) FROM automation_leases WHERE scope = {scope:String})",
                )
                .param("scope", scope),
        }
        .fetch_all()
        .await
        .context("cannot read the automations' leases")?;
        let term = term.or_else(|| rows.first().map(|r| r.term)).unwrap_or(0);
        Ok((
            term,
            rows.into_iter()
                .map(|r| (r.owner, r.claimed_at, r.expires))
                .collect(),
        ))
    }

    async fn insert(
        &self,
        scope: &str,
        term: u64,
        now: DateTime<Utc>,
    ) -> anyhow::Result<DateTime<Utc>> {
        let expires = now + chrono::Duration::from_std(self.config.ttl)?;
        let mut insert = self.client.insert::<LeaseRow>("automation_leases").await?;
        insert
            .write(&LeaseRow {
                scope: scope.to_string(),
                term,
                owner: self.owner.clone(),
                claimed_at: now,
                expires,
            })
            .await?;
        insert.end().await.context("cannot write a lease")?;
        Ok(expires)
    }

    /// The latest term of `scope`, if any.
    pub async fn current(&self, scope: &str) -> anyhow::Result<Option<Term>> {
        let (term, rows) = self.term_rows(scope, None).await?;
        Ok(owner_of(&rows).map(|(owner, expires)| Term {
            term,
            owner,
            expires,
        }))
    }

    /// Holds `scope` (claiming or renewing as needed) or says who does. Time is the system's.
    pub async fn hold(&self, scope: &str) -> anyhow::Result<Option<Held>> {
        let now = Utc::now();
        let current = self.current(scope).await?;
        let next = match &current {
            Some(t) if t.owner == self.owner && t.expires > now => {
                // Renew once half the lease is gone.
                let half = chrono::Duration::from_std(self.config.ttl / 2)?;
                if t.expires - now < half {
                    let expires = self.insert(scope, t.term, now).await?;
                    return Ok(Some(Held {
                        term: t.term,
                        expires,
                    }));
                }
                return Ok(Some(Held {
                    term: t.term,
                    expires: t.expires,
                }));
            }
            Some(t) if t.expires > now => return Ok(None),
            Some(t) => t.term + 1,
            None => 1,
        };
        self.insert(scope, next, now).await?;
        tokio::time::sleep(self.config.settle).await;
        let (_, rows) = self.term_rows(scope, Some(next)).await?;
        Ok(match owner_of(&rows) {
            Some((owner, expires)) if owner == self.owner && expires > Utc::now() => Some(Held {
                term: next,
                expires,
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_claim_owns_the_term_and_its_owner_renews_it() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let rows = vec![
            ("b".to_string(), t(1), t(31)),
            ("a".to_string(), t(2), t(32)),
            ("b".to_string(), t(20), t(50)),
        ];
        assert_eq!(owner_of(&rows), Some(("b".to_string(), t(50))));
        // A tie on the claim time goes to the least owner id, for every reader alike.
        let tie = vec![
            ("b".to_string(), t(1), t(31)),
            ("a".to_string(), t(1), t(31)),
        ];
        assert_eq!(owner_of(&tie), Some(("a".to_string(), t(31))));
        assert_eq!(owner_of(&[]), None);
    }
}
