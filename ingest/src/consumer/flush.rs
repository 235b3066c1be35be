//! One closed batch to ClickHouse: dead letters, record its range, insert, report.

use std::sync::Arc;
use std::time::Instant;

use flowhouse_schema::Stream;
use flowhouse_service::admin::Readiness;
use tokio::sync::mpsc;

use super::in_flight::{FinishOnDrop, Slot};
use crate::batch::Batch;
use crate::dead_letter::DeadLetterProducer;
use crate::exactly_once::batch_token;
use crate::manifest::Manifest;
use crate::sink::{Backoff, Retry, Sink};
use crate::stalls::Stalls;
use crate::telemetry;

/// What a flush task needs.
#[derive(Clone)]
pub(super) struct FlushContext {
    pub(super) group: String,
    pub(super) sink: Sink,
    pub(super) manifest: Manifest,
    pub(super) dead_letters: DeadLetterProducer,
    pub(super) readiness: Readiness,
    pub(super) backoff: Backoff,
    pub(super) stalls: Stalls,
}

/// Inserts one batch: dead letters first, then record its range, insert, and report. Stops
/// between steps when its partition is revoked, so a revocation never waits on a retry loop.
pub(super) async fn flush(
    batch: Batch,
    topic: Arc<str>,
    generation: u64,
    ctx: FlushContext,
    slot: Arc<Slot>,
    done: Done,
) {
    let _finished = FinishOnDrop(slot.clone());
    let key = (batch.stream, batch.partition);
    let cancel = &slot.cancel;
    let who = format!("{topic}/{}", batch.partition);
    let retry = |what, component| Retry {
        what,
        component,
        readiness: &ctx.readiness,
        backoff: ctx.backoff,
        cancel,
        stalls: Some((&ctx.stalls, &who)),
    };
    let outcome = async {
        if !batch.dead_letters.is_empty() {
            retry("deliver dead letters", "kafka")
                .run(|| ctx.dead_letters.deliver_all(&batch.dead_letters))
                .await?;
        }
        // Every range is recorded, even one of dead letters only: the manifest is where the next
        // owner of the partition resumes.
        if !batch.recorded {
            retry("record the batch range", "clickhouse")
                .run(|| {
                    ctx.manifest
                        .record(&topic, batch.partition, batch.range, batch.rows.len())
                })
                .await?;
        }
        if !batch.rows.is_empty() {
            let token = batch_token(
                &ctx.group,
                &topic,
                batch.partition,
                batch.range.first,
                batch.range.last,
            );
            let started = Instant::now();
            retry("insert", "clickhouse")
                .run(|| ctx.sink.insert(&batch, &token))
                .await?;
            let table = batch.stream.table();
            metrics::histogram!(telemetry::INSERT_SECONDS, "table" => table)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(telemetry::BATCH_ROWS, "table" => table)
                .record(batch.rows.len() as f64);
            metrics::histogram!(telemetry::BATCH_BYTES, "table" => table)
                .record(batch.bytes as f64);
            metrics::counter!(telemetry::INSERTED_ROWS, "table" => table)
                .increment(batch.rows.len() as u64);
        }
        Some(batch.range.last + 1)
    }
    .await;
    let _ = done.send(match outcome {
        Some(next_offset) => Finished::Flushed {
            key,
            generation,
            next_offset,
        },
        None => Finished::Abandoned { key, generation },
    });
}

pub(super) type Done = mpsc::UnboundedSender<Finished>;

pub(super) enum Finished {
    Flushed {
        key: (Stream, i32),
        generation: u64,
        next_offset: i64,
    },
    Abandoned {
        key: (Stream, i32),
        generation: u64,
    },
}
