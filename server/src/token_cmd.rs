//! `atmosphere token`: mints an invite through the running host (`POST /api/mesh/token`
//! with the admin secret read from the data dir, through [`crate::admin_client`]) and shows it: a readable summary with a
//! terminal QR code of `join_url` (what a phone camera opens), or the raw API answer with
//! `--json`.

use crate::admin_client::{parse_answer, AdminClient, AdminError, HostArgs};
use atmosphere_shared::api::{TokenRequest, TokenResponse};
use atmosphere_shared::path::PathKind;
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use std::process::ExitCode;
use std::time::Duration;

/// `atmosphere token` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Safe by default: an invite lets ONE device join and expires after ONE hour. Ask for more \
with --uses N (or --uses unlimited) and --ttl (e.g. 24h, 7d).

Exit codes: 0 minted; 1 the host refused or is unreachable (no admin secret, not running); \
2 usage.")]
pub struct Args {
    #[command(flatten)]
    pub host: HostArgs,

    /// How long the invite stays valid (e.g. 30m, 24h, 7d; at most 30 days).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// How many devices may join with it: a number, or `unlimited`.
    #[arg(long, value_name = "N|unlimited", default_value = "1", value_parser = parse_uses)]
    pub uses: Uses,

    /// A note shown in the host's invite list.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// Print the API answer as JSON instead of the summary and QR code.
    #[arg(long)]
    pub json: bool,
}

/// `--uses`: how many devices an invite admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses(pub Option<u32>);

fn parse_uses(s: &str) -> Result<Uses, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(Uses(None));
    }
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1 (or `unlimited`)".into()),
        Ok(n) => Ok(Uses(Some(n))),
        Err(_) => Err(format!("{s:?} is neither a number nor `unlimited`")),
    }
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
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn mint(args: &Args) -> Result<(TokenResponse, String), AdminError> {
    let client = AdminClient::new(&args.host)?;
    let req = TokenRequest {
        ttl_secs: Some(args.ttl.as_secs().max(1)),
        max_uses: Some(args.uses.0),
        label: args.label.clone(),
    };
    let text = client
        .request(reqwest::Method::POST, "/api/mesh/token", Some(&req))
        .await?;
    Ok((parse_answer(&text)?, text))
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
    for p in PathKind::ENDPOINTS {
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
    if let Some(lan) = r.lan_join_url.as_ref().filter(|l| **l != r.join_url) {
        let _ = writeln!(s, "LAN link:  {lan} (same Wi-Fi only)");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_is_a_number_or_unlimited() {
        assert_eq!(parse_uses("5"), Ok(Uses(Some(5))));
        assert_eq!(parse_uses("unlimited"), Ok(Uses(None)));
        assert!(parse_uses("0").is_err());
        assert!(parse_uses("many").is_err());
    }
}
