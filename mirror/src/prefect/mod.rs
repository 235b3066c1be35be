//! Prefect's API as the mirror reads it (shapes from `prefect/server/api/{events,logs}.py`, 3.8.8):
//! `POST /events/filter` and `GET /events/filter/next` (pages of at most 50, oldest first with
//! `order: ASC`), `POST /logs/filter` (at most 200, `TIMESTAMP_ASC`), and the `/events/out` and
//! `/logs/out` websockets ([`socket`]).
//!
//! Authentication, as Prefect's own clients send it: a Cloud API key as `Authorization: Bearer`
//! (and as the websockets' auth token), a self-hosted server's auth string as
//! `Authorization: Basic base64(auth string)` (and as the auth token).

pub mod socket;

use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

/// Prefect's most per `/events/filter` page (`INTERACTIVE_PAGE_SIZE`).
pub const EVENTS_PAGE: usize = 50;
/// Prefect's most per `/logs/filter` page (`PREFECT_API_DEFAULT_LIMIT`).
pub const LOGS_PAGE: usize = 200;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    /// Prefect Cloud.
    ApiKey(String),
    /// A self-hosted server with `PREFECT_SERVER_API_AUTH_STRING`.
    AuthString(String),
}

impl Auth {
    fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::ApiKey(key) => Some(format!("Bearer {key}")),
            Auth::AuthString(auth) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(auth)
            )),
        }
    }

    /// The websockets' `{"type": "auth", "token": ...}`.
    fn token(&self) -> Option<&str> {
        match self {
            Auth::None => None,
            Auth::ApiKey(token) | Auth::AuthString(token) => Some(token),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    /// The API URL without a trailing slash.
    base: String,
    auth: Auth,
}

/// One `/events/filter` page.
#[derive(Deserialize)]
pub struct EventPage {
    pub events: Vec<Box<RawValue>>,
    #[serde(default)]
    pub next_page: Option<String>,
}

impl EventPage {
    /// The page token of the next page. Prefect builds `next_page` from the URL the server saw
    /// (wrong behind a proxy that rewrites paths), so only its token is used, against the
    /// configured API URL.
    ///
    /// Prefect puts its base64 token in the URL as is (`+`, `/` and `=` unescaped), so the value
    /// is percent-decoded only: form decoding would turn its `+` into spaces.
    pub fn next_token(&self) -> Option<String> {
        let next = self.next_page.as_deref()?;
        let query = next.split_once('?')?.1;
        let raw = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("page-token="))?;
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()
            .map(|token| token.into_owned())
    }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Client {
    pub fn new(args: &crate::Args) -> anyhow::Result<Self> {
        let auth = match (&args.prefect_api_key, &args.prefect_auth_string) {
            (Some(key), _) => Auth::ApiKey(key.clone()),
            (None, Some(auth)) => Auth::AuthString(auth.clone()),
            (None, None) => Auth::None,
        };
        Self::with_auth(args.prefect_api_url.as_str(), auth)
    }

    pub fn with_auth(api_url: &str, auth: Auth) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = auth.header() {
            let mut value =
                HeaderValue::from_str(&value).context("the Prefect credential is not a header")?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("flowhouse-mirror/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: api_url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: Prefect did not answer"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{what}: the answer was cut"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            bail!(
                "{what}: Prefect answered {status}: {}",
                text.chars().take(500).collect::<String>()
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: not Prefect's shape"))
    }

    /// The first page of events with `since <= occurred <= until`, oldest first.
    pub async fn events_first_page(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<EventPage> {
        let body = json!({
            "filter": {
                "occurred": {"since": rfc3339(since), "until": rfc3339(until)},
                "order": "ASC",
            },
            "limit": EVENTS_PAGE,
        });
        let request = self
            .http
            .post(format!("{}/events/filter", self.base))
            .json(&body);
        self.json(request, "POST /events/filter").await
    }

    pub async fn events_next_page(&self, token: &str) -> anyhow::Result<EventPage> {
        let request = self
            .http
            .get(format!("{}/events/filter/next", self.base))
            .query(&[("page-token", token)]);
        self.json(request, "GET /events/filter/next").await
    }

    /// A flow run's state by id (`GET /flow_run_states/{id}`); `None` when Prefect has no such
    /// state (any more).
    pub async fn flow_run_state(
        &self,
        id: uuid::Uuid,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let response = self
            .http
            .get(format!("{}/flow_run_states/{id}", self.base))
            .send()
            .await
            .context("GET /flow_run_states: Prefect did not answer")?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let request = response
            .error_for_status()
            .context("GET /flow_run_states")?;
        Ok(Some(
            request
                .json()
                .await
                .context("GET /flow_run_states: not Prefect's shape")?,
        ))
    }

    /// Log lines with `after <= timestamp <= before`, oldest first, from `offset`.
    pub async fn logs_page(
        &self,
        after: DateTime<Utc>,
        before: DateTime<Utc>,
        offset: usize,
    ) -> anyhow::Result<Vec<Box<RawValue>>> {
        let body = json!({
            "logs": {"timestamp": {"after_": rfc3339(after), "before_": rfc3339(before)}},
            "sort": "TIMESTAMP_ASC",
            "limit": LOGS_PAGE,
            "offset": offset,
        });
        let request = self
            .http
            .post(format!("{}/logs/filter", self.base))
            .json(&body);
        self.json(request, "POST /logs/filter").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_where_prefects_clients_put_them() {
        assert_eq!(Auth::None.header(), None);
        assert_eq!(
            Auth::ApiKey("pnu_x".into()).header().as_deref(),
            Some("Bearer pnu_x")
        );
        // base64("admin:pass")
        assert_eq!(
            Auth::AuthString("admin:pass".into()).header().as_deref(),
            Some("Basic YWRtaW46cGFzcw==")
        );
        assert_eq!(Auth::AuthString("s".into()).token(), Some("s"));
    }

    #[test]
    fn the_next_page_token_is_taken_from_prefects_url() {
        let page = EventPage {
            events: Vec::new(),
            next_page: Some(
                "http://10.0.0.1:4200/api/events/filter/next?page-token=ZX+/lK%3D=".into(),
            ),
        };
        assert_eq!(page.next_token().as_deref(), Some("ZX+/lK=="));
        let last = EventPage {
            events: Vec::new(),
            next_page: None,
        };
        assert_eq!(last.next_token(), None);
    }
}
