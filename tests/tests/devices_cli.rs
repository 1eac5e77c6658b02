//! `atmosphere devices` against a real host: the readable list and `--json`, removing a
//! device (its live session closes, its key is refused), and the exit codes (1 when the host
//! refuses, e.g. an unknown id, or cannot be reached; 2 for usage errors).

mod host_support;

use atmosphere_shared::api::{DeviceList, DeviceRemoved, TokenRequest};
use atmosphere_tests::{bin_path, refused_url, Host};
use host_support::{joined_id, Member};
use std::process::Output;

/// Runs `atmosphere ARGS` against `host` (its data dir and URL) to completion.
fn devices(host: &Host, args: &[&str]) -> Output {
    std::process::Command::new(bin_path())
        .args(args)
        .env("ATMOSPHERE_DATA_DIR", &host.data_dir)
        .env("ATMOSPHERE_SERVER", host.base())
        .env("ATMOSPHERE_STUN_SERVERS", "none")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_lists_and_removes_through_the_running_host() {
    let host = Host::start().await;
    let empty = devices(&host, &["devices"]);
    assert_eq!(empty.status.code(), Some(0), "{empty:?}");
    assert!(stdout(&empty).contains("no devices"), "{empty:?}");

    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (mut phone, j) = Member::join_token(&host.ws_url(), &inv.token, "Pixel\u{1b}[2J").await;
    let id = joined_id(&j);
    let key = phone.key();
    phone.next_of_type("peers").await;

    // The table: a header, then one line with the id, the name, online, the invite.
    let out = devices(&host, &["devices"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("ID "), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("device line");
    assert!(line.contains("Pixel"), "{line}");
    assert!(line.contains("online"), "{line}");
    assert!(line.contains(&inv.invite_id), "{line}");
    assert!(
        !text.contains('\u{1b}'),
        "control characters reach the terminal: {text:?}"
    );

    // --json: the API answer.
    let out = devices(&host, &["devices", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let list: DeviceList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.devices.len(), 1);
    assert_eq!(list.devices[0].device_id, id);
    assert!(list.devices[0].online);

    // Remove: the live session gets `device_removed` and closes, the key is refused.
    let out = devices(&host, &["devices", "remove", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let done: DeviceRemoved = serde_json::from_slice(&out.stdout).unwrap();
    assert!(done.removed && done.was_online, "{done:?}");
    phone.expect_error("device_removed").await;
    let (_again, first) = Member::rejoin(&host.ws_url(), &id, &key).await;
    assert_eq!(first["code"], "unknown_device", "{first}");
    let out = devices(&host, &["devices", "--json"]);
    let list: DeviceList = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.devices.is_empty(), "{list:?}");

    // Removing it again: exit 1 with a sentence naming the id.
    let out = devices(&host, &["devices", "remove", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("no device has the id"), "{out:?}");
    assert!(stderr(&out).contains(&id), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_readable_remove_and_exit_codes() {
    let host = Host::start().await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (m, j) = Member::join_token(&host.ws_url(), &inv.token, "tablet").await;
    let id = joined_id(&j);
    drop(m);
    let out = devices(&host, &["devices", "remove", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).starts_with(&format!("removed device {id}")),
        "{out:?}"
    );

    // Usage errors: 2.
    for args in [
        &["devices", "remove"][..],
        &["devices", "frobnicate"][..],
        &["devices", "--bogus"][..],
    ] {
        let out = devices(&host, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }

    // No host there: 1 with a hint.
    let out = std::process::Command::new(bin_path())
        .args(["devices", "--server"])
        .arg(refused_url().replace("ws://", "http://"))
        .env("ATMOSPHERE_DATA_DIR", &host.data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("is `atmosphere serve` running"),
        "{out:?}"
    );

    // A data dir without the admin secret: 1, saying so.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin_path())
        .args(["devices"])
        .env("ATMOSPHERE_DATA_DIR", empty.path())
        .env("ATMOSPHERE_SERVER", host.base())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("admin secret"), "{out:?}");
}
