//! Absurd time settings never crash a process: every duration flag of `serve` and `relay`
//! either takes its largest documented value and works, or refuses a larger one at start
//! with exit 2 and a message naming the flag (no `Instant + Duration` overflow panics).

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::{bin_path, free_port, Host, Relay};
use host_support::Member;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `atmosphere ARGS`, which must exit on its own (a refusal): its code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin_path())
        .args(args)
        .env("ATMOSPHERE_STUN_SERVERS", "none")
        .env("ATMOSPHERE_NO_PORT_MAPPING", "1")
        .env("ATMOSPHERE_DATA_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (code, err)
}

const SERVE_MS_FLAGS: [&str; 3] = [
    "--handshake-timeout-ms",
    "--idle-timeout-ms",
    "--ping-interval-ms",
];

#[test]
fn serve_refuses_timeouts_beyond_a_day() {
    let port = free_port().to_string();
    for flag in SERVE_MS_FLAGS {
        for value in ["86400001", "18446744073709551615"] {
            let (code, err) =
                refused(&["serve", "--port", &port, "--bind", "127.0.0.1", flag, value]);
            assert_eq!(code, Some(2), "{flag} {value}: {err}");
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
    }
}

#[tokio::test]
async fn serve_works_with_the_largest_timeouts() {
    let host = Host::start_with(
        &[
            "--handshake-timeout-ms",
            "86400000",
            "--idle-timeout-ms",
            "86400000",
            "--ping-interval-ms",
            "86400000",
        ],
        &[],
    )
    .await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (mut m, joined) = Member::join_token(&host.ws_url(), &inv.token, "Pixel").await;
    assert_eq!(joined["type"], "joined", "{joined}\n{}", host.proc.output());
    m.next_of_type("peers").await;
    assert!(
        !host.proc.output().contains("panicked"),
        "{}",
        host.proc.output()
    );
}

const RELAY_FLAGS: [&str; 4] = [
    "--answer-timeout",
    "--handshake-timeout",
    "--accept-timeout",
    "--idle-timeout",
];

#[test]
fn relay_refuses_timeouts_beyond_a_day() {
    let port = free_port().to_string();
    for flag in RELAY_FLAGS {
        for value in ["1day 1s", "500000years", "1000000000years"] {
            let (code, err) =
                refused(&["relay", "--port", &port, "--bind", "127.0.0.1", flag, value]);
            assert_eq!(code, Some(2), "{flag} {value}: {err}");
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
    }
}

#[tokio::test]
async fn relay_works_with_the_largest_timeouts() {
    let mut args = Vec::new();
    for flag in RELAY_FLAGS {
        args.extend([flag, "1day"]);
    }
    let relay = Relay::start(&args).await;
    let health = reqwest::get(format!("{}/health", relay.http_base()))
        .await
        .unwrap();
    assert!(health.status().is_success());
    // A member socket exercises the relay's deadlines (it is answered or refused, either way
    // the relay stays up).
    let member = format!("{}/mesh/aaaaaaaaaaaaaaaaaaaaaaaaaa", relay.url());
    if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(member).await {
        let _ = ws.close(None).await;
    }
    let health = reqwest::get(format!("{}/health", relay.http_base()))
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(
        !relay.proc.output().contains("panicked"),
        "{}",
        relay.proc.output()
    );
}
