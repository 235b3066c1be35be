//! Inserting a batch: RowBinary with LZ4 through the official client, under the batch's
//! deduplication token, retried until it succeeds or the partition is given up (revoked,
//! shutdown): with exponential backoff and full jitter while the failure is transient, slowly
//! and loudly while it is permanent (see [`crate::errors`]).

use std::future::Future;
use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowWrite};
use flowhouse_service::admin::Readiness;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Rows};
use crate::errors::{Classify, ErrorClass};
use crate::stalls::Stalls;
use crate::telemetry;

/// The insert side of ClickHouse.
#[derive(Clone)]
pub struct Sink {
    client: Client,
}

impl Sink {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Inserts the batch's rows with `token`. A repeated call with the same token and rows is
    /// dropped by ClickHouse, in the raw table and in every materialized view.
    pub async fn insert(&self, batch: &Batch, token: &str) -> clickhouse::error::Result<()> {
        let result = match &batch.rows {
            Rows::Events(rows) => self.insert_rows("events", rows, token).await,
            Rows::Logs(rows) => self.insert_rows("logs", rows, token).await,
        };
        forget_schema_on_permanent(&self.client, result).await
    }

    async fn insert_rows<T>(
        &self,
        table: &str,
        rows: &[T],
        token: &str,
    ) -> clickhouse::error::Result<()>
    where
        T: Row + RowOwned + RowWrite,
    {
        let mut insert = self
            .client
            .insert::<T>(table)
            .await?
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
            // Our batches are the batching; the server must not batch them again.
            .with_setting("async_insert", "0");
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

/// The client caches each table's columns for its inserts; after a permanent error (a column
/// renamed, a table replaced) they may be stale, and must be read again once the schema is fixed.
pub(crate) async fn forget_schema_on_permanent<T>(
    client: &Client,
    result: clickhouse::error::Result<T>,
) -> clickhouse::error::Result<T> {
    if let Err(error) = &result
        && matches!(error.class(), ErrorClass::Permanent(_))
    {
        client.clear_cached_metadata().await;
    }
    result
}

/// Exponential backoff with full jitter (AWS architecture blog's "full jitter") for transient
/// failures; a long, lightly jittered wait for permanent ones.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// About how long to wait after a permanent failure: long enough not to flood ClickHouse
    /// and the log with a failure that needs an operator, short enough to resume soon after.
    pub permanent: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            permanent: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }

    /// Between half and all of `permanent`, so that stalled partitions do not retry in step.
    fn permanent_delay(&self) -> Duration {
        self.permanent
            .mul_f64(0.5 + rand::rng().random::<f64>() / 2.0)
    }
}

/// How one step is retried, and where its failures are reported.
pub struct Retry<'a> {
    /// The step, for logs and the `step` label of the metrics.
    pub what: &'static str,
    /// The readiness component a transient failure makes not ready.
    pub component: &'static str,
    pub readiness: &'a Readiness,
    pub backoff: Backoff,
    pub cancel: &'a CancellationToken,
    /// Where a permanent failure is reported, and who it holds up (a partition).
    pub stalls: Option<(&'a Stalls, &'a str)>,
}

impl Retry<'_> {
    /// Runs `step` until it succeeds; `None` if `cancel` fires first. Every failure is logged
    /// and counted. A transient one makes `component` not ready after a few attempts, with the
    /// last error, so that `/readyz` says what is wrong while nothing is lost; a permanent one
    /// stalls at once, with the remedy, and is retried slowly until someone fixes it.
    pub async fn run<T, E, F, Fut>(&self, mut step: F) -> Option<T>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u32;
        let mut stalled = false;
        let outcome = loop {
            if self.cancel.is_cancelled() {
                break None;
            }
            let error = match step().await {
                Ok(value) => {
                    if attempt >= 3 {
                        tracing::info!(
                            what = self.what,
                            attempts = attempt + 1,
                            "succeeded after retries"
                        );
                    }
                    self.readiness.ready(self.component);
                    break Some(value);
                }
                Err(error) => error,
            };
            metrics::counter!(telemetry::RETRIES, "step" => self.what).increment(1);
            let delay = match error.class() {
                ErrorClass::Transient => {
                    if attempt >= 2 {
                        self.readiness
                            .not_ready(self.component, format!("{} failing: {error}", self.what));
                    }
                    tracing::warn!(what = self.what, attempt, %error, "failed; retrying");
                    self.backoff.delay(attempt + 1)
                }
                ErrorClass::Permanent(permanent) => {
                    metrics::counter!(telemetry::PERMANENT_ERRORS, "step" => self.what, "error" => permanent.name)
                        .increment(1);
                    tracing::error!(
                        what = self.what,
                        who = self.stalls.map_or("", |(_, who)| who),
                        error = permanent.name,
                        code = permanent.code,
                        detail = %error,
                        "ClickHouse refuses this until someone acts: {}; waiting and retrying \
                         (nothing is skipped or lost)",
                        permanent.remedy
                    );
                    if let Some((stalls, who)) = self.stalls {
                        stalls.stall(
                            who,
                            format!(
                                "{} refused by ClickHouse ({}): {error}. Fix: {}",
                                self.what, permanent.name, permanent.remedy
                            ),
                        );
                        stalled = true;
                    }
                    self.backoff.permanent_delay()
                }
            };
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => break None,
            }
        };
        if stalled && let Some((stalls, who)) = self.stalls {
            stalls.clear(who);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_stays_under_it() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            permanent: Duration::from_secs(20),
        };
        for attempt in 0..40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt.min(16)))
                .min(Duration::from_secs(2));
            assert!(backoff.delay(attempt) <= ceiling);
            let permanent = backoff.permanent_delay();
            assert!(permanent >= Duration::from_secs(10) && permanent <= Duration::from_secs(20));
        }
    }

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            permanent: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn retry_stops_on_success_and_on_cancel() {
        let readiness = Readiness::default();
        let cancel = CancellationToken::new();
        let retry = Retry {
            what: "test step",
            component: "clickhouse",
            readiness: &readiness,
            backoff: fast(),
            cancel: &cancel,
            stalls: None,
        };
        let mut calls = 0;
        let value = retry
            .run(|| {
                calls += 1;
                let result = if calls < 4 { Err("not yet") } else { Ok(calls) };
                async move { result }
            })
            .await;
        assert_eq!(value, Some(4));
        assert!(readiness.is_ready());

        cancel.cancel();
        let never: Option<()> = retry.run(|| async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }

    #[tokio::test]
    async fn a_permanent_failure_stalls_the_partition_until_it_succeeds() {
        let readiness = Readiness::default();
        let stalls = Stalls::new(readiness.clone());
        let cancel = CancellationToken::new();
        let retry = Retry {
            what: "insert",
            component: "clickhouse",
            readiness: &readiness,
            backoff: fast(),
            cancel: &cancel,
            stalls: Some((&stalls, "logs/0")),
        };
        let mut calls = 0;
        let mut stalled_while_failing = false;
        let value = retry
            .run(|| {
                calls += 1;
                // After the first failure, the partition is reported at once (no grace attempts).
                if calls == 2 {
                    stalled_while_failing = !readiness.is_ready();
                }
                let result = if calls < 3 {
                    Err(clickhouse::error::Error::BadResponse(
                        "Code: 16. DB::Exception: No such column m in table logs. \
                         (NO_SUCH_COLUMN_IN_TABLE)"
                            .into(),
                    ))
                } else {
                    Ok(calls)
                };
                async move { result }
            })
            .await;
        assert_eq!(value, Some(3));
        assert!(stalled_while_failing);
        assert!(readiness.is_ready(), "no longer stalled once it succeeded");
    }
}
