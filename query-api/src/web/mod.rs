//! The dashboard: a web page at `/`, its files embedded in the binary (`include_str!`), written
//! for this project in plain HTML, CSS and JavaScript modules (no build step, no Node
//! toolchain). The page signs in with a read key (kept in `sessionStorage`, sent as
//! `Authorization: Bearer`), learns its workspaces from `/api/me/workspaces` and reads the
//! metric routes, `/events/filter`, `/logs/filter` and the `/events/out` websocket like any
//! other client: it has no access of its own. What the page does is described in
//! `assets/app.js`.
//!
//! Files are answered with a strong `ETag` and `Cache-Control: no-cache` (a reload costs one
//! 304 per file, and a new binary's files are never stale); the page with a Content Security
//! Policy that allows only this origin's scripts, styles and connections.

// utoipa's `path` macro expands `IntoParams` types with a full path.
#![allow(unused_qualifications)]

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use crate::error::ApiError;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the page; `index.html` is served at `/`, the others at `/dashboard/{name}`.
pub const ASSETS: &[Asset] = &[
    asset(
        "index.html",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    asset(
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    asset("app.js", JS, include_str!("assets/app.js")),
    asset("api.js", JS, include_str!("assets/api.js")),
    asset("view.js", JS, include_str!("assets/view.js")),
    asset("cards.js", JS, include_str!("assets/cards.js")),
    asset("chart.js", JS, include_str!("assets/chart.js")),
    asset("tail.js", JS, include_str!("assets/tail.js")),
    asset(
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

const fn asset(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
    Asset {
        name,
        content_type,
        body,
    }
}

/// Only this origin's files and connections (the websocket included); no inline script, so an
/// injected name can never run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                format!(
                    "\"{}\"",
                    hex::encode(&Sha256::digest(a.body.as_bytes())[..16])
                )
            })
            .collect()
    })
}

fn respond(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim().trim_start_matches("W/") == etag);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// The dashboard page.
#[utoipa::path(get, path = "/",
    responses(
        (status = 200, description = "The dashboard page.", content_type = "text/html", body = String),
        (status = 304, description = "The page is unchanged (`If-None-Match`).")),
    tag = "dashboard")]
pub async fn index(headers: HeaderMap) -> Response {
    respond(0, &headers)
}

/// Which file of the page.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FilePath {
    /// A file of the page.
    #[param(value_type = DashboardFile)]
    pub file: String,
}

/// The names of the page's files (as `/dashboard/{file}` serves them).
pub struct DashboardFile;

impl utoipa::PartialSchema for DashboardFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(ASSETS.iter().skip(1).map(|a| a.name)))
            .into()
    }
}

impl utoipa::ToSchema for DashboardFile {}

/// A file of the dashboard page: its scripts, style sheet and icon.
#[utoipa::path(get, path = "/dashboard/{file}",
    params(FilePath),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
        (status = 304, description = "The file is unchanged (`If-None-Match`)."),
        (status = 404, description = "No such file.", body = flowhouse_service::openapi::ErrorBody)),
    tag = "dashboard")]
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .position(|a| a.name == name && a.name != "index.html")
        .map(|index| respond(index, &headers))
        .ok_or_else(|| ApiError::NotFound(format!("the dashboard has no file named {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_weighs_at_most_200_kb_and_links_only_its_own_files() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total <= 200 * 1024, "the page weighs {total} bytes");
        // Every file the page refers to is served, and every served file is referred to.
        let text: String = ASSETS.iter().map(|a| a.body).collect();
        for asset in ASSETS.iter().skip(1) {
            assert!(
                text.contains(&format!("/dashboard/{}", asset.name))
                    || text.contains(&format!("./{}", asset.name)),
                "{} is not used",
                asset.name
            );
        }
        for line in text.lines() {
            for quoted in line.split(['"', '\'']) {
                if let Some(name) = quoted.strip_prefix("/dashboard/") {
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{name} is not served"
                    );
                }
            }
        }
    }

    #[test]
    fn no_script_writes_html_from_data() {
        // Names of flows and tags are data (tests use hostile ones): the page builds its DOM
        // with textContent and createElement, never from strings.
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for forbidden in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !asset.body.contains(forbidden),
                    "{} uses {forbidden}",
                    asset.name
                );
            }
        }
    }
}
