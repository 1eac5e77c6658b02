//! Restart persistence with the real SQLite file: the mesh id, the admin secret, outstanding
//! invites (and their use counts) and member devices survive `atmosphere serve` restarting.

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::Host;
use host_support::{joined_id, Member};

#[tokio::test]
async fn mesh_invites_and_devices_survive_a_restart() {
    let host = Host::start().await;
    let secret = host.admin_secret();
    let before = host.get_json("/health").await;
    let mesh_id = before["mesh_id"].as_str().unwrap().to_string();

    // A device joins before the restart; one invite stays unused; one is used up.
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let unused = host
        .mint(&TokenRequest {
            ttl_secs: Some(3600),
            max_uses: Some(Some(1)),
            label: Some("later".into()),
        })
        .await;
    let single = host
        .mint(&TokenRequest {
            ttl_secs: None,
            max_uses: Some(Some(1)),
            label: None,
        })
        .await;
    let (m, j) = Member::join_token(&host.ws_url(), &inv.token, "Laptop").await;
    let id = joined_id(&j);
    let key = m.key();
    let (m2, j2) = Member::join_token(&host.ws_url(), &single.token, "Tablet").await;
    joined_id(&j2);
    drop((m, m2));

    let host = host.restart().await;
    assert_eq!(
        host.admin_secret(),
        secret,
        "the admin secret must not change"
    );
    let after = host.get_json("/health").await;
    assert_eq!(
        after["mesh_id"],
        mesh_id.as_str(),
        "the mesh id must survive a restart"
    );

    // The device rejoins with its credential.
    let (m_again, j) = Member::rejoin(&host.ws_url(), &id, &key).await;
    assert_eq!(joined_id(&j), id);
    assert_eq!(m_again.key(), key);
    assert_eq!(j["mesh_id"], mesh_id.as_str());

    // The invite minted before the restart still works …
    let (_n, j) = Member::join_token(&host.ws_url(), &unused.token, "Phone").await;
    joined_id(&j);
    // … and the used-up one stays used up.
    let (mut x, first) = Member::join_token(&host.ws_url(), &single.token, "Again").await;
    assert_eq!(first["code"], "token_exhausted", "{first}");
    x.expect_closed(host_support::FRAME_WAIT).await;

    let mesh = host.get_json("/api/mesh").await;
    let names: Vec<&str> = mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{mesh}");
    for n in ["Laptop", "Tablet", "Phone"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let later = mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == "later")
        .unwrap();
    assert_eq!(later["uses"], 1);

    // The database and WAL files are private (they hold the mesh key).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(host.data_dir.join("atmosphere.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "database mode {mode:o}");
    }
}

#[tokio::test]
async fn mesh_name_flag_names_the_mesh() {
    let host = Host::start_with(&["--mesh-name", "Cabin"], &[]).await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    assert_eq!(inv.mesh_name, "Cabin");
    let (_m, j) = Member::join_token(&host.ws_url(), &inv.token, "x").await;
    assert_eq!(j["mesh_name"], "Cabin");
}

/// Runs `atmosphere serve` on `data_dir`, which must refuse to start: its exit code (`None`
/// if it was still running after 20 s) and output.
#[cfg(unix)]
fn serve_refused(data_dir: &std::path::Path) -> (Option<i32>, String) {
    let log = data_dir.with_extension("refused.log");
    let mut p = atmosphere_tests::Proc::spawn(
        &[
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            &atmosphere_tests::free_port().to_string(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
        log,
    );
    let t0 = std::time::Instant::now();
    let code = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            p.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (code, p.output())
}

#[cfg(unix)]
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The data dir holds the mesh's private key and the admin secret: a host refuses to start
/// on one that other users can write to (or on such a secret or database file), naming the
/// path and the fix, and starts once it is private again.
#[cfg(unix)]
#[tokio::test]
async fn a_data_dir_others_can_write_is_refused_until_it_is_private() {
    let host = Host::start().await;
    let dir = host.data_dir.clone();
    let mut host = host;
    host.proc.kill();

    chmod(&dir, 0o777);
    let (code, text) = serve_refused(&dir);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(
        text.contains(&format!("chmod 700 {}", dir.display())),
        "{text}"
    );

    chmod(&dir, 0o700);
    let secret = dir.join("admin_secret");
    chmod(&secret, 0o666);
    let (code, text) = serve_refused(&dir);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", secret.display())),
        "{text}"
    );

    chmod(&secret, 0o600);
    let db = dir.join("atmosphere.db");
    chmod(&db, 0o620);
    let (code, text) = serve_refused(&dir);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", db.display())),
        "{text}"
    );

    // Private again: the same host starts on it.
    chmod(&db, 0o600);
    let host = host.restart().await;
    let mesh = host.get_json("/api/mesh").await;
    assert!(mesh["mesh_id"].is_string(), "{mesh}");
}
