//! Reading requests with errors that say what is wrong and where.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted (filters are small; this only stops abuse).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON body, read as a `T` and checked against the schema `/openapi.json` publishes for it
/// (see [`crate::contract`]). An empty body or `null` reads as `{}` (Prefect's filters are all
/// optional). Invalid JSON is a 400; valid JSON of the wrong shape a 422 naming the field
/// (`filter.resource.id: ...`). The `Content-Type` is not checked: Prefect clients send JSON,
/// and so does curl without `-H`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + utoipa::ToSchema> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|error| ApiError::bad_request(error.body_text()))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let mut value: serde_json::Value = serde_json::from_slice(text).map_err(|error| {
            ApiError::bad_request(format!("the body is not valid JSON: {error}"))
        })?;
        if value.is_null() {
            value = serde_json::Value::Object(Default::default());
        }
        // Serde first, for its precise field paths; then the published schema, for what serde
        // lets through (a struct given as an array, lengths and ranges the schema bounds).
        let mut normalized = value.clone();
        crate::contract::integral_floats_as_integers(&mut normalized);
        let parsed = from_value(normalized)?;
        crate::contract::check(&T::name(), &value)?;
        Ok(JsonBody(parsed))
    }
}

/// `value` as a `T`; a 422 naming the field that does not fit.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path.is_empty() {
            ApiError::unprocessable(inner.to_string())
        } else {
            ApiError::unprocessable(format!("{path}: {inner}"))
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {message}"))
        } else {
            ApiError::unprocessable(message)
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::bad_request(format!("the body is not valid JSON: {error}")))?;
    Ok(value)
}

/// The pairs of a query string, repeated keys kept in order.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .map_err(|error| ApiError::bad_request(format!("the query string cannot be read: {error}")))
}

/// The `operator` of Prefect's filters. Flowhouse combines criteria with AND only.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub enum Operator {
    #[serde(rename = "and_")]
    And,
    #[serde(rename = "or_")]
    Or,
}
