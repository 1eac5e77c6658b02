//! `atmosphere token`: mints an invite through the running host (`POST /api/mesh/token`
//! with the admin secret read from the data dir) and shows it: a readable summary with a
//! terminal QR code of `join_url` (what a phone camera opens), or the raw API answer with
//! `--json`.

use crate::data_dir;
use atmosphere_shared::api::{ApiError, TokenRequest, TokenResponse};
use atmosphere_shared::path::PathKind;
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `atmosphere token` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data dir of the running host (where its admin_secret lives) [default: the user's
    /// data directory, as for `serve`].
    #[arg(long, env = "ATMOSPHERE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URL of the running host.
    #[arg(
        long,
        value_name = "URL",
        env = "ATMOSPHERE_SERVER",
        default_value = "http://127.0.0.1:11451"
    )]
    pub server: String,

    /// How long the invite stays valid (e.g. 30m, 24h, 7d; at most 30 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// How many devices may join with it [default: unlimited].
    #[arg(long, value_name = "N")]
    pub uses: Option<u32>,

    /// A note shown in the host's invite list.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// Print the API answer as JSON instead of the summary and QR code.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; exit 0 on success, 1 on failure.
pub async fn run(args: Args) -> ExitCode {
    match mint(&args).await {
        Ok((resp, raw)) => {
            if args.json {
                println!("{raw}");
            } else {
                print!("{}", summary(&resp));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn mint(args: &Args) -> anyhow::Result<(TokenResponse, String)> {
    let dir = data_dir::resolve(args.data_dir.as_deref())?;
    let secret_path = data_dir::admin_secret_path(&dir);
    let secret = std::fs::read_to_string(&secret_path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the admin secret {}: {e}. Start the host first (`atmosphere serve`), \
                 or pass the --data-dir it uses.",
                secret_path.display()
            )
        })?
        .trim()
        .to_string();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", secret_path.display());

    let base = url::Url::parse(&args.server)
        .map_err(|e| anyhow::anyhow!("--server {:?} is not a URL: {e}", args.server))?;
    anyhow::ensure!(
        base.scheme() == "http",
        "--server must be an http:// URL of the host (this command talks to a host it can reach directly)"
    );
    let url = base.join("/api/mesh/token")?;
    let req = TokenRequest {
        ttl_secs: Some(args.ttl.as_secs().max(1)),
        max_uses: args.uses,
        label: args.label.clone(),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .build()?;
    let resp = client
        .post(url.clone())
        .bearer_auth(&secret)
        .json(&req)
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow::anyhow!(
                    "no host answers at {}: is `atmosphere serve` running there? ({e})",
                    args.server
                )
            } else {
                anyhow::anyhow!("request to {url} failed: {e}")
            }
        })?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let detail = serde_json::from_str::<ApiError>(&text)
            .map(|e| format!("{}: {}", e.error, e.message))
            .unwrap_or_else(|_| text.chars().take(300).collect());
        if status == reqwest::StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "the host refused the admin secret from {} ({detail}); is --data-dir the one the host uses?",
                secret_path.display()
            );
        }
        anyhow::bail!("the host answered {status}: {detail}");
    }
    let parsed: TokenResponse = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("unexpected answer from the host: {e}"))?;
    Ok((parsed, text))
}

/// The readable summary with the QR code.
fn summary(r: &TokenResponse) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "Mesh:     {} ({})", r.mesh_name, r.mesh_id);
    let _ = writeln!(s, "Token:    {}", r.token);
    let uses = r
        .max_uses
        .map(|n| n.to_string())
        .unwrap_or_else(|| "unlimited".into());
    let _ = writeln!(s, "Expires:  {}   uses: {uses}", r.expires_at);
    let _ = writeln!(s, "Endpoints:");
    for p in PathKind::ALL {
        let _ = writeln!(
            s,
            "  {:<7} {}",
            p.as_str(),
            r.endpoints.get(p).unwrap_or("not available")
        );
    }
    if let Some(ip) = &r.network_info.public_ip {
        let src = r.network_info.stun_source.as_deref().unwrap_or("?");
        let _ = writeln!(
            s,
            "Public IP: {ip} (via {src}; the public path needs a port forward)"
        );
    }
    let _ = writeln!(s, "Join link: {}", r.join_url);
    let _ = writeln!(s, "App link:  {}", r.qr_data);
    match QrCode::new(r.join_url.as_bytes()) {
        Ok(code) => {
            // Inverted colours: most terminals are dark, and scanners need dark modules on light.
            let qr = code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            let _ = writeln!(s, "\nScan with a phone camera to join:\n{qr}");
        }
        Err(e) => {
            let _ = writeln!(s, "(the join link is too long for a QR code: {e})");
        }
    }
    s
}
