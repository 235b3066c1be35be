//! How the public HTTP API of every Flowhouse service is reached, the same way in each:
//!
//! - Prefect's workspace-scoped paths, [`WORKSPACE_BASE`], and the two routes any Prefect client
//!   calls first ([`prefect_meta_routes`]: `/admin/version` and `/health`);
//! - paths with or without a trailing slash (Prefect's router accepts both; its SDK posts logs
//!   to `/logs/`);
//! - optional single-tenant mode: every workspace route also under `/api/...`, so that a
//!   self-hosted-shaped `PREFECT_API_URL=http://host:4200/api` works;
//! - CORS for the origins the operator allows (none by default);
//! - the public base URL that absolute links (`next_page`) are built from.
//!
//! The path rewriting happens before routing (a layer on the routes would run after it), so
//! [`PublicApi::router`] wraps the service's routes as the fallback of an outer router.

use std::str::FromStr;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

/// Prefect's workspace-scoped base path (Prefect Cloud's shape).
pub const WORKSPACE_BASE: &str = "/api/accounts/{account_id}/workspaces/{workspace_id}";

/// The Prefect API version Flowhouse answers `/admin/version` with by default: the version its
/// compatibility tests run against. Prefect clients refuse a server of another major version
/// and warn when the server is older than they are.
pub const PREFECT_API_VERSION: &str = "3.8.8";

/// Flags shared by every service with a public API.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PublicApiArgs {
    /// The URL clients reach Flowhouse at (`https://flowhouse.example.com`), for absolute links
    /// such as `next_page`. Unset: built from the request's `X-Forwarded-Proto` and `Host`.
    #[arg(long, env = "FLOWHOUSE_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// Single-tenant mode, `<account id>/<workspace id>`: every workspace route is also served
    /// under `/api/...` for this workspace (a key must still hold it).
    #[arg(long, env = "FLOWHOUSE_DEFAULT_TENANT", value_parser = DefaultTenant::from_str)]
    pub default_tenant: Option<DefaultTenant>,
    /// Origins a browser may call the API from, comma-separated (`*`: any). None by default.
    #[arg(long, env = "FLOWHOUSE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The Prefect API version answered on `/admin/version`.
    #[arg(long, env = "FLOWHOUSE_PREFECT_API_VERSION", default_value = PREFECT_API_VERSION)]
    pub prefect_api_version: String,
}

impl PublicApiArgs {
    /// Defaults, as the command line has them.
    pub fn new() -> Self {
        Self {
            prefect_api_version: PREFECT_API_VERSION.into(),
            ..Self::default()
        }
    }

    /// Checks the flags (CORS origins) once, at start.
    pub fn build(&self) -> anyhow::Result<PublicApi> {
        Ok(PublicApi {
            public_url: self.public_url.clone(),
            default_tenant: self.default_tenant,
            cors: cors_layer(&self.cors_origins)?,
            prefect_api_version: self.prefect_api_version.clone(),
        })
    }
}

/// The public API's settings, checked.
#[derive(Clone, Debug)]
pub struct PublicApi {
    public_url: Option<String>,
    default_tenant: Option<DefaultTenant>,
    cors: Option<CorsLayer>,
    prefect_api_version: String,
}

impl Default for PublicApi {
    fn default() -> Self {
        PublicApiArgs::new()
            .build()
            .expect("the default flags are valid")
    }
}

impl PublicApi {
    /// The scheme and authority absolute links start with, for a request with `headers`:
    /// the configured public URL, else `X-Forwarded-Proto` (`https` only) and a well-formed
    /// `Host`, else `None` (then links are relative).
    pub fn base_url(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })?;
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| p.eq_ignore_ascii_case("https"))
            .map_or("http", |_| "https");
        Some(format!("{scheme}://{host}"))
    }

    /// `routes` (with [`prefect_meta_routes`] added) as the public API: path rewriting and CORS
    /// in front of routing.
    pub fn router(&self, routes: Router) -> Router {
        let default_tenant = self.default_tenant;
        let routes = routes.merge(prefect_meta_routes(&self.prefect_api_version));
        let rewritten = tower::ServiceBuilder::new()
            .map_request(move |request: Request| rewrite(request, default_tenant.as_ref()))
            .service(routes);
        let router = Router::new().fallback_service(rewritten);
        match &self.cors {
            Some(cors) => router.layer(cors.clone()),
            None => router,
        }
    }
}

/// `http(s)://host[:port][/prefix]`, kept without a trailing slash.
fn parse_public_url(text: &str) -> Result<String, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL ({error})"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => Err("expected http(s)://host[:port][/path], without a query".into()),
    }
}

/// The workspace of single-tenant mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultTenant {
    pub account_id: Uuid,
    pub workspace_id: Uuid,
}

impl FromStr for DefaultTenant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = text.split_once('/').and_then(|(account, workspace)| {
            Some(Self {
                account_id: Uuid::parse_str(account.trim()).ok()?,
                workspace_id: Uuid::parse_str(workspace.trim()).ok()?,
            })
        });
        parsed.ok_or_else(|| format!("expected <account uuid>/<workspace uuid>, not {text:?}"))
    }
}

impl DefaultTenant {
    fn base_path(&self) -> String {
        format!(
            "/api/accounts/{}/workspaces/{}",
            self.account_id, self.workspace_id
        )
    }
}

/// The path a request is routed by: without trailing slashes, and in single-tenant mode with
/// `/api/...` turned into the default workspace's path. `None` when the path stays as it is.
pub fn routed_path(path: &str, default_tenant: Option<&DefaultTenant>) -> Option<String> {
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    let scoped = default_tenant.and_then(|tenant| {
        let rest = trimmed.strip_prefix("/api")?;
        let outside_workspaces = rest.is_empty() || rest.starts_with('/');
        (outside_workspaces && !rest.starts_with("/accounts/") && rest != "/accounts")
            .then(|| format!("{}{rest}", tenant.base_path()))
    });
    match scoped {
        Some(path) => Some(path),
        None if trimmed != path => Some(trimmed.to_string()),
        None => None,
    }
}

fn rewrite(mut request: Request, default_tenant: Option<&DefaultTenant>) -> Request {
    let Some(path) = routed_path(request.uri().path(), default_tenant) else {
        return request;
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The CORS layer for `origins`; `None` when no origin is allowed.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/'))
                    .map_err(|_| anyhow::anyhow!("CORS origin {origin:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                HeaderName::from_static("x-prefect-api-version"),
            ])
            .expose_headers([
                header::ETAG,
                header::AGE,
                header::RETRY_AFTER,
                header::CACHE_CONTROL,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// What Prefect clients ask a server before anything else, answered as Prefect's server
/// answers by default, under the workspace path: `GET /admin/version` (a JSON string; clients
/// refuse another major version), `GET /health` (`true`) and `GET /csrf-token` (422 "CSRF
/// protection is disabled.", which tells the client not to send CSRF tokens).
pub fn prefect_meta_routes(prefect_api_version: &str) -> Router {
    let version = serde_json::Value::String(prefect_api_version.to_string());
    Router::new()
        .route(
            &format!("{WORKSPACE_BASE}/csrf-token"),
            get(|| async {
                (
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(serde_json::json!({"detail": "CSRF protection is disabled."})),
                )
            }),
        )
        .route(
            &format!("{WORKSPACE_BASE}/admin/version"),
            get(move || async move { axum::Json(version) }),
        )
        .route(
            &format!("{WORKSPACE_BASE}/health"),
            get(|| async { axum::Json(true) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> DefaultTenant {
        "0b0e1a52-5c55-4b1c-9a52-0f3a8f0e9d01/7c1d2a52-5c55-4b1c-9a52-0f3a8f0e9d02"
            .parse()
            .unwrap()
    }

    #[test]
    fn trailing_slashes_are_dropped() {
        assert_eq!(
            routed_path("/api/x/logs/", None).as_deref(),
            Some("/api/x/logs")
        );
        assert_eq!(
            routed_path("/api/x/logs//", None).as_deref(),
            Some("/api/x/logs")
        );
        assert_eq!(routed_path("/api/x/logs", None), None);
        assert_eq!(routed_path("/", None), None);
        assert_eq!(routed_path("//", None).as_deref(), Some("/"));
    }

    #[test]
    fn single_tenant_mode_scopes_api_paths() {
        let t = tenant();
        let base = t.base_path();
        assert_eq!(
            routed_path("/api/events/in", Some(&t)),
            Some(format!("{base}/events/in"))
        );
        assert_eq!(
            routed_path("/api/logs/", Some(&t)),
            Some(format!("{base}/logs"))
        );
        assert_eq!(routed_path("/api", Some(&t)), Some(base.clone()));
        // Workspace paths and everything outside /api stay as they are.
        assert_eq!(routed_path(&format!("{base}/events"), Some(&t)), None);
        assert_eq!(routed_path("/healthz", Some(&t)), None);
        assert_eq!(routed_path("/apix/events", Some(&t)), None);
        assert_eq!(routed_path("/api/events", None), None);
    }

    #[test]
    fn default_tenants_and_public_urls_are_checked() {
        assert!("a/b".parse::<DefaultTenant>().is_err());
        assert!(
            "0b0e1a52-5c55-4b1c-9a52-0f3a8f0e9d01"
                .parse::<DefaultTenant>()
                .is_err()
        );
        assert_eq!(
            parse_public_url("https://fh.example.com/").unwrap(),
            "https://fh.example.com"
        );
        assert!(parse_public_url("fh.example.com").is_err());
        assert!(parse_public_url("ftp://fh.example.com").is_err());
    }

    #[test]
    fn base_urls_prefer_the_configured_one_then_forwarded_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("fh.local:4200"));
        let args = PublicApi::default();
        assert_eq!(
            args.base_url(&headers).as_deref(),
            Some("http://fh.local:4200")
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(
            args.base_url(&headers).as_deref(),
            Some("https://fh.local:4200")
        );
        headers.insert(header::HOST, HeaderValue::from_static("evil.com/x?"));
        assert_eq!(args.base_url(&headers), None);
        let configured = PublicApiArgs {
            public_url: Some("https://fh.example.com".into()),
            ..PublicApiArgs::new()
        }
        .build()
        .unwrap();
        assert_eq!(
            configured.base_url(&headers).as_deref(),
            Some("https://fh.example.com")
        );
    }

    mod served {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt as _;

        use super::*;

        /// A router answering with the path it routed, under the workspace base.
        fn echo(args: PublicApiArgs) -> Router {
            let routes = Router::new().route(
                &format!("{WORKSPACE_BASE}/logs"),
                axum::routing::post(|uri: Uri| async move { uri.path().to_string() }),
            );
            args.build().unwrap().router(routes)
        }

        async fn call(router: Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }

        fn post(path: &str) -> Request<Body> {
            Request::post(path).body(Body::empty()).unwrap()
        }

        #[tokio::test]
        async fn trailing_slashes_and_single_tenant_paths_reach_the_workspace_route() {
            let t = tenant();
            let base = t.base_path();
            let router = echo(PublicApiArgs {
                default_tenant: Some(t),
                ..PublicApiArgs::new()
            });
            for path in [
                format!("{base}/logs/"),
                "/api/logs/".into(),
                "/api/logs".into(),
            ] {
                let (status, _, body) = call(router.clone(), post(&path)).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(body, format!("{base}/logs"), "{path}");
            }
            // Without single-tenant mode, /api/... is not a workspace.
            let (status, _, _) = call(echo(PublicApiArgs::new()), post("/api/logs")).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            // What every Prefect client asks first.
            let get = |path: String| Request::get(path).body(Body::empty()).unwrap();
            let (status, _, body) = call(router.clone(), get("/api/admin/version".into())).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "\"3.8.8\""));
            let (status, _, body) = call(router.clone(), get(format!("{base}/csrf-token"))).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(body.contains("CSRF protection is disabled."), "{body}");
        }

        #[tokio::test]
        async fn preflights_are_answered_for_allowed_origins_only() {
            let router = echo(PublicApiArgs {
                cors_origins: vec!["https://dash.example".into()],
                ..PublicApiArgs::new()
            });
            let preflight = |origin: &str| {
                Request::options("/api/accounts/a/workspaces/b/logs")
                    .header(header::ORIGIN, origin)
                    .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                    .header(
                        header::ACCESS_CONTROL_REQUEST_HEADERS,
                        "authorization,content-type",
                    )
                    .body(Body::empty())
                    .unwrap()
            };
            let (status, headers, _) =
                call(router.clone(), preflight("https://dash.example")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
                "https://dash.example"
            );
            let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap();
            assert!(allowed.contains("authorization"), "{allowed}");
            let (_, headers, _) = call(router.clone(), preflight("https://evil.example")).await;
            assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
            // No origins configured: no CORS headers at all.
            let (_, headers, _) = call(
                echo(PublicApiArgs::new()),
                preflight("https://dash.example"),
            )
            .await;
            assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        }
    }

    #[test]
    fn cors_needs_valid_origins() {
        assert!(cors_layer(&[]).unwrap().is_none());
        assert!(cors_layer(&["https://a.example".into()]).unwrap().is_some());
        assert!(cors_layer(&["*".into()]).unwrap().is_some());
        assert!(cors_layer(&["bad\norigin".into()]).is_err());
    }
}
