//! The host's HTTP API against a real `atmosphere serve` process on loopback: the invite
//! answer's shape and links, input limits, admin auth (bearer, cookie, 401s), no CORS,
//! revocation (optionally removing the devices an invite enrolled), listing and removing
//! devices, health/metrics, the SPA fallback, the event feed and `atmosphere token`.

mod host_support;

use atmosphere_shared::api::{TokenRequest, TokenResponse};
use atmosphere_shared::link::Invite;
use atmosphere_shared::mesh_id::is_valid_mesh_id;
use atmosphere_shared::token::Token;
use atmosphere_tests::{bin_path, Host};
use host_support::{joined_id, now_secs, rfc3339_secs, Member, FRAME_WAIT};
use reqwest::header;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn invite_answer_has_every_field_with_the_right_type() {
    let host = Host::start().await;
    let r = host
        .admin(Method::POST, "/api/mesh/token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let local = format!("ws://127.0.0.1:{}", host.port);

    let token = v["token"].as_str().expect("token is a string");
    let parsed = Token::parse(token).expect("token parses with the shared codec");
    assert_eq!(
        parsed.as_str(),
        token,
        "token is returned in canonical form"
    );
    assert!(
        is_valid_mesh_id(v["mesh_id"].as_str().expect("mesh_id string")),
        "{v}"
    );
    assert_eq!(v["mesh_name"], "Home Mesh");
    // Endpoints: exactly the three keys; the missing ones are null, not absent or invented.
    let ep = v["endpoints"].as_object().expect("endpoints object");
    assert_eq!(ep.len(), 3, "{v}");
    assert_eq!(ep["local"], local.as_str());
    assert!(ep["public"].is_null(), "no STUN → public is null: {v}");
    assert!(
        ep["relay"].is_null(),
        "no relay configured → relay is null: {v}"
    );
    let ni = v["network_info"].as_object().expect("network_info object");
    assert_eq!(ni["local_ip"], "127.0.0.1");
    assert!(ni["public_ip"].is_null());
    assert!(ni["is_behind_nat"].is_boolean());
    assert!(ni["stun_source"].is_null() || ni["stun_source"].is_string());
    assert_eq!(
        v["endpoint"],
        local.as_str(),
        "legacy endpoint = first of public, local, relay"
    );
    // Safe defaults of a bare request: one device, one hour.
    assert_eq!(v["max_uses"], 1, "{v}");
    assert!(v["invite_id"].as_str().is_some_and(|s| !s.is_empty()));
    let exp = rfc3339_secs(v["expires_at"].as_str().expect("expires_at string"));
    assert!(
        (exp - now_secs() - 3600).abs() < 120,
        "expires_at {exp} is not ~1 h ahead"
    );

    // Both links decode with the shared codec to the same invite.
    let resp: TokenResponse = serde_json::from_value(v.clone()).unwrap();
    let qr = Invite::parse(&resp.qr_data).expect("qr_data parses");
    assert!(
        resp.qr_data.starts_with("atmosphere://join?"),
        "{}",
        resp.qr_data
    );
    assert_eq!(qr.version, 2);
    assert_eq!(qr.token, token);
    assert_eq!(qr.mesh_name, "Home Mesh");
    assert_eq!(qr.endpoints, resp.endpoints);
    let prefix = format!("http://127.0.0.1:{}/join#", host.port);
    assert!(
        resp.join_url.starts_with(&prefix),
        "join_url carries the invite in the fragment: {}",
        resp.join_url
    );
    let web = Invite::parse(&resp.join_url).expect("join_url parses");
    assert_eq!(web.token, token);
    assert_eq!(web.endpoints, resp.endpoints);

    // Options are honoured and show in the admin's invite list.
    let r = host
        .mint(&TokenRequest {
            ttl_secs: Some(600),
            max_uses: Some(Some(2)),
            label: Some("kitchen tablet".into()),
        })
        .await;
    assert_eq!(r.max_uses, Some(2));
    assert!((rfc3339_secs(&r.expires_at) - now_secs() - 600).abs() < 60);
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["mesh_id"], v["mesh_id"]);
    let inv = mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invite_id"] == r.invite_id.as_str())
        .unwrap();
    assert_eq!(inv["label"], "kitchen tablet");
    assert_eq!(inv["uses"], 0);
    assert_eq!(inv["max_uses"], 2);
    assert_eq!(inv["revoked"], false);
    // The token itself is never listed.
    assert!(
        !mesh.to_string().contains(&r.token),
        "GET /api/mesh must not reveal tokens"
    );

    // The network view has the snapshot and the relay state.
    let net = host.get_json("/api/network").await;
    assert_eq!(net["endpoints"]["local"], local.as_str());
    assert_eq!(net["relay"]["state"], "not_configured");
}

#[tokio::test]
async fn invite_requests_out_of_bounds_get_400_with_a_json_error() {
    let host = Host::start().await;
    let post = |body: String| {
        host.admin(Method::POST, "/api/mesh/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    for body in [
        json!({"ttl_secs": 0}).to_string(),
        json!({"ttl_secs": 31 * 24 * 3600}).to_string(),
        json!({"max_uses": 0}).to_string(),
        json!({"label": "x".repeat(201)}).to_string(),
        "{not json".to_string(),
        json!({"ttl_secs": "soon"}).to_string(),
    ] {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "body {body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "bad_request", "body {body}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| m.len() > 10), "{e}");
    }
    // The limits themselves are accepted.
    let r = post(json!({"ttl_secs": 30 * 24 * 3600, "label": "y".repeat(200)}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An oversized body is refused without a crash.
    let r = post(format!("{{\"label\":\"{}\"}}", "z".repeat(100_000)))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // ...with the API's JSON error shape, like every other API error.
    let e: Value = r.json().await.expect("the 413 answer is JSON");
    assert_eq!(e["error"], "too_large", "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.len() > 10), "{e}");
    assert!(host.get_json("/health").await["status"] == "ok");
}

#[tokio::test]
async fn admin_api_needs_the_secret_and_sends_no_cors_headers() {
    let host = Host::start().await;
    let c = client();
    let token_url = format!("{}/api/mesh/token", host.base());

    // No auth, wrong bearer, wrong cookie: 401 with a JSON error, and never a CORS header.
    let attempts = [
        c.post(&token_url)
            .header(header::ORIGIN, "https://evil.example"),
        c.post(&token_url)
            .bearer_auth("not-the-secret")
            .header(header::ORIGIN, "https://evil.example"),
        c.post(&token_url)
            .header(header::COOKIE, "atmosphere_admin=guess"),
        c.get(format!("{}/api/mesh", host.base())),
        c.get(format!("{}/api/network", host.base())),
        c.delete(format!("{}/api/mesh/invites/abc", host.base())),
    ];
    for a in attempts {
        let r = a.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "unauthorized");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A CORS preflight from another origin gets no allow headers either.
    let r = c
        .request(reqwest::Method::OPTIONS, &token_url)
        .header(header::ORIGIN, "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    assert!(r
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_METHODS)
        .is_none());
    // Even an authorised request that names an Origin gets no CORS header.
    let r = c
        .post(&token_url)
        .bearer_auth(host.admin_secret())
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    // The secret file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(host.data_dir.join("admin_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "admin_secret must be readable by its owner only (mode {mode:o})"
        );
    }
}

#[tokio::test]
async fn admin_link_sets_a_strict_cookie_and_drops_the_secret_from_the_url() {
    let host = Host::start().await;
    let c = client();
    let secret = host.admin_secret();

    // The startup output carries the admin link.
    let out = host.proc.output();
    assert!(
        out.contains(&format!(
            "Admin link: http://127.0.0.1:{}/?admin={secret}",
            host.port
        )),
        "startup output lacks the admin link:\n{out}"
    );

    let r = c
        .get(format!("{}/?admin={secret}", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[header::LOCATION], "/");
    let set_cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    // The cookie authorises the admin API from the UI's own origin …
    let host_hdr = format!("127.0.0.1:{}", host.port);
    let r = c
        .post(format!("{}/api/mesh/token", host.base()))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, format!("http://{host_hdr}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/api/mesh", host.base()))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // … but not a state-changing request another site makes with it.
    let r = c
        .post(format!("{}/api/mesh/token", host.base()))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A wrong admin link sets nothing.
    let r = c
        .get(format!("{}/?admin=wrong", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
}

/// The cookie `?admin=SECRET` sets (`name=value`) and the whole `Set-Cookie` header.
async fn admin_cookie(c: &reqwest::Client, host: &Host) -> (String, String) {
    let r = c
        .get(format!("{}/?admin={}", host.base(), host.admin_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set_cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    (cookie, set_cookie)
}

/// The status of `GET /api/mesh` with `cookie`.
async fn with_cookie(c: &reqwest::Client, host: &Host, cookie: &str) -> u16 {
    c.get(format!("{}/api/mesh", host.base()))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_admin_cookie_is_a_session_derived_from_the_secret_and_dies_with_it() {
    let host = Host::start().await;
    let c = client();
    let secret = host.admin_secret();
    let (cookie, set_cookie) = admin_cookie(&c, &host).await;
    let value = cookie.split_once('=').unwrap().1.to_string();
    assert_ne!(value, secret);
    assert!(
        !set_cookie.contains(&secret),
        "the secret is in {set_cookie}"
    );
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set_cookie.contains(attr), "{attr} missing: {set_cookie}");
    }
    assert_eq!(with_cookie(&c, &host, &cookie).await, 200);
    let (again, _) = admin_cookie(&c, &host).await;
    assert_ne!(again, cookie, "every login is a session of its own");
    assert_eq!(with_cookie(&c, &host, &again).await, 200);

    // A tampered cookie (one character of it changed) is refused …
    let mut tampered = cookie.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(with_cookie(&c, &host, &tampered).await, 401);
    // … and so is the raw secret, which used to be the cookie.
    assert_eq!(
        with_cookie(&c, &host, &format!("atmosphere_admin={secret}")).await,
        401
    );

    // A cookie of another host (another secret) is refused.
    let other = Host::start().await;
    let (foreign, _) = admin_cookie(&c, &other).await;
    assert_eq!(with_cookie(&c, &other, &foreign).await, 200);
    assert_eq!(with_cookie(&c, &host, &foreign).await, 401);

    // Rotating the secret (delete the file, restart) ends every session.
    std::fs::remove_file(host.data_dir.join("admin_secret")).unwrap();
    let host = host.restart().await;
    assert_ne!(host.admin_secret(), secret);
    assert_eq!(with_cookie(&c, &host, &cookie).await, 401);
    let (fresh, _) = admin_cookie(&c, &host).await;
    assert_eq!(with_cookie(&c, &host, &fresh).await, 200);
}

#[tokio::test]
async fn revocation_health_metrics_and_routing() {
    let host = Host::start().await;
    let c = client();
    let inv = host.mint(&TokenRequest::unlimited()).await;

    let r = host
        .admin(
            Method::DELETE,
            &format!("/api/mesh/invites/{}", inv.invite_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mesh = host.get_json("/api/mesh").await;
    let listed = mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invite_id"] == inv.invite_id.as_str())
        .unwrap();
    assert_eq!(listed["revoked"], true);
    let r = host
        .admin(Method::POST, "/api/mesh/invites/doesnotexist/revoke")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Open endpoints.
    let h: Value = c
        .get(format!("{}/health", host.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["mesh_id"], inv.mesh_id.as_str());
    assert!(h["version"].is_string() && h["uptime_secs"].is_u64());
    assert_eq!(h["members_online"], 0);
    let m = c
        .get(format!("{}/metrics", host.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("atmosphere_invites_minted_total 1"), "{m}");
    assert!(m.contains("atmosphere_sessions_online 0"), "{m}");
    assert!(
        m.contains("atmosphere_joins_total{path=\"local\"} 0"),
        "{m}"
    );

    // UI routes: `/join` (and other unknown pages) serve the SPA's HTML; unknown API paths
    // are JSON 404s; /api/ws without an upgrade is a clear 400.
    for page in ["/", "/join", "/some/deep/link"] {
        let r = c
            .get(format!("{}{page}", host.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{page}");
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/html"), "{page}: {ct}");
    }
    let r = c
        .get(format!("{}/api/nope", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = c
        .get(format!("{}/api/ws", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn event_feed_reports_invites() {
    let host = Host::start().await;
    let mut r = host.admin(Method::GET, "/api/events").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("invite_minted") {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("no invite_minted event (got {seen:?}, {other:?})"),
        }
    }
    let line = seen.lines().find(|l| l.contains("invite_minted")).unwrap();
    let ev: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(
        ev,
        json!({"type":"invite_minted","invite_id": inv.invite_id})
    );
}

/// Reads the event feed until an event of `ty` arrives; returns it.
async fn next_event(r: &mut reqwest::Response, ty: &str) -> Value {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = seen
            .lines()
            .find(|l| l.contains(&format!("\"type\":\"{ty}\"")))
        {
            return serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
        }
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("no {ty} event (got {seen:?}, {other:?})"),
        }
    }
}

#[tokio::test]
async fn devices_are_listed_and_removed_and_unknown_ids_get_a_json_404() {
    let host = Host::start().await;
    let c = client();
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (_m, j) = Member::join_token(&host.ws_url(), &inv.token, "Pixel 8").await;
    let id = joined_id(&j);

    let list = host.get_json("/api/mesh/devices").await;
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{list}");
    assert_eq!(devices[0]["device_id"], id.as_str());
    assert_eq!(devices[0]["name"], "Pixel 8");
    assert_eq!(devices[0]["online"], true);
    assert_eq!(devices[0]["invite_id"], inv.invite_id.as_str());

    // Admin only, like every other admin route.
    let r = c
        .get(format!("{}/api/mesh/devices", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .delete(format!("{}/api/mesh/devices/{id}", host.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let mut events = host.admin(Method::GET, "/api/events").send().await.unwrap();
    let remove = || {
        host.admin(Method::DELETE, &format!("/api/mesh/devices/{id}"))
            .send()
    };
    let r = remove().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["removed"], true);
    assert_eq!(
        next_event(&mut events, "device_removed").await,
        json!({"type":"device_removed","device_id": id})
    );
    assert_eq!(
        host.get_json("/api/mesh/devices").await["devices"],
        json!([])
    );

    // Removing it again, or a device that never existed: 404 with the API error body.
    for path in [id.clone(), "0000000000000000".into(), "x".repeat(100)] {
        let r = host
            .admin(Method::DELETE, &format!("/api/mesh/devices/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "not_found", "{e}");
        assert!(e["message"].as_str().unwrap().contains("device"), "{e}");
    }
}

#[tokio::test]
async fn revoking_with_remove_devices_removes_the_devices_the_invite_enrolled() {
    let host = Host::start().await;
    let url = host.ws_url();
    let doomed = host.mint(&TokenRequest::unlimited()).await;
    let other = host.mint(&TokenRequest::unlimited()).await;
    let (mut a, j) = Member::join_token(&url, &doomed.token, "a").await;
    let a_id = joined_id(&j);
    let (_b, j) = Member::join_token(&url, &doomed.token, "b").await;
    let b_id = joined_id(&j);
    let (_keep, j) = Member::join_token(&url, &other.token, "keep").await;
    let keep_id = joined_id(&j);

    // A plain revoke keeps the devices (and says nothing about them).
    let r = host
        .admin(
            Method::POST,
            &format!("/api/mesh/invites/{}/revoke", other.invite_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"invite_id": other.invite_id, "revoked": true}));

    let r = host
        .admin(
            Method::DELETE,
            &format!("/api/mesh/invites/{}?remove_devices=true", doomed.invite_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked"], true);
    let mut removed: Vec<String> = serde_json::from_value(body["removed_devices"].clone()).unwrap();
    removed.sort();
    let mut expected = vec![a_id.clone(), b_id.clone()];
    expected.sort();
    assert_eq!(removed, expected);

    // Their live sessions end at once; the other invite's device stays.
    assert_eq!(a.next_of_type("error").await["code"], "device_removed");
    a.expect_closed(FRAME_WAIT).await;
    let left: Vec<String> = host.get_json("/api/mesh/devices").await["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![keep_id]);

    let r = host
        .admin(
            Method::DELETE,
            &format!(
                "/api/mesh/invites/{}?remove_devices=maybe",
                doomed.invite_id
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "bad_request");
}

#[tokio::test]
async fn token_command_mints_through_the_running_host() {
    let host = Host::start().await;
    let dd = host.data_dir.to_str().unwrap().to_string();
    let run = |args: Vec<String>| {
        std::process::Command::new(bin_path())
            .args(&args)
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .output()
            .unwrap()
    };
    let s = |x: &str| x.to_string();

    let out = run(vec![
        s("token"),
        s("--data-dir"),
        dd.clone(),
        s("--server"),
        host.base(),
        s("--json"),
        s("--uses"),
        s("3"),
        s("--ttl"),
        s("2h"),
        s("--label"),
        s("from cli"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: TokenResponse =
        serde_json::from_slice(&out.stdout).expect("--json prints the API answer");
    assert_eq!(r.max_uses, Some(3));
    Token::parse(&r.token).unwrap();
    assert!((rfc3339_secs(&r.expires_at) - now_secs() - 7200).abs() < 60);
    let mesh = host.get_json("/api/mesh").await;
    assert!(mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["label"] == "from cli"));

    // Safe defaults: one device, one hour; more only when asked for.
    let mint = |extra: &[&str]| {
        let mut args = vec![
            s("token"),
            s("--data-dir"),
            dd.clone(),
            s("--server"),
            host.base(),
            s("--json"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = run(args);
        assert!(out.status.success(), "{extra:?}: {out:?}");
        serde_json::from_slice::<TokenResponse>(&out.stdout).unwrap()
    };
    let r = mint(&[]);
    assert_eq!(r.max_uses, Some(1));
    assert!((rfc3339_secs(&r.expires_at) - now_secs() - 3600).abs() < 60);
    assert_eq!(mint(&["--uses", "unlimited"]).max_uses, None);
    for bad in ["0", "many"] {
        let out = run(vec![s("token"), s("--uses"), s(bad)]);
        assert_eq!(out.status.code(), Some(2), "--uses {bad}: {out:?}");
    }

    // Readable form: summary with every endpoint line and a QR code.
    let out = run(vec![
        s("token"),
        s("--data-dir"),
        dd.clone(),
        s("--server"),
        host.base(),
    ]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uses: 1"),
        "{out:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Token:    ATM-"), "{text}");
    assert!(
        text.contains(&format!("local   ws://127.0.0.1:{}", host.port)),
        "{text}"
    );
    assert!(text.contains("public  not available"), "{text}");
    assert!(
        text.contains(&format!(
            "Join link: http://127.0.0.1:{}/join#token=ATM-",
            host.port
        )),
        "{text}"
    );
    assert!(
        text.contains('▀') || text.contains('▄'),
        "no terminal QR code:\n{text}"
    );

    // Clear errors: host not running, secret missing.
    let out = run(vec![
        s("token"),
        s("--data-dir"),
        dd.clone(),
        s("--server"),
        atmosphere_tests::refused_url().replace("ws://", "http://"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `atmosphere serve` running"),
        "{:?}",
        out
    );
    let empty = tempfile::tempdir().unwrap();
    let out = run(vec![
        s("token"),
        s("--data-dir"),
        empty.path().to_str().unwrap().into(),
        s("--server"),
        host.base(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin secret"),
        "{:?}",
        out
    );
}

/// An `http(s)://` relay or public URL would be written into every invite, and every client
/// rejects an invite with a non-WebSocket endpoint (the whole invite, not just that path),
/// while the relay link could never connect. `serve` must refuse such a flag at startup.
#[test]
fn serve_refuses_http_urls_for_websocket_endpoints() {
    for (flag, url) in [
        ("--relay-url", "http://127.0.0.1:1"),
        ("--relay-url", "https://relay.example"),
        ("--public-url", "http://home.example:11451"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let port = atmosphere_tests::free_port().to_string();
        let mut child = std::process::Command::new(bin_path())
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--data-dir",
            ])
            .arg(dir.path())
            .args([flag, url])
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .env("ATMOSPHERE_NO_PORT_MAPPING", "1")
            .env("ATMOSPHERE_UDP_PORT", "0")
            .env_remove("ATMOSPHERE_RELAY_URL")
            .env_remove("ATMOSPHERE_PUBLIC_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A host that accepted the flag would keep running: give it a few seconds, then stop it.
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "serve {flag} {url} should exit 2 at once; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(flag) && stderr.contains("ws://"),
            "the error should name {flag} and say ws://: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_admin_link_redirect_never_leaves_the_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = Host::start().await;
    let secret = host.admin_secret();
    // `//evil.example/` as a Location would send the browser to another origin.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", host.port))
        .await
        .unwrap();
    let req = format!(
        "GET //evil.example/?admin={secret} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let location = resp
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_else(|| panic!("no redirect: {resp}"));
    assert_eq!(location.trim(), "/", "{resp}");
    assert!(resp.contains("atmosphere_admin") || resp.to_lowercase().contains("set-cookie"));
}
