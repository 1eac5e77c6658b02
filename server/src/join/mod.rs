//! `atmosphere join LINK`: the native shell around the shared racing policy
//! ([`atmosphere_shared::racing`]).
//!
//! The policy (which path to try when, deadlines, who wins, when to give up) lives in the
//! sans-IO [`Race`](atmosphere_shared::racing::Race), what a join proves and to whom in
//! [`JoinPlan`] (the handshake itself in [`atmosphere_shared::handshake`]), every `--json`
//! line in [`JoinEvent`](atmosphere_shared::join_event::JoinEvent) and the retry delays in
//! [`Backoff`](atmosphere_shared::backoff::Backoff); this module only does I/O. Its files,
//! one role each:
//!
//! - this file: the flags and [`run`], which checks them and calls the steps below;
//! - `race`: drives the shared race with real sockets, and re-runs it after a lost session;
//! - `attempt`: one attempt's socket: connect, the handshake (the host proves the mesh
//!   before the credential leaves), wait for the host's verdict;
//! - `secure_socket`: a socket with its secure channel, whole messages in and out;
//! - `live_session`: the session after the race is won (presence, messages, stdin);
//! - `stdin`: lines typed on stdin, one message each;
//! - `output`: everything printed, as JSON lines or as a readable log;
//! - `device_file`: the credential file of `--device-file`.
//!
//! After the race is won the command either leaves (`--once`) or stays in the mesh: it
//! prints presence and messages and sends each line typed on stdin as a broadcast.
//!
//! Exit codes: 0 connected (and, without `--once`, left with Ctrl-C), 1 all paths failed,
//! the host refused the credential, the host removed this device during the session
//! (`device_removed`, never retried), or (with `--no-reconnect`) the session was lost,
//! 2 bad link or usage. Without `--once` a lost session is re-established with the
//! device credential, with capped, jittered backoff.
//!
//! A credential (the device file, or the one a first join made in memory) is pinned to the
//! mesh id its host proved: a rejoin only sends it to a host that proves the same mesh. The
//! device file is never deleted or invalidated by the command, whatever an endpoint answers.

mod attempt;
mod device_file;
mod live_session;
mod output;
mod race;
mod secure_socket;
mod stdin;

use crate::rtc::RtcConfig;
use crate::secret::random_bytes;
use crate::session_paths::{ClientDirect, SessionPaths};
use atmosphere_shared::credential::{DeviceCredential, JoinPlan};
use atmosphere_shared::handshake::{HostIdentity, StaticSecret};
use atmosphere_shared::join_event::ClientErrorCode;
use atmosphere_shared::racing::{Policy, DEFAULT_ATTEMPT_TIMEOUT_MS, DEFAULT_STAGGER_MS};
use atmosphere_shared::upgrade::Policy as UpgradePolicy;
use atmosphere_shared::wire::{DeviceInfo, Joined};
use atmosphere_shared::Invite;
use attempt::Won;
use live_session::SessionEnd;
use output::Printer;
use std::path::PathBuf;
use std::process::ExitCode;

/// Longest device name we send (the host shows it in lists; a name is not an essay).
const MAX_NAME_CHARS: usize = 64;

/// `atmosphere join` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 connected; 1 every path failed, the host refused the token/device \
(invalid_token, token_expired, token_exhausted, token_revoked, unknown_device), the host \
removed this device during the session (device_removed; no reconnection) or, with \
--no-reconnect, the session was lost; 2 bad link or usage.

With --json, stdout carries one JSON object per line:
  {\"event\":\"trying\",\"path\":\"local\",\"url\":\"ws://…\"}
  {\"event\":\"failed\",\"path\":\"local\",\"reason\":\"connection refused\"}
  {\"event\":\"connected\",\"path\":\"public\",\"mesh_name\":\"Home\",\"elapsed_ms\":262}
  {\"event\":\"error\",\"code\":\"token_expired\",\"message\":\"…\"}
Without --once, presence and messages follow (peers, peer_joined, peer_left, message); a \
lost session prints {\"event\":\"disconnected\",\"reason\":…} and \
{\"event\":\"reconnecting\",\"in_ms\":1000}, then the new trying/connected lines.

A session that joined over the relay then tries a direct WebRTC path to the host (unless \
--no-direct) and prints each step:
  {\"event\":\"path\",\"from\":\"relay\",\"to\":\"punched\",\"after_ms\":420}
  {\"event\":\"direct_unavailable\",\"reason\":\"…; staying on the relay\",\"retry_in_ms\":2000}
  {\"event\":\"path\",\"from\":\"punched\",\"to\":\"relay\",\"after_ms\":9000,\"reason\":\"…\"}")]
pub struct Args {
    /// The invite: `atmosphere://join?token=…&mesh=…&endpoints=…` (v2), the legacy
    /// `…&endpoint=ws://…` (v1), or the web form `http(s)://HOST/join#…`.
    pub link: String,

    /// Print one JSON object per line (trying / failed / connected / error, then, without
    /// --once, peers / peer_joined / peer_left / message) instead of a readable log.
    #[arg(long)]
    pub json: bool,

    /// Leave right after connecting (exit 0). Without it, stay in the mesh: print presence
    /// and messages, and send each line typed on stdin to every member.
    #[arg(long)]
    pub once: bool,

    /// Device name other members see (at most 64 characters). Default: this machine's
    /// host name.
    #[arg(long, env = "ATMOSPHERE_DEVICE_NAME")]
    pub name: Option<String>,

    /// Platform reported to the host with the device name.
    #[arg(long, default_value = "cli")]
    pub platform: String,

    /// Try one path at a time, the next only after the previous failed or timed out (the
    /// sequential policy), instead of racing them with a stagger.
    #[arg(long)]
    pub sequential: bool,

    /// Milliseconds after one path starts before the next one starts too, if the first has
    /// not answered (0 = all at once; ignored with --sequential).
    #[arg(long, default_value_t = DEFAULT_STAGGER_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub stagger_ms: u64,

    /// Deadline of one attempt in milliseconds: connect, WebSocket handshake and the host's
    /// `joined`.
    #[arg(long, default_value_t = DEFAULT_ATTEMPT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub attempt_timeout_ms: u64,

    /// File holding this device's credential for this mesh. If it exists, rejoin with it
    /// instead of the invite's token (only a host that proves the mesh the file is pinned
    /// to gets it); after a first join with the token, this device's new credential (its
    /// id and secret key, and the mesh id the host proved) is written there (mode 0600). A
    /// file of an earlier version (with a `device_key`) still rejoins and is rewritten in
    /// the new form. Without this flag nothing is stored.
    #[arg(long, env = "ATMOSPHERE_DEVICE_FILE")]
    pub device_file: Option<PathBuf>,

    /// Without --once, exit 1 when the connection to the host is lost instead of
    /// reconnecting. By default the session is re-established with this device's credential
    /// over whichever path works then, retrying with capped backoff (1 s doubling to 30 s,
    /// each wait randomly shortened by up to half) until Ctrl-C or a final refusal (e.g.
    /// the host removed the device).
    #[arg(long)]
    pub no_reconnect: bool,

    /// Stay on the path that joined: do not try a direct WebRTC path when the session
    /// joined over the relay.
    #[arg(long)]
    pub no_direct: bool,

    /// IP offered to the host as this device's ICE host candidate for the direct path
    /// (repeatable; comma-separated in the environment) [default: every LAN address]. The
    /// STUN-reflexive address (from the host's STUN servers) is offered as well.
    #[arg(
        long,
        value_name = "IP",
        env = "ATMOSPHERE_UDP_CANDIDATE_IP",
        value_delimiter = ','
    )]
    pub udp_candidate_ip: Vec<std::net::IpAddr>,
}

/// Runs `atmosphere join` and returns the exit code (see the module docs).
pub async fn run(args: Args) -> ExitCode {
    let out = Printer::new(args.json);
    let (invite, stored, plan) = match prepare(&args, &out) {
        Ok(ready) => ready,
        Err((code, message)) => {
            out.error(code, &message);
            return ExitCode::from(2);
        }
    };
    let policy = policy(&args);

    // The credential is on disk before `connected` is printed: a first join's new one, a
    // record of an earlier version in the new form, or a renamed mesh's.
    let keep_credential = |won: &Won| {
        let Some(path) = &args.device_file else {
            return;
        };
        let kept = kept_credential(&plan, &won.host, &won.joined, stored.as_ref());
        if stored.as_ref() != Some(&kept) {
            save_device_file(path, &kept, &out);
        }
    };
    let Ok(won) = race::race(&invite, policy, &plan, &out, &keep_credential).await else {
        return ExitCode::from(1);
    };
    if args.once {
        won.socket.close().await;
        return ExitCode::SUCCESS;
    }
    // Reconnections rejoin as this device, pinned to the mesh its host just proved (never
    // spend another invite use). The credential was just made with a device secret, so
    // the plan cannot fail.
    let rejoin = (!args.no_reconnect)
        .then(|| {
            JoinPlan::rejoin(
                &kept_credential(&plan, &won.host, &won.joined, stored.as_ref()),
                random_bytes(),
            )
            .ok()
        })
        .flatten();
    let direct = (!args.no_direct).then(|| direct_config(&args.udp_candidate_ip));
    stay(&invite, policy, rejoin, won, direct, &out).await
}

/// The direct path's UDP socket: bound on the first `--udp-candidate-ip` (so loopback
/// stays loopback) with exactly those candidates, else on every address.
fn direct_config(candidate_ips: &[std::net::IpAddr]) -> RtcConfig {
    let Some(first) = candidate_ips.first() else {
        return RtcConfig::bound(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
    };
    let mut config = RtcConfig::bound(*first, 0);
    config.candidate_ips = candidate_ips.to_vec();
    config
}

/// The direct-path side of a session that just joined: `None` with `--no-direct` or when
/// the host answers no offers.
fn session_paths(direct: Option<&RtcConfig>, won: &Won) -> Option<SessionPaths> {
    if !won.joined.direct {
        return None;
    }
    let config = direct?.clone();
    let mut paths = SessionPaths::client(
        ClientDirect {
            config,
            stun_servers: won.joined.stun_servers.clone(),
        },
        UpgradePolicy::default(),
    );
    paths.joined(won.path);
    Some(paths)
}

/// Checks the link, the device name and the device file; returns the invite, the stored
/// credential and the plan to join with, or the `bad_link` / `bad_usage` error to leave
/// with (exit 2).
fn prepare(
    args: &Args,
    out: &Printer,
) -> Result<(Invite, Option<DeviceCredential>, JoinPlan), (ClientErrorCode, String)> {
    let invite = Invite::parse(&args.link).map_err(|e| {
        (
            ClientErrorCode::BadLink,
            format!("not a valid invite link: {e}"),
        )
    })?;
    if invite.endpoints.iter().next().is_none() {
        return Err((
            ClientErrorCode::BadLink,
            "the invite lists no endpoint to connect to".into(),
        ));
    }
    let name = device_name(args.name.as_deref()).map_err(|e| (ClientErrorCode::BadUsage, e))?;
    let stored = match &args.device_file {
        Some(p) => device_file::load(p)
            .map_err(|e| (ClientErrorCode::BadUsage, e))?
            .map(|c| (p, c)),
        None => None,
    };
    let plan = match &stored {
        Some((path, c)) => {
            // A record of an earlier version takes these fresh bytes as its device key.
            let plan = JoinPlan::rejoin(c, random_bytes()).map_err(|e| {
                (
                    ClientErrorCode::BadUsage,
                    format!("the device file {} cannot be used: {e}", path.display()),
                )
            })?;
            out.info(&format!(
                "rejoining as device {} (credential from the device file)",
                c.device_id
            ));
            plan
        }
        None => JoinPlan::first_join(
            &invite,
            DeviceInfo {
                name,
                platform: args.platform.clone(),
            },
            StaticSecret::from_bytes(random_bytes()),
        ),
    };
    Ok((invite, stored.map(|(_, c)| c), plan))
}

/// What this device keeps after the host authenticated as `host` and answered `joined`:
/// pinned to the mesh the host proved, with the plan's device key, remembering the
/// endpoints the `stored` record had. Equal to `stored` when nothing changed (a rejoin with
/// a record of this version), so the file is only rewritten when it has to be.
fn kept_credential(
    plan: &JoinPlan,
    host: &HostIdentity,
    joined: &Joined,
    stored: Option<&DeviceCredential>,
) -> DeviceCredential {
    let mut kept = plan.credential(host, joined);
    if let Some(stored) = stored {
        kept.remember_endpoints_of(stored);
    }
    kept
}

fn policy(args: &Args) -> Policy {
    Policy {
        stagger_ms: args.stagger_ms,
        attempt_timeout_ms: args.attempt_timeout_ms,
        sequential: args.sequential,
        page_is_https: false,
    }
}

/// Writes the credential to `--device-file`. A failure is only a warning: the session is
/// fine, only the next run will need a fresh invite (or rejoin with the older record).
fn save_device_file(path: &std::path::Path, cred: &DeviceCredential, out: &Printer) {
    // A small synchronous write with fsync, on the race loop's worker: tell the runtime so
    // the attempt tasks keep running on the others.
    match tokio::task::block_in_place(|| device_file::save(path, cred)) {
        Ok(()) => out.info(&format!("device credential saved to {}", path.display())),
        Err(e) => out.warning(&e),
    }
}

/// Without `--once`: runs live sessions until Ctrl-C, re-establishing each lost one with
/// `rejoin` (`None`: `--no-reconnect`; a loss ends the run).
async fn stay(
    invite: &Invite,
    policy: Policy,
    rejoin: Option<JoinPlan>,
    won: Box<Won>,
    direct: Option<RtcConfig>,
    out: &Printer,
) -> ExitCode {
    let mut stdin = stdin::StdinLines::new();
    let mut won = won;
    loop {
        let paths = session_paths(direct.as_ref(), &won);
        let reason = match live_session::run(won.socket, paths, out, &mut stdin).await {
            SessionEnd::Left => return ExitCode::SUCCESS,
            SessionEnd::Refused => return ExitCode::from(1),
            SessionEnd::Lost(reason) => reason,
        };
        let Some(plan) = &rejoin else {
            out.error(ClientErrorCode::Disconnected, &reason);
            return ExitCode::from(1);
        };
        out.disconnected(&reason);
        match race::reconnect(invite, policy, plan, out).await {
            Some(again) => won = again,
            None => return ExitCode::from(1),
        }
    }
}

/// `--name`, or the host name, checked for length and control characters.
fn device_name(arg: Option<&str>) -> Result<String, String> {
    let name = match arg {
        Some(n) => n.trim().to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "terminal".to_string()),
    };
    if name.is_empty() {
        return Err("--name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("--name is longer than {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("--name must not contain control characters".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_shared::handshake::StaticPublic;

    fn host(mesh_id: &str) -> HostIdentity {
        HostIdentity {
            mesh_id: mesh_id.into(),
            public_key: [1; 32],
            static_key: StaticPublic([2; 32]),
            first_use: false,
        }
    }

    fn joined(mesh_id: &str) -> Joined {
        Joined {
            mesh_id: mesh_id.into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            direct: false,
            stun_servers: Vec::new(),
        }
    }

    fn stored(text: &str) -> DeviceCredential {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_record_of_an_earlier_version_is_kept_in_the_new_form() {
        let old = stored(
            r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_key":"k","endpoints":["ws://a"]}"#,
        );
        let plan = JoinPlan::rejoin(&old, [5; 32]).unwrap();
        let kept = kept_credential(&plan, &host("m1"), &joined("m1"), Some(&old));
        assert_ne!(kept, old, "the file must be rewritten");
        assert_eq!(kept.device_key, None);
        assert!(kept.device_secret.is_some());
        assert_eq!(kept.endpoints, ["ws://a"]);
        // The new form rejoins with the new device key, and a rejoin changes nothing more.
        let again = JoinPlan::rejoin(&kept, [6; 32]).unwrap();
        let same = kept_credential(&again, &host("m1"), &joined("m1"), Some(&kept));
        assert_eq!(same, kept, "an unchanged record is not rewritten");
    }

    #[test]
    fn a_first_join_pins_the_mesh_the_host_proved() {
        let invite = Invite::parse(
            "atmosphere://join?token=ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG&mesh=Home&endpoint=ws://h/ws",
        )
        .unwrap();
        let plan = JoinPlan::first_join(
            &invite,
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        let kept = kept_credential(&plan, &host("proven"), &joined("claimed"), None);
        assert_eq!(kept.mesh_id, "proven");
        assert_eq!(kept.device_id, "d1");
    }
}
