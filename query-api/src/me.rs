//! `GET /api/me/workspaces`: which workspaces the request's key reads. The dashboard signs in
//! with it (the tenant always comes from the key, never from what a page or URL says); Prefect
//! Cloud answers the same question on the same path.
//!
//! Single-tenant mode rewrites every `/api/...` path into the default workspace, so the same
//! answer is also routed there ([`me_workspaces_in_workspace`]); the path's workspace plays no
//! part in it.

// utoipa's `path` macro expands `IntoParams` types with a full path.
#![allow(unused_qualifications)]

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use flowhouse_keys::{Scope, key_from_authorization};
use flowhouse_service::openapi::WorkspacePath;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use flowhouse_service::openapi::ErrorBody;

/// A workspace a key reads.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct KeyWorkspace {
    pub account_id: Uuid,
    pub workspace_id: Uuid,
}

fn workspaces(state: &AppState, headers: &HeaderMap) -> Result<Json<Vec<KeyWorkspace>>, ApiError> {
    let key = key_from_authorization(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    );
    let tenants = state.keys.workspaces(key.as_deref(), Scope::Read)?;
    Ok(Json(
        tenants
            .into_iter()
            .map(|t| KeyWorkspace {
                account_id: t.account_id,
                workspace_id: t.workspace_id,
            })
            .collect(),
    ))
}

/// The workspaces the key reads (`read` scope), in the keys file's order.
#[utoipa::path(get, path = "/api/me/workspaces",
    responses((status = 200, body = Vec<KeyWorkspace>),
        (status = 401, body = ErrorBody, description = "No key, or an unknown or revoked one."),
        (status = 403, body = ErrorBody, description = "The key lacks the `read` scope.")),
    security(("bearer" = []), ("basic" = [])), tag = "keys")]
pub async fn me_workspaces(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<KeyWorkspace>>, ApiError> {
    workspaces(&state, &headers)
}

/// The same answer as `/api/me/workspaces`, where single-tenant mode's path rewriting sends it;
/// the workspace of the path plays no part.
#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/me/workspaces",
    params(WorkspacePath),
    responses((status = 200, body = Vec<KeyWorkspace>),
        (status = 401, body = ErrorBody, description = "No key, or an unknown or revoked one."),
        (status = 403, body = ErrorBody, description = "The key lacks the `read` scope.")),
    security(("bearer" = []), ("basic" = [])), tag = "keys")]
pub async fn me_workspaces_in_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<KeyWorkspace>>, ApiError> {
    workspaces(&state, &headers)
}
