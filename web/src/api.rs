//! Thin `fetch` wrapper for the host's HTTP API (same origin, so the admin cookie set by
//! the `/?admin=…` link rides along). Every call has a deadline and maps failures to a
//! small enum the views can explain in plain words.

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestCredentials, RequestInit, Response};

/// How long an API call may take before the UI reports the host as unreachable.
const DEADLINE_MS: u32 = 10_000;
/// Largest API answer the app accepts (bytes), so a broken proxy cannot stall the tab.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiFailure {
    /// `401`/`403`: the page was not opened through the admin link.
    Unauthorized,
    /// The host answered with another error status; `message` is its JSON `message` when present.
    Http { status: u16, message: String },
    /// No answer (host down, network error, deadline).
    Network(String),
    /// The answer was not the JSON we expected.
    Decode(String),
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiFailure::Unauthorized => f.write_str("admin authorization required"),
            ApiFailure::Http { status, message } => write!(f, "host answered {status}: {message}"),
            ApiFailure::Network(m) => write!(f, "cannot reach the host: {m}"),
            ApiFailure::Decode(m) => write!(f, "unexpected answer from the host: {m}"),
        }
    }
}

fn js_err(v: JsValue) -> String {
    v.as_string()
        .or_else(|| js_sys::JSON::stringify(&v).ok().and_then(|s| s.as_string()))
        .unwrap_or_else(|| "unknown error".into())
}

/// Sends one request and returns the status and body text.
async fn send(method: &str, path: &str, body: Option<String>) -> Result<(u16, String), ApiFailure> {
    let window = web_sys::window().ok_or_else(|| ApiFailure::Network("no window".into()))?;
    let init = RequestInit::new();
    init.set_method(method);
    init.set_credentials(RequestCredentials::SameOrigin);
    // AbortSignal.timeout() gives every call a deadline without extra timers.
    init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(DEADLINE_MS)));
    if let Some(b) = &body {
        init.set_body(&JsValue::from_str(b));
    }
    let req =
        Request::new_with_str_and_init(path, &init).map_err(|e| ApiFailure::Network(js_err(e)))?;
    if body.is_some() {
        let _ = req.headers().set("Content-Type", "application/json");
    }
    let resp = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(|e| ApiFailure::Network(js_err(e)))?;
    let resp: Response = resp
        .dyn_into()
        .map_err(|e| ApiFailure::Network(js_err(e)))?;
    let status = resp.status();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p)
            .await
            .ok()
            .and_then(|t| t.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    if text.len() > MAX_BODY_BYTES {
        return Err(ApiFailure::Decode(format!(
            "answer of {} bytes is too large",
            text.len()
        )));
    }
    if status == 401 || status == 403 {
        return Err(ApiFailure::Unauthorized);
    }
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<atmosphere_shared::api::ApiError>(&text)
            .map(|e| e.message)
            .unwrap_or_else(|_| text.chars().take(200).collect());
        return Err(ApiFailure::Http { status, message });
    }
    Ok((status, text))
}

/// `GET path` parsed as JSON.
pub async fn get_json<T: DeserializeOwned>(path: &str) -> Result<T, ApiFailure> {
    let (_, text) = send("GET", path, None).await?;
    serde_json::from_str(&text).map_err(|e| ApiFailure::Decode(e.to_string()))
}

/// `POST path` with a JSON body, answer parsed as JSON.
pub async fn post_json<B: Serialize, T: DeserializeOwned>(
    path: &str,
    body: &B,
) -> Result<T, ApiFailure> {
    let body = serde_json::to_string(body).map_err(|e| ApiFailure::Decode(e.to_string()))?;
    let (_, text) = send("POST", path, Some(body)).await?;
    serde_json::from_str(&text).map_err(|e| ApiFailure::Decode(e.to_string()))
}

/// `DELETE path`; the answer body is ignored.
pub async fn delete(path: &str) -> Result<(), ApiFailure> {
    send("DELETE", path, None).await.map(|_| ())
}
