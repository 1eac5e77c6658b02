//! Admin authentication, Jupyter style.
//!
//! On first start the host writes a random secret to `<data-dir>/admin_secret` (mode 0600)
//! and prints an admin link `http://127.0.0.1:PORT/?admin=SECRET`. Admin APIs accept either
//! `Authorization: Bearer SECRET` (the CLI) or the cookie set when the UI is opened through
//! the admin link (`HttpOnly; SameSite=Strict`, so other sites cannot ride on it). The host
//! sends no CORS headers at all, so scripts on other origins cannot read any API answer.

use super::AppState;
use crate::data_dir;
use crate::secret::{constant_time_eq, random_b64};
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;

/// Name of the admin cookie.
pub const COOKIE: &str = "atmosphere_admin";

/// Reads `<dir>/admin_secret` (`dir` is the data dir), creating it (0600) with 256 random
/// bits if missing or empty.
pub fn load_or_create_secret(dir: &Path) -> anyhow::Result<String> {
    let path = data_dir::admin_secret_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {} // empty file: write a fresh secret below
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = random_b64(32);
    data_dir::write_private_file(&path, format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(secret)
}

/// The JSON 401 answer.
pub fn unauthorized(message: &str) -> Response {
    super::api::error(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Whether the request carries admin credentials.
pub fn is_admin(secret: &str, headers: &HeaderMap, method: &Method) -> Result<(), &'static str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let given = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or("");
        return if constant_time_eq(given.trim().as_bytes(), secret.as_bytes()) {
            Ok(())
        } else {
            Err("the bearer token is not this host's admin secret")
        };
    }
    let Some(cookie) = cookie_value(headers, COOKIE) else {
        return Err("admin authentication required: open the admin link the host printed, or send Authorization: Bearer <data-dir/admin_secret>");
    };
    if !constant_time_eq(cookie.as_bytes(), secret.as_bytes()) {
        return Err("the admin cookie is stale (the secret changed); open the admin link again");
    }
    // Defence in depth against cross-site requests that still carry the cookie (older
    // browsers without SameSite): an unsafe method must come from our own origin.
    if !matches!(*method, Method::GET | Method::HEAD) {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
            if !same {
                return Err("cross-origin admin requests are not allowed");
            }
        }
    }
    Ok(())
}

/// Middleware guarding the admin API.
pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match is_admin(&st.admin_secret, req.headers(), req.method()) {
        Ok(()) => next.run(req).await,
        Err(msg) => unauthorized(msg),
    }
}

/// Handles `?admin=SECRET` on a UI page: sets the cookie and redirects to the same path
/// without the secret, so it leaves the address bar and the history. `None` when the query
/// has no `admin` parameter.
pub fn admin_login(st: &AppState, path: &str, query: Option<&str>) -> Option<Response> {
    let query = query?;
    let mut given = None;
    let mut rest = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "admin" {
            given = Some(v.into_owned());
        } else {
            rest.push((k.into_owned(), v.into_owned()));
        }
    }
    let given = given?;
    if !constant_time_eq(given.as_bytes(), st.admin_secret.as_bytes()) {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<!doctype html><title>Atmosphere</title><h1>This admin link is not valid</h1>\
                 <p>The secret does not match this host's <code>admin_secret</code>. Use the link \
                 the host printed when it started.</p>",
            )
                .into_response(),
        );
    }
    // Redirect within this host only: a path such as `//evil.example` would be read by the
    // browser as another origin.
    let mut location = if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') {
        path.to_string()
    } else {
        "/".to_string()
    };
    if !rest.is_empty() {
        location.push('?');
        location.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(rest)
                .finish(),
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000",
        st.admin_secret
    );
    Some(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
        )
            .into_response(),
    )
}

/// The value of cookie `name` in the request, if any.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_and_cookie() {
        let mut h = HeaderMap::new();
        assert!(is_admin("s3", &h, &Method::POST).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3"));
        assert!(is_admin("s3", &h, &Method::POST).is_ok());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(is_admin("s3", &h, &Method::POST).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; atmosphere_admin=s3"),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:11451"));
        assert!(is_admin("s3", &h, &Method::POST).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:11451"),
        );
        assert!(is_admin("s3", &h, &Method::POST).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(is_admin("s3", &h, &Method::POST).is_err());
        assert!(is_admin("s3", &h, &Method::GET).is_ok());
    }
}
