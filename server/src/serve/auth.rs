//! Admin authentication, Jupyter style.
//!
//! On first start the host writes a random secret to `<data-dir>/admin_secret` (mode 0600)
//! and prints an admin link `http://127.0.0.1:PORT/?admin=SECRET`. Admin APIs accept either
//! `Authorization: Bearer SECRET` (the CLI) or the session cookie set when the UI is opened
//! through the admin link (`HttpOnly; SameSite=Strict`, so other sites cannot ride on it).
//! The host sends no CORS headers at all, so scripts on other origins cannot read any API
//! answer.
//!
//! The cookie is never the secret itself: cookies are shared by every port of a host name,
//! so another program on the same machine could read a cookie it was sent. It is a session
//! value `v1.ISSUED.ID.MAC`: the Unix time it was issued, 16 random bytes, and
//! HMAC-SHA256, keyed with the admin secret, of [`SESSION_LABEL`], the time and the id. The
//! host keeps no session table: it recomputes the MAC. A session lasts [`SESSION_MAX_AGE`];
//! a new admin secret (delete the file, restart) ends every session at once.

use super::AppState;
use crate::clock::now_secs;
use crate::data_dir;
use crate::secret::{constant_time_eq, random_b64};
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// Name of the admin cookie.
pub const COOKIE: &str = "atmosphere_admin";

/// What an admin session MAC covers before the issue time and id, so a MAC made with the
/// admin secret for any other purpose can never pass as a session.
pub const SESSION_LABEL: &str = "atmosphere-admin-session-v1";

/// How long an admin session cookie is valid (seconds): one week.
pub const SESSION_MAX_AGE: i64 = 7 * 24 * 60 * 60;

/// How far in the future an issue time may lie (the clock stepped back since).
const SESSION_CLOCK_SKEW: i64 = 5 * 60;

/// The MAC of session `id` issued at `issued`, keyed with the admin secret.
fn session_mac(secret: &str, issued: i64, id: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{SESSION_LABEL}.{issued}.{id}").as_bytes());
    Some(mac)
}

/// A fresh admin session cookie value, issued at `now` (Unix seconds).
fn new_session(secret: &str, now: i64) -> Option<String> {
    let id = random_b64(16);
    let mac = session_mac(secret, now, &id)?.finalize().into_bytes();
    Some(format!(
        "v1.{now}.{id}.{}",
        data_encoding::BASE64URL_NOPAD.encode(&mac)
    ))
}

/// Whether `value` is a session this admin secret issued that has not expired at `now`.
fn session_is_valid(secret: &str, value: &str, now: i64) -> bool {
    let mut parts = value.split('.');
    let (Some("v1"), Some(issued), Some(id), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(issued) = issued.parse::<i64>() else {
        return false;
    };
    if issued > now.saturating_add(SESSION_CLOCK_SKEW)
        || now.saturating_sub(issued) >= SESSION_MAX_AGE
    {
        return false;
    }
    let Ok(tag) = data_encoding::BASE64URL_NOPAD.decode(tag.as_bytes()) else {
        return false;
    };
    session_mac(secret, issued, id).is_some_and(|mac| mac.verify_slice(&tag).is_ok())
}

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
    if !session_is_valid(secret, cookie, now_secs()) {
        return Err("the admin session is not valid (expired, or the admin secret changed); open the admin link again");
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
    let Some(session) = new_session(&st.admin_secret, now_secs()) else {
        return Some(unauthorized(
            "cannot make an admin session from this admin secret",
        ));
    };
    let cookie =
        format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE}");
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
        let session = new_session("s3", now_secs()).unwrap();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; atmosphere_admin={session}")).unwrap(),
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

    #[test]
    fn sessions_expire_and_belong_to_one_secret() {
        let t = 1_800_000_000;
        let v = new_session("s3", t).unwrap();
        assert!(session_is_valid("s3", &v, t));
        assert!(session_is_valid("s3", &v, t + SESSION_MAX_AGE - 1));
        assert!(!session_is_valid("s3", &v, t + SESSION_MAX_AGE), "expired");
        assert!(
            !session_is_valid("s3", &v, t - SESSION_CLOCK_SKEW - 1),
            "from the future"
        );
        assert!(!session_is_valid("other", &v, t), "another secret");
        let (head, _) = v.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", data_encoding::BASE64URL_NOPAD.encode(&[0; 32]));
        assert!(!session_is_valid("s3", &forged, t));
        let later = v.replacen(&format!(".{t}."), &format!(".{}.", t + 100), 1);
        assert!(
            !session_is_valid("s3", &later, t + 100),
            "the issue time is covered"
        );
        for junk in [
            "",
            "s3",
            "v1",
            "v1...",
            "v2.1.a.b",
            "v1.x.a.b",
            &format!("{v}.x"),
        ] {
            assert!(!session_is_valid("s3", junk, t), "{junk:?}");
        }
    }
}
