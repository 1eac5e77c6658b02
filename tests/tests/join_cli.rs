//! `atmosphere join` end to end: the real binary against a real `atmosphere serve` (real
//! SQLite, real WebSockets) on 127.0.0.1. Links are built from a minted invite with the
//! endpoints replaced (a black hole, a refused port, the host), so each test controls
//! exactly which path works. Assertions are on what a user sees: the JSON-lines events, the
//! exit code, and the host's own view of the member.

use atmosphere_shared::api::{TokenRequest, TokenResponse};
use atmosphere_shared::token::TOKEN_BYTES;
use atmosphere_shared::{Endpoints, Invite, Token};
use atmosphere_tests::fake_host::{FakeHost, FakeMode};
use atmosphere_tests::{bin_path, refused_url, BlackHole, Host, Relay};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for a join that should finish: far beyond any normal run, only there so a
/// hung client fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(40);

/// One finished `atmosphere join`: its exit code, stdout JSON lines with the time each was
/// read (relative to spawn), and stderr.
struct JoinRun {
    code: Option<i32>,
    lines: Vec<(Duration, Value)>,
    stderr: String,
}

impl JoinRun {
    fn events(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|(_, v)| v["event"].as_str().unwrap_or("?"))
            .collect()
    }

    fn find(&self, event: &str, path: Option<&str>) -> Option<&(Duration, Value)> {
        self.lines
            .iter()
            .find(|(_, v)| v["event"] == event && path.is_none_or(|p| v["path"] == p))
    }

    fn dump(&self) -> String {
        let out: Vec<String> = self
            .lines
            .iter()
            .map(|(t, v)| format!("{:>6} ms {v}", t.as_millis()))
            .collect();
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            out.join("\n"),
            self.stderr
        )
    }
}

fn join_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path());
    cmd.arg("join")
        .args(args)
        .env_remove("ATMOSPHERE_DEVICE_NAME")
        .env_remove("ATMOSPHERE_DEVICE_FILE")
        .env("ATMOSPHERE_STUN_SERVERS", "none")
        .env("RUST_LOG", "warn");
    cmd
}

/// Starts a `join` that stays in the mesh (stdin piped, so it can be sent lines), with its
/// stdout lines stamped by [`stamp_lines`].
fn spawn_staying(args: &[&str]) -> (Child, mpsc::Receiver<(Duration, String)>) {
    let t0 = Instant::now();
    let mut child = join_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stamp_lines(&mut child, t0);
    (child, rx)
}

/// Reads `child`'s stdout line by line on a thread, stamping each line with its arrival.
fn stamp_lines(child: &mut Child, t0: Instant) -> mpsc::Receiver<(Duration, String)> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((t0.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

fn parse_line(t: Duration, line: &str) -> (Duration, Value) {
    let v = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("--json printed a line that is not JSON ({e}): {line:?}"));
    (t, v)
}

/// Runs `atmosphere join ARGS` to completion (blocking; call from `spawn_blocking` when the
/// test also runs async servers such as a black hole).
fn run_join_blocking(args: Vec<String>) -> JoinRun {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let t0 = Instant::now();
    let mut child = join_command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn atmosphere join");
    let rx = stamp_lines(&mut child, t0);
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if t0.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // stdout closes when the process exits; collect whatever it printed.
    let lines = rx.iter().map(|(t, l)| parse_line(t, &l)).collect();
    let stderr = err_reader.join().unwrap_or_default();
    JoinRun {
        code,
        lines,
        stderr,
    }
}

/// `join --once --json --device-file FILE LINK`.
async fn once_with_device_file(file: &str, link: &str) -> JoinRun {
    run_join(&["--once", "--json", "--device-file", file, link]).await
}

async fn run_join(args: &[&str]) -> JoinRun {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || run_join_blocking(args))
        .await
        .unwrap()
}

/// The minted invite with its endpoints replaced, as a v2 link.
fn link_with(minted: &TokenResponse, endpoints: Endpoints) -> String {
    Invite::v2(minted.token.clone(), minted.mesh_name.clone(), endpoints).to_v2_link()
}

fn only_local(url: String) -> Endpoints {
    Endpoints {
        local: Some(url),
        public: None,
        relay: None,
    }
}

async fn mint(host: &Host) -> TokenResponse {
    host.mint(&TokenRequest::unlimited()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn once_json_connects_via_local_with_the_minted_link() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    // The host advertises 127.0.0.1 as its LAN address in tests, so the minted app link
    // works exactly as a person would use it.
    let run = run_join(&["--once", "--json", "--name", "Terminal A", &minted.qr_data]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.events(), vec!["trying", "connected"], "{}", run.dump());
    let trying = &run.lines[0].1;
    assert_eq!(trying["path"], "local");
    assert_eq!(trying["url"].as_str(), minted.endpoints.local.as_deref());
    let connected = &run.lines[1].1;
    assert_eq!(connected["path"], "local");
    assert_eq!(connected["mesh_name"], minted.mesh_name.as_str());
    assert!(connected["elapsed_ms"].is_u64(), "{connected}");

    // The host recorded the member, its platform and the path it came in on.
    let mesh = host.get_json("/api/mesh").await;
    let devices = mesh["devices"].as_array().expect("devices list");
    let me = devices
        .iter()
        .find(|d| d["name"] == "Terminal A")
        .unwrap_or_else(|| panic!("joined device missing from /api/mesh: {mesh}"));
    assert_eq!(me["platform"], "cli");
    assert_eq!(me["path"], "local");
}

#[tokio::test(flavor = "multi_thread")]
async fn readable_output_names_the_path_and_mesh() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let out = tokio::task::spawn_blocking(move || {
        join_command(&["--once", &link])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("trying local {}", host.ws_url())),
        "{stdout}"
    );
    assert!(
        stdout.contains("connected via local in ")
            && stdout.contains(&format!("to mesh '{}'", minted.mesh_name)),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn black_holed_local_falls_back_to_public_after_the_stagger() {
    let host = Host::start().await;
    let hole = BlackHole::start().await;
    let minted = mint(&host).await;
    let link = link_with(
        &minted,
        Endpoints {
            local: Some(hole.url()),
            public: Some(host.ws_url()),
            relay: None,
        },
    );
    let run = run_join(&["--once", "--json", &link]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    // Local is not reported failed: it lost the race and was dropped.
    assert_eq!(
        run.events(),
        vec!["trying", "trying", "connected"],
        "{}",
        run.dump()
    );
    let (t_local, local) = run.find("trying", Some("local")).unwrap();
    let (t_public, _) = run.find("trying", Some("public")).unwrap();
    assert_eq!(local["url"], hole.url());
    assert!(
        *t_public >= *t_local + Duration::from_millis(200),
        "public started before the stagger: {}",
        run.dump()
    );
    let (_, connected) = run.find("connected", None).unwrap();
    assert_eq!(connected["path"], "public");
    let elapsed = connected["elapsed_ms"].as_u64().unwrap();
    assert!(
        elapsed >= 200,
        "connected before the stagger could have passed: {}",
        run.dump()
    );
    // It did not sit out the black hole's 10 s attempt timeout.
    assert!(elapsed < 10_000, "{}", run.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_local_moves_to_public_without_waiting() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(
        &minted,
        Endpoints {
            local: Some(refused_url()),
            public: Some(host.ws_url()),
            relay: None,
        },
    );
    // A huge stagger: public can only start early because local's failure starts it.
    let run = run_join(&["--once", "--json", "--stagger-ms", "30000", &link]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.events(),
        vec!["trying", "failed", "trying", "connected"],
        "{}",
        run.dump()
    );
    let (_, failed) = run.find("failed", Some("local")).unwrap();
    assert_eq!(failed["reason"], "connection refused", "{}", run.dump());
    assert_eq!(run.find("connected", None).unwrap().1["path"], "public");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_paths_failing_exits_1_with_every_reason() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(
        &minted,
        Endpoints {
            local: Some(refused_url()),
            public: Some(refused_url()),
            relay: None,
        },
    );
    let run = run_join(&["--once", "--json", &link]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert_eq!(
        run.events(),
        vec!["trying", "failed", "trying", "failed", "error"],
        "{}",
        run.dump()
    );
    let (_, err) = run.lines.last().unwrap();
    assert_eq!(err["code"], "all_failed");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("local: connection refused") && msg.contains("public: connection refused"),
        "{msg}"
    );
}

/// Checks a refused credential: `failed` on the path that reached the host, then one
/// `error` with the host's code, exit 1, and nothing tried after it.
fn assert_refused(run: &JoinRun, code: &str) {
    assert_eq!(run.code, Some(1), "{code}: {}", run.dump());
    let err_at = run
        .lines
        .iter()
        .position(|(_, v)| v["event"] == "error")
        .unwrap_or_else(|| panic!("{code}: no error event: {}", run.dump()));
    assert_eq!(run.lines[err_at].1["code"], code, "{}", run.dump());
    assert!(run.lines[err_at].1["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        err_at,
        run.lines.len() - 1,
        "{code}: events after the error: {}",
        run.dump()
    );
    let (_, failed) = run
        .find("failed", Some("public"))
        .expect("the refusing path is reported failed");
    assert!(
        failed["reason"].as_str().unwrap().contains(code),
        "{}",
        run.dump()
    );
    assert!(
        run.find("trying", Some("relay")).is_none(),
        "{code}: relay tried after a final error: {}",
        run.dump()
    );
}

/// Local is a black hole (still pending when the host answers on public), public is the
/// host, relay would start 250 ms after public: a final error must stop both.
async fn refused_run(host: &Host, token: &str, mesh_name: &str) -> JoinRun {
    let hole = BlackHole::start().await;
    let eps = Endpoints {
        local: Some(hole.url()),
        public: Some(host.ws_url()),
        relay: Some(format!("{}/api/ws", host.ws_url())),
    };
    let link = Invite::v2(token, mesh_name, eps).to_v2_link();
    // A long attempt timeout: exiting promptly proves the black-holed local was cancelled
    // rather than waited out.
    let t0 = Instant::now();
    let run = run_join(&["--once", "--json", "--attempt-timeout-ms", "60000", &link]).await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "did not stop at the refusal: {}",
        run.dump()
    );
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_token_is_refused_with_invalid_token() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    // Well-formed but never minted.
    let fake = Token::from_entropy([0x5a; TOKEN_BYTES]);
    assert_ne!(fake.as_str(), minted.token);
    let run = refused_run(&host, fake.as_str(), &minted.mesh_name).await;
    assert_refused(&run, "invalid_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_refused_with_token_expired() {
    let host = Host::start().await;
    let minted = host
        .mint(&TokenRequest {
            ttl_secs: Some(1),
            ..Default::default()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let run = refused_run(&host, &minted.token, &minted.mesh_name).await;
    assert_refused(&run, "token_expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_token_is_refused_with_token_exhausted() {
    let host = Host::start().await;
    let minted = host
        .mint(&TokenRequest {
            max_uses: Some(Some(1)),
            ..Default::default()
        })
        .await;
    let first = run_join(&[
        "--once",
        "--json",
        &link_with(&minted, only_local(host.ws_url())),
    ])
    .await;
    assert_eq!(first.code, Some(0), "the one allowed use: {}", first.dump());
    let run = refused_run(&host, &minted.token, &minted.mesh_name).await;
    assert_refused(&run, "token_exhausted");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_is_refused_with_token_revoked() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let r = host
        .admin(
            reqwest::Method::POST,
            &format!("/api/mesh/invites/{}/revoke", minted.invite_id),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "revoke failed: {}", r.status());
    let run = refused_run(&host, &minted.token, &minted.mesh_name).await;
    assert_refused(&run, "token_revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_file_rejoins_without_the_token() {
    let host = Host::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let file_s = file.to_str().unwrap();
    // A single-use invite: the second join can only succeed with the stored credential.
    let minted = host
        .mint(&TokenRequest {
            max_uses: Some(Some(1)),
            ..Default::default()
        })
        .await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let first = once_with_device_file(file_s, &link).await;
    assert_eq!(first.code, Some(0), "{}", first.dump());
    let cred: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        cred["device_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{cred}"
    );
    assert!(
        cred["device_secret"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{cred}"
    );
    // Pinned to the mesh the host proved in the handshake.
    assert_eq!(cred["mesh_id"], minted.mesh_id.as_str(), "{cred}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the credential must be private");
    }

    let second = once_with_device_file(file_s, &link).await;
    assert_eq!(
        second.code,
        Some(0),
        "rejoin with the credential: {}",
        second.dump()
    );
    assert_eq!(second.find("connected", None).unwrap().1["path"], "local");
    // Same device, not a second member.
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["devices"].as_array().unwrap().len(), 1, "{mesh}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_device_credential_is_refused_with_unknown_device() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let link = link_with(&minted, only_local(host.ws_url()));
    // Pinned to the right mesh (so the host gets the request), but a device it never
    // enrolled: a record of this version (a device key) and one of an earlier version (a
    // bearer key).
    let mesh_id = &minted.mesh_id;
    for forged in [
        format!(
            r#"{{"mesh_id":"{mesh_id}","mesh_name":"x","device_id":"dev-forged","device_secret":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk"}}"#
        ),
        format!(
            r#"{{"mesh_id":"{mesh_id}","mesh_name":"x","device_id":"dev-forged","device_key":"not-a-real-key"}}"#
        ),
    ] {
        write_file(&file, &forged);
        let run = run_join(&[
            "--once",
            "--json",
            "--device-file",
            file.to_str().unwrap(),
            &link,
        ])
        .await;
        assert_eq!(run.code, Some(1), "{}", run.dump());
        assert_eq!(
            run.lines.last().unwrap().1["code"],
            "unknown_device",
            "{}",
            run.dump()
        );
        // The command never deletes or rewrites the file, whatever the answer.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), forged);
    }
}

/// A device enrolled by an earlier version (the host stored the hash of the bearer
/// `device_key` it handed out; the file holds that key) still rejoins with its old file,
/// once: the file is then rewritten in the new form (a device secret, no bearer key), and
/// the next run rejoins with that, as the same device.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_file_of_an_earlier_version_rejoins_and_is_rewritten() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    // The device row as the earlier version stored it: a bearer key's hash, no static key.
    let db = atmosphere_server::data_dir::database_path(&host.data_dir);
    let store = atmosphere_server::store::Store::open(&db).unwrap();
    let key_hash = atmosphere_server::secret::sha256_hex("legacy-bearer-key");
    store
        .call(move |conn| {
            conn.execute_batch(&format!(
                "INSERT INTO devices (id, name, platform, key_hash, joined_at) \
                 VALUES ('dev-legacy', 'Old phone', 'cli', '{key_hash}', 1)"
            ))?;
            Ok(())
        })
        .await
        .unwrap();
    drop(store);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let file_s = file.to_str().unwrap();
    write_file(
        &file,
        &format!(
            r#"{{"mesh_id":"{}","mesh_name":"Home","device_id":"dev-legacy","device_key":"legacy-bearer-key"}}"#,
            minted.mesh_id
        ),
    );
    let link = link_with(&minted, only_local(host.ws_url()));

    let first = once_with_device_file(file_s, &link).await;
    assert_eq!(first.code, Some(0), "{}", first.dump());
    let cred: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(cred["device_id"], "dev-legacy", "{cred}");
    assert_eq!(cred["mesh_id"], minted.mesh_id.as_str(), "{cred}");
    assert!(cred["device_secret"].is_string(), "{cred}");
    assert!(cred.get("device_key").is_none(), "{cred}");

    let second = once_with_device_file(file_s, &link).await;
    assert_eq!(second.code, Some(0), "{}", second.dump());
    let mesh = host.get_json("/api/mesh").await;
    let devices = mesh["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{mesh}");
    assert_eq!(devices[0]["device_id"], "dev-legacy", "{mesh}");
}

/// A device file pinned to another mesh is never presented to this host: the handshake
/// fails before the request is sent (`not the mesh's host`), the run fails like an
/// unreachable path (not a refusal), and the file is kept as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_file_of_another_mesh_is_never_sent_and_is_kept() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let other = r#"{"mesh_id":"aaaaaaaaaaaaaaaaaaaaaaaaaa","mesh_name":"Elsewhere","device_id":"dev-1","device_secret":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk"}"#;
    write_file(&file, other);
    let link = link_with(&minted, only_local(host.ws_url()));
    let run = run_join(&[
        "--once",
        "--json",
        "--device-file",
        file.to_str().unwrap(),
        &link,
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let (_, failed) = run.find("failed", Some("local")).expect("local failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("not the mesh's host"),
        "{}",
        run.dump()
    );
    assert_eq!(run.lines.last().unwrap().1["code"], "all_failed");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), other);
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["devices"].as_array().unwrap().len(), 0, "{mesh}");
}

/// The minted invite with its endpoints replaced, still naming the minted mesh id.
fn link_naming_the_mesh(minted: &TokenResponse, endpoints: Endpoints) -> String {
    Invite::v2(minted.token.clone(), minted.mesh_name.clone(), endpoints)
        .with_mesh_id(minted.mesh_id.clone())
        .to_v2_link()
}

/// Asserts a fake host got nothing but one handshake message 1: 32 bytes of ephemeral key.
fn assert_got_only_an_ephemeral_key(fake: &FakeHost) {
    let got = fake.received();
    assert!(
        got.iter().all(|f| f.len() == 32),
        "the fake host received more than an ephemeral key: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// F1: a crafted link whose `local` is someone else's socket and whose `public` is the real
/// host. The stored credential is never handed to the fake (it gets an ephemeral key and
/// nothing else), a forged `unknown_device` does not make the client forget it, and the
/// client joins through the real host.
#[tokio::test(flavor = "multi_thread")]
async fn a_crafted_link_with_a_fake_local_host_gets_nothing_and_the_credential_survives() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let file_s = file.to_str().unwrap();
    let first = once_with_device_file(file_s, &link_with(&minted, only_local(host.ws_url()))).await;
    assert_eq!(first.code, Some(0), "{}", first.dump());
    let stored = std::fs::read_to_string(&file).unwrap();

    for mode in [
        FakeMode::OtherMesh,
        FakeMode::PlaintextRefusal {
            code: "unknown_device",
        },
    ] {
        let fake = FakeHost::start(mode).await;
        let crafted = link_with(
            &minted,
            Endpoints {
                local: Some(fake.url()),
                public: Some(host.ws_url()),
                relay: None,
            },
        );
        let run = once_with_device_file(file_s, &crafted).await;
        assert_eq!(run.code, Some(0), "{mode:?}: {}", run.dump());
        assert_eq!(run.find("connected", None).unwrap().1["path"], "public");
        let (_, failed) = run.find("failed", Some("local")).expect("local failed");
        let reason = failed["reason"].as_str().unwrap();
        match mode {
            FakeMode::OtherMesh => assert!(reason.contains("not the mesh's host"), "{reason}"),
            FakeMode::PlaintextRefusal { .. } => {
                assert!(
                    reason.contains("unknown_device") && reason.contains("(unverified)"),
                    "{reason}"
                )
            }
        }
        assert!(!fake.received().is_empty(), "the fake was never tried");
        assert_got_only_an_ephemeral_key(&fake);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), stored, "{mode:?}");
    }
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["devices"].as_array().unwrap().len(), 1, "{mesh}");
}

/// A host that answers `joined` without the mesh key: neither a first join (the link names
/// the mesh) nor a rejoin (the credential pinned it) gets past its message 2, so it never
/// sees the token or the join request, and the client reports why.
#[tokio::test(flavor = "multi_thread")]
async fn a_fake_host_without_the_mesh_key_is_refused_before_any_credential() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let fake = FakeHost::start(FakeMode::OtherMesh).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let file_s = file.to_str().unwrap();
    let run = once_with_device_file(
        file_s,
        &link_naming_the_mesh(&minted, only_local(fake.url())),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert_eq!(run.lines.last().unwrap().1["code"], "all_failed");
    assert!(run.dump().contains("not the mesh's host"), "{}", run.dump());
    assert!(!file.exists(), "no credential may come from a fake host");
    assert_got_only_an_ephemeral_key(&fake);

    // With a credential pinned to the real mesh, the same.
    let ok = once_with_device_file(
        file_s,
        &link_naming_the_mesh(&minted, only_local(host.ws_url())),
    )
    .await;
    assert_eq!(ok.code, Some(0), "{}", ok.dump());
    let stored = std::fs::read_to_string(&file).unwrap();
    let run = once_with_device_file(file_s, &link_with(&minted, only_local(fake.url()))).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert_got_only_an_ephemeral_key(&fake);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stored);
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_link_exits_2_with_a_reason() {
    let run = run_join(&["--once", "--json", "atmosphere://join?mesh=Home"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert_eq!(run.events(), vec!["error"], "{}", run.dump());
    assert_eq!(run.lines[0].1["code"], "bad_link");
    let run = run_join(&["--once", "not a link at all"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("error:"), "{}", run.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn staying_members_see_each_other_and_exchange_messages() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let spawn = |name: &str| spawn_staying(&["--json", "--name", name, &link]);
    let (mut a, a_rx) = spawn("Alice");
    wait_line(&a_rx, &|v| v["event"] == "connected");
    let (mut b, b_rx) = spawn("Bob");
    wait_line(&b_rx, &|v| v["event"] == "connected");
    // Bob's session starts with who is online: the whole snapshot, in one line.
    let online = wait_line(&b_rx, &|v| v["event"] == "peers");
    let names: Vec<&str> = online["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Alice"], "{online}");
    let joined = wait_line(&a_rx, &|v| v["event"] == "peer_joined");
    assert_eq!(joined["peer"]["name"], "Bob");
    let bob_id = joined["peer"]["device_id"].as_str().unwrap().to_string();

    b.stdin
        .as_mut()
        .unwrap()
        .write_all(b"hello from bob\n")
        .unwrap();
    let msg = wait_line(&a_rx, &|v| v["event"] == "message");
    assert_eq!(msg["from"], bob_id.as_str());
    assert_eq!(msg["body"], "hello from bob");

    // Bob leaves: Alice is told.
    let _ = b.kill();
    let _ = b.wait();
    let left = wait_line(&a_rx, &|v| v["event"] == "peer_left");
    assert_eq!(left["device_id"], bob_id.as_str());
    let _ = a.kill();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_relay_works() {
    let relay = Relay::start(&[]).await;
    let host = Host::start_with(&["--relay-url", &relay.url()], &[]).await;
    host.wait_relay_connected(Duration::from_secs(20)).await;
    let hole = BlackHole::start().await;
    let minted = mint(&host).await;
    let relay_ep = minted
        .endpoints
        .relay
        .clone()
        .expect("the invite carries a relay endpoint");
    // No LAN (refused), no port forward (black hole): only the relay gets through.
    let link = link_with(
        &minted,
        Endpoints {
            local: Some(refused_url()),
            public: Some(hole.url()),
            relay: Some(relay_ep.clone()),
        },
    );
    let run = run_join(&["--once", "--json", "--name", "Via Relay", &link]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.events(),
        vec!["trying", "failed", "trying", "trying", "connected"],
        "{}",
        run.dump()
    );
    assert_eq!(
        run.find("trying", Some("relay")).unwrap().1["url"],
        relay_ep.as_str()
    );
    let (_, connected) = run.find("connected", None).unwrap();
    assert_eq!(connected["path"], "relay");
    assert_eq!(connected["mesh_name"], minted.mesh_name.as_str());
    // The host sees a member that came in through the relay.
    let mesh = host.get_json("/api/mesh").await;
    let me = mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "Via Relay")
        .cloned();
    assert_eq!(
        me.map(|d| d["path"].clone()),
        Some(Value::from("relay")),
        "{mesh}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_without_its_host_is_a_failed_path_not_a_success() {
    // A relay whose host is not connected accepts the socket but can never produce
    // `joined`: the join must report that path failed (not connected) and exit 1.
    let relay = Relay::start(&[]).await;
    let host = Host::start().await;
    let minted = mint(&host).await;
    let mesh_id = &minted.mesh_id;
    let link = link_with(
        &minted,
        Endpoints {
            local: Some(refused_url()),
            public: None,
            relay: Some(format!("{}/mesh/{mesh_id}", relay.url())),
        },
    );
    let run = run_join(&["--once", "--json", &link]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(run.find("connected", None).is_none(), "{}", run.dump());
    let (_, failed) = run
        .find("failed", Some("relay"))
        .expect("relay reported failed");
    assert!(
        failed["reason"].as_str().unwrap().contains("host_offline"),
        "{}",
        run.dump()
    );
    assert_eq!(
        run.lines.last().unwrap().1["code"],
        "all_failed",
        "{}",
        run.dump()
    );
}

/// Waits up to 20 s for a `--json` line matching `what`; panics with what was seen.
fn wait_line(rx: &mpsc::Receiver<(Duration, String)>, what: &dyn Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((t, line)) => {
                let (_, v) = parse_line(t, &line);
                if what(&v) {
                    return v;
                }
                seen.push(v);
            }
            Err(_) => break,
        }
    }
    panic!("expected line never came; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staying_member_reconnects_with_its_credential_after_the_host_restarts() {
    let host = Host::start().await;
    // A single-use invite: the reconnection cannot be the token again, it must be the
    // device credential from the first join.
    let minted = host
        .mint(&TokenRequest {
            max_uses: Some(Some(1)),
            ..TokenRequest::unlimited()
        })
        .await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let (mut child, rx) = spawn_staying(&["--json", "--name", "Stayer", &link]);
    wait_line(&rx, &|v| v["event"] == "connected");

    let host = host.restart().await;
    let lost = wait_line(&rx, &|v| v["event"] == "disconnected");
    assert!(lost["reason"].is_string(), "{lost}");
    wait_line(&rx, &|v| {
        v["event"] == "reconnecting" && v["in_ms"].is_u64()
    });
    let again = wait_line(&rx, &|v| v["event"] == "connected" || v["event"] == "error");
    assert_eq!(again["event"], "connected", "{again}");
    assert_eq!(again["path"], "local");

    let mesh = host.get_json("/api/mesh").await;
    let devices = mesh["devices"].as_array().unwrap();
    assert_eq!(
        devices.len(),
        1,
        "reconnecting created a second device: {mesh}"
    );
    assert_eq!(devices[0]["online"], true, "{mesh}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The admin removes a device while `atmosphere join` (without --once) is in the mesh: the
/// member is told `device_removed`, exits 1 and does not try to reconnect (its key would be
/// refused anyway).
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_device_ends_the_staying_join_without_reconnecting() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let (mut child, rx) = spawn_staying(&["--json", "--name", "Lost phone", &link]);
    wait_line(&rx, &|v| v["event"] == "connected");
    let list = host.get_json("/api/mesh/devices").await;
    let id = list["devices"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_string();

    let removed_at = Instant::now();
    let r = host
        .admin(reqwest::Method::DELETE, &format!("/api/mesh/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let err = wait_line(&rx, &|v| v["event"] == "error");
    assert_eq!(err["code"], "device_removed", "{err}");
    // The host ends the session as part of the removal, not at the next keepalive.
    assert!(
        removed_at.elapsed() < Duration::from_secs(1),
        "the session ended {:?} after the removal",
        removed_at.elapsed()
    );
    // The run ends: stdout closes with nothing after the error (no disconnected /
    // reconnecting / trying lines), and the exit code is 1.
    let after: Vec<String> = rx.iter().map(|(_, l)| l).collect();
    assert!(after.is_empty(), "lines after device_removed: {after:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// Waits up to 20 s for a raw stdout line containing `needle`; panics with what was seen.
fn wait_raw(rx: &mpsc::Receiver<(Duration, String)>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, line)) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("expected a line with {needle:?}; saw {seen:?}");
}

/// A member whose message carries terminal escape sequences (clear the screen, colour, a C1
/// control, DEL) cannot reach another member's terminal with them: the readable output shows
/// them escaped, and `--json` carries them JSON-escaped, exactly as sent. (Names cannot carry
/// them: `join` refuses such a `--name` and the host drops control characters from names;
/// the readable output escapes names too, see the unit tests of `join::output`.)
#[tokio::test(flavor = "multi_thread")]
async fn another_members_escape_sequences_never_reach_the_terminal() {
    const EVIL_BODY: &str = "hi\x1b[2J\x1b]0;pwned\x07\u{9b}31mthere\x7f";
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let spawn = |args: &[&str]| {
        let t0 = Instant::now();
        let mut all = args.to_vec();
        all.push(&link);
        let mut child = join_command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = stamp_lines(&mut child, t0);
        (child, rx)
    };
    let (mut alice, alice_rx) = spawn(&["--name", "Alice"]);
    wait_raw(&alice_rx, "to send it to everyone");
    let (mut carol, carol_rx) = spawn(&["--json", "--name", "Carol"]);
    wait_line(&carol_rx, &|v| v["event"] == "connected");
    let (mut mal, mal_rx) = spawn(&["--json", "--name", "Mallory"]);
    wait_line(&mal_rx, &|v| v["event"] == "connected");
    mal.stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{EVIL_BODY}\n").as_bytes())
        .unwrap();

    let mut seen = wait_raw(&alice_rx, "there");
    let controls = |s: &str| s.chars().any(|c| c.is_control());
    assert!(
        !seen.iter().any(|l| controls(l)),
        "a control character reached the readable output: {seen:?}"
    );
    let said = seen.pop().unwrap();
    assert_eq!(
        said,
        "Mallory: hi\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{9b}31mthere\\u{7f}"
    );

    // --json: no raw control character either (JSON escapes them, DEL and C1 included),
    // and the lines decode to exactly what was sent.
    let lines = wait_raw(&carol_rx, "\"event\":\"message\"");
    assert!(
        !lines.iter().any(|l| controls(l)),
        "a control character reached the --json output: {lines:?}"
    );
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let joined = events.iter().find(|v| v["event"] == "peer_joined").unwrap();
    assert_eq!(joined["peer"]["name"], "Mallory");
    assert_eq!(events.last().unwrap()["body"], EVIL_BODY);
    for child in [&mut alice, &mut carol, &mut mal] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A staying `join --device-file` has written the credential by the time it prints
/// `connected`: a script that reads that line and stops the process keeps the device.
#[tokio::test(flavor = "multi_thread")]
async fn the_device_file_is_written_before_connected_is_printed() {
    let host = Host::start().await;
    let minted = mint(&host).await;
    let link = link_with(&minted, only_local(host.ws_url()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    let (mut child, rx) = spawn_staying(&[
        "--json",
        "--name",
        "Scripted",
        "--device-file",
        file.to_str().unwrap(),
        &link,
    ]);
    wait_line(&rx, &|v| v["event"] == "connected");
    let stored = std::fs::read_to_string(&file)
        .expect("the device file exists as soon as `connected` is printed");
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["device_secret"].is_string(), "{stored}");
    let _ = child.kill();
    let _ = child.wait();
}
