//! The built web UI (trunk's `dist/`): static files with an SPA fallback, so `/join` and any
//! other unknown non-API GET path serve `index.html`. Without a web build the host still
//! runs: `/` explains how to build the UI and the API keeps working. Which directory is the
//! build: [`crate::web_bundle::resolve_web_dir`].

use super::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

/// Page shown at `/` when there is no web build.
const NOT_BUILT: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Atmosphere host</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Atmosphere host is running</h1>
<p>The web UI is not built, so there is nothing to show here yet. The API and the mesh
WebSocket work.</p>
<p>Build the UI with <code>trunk build --release</code> at the repository root (or run
<code>./scripts/run.sh</code>), then restart the host or pass <code>--web-dir DIR</code>.</p>
<p>Mint an invite from a terminal: <code>atmosphere token</code>.</p>
</body></html>
"#;

/// Fallback handler: admin login links, static files, SPA fallback.
pub async fn serve(State(st): State<AppState>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return super::api::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served here",
        );
    }
    if let Some(r) = super::auth::admin_login(&st, req.uri().path(), req.uri().query()) {
        return r;
    }
    let Some(dir) = st.web_dir.clone() else {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response();
    };
    let index = dir.join("index.html");
    let svc = ServeDir::new(&dir)
        .append_index_html_on_directories(true)
        .fallback(ServeFile::new(index));
    match svc.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}
