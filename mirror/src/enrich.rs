//! One addition to Prefect's events: the scheduled time of a flow run's `Scheduled` state.
//!
//! Prefect's server emits `prefect.flow-run.Scheduled` without it (its event payload keeps only
//! a state's type, name and message; `occurred` is when the state was set), yet its own
//! `/flow_runs/history` places a run by that time (`expected_start_time`): a deployment run
//! scheduled for tomorrow was created today. Flowhouse reads a run's expected start from
//! `payload.validated_state.state_details.scheduled_time` (docs/metrics.md), so the mirror adds it
//! there, read from `GET /flow_run_states/{id}` (the event's id is the state's id). Nothing else
//! of the event changes.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context as _;
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::item::Item;
use crate::prefect::Client;

const SCHEDULED: &str = "prefect.flow-run.Scheduled";
/// Scheduled times looked up, so that a backfill reading the same event again asks Prefect once.
const CACHE: usize = 100_000;

#[derive(Default)]
pub struct Enricher {
    /// State id → its scheduled time (`None`: Prefect has none).
    known: Mutex<HashMap<Uuid, Option<String>>>,
}

impl Enricher {
    /// The event with its scheduled time added when it is a flow run's `Scheduled` state
    /// without one; any other item unchanged.
    pub async fn enrich(&self, prefect: &Client, item: Item) -> anyhow::Result<Item> {
        // Cheap test first: almost every event is something else.
        if !item.json.get().contains(SCHEDULED) {
            return Ok(item);
        }
        let mut event: Value = serde_json::from_str(item.json.get())?;
        if event["event"] != SCHEDULED
            || !event["payload"]["validated_state"]["state_details"]["scheduled_time"].is_null()
        {
            return Ok(item);
        }
        let Some(scheduled) = self.scheduled_time(prefect, item.id).await? else {
            return Ok(item);
        };
        let payload = event
            .as_object_mut()
            .context("an event is an object")?
            .entry("payload")
            .or_insert_with(|| Value::Object(Default::default()));
        set_path(
            payload,
            &["validated_state", "state_details", "scheduled_time"],
            scheduled,
        );
        Ok(Item {
            json: RawValue::from_string(event.to_string())?,
            ..item
        })
    }

    async fn scheduled_time(
        &self,
        prefect: &Client,
        state: Uuid,
    ) -> anyhow::Result<Option<String>> {
        if let Some(known) = self.lock().get(&state) {
            return Ok(known.clone());
        }
        let found = prefect.flow_run_state(state).await?.and_then(|state| {
            state["state_details"]["scheduled_time"]
                .as_str()
                .map(str::to_string)
        });
        let mut known = self.lock();
        if known.len() >= CACHE {
            known.clear();
        }
        known.insert(state, found.clone());
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Option<String>>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sets `value` at `path` in `target`, creating (or replacing non-object) parents.
fn set_path(target: &mut Value, path: &[&str], value: String) {
    let mut node = target;
    for key in &path[..path.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        node = node
            .as_object_mut()
            .expect("made an object above")
            .entry(*key)
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if !node.is_object() {
        *node = Value::Object(Default::default());
    }
    node.as_object_mut()
        .expect("made an object above")
        .insert(path[path.len() - 1].to_string(), Value::String(value));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_scheduled_time_goes_where_flowhouse_reads_it_and_nothing_else_changes() {
        let mut payload = json!({"intended": {"from": null, "to": "SCHEDULED"},
                                 "validated_state": {"type": "SCHEDULED", "name": "Scheduled"}});
        set_path(
            &mut payload,
            &["validated_state", "state_details", "scheduled_time"],
            "2026-11-29T08:00:00Z".into(),
        );
        assert_eq!(
            payload,
            json!({"intended": {"from": null, "to": "SCHEDULED"},
                   "validated_state": {"type": "SCHEDULED", "name": "Scheduled",
                       "state_details": {"scheduled_time": "2026-11-29T08:00:00Z"}}})
        );
        let mut empty = json!(null);
        set_path(&mut empty, &["a", "b"], "x".into());
        assert_eq!(empty, json!({"a": {"b": "x"}}));
    }
}
