//! Browser-test support: a real headless Chromium driven over WebDriver (the system
//! `chromedriver`, via `fantoccini`), the built web bundle, screenshots and QR decoding.
//!
//! Nothing is downloaded: the browser is `/usr/bin/chromium` (or `$ATMOSPHERE_CHROMIUM`),
//! the driver `/usr/bin/chromedriver` (or `$ATMOSPHERE_CHROMEDRIVER`). Chromium runs with
//! the flags that keep it off the network (no background networking, component updates,
//! sync or QUIC) and a fresh profile directory per browser.

use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The built web UI (`trunk build --release` output): `$ATMOSPHERE_WEB_DIST`, else
/// `<repo>/dist`. Panics with the command to run when it is missing.
pub fn web_dist() -> PathBuf {
    let dir = std::env::var_os("ATMOSPHERE_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist"));
    assert!(
        dir.join("index.html").is_file(),
        "the web bundle is missing: {} has no index.html.\n\
         Build it first: `trunk build --release` at the repository root (or set ATMOSPHERE_WEB_DIST).",
        dir.display()
    );
    dir
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/browser-screenshots/<test>/` (created; not committed).
pub fn screenshot_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("browser-screenshots").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium_bin() -> String {
    std::env::var("ATMOSPHERE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// The chromedriver binary (`$ATMOSPHERE_CHROMEDRIVER`, else `/usr/bin/chromedriver`).
pub fn chromedriver_bin() -> String {
    std::env::var("ATMOSPHERE_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

/// chromedriver's flags: listen on `port`, accept only local clients.
pub fn driver_args(port: u16) -> Vec<String> {
    vec![format!("--port={port}"), "--allowed-ips=127.0.0.1".into()]
}

/// Panics with the install command when Chromium or chromedriver is missing.
pub fn check_installed() {
    for bin in [chromium_bin(), chromedriver_bin()] {
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: install it with `apt-get install -y chromium chromium-driver` \
             (or set ATMOSPHERE_CHROMIUM / ATMOSPHERE_CHROMEDRIVER)"
        );
    }
}

/// The screen a browser emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// 1280×1000 desktop window.
    Desktop,
    /// A 390×844 phone (touch, Android user agent, device pixel ratio 2).
    Phone,
}

/// One headless Chromium with its own chromedriver and profile; both end on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a Chromium session on `screen`;
    /// screenshots go to [`screenshot_dir`]`(test)`.
    pub async fn start(test: &str, screen: Screen) -> Browser {
        check_installed();
        let port = crate::free_dual_stack_port();
        let shots = screenshot_dir(test);
        let log = std::fs::File::create(shots.join(format!("chromedriver-{port}.log"))).unwrap();
        let mut cmd = Command::new(chromedriver_bin());
        cmd.args(driver_args(port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let driver = cmd.spawn().expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            crate::wait_http_ok(&format!("{url}/status"), Duration::from_secs(20)).await,
            "chromedriver did not come up on {url}"
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        // Outside a namespace a page must never run WebRTC. Three guards: hosts in these
        // tests have no UDP port, so `joined.direct` is false and the page never creates a
        // peer connection; this Chromium may not use UDP for WebRTC at all; and it never
        // registers or announces mDNS names for local addresses. Every Chromium that may
        // open a peer connection runs inside a namespace (`Topology::browser`).
        let no_udp = [
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp".to_string(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".to_string(),
        ];
        Browser::open(test, screen, driver, &url, connector, &no_udp).await
    }

    /// Opens a Chromium session through the chromedriver `driver` already listening at
    /// `url`, reached with `connector` (e.g. one that dials inside a network namespace),
    /// with `extra_args` after the flags that keep Chromium off the network.
    pub async fn open<C>(
        test: &str,
        screen: Screen,
        driver: Child,
        url: &str,
        connector: C,
        extra_args: &[String],
    ) -> Browser
    where
        C: hyper_util::client::legacy::connect::Connect + Send + Sync + Clone + Unpin + 'static,
    {
        let shots = screenshot_dir(test);
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra_args.iter().cloned());
        let mut opts = serde_json::json!({ "binary": chromium_bin() });
        match screen {
            Screen::Desktop => args.push("--window-size=1280,1000".into()),
            Screen::Phone => {
                args.push("--window-size=390,844".into());
                opts["mobileEmulation"] = serde_json::json!({
                    "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0, "touch": true, "mobile": true },
                    "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36"
                });
            }
        }
        opts["args"] = serde_json::json!(args);
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert("goog:chromeOptions".into(), opts);
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a Chromium session through {url}: {e}"));
        Browser {
            client,
            driver,
            _profile: profile,
            shots,
        }
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Saves a screenshot of the viewport as `<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Saves a screenshot of the first element matching `css` as `<name>.png`.
    pub async fn element_screenshot(&self, css: &str, name: &str) -> PathBuf {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        let png = el.screenshot().await.expect("element screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Text of the first element matching `css`, or `None` when there is none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let el = self.client.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok()
    }

    /// Texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
        {
            out.push(el.text().await.unwrap_or_default());
        }
        out
    }

    /// The whole page's visible text.
    pub async fn body_text(&self) -> String {
        self.text("body").await.unwrap_or_default()
    }

    /// Polls until the text of `css` satisfies `pred`; returns it. On timeout saves a
    /// screenshot `<name>-timeout.png` and panics with what the page showed.
    pub async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            if let Some(t) = self.text(css).await {
                if pred(&t) {
                    return t;
                }
            }
            if start.elapsed() > within {
                let shot = self
                    .screenshot(&format!(
                        "timeout-{}",
                        css.replace(|c: char| !c.is_alphanumeric(), "_")
                    ))
                    .await;
                panic!(
                    "`{css}` did not reach the expected text within {within:?}; it shows {:?}.\nPage text:\n{}\nScreenshot: {}",
                    self.text(css).await,
                    self.body_text().await,
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the first element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Runs JavaScript in the page and returns its JSON result.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("js {script}: {e}"))
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Decodes every QR code in a PNG with `zbarimg`; returns the decoded texts.
pub fn zbar_decode(png: &Path) -> Vec<String> {
    let out = Command::new("zbarimg")
        .args(["--quiet", "--raw", "-Sdisable", "-Sqrcode.enable"])
        .arg(png)
        .output()
        .expect("run zbarimg (apt-get install -y zbar-tools)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (and holds them
/// open without answering): proof that a path was, or was not, tried.
pub struct CountingListener {
    addr: std::net::SocketAddr,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    /// Starts the listener (needs a tokio runtime).
    pub async fn start() -> CountingListener {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        CountingListener {
            addr,
            count,
            _task: task,
        }
    }

    /// `ws://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}
