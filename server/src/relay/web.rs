//! The web app on the relay: `GET /join` is the join page (the trunk bundle's `index.html`)
//! and every other file of the bundle is served at its own path, on the relay's listener
//! (so over TLS when the relay has a certificate). An invite's `join_url` points here when
//! the host has a relay: a page every phone can load, that reaches the host over the
//! relay's `wss://` endpoint.
//!
//! - `GET /` redirects to `/join` (a person who types the relay's address sees the page);
//! - `/join` is never cached (a new bundle takes effect at once); the bundle's other files
//!   carry trunk's content hash in their names and are cached for a day;
//! - only files of the bundle are served: no directory listing, no SPA fallback (an unknown
//!   path is 404), only GET and HEAD;
//! - without a build, `/join` answers 503 with a page that says how to get one; the relay's
//!   own routes (`/mesh/…`, `/health`, `/metrics`) work either way.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

/// The bundle the relay serves (`None`: no build found).
#[derive(Clone)]
pub struct WebApp(Arc<Option<PathBuf>>);

impl WebApp {
    /// Serves the bundle in `dir` (from [`crate::web_bundle::resolve_web_dir`]).
    pub fn new(dir: Option<PathBuf>) -> WebApp {
        WebApp(Arc::new(dir))
    }
}

/// `/join` is the page itself: revalidated on every load.
const PAGE_CACHE: &str = "no-cache";
/// The bundle's other files have hashed names: a day is safe and saves phones a download.
const ASSET_CACHE: &str = "public, max-age=86400";

/// Shown at `/join` when the relay has no web build.
const NOT_BUILT: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Atmosphere relay</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto; padding: 0 1em">
<h1>This relay has no web app to serve</h1>
<p>The relay is running and relays connections, but it was started without the Atmosphere
web app, so invite links that point here cannot open the join page.</p>
<p>To fix it, build the app with <code>trunk build --release</code> at the repository root and
restart the relay with <code>--web-dir dist</code> (or run it from the directory that holds
<code>dist/</code>). Meanwhile, join with the app link or the token:
<code>atmosphere join &lt;link&gt;</code>.</p>
</body></html>
"#;

/// The web routes, merged under the relay's own routes (which take precedence).
pub fn routes(app: WebApp) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/join") }))
        .route("/join", get(join_page))
        .route("/join/", get(join_page))
        .fallback(asset)
        .with_state(app)
}

/// `GET /join`: the bundle's `index.html`, or [`NOT_BUILT`].
async fn join_page(State(app): State<WebApp>, req: Request) -> Response {
    let Some(dir) = app.0.as_ref() else {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response();
        with_headers(&mut r, PAGE_CACHE);
        return r;
    };
    let mut r = match ServeFile::new(dir.join("index.html")).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    with_headers(&mut r, PAGE_CACHE);
    r
}

/// Any other path: a file of the bundle, else 404.
async fn asset(State(app): State<WebApp>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let Some(dir) = app.0.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let svc = ServeDir::new(dir).append_index_html_on_directories(false);
    let mut r = match svc.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    if r.status().is_success() {
        with_headers(&mut r, ASSET_CACHE);
    }
    r
}

/// Caching plus the headers every page of ours carries
/// ([`crate::web_bundle::insert_security_headers`]).
fn with_headers(r: &mut Response, cache: &'static str) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    crate::web_bundle::insert_security_headers(h);
}
