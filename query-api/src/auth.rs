//! Who is asking: the tenant of the request path, once the key has been checked against it.
//!
//! The tenant of every query comes from here and from nowhere else: not from a body, not from
//! a page token (a token only has to agree with it).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::header;
use axum::http::request::Parts;
use flowhouse_keys::{Scope, bearer_token};
use flowhouse_schema::Tenant;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// A request whose key holds `read` on the workspace of its path.
#[derive(Clone, Copy, Debug)]
pub struct Reader(pub Tenant);

impl FromRequestParts<AppState> for Reader {
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
        let (account_id, workspace_id) = (uuid("account_id")?, uuid("workspace_id")?);
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let tenant = state.keys.authorize(
            bearer_token(authorization),
            account_id,
            workspace_id,
            Scope::Read,
        )?;
        Ok(Reader(tenant))
    }
}
