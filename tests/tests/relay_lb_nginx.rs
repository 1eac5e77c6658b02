//! Scale-out as documented: two `atmosphere relay` processes behind nginx running
//! `docs/relay/nginx-lb.conf` (only its ports rewritten), which hashes the mesh id in the
//! path. Every host and its members must meet on one instance, for meshes spread over both.
//! Needs `nginx` on PATH (`scripts/setup.sh --test` installs it).

mod relay_common;

use atmosphere_tests::{free_port, Relay};
use futures_util::SinkExt;
use relay_common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(port: u16, relays: [u16; 2]) -> Nginx {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let conf = std::fs::read_to_string(root.join("docs/relay/nginx-lb.conf")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // Only addresses and scratch paths change; the hashing and proxy settings are the
        // documented ones.
        let conf = conf
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
            .replace("server 127.0.0.1:8081;", &format!("server 127.0.0.1:{};", relays[0]))
            .replace("server 127.0.0.1:8082;", &format!("server 127.0.0.1:{};", relays[1]))
            .replace("worker_processes auto;", "worker_processes 1;")
            .replace(
                "http {",
                &format!(
                    "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
                ),
            );
        assert!(
            conf.contains(&format!("server 127.0.0.1:{};", relays[1])),
            "config template changed:\n{conf}"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &d.to_string(),
                "-c",
                path.to_str().unwrap(),
                "-e",
                &format!("{d}/error.log"),
            ])
            .args(["-g", &format!("daemon off; pid {d}/nginx.pid;")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nginx is installed (scripts/setup.sh --test)");
        Nginx { child, dir }
    }

    fn log(&self) -> String {
        let e = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        let s = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{s}\n{e}")
    }
}

#[tokio::test]
async fn hosts_and_members_meet_through_nginx_hashing_the_mesh_id() {
    let a = Relay::start(&["--real-ip-header", "X-Forwarded-For"]).await;
    let b = Relay::start(&["--real-ip-header", "X-Forwarded-For"]).await;
    let port = free_port();
    let nginx = Nginx::start(port, [a.port, b.port]);
    let ok = atmosphere_tests::wait_http_ok(
        &format!("http://127.0.0.1:{port}/health"),
        Duration::from_secs(10),
    )
    .await;
    assert!(ok, "nginx did not come up:\n{}", nginx.log());
    let front = format!("ws://127.0.0.1:{port}");

    // Add hosts until both instances hold at least one mesh (hashing spreads them).
    let mut hosts = Vec::new();
    loop {
        hosts.push(TestHost::start(&front).await);
        let (ma, mb) = (
            a.health().await["meshes"].as_u64().unwrap(),
            b.health().await["meshes"].as_u64().unwrap(),
        );
        assert_eq!(ma + mb, hosts.len() as u64);
        if ma > 0 && mb > 0 {
            break;
        }
        assert!(hosts.len() < 40, "all meshes hashed to one instance");
    }
    // Every member, through the same front door, reaches its own host.
    for (i, host) in hosts.iter_mut().enumerate() {
        let mut member = connect(&host.member_url()).await;
        member
            .send(Message::text(format!("to host {i}")))
            .await
            .unwrap();
        let mut h = host.next_session().await;
        assert_eq!(
            next_data(&mut h).await,
            Message::text(format!("to host {i}"))
        );
        h.send(Message::text(format!("from host {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut member).await,
            Message::text(format!("from host {i}"))
        );
    }
}
