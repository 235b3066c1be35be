//! `/openapi.json`, generated from the handlers' annotations and the request/response types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{dashboard, events, history, logs};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flowhouse query API", description = "Tenant-scoped metrics and Prefect-compatible event and log search."),
    paths(
        dashboard::handlers::flow_runs,
        dashboard::handlers::late_runs,
        dashboard::handlers::durations,
        dashboard::handlers::top_failing,
        dashboard::handlers::task_runs,
        dashboard::handlers::logs,
        events::filter_events,
        events::next_page,
        events::count::count_by,
        logs::filter_logs,
        history::flow_run_history,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_requests_and_responses() {
        let doc = ApiDoc::openapi();
        let schemas = &doc.components.as_ref().expect("components").schemas;
        for name in [
            "EventFilter",
            "EventPage",
            "ReceivedEvent",
            "EventCount",
            "LogsRequest",
            "Log",
            "HistoryRequest",
            "HistoryResponse",
            "FlowRunsResponse",
            "TaskRunsResponse",
        ] {
            assert!(
                schemas.contains_key(name),
                "{name} missing from openapi.json"
            );
        }
        assert_eq!(doc.paths.paths.len(), 11);
    }
}
