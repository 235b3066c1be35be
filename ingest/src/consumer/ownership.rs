//! Partitions with messages waiting that no member of the group consumes, and rejoining the
//! group until someone does.
//!
//! A broker hands a crashed member's partitions to the others once its session expires. tansu
//! does so only when a member *joins* after that (see the README's tansu findings): a process
//! restarted after a kill -9 can sit in the group with no partitions, or some, while the dead
//! member keeps the rest and nothing reads them. So every few seconds, when this process does not
//! own every partition, it looks at the ones it does not own: messages waiting (the committed
//! offset below the end of the log) and no progress from their owner (neither the committed
//! offset nor the manifest's latest range moved for a while) means nobody consumes them. Then it
//! leaves and joins the group again, at most once per growing interval while that lasts: the
//! join makes the broker evict the dead members whose session is over and hand out all the
//! partitions. A live owner, even a slow one, moves its manifest range within seconds, so it is
//! left alone.
//!
//! Reported as the gauge `flowhouse_ingest_unowned_partitions` and the `/readyz` component
//! `partitions`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use tokio::sync::mpsc;

use super::Ingest;
use super::commit::COMMIT_INTERVAL;
use super::context::IngestContext;
use super::state::State;
use crate::telemetry;

/// How often ownership is checked (only while this process does not own every partition).
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(3);
/// How long a partition with messages waiting may show no progress before it counts as
/// unowned: an owner records a batch range every second or so while messages arrive (the batch
/// age), and commits what it inserted at most one commit interval later. Two intervals leave
/// room for a slow insert: a false alarm costs a needless rebalance of the whole group.
const IDLE_AFTER: Duration = Duration::from_secs(2 * COMMIT_INTERVAL.as_secs());
/// The wait between two rejoins while partitions stay unowned, doubling up to the maximum: a
/// rejoin before the dead members' sessions expire cannot help yet.
const FIRST_REJOIN_WAIT: Duration = Duration::from_secs(10);
const MAX_REJOIN_WAIT: Duration = Duration::from_secs(120);
/// How long one blocking client call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The readiness component for partitions nobody consumes.
pub(super) const COMPONENT: &str = "partitions";

type TopicPartition = (String, i32);
/// What moves when an owner makes progress: the committed offset and the recorded range's end.
type Marker = (Option<i64>, Option<i64>);

/// One partition of a subscribed topic, as the broker and the manifest see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The log's earliest offset and its end.
    pub(super) low: i64,
    pub(super) high: i64,
    /// The group's committed offset, and the last offset of the manifest's latest range.
    pub(super) committed: Option<i64>,
    pub(super) recorded: Option<i64>,
}

/// What one check concluded.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Partitions with messages waiting that nobody has consumed for a while.
    pub(super) unowned: Vec<TopicPartition>,
    /// Whether to leave and join the group now.
    pub(super) rejoin: bool,
}

/// The progress of the partitions this process does not own, across checks. Pure: the loop
/// feeds it what the broker and the manifest say, and the time.
pub(super) struct Ownership {
    /// Each partition's last progress marker (committed offset, recorded range), and since when.
    markers: HashMap<TopicPartition, (Marker, Instant)>,
    last_rejoin: Option<Instant>,
    rejoin_wait: Duration,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            markers: HashMap::new(),
            last_rejoin: None,
            rejoin_wait: FIRST_REJOIN_WAIT,
        }
    }
}

impl Ownership {
    /// `owned`: this process's assignment; `steady`: whether the client is between rebalances
    /// (during one it is joining already).
    pub(super) fn observe(
        &mut self,
        now: Instant,
        seen: &[Seen],
        owned: &HashSet<TopicPartition>,
        steady: bool,
    ) -> Verdict {
        let mut unowned = Vec::new();
        let mut markers = HashMap::with_capacity(seen.len());
        for partition in seen {
            let key = (partition.topic.clone(), partition.partition);
            let marker = (partition.committed, partition.recorded);
            let since = match self.markers.get(&key) {
                Some(&(previous, since)) if previous == marker => since,
                _ => now,
            };
            markers.insert(key.clone(), (marker, since));
            // Only the committed offset says what is stored: a recorded range may not be
            // inserted yet, and only an owner replays it.
            let consumed = partition.committed.unwrap_or(0).max(partition.low);
            if !owned.contains(&key)
                && partition.high > consumed
                && now.saturating_duration_since(since) >= IDLE_AFTER
            {
                unowned.push(key);
            }
        }
        self.markers = markers;
        if unowned.is_empty() {
            self.last_rejoin = None;
            self.rejoin_wait = FIRST_REJOIN_WAIT;
            return Verdict {
                unowned,
                rejoin: false,
            };
        }
        let due = self
            .last_rejoin
            .is_none_or(|at| now.saturating_duration_since(at) >= self.rejoin_wait);
        let rejoin = steady && due;
        if rejoin {
            if self.last_rejoin.is_some() {
                self.rejoin_wait = (self.rejoin_wait * 2).min(MAX_REJOIN_WAIT);
            }
            self.last_rejoin = Some(now);
        }
        Verdict { unowned, rejoin }
    }
}

/// What a check found: every partition of the subscribed topics, or none when this process
/// owns them all (then there is nothing to look at).
pub(super) type Found = Result<Vec<Seen>, String>;

impl Ingest {
    /// Starts a check on the blocking pool (metadata, offsets) and ClickHouse (the manifest);
    /// the answer comes back on `found`.
    pub(super) fn spawn_ownership_check(
        &self,
        state: &State,
        found: &mpsc::UnboundedSender<Found>,
    ) {
        let owned: HashSet<TopicPartition> = state
            .assigned
            .keys()
            .map(|(stream, partition)| (self.topics[stream].to_string(), *partition))
            .collect();
        let topics: Vec<Arc<str>> = self.topics.values().cloned().collect();
        let consumer = self.consumer.clone();
        let manifest = self.flush.manifest.clone();
        let found = found.clone();
        tokio::spawn(async move {
            let broker =
                tokio::task::spawn_blocking(move || broker_view(&consumer, &topics, &owned))
                    .await
                    .map_err(|error| error.to_string())
                    .and_then(|view| view.map_err(|error| error.to_string()));
            let mut seen = match broker {
                Ok(seen) => seen,
                Err(error) => {
                    let _ = found.send(Err(error));
                    return;
                }
            };
            let mut topics: Vec<String> = seen.iter().map(|s| s.topic.clone()).collect();
            topics.dedup();
            for topic in topics {
                match manifest.latest(&topic).await {
                    Ok(latest) => {
                        for partition in seen.iter_mut().filter(|s| s.topic == topic) {
                            partition.recorded = latest.get(&partition.partition).map(|r| r.last);
                        }
                    }
                    Err(error) => {
                        let _ = found.send(Err(error.to_string()));
                        return;
                    }
                }
            }
            let _ = found.send(Ok(seen));
        });
    }

    /// Acts on a check: reports, and rejoins the group when partitions sit unowned.
    pub(super) fn on_ownership(&self, state: &mut State, found: Found) {
        state.checking = false;
        let seen = match found {
            Ok(seen) => seen,
            Err(error) => {
                tracing::debug!(%error, "ownership check failed; trying again later");
                return;
            }
        };
        let owned: HashSet<TopicPartition> = state
            .assigned
            .keys()
            .map(|(stream, partition)| (self.topics[stream].to_string(), *partition))
            .collect();
        let steady = state.steady;
        let verdict = state
            .ownership
            .observe(Instant::now(), &seen, &owned, steady);
        metrics::gauge!(telemetry::UNOWNED_PARTITIONS).set(verdict.unowned.len() as f64);
        let readiness = &self.flush.readiness;
        if verdict.unowned.is_empty() {
            readiness.ready(COMPONENT);
            return;
        }
        let names: Vec<String> = verdict
            .unowned
            .iter()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        readiness.not_ready(
            COMPONENT,
            format!(
                "{} have messages waiting and no consumer making progress (a crashed member the \
                 broker has not replaced yet?): rejoining the group",
                names.join(", ")
            ),
        );
        if verdict.rejoin {
            tracing::warn!(
                unowned = ?names,
                owned = owned.len(),
                "partitions with messages waiting are not consumed by anyone: rejoining the group"
            );
            metrics::counter!(telemetry::REJOINS).increment(1);
            let consumer = self.consumer.clone();
            let topics: Vec<String> = self.topics.values().map(|t| t.to_string()).collect();
            tokio::task::spawn_blocking(move || {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.unsubscribe();
                if let Err(error) = consumer.subscribe(&topics) {
                    tracing::error!(%error, "cannot subscribe again");
                }
            });
        }
    }
}

/// Every partition of `topics` with its offsets, unless `owned` covers them all. Blocking.
fn broker_view(
    consumer: &StreamConsumer<IngestContext>,
    topics: &[Arc<str>],
    owned: &HashSet<TopicPartition>,
) -> KafkaResult<Vec<Seen>> {
    let mut all = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            all.push((topic.to_string(), partition.id()));
        }
    }
    if all.iter().all(|key| owned.contains(key)) {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition) in &all {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, CALL_TIMEOUT)?;
    let mut seen = Vec::with_capacity(all.len());
    for (topic, partition) in all {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
        let committed = committed
            .find_partition(&topic, partition)
            .and_then(|element| element.offset().to_raw())
            .filter(|&offset| offset >= 0);
        seen.push(Seen {
            topic,
            partition,
            low,
            high,
            committed,
            recorded: None,
        });
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(partition: i32, committed: i64, recorded: i64, high: i64) -> Seen {
        Seen {
            topic: "t".into(),
            partition,
            low: 0,
            high,
            committed: Some(committed),
            recorded: Some(recorded),
        }
    }

    fn owned(partitions: &[i32]) -> HashSet<TopicPartition> {
        partitions.iter().map(|&p| ("t".to_string(), p)).collect()
    }

    #[test]
    fn a_partition_with_messages_waiting_and_no_progress_is_unowned_and_triggers_a_rejoin() {
        let t0 = Instant::now();
        let mut ownership = Ownership::default();
        let view = [seen(0, 10, 9, 50), seen(1, 10, 9, 50)];
        let verdict = ownership.observe(t0, &view, &owned(&[0]), true);
        assert!(verdict.unowned.is_empty(), "no progress seen for long yet");
        let verdict = ownership.observe(t0 + IDLE_AFTER, &view, &owned(&[0]), true);
        assert_eq!(verdict.unowned, vec![("t".to_string(), 1)]);
        assert!(verdict.rejoin);
        // Still unowned right after: no second rejoin before the wait...
        let later = t0 + IDLE_AFTER + CHECK_EVERY;
        assert!(!ownership.observe(later, &view, &owned(&[0]), true).rejoin);
        // ...then one, and the next wait is twice as long.
        let later = t0 + IDLE_AFTER + FIRST_REJOIN_WAIT;
        assert!(ownership.observe(later, &view, &owned(&[0]), true).rejoin);
        let sooner = later + FIRST_REJOIN_WAIT;
        assert!(!ownership.observe(sooner, &view, &owned(&[0]), true).rejoin);
        assert!(
            ownership
                .observe(later + FIRST_REJOIN_WAIT * 2, &view, &owned(&[0]), true)
                .rejoin
        );
    }

    #[test]
    fn an_owner_making_progress_or_a_consumed_log_or_a_rebalance_under_way_is_left_alone() {
        let t0 = Instant::now();
        let mut ownership = Ownership::default();
        let mut now = t0;
        for step in 0..5 {
            // A peer owns partition 1 and its manifest range moves: a live owner.
            let view = [seen(1, 10, 9 + step, 50)];
            let verdict = ownership.observe(now, &view, &owned(&[0]), true);
            assert!(verdict.unowned.is_empty(), "step {step}");
            now += IDLE_AFTER;
        }
        // Nothing waiting (committed at the end): nobody needs to own it.
        let view = [seen(2, 50, 49, 50)];
        ownership.observe(now, &view, &owned(&[]), true);
        let verdict = ownership.observe(now + IDLE_AFTER * 3, &view, &owned(&[]), true);
        assert!(verdict.unowned.is_empty());
        // Unowned, but the client is rebalancing already: report, do not rejoin.
        let view = [seen(3, 10, 9, 50)];
        ownership.observe(now, &view, &owned(&[]), false);
        let verdict = ownership.observe(now + IDLE_AFTER, &view, &owned(&[]), false);
        assert_eq!(verdict.unowned.len(), 1);
        assert!(!verdict.rejoin);
    }

    #[test]
    fn a_recorded_range_not_committed_counts_as_waiting() {
        // The dead owner recorded [40, 49] and crashed before inserting it: nothing new arrives
        // (high = 50 = recorded + 1), but the range must still be replayed by someone.
        let t0 = Instant::now();
        let mut ownership = Ownership::default();
        let view = [seen(0, 40, 49, 50)];
        ownership.observe(t0, &view, &owned(&[]), true);
        let verdict = ownership.observe(t0 + IDLE_AFTER, &view, &owned(&[]), true);
        assert_eq!(verdict.unowned.len(), 1);
    }
}
