//! Carrying out the gate's answers: the earliest offset of a partition and seeks are blocking
//! client calls (up to 10 s each), so they run on the blocking pool and report back to the
//! consume loop, which keeps consuming meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Ingest;
use super::context::IngestContext;
use super::state::{Assignment, Key, State};

/// How long one blocking client call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one call before the gate is told it failed (it asks again on a later message).
const ATTEMPTS: u32 = 5;

/// The answer to a call made for a partition's gate.
pub(super) struct GateEvent {
    key: Key,
    generation: u64,
    outcome: Outcome,
}

enum Outcome {
    Low(Option<i64>),
    Seeked(bool),
}

impl Ingest {
    pub(super) fn spawn_fetch_low(
        &self,
        key: Key,
        assignment: &Assignment,
        events: &mpsc::UnboundedSender<GateEvent>,
    ) {
        let topic = self.topics[&key.0].clone();
        let call = move |consumer: &StreamConsumer<IngestContext>| {
            consumer
                .fetch_watermarks(&topic, key.1, CALL_TIMEOUT)
                .map(|(low, _)| low)
        };
        self.spawn_call(
            "fetch the earliest offset",
            key,
            assignment,
            events,
            call,
            Outcome::Low,
        );
    }

    pub(super) fn spawn_seek(
        &self,
        key: Key,
        assignment: &Assignment,
        target: i64,
        events: &mpsc::UnboundedSender<GateEvent>,
    ) {
        let topic = self.topics[&key.0].clone();
        let call = move |consumer: &StreamConsumer<IngestContext>| {
            consumer.seek(&topic, key.1, Offset::Offset(target), CALL_TIMEOUT)
        };
        let outcome = |done: Option<()>| Outcome::Seeked(done.is_some());
        self.spawn_call("seek", key, assignment, events, call, outcome);
    }

    /// Runs `call` for the partition's gate off the consume loop; its `outcome` comes back as a
    /// [`GateEvent`] of this assignment's generation.
    fn spawn_call<T, F>(
        &self,
        what: &'static str,
        key: Key,
        assignment: &Assignment,
        events: &mpsc::UnboundedSender<GateEvent>,
        call: F,
        outcome: fn(Option<T>) -> Outcome,
    ) where
        T: Send + 'static,
        F: Fn(&StreamConsumer<IngestContext>) -> KafkaResult<T> + Send + Clone + 'static,
    {
        let (consumer, cancel, events) = (
            self.consumer.clone(),
            assignment.cancel.clone(),
            events.clone(),
        );
        let generation = assignment.generation;
        tokio::spawn(async move {
            let result = call_retried(what, consumer, &cancel, call).await;
            let _ = events.send(GateEvent {
                key,
                generation,
                outcome: outcome(result),
            });
        });
    }

    /// Starts the seeks the gates owe after a failed one (see [`super::gate::Gate::retry_seek`]).
    pub(super) fn retry_seeks(&self, state: &mut State, events: &mpsc::UnboundedSender<GateEvent>) {
        let now = Instant::now();
        for (&key, assignment) in &mut state.assigned {
            if let Some(target) = assignment
                .gate
                .as_mut()
                .and_then(|gate| gate.retry_seek(now))
            {
                self.spawn_seek(key, assignment, target, events);
            }
        }
    }

    /// Hands an answer to the gate it was asked for, unless the partition was reassigned since.
    pub(super) fn on_gate_event(
        &self,
        state: &mut State,
        event: GateEvent,
        events: &mpsc::UnboundedSender<GateEvent>,
    ) {
        let Some(assignment) = state.assignment(event.key, event.generation) else {
            return;
        };
        let Some(gate) = assignment.gate.as_mut() else {
            return;
        };
        let now = Instant::now();
        match event.outcome {
            Outcome::Low(Some(low)) => {
                if let Some(target) = gate.low_fetched(low) {
                    self.spawn_seek(event.key, assignment, target, events);
                }
            }
            Outcome::Low(None) => gate.low_failed(),
            Outcome::Seeked(ok) => gate.seek_finished(ok, now),
        }
    }
}

/// Runs a blocking client call on the blocking pool, a few times if it fails; `None` if it never
/// succeeded or the partition went away.
async fn call_retried<T, F>(
    what: &'static str,
    consumer: Arc<StreamConsumer<IngestContext>>,
    cancel: &CancellationToken,
    call: F,
) -> Option<T>
where
    T: Send + 'static,
    F: Fn(&StreamConsumer<IngestContext>) -> KafkaResult<T> + Clone + Send + 'static,
{
    for attempt in 1..=ATTEMPTS {
        if cancel.is_cancelled() {
            return None;
        }
        let (consumer, call) = (consumer.clone(), call.clone());
        match tokio::task::spawn_blocking(move || call(&consumer)).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(error)) => tracing::warn!(what, attempt, %error, "Kafka call failed"),
            Err(error) => tracing::warn!(what, attempt, %error, "Kafka call panicked"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = cancel.cancelled() => return None,
        }
    }
    None
}
