//! Automations in Prefect's shapes (`prefect/events/schemas/automations.py`,
//! `prefect/events/actions.py`): what the API accepts and answers, and its validation.
//!
//! Accepted as Prefect sends them (the SDK's `model_dump(mode="json")` included): durations as
//! seconds or ISO 8601 (`PT10M`), `match_related` as one specification or a list, unknown
//! fields ignored (Prefect's models ignore them too). Answered with durations in seconds and
//! `match_related` as a list, which Prefect's models read back.
//!
//! Supported: `event` triggers (reactive and proactive) and `metric` triggers; actions
//! `call-webhook` (with Flowhouse's `url`, `method`, `headers` beside Prefect's `payload`,
//! alias `webhook`) and `do-nothing`. Everything else is refused with a 422 naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowhouse_query_api::events::labels::{LabelValues, ResourceSpecification};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Limits the operator sets (`FLOWHOUSE_AUTOMATIONS_MIN_WINDOW`, `FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The least `range` and `firing_for` of a metric trigger (Prefect: 300 s).
    pub min_window: Duration,
    /// Whether webhooks may target loopback, private and link-local addresses.
    pub allow_private: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_window: Duration::from_secs(300),
            allow_private: false,
        }
    }
}

/// The longest `within` or `range`: beyond it the events have left the default retention.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Prefect's least `within` of a proactive trigger.
pub const MIN_PROACTIVE_WITHIN: Duration = Duration::from_secs(10);
const MAX_NAME_CHARS: usize = 1_000;
const MAX_ACTIONS: usize = 20;
const MAX_FOR_EACH: usize = 5;
const MAX_EVENT_NAMES: usize = 50;
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// What a client sends to create or replace an automation (Prefect's `AutomationCore`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AutomationCore {
    /// The name of this automation.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Whether this automation is evaluated.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    pub trigger: Trigger,
    /// Actions on both transitions (Prefect: on triggered; Flowhouse: both, as Prefect runs
    /// `actions` when the trigger fires and resolves alike for metric triggers).
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub actions_on_trigger: Vec<Action>,
    #[serde(default)]
    pub actions_on_resolve: Vec<Action>,
    #[serde(default)]
    pub owner_resource: Option<String>,
}

fn yes() -> bool {
    true
}

/// An automation as stored and answered: Prefect's `Automation` plus `created` / `updated`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Automation {
    pub id: Uuid,
    #[serde(flatten)]
    pub core: AutomationCore,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// `PATCH /automations/{id}`: Prefect's `AutomationPartialUpdate` (only `enabled`), plus the
/// name and description.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct AutomationPatch {
    pub enabled: Option<bool>,
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
#[schema(as = AutomationTrigger)]
pub enum Trigger {
    #[serde(rename = "event")]
    Event(EventTrigger),
    #[serde(rename = "metric")]
    Metric(MetricTrigger),
}

impl Trigger {
    pub fn id(&self) -> Uuid {
        match self {
            Trigger::Event(t) => t.id,
            Trigger::Metric(t) => t.id,
        }
    }

    pub fn posture(&self) -> &'static str {
        match self {
            Trigger::Event(t) => t.posture.name(),
            Trigger::Metric(_) => "Metric",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[schema(as = EventPosture)]
pub enum Posture {
    #[default]
    Reactive,
    Proactive,
}

impl Posture {
    pub fn name(self) -> &'static str {
        match self {
            Posture::Reactive => "Reactive",
            Posture::Proactive => "Proactive",
        }
    }
}

/// Prefect's `EventTrigger`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventTrigger {
    #[serde(default = "Uuid::new_v4")]
    pub id: Uuid,
    #[serde(default, rename = "match")]
    #[schema(value_type = Object)]
    pub match_: ResourceSpecification,
    #[serde(default, deserialize_with = "one_or_many_specs")]
    #[schema(value_type = Vec<Object>)]
    pub match_related: Vec<ResourceSpecification>,
    #[serde(default)]
    pub after: BTreeSet<String>,
    #[serde(default)]
    pub expect: BTreeSet<String>,
    #[serde(default)]
    pub for_each: BTreeSet<String>,
    #[serde(default)]
    pub posture: Posture,
    #[serde(default = "one")]
    pub threshold: i64,
    /// Seconds (or ISO 8601 on input).
    #[serde(
        default,
        deserialize_with = "duration_de",
        serialize_with = "duration_ser"
    )]
    #[schema(value_type = f64)]
    pub within: Duration,
}

fn one() -> i64 {
    1
}

/// Prefect Cloud's `MetricTrigger`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricTrigger {
    #[serde(default = "Uuid::new_v4")]
    pub id: Uuid,
    #[serde(default, rename = "match")]
    #[schema(value_type = Object)]
    pub match_: ResourceSpecification,
    #[serde(default, deserialize_with = "one_or_many_specs")]
    #[schema(value_type = Vec<Object>)]
    pub match_related: Vec<ResourceSpecification>,
    #[serde(default = "metric_posture")]
    pub posture: String,
    pub metric: MetricQuery,
}

fn metric_posture() -> String {
    "Metric".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = PrefectMetric)]
pub enum MetricName {
    /// The share of flow runs that ended in the range that completed (0 to 1).
    Successes,
    /// The mean duration in seconds of flow runs that ended in the range.
    Duration,
    /// The mean lateness in seconds of flow runs that started in the range.
    Lateness,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = MetricTriggerOperator)]
pub enum Operator {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Lte,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Gte,
}

impl Operator {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Lt => value < threshold,
            Operator::Lte => value <= threshold,
            Operator::Gt => value > threshold,
            Operator::Gte => value >= threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Lt => "<",
            Operator::Lte => "<=",
            Operator::Gt => ">",
            Operator::Gte => ">=",
        }
    }
}

/// Prefect's `MetricTriggerQuery`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = MetricTriggerQuery)]
pub struct MetricQuery {
    pub name: MetricName,
    pub threshold: f64,
    pub operator: Operator,
    #[serde(
        default = "five_minutes",
        deserialize_with = "duration_de",
        serialize_with = "duration_ser"
    )]
    #[schema(value_type = f64)]
    pub range: Duration,
    #[serde(
        default = "five_minutes",
        deserialize_with = "duration_de",
        serialize_with = "duration_ser"
    )]
    #[schema(value_type = f64)]
    pub firing_for: Duration,
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// An action. `call-webhook` is Prefect's type; Flowhouse takes the target from `url`,
/// `method` and `headers` instead of a webhook block, and renders `payload` (a minijinja
/// template; empty: a Slack-compatible message) with the firing's context.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
#[schema(as = AutomationAction)]
pub enum Action {
    #[serde(rename = "call-webhook", alias = "webhook")]
    CallWebhook(Webhook),
    #[serde(rename = "do-nothing")]
    DoNothing {},
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = WebhookAction)]
pub struct Webhook {
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A minijinja template of the body; empty: `{"text": "..."}`, which Slack accepts.
    #[serde(default, alias = "body")]
    pub payload: String,
    /// Prefect's webhook block; kept and answered (the nil UUID when absent, as Prefect's
    /// models require one), never used.
    #[serde(default)]
    pub block_document_id: Uuid,
}

fn post() -> String {
    "POST".into()
}

fn duration_ser<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(value.as_secs_f64())
}

fn duration_de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = Value::deserialize(d)?;
    parse_duration(&value).map_err(serde::de::Error::custom)
}

/// Seconds (a number), or an ISO 8601 duration as pydantic writes a `timedelta` (`PT600S`,
/// `P1DT2H3M4.5S`).
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    let seconds = match value {
        Value::Number(n) => n.as_f64().ok_or("not a number")?,
        Value::String(text) => iso_seconds(text)
            .or_else(|| text.parse::<f64>().ok())
            .ok_or_else(|| {
                format!("{text:?} is neither seconds nor an ISO 8601 duration like PT10M")
            })?,
        other => {
            return Err(format!(
                "expected seconds or an ISO 8601 duration, got {other}"
            ));
        }
    };
    if !seconds.is_finite() || !(0.0..=1e10).contains(&seconds) {
        return Err(format!("{seconds} s is not a duration Flowhouse can use"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn iso_seconds(text: &str) -> Option<f64> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let rest = rest.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0.0;
    let mut parse = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
            } else {
                let factor = units.iter().find(|(u, _)| *u == c)?.1;
                total += number.parse::<f64>().ok()? * factor;
                number.clear();
            }
        }
        number.is_empty().then_some(())
    };
    parse(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        parse(time, &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Some(if negative { -total } else { total })
}

fn one_or_many_specs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<ResourceSpecification>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(ResourceSpecification),
        Many(Vec<ResourceSpecification>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(spec) if spec.is_empty() => vec![],
        OneOrMany::One(spec) => vec![spec],
        OneOrMany::Many(specs) => specs.into_iter().filter(|s| !s.is_empty()).collect(),
    })
}

/// Reads a body with the path of the field at fault in the message.
pub fn parse_core(body: &[u8]) -> Result<AutomationCore, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: Value = serde_path_to_error::deserialize(de)
        .map_err(|e| format!("the body is not JSON: {}", e.inner()))?;
    if !value.is_object() {
        return Err("the body must be a JSON object (an automation)".into());
    }
    for (field, kind) in [("trigger", "an object"), ("actions", "a list")] {
        let ok = match value.get(field) {
            Some(Value::Object(_)) => kind == "an object",
            Some(Value::Array(_)) => kind == "a list",
            None => field == "actions",
            Some(_) => false,
        };
        if !ok {
            return Err(format!("{field}: must be {kind}"));
        }
    }
    if let Some(kind) = value.pointer("/trigger/type").and_then(Value::as_str)
        && matches!(kind, "compound" | "sequence")
    {
        return Err(format!(
            "trigger.type: {kind:?} triggers are not supported by Flowhouse (supported: \"event\", \"metric\")"
        ));
    }
    for list in ["actions", "actions_on_trigger", "actions_on_resolve"] {
        if let Some(actions) = value.get(list).and_then(Value::as_array) {
            for (i, action) in actions.iter().enumerate() {
                let kind = action.get("type").and_then(Value::as_str).unwrap_or("");
                if !matches!(kind, "call-webhook" | "webhook" | "do-nothing") {
                    return Err(format!(
                        "{list}[{i}].type: {kind:?} is not an action Flowhouse runs \
                         (supported: \"call-webhook\" with a url, \"do-nothing\")"
                    ));
                }
            }
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

impl AutomationCore {
    /// Checks what serde cannot; the message names the field and the bound.
    pub fn validate(&mut self, limits: &Limits) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("name: 1 to {MAX_NAME_CHARS} characters"));
        }
        let total =
            self.actions.len() + self.actions_on_trigger.len() + self.actions_on_resolve.len();
        if total > MAX_ACTIONS {
            return Err(format!("at most {MAX_ACTIONS} actions in all"));
        }
        for (list, actions) in [
            ("actions", &self.actions),
            ("actions_on_trigger", &self.actions_on_trigger),
            ("actions_on_resolve", &self.actions_on_resolve),
        ] {
            for (i, action) in actions.iter().enumerate() {
                if let Action::CallWebhook(hook) = action {
                    hook.validate(limits)
                        .map_err(|e| format!("{list}[{i}]: {e}"))?;
                }
            }
        }
        match &mut self.trigger {
            Trigger::Metric(t) => {
                let m = &t.metric;
                if !m.threshold.is_finite() {
                    return Err("trigger.metric.threshold: must be a finite number".into());
                }
                for (field, value) in [("range", m.range), ("firing_for", m.firing_for)] {
                    if value < limits.min_window {
                        return Err(format!(
                            "trigger.metric.{field}: the minimum is {} seconds",
                            limits.min_window.as_secs_f64()
                        ));
                    }
                    if value > MAX_WINDOW {
                        return Err(format!(
                            "trigger.metric.{field}: the maximum is {} seconds",
                            MAX_WINDOW.as_secs()
                        ));
                    }
                }
                crate::evaluate::metric::filters_of(t)?;
            }
            Trigger::Event(t) => {
                if t.threshold < 1 {
                    return Err("trigger.threshold: at least 1".into());
                }
                if t.posture == Posture::Proactive {
                    if t.within.is_zero() {
                        t.within = MIN_PROACTIVE_WITHIN;
                    } else if t.within < MIN_PROACTIVE_WITHIN {
                        return Err(
                            "trigger.within: for Proactive triggers, at least 10 seconds".into(),
                        );
                    }
                    if t.after.is_empty() && !t.for_each.is_empty() {
                        return Err("trigger.for_each: a Proactive trigger without `after` is \
                                    evaluated as one bucket in Flowhouse; give `after` or no \
                                    `for_each`"
                            .into());
                    }
                } else if !t.after.is_empty() {
                    return Err("trigger.after: Reactive triggers with `after` are not \
                                supported by Flowhouse; use a Proactive trigger"
                        .into());
                }
                if t.within > MAX_WINDOW {
                    return Err(format!(
                        "trigger.within: the maximum is {} seconds",
                        MAX_WINDOW.as_secs()
                    ));
                }
                if t.for_each.len() > MAX_FOR_EACH {
                    return Err(format!("trigger.for_each: at most {MAX_FOR_EACH} labels"));
                }
                for label in &t.for_each {
                    if label.is_empty() {
                        return Err("trigger.for_each: empty label".into());
                    }
                    if let Some(rest) = label.strip_prefix("related:") {
                        match rest.split_once(':') {
                            Some((role, l)) if !role.is_empty() && !l.is_empty() => {}
                            _ => {
                                return Err(format!(
                                    "trigger.for_each: {label:?} is not related:<role>:<label>"
                                ));
                            }
                        }
                    }
                }
                if t.after.len() + t.expect.len() > MAX_EVENT_NAMES {
                    return Err(format!(
                        "trigger: at most {MAX_EVENT_NAMES} event names in after and expect"
                    ));
                }
                for name in t.after.iter().chain(&t.expect) {
                    if name.is_empty() {
                        return Err("trigger: an empty event name in after or expect".into());
                    }
                }
            }
        }
        Ok(())
    }

    /// The actions of one transition.
    pub fn actions_for(&self, triggered: bool) -> Vec<&Action> {
        let extra = if triggered {
            &self.actions_on_trigger
        } else {
            &self.actions_on_resolve
        };
        self.actions.iter().chain(extra).collect()
    }
}

impl Webhook {
    pub fn validate(&self, limits: &Limits) -> Result<(), String> {
        let url = url::Url::parse(&self.url).map_err(|e| format!("url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: only http and https", self.url));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("url {:?}: no host", self.url));
        };
        if !limits.allow_private {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let private = host.eq_ignore_ascii_case("localhost")
                || host.to_ascii_lowercase().ends_with(".localhost")
                || host.parse::<IpAddr>().is_ok_and(is_private);
            if private {
                return Err(format!(
                    "url {:?}: loopback and private addresses are refused \
                     (the operator allows them with FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE)",
                    self.url
                ));
            }
        }
        let method = self.method.to_ascii_uppercase();
        if !matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "GET" | "DELETE") {
            return Err(format!(
                "method {:?}: one of POST, PUT, PATCH, GET, DELETE",
                self.method
            ));
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(format!("headers: {name:?} is not a valid HTTP header"));
            }
        }
        if self.payload.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("payload: at most {MAX_TEMPLATE_BYTES} bytes"));
        }
        crate::deliver::check_template(&self.payload).map_err(|e| format!("payload: {e}"))
    }
}

/// Loopback, private, link-local, unspecified, shared (CGNAT), multicast or the
/// documentation/benchmark ranges: never a webhook's target unless allowed.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// `{"label": "value"}` as a specification, for tests and defaults.
pub fn spec(pairs: &[(&str, &str)]) -> ResourceSpecification {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), LabelValues::One(v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(trigger: Value) -> Result<AutomationCore, String> {
        let body = serde_json::json!({"name": "n", "trigger": trigger, "actions": []});
        let mut core = parse_core(body.to_string().as_bytes())?;
        core.validate(&Limits::default())?;
        Ok(core)
    }

    #[test]
    fn durations_are_seconds_or_iso_8601() {
        for (text, seconds) in [
            ("PT600S", 600.0),
            ("PT10M", 600.0),
            ("P1DT1H0.5S", 90_000.5),
            ("P1W", 604_800.0),
        ] {
            assert_eq!(
                parse_duration(&Value::from(text)).unwrap().as_secs_f64(),
                seconds,
                "{text}"
            );
        }
        assert_eq!(
            parse_duration(&Value::from(12.5)).unwrap().as_secs_f64(),
            12.5
        );
        assert!(parse_duration(&Value::from("10 minutes")).is_err());
        assert!(parse_duration(&Value::from("PT")).is_err());
        assert!(parse_duration(&Value::from(-1)).is_err());
    }

    #[test]
    fn metric_windows_below_the_minimum_are_refused_with_the_field() {
        let t = |range: f64| {
            serde_json::json!({"type": "metric", "metric": {"name": "successes", "threshold": 0.8,
                "operator": "<", "range": range, "firing_for": 300}})
        };
        assert!(core(t(300.0)).is_ok());
        let err = core(t(299.0)).unwrap_err();
        assert!(
            err.contains("trigger.metric.range") && err.contains("300"),
            "{err}"
        );
        let mut lowered = parse_core(
            serde_json::json!({"name": "n", "trigger": t(60.0), "actions": []})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let limits = Limits {
            min_window: Duration::from_secs(60),
            ..Limits::default()
        };
        assert!(lowered.validate(&limits).is_ok());
    }

    #[test]
    fn unsupported_shapes_get_a_message_naming_them() {
        let err = core(serde_json::json!({"type": "compound", "triggers": [], "require": "any"}))
            .unwrap_err();
        assert!(err.contains("compound"), "{err}");
        let body = serde_json::json!({"name": "n", "trigger": {"type": "event"},
            "actions": [{"type": "run-deployment"}]});
        let err = parse_core(body.to_string().as_bytes()).unwrap_err();
        assert!(
            err.contains("actions[0].type") && err.contains("run-deployment"),
            "{err}"
        );
        let err = core(
            serde_json::json!({"type": "metric", "metric": {"name": "speed",
            "threshold": 1, "operator": "<"}}),
        )
        .unwrap_err();
        assert!(err.contains("trigger"), "{err}");
    }

    #[test]
    fn only_an_object_is_an_automation() {
        for body in [
            "[null, null]",
            "null",
            "3",
            r#"{"name": "n", "trigger": []}"#,
            r#"{"name": "n", "trigger": {"type": "event"}, "actions": {}}"#,
        ] {
            assert!(parse_core(body.as_bytes()).is_err(), "{body}");
        }
        assert!(parse_core(br#"{"name": "n", "trigger": {"type": "event"}}"#).is_ok());
    }

    #[test]
    fn proactive_triggers_get_prefects_least_within() {
        let c = core(serde_json::json!({"type": "event", "posture": "Proactive",
            "after": ["prefect.flow-run.Running"], "expect": ["prefect.flow-run.Completed"],
            "for_each": ["prefect.resource.id"]}))
        .unwrap();
        let Trigger::Event(t) = c.trigger else {
            panic!()
        };
        assert_eq!(t.within, MIN_PROACTIVE_WITHIN);
        let err = core(
            serde_json::json!({"type": "event", "posture": "Proactive", "within": 5,
            "after": ["a"]}),
        )
        .unwrap_err();
        assert!(err.contains("10 seconds"), "{err}");
    }

    #[test]
    fn private_webhook_targets_are_refused_unless_allowed() {
        let hook = |url: &str| Webhook {
            url: url.into(),
            method: "POST".into(),
            headers: BTreeMap::new(),
            payload: String::new(),
            block_document_id: Uuid::nil(),
        };
        let limits = Limits::default();
        for url in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
            "http://192.168.0.1/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let err = hook(url).validate(&limits).unwrap_err();
            assert!(
                err.contains("FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE"),
                "{url}: {err}"
            );
        }
        assert!(
            hook("https://hooks.slack.com/services/x")
                .validate(&limits)
                .is_ok()
        );
        assert!(hook("ftp://example.com/").validate(&limits).is_err());
        let allowed = Limits {
            allow_private: true,
            ..limits
        };
        assert!(hook("http://127.0.0.1:8080/x").validate(&allowed).is_ok());
    }

    #[test]
    fn an_automation_round_trips_in_prefects_shape() {
        let body = serde_json::json!({"name": "late", "trigger": {"type": "event",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.id": "prefect.flow.x"},
            "expect": ["prefect.flow-run.Failed"], "threshold": 3, "within": "PT5M"},
            "actions": [{"type": "webhook", "url": "https://example.com/h"}]});
        let core = parse_core(body.to_string().as_bytes()).unwrap();
        let out = serde_json::to_value(&core).unwrap();
        assert_eq!(out["trigger"]["within"], 300.0);
        assert_eq!(out["trigger"]["match_related"].as_array().unwrap().len(), 1);
        assert_eq!(out["actions"][0]["type"], "call-webhook");
        assert_eq!(
            out["actions"][0]["block_document_id"],
            Uuid::nil().to_string()
        );
        assert_eq!(out["trigger"]["posture"], "Reactive");
    }
}
