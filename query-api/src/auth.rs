//! Who is asking: the tenant of the request path, once the key has been checked against it.
//!
//! The tenant of every query comes from here and from nowhere else: not from a body, not from
//! a page token (a token only has to agree with it), not from a websocket message.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::header;
use axum::http::request::Parts;
use flowhouse_keys::{Scope, key_from_authorization};
use flowhouse_schema::Tenant;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// A request whose key holds `read` on the workspace of its path.
#[derive(Clone, Copy, Debug)]
pub struct Reader(pub Tenant);

/// The account and workspace a request's path names, before any key is checked.
#[derive(Clone, Copy, Debug)]
pub struct PathWorkspace {
    pub account_id: Uuid,
    pub workspace_id: Uuid,
}

impl PathWorkspace {
    /// `key` checked for `read` on this workspace.
    pub fn authorize(&self, state: &AppState, key: Option<&str>) -> Result<Tenant, ApiError> {
        Ok(state
            .keys
            .authorize(key, self.account_id, self.workspace_id, Scope::Read)?)
    }
}

impl FromRequestParts<AppState> for PathWorkspace {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|error| ApiError::bad_request(error.body_text()))?;
        let uuid = |name: &str| -> Result<Uuid, ApiError> {
            params
                .get(name)
                .and_then(|value| Uuid::parse_str(value).ok())
                .ok_or_else(|| ApiError::NotFound(format!("{name} in the path is not a UUID")))
        };
        Ok(Self {
            account_id: uuid("account_id")?,
            workspace_id: uuid("workspace_id")?,
        })
    }
}

/// The key of a request's `Authorization` header (Bearer, or Basic as Prefect clients with an
/// auth string send it).
pub fn header_key(parts: &Parts) -> Option<String> {
    key_from_authorization(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    )
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let workspace = PathWorkspace::from_request_parts(parts, state).await?;
        let key = header_key(parts);
        Ok(Reader(workspace.authorize(state, key.as_deref())?))
    }
}
