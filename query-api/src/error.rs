//! The one error type of the query API and the one place it becomes an HTTP response.
//!
//! Bodies follow Prefect's shape, `{"detail": "..."}`, so a Prefect client shows the message.
//! ClickHouse's own messages are logged, never returned: they can quote SQL and are no help
//! to a caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowhouse_keys::AuthError;
use serde_json::json;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// A key refused: 401 or 403, as `flowhouse_keys` maps it.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No key, or a key nobody issued (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key for another workspace or without the scope; a forged or foreign page token (403).
    #[error("{0}")]
    Forbidden(String),
    /// A request that cannot be read: malformed query string or JSON (400).
    #[error("{0}")]
    BadRequest(String),
    /// A request that reads but asks for something invalid: a bad filter, a window too long (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// Every ClickHouse slot stayed busy for the whole queue timeout (503).
    #[error("the query API is busy; retry shortly")]
    Busy,
    /// ClickHouse stopped the query at `max_execution_time` (504).
    #[error("the query took longer than the {0} s limit; narrow the window or the filters")]
    Timeout(u64),
    /// ClickHouse failed or could not be reached (502); the cause is logged.
    #[error("the database could not answer")]
    Upstream,
    /// A bug of ours (500); the cause is logged.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(error) => error.status(),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream => StatusCode::BAD_GATEWAY,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::Unprocessable(message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response =
            (status, axum::Json(json!({ "detail": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
