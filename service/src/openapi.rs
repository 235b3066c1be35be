//! What every service's OpenAPI document shares: the workspace path parameters, the error body,
//! and the two ways a key is sent (Bearer, and Basic as Prefect clients with an auth string send
//! it).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, ToSchema};
use uuid::Uuid;

/// The workspace a request is about; the key must hold it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkspacePath {
    /// The account, a UUID (another value is a 404).
    pub account_id: Uuid,
    /// The workspace, a UUID (another value is a 404).
    pub workspace_id: Uuid,
}

/// Every error's body: what is wrong, in words (Prefect's shape).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
}

/// Adds the `bearer` and `basic` security schemes the paths refer to.
pub struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "the key as the password (any user), or base64 of the key alone",
                    ))
                    .build(),
            ),
        );
    }
}
