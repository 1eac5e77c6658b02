//! Invite link codec: v2 (`atmosphere://join?…&endpoints={json}`), v1 (`…&endpoint=ws://…`)
//! and the web form (`http(s)://HOST/join#…`). The only place links are built or read:
//! the server, the CLI and the web app all call [`Invite::parse`] and the `to_*_link`
//! generators.
//!
//! # What the parser accepts
//!
//! - `atmosphere://join?PARAMS` (also `atmosphere://join/?…` and `atmosphere://join#…`);
//! - `http(s)://HOST[:PORT][/PREFIX]/join#PARAMS` and `…/join?PARAMS`;
//! - `PARAMS` is `&`-separated `key=value`: `token`, `mesh`, optionally `id` (the mesh id
//!   the host must prove in the handshake, see [`crate::handshake`]; links of earlier
//!   versions have none and still parse), and either `endpoints` (v2,
//!   a JSON object with `local`/`public`/`relay` each a string or `null`, keys may be
//!   missing) or `endpoint` (v1, one URL). Unknown parameters are ignored, a repeated known
//!   parameter is an error (which one would the user have meant?).
//! - Values are percent-decoded; in `token` and `mesh`, `+` also means a space (HTML form
//!   encoding), so `Tom+%26+Jerry` and `Tom%20%26%20Jerry` are the same name.
//! - `endpoints` may be the raw, unencoded JSON exactly as the original design's examples
//!   print it (`endpoints={"local":"ws://…"}`). Raw JSON may contain `&` inside its
//!   strings, so when the value starts with `{` the parser finds the end of the JSON object
//!   instead of splitting at the next `&`. Browsers encode `"` as `%22` in a fragment but
//!   leave `{` alone, and that half-encoded form is accepted too. Raw JSON is read verbatim
//!   when it is valid; otherwise only the escapes a browser adds are undone, so a `%XX`
//!   that was already inside an endpoint URL normally survives (a literal `%22` inside a
//!   URL of a browser-mangled raw link is the one ambiguity left; generated links have
//!   none).
//! - After the `?`, everything up to the end is parameters, including a `#`: the generator
//!   always encodes `#`, so a raw one can only come from a hand-written link, where reading
//!   it as part of the value is the kinder interpretation.
//!
//! # v1 links
//!
//! A v1 link has a single `endpoint` and does not say which path it is. It is filed under
//! `local` when its host is a loopback, private (RFC 1918), link-local or IPv6 unique-local
//! address, `localhost` or an mDNS `*.local` name, and under `public` otherwise. So a v1
//! invite pointing at a LAN address is raced as the LAN path, as its author meant.
//!
//! # Limits
//!
//! Input longer than [`MAX_LINK_LEN`] bytes is refused before any work is done. Only
//! `ws://` and `wss://` endpoints are accepted, checked as the WHATWG URL Standard reads
//! them (the crate-private `web_url` module); a non-ASCII host name is accepted as written,
//! not normalised to punycode. The token in a link is only checked for its `ATM-` prefix:
//! whether it is valid is the host's decision. Control characters are refused in every
//! field, so printing a decoded invite cannot drive a terminal.
//! [`Invite::parse`] never panics (it is fuzzed: see `fuzz/`).

use crate::mesh_id::is_valid_mesh_id;
use crate::path::PathKind;
use crate::web_url::{Host, UrlError, WebUrl};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest link [`Invite::parse`] looks at, in bytes. A real invite is a few hundred bytes;
/// the limit bounds the work any input can cause.
pub const MAX_LINK_LEN: usize = 8 * 1024;

/// Characters left as they are in generated parameter values: RFC 3986 unreserved plus
/// `:`, `/`, `@` and `,`, which are legal in a query and a fragment and keep endpoint URLs
/// readable (and QR codes smaller). Everything else, notably `&`, `=`, `+`, `#`, `%`,
/// `?`, space, quotes and braces, is percent-encoded; spaces become `%20`, never `+`, so
/// decoders that do not know form encoding read the same text.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'/')
    .remove(b'@')
    .remove(b',');

/// The ways to reach a host. Missing paths are `None` (serialised as `null`, never omitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The host's LAN address, e.g. `ws://192.168.86.237:11451`.
    #[serde(default)]
    pub local: Option<String>,
    /// The host's public address, e.g. `ws://73.45.123.89:11451` (needs a port forward).
    #[serde(default)]
    pub public: Option<String>,
    /// The relay's URL for this mesh, e.g. `wss://relay.example/mesh/<mesh_id>`.
    #[serde(default)]
    pub relay: Option<String>,
}

impl Endpoints {
    /// The endpoint for one path.
    pub fn get(&self, path: PathKind) -> Option<&str> {
        match path {
            PathKind::Local => self.local.as_deref(),
            PathKind::Public => self.public.as_deref(),
            PathKind::Relay => self.relay.as_deref(),
            // Not a WebSocket endpoint: only a direct WebRTC path (`crate::upgrade`).
            PathKind::Punched => None,
        }
    }

    /// Present endpoints in preference order (local → public → relay).
    pub fn iter(&self) -> impl Iterator<Item = (PathKind, &str)> + '_ {
        PathKind::ENDPOINTS
            .into_iter()
            .filter_map(move |p| self.get(p).map(|u| (p, u)))
    }

    /// The legacy single endpoint (a v1 link's `endpoint`, the invite answer's `endpoint`):
    /// the first of public, local, relay that exists.
    pub fn legacy(&self) -> Option<&str> {
        self.public
            .as_deref()
            .or(self.local.as_deref())
            .or(self.relay.as_deref())
    }

    /// The JSON object used in links: all three keys, `null` for missing paths.
    fn to_json(&self) -> String {
        // `Value`'s `Display` cannot fail (unlike `serde_json::to_string`), and the keys
        // come out in the contract's order (local, public, relay) whether the map is
        // sorted or insertion-ordered.
        serde_json::json!({
            "local": self.local,
            "public": self.public,
            "relay": self.relay,
        })
        .to_string()
    }
}

/// A decoded invite link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// 1 for the legacy single-endpoint form, 2 for the multi-endpoint form.
    pub version: u8,
    /// The token as the link carries it (trimmed; starts with `ATM-` in any case).
    pub token: String,
    /// The mesh's display name.
    pub mesh_name: String,
    /// The mesh id the host must prove (the `id` parameter); `None` in links of earlier
    /// versions (see [`Invite::expected_mesh_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// Where to reach the host.
    pub endpoints: Endpoints,
}

/// Why a link could not be decoded. Each variant names what is wrong; `field` is the
/// parameter (`token`, `mesh`, `endpoint`) or JSON member (`endpoints.local`, …) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Nothing (or only whitespace) was given.
    #[error("the invite link is empty")]
    Empty,
    /// The input exceeds [`MAX_LINK_LEN`].
    #[error("the invite link is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No `scheme://` at the start.
    #[error("not a link: expected atmosphere://join?… or http(s)://HOST/join#…")]
    MissingScheme,
    /// A scheme other than `atmosphere`, `http` or `https`.
    #[error("unsupported link scheme {scheme:?}: expected atmosphere://, http:// or https://")]
    UnsupportedScheme {
        /// The scheme found (shortened).
        scheme: String,
    },
    /// The link is not a `join` link (e.g. `atmosphere://settings`, `http://host/admin`).
    #[error("not a join link: found {found:?} where \"join\" was expected")]
    NotAJoinLink {
        /// The action or path found (shortened).
        found: String,
    },
    /// The host part of a web link is unusable.
    #[error("the web link's host is invalid: {reason}")]
    BadWebHost {
        /// What the URL parser said.
        reason: String,
    },
    /// No `token` parameter, or an empty one.
    #[error("the link has no token (token=ATM-…)")]
    MissingToken,
    /// The `token` parameter does not start with `ATM-`.
    #[error("token: {token:?} does not start with ATM-")]
    BadTokenPrefix {
        /// The token found (shortened).
        token: String,
    },
    /// The `id` parameter is not a mesh id (26 characters of lowercase base32).
    #[error("the link's mesh id (id=…) is not a mesh id: {found:?}")]
    BadMeshId { found: String },
    /// No `mesh` parameter, or an empty one.
    #[error("the link has no mesh name (mesh=…)")]
    MissingMesh,
    /// Neither `endpoints` (v2) nor `endpoint` (v1) is present.
    #[error("the link has no endpoints (endpoints={{…}} or endpoint=ws://…)")]
    MissingEndpoints,
    /// `endpoints` is present but lists no endpoint at all (every path missing or `null`).
    #[error(
        "endpoints: local, public and relay are all missing; there is no way to reach the host"
    )]
    NoEndpoints,
    /// `endpoints` is not a JSON object of strings / nulls.
    #[error("endpoints: not valid endpoint JSON: {reason}")]
    BadEndpointsJson {
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint is not a usable URL.
    #[error("{field}: not a valid URL: {reason}")]
    BadEndpointUrl {
        /// `endpoint` or `endpoints.local` / `.public` / `.relay`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint URL is fine but not a WebSocket URL.
    #[error("{field}: only ws:// and wss:// endpoints are supported, found {scheme}://")]
    NonWebSocketEndpoint {
        /// `endpoint` or `endpoints.local` / `.public` / `.relay`.
        field: &'static str,
        /// The scheme found (shortened).
        scheme: String,
    },
    /// A value's percent-encoding is broken (`%` without two hex digits, or not UTF-8).
    #[error("{field}: bad percent-encoding: {reason}")]
    BadPercentEncoding {
        /// The parameter at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value contains a control character (newline, escape, …).
    #[error("{field}: contains a control character")]
    ControlCharacter {
        /// The parameter at fault.
        field: &'static str,
    },
    /// A known parameter appears twice.
    #[error("{name}: the parameter appears more than once")]
    DuplicateParameter {
        /// The parameter's name.
        name: &'static str,
    },
}

/// At most 48 characters of `s`, for quoting input inside a one-line error.
fn shorten(s: &str) -> String {
    const MAX: usize = 48;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Percent-encodes a parameter value for a generated link.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, VALUE).to_string()
}

impl Invite {
    /// A v2 invite.
    pub fn v2(
        token: impl Into<String>,
        mesh_name: impl Into<String>,
        endpoints: Endpoints,
    ) -> Invite {
        Invite {
            version: 2,
            token: token.into(),
            mesh_name: mesh_name.into(),
            mesh_id: None,
            endpoints,
        }
    }

    /// The same invite naming the mesh id its host must prove.
    pub fn with_mesh_id(mut self, mesh_id: impl Into<String>) -> Invite {
        self.mesh_id = Some(mesh_id.into());
        self
    }

    /// The mesh id a client must see the host prove before it sends the token: the link's
    /// `id`, else the id in the relay endpoint's path (`…/mesh/<id>`), else `None` (a link
    /// of an earlier version without a relay: the client trusts the first host that
    /// answers and pins it).
    pub fn expected_mesh_id(&self) -> Option<String> {
        if let Some(id) = &self.mesh_id {
            return Some(id.clone());
        }
        let relay = WebUrl::parse(self.endpoints.relay.as_deref()?).ok()?;
        let mut segments = relay.path.iter();
        let id = segments.next_back().filter(|s| !s.is_empty())?;
        let parent = segments.next_back()?;
        (parent == "mesh" && is_valid_mesh_id(id)).then(|| id.clone())
    }

    /// Parses any supported link form. Never panics.
    pub fn parse(link: &str) -> Result<Invite, LinkError> {
        if link.len() > MAX_LINK_LEN {
            return Err(LinkError::TooLong {
                len: link.len(),
                max: MAX_LINK_LEN,
            });
        }
        let link = link.trim();
        if link.is_empty() {
            return Err(LinkError::Empty);
        }
        let params = locate_params(link)?;
        let p = Params::split(params)?;

        let token = decode(
            "token",
            p.token.ok_or(LinkError::MissingToken)?,
            Plus::IsSpace,
        )?;
        let token = token.trim();
        if token.is_empty() {
            return Err(LinkError::MissingToken);
        }
        reject_controls("token", token)?;
        if !token
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("ATM-"))
        {
            return Err(LinkError::BadTokenPrefix {
                token: shorten(token),
            });
        }

        let mesh_name = decode("mesh", p.mesh.ok_or(LinkError::MissingMesh)?, Plus::IsSpace)?;
        if mesh_name.trim().is_empty() {
            return Err(LinkError::MissingMesh);
        }
        reject_controls("mesh", &mesh_name)?;

        let mesh_id = match p.id {
            None => None,
            Some(raw) => {
                let id = decode("id", raw, Plus::Literal)?
                    .trim()
                    .to_ascii_lowercase();
                if !is_valid_mesh_id(&id) {
                    return Err(LinkError::BadMeshId {
                        found: shorten(&id),
                    });
                }
                Some(id)
            }
        };

        let (version, endpoints) = if let Some(raw) = p.endpoints {
            (2, parse_endpoints_json(raw)?)
        } else if let Some(raw) = p.endpoint {
            (1, parse_v1_endpoint(raw)?)
        } else {
            return Err(LinkError::MissingEndpoints);
        };

        Ok(Invite {
            version,
            token: token.to_string(),
            mesh_name,
            mesh_id,
            endpoints,
        })
    }

    /// `token=…&mesh=…[&id=…]&endpoints=…`, each value percent-encoded.
    fn v2_params(&self) -> String {
        format!(
            "token={}&mesh={}{}&endpoints={}",
            enc(&self.token),
            enc(&self.mesh_name),
            self.id_param(),
            enc(&self.endpoints.to_json())
        )
    }

    /// `&id=…`, or nothing for an invite without a mesh id.
    fn id_param(&self) -> String {
        self.mesh_id
            .as_deref()
            .map(|id| format!("&id={}", enc(id)))
            .unwrap_or_default()
    }

    /// `atmosphere://join?token=…&mesh=…&endpoints=…` (mesh and endpoints percent-encoded).
    pub fn to_v2_link(&self) -> String {
        format!("atmosphere://join?{}", self.v2_params())
    }

    /// `atmosphere://join?token=…&mesh=…&endpoint=…` (legacy endpoint: the first of
    /// public, local, relay). With no endpoint at all the `endpoint` parameter is left out.
    pub fn to_v1_link(&self) -> String {
        let mut s = format!(
            "atmosphere://join?token={}&mesh={}{}",
            enc(&self.token),
            enc(&self.mesh_name),
            self.id_param()
        );
        if let Some(e) = self.endpoints.legacy() {
            s.push_str("&endpoint=");
            s.push_str(&enc(e));
        }
        s
    }

    /// `BASE/join#token=…&mesh=…&endpoints=…` where BASE is e.g. `http://192.168.1.2:11451`
    /// (a trailing `/` on BASE is ignored). The invite sits in the fragment so it never
    /// reaches a server log.
    pub fn to_web_link(&self, base: &str) -> String {
        format!("{}/join#{}", base.trim_end_matches('/'), self.v2_params())
    }

    /// The normalised invite as one line of JSON, exactly as `atmosphere invite inspect
    /// --json` prints it: `{"version":…,"token":…,"mesh_name":…,"mesh_id":…,"endpoints":{"local":…,
    /// "public":…,"relay":…}}` with `null` for missing endpoints.
    pub fn to_inspect_json(&self) -> String {
        // Built by hand so the key order is the contract's, whatever serde_json's map
        // ordering; `Value`'s `Display` does the string escaping and cannot fail.
        format!(
            r#"{{"version":{},"token":{},"mesh_name":{},"mesh_id":{},"endpoints":{}}}"#,
            self.version,
            Value::from(self.token.as_str()),
            Value::from(self.mesh_name.as_str()),
            self.mesh_id.as_deref().map_or(Value::Null, Value::from),
            self.endpoints.to_json()
        )
    }
}

/// Finds the parameter text of a link (after `?` or `#`), checking scheme and action.
fn locate_params(link: &str) -> Result<&str, LinkError> {
    let (scheme, rest) = link.split_once("://").ok_or(LinkError::MissingScheme)?;
    // RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ). Anything else before
    // a "://" (e.g. `token=…&endpoint=ws://…` pasted without its scheme) is not a scheme.
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(LinkError::MissingScheme);
    }
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "atmosphere" => {
            let end = rest.find(['?', '#']).unwrap_or(rest.len());
            let action = rest[..end].trim_end_matches('/');
            if !action.eq_ignore_ascii_case("join") {
                return Err(LinkError::NotAJoinLink {
                    found: shorten(action),
                });
            }
            Ok(rest.get(end + 1..).unwrap_or(""))
        }
        "http" | "https" => {
            let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..auth_end];
            // Only validated (a parsed URL always has a host): the link is read, not dialed.
            WebUrl::parse(&format!("{scheme}://{authority}/")).map_err(|e| {
                LinkError::BadWebHost {
                    reason: e.to_string(),
                }
            })?;
            let after = &rest[auth_end..];
            let path_end = after.find(['?', '#']).unwrap_or(after.len());
            let path = &after[..path_end];
            // Any prefix is fine (the web UI may live under a sub-path); the last
            // segment must be `join`.
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if last != "join" {
                return Err(LinkError::NotAJoinLink {
                    found: shorten(if path.is_empty() { "/" } else { path }),
                });
            }
            Ok(after.get(path_end + 1..).unwrap_or(""))
        }
        _ => Err(LinkError::UnsupportedScheme {
            scheme: shorten(&scheme),
        }),
    }
}

/// The known parameters of a link, still raw (not yet percent-decoded).
#[derive(Default)]
struct Params<'a> {
    token: Option<&'a str>,
    mesh: Option<&'a str>,
    id: Option<&'a str>,
    endpoints: Option<&'a str>,
    endpoint: Option<&'a str>,
}

impl<'a> Params<'a> {
    /// Splits `k=v&k=v…`; unknown keys and segments without `=` are ignored.
    fn split(params: &'a str) -> Result<Params<'a>, LinkError> {
        let mut out = Params::default();
        let mut i = 0;
        while i < params.len() {
            let seg = &params[i..];
            let Some(stop) = seg.find(['&', '=']) else {
                break; // a trailing bare word: no value, nothing to take
            };
            if seg.as_bytes()[stop] == b'&' {
                i += stop + 1; // a bare word or empty segment
                continue;
            }
            // Keys are plain ASCII names; decode leniently and compare case-insensitively.
            let key = percent_decode_str(&seg[..stop])
                .decode_utf8_lossy()
                .to_ascii_lowercase();
            let vstart = i + stop + 1;
            let mut vend = next_amp(params, vstart);
            if key == "endpoints" {
                let lead = params[vstart..].len() - params[vstart..].trim_start().len();
                let from = vstart + lead;
                if params[from..].starts_with('{') {
                    // Raw JSON: its strings may hold `&`; end at the matching `}`. Read it
                    // as plain JSON first; if that is not a JSON object, as a browser
                    // leaves it (quotes as `%22`).
                    let plain = json_object_end(params, from, false);
                    let end = plain
                        .filter(|&e| serde_json::from_str::<Value>(&params[from..e]).is_ok())
                        .or_else(|| json_object_end(params, from, true))
                        .or(plain);
                    if let Some(end) = end {
                        vend = next_amp(params, end);
                    }
                }
            }
            let value = &params[vstart..vend];
            let (slot, name) = match key.as_str() {
                "token" => (&mut out.token, "token"),
                "mesh" => (&mut out.mesh, "mesh"),
                "id" => (&mut out.id, "id"),
                "endpoints" => (&mut out.endpoints, "endpoints"),
                "endpoint" => (&mut out.endpoint, "endpoint"),
                _ => {
                    i = vend + 1;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(LinkError::DuplicateParameter { name });
            }
            *slot = Some(value);
            i = vend + 1;
        }
        Ok(out)
    }
}

/// Index of the next `&` at or after `from`, or the end.
fn next_amp(s: &str, from: usize) -> usize {
    s[from..].find('&').map_or(s.len(), |k| from + k)
}

/// One character of raw-JSON text as the scanner sees it: with `pct_quote`, `%22` counts
/// as `"` (the only JSON-structural character a browser percent-encodes). Returns (byte,
/// width in the text).
fn logical_byte(b: &[u8], i: usize, pct_quote: bool) -> (u8, usize) {
    if pct_quote && b[i] == b'%' && b.get(i + 1) == Some(&b'2') && b.get(i + 2) == Some(&b'2') {
        return (b'"', 3);
    }
    (b[i], 1)
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Which of the bytes a browser percent-encodes in a URL's query or fragment (WHATWG URL:
/// space, `"`, `#`, `'`, `<`, `>`, `` ` ``, controls, non-ASCII) to decode again.
#[derive(Clone, Copy)]
struct Undo {
    /// Also decode controls (`%0A`: the newlines of pretty-printed JSON).
    controls: bool,
    /// Also decode bytes ≥ 0x80 (encoded UTF-8).
    non_ascii: bool,
}

impl Undo {
    /// Every combination, most decoding first. The text before a browser touched it may
    /// itself have held such escapes (inside an endpoint URL, say), so the caller tries
    /// each until the result is valid JSON.
    const ALL: [Undo; 4] = [
        Undo {
            controls: true,
            non_ascii: true,
        },
        Undo {
            controls: false,
            non_ascii: true,
        },
        Undo {
            controls: true,
            non_ascii: false,
        },
        Undo {
            controls: false,
            non_ascii: false,
        },
    ];

    fn decodes(self, b: u8) -> bool {
        matches!(b, b' ' | b'"' | b'#' | b'\'' | b'<' | b'>' | b'`')
            || (self.controls && (b < 0x20 || b == 0x7f))
            || (self.non_ascii && b >= 0x80)
    }
}

/// Undoes a browser's percent-encoding of raw text: decodes only the `%XX` a browser
/// would have written (as chosen by `undo`) and leaves every other `%` as it was, since it
/// was already in the text. `None` if the result is not UTF-8.
fn undo_browser_encoding(raw: &str, undo: Undo) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                let v = (h << 4) | l;
                if undo.decodes(v) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Given `s[start] == '{'`, the index just past the `}` closing that JSON object, tracking
/// strings and escapes so braces and `&` inside strings do not count. With `pct_quote`,
/// `%22` counts as `"`, because browsers encode quotes in a URL fragment but not braces.
/// `None` when the object never closes (the JSON parser then reports the error).
fn json_object_end(s: &str, start: usize, pct_quote: bool) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = start;
    while i < b.len() {
        let (c, w) = logical_byte(b, i, pct_quote);
        i += w;
        if in_str {
            match c {
                b'\\' if i < b.len() => i += logical_byte(b, i, pct_quote).1,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `+` in a value means a space (HTML form encoding) or itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plus {
    IsSpace,
    Literal,
}

/// Strict percent-decoding: every `%` must start a `%XX` escape and the result must be
/// UTF-8. A stray `%` is ambiguous (a literal `%` or a mangled escape?), so it is refused
/// with a message saying how to write a literal one.
fn decode(field: &'static str, raw: &str, plus: Plus) -> Result<String, LinkError> {
    let b = raw.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(i + 2 < b.len() && hex_val(b[i + 1]).is_some() && hex_val(b[i + 2]).is_some())
        {
            return Err(LinkError::BadPercentEncoding {
                field,
                reason: "'%' must be followed by two hex digits (write %25 for a literal %)".into(),
            });
        }
    }
    let spaced;
    let raw = if plus == Plus::IsSpace && raw.contains('+') {
        spaced = raw.replace('+', " ");
        &spaced
    } else {
        raw
    };
    percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| LinkError::BadPercentEncoding {
            field,
            reason: "the decoded bytes are not valid UTF-8".into(),
        })
}

fn reject_controls(field: &'static str, s: &str) -> Result<(), LinkError> {
    if s.chars().any(char::is_control) {
        return Err(LinkError::ControlCharacter { field });
    }
    Ok(())
}

/// Decodes the v2 `endpoints` value: raw JSON (as the original design's examples print it),
/// half-encoded JSON (as a browser leaves it) or fully percent-encoded JSON (as generators
/// write it).
fn parse_endpoints_json(raw: &str) -> Result<Endpoints, LinkError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(LinkError::BadEndpointsJson {
            reason: "the value is empty".into(),
        });
    }
    let value: Value = if raw.starts_with('{') {
        // Verbatim first: raw JSON may legitimately hold a `%` (e.g. inside a URL path).
        // Then as a browser would have mangled it: quotes (and maybe UTF-8) encoded.
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => v,
            Err(verbatim_err) => Undo::ALL
                .into_iter()
                .filter_map(|undo| undo_browser_encoding(raw, undo))
                .find_map(|text| serde_json::from_str(&text).ok())
                .ok_or_else(|| LinkError::BadEndpointsJson {
                    reason: verbatim_err.to_string(),
                })?,
        }
    } else {
        // Encoded JSON: an encoder that escaped `{` also escaped a literal `+`, so a raw
        // `+` is a space (Python's `urlencode` writes `json.dumps`' spaces that way).
        let decoded = decode("endpoints", raw, Plus::IsSpace)?;
        serde_json::from_str(&decoded).map_err(|e| LinkError::BadEndpointsJson {
            reason: e.to_string(),
        })?
    };
    let obj = match value {
        Value::Object(o) => o,
        Value::Null => return Err(LinkError::NoEndpoints),
        _ => {
            return Err(LinkError::BadEndpointsJson {
                reason: "expected a JSON object like {\"local\":\"ws://…\"}".into(),
            })
        }
    };
    let mut eps = Endpoints::default();
    for (path, field) in [
        (PathKind::Local, "endpoints.local"),
        (PathKind::Public, "endpoints.public"),
        (PathKind::Relay, "endpoints.relay"),
    ] {
        let url = match obj.get(path.as_str()) {
            None | Some(Value::Null) => None,
            // An empty string is how some generators say "none"; treat it as missing.
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(check_endpoint(field, s.trim())?.0),
            Some(_) => {
                return Err(LinkError::BadEndpointsJson {
                    reason: format!("\"{}\" must be a string or null", path.as_str()),
                })
            }
        };
        match path {
            PathKind::Local => eps.local = url,
            PathKind::Public => eps.public = url,
            PathKind::Relay => eps.relay = url,
            PathKind::Punched => {}
        }
    }
    if eps.iter().next().is_none() {
        return Err(LinkError::NoEndpoints);
    }
    Ok(eps)
}

/// Decodes a v1 `endpoint` and files it under `local` or `public` (see the module doc).
fn parse_v1_endpoint(raw: &str) -> Result<Endpoints, LinkError> {
    let field = "endpoint";
    let s = decode(field, raw, Plus::Literal)?;
    let s = s.trim();
    if s.is_empty() {
        return Err(LinkError::BadEndpointUrl {
            field,
            reason: "the value is empty".into(),
        });
    }
    let (s, url) = check_endpoint(field, s)?;
    let mut eps = Endpoints::default();
    if is_local_host(&url) {
        eps.local = Some(s);
    } else {
        eps.public = Some(s);
    }
    Ok(eps)
}

/// Validates one endpoint URL: parseable, `ws`/`wss`, with a host (a parsed URL always
/// has one) and no fragment. Returns the text as given (not a normalised form) and the
/// parsed URL.
fn check_endpoint(field: &'static str, s: &str) -> Result<(String, WebUrl), LinkError> {
    reject_controls(field, s)?;
    let url = WebUrl::parse(s).map_err(|e| match e {
        UrlError::OtherScheme(scheme) => LinkError::NonWebSocketEndpoint {
            field,
            scheme: shorten(&scheme),
        },
        e => LinkError::BadEndpointUrl {
            field,
            reason: e.to_string(),
        },
    })?;
    if !matches!(url.scheme.as_str(), "ws" | "wss") {
        return Err(LinkError::NonWebSocketEndpoint {
            field,
            scheme: url.scheme,
        });
    }
    if url.fragment {
        // RFC 6455 §3: WebSocket URIs must not have a fragment.
        return Err(LinkError::BadEndpointUrl {
            field,
            reason: "a WebSocket URL cannot have a #fragment".into(),
        });
    }
    Ok((s.to_string(), url))
}

/// Whether a v1 endpoint's host is on the local network (see the module doc).
fn is_local_host(url: &WebUrl) -> bool {
    match &url.host {
        Host::Ipv4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        Host::Ipv6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return v4.is_private() || v4.is_loopback() || v4.is_link_local();
            }
            let first = ip.segments()[0];
            ip.is_loopback()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
        Host::Domain(d) => {
            let d = d.trim_end_matches('.');
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".local")
        }
    }
}
