//! The automations API, mounted into the query API's router, tenant-scoped like every route:
//! the tenant comes only from the path the key was checked against (`read` to look, `write`
//! to change). Prefect's routes and shapes (`prefect/server/api/automations.py`):
//!
//! - `POST /automations/` (201, the automation), `GET /automations/{id}`,
//!   `PUT /automations/{id}` (204), `PATCH /automations/{id}` (204; `enabled`, and
//!   Flowhouse's `name`, `description`), `DELETE /automations/{id}` (204),
//!   `POST /automations/filter` (`sort`, `limit`, `offset`, `automations.name.any_`,
//!   `automations.tags.any_/all_`), `POST /automations/count`;
//! - Flowhouse's `GET /automations/{id}/deliveries`: the delivery log, newest first, and
//!   `GET /automations/status`: each automation's last firing (the dashboard's panel).

// utoipa's `path` macro expands `IntoParams` types with a full path.
#![allow(unused_qualifications)]

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flowhouse_keys::Scope;
use flowhouse_query_api::AppState;
use flowhouse_query_api::auth::{PathWorkspace, Reader, header_key};
use flowhouse_query_api::error::ApiError;
use flowhouse_query_api::openapi::Errors;
use flowhouse_schema::Tenant;
use flowhouse_service::http::WORKSPACE_BASE;
use flowhouse_service::openapi::{KeySchemes, WorkspacePath};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::model::{self, Automation, AutomationCore, AutomationPatch, Limits};
use crate::store::{AutomationDelivery, Sort, Store};

/// The most automations one workspace may have.
pub const MAX_PER_WORKSPACE: u64 = 1_000;
const MAX_DELIVERIES: u64 = 1_000;

/// What the handlers share beside the query API's state.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub limits: Limits,
}

/// A request whose key holds `write` on the workspace of its path.
#[derive(Clone, Copy, Debug)]
pub struct Writer(pub Tenant);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let workspace = PathWorkspace::from_request_parts(parts, state).await?;
        let key = header_key(parts);
        Ok(Writer(state.keys.authorize(
            key.as_deref(),
            workspace.account_id,
            workspace.workspace_id,
            Scope::Write,
        )?))
    }
}

fn upstream(error: anyhow::Error) -> ApiError {
    tracing::error!("automations store: {error:#}");
    ApiError::Upstream
}

fn automation_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::NotFound(format!("automation {text:?} is not a UUID")))
}

fn read_core(body: &Bytes, limits: &Limits) -> Result<AutomationCore, ApiError> {
    let mut core = model::parse_core(body).map_err(|e| {
        if e.starts_with("the body is not JSON") {
            ApiError::BadRequest(e)
        } else {
            ApiError::Unprocessable(e)
        }
    })?;
    core.validate(limits).map_err(ApiError::Unprocessable)?;
    Ok(core)
}

/// The automation's id in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct AutomationPath {
    pub account_id: Uuid,
    pub workspace_id: Uuid,
    /// The automation, a UUID.
    pub id: Uuid,
}

#[derive(Deserialize)]
pub struct Ids {
    pub id: String,
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations",
    params(WorkspacePath),
    request_body = AutomationCore,
    responses((status = 201, body = Automation), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn create(
    Writer(tenant): Writer,
    Extension(api): Extension<Arc<Api>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let core = read_core(&body, &api.limits)?;
    if api.store.count(tenant).await.map_err(upstream)? >= MAX_PER_WORKSPACE {
        return Err(ApiError::unprocessable(format!(
            "a workspace has at most {MAX_PER_WORKSPACE} automations"
        )));
    }
    let now = Utc::now();
    let automation = Automation {
        id: Uuid::now_v7(),
        core,
        created: now,
        updated: now,
    };
    api.store
        .put(tenant, &automation, false)
        .await
        .map_err(upstream)?;
    Ok((StatusCode::CREATED, Json(automation)).into_response())
}

async fn existing(api: &Api, tenant: Tenant, id: &str) -> Result<Automation, ApiError> {
    let id = automation_id(id)?;
    api.store
        .get(tenant, id)
        .await
        .map_err(upstream)?
        .ok_or_else(|| ApiError::NotFound("Automation not found".into()))
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/{id}",
    params(AutomationPath),
    responses((status = 200, body = Automation), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn read(
    Reader(tenant): Reader,
    Extension(api): Extension<Arc<Api>>,
    Path(Ids { id }): Path<Ids>,
) -> Result<Json<Automation>, ApiError> {
    Ok(Json(existing(&api, tenant, &id).await?))
}

#[utoipa::path(put, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/{id}",
    params(AutomationPath),
    request_body = AutomationCore,
    responses((status = 204, description = "Replaced"), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn replace(
    Writer(tenant): Writer,
    Extension(api): Extension<Arc<Api>>,
    Path(Ids { id }): Path<Ids>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut automation = existing(&api, tenant, &id).await?;
    automation.core = read_core(&body, &api.limits)?;
    automation.updated = later(automation.updated);
    api.store
        .put(tenant, &automation, false)
        .await
        .map_err(upstream)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A version's `updated`, strictly after the previous one (the latest version wins).
fn later(previous: DateTime<Utc>) -> DateTime<Utc> {
    Utc::now().max(previous + chrono::Duration::microseconds(1))
}

#[utoipa::path(patch, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/{id}",
    params(AutomationPath),
    request_body = AutomationPatch,
    responses((status = 204, description = "Updated"), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn patch(
    Writer(tenant): Writer,
    Extension(api): Extension<Arc<Api>>,
    Path(Ids { id }): Path<Ids>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut automation = existing(&api, tenant, &id).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::unprocessable("the body must be a JSON object"));
    }
    let patch: AutomationPatch = serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("the body: {e}")))?;
    if let Some(enabled) = patch.enabled {
        automation.core.enabled = enabled;
    }
    if let Some(name) = patch.name {
        automation.core.name = name;
    }
    if let Some(description) = patch.description {
        automation.core.description = description;
    }
    automation
        .core
        .validate(&api.limits)
        .map_err(ApiError::Unprocessable)?;
    automation.updated = later(automation.updated);
    api.store
        .put(tenant, &automation, false)
        .await
        .map_err(upstream)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/{id}",
    params(AutomationPath),
    responses((status = 204, description = "Deleted"), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn delete(
    Writer(tenant): Writer,
    Extension(api): Extension<Arc<Api>>,
    Path(Ids { id }): Path<Ids>,
) -> Result<StatusCode, ApiError> {
    let mut automation = existing(&api, tenant, &id).await?;
    automation.updated = later(automation.updated);
    api.store
        .put(tenant, &automation, true)
        .await
        .map_err(upstream)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /automations/filter`'s body (Prefect's).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AutomationFilterRequest {
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub automations: Option<AutomationFilter>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AutomationFilter {
    #[serde(default)]
    pub name: Option<AutomationNameFilter>,
    #[serde(default)]
    pub tags: Option<AutomationTagsFilter>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AutomationNameFilter {
    #[serde(default)]
    pub any_: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AutomationTagsFilter {
    #[serde(default)]
    pub any_: Option<Vec<String>>,
    #[serde(default)]
    pub all_: Option<Vec<String>>,
}

fn filter_body(body: &Bytes) -> Result<AutomationFilterRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(AutomationFilterRequest::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if value.is_null() {
        return Ok(AutomationFilterRequest::default());
    }
    if !value.is_object() {
        return Err(ApiError::unprocessable("the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| ApiError::unprocessable(format!("{}: {}", e.path(), e.inner())))
}

async fn matching(
    api: &Api,
    tenant: Tenant,
    request: &AutomationFilterRequest,
) -> Result<Vec<Automation>, ApiError> {
    let sort = match request.sort.as_deref() {
        None => Sort::NameAsc,
        Some(text) => Sort::parse(text).ok_or_else(|| {
            ApiError::unprocessable(format!(
                "sort: {text:?} is not one of NAME_ASC, NAME_DESC, CREATED_DESC, UPDATED_DESC"
            ))
        })?,
    };
    let all = api
        .store
        .list(tenant, sort, 0, MAX_PER_WORKSPACE)
        .await
        .map_err(upstream)?;
    let filter = request.automations.as_ref();
    Ok(all
        .into_iter()
        .filter(|a| {
            let Some(f) = filter else { return true };
            let name_ok = f
                .name
                .as_ref()
                .and_then(|n| n.any_.as_ref())
                .is_none_or(|names| names.contains(&a.core.name));
            let tags = f.tags.as_ref();
            let any_ok = tags
                .and_then(|t| t.any_.as_ref())
                .is_none_or(|any| any.iter().any(|t| a.core.tags.contains(t)));
            let all_ok = tags
                .and_then(|t| t.all_.as_ref())
                .is_none_or(|all| all.iter().all(|t| a.core.tags.contains(t)));
            name_ok && any_ok && all_ok
        })
        .collect())
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/filter",
    params(WorkspacePath),
    request_body = Option<AutomationFilterRequest>,
    responses((status = 200, body = Vec<Automation>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn filter(
    Reader(tenant): Reader,
    Extension(api): Extension<Arc<Api>>,
    body: Bytes,
) -> Result<Json<Vec<Automation>>, ApiError> {
    let request = filter_body(&body)?;
    let limit = request.limit.unwrap_or(200).min(MAX_PER_WORKSPACE) as usize;
    let offset = request.offset.unwrap_or(0).min(MAX_PER_WORKSPACE) as usize;
    let found = matching(&api, tenant, &request).await?;
    Ok(Json(found.into_iter().skip(offset).take(limit).collect()))
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/count",
    params(WorkspacePath),
    request_body = Option<AutomationFilterRequest>,
    responses((status = 200, body = u64, content_type = "application/json"), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn count(
    Reader(tenant): Reader,
    Extension(api): Extension<Arc<Api>>,
    body: Bytes,
) -> Result<Json<u64>, ApiError> {
    let request = filter_body(&body)?;
    Ok(Json(matching(&api, tenant, &request).await?.len() as u64))
}

/// `?limit=` of the delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many rows, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/{id}/deliveries",
    params(AutomationPath, DeliveriesQuery),
    responses((status = 200, body = Vec<AutomationDelivery>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn deliveries(
    Reader(tenant): Reader,
    Extension(api): Extension<Arc<Api>>,
    Path(Ids { id }): Path<Ids>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AutomationDelivery>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::unprocessable(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_DELIVERIES).contains(&limit) {
        return Err(ApiError::unprocessable(format!(
            "limit: from 1 to {MAX_DELIVERIES}"
        )));
    }
    let automation = existing(&api, tenant, &id).await?;
    let rows = api
        .store
        .deliveries(tenant, automation.id, limit)
        .await
        .map_err(upstream)?;
    Ok(Json(
        rows.into_iter().map(AutomationDelivery::from).collect(),
    ))
}

/// One automation as the dashboard's panel shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AutomationStatus {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    /// `event` or `metric`.
    pub trigger: String,
    pub last_fired: Option<DateTime<Utc>>,
    /// `triggered` or `resolved`: the last firing's transition.
    pub last_transition: Option<String>,
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/automations/status",
    params(WorkspacePath),
    responses((status = 200, body = Vec<AutomationStatus>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "automations")]
pub async fn status(
    Reader(tenant): Reader,
    Extension(api): Extension<Arc<Api>>,
) -> Result<Json<Vec<AutomationStatus>>, ApiError> {
    let all = api
        .store
        .list(tenant, Sort::NameAsc, 0, MAX_PER_WORKSPACE)
        .await
        .map_err(upstream)?;
    let last = api.store.last_fired(tenant).await.map_err(upstream)?;
    Ok(Json(
        all.into_iter()
            .map(|a| {
                let fired = last.iter().find(|(id, _, _)| *id == a.id);
                AutomationStatus {
                    id: a.id,
                    name: a.core.name.clone(),
                    enabled: a.core.enabled,
                    trigger: match a.core.trigger {
                        model::Trigger::Event(_) => "event".into(),
                        model::Trigger::Metric(_) => "metric".into(),
                    },
                    last_fired: fired.map(|f| f.1),
                    last_transition: fired.map(|f| f.2.clone()),
                }
            })
            .collect(),
    ))
}

/// The routes, for the query API's router (they read its `AppState` for keys).
pub fn routes(api: Arc<Api>) -> Router<AppState> {
    let base = WORKSPACE_BASE;
    Router::new()
        .route(&format!("{base}/automations"), post(create))
        .route(&format!("{base}/automations/filter"), post(filter))
        .route(&format!("{base}/automations/count"), post(count))
        .route(&format!("{base}/automations/status"), get(status))
        .route(
            &format!("{base}/automations/{{id}}"),
            get(read).put(replace).patch(patch).delete(delete),
        )
        .route(
            &format!("{base}/automations/{{id}}/deliveries"),
            get(deliveries),
        )
        .layer(Extension(api))
}

#[derive(OpenApi)]
#[openapi(
    paths(create, read, replace, patch, delete, filter, count, deliveries, status),
    components(schemas(Automation, AutomationCore, AutomationDelivery, AutomationStatus, AutomationFilterRequest)),
    modifiers(&KeySchemes)
)]
pub struct ApiDoc;

/// The routes' OpenAPI paths and schemas as JSON, to merge into a service's document.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// `into`'s paths and schemas plus `from`'s (the first definition of a name wins).
pub fn merge_document(mut into: serde_json::Value, from: &serde_json::Value) -> serde_json::Value {
    for section in ["paths", "components/schemas", "components/securitySchemes"] {
        let pointer = format!("/{section}");
        if into.pointer(&pointer).is_none() {
            continue;
        }
        if let (Some(target), Some(source)) = (
            into.pointer_mut(&pointer).and_then(|v| v.as_object_mut()),
            from.pointer(&pointer).and_then(|v| v.as_object()),
        ) {
            for (name, value) in source {
                target.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    into
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_do_not_shadow_the_query_apis() {
        let ours = document();
        let theirs = flowhouse_query_api::document();
        let names = |doc: &serde_json::Value| -> Vec<String> {
            doc.pointer("/components/schemas")
                .and_then(|v| v.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let theirs_names = names(&theirs);
        // Every reference resolves, in our document or in the one ours is merged into.
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    for (k, v) in o {
                        if k == "$ref" {
                            out.push(v.as_str().unwrap_or("").to_string());
                        }
                        refs(v, out);
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&ours, &mut all);
        let merged = merge_document(theirs, &ours);
        for r in all {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                merged
                    .pointer(&format!("/components/schemas/{name}"))
                    .is_some(),
                "{r} does not resolve"
            );
        }
        let theirs = theirs_names;
        for name in names(&ours) {
            assert!(
                !theirs.contains(&name),
                "{name} is already a query API schema"
            );
            assert!(
                name.starts_with("Automation")
                    || name.starts_with("Webhook")
                    || [
                        "EventTrigger",
                        "EventPosture",
                        "MetricTrigger",
                        "MetricTriggerQuery",
                        "MetricTriggerOperator",
                        "PrefectMetric"
                    ]
                    .contains(&name.as_str()),
                "{name}"
            );
        }
    }
}
