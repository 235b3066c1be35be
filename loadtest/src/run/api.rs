//! The query API as the dashboards and the verification see it: the six metric cards of a
//! tenant, `GET .../metrics/<card>` with the tenant's key.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use flowhouse_schema::Tenant;
use serde_json::Value;

/// A dashboard card: its route and its extra query parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Card {
    /// The last path segment, e.g. `flow-runs`.
    pub route: &'static str,
    /// `by=` of `top-failing`.
    pub by: Option<&'static str>,
}

impl Card {
    /// `GET /metrics/top-failing?by=flow`, the name latencies are recorded under.
    pub fn name(&self) -> String {
        match self.by {
            Some(by) => format!("GET /metrics/{}?by={by}", self.route),
            None => format!("GET /metrics/{}", self.route),
        }
    }
}

/// Every card a dashboard shows.
pub const CARDS: [Card; 8] = [
    Card {
        route: "flow-runs",
        by: None,
    },
    Card {
        route: "late-runs",
        by: None,
    },
    Card {
        route: "durations",
        by: None,
    },
    Card {
        route: "top-failing",
        by: Some("flow"),
    },
    Card {
        route: "top-failing",
        by: Some("deployment"),
    },
    Card {
        route: "top-failing",
        by: Some("work-pool"),
    },
    Card {
        route: "task-runs",
        by: None,
    },
    Card {
        route: "logs",
        by: None,
    },
];

/// `since`/`until`/`bucket`; `None` is the API's default window (the past week, hourly).
#[derive(Clone, Copy, Debug)]
pub struct WindowParams {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub bucket: &'static str,
}

/// Why a request failed, as a short kind for the error counts.
#[derive(Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct QueryApi {
    client: reqwest::Client,
    base_url: String,
    /// Its admin listener, where `/metrics` is.
    admin_url: String,
}

impl QueryApi {
    pub fn new(base_url: &str, admin_url: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            admin_url: admin_url.trim_end_matches('/').to_string(),
        })
    }

    /// One card; the answer and how long it took.
    pub async fn card(
        &self,
        tenant: &Tenant,
        key: &str,
        card: Card,
        window: Option<WindowParams>,
    ) -> Result<(Value, Duration), Failure> {
        let url = format!(
            "{}/api/accounts/{}/workspaces/{}/metrics/{}",
            self.base_url, tenant.account_id, tenant.workspace_id, card.route
        );
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(window) = window {
            query.push((
                "since",
                window.since.to_rfc3339_opts(SecondsFormat::Micros, true),
            ));
            query.push((
                "until",
                window.until.to_rfc3339_opts(SecondsFormat::Micros, true),
            ));
            query.push(("bucket", window.bucket.to_string()));
        }
        if let Some(by) = card.by {
            query.push(("by", by.to_string()));
        }
        if card.route == "top-failing" {
            // The ground truth ranks any N; ask for all of them.
            query.push(("limit", "100".to_string()));
        }
        let started = Instant::now();
        let response = self
            .client
            .get(&url)
            .bearer_auth(key)
            .query(&query)
            .send()
            .await
            .map_err(|error| Failure {
                kind: if error.is_timeout() {
                    "timed out".into()
                } else if error.is_connect() {
                    "cannot connect".into()
                } else {
                    "request failed".into()
                },
                detail: error.to_string(),
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| Failure {
            kind: "body not read".into(),
            detail: error.to_string(),
        })?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            return Err(Failure {
                kind: format!("HTTP {}", status.as_u16()),
                detail: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let value = serde_json::from_slice(&body).map_err(|error| Failure {
            kind: "not JSON".into(),
            detail: error.to_string(),
        })?;
        Ok((value, elapsed))
    }

    /// Prometheus counters of the query API summed by one label's values, e.g. the cache's
    /// `result` (hit, miss, coalesced).
    pub async fn counter_by(&self, name: &str, label: &str) -> anyhow::Result<Vec<(String, f64)>> {
        let text = self
            .client
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot read {}/metrics", self.admin_url))?
            .text()
            .await?;
        Ok(prometheus_sum_by(&text, name, label))
    }

    /// Waits (up to `timeout`) until the API knows `key`: the services reload the keys file
    /// every few seconds.
    pub async fn wait_for_key(
        &self,
        tenant: &Tenant,
        key: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.card(tenant, key, CARDS[0], None).await {
                Ok(_) => return Ok(()),
                Err(failure) if Instant::now() >= deadline => anyhow::bail!(
                    "the query API at {} does not accept the minted keys after {timeout:?}: {} {} \
                     (does it read the same --keys-file?)",
                    self.base_url,
                    failure.kind,
                    failure.detail
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// Sums the samples of `name` by the value of `label` (`name{a="x",label="v"} 3`).
fn prometheus_sum_by(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let needle = format!("{label}=\"");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with('{') {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(start) = labels.find(&needle) {
            let tail = &labels[start + needle.len()..];
            if let Some(end) = tail.find('"') {
                *sums.entry(tail[..end].to_string()).or_default() += value;
            }
        }
    }
    sums.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_by_label() {
        let text = "# TYPE c counter\n\
            c{route=\"a\",result=\"hit\"} 3\n\
            c{route=\"b\",result=\"hit\"} 4\n\
            c{route=\"a\",result=\"miss\"} 2\n\
            c_other{result=\"hit\"} 100\n";
        assert_eq!(
            prometheus_sum_by(text, "c", "result"),
            vec![("hit".to_string(), 7.0), ("miss".to_string(), 2.0)]
        );
    }
}
