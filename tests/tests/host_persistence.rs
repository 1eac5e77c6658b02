//! Restart persistence with the real SQLite file: the mesh id, the admin secret, outstanding
//! invites (and their use counts) and member devices survive `atmosphere serve` restarting.

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::Host;
use host_support::{joined_ids, Member};

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
    let (id, key) = joined_ids(&j);
    let key = key.unwrap();
    let (m2, j2) = Member::join_token(&host.ws_url(), &single.token, "Tablet").await;
    joined_ids(&j2);
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
    let (_m, j) = Member::rejoin(&host.ws_url(), &id, &key).await;
    let (id2, key2) = joined_ids(&j);
    assert_eq!(id2, id);
    assert!(key2.is_none());
    assert_eq!(j["mesh_id"], mesh_id.as_str());

    // The invite minted before the restart still works …
    let (_n, j) = Member::join_token(&host.ws_url(), &unused.token, "Phone").await;
    joined_ids(&j);
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
