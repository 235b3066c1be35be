//! Inserting a batch: RowBinary with LZ4 through the official client, under the batch's
//! deduplication token, retried with exponential backoff and full jitter until it succeeds or the
//! partition is given up (revoked, shutdown).

use std::future::Future;
use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowWrite};
use flowhouse_service::admin::Readiness;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Rows};

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
        match &batch.rows {
            Rows::Events(rows) => self.insert_rows("events", rows, token).await,
            Rows::Logs(rows) => self.insert_rows("logs", rows, token).await,
        }
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

/// Exponential backoff with full jitter (AWS architecture blog's "full jitter").
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
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
}

/// Runs `step` until it succeeds; `None` if `cancel` fires first. Every failure is logged and
/// counted; after a few, readiness reports `component` as not ready with the last error, so that
/// `/readyz` says what is wrong while nothing is lost.
pub async fn retry<T, E, F, Fut>(
    what: &'static str,
    component: &'static str,
    readiness: &Readiness,
    backoff: Backoff,
    cancel: &CancellationToken,
    mut step: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        match step().await {
            Ok(value) => {
                if attempt >= 3 {
                    tracing::info!(what, attempts = attempt + 1, "succeeded after retries");
                }
                readiness.ready(component);
                return Some(value);
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::RETRIES, "step" => what).increment(1);
                let error = error.to_string();
                if attempt >= 2 {
                    readiness.not_ready(component, format!("{what} failing: {error}"));
                }
                tracing::warn!(what, attempt, %error, "failed; retrying");
                attempt += 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
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
        };
        for attempt in 0..40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt.min(16)))
                .min(Duration::from_secs(2));
            assert!(backoff.delay(attempt) <= ceiling);
        }
    }

    #[tokio::test]
    async fn retry_stops_on_success_and_on_cancel() {
        let readiness = Readiness::default();
        let cancel = CancellationToken::new();
        let fast = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut calls = 0;
        let value = retry("test step", "clickhouse", &readiness, fast, &cancel, || {
            calls += 1;
            let result = if calls < 4 { Err("not yet") } else { Ok(calls) };
            async move { result }
        })
        .await;
        assert_eq!(value, Some(4));
        assert!(readiness.is_ready());

        cancel.cancel();
        let never: Option<()> = retry(
            "test step",
            "clickhouse",
            &readiness,
            fast,
            &cancel,
            || async { Err::<(), _>("down") },
        )
        .await;
        assert_eq!(never, None);
    }
}
