//! Every way a request can fail, and the one place each becomes an HTTP response (or a websocket
//! close frame). Bodies are Prefect-like JSON: `{"detail": "...", "problems": [...]}`, where
//! `problems` names the index and field of each invalid item of a batch.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowhouse_keys::AuthError;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::telemetry;

/// How long a client is told to wait when Kafka is down, and when the queue is merely full.
pub(crate) const RETRY_WHEN_DOWN: Duration = Duration::from_secs(5);
pub(crate) const RETRY_WHEN_FULL: Duration = Duration::from_secs(1);

/// One thing wrong with one item of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemProblem {
    /// Position of the item in the JSON list, from 0.
    pub index: usize,
    /// Path of the field inside the item (`resource["prefect.resource.id"]`); empty when the
    /// problem is the item as a whole.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A key refused: 401 or 403, as `flowhouse_keys` maps it.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No key, or a key nobody issued (or since revoked).
    #[error("{0}")]
    Unauthorized(String),
    /// A real key, used on a workspace it does not hold or without the scope.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Not JSON at all, or a body that could not be read.
    #[error("{0}")]
    BadRequest(String),
    /// JSON, but not a list of valid items; nothing of the batch was accepted.
    #[error("{detail}")]
    Invalid {
        detail: String,
        problems: Vec<ItemProblem>,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after: Duration,
    },
    /// Kafka cannot take the messages now (down, or the producer's queue is full); nothing was
    /// acknowledged, so the client must send again.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after: Duration,
    },
}

/// What a Kafka error means for the client: only an oversized message is the client's fault;
/// everything else is "not accepted, send again".
impl From<KafkaError> for ApiError {
    fn from(error: KafkaError) -> Self {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                ApiError::TooLarge(format!(
                    "Kafka refused a message as too large ({error}); nothing else of the \
                     request needs to change"
                ))
            }
            Some(RDKafkaErrorCode::QueueFull) => ApiError::Unavailable {
                detail: "the producer's queue is full; send again shortly".into(),
                retry_after: RETRY_WHEN_FULL,
            },
            Some(RDKafkaErrorCode::MessageTimedOut) => ApiError::Unavailable {
                detail: "Kafka did not acknowledge the messages in time; send them again".into(),
                retry_after: RETRY_WHEN_DOWN,
            },
            _ => ApiError::Unavailable {
                detail: format!("Kafka did not accept the messages ({error}); send them again"),
                retry_after: RETRY_WHEN_DOWN,
            },
        }
    }
}

/// Most clients retry at most this many problems' worth of fixes at once; a batch of 100 000
/// broken events does not need a 100 000-line answer.
const MAX_PROBLEMS_SHOWN: usize = 100;

#[derive(Serialize)]
struct Body<'a> {
    detail: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    problems: &'a [ItemProblem],
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(error) => error.status(),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The websocket close code for the same failure (RFC 6455 section 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ApiError::Auth(_)
            | ApiError::Unauthorized(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_) => 1008,
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => 1007,
            ApiError::TooLarge(_) => 1009,
            // "Try again later": the client should reconnect and resend what was not ponged.
            ApiError::RateLimited { .. } | ApiError::Unavailable { .. } => 1013,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        metrics::counter!(telemetry::REFUSED, "status" => status.as_str().to_owned()).increment(1);
        let detail = self.to_string();
        let problems: &[ItemProblem] = match &self {
            ApiError::Invalid { problems, .. } => {
                &problems[..problems.len().min(MAX_PROBLEMS_SHOWN)]
            }
            _ => &[],
        };
        let mut response = (
            status,
            Json(Body {
                detail: &detail,
                problems,
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: a client told 0 would retry at once.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = ApiError::RateLimited {
            detail: "slow down".into(),
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
