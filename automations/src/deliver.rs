//! Deliveries: webhook calls and the `prefect.automation.*` events.
//!
//! - A webhook gets its body from a minijinja template rendered with the firing's context (an
//!   empty template: a Slack-compatible `{"text": ...}`), an `Idempotency-Key` header, a timeout
//!   per attempt, and retries with exponential backoff on network errors, 408, 429 and 5xx.
//! - Unless the operator allows it (`FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE`), the host is resolved
//!   first and refused if any address is loopback, private or link-local; the request then
//!   goes to exactly the addresses checked (no second resolution, no redirects), so DNS
//!   rebinding cannot turn a public name into a private target.
//! - The events go to the tenant's own Kafka topic under the contract (`schema::contract`),
//!   each with the id `uuid5(idempotency key)`: a re-sent copy collapses in `events`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::Envelope;
use minijinja::Environment;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::{Webhook, is_private};

/// The Slack-compatible body used when an action has no template.
pub const DEFAULT_TEMPLATE: &str = r#"{"text": {{ ("Automation *" ~ automation.name ~ "* " ~ transition ~ ": " ~ summary) | tojson }}}"#;

/// Whether `template` compiles.
pub fn check_template(template: &str) -> Result<(), String> {
    let env = environment();
    env.template_from_str(template)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Bound the work a tenant's template can ask for.
    env.set_fuel(Some(100_000));
    env
}

/// The body of a webhook: the template (or the default) rendered with `context`.
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    let template = if template.trim().is_empty() {
        DEFAULT_TEMPLATE
    } else {
        template
    };
    let env = environment();
    env.render_str(template, context).map_err(|e| e.to_string())
}

#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub timeout: Duration,
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each next one.
    pub backoff: Duration,
    pub allow_private: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(500),
            allow_private: false,
        }
    }
}

/// One attempt's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    pub delivered: bool,
    pub status: u16,
    pub error: String,
}

/// Where the events go: the producer and the events topic.
#[derive(Clone)]
pub struct Emitter {
    pub producer: FutureProducer,
    pub topic: String,
}

#[derive(Clone)]
pub struct Deliverer {
    pub config: DeliveryConfig,
    pub emitter: Option<Arc<Emitter>>,
}

async fn checked_addresses(url: &url::Url, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, a loopback or private address (refused unless \
             FLOWHOUSE_WEBHOOK_ALLOW_PRIVATE)",
            bad.ip()
        ));
    }
    Ok(addrs)
}

impl Deliverer {
    /// Calls the webhook until it answers 2xx, a permanent failure, or the attempts run out.
    /// `on_attempt` sees every attempt as it ends (the delivery log).
    pub async fn webhook<F, Fut>(
        &self,
        hook: &Webhook,
        key: &str,
        context: &Value,
        mut on_attempt: F,
    ) -> Attempt
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut last = Attempt {
            attempt: 0,
            delivered: false,
            status: 0,
            error: "no attempt".into(),
        };
        for attempt in 1..=self.config.attempts.max(1) {
            if attempt > 1 {
                let wait = self.config.backoff * 2u32.pow((attempt - 2).min(10));
                tokio::time::sleep(wait).await;
            }
            let (outcome, retry) = self.attempt(hook, key, context).await;
            last = Attempt { attempt, ..outcome };
            on_attempt(last.clone()).await;
            if last.delivered || !retry {
                break;
            }
        }
        last
    }

    async fn attempt(&self, hook: &Webhook, key: &str, context: &Value) -> (Attempt, bool) {
        let fail = |status: u16, error: String, retry: bool| {
            (
                Attempt {
                    attempt: 0,
                    delivered: false,
                    status,
                    error,
                },
                retry,
            )
        };
        let url = match url::Url::parse(&hook.url) {
            Ok(url) => url,
            Err(e) => return fail(0, format!("bad url: {e}"), false),
        };
        let body = match render(&hook.payload, context) {
            Ok(body) => body,
            Err(e) => return fail(0, format!("template: {e}"), false),
        };
        let addrs = match checked_addresses(&url, self.config.allow_private).await {
            Ok(addrs) => addrs,
            Err(e) => return fail(0, e, false),
        };
        let host = url.host_str().unwrap_or_default().to_string();
        let client = match reqwest::Client::builder()
            .timeout(self.config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .build()
        {
            Ok(client) => client,
            Err(e) => return fail(0, e.to_string(), false),
        };
        let method = reqwest::Method::from_bytes(hook.method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut request = client
            .request(method, url)
            .header("Idempotency-Key", key)
            .header("Content-Type", content_type)
            .header("User-Agent", "flowhouse-automations");
        for (name, value) in &hook.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    (
                        Attempt {
                            attempt: 0,
                            delivered: true,
                            status: status.as_u16(),
                            error: String::new(),
                        },
                        false,
                    )
                } else {
                    let retry = status.is_server_error() || status == 408 || status == 429;
                    let text = response.text().await.unwrap_or_default();
                    fail(status.as_u16(), text.chars().take(300).collect(), retry)
                }
            }
            Err(e) => fail(0, e.to_string(), true),
        }
    }

    /// Produces `prefect.automation.{triggered|resolved}` to the tenant's stream.
    pub async fn emit(&self, tenant: Tenant, key: &str, event: &Value) -> Result<(), String> {
        let Some(emitter) = &self.emitter else {
            return Err("no Kafka producer".into());
        };
        let envelope = Envelope {
            tenant,
            received: None,
        };
        let payload = event.to_string();
        let message_key = envelope.key();
        let record = FutureRecord::to(&emitter.topic)
            .key(&message_key)
            .payload(&payload)
            .headers(envelope.headers());
        emitter
            .producer
            .send(record, self.config.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("{key}: {e}"))
    }
}

/// The event of one transition, in Prefect's shape, with an id derived from the key.
pub fn automation_event(
    key: &str,
    automation_id: Uuid,
    name: &str,
    transition: &str,
    fired_at: DateTime<Utc>,
    context: &Value,
    related: Vec<Value>,
) -> Value {
    json!({
        "id": Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("flowhouse:automation:{key}").as_bytes()),
        "occurred": fired_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "event": format!("prefect.automation.{transition}"),
        "resource": {
            "prefect.resource.id": format!("prefect.automation.{automation_id}"),
            "prefect.resource.name": name,
        },
        "related": related,
        "payload": context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_body_is_slack_json_with_the_summary() {
        let context = json!({"automation": {"name": "fails \"x\""}, "transition": "triggered",
            "summary": "successes 0.5 < 0.8"});
        let body = render("", &context).unwrap();
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value["text"],
            "Automation *fails \"x\"* triggered: successes 0.5 < 0.8"
        );
        assert_eq!(
            render("{{ automation.name }}!", &context).unwrap(),
            "fails \"x\"!"
        );
        assert!(check_template("{% if %}").is_err());
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let err = render(
            "{% for i in range(1000000) %}{{ i }}{% endfor %}",
            &json!({}),
        );
        assert!(err.is_err());
    }
}
