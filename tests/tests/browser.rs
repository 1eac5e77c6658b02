//! The web app in a real headless Chromium (WebDriver), against a real `atmosphere serve`
//! serving the built bundle (`trunk build --release` → `dist/`). Each test saves
//! screenshots of the states it checks under `target/browser-screenshots/<test>/`.
//!
//! Covered: the host's JoinPanel mints an invite whose on-screen QR decodes (zbarimg) to
//! the API's `join_url`; a phone opening that link connects via `local` and the host lists
//! it as a browser on `local`; with local and public black-holed the page connects via the
//! relay; an expired invite is reported in plain words without trying the relay; a reload
//! rejoins with the stored credential (no second device); the invite form's safe defaults
//! (one device, one hour) and its choices; the *Remove* button (after a confirmation) ends
//! the phone's session, which then forgets its credential and stays on the refusal; a
//! crafted link whose other endpoints are fake hosts gets them nothing usable, and the
//! phone keeps its credential.

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::{Endpoints, Invite};
use atmosphere_tests::browser::{web_dist, zbar_decode, Browser, CountingListener, Screen};
use atmosphere_tests::fake_host::{FakeHost, FakeMode};
use atmosphere_tests::{BlackHole, Host, Relay};
use host_support::{rfc3339_secs, Member};
use std::time::{Duration, Instant};

const UI: Duration = Duration::from_secs(15);

async fn host_with_ui(extra: &[&str]) -> Host {
    let dist = web_dist();
    let mut args = vec!["--web-dir", dist.to_str().unwrap()];
    args.extend_from_slice(extra);
    Host::start_with(&args, &[]).await
}

/// `(name, platform, path)` of every device the host knows.
async fn devices(host: &Host) -> Vec<(String, String, String)> {
    let mesh = host.get_json("/api/mesh").await;
    mesh["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
            (s("name"), s("platform"), s("path"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_on_host_page_decodes_to_join_url_and_phone_connects_via_local() {
    let host = host_with_ui(&[]).await;
    let admin = Browser::start("qr_and_local_join", Screen::Desktop).await;

    // The admin link sets the cookie; the page then shows the JoinPanel.
    admin
        .goto(&format!("{}/?admin={}", host.base(), host.admin_secret()))
        .await;
    admin
        .wait_text("#generate", UI, |t| t == "Generate invite")
        .await;
    admin
        .wait_text("#connectivity", UI, |t| {
            t.contains("Local") && t.contains("127.0.0.1")
        })
        .await;
    admin.screenshot("1-host-panel").await;
    assert!(
        !admin.body_text().await.contains(&host.admin_secret()),
        "the admin secret must not stay visible on the page"
    );

    admin.click("#generate").await;
    let token = admin
        .wait_text("#invite-token", UI, |t| t.starts_with("ATM-"))
        .await;
    admin.screenshot("2-invite").await;
    let qr_png = admin.element_screenshot("#invite-qr", "3-invite-qr").await;
    let decoded = zbar_decode(&qr_png);
    let join_url = admin.text("#invite-link").await.expect("join link shown");
    assert_eq!(
        decoded,
        vec![join_url.clone()],
        "the QR must encode exactly the join link"
    );

    // The on-screen link is the API's `join_url` for this token (fragment carries it).
    let inv = Invite::parse(&join_url).expect("join_url parses with the shared codec");
    assert_eq!(inv.token, token);
    assert!(
        join_url.starts_with(&format!("{}/join#", host.base())),
        "{join_url}"
    );
    // The API builds `join_url` with the shared codec from the invite's endpoints: the
    // scanned text must be exactly that link for this token.
    let api_mint = host.mint(&TokenRequest::unlimited()).await;
    let expected = Invite::v2(
        token.clone(),
        api_mint.mesh_name.clone(),
        api_mint.endpoints.clone(),
    )
    .with_mesh_id(api_mint.mesh_id.clone())
    .to_web_link(&host.base());
    assert_eq!(decoded[0], expected);
    assert_eq!(
        api_mint.join_url,
        Invite::v2(
            api_mint.token.clone(),
            api_mint.mesh_name.clone(),
            api_mint.endpoints.clone()
        )
        .with_mesh_id(api_mint.mesh_id.clone())
        .to_web_link(&host.base())
    );
    // The admin's outstanding invites list shows the new invite(s).
    admin
        .wait_text("#invites", UI, |t| t.contains("Revoke"))
        .await;

    // A phone opens the scanned link.
    let phone = Browser::start("qr_and_local_join", Screen::Phone).await;
    phone.goto(&decoded[0]).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via local")
        .await;
    phone
        .wait_text(".path-row[data-path=local]", UI, |t| {
            t.contains("connected in")
        })
        .await;
    phone.screenshot("4-phone-connected").await;

    let devs = devices(&host).await;
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(
        (devs[0].1.as_str(), devs[0].2.as_str()),
        ("browser", "local"),
        "{devs:?}"
    );
    assert!(
        devs[0].0.contains("Android"),
        "device name from the user agent: {devs:?}"
    );

    // The host page lists it live (SSE or polling), online on path local.
    admin
        .wait_text("#devices", UI, |t| {
            t.contains("Android phone") && t.contains("local") && t.contains("online")
        })
        .await;
    admin.screenshot("5-host-lists-device").await;

    // Another member (a native client speaking the handshake) appears in the phone's
    // member list, and messages flow both ways through the mesh.
    let (mut ws, joined) = Member::join_token(&host.ws_url(), &api_mint.token, "Laptop CLI").await;
    assert_eq!(joined["type"], "joined", "{joined}");
    phone
        .wait_text(".members", UI, |t| t.contains("Laptop CLI"))
        .await;

    phone.type_into("#message", "hello from the phone").await;
    phone.click("#send").await;
    phone
        .wait_text("#chat", UI, |t| t.contains("hello from the phone"))
        .await;
    let got = ws.next_of_type("message").await;
    assert_eq!(got["body"], "hello from the phone", "{got}");

    ws.send(serde_json::json!({"type":"send","to":null,"body":"hi phone, from the laptop"}))
        .await;
    phone
        .wait_text("#chat", UI, |t| {
            t.contains("Laptop CLI: hi phone, from the laptop")
        })
        .await;
    phone.screenshot("6-phone-messages").await;

    phone.close().await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_without_admin_cookie_explains_how_to_get_in() {
    let host = host_with_ui(&[]).await;
    let b = Browser::start("no_admin", Screen::Desktop).await;
    b.goto(&host.base()).await;
    let t = b
        .wait_text("#need-admin", UI, |t| t.contains("admin link"))
        .await;
    assert!(
        t.contains("atmosphere serve") && t.contains("?admin="),
        "{t}"
    );
    assert!(
        b.text("#generate").await.is_none(),
        "no invite button without admin auth"
    );
    b.screenshot("need-admin").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_connects_via_relay_when_direct_paths_are_black_holes() {
    let relay = Relay::start(&[]).await;
    let host = host_with_ui(&["--relay-url", &relay.url()]).await;
    // Wait for the host's relay registration (the invite carries the relay endpoint).
    host.wait_relay_connected(UI).await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let holes = (BlackHole::start().await, BlackHole::start().await);
    let relay_ep = inv
        .endpoints
        .relay
        .clone()
        .expect("invite carries the relay endpoint");
    let link = Invite::v2(
        inv.token,
        inv.mesh_name,
        Endpoints {
            local: Some(holes.0.url()),
            public: Some(holes.1.url()),
            relay: Some(relay_ep),
        },
    )
    .to_web_link(&host.base());

    let phone = Browser::start("relay_join", Screen::Phone).await;
    phone.goto(&link).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via relay")
        .await;
    // Staggered racing: the black holes cost 250 ms each, not a timeout.
    let relay_row = phone
        .wait_text(".path-row[data-path=relay]", UI, |t| {
            t.contains("connected in")
        })
        .await;
    let ms: u64 = relay_row
        .split("connected in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed time in {relay_row:?}"));
    assert!(
        ms < 5_000,
        "relay should win after two staggers, not after timeouts: {relay_row}"
    );
    // The black-holed paths were attempted and stopped, not silently skipped.
    for path in ["local", "public"] {
        phone
            .wait_text(&format!(".path-row[data-path={path}]"), UI, |t| {
                t.contains("stopped, relay won")
            })
            .await;
    }
    phone.screenshot("phone-connected-via-relay").await;
    let devs = devices(&host).await;
    assert_eq!(
        devs.iter().filter(|d| d.2 == "relay").count(),
        1,
        "{devs:?}"
    );
    // This Chromium runs outside a namespace, so its page must never start WebRTC. The
    // host has no UDP port (`joined.direct` is false): a page that offered anyway would
    // have been declined, in the host's log, within the upgrade's gather deadline.
    tokio::time::sleep(Duration::from_millis(
        atmosphere_shared::upgrade::DEFAULT_GATHER_TIMEOUT_MS + 1_000,
    ))
    .await;
    assert!(
        !host.proc.output().contains("direct path declined"),
        "a loopback page offered a WebRTC peer connection:\n{}",
        host.proc.output()
    );
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_invite_is_explained_and_no_path_is_tried_after_it() {
    let host = host_with_ui(&[]).await;
    let inv = host
        .mint(&TokenRequest {
            ttl_secs: Some(1),
            ..Default::default()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The relay endpoint is a listener that counts connections: it must see none.
    let relay = CountingListener::start().await;
    let link = Invite::v2(
        inv.token,
        inv.mesh_name,
        Endpoints {
            local: inv.endpoints.local.clone(),
            public: None,
            relay: Some(relay.url("/mesh/x")),
        },
    )
    .to_web_link(&host.base());

    let phone = Browser::start("expired_invite", Screen::Phone).await;
    phone.goto(&link).await;
    phone
        .wait_text("#headline", UI, |t| t == "This invite has expired")
        .await;
    // The local path answers first; the relay starts only if the host took longer than the
    // 250 ms stagger to say so (a loaded machine). Either way the row tells the truth, and
    // nothing is tried after the final error.
    let row = ".path-row[data-path=relay]";
    phone
        .wait_text(row, UI, |t| {
            t.contains("not tried") || t.contains("stopped: the host refused")
        })
        .await;
    phone.screenshot("phone-invite-expired").await;
    // Give a wrongly started relay attempt time to show up before asserting it did not.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let shown = phone.text(row).await.unwrap_or_default();
    if shown.contains("not tried") {
        assert_eq!(relay.count(), 0, "the relay row says 'not tried': {shown}");
    } else {
        assert!(
            shown.contains("stopped: the host refused") && relay.count() <= 1,
            "a relay attempt started before the refusal is stopped, and none starts after it: \
             {shown}, {} connections",
            relay.count()
        );
    }
    assert!(devices(&host).await.is_empty());
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejoins_with_stored_credential_without_a_second_device() {
    let host = host_with_ui(&[]).await;
    // A single-use invite: a second token join would be refused, so success after the
    // reload proves the stored device credential was used.
    let inv = host
        .mint(&TokenRequest {
            max_uses: Some(Some(1)),
            ..Default::default()
        })
        .await;
    let phone = Browser::start("reload_rejoin", Screen::Phone).await;
    phone.goto(&inv.join_url).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via local")
        .await;
    phone.screenshot("1-first-join").await;
    // The invite token leaves the address bar (and this history entry) once joined.
    let address = phone
        .js("return [location.pathname, location.hash, location.search, location.href]")
        .await;
    assert_eq!(address[0], "/join", "{address}");
    assert_eq!(
        address[1], "",
        "the token is still in the address bar: {address}"
    );
    assert_eq!(address[2], "", "{address}");
    assert!(
        !address[3].as_str().unwrap().contains(&inv.token),
        "{address}"
    );
    let first = devices(&host).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let stored = phone.js("return Object.keys(localStorage).filter(k => k.startsWith('atmosphere.device.')).length").await;
    assert_eq!(
        stored,
        serde_json::json!(1),
        "the device credential is stored"
    );
    // What the tab keeps for a reload does not carry the token either.
    let tab = phone.js("return JSON.stringify(sessionStorage)").await;
    assert!(
        !tab.as_str().unwrap().contains(&inv.token),
        "the token is kept in sessionStorage: {tab}"
    );

    phone.client.refresh().await.unwrap();
    phone
        .wait_text("#headline", UI, |t| t == "Connected via local")
        .await;
    phone.screenshot("2-after-reload").await;
    assert_eq!(phone.js("return location.hash").await, "");
    let after = devices(&host).await;
    assert_eq!(
        after.len(),
        1,
        "a reload must not create a second device: {after:?}"
    );
    assert_eq!(after[0].0, first[0].0);
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_box_accepts_an_app_link_on_a_desktop() {
    let host = host_with_ui(&[]).await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let b = Browser::start("paste_link", Screen::Desktop).await;
    b.goto(&format!("{}/join", host.base())).await;
    b.wait_text("#headline", UI, |t| t == "No invite in this link")
        .await;

    b.type_into("#paste-link", "not a link").await;
    b.click("#paste-join").await;
    b.wait_text(".paste .error", UI, |t| t.contains("not an invite link"))
        .await;

    // A v2 app link (`qr_data`), as a desktop user would paste it.
    b.client
        .find(fantoccini::Locator::Css("#paste-link"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    b.type_into("#paste-link", &inv.qr_data).await;
    b.click("#paste-join").await;
    b.wait_text("#headline", UI, |t| t == "Connected via local")
        .await;
    b.screenshot("desktop-pasted-link").await;
    assert_eq!(devices(&host).await.len(), 1);
    b.close().await;
}

/// The host view's *Remove* button (after its confirmation) ends the phone's live session at
/// once: the phone says the device was removed, forgets its credential and does not
/// reconnect; the host view drops the device. The invite form mints one-device, one-hour
/// invites unless asked for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_button_ends_the_phone_session_and_invites_default_to_one_device_for_one_hour() {
    let host = host_with_ui(&[]).await;
    let admin = Browser::start("remove_device", Screen::Desktop).await;
    admin
        .goto(&format!("{}/?admin={}", host.base(), host.admin_secret()))
        .await;
    admin
        .wait_text("#generate", UI, |t| t == "Generate invite")
        .await;

    // Safe defaults: the first invite is single use and expires in an hour.
    admin.click("#generate").await;
    admin
        .wait_text("#invite-expiry", UI, |t| t.contains("single use"))
        .await;
    let mesh = host.get_json("/api/mesh").await;
    let first = &mesh["invites"][0];
    assert_eq!(first["max_uses"], 1, "{mesh}");
    let ttl = rfc3339_secs(first["expires_at"].as_str().unwrap())
        - rfc3339_secs(first["created_at"].as_str().unwrap());
    assert_eq!(ttl, 3600, "{mesh}");
    // Asking for more: any number of devices for 7 days.
    admin
        .js("const s = document.querySelector('#invite-uses'); s.value = 'unlimited'; s.dispatchEvent(new Event('change')); \
             const t = document.querySelector('#invite-ttl'); t.value = '7d'; t.dispatchEvent(new Event('change')); return true")
        .await;
    admin.click("#generate").await;
    admin
        .wait_text("#invite-expiry", UI, |t| {
            t.contains("any number of devices")
        })
        .await;
    let mesh = host.get_json("/api/mesh").await;
    let open = &mesh["invites"][0];
    assert!(open["max_uses"].is_null(), "{mesh}");
    let ttl = rfc3339_secs(open["expires_at"].as_str().unwrap())
        - rfc3339_secs(open["created_at"].as_str().unwrap());
    assert_eq!(ttl, 7 * 24 * 3600, "{mesh}");
    admin.screenshot("1-invite-options").await;

    // A phone joins; the host view lists it online.
    let join_url = admin.text("#invite-link").await.expect("join link shown");
    let phone = Browser::start("remove_device", Screen::Phone).await;
    phone.goto(&join_url).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via local")
        .await;
    admin
        .wait_text("#devices", UI, |t| t.contains("online"))
        .await;

    // Remove asks first; Cancel keeps the device.
    admin.click("#devices .device button.remove").await;
    admin
        .wait_text("#devices", UI, |t| t.contains("Its key stops working"))
        .await;
    admin.screenshot("2-confirm-remove").await;
    admin.click("#devices .device button.cancel-remove").await;
    admin.click("#devices .device button.remove").await;
    let removed_at = Instant::now();
    admin.click("#devices .device button.confirm-remove").await;

    phone
        .wait_text("#headline", UI, |t| {
            t == "This device was removed from the mesh"
        })
        .await;
    // The host ends the phone's session as part of the removal (not at a keepalive).
    assert!(
        removed_at.elapsed() < Duration::from_secs(1),
        "the phone learned of its removal {:?} after the click",
        removed_at.elapsed()
    );
    phone.screenshot("3-phone-removed").await;
    admin
        .wait_text("main", UI, |t| t.contains("No devices yet"))
        .await;
    assert!(devices(&host).await.is_empty());
    let stored = phone
        .js("return Object.keys(localStorage).filter(k => k.startsWith('atmosphere.device.')).length")
        .await;
    assert_eq!(
        stored,
        serde_json::json!(0),
        "the removed credential is forgotten"
    );
    // The page stays on the refusal: no reconnection creates or revives a device.
    assert_eq!(
        phone.text("#headline").await.as_deref(),
        Some("This device was removed from the mesh")
    );
    phone.close().await;
    admin.close().await;
}

/// F1: a crafted link of the old form (no `id=`) shares one URL with the phone's stored
/// credential: the real host's, here behind the `relay` row. Its `local` is a fake host that
/// turns the phone away with a plaintext `unknown_device`; its `public` a fake host with its
/// own mesh key that would answer `joined` to anything. The phone rejoins pinned to the
/// mesh the real host proved at the first join: each fake gets message 1 (an ephemeral key)
/// and nothing else, each row says why it failed, the real host lets the phone in as the
/// same device, and the credential is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_link_gets_fake_hosts_nothing_and_the_credential_survives() {
    let host = host_with_ui(&[]).await;
    let inv = host
        .mint(&TokenRequest {
            max_uses: Some(Some(1)),
            ..Default::default()
        })
        .await;
    let phone = Browser::start("crafted_link", Screen::Phone).await;
    phone.goto(&inv.join_url).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via local")
        .await;

    let turn_away = FakeHost::start(FakeMode::PlaintextRefusal {
        code: "unknown_device",
    })
    .await;
    let other_mesh = FakeHost::start(FakeMode::OtherMesh).await;
    let crafted = Invite::v2(
        "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG",
        inv.mesh_name.clone(),
        Endpoints {
            local: Some(turn_away.url()),
            public: Some(other_mesh.url()),
            relay: inv.endpoints.local.clone(),
        },
    )
    .to_web_link(&host.base());
    // A new navigation, as when a link is opened from another app (from the bare `/join`,
    // a fragment alone would not reload the page).
    phone.goto("about:blank").await;
    phone.goto(&crafted).await;
    phone
        .wait_text("#headline", UI, |t| t == "Connected via relay")
        .await;
    phone
        .wait_text(".path-row[data-path=local]", UI, |t| {
            t.contains("unknown_device") && t.contains("unverified")
        })
        .await;
    phone
        .wait_text(".path-row[data-path=public]", UI, |t| {
            t.contains("not the mesh's host")
        })
        .await;
    phone.screenshot("crafted-link").await;

    for (name, fake) in [("local", &turn_away), ("public", &other_mesh)] {
        let got = fake.received();
        assert!(
            matches!(got.as_slice(), [msg1] if msg1.len() == 32),
            "the fake {name} host got more than message 1: {got:?}"
        );
    }
    let stored = phone
        .js("return Object.keys(localStorage).filter(k => k.startsWith('atmosphere.device.')).length")
        .await;
    assert_eq!(stored, serde_json::json!(1), "the credential was forgotten");
    assert_eq!(
        devices(&host).await.len(),
        1,
        "the phone rejoined as the same device"
    );
    phone.close().await;
}
