//! Top-level command line: one subcommand per module.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Atmosphere: join a phone to your home mesh over the LAN, the internet or a relay.
#[derive(Debug, Parser)]
#[command(name = "atmosphere", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: web UI, invite API, mesh WebSocket, network discovery.
    Serve(crate::serve::Args),
    /// Run a relay server that hosts and members behind NAT both dial out to.
    Relay(crate::relay::Args),
    /// Mint an invite through the running host and show it (QR in the terminal).
    Token(crate::token_cmd::Args),
    /// List the mesh's member devices, or remove one (through the running host).
    Devices(crate::devices_cmd::Args),
    /// Join a mesh from the terminal, racing the invite's endpoints.
    Join(crate::join::Args),
    /// Work with invite links.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Report local IPs, public IP per STUN server, NAT behaviour and relay reachability.
    Netcheck(crate::netcheck::Args),
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Decode a v1, v2 or web invite link and print it normalised.
    Inspect(crate::inspect::Args),
}

impl Cli {
    /// Runs the chosen subcommand and returns the process exit code.
    pub async fn run(self) -> ExitCode {
        match self.command {
            Command::Serve(a) => crate::serve::run(a).await,
            Command::Relay(a) => crate::relay::run(a).await,
            Command::Token(a) => crate::token_cmd::run(a).await,
            Command::Devices(a) => crate::devices_cmd::run(a).await,
            Command::Join(a) => crate::join::run(a).await,
            Command::Invite(InviteCommand::Inspect(a)) => crate::inspect::run(a),
            Command::Netcheck(a) => crate::netcheck::run(a).await,
        }
    }
}

/// The longest any timeout or interval setting (`serve`'s `--*-timeout-ms` and
/// `--ping-interval-ms`, `relay`'s `--*-timeout`) may be: a day. Longer would mean "never",
/// which no deadline should, and a value near the top of `Duration` would overflow the
/// deadline's `Instant` arithmetic; larger values are refused when the command line is read
/// (exit 2, naming the flag).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// [`MAX_TIMEOUT`] in milliseconds, for the settings given in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = MAX_TIMEOUT.as_secs() * 1000;

/// Parses a human duration (`5s`, `2m`, `1day`) of at most [`MAX_TIMEOUT`].
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_TIMEOUT {
        return Err("must be at most 1day (24h)".into());
    }
    Ok(d)
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), coloured only when stderr is
/// a terminal: a log file or journal gets plain text, so the only escape sequences a reader
/// could meet there would be forged ones (and text other people chose is logged through
/// [`crate::printable`], which shows them escaped).
pub fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
