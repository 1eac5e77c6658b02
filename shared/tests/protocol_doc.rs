//! Keeps `docs/PROTOCOL.md` honest: every example in it is checked against the code.
//!
//! - A fenced block whose info string is `json TAG` holds one or more JSON values (pretty or
//!   one per line). Each is parsed with the type `TAG` names ([`check_json`]), serialised
//!   again and compared with the example as a `serde_json::Value`, so a misspelt, missing or
//!   extra field fails, not only a missing required one. A `json` block without a tag, or
//!   with a tag this file does not know, fails too: the doc cannot grow unchecked JSON.
//! - `text link` blocks: every line must decode with [`Invite::parse`]. `text
//!   link_generated` blocks: every line must also be exactly what the generator of its form
//!   writes for the decoded invite.
//! - The `text relay_vector` block: the mesh id and the signed bytes (which name the relay)
//!   are recomputed with `mesh_id` and `relay_proto`.
//! - The `text noise_vector` block: the host's derived keys, its certificate and the whole
//!   handshake transcript are recomputed with `handshake`; its transport frames carry a
//!   real `ServerMsg` and `ClientMsg`, and the device it shows is the one of the
//!   `json device_credential` examples.
//! - Across all JSON: every `mesh_id` has the mesh-id shape, every `token` is a valid token,
//!   every `device_secret` is a 32-byte key and every error `code` is an [`ErrorCode`] or
//!   one of the CLI's own codes.

use atmosphere_shared::api::{
    ApiError, AuthStatus, DeviceList, DeviceRemoved, HostHealth, MeshEvent, MeshView,
    NetworkSnapshot, PublicReachability, RelayState, RevokeResponse, TokenRequest, TokenResponse,
};
use atmosphere_shared::credential::DeviceCredential;
use atmosphere_shared::handshake::{
    derive_host_static, ClientHandshake, Entropy, HostExpectation, HostHandshake, HostKeys,
    JoinProof, JoinRequest, StaticSecret,
};
use atmosphere_shared::join_event::JoinEvent;
use atmosphere_shared::link::Invite;
use atmosphere_shared::mesh_id::{is_valid_mesh_id, mesh_id_from_public_key};
use atmosphere_shared::netcheck::Report;
use atmosphere_shared::relay_proto::{
    self, b64_decode, registration_message, HostMsg, RelayHealth, RelayMsg,
};
use atmosphere_shared::token::Token;
use atmosphere_shared::wire::{ClientMsg, ErrorCode, ServerMsg};
use data_encoding::BASE64URL_NOPAD;
use ed25519_dalek::SigningKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The doc must keep at least this many checked JSON values (it has more): a refactor that
/// drops the fence tags, and with them the checks, fails here.
const MIN_JSON_VALUES: usize = 75;

/// Every JSON tag the doc may use, each checked by [`check_json`]. All of them must appear.
const JSON_TAGS: &[&str] = &[
    "inspect",
    "api_error",
    "token_request",
    "token_response",
    "mesh_view",
    "revoke_response",
    "device_list",
    "device_removed",
    "network_snapshot",
    "relay_state",
    "reachability",
    "auth_response",
    "mesh_event",
    "host_health",
    "client_msg",
    "server_msg",
    "relay_msg",
    "host_msg",
    "relay_health",
    "device_credential",
    "join_line",
    "netcheck",
    "join_request",
];

/// Tags of `text` blocks that are checked.
const TEXT_TAGS: &[&str] = &["link", "link_generated", "relay_vector", "noise_vector"];

/// One fenced block of the doc.
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    tag: Option<String>,
    body: String,
}

/// Every fenced block (``` fences, possibly indented inside list items).
fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(Block, usize)> = None;
    for (i, raw) in doc.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim_start();
        match open.take() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let lang = words.next().unwrap_or("").to_string();
                    let tag = words.next().map(str::to_string);
                    assert!(
                        words.next().is_none(),
                        "line {}: a fence info string is `LANG [TAG]`: {raw:?}",
                        i + 1
                    );
                    let block = Block {
                        line: i + 1,
                        lang,
                        tag,
                        body: String::new(),
                    };
                    open = Some((block, indent));
                }
            }
            Some((mut block, fence_indent)) => {
                if line == "```" {
                    out.push(block);
                } else {
                    // Drop the fence's own indentation (spaces, so byte-sized).
                    let lead = raw.len() - raw.trim_start_matches(' ').len();
                    block.body.push_str(&raw[lead.min(fence_indent)..]);
                    block.body.push('\n');
                    open = Some((block, fence_indent));
                }
            }
        }
    }
    assert!(open.is_none(), "the doc ends inside a fenced block");
    out
}

/// The JSON values of a block, each with its own text (for checks on the raw form).
fn json_values(body: &str) -> Result<Vec<(Value, &str)>, String> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    let mut start = 0;
    while let Some(next) = stream.next() {
        let v = next.map_err(|e| format!("not valid JSON: {e}"))?;
        let end = stream.byte_offset();
        out.push((v, body[start..end].trim()));
        start = end;
    }
    if out.is_empty() {
        return Err("the block holds no JSON value".into());
    }
    Ok(out)
}

/// Parses `v` as `T` and requires that serialising it again gives `v` back: a misspelt
/// or extra field (which serde would silently ignore), a missing optional field, or a
/// field that serde would omit but the example shows fails.
fn strict<T: Serialize + DeserializeOwned>(v: &Value) -> Result<(), String> {
    let parsed: T = serde_json::from_value(v.clone())
        .map_err(|e| format!("does not parse as {}: {e}", std::any::type_name::<T>()))?;
    let again = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    if &again != v {
        let mut diffs = Vec::new();
        differences(v, &again, "", &mut diffs);
        return Err(format!(
            "does not survive a round trip through {}: {}",
            std::any::type_name::<T>(),
            diffs.join("; ")
        ));
    }
    Ok(())
}

/// Where the doc's value and the code's differ, as `path: doc X, code Y` lines.
fn differences(doc: &Value, code: &Value, path: &str, out: &mut Vec<String>) {
    match (doc, code) {
        (Value::Object(d), Value::Object(c)) => {
            let keys: BTreeSet<&String> = d.keys().chain(c.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (d.get(k), c.get(k)) {
                    (Some(x), Some(y)) => differences(x, y, &p, out),
                    (Some(_), None) => out.push(format!("{p}: not a field of the type")),
                    (None, Some(y)) => out.push(format!("{p}: missing (the code writes {y})")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(d), Value::Array(c)) if d.len() == c.len() => {
            for (i, (x, y)) in d.iter().zip(c).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ if doc != code => out.push(format!("{path}: doc {doc}, code {code}")),
        _ => {}
    }
}

/// Checks one JSON value against the type its tag names.
fn check_json(tag: &str, v: &Value, text: &str) -> Result<(), String> {
    match tag {
        "inspect" => check_inspect(v, text),
        "api_error" => strict::<ApiError>(v),
        "token_request" => strict::<TokenRequest>(v),
        "token_response" => strict::<TokenResponse>(v),
        "mesh_view" => strict::<MeshView>(v),
        "revoke_response" => strict::<RevokeResponse>(v),
        "device_list" => strict::<DeviceList>(v),
        "device_removed" => strict::<DeviceRemoved>(v),
        "auth_response" => strict::<AuthStatus>(v),
        "host_health" => strict::<HostHealth>(v),
        "relay_health" => strict::<RelayHealth>(v),
        "network_snapshot" => strict::<NetworkSnapshot>(v),
        "relay_state" => strict::<RelayState>(v),
        "reachability" => strict::<PublicReachability>(v),
        "client_msg" => strict::<ClientMsg>(v),
        "server_msg" => strict::<ServerMsg>(v),
        "relay_msg" => strict::<RelayMsg>(v),
        "host_msg" => strict::<HostMsg>(v),
        "mesh_event" => check_mesh_event(v),
        "join_line" => check_join_line(v, text),
        "netcheck" => strict::<Report>(v),
        "device_credential" => strict::<DeviceCredential>(v),
        "join_request" => strict::<JoinRequest>(v),
        other => Err(format!(
            "unknown tag `json {other}`: add it to JSON_TAGS and check_json"
        )),
    }
}

/// `invite inspect --json`: the shared `Invite`, printed byte for byte as
/// [`Invite::to_inspect_json`] writes it (the key order is part of the contract, and so is
/// `"mesh_id":null`, which serde alone would leave out; a misspelt key does not survive
/// the reprint either).
fn check_inspect(v: &Value, text: &str) -> Result<(), String> {
    let invite: Invite = serde_json::from_value(v.clone())
        .map_err(|e| format!("does not parse as an invite: {e}"))?;
    let printed = invite.to_inspect_json();
    if printed != text {
        return Err(format!(
            "not what `inspect --json` prints:\n  doc:  {text}\n  code: {printed}"
        ));
    }
    Ok(())
}

/// The server-sent events of `GET /api/events`: each is one [`MeshEvent`].
fn check_mesh_event(v: &Value) -> Result<(), String> {
    strict::<MeshEvent>(v)
}

/// The JSON lines of `atmosphere join --json`: each is one [`JoinEvent`], printed on one line
/// with `event` first.
fn check_join_line(v: &Value, text: &str) -> Result<(), String> {
    if text.contains('\n') {
        return Err("a join line is printed on one line".into());
    }
    if !text.starts_with("{\"event\":") {
        return Err("`event` is the first key of every join line".into());
    }
    strict::<JoinEvent>(v)
}

/// Every `mesh_id` in the examples has the mesh-id shape, every `token` is a valid token,
/// every `device_secret` is a 32-byte key in URL-safe base64 without padding, and every
/// error `code` (in frames and join lines) is a known one or a CLI code.
fn check_identifiers(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("mesh_id", Value::String(s)) if !is_valid_mesh_id(s) => {
                        return Err(format!("mesh_id {s:?} does not have the mesh-id shape"))
                    }
                    ("token", Value::String(s)) => {
                        Token::parse(s).map_err(|e| format!("token {s:?}: {e}"))?;
                    }
                    ("device_secret", Value::String(s)) => {
                        let key = BASE64URL_NOPAD.decode(s.as_bytes()).ok();
                        if key.map(|k| k.len()) != Some(32) {
                            return Err(format!(
                                "device_secret {s:?} is not 32 bytes of URL-safe base64"
                            ));
                        }
                    }
                    ("code", Value::String(s)) => {
                        let known = serde_json::from_value::<ErrorCode>(x.clone()).is_ok()
                            || matches!(
                                s.as_str(),
                                "all_failed" | "bad_link" | "bad_usage" | "disconnected"
                            );
                        if !known {
                            return Err(format!("unknown error code {s:?}"));
                        }
                    }
                    _ => check_identifiers(x)?,
                }
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(check_identifiers),
        _ => Ok(()),
    }
}

/// Checks a `text link` / `text link_generated` block.
fn check_links(body: &str, generated: bool) -> Result<usize, String> {
    let mut n = 0;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let inv = Invite::parse(line).map_err(|e| format!("{line}: {e}"))?;
        if generated {
            let again = if let Some(base) = line.split_once("/join#").map(|(b, _)| b) {
                inv.to_web_link(base)
            } else if inv.version == 1 {
                inv.to_v1_link()
            } else {
                inv.to_v2_link()
            };
            if again != line {
                return Err(format!(
                    "not what the generator writes:\n  doc:  {line}\n  code: {again}"
                ));
            }
        }
        n += 1;
    }
    Ok(n)
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex"))
        })
        .collect()
}

/// Checks the relay signing example: the mesh id of the public key and the signed bytes.
fn check_relay_vector(body: &str) -> Result<usize, String> {
    let field = |name: &str| -> Result<&str, String> {
        body.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim())
            .ok_or(format!("the relay vector has no {name}"))
    };
    let key: [u8; 32] = hex(field("public_key_hex")?)?
        .try_into()
        .map_err(|_| "public_key_hex is not 32 bytes")?;
    let mesh_id = field("mesh_id")?;
    if mesh_id_from_public_key(&key) != mesh_id {
        return Err(format!(
            "mesh_id {mesh_id} is not the mesh id of the key ({})",
            mesh_id_from_public_key(&key)
        ));
    }
    let relay = field("relay")?;
    let nonce = hex(field("nonce_hex")?)?;
    if hex(field("signed_hex")?)? != registration_message(relay, mesh_id, &nonce) {
        return Err("signed_hex is not registration_message(relay, mesh_id, nonce)".into());
    }
    if b64_decode(field("public_key_b64")?) != Some(key.to_vec()) {
        return Err("public_key_b64 is not public_key_hex".into());
    }
    if b64_decode(field("nonce_b64")?).as_ref() != Some(&nonce) {
        return Err("nonce_b64 is not nonce_hex".into());
    }
    let signature = b64_decode(field("signature_b64")?).ok_or("signature_b64 is not base64")?;
    if signature.len() != 64 {
        return Err("signature_b64 is not 64 bytes".into());
    }
    // The example signature was made with `secret_key_hex`: signing again gives the same
    // bytes (Ed25519 is deterministic), and the relay's own check accepts it.
    let secret: [u8; 32] = hex(field("secret_key_hex")?)?
        .try_into()
        .map_err(|_| "secret_key_hex is not 32 bytes")?;
    let signing_key = SigningKey::from_bytes(&secret);
    if signing_key.verifying_key().to_bytes() != key {
        return Err("public_key_hex is not the public key of secret_key_hex".into());
    }
    let register = relay_proto::sign(&signing_key, relay, mesh_id, &nonce);
    let HostMsg::Register {
        public_key,
        signature: signed,
    } = &register
    else {
        return Err("relay_proto::sign made no register message".into());
    };
    if b64_decode(signed) != Some(signature) || b64_decode(public_key) != Some(key.to_vec()) {
        return Err("signature_b64 is not what relay_proto::sign makes for this key".into());
    }
    relay_proto::verify(relay, mesh_id, &nonce, &register)
        .map_err(|e| format!("relay_proto::verify refuses the example: {e}"))?;
    Ok(1)
}

/// The `name = value` lines of a vector block.
fn vector_field<'a>(body: &'a str, name: &str) -> Result<&'a str, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
        .ok_or(format!("the vector has no {name}"))
}

fn hex32(body: &str, name: &str) -> Result<[u8; 32], String> {
    hex(vector_field(body, name)?)?
        .try_into()
        .map_err(|_| format!("{name} is not 32 bytes"))
}

/// Checks the handshake transcript: keys, certificate, the three messages and one transport
/// frame each way, all recomputed; and the host reads the request back.
fn check_noise_vector(body: &str) -> Result<usize, String> {
    let f = |name: &str| vector_field(body, name);
    let same = |name: &str, code: &[u8]| -> Result<(), String> {
        if hex(f(name)?)? == code {
            Ok(())
        } else {
            let code: String = code.iter().map(|b| format!("{b:02x}")).collect();
            Err(format!("{name} is not what the code computes ({code})"))
        }
    };
    let mesh_key = SigningKey::from_bytes(&hex32(body, "host_secret_key_hex")?);
    let keys = HostKeys::from_signing_key(&mesh_key);
    if keys.mesh_id() != f("mesh_id")? {
        return Err(format!("mesh_id is not the key's ({})", keys.mesh_id()));
    }
    same(
        "host_static_secret_hex",
        &derive_host_static(&mesh_key).to_bytes(),
    )?;
    same("host_static_public_hex", &keys.static_public().0)?;
    same("certificate_hex", keys.certificate())?;
    let device = StaticSecret::from_bytes(hex32(body, "device_static_secret_hex")?);
    if device.public_key().to_string() != f("device_static_public")? {
        return Err(format!(
            "device_static_public is not the secret's ({})",
            device.public_key()
        ));
    }
    let request: JoinRequest =
        serde_json::from_str(f("join_request")?).map_err(|e| format!("join_request: {e}"))?;
    let expect = HostExpectation::MeshId(keys.mesh_id().to_string());
    let member_e = Entropy::new(hex32(body, "member_ephemeral_hex")?);
    let (client, msg1) =
        ClientHandshake::start(expect, &request, &device, member_e).map_err(|e| e.to_string())?;
    same("msg1_hex", &msg1)?;
    let host_e = Entropy::new(hex32(body, "host_ephemeral_hex")?);
    let (host, msg2) = HostHandshake::new(&keys, host_e)
        .read_client_hello(&msg1)
        .map_err(|e| e.to_string())?;
    same("msg2_hex", &msg2)?;
    let mut done = client.read_host_hello(&msg2).map_err(|e| e.to_string())?;
    same("msg3_hex", &done.message)?;
    let mut join = host.read_join(&done.message).map_err(|e| e.to_string())?;
    if join.request.as_ref().ok() != Some(&request) || join.device_key != device.public_key() {
        return Err("the host does not read back the request and the device key".into());
    }
    // The transport frames carry real protocol messages, and each side opens the other's.
    let host_plaintext = f("host_plaintext")?;
    let member_plaintext = f("member_plaintext")?;
    let as_json = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
    strict::<ServerMsg>(&as_json(host_plaintext)?).map_err(|e| format!("host_plaintext {e}"))?;
    strict::<ClientMsg>(&as_json(member_plaintext)?)
        .map_err(|e| format!("member_plaintext {e}"))?;
    // The member opens the host's frame before it seals its own, so its frame acknowledges
    // one frame (ack = 1).
    let host_frame = join
        .channel
        .seal(host_plaintext.as_bytes())
        .map_err(|e| e.to_string())?;
    same("host_frame_hex", &host_frame)?;
    let opened = done.channel.open(&host_frame).map_err(|e| e.to_string())?;
    let member_frame = done
        .channel
        .seal(member_plaintext.as_bytes())
        .map_err(|e| e.to_string())?;
    same("member_frame_hex", &member_frame)?;
    let echoed = join
        .channel
        .open(&member_frame)
        .map_err(|e| e.to_string())?;
    if join.channel.acked() != 1 {
        return Err("the member's frame does not acknowledge the host's".into());
    }
    if opened.as_deref() != Some(host_plaintext.as_bytes())
        || echoed.as_deref() != Some(member_plaintext.as_bytes())
    {
        return Err("a transport frame does not open to its plaintext".into());
    }
    Ok(1)
}

/// Checks one block; returns how many JSON values it held (0 for other blocks).
fn check_block(b: &Block) -> Result<usize, String> {
    match (b.lang.as_str(), b.tag.as_deref()) {
        ("json", None) => {
            Err("a json block needs a tag naming its type, e.g. ```json server_msg".into())
        }
        ("json", Some(tag)) => {
            if !JSON_TAGS.contains(&tag) {
                return Err(format!(
                    "unknown tag `json {tag}`: add it to JSON_TAGS and check_json"
                ));
            }
            let values = json_values(&b.body)?;
            for (i, (v, text)) in values.iter().enumerate() {
                check_json(tag, v, text)
                    .and_then(|()| check_identifiers(v))
                    .map_err(|e| format!("value {} ({tag}): {e}", i + 1))?;
            }
            Ok(values.len())
        }
        ("text", Some("link")) => check_links(&b.body, false).map(|_| 0),
        ("text", Some("link_generated")) => check_links(&b.body, true).map(|_| 0),
        ("text", Some("relay_vector")) => check_relay_vector(&b.body).map(|_| 0),
        ("text", Some("noise_vector")) => check_noise_vector(&b.body).map(|_| 0),
        (lang, Some(tag)) => Err(format!(
            "unknown tag `{lang} {tag}` (text tags: {TEXT_TAGS:?})"
        )),
        (_, None) => Ok(0),
    }
}

/// Checks the whole doc; returns the number of JSON values checked and the tags used.
fn check_doc(doc: &str) -> Result<(usize, BTreeSet<String>), Vec<String>> {
    let mut errors = Vec::new();
    let mut values = 0;
    let mut used = BTreeSet::new();
    for b in blocks(doc) {
        match check_block(&b) {
            Ok(n) => {
                values += n;
                if let Some(t) = &b.tag {
                    used.insert(format!("{} {t}", b.lang));
                }
            }
            Err(e) => errors.push(format!("docs/PROTOCOL.md line {}: {e}", b.line)),
        }
    }
    if errors.is_empty() {
        Ok((values, used))
    } else {
        Err(errors)
    }
}

#[test]
fn every_example_in_the_protocol_doc_matches_the_code() {
    let (values, used) = match check_doc(DOC) {
        Ok(r) => r,
        Err(errors) => panic!(
            "{} example(s) in docs/PROTOCOL.md disagree with the code:\n{}",
            errors.len(),
            errors.join("\n")
        ),
    };
    assert!(
        values >= MIN_JSON_VALUES,
        "only {values} JSON values were checked; expected at least {MIN_JSON_VALUES}"
    );
    let unused: Vec<String> = JSON_TAGS
        .iter()
        .map(|t| format!("json {t}"))
        .chain(TEXT_TAGS.iter().map(|t| format!("text {t}")))
        .filter(|t| !used.contains(t))
        .collect();
    assert!(
        unused.is_empty(),
        "these shapes have no example in docs/PROTOCOL.md: {unused:?}"
    );
}

/// The checker itself: each kind of drift it exists to catch is caught.
#[test]
fn the_checker_rejects_drift() {
    let doc = |fence: &str, body: &str| format!("text\n\n```{fence}\n{body}\n```\n");
    let fails = |fence: &str, body: &str| check_doc(&doc(fence, body)).is_err();
    let passes = |fence: &str, body: &str| check_doc(&doc(fence, body)).is_ok();

    // A correct frame passes; an unknown (misspelt) field, which serde alone would ignore,
    // a misspelt tag value, and an unknown or missing fence tag all fail.
    let joined = r#"{"type":"joined","mesh_id":"yu3ed7b77d4tkz2nk4hgmx776e","mesh_name":"Home","device_id":"f446faf7bb60225a"}"#;
    assert!(passes("json server_msg", joined));
    assert!(fails(
        "json server_msg",
        &joined.replace("}", ",\"device_kye\":\"k\"}")
    ));
    // Shapes this version removed fail: `joined` with a key and peers, a plaintext `join`.
    assert!(fails(
        "json server_msg",
        &joined.replace("}", ",\"device_key\":\"k\",\"peers\":[]}")
    ));
    assert!(fails(
        "json client_msg",
        r#"{"type":"join","device_id":"f446faf7bb60225a","device_key":"k","path":"local"}"#
    ));
    // Presence pages: `more` shown only while true.
    let page = r#"{"type":"peers","peers":[],"more":true}"#;
    assert!(passes("json server_msg", page));
    assert!(fails("json server_msg", &page.replace("true", "false")));
    // Join requests: each proof's exact fields.
    let rejoin = r#"{"type":"device","device_id":"f446faf7bb60225a","path":"relay"}"#;
    assert!(passes("json join_request", rejoin));
    assert!(fails(
        "json join_request",
        &rejoin.replace("relay", "radio")
    ));
    assert!(fails(
        "json join_request",
        &rejoin.replace("\"type\":\"device\"", "\"type\":\"device_key\"")
    ));
    // A device credential's secret is a 32-byte key.
    let cred = r#"{"mesh_id":"yu3ed7b77d4tkz2nk4hgmx776e","mesh_name":"Home","device_id":"f446faf7bb60225a","device_secret":"MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM"}"#;
    assert!(passes("json device_credential", cred));
    assert!(fails(
        "json device_credential",
        &cred.replace("\"MzMz", "\"")
    ));
    assert!(fails(
        "json device_credential",
        &cred.replace("device_secret", "device_secrets")
    ));
    assert!(fails("json server_msg", &joined.replace("joined", "joind")));
    assert!(fails("json server_message", joined));
    assert!(fails("json", joined));
    assert!(fails("text linkk", "atmosphere://join"));
    // A field serde would fill in by default must be shown.
    assert!(fails("json client_msg", r#"{"type":"send","body":"x"}"#));
    assert!(passes(
        "json client_msg",
        r#"{"type":"send","to":null,"body":"x"}"#
    ));
    // Exact key sets, `event` first on join lines.
    assert!(passes(
        "json mesh_event",
        r#"{"type":"invite_minted","invite_id":"a"}"#
    ));
    assert!(fails(
        "json mesh_event",
        r#"{"type":"invite_minted","invite":"a"}"#
    ));
    assert!(passes(
        "json join_line",
        r#"{"event":"reconnecting","in_ms":1000}"#
    ));
    assert!(fails(
        "json join_line",
        r#"{"in_ms":1000,"event":"reconnecting"}"#
    ));
    assert!(fails(
        "json join_line",
        r#"{"event":"peer_left","device":"d"}"#
    ));
    // Small answers are whole types too: a misspelt key fails.
    let health = r#"{"connections":13,"meshes":3,"sessions":5,"status":"ok","uptime_secs":8125}"#;
    assert!(passes("json relay_health", health));
    assert!(fails(
        "json relay_health",
        &health.replace("uptime_secs", "uptime")
    ));
    assert!(fails("json auth_response", r#"{"admin":true,"user":"x"}"#));
    // `inspect --json` is compared byte for byte, key order included.
    let inspect = r#"{"version":1,"token":"ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG","mesh_name":"Home","mesh_id":null,"endpoints":{"local":null,"public":"ws://h","relay":null}}"#;
    assert!(passes("json inspect", inspect));
    assert!(fails(
        "json inspect",
        &inspect.replace("\"mesh_id\":null,", "")
    ));
    assert!(fails(
        "json inspect",
        &inspect.replace("\"mesh_id\":null", "\"mesh_idd\":null")
    ));
    assert!(fails(
        "json inspect",
        &inspect
            .replace("{\"version\":1,", "{")
            .replace("}}", "},\"version\":1}")
    ));
    // Identifiers are checked everywhere.
    assert!(fails(
        "json server_msg",
        &joined.replace("yu3ed7b77d4tkz2nk4hgmx776e", "mesh-1")
    ));
    assert!(fails(
        "json server_msg",
        r#"{"type":"error","code":"token_expird","message":"m"}"#
    ));
    // Links: a generated link must be byte for byte what the generator writes.
    let link = "atmosphere://join?token=ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG&mesh=Home%20Mesh&endpoint=ws://203.0.113.7:11451";
    assert!(passes("text link_generated", link));
    assert!(fails("text link_generated", &link.replace("%20", "+")));
    assert!(passes("text link", &link.replace("%20", "+")));
}

/// The transcript of 3.2 is the credential examples' device: the same device id and the
/// `device_secret` of the credentials is the transcript's device static secret.
#[test]
fn the_credential_examples_are_the_transcript_device() {
    let all = blocks(DOC);
    let vector = all
        .iter()
        .find(|b| b.tag.as_deref() == Some("noise_vector"))
        .expect("the doc has a noise_vector block");
    let secret = hex(vector_field(&vector.body, "device_static_secret_hex").unwrap()).unwrap();
    let secret = BASE64URL_NOPAD.encode(&secret);
    let request: JoinRequest =
        serde_json::from_str(vector_field(&vector.body, "join_request").unwrap()).unwrap();
    let JoinProof::Device { device_id } = request.proof else {
        panic!("the transcript is a rejoin with a device id")
    };
    let creds: Vec<DeviceCredential> = all
        .iter()
        .filter(|b| b.tag.as_deref() == Some("device_credential"))
        .flat_map(|b| json_values(&b.body).unwrap())
        .map(|(v, _)| serde_json::from_value(v).unwrap())
        .collect();
    assert!(creds.iter().any(|c| c.device_secret.is_some()));
    for c in &creds {
        assert_eq!(c.device_id, device_id);
        if let Some(s) = &c.device_secret {
            assert_eq!(s, &secret, "a credential example's device_secret");
        }
    }
}
