//! `atmosphere devices`: the member devices of the running host, through its admin API
//! (like `atmosphere token`, with the admin secret from the data dir):
//!
//! - `atmosphere devices [--json]` lists them (`GET /api/mesh/devices`): a readable table,
//!   or the API answer with `--json`;
//! - `atmosphere devices remove ID [--json]` removes one (`DELETE /api/mesh/devices/ID`):
//!   its key stops working at once and its live session is closed with `device_removed`.
//!
//! Exit codes: 0 done; 1 the host refused (e.g. no device has this id) or is unreachable;
//! 2 usage.

use crate::admin_client::{parse_answer, AdminClient, AdminError, HostArgs};
use crate::printable::printable;
use atmosphere_shared::api::{DeviceList, DeviceRemoved};
use std::process::ExitCode;

/// `atmosphere devices` flags.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Without a subcommand, lists the member devices of the running host: id, name, platform, \
online or last seen, path, and the invite each joined with.

Exit codes: 0 done; 1 the host refused (unknown device id, wrong admin secret) or is \
unreachable; 2 usage."
)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,

    #[command(flatten)]
    pub host: HostArgs,

    /// Print the API answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `atmosphere devices` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Remove a device: its key stops working at once and its live session is closed (the
    /// member is told `device_removed`). To let it back in, mint a new invite.
    Remove(RemoveArgs),
}

/// `atmosphere devices remove` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 removed; 1 no device has this id, or the host refused or is unreachable; \
2 usage.")]
pub struct RemoveArgs {
    /// The device id (first column of `atmosphere devices`).
    pub id: String,

    #[command(flatten)]
    pub host: HostArgs,

    /// Print the API answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub async fn run(args: Args) -> ExitCode {
    let done = match &args.action {
        None => list(&args.host, args.json).await,
        Some(Action::Remove(r)) => remove(r).await,
    };
    match done {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn list(host: &HostArgs, json: bool) -> Result<String, AdminError> {
    let client = AdminClient::new(host)?;
    let text = client
        .request::<()>(reqwest::Method::GET, "/api/mesh/devices", None)
        .await?;
    let list: DeviceList = parse_answer(&text)?;
    Ok(if json {
        format!("{text}\n")
    } else {
        table(&list)
    })
}

async fn remove(args: &RemoveArgs) -> Result<String, AdminError> {
    let client = AdminClient::new(&args.host)?;
    let path = format!(
        "/api/mesh/devices/{}",
        url::form_urlencoded::byte_serialize(args.id.as_bytes()).collect::<String>()
    );
    let text = match client
        .request::<()>(reqwest::Method::DELETE, &path, None)
        .await
    {
        Err(AdminError::Refused { status: 404, .. }) => {
            return Err(AdminError::Other(anyhow::anyhow!(
                "no device has the id {:?}; `atmosphere devices` lists them",
                args.id
            )))
        }
        other => other?,
    };
    let done: DeviceRemoved = parse_answer(&text)?;
    Ok(if args.json {
        format!("{text}\n")
    } else if done.was_online {
        format!(
            "removed device {} (its live session was closed)\n",
            done.device_id
        )
    } else {
        format!("removed device {}\n", done.device_id)
    })
}

/// The readable list: one device per line.
fn table(list: &DeviceList) -> String {
    use std::fmt::Write as _;
    if list.devices.is_empty() {
        return "no devices have joined this mesh yet\n".into();
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16}  {:<24}  {:<10}  {:<25}  {:<6}  INVITE",
        "ID", "NAME", "PLATFORM", "SEEN", "PATH"
    );
    for d in &list.devices {
        let seen = if d.online {
            "online".to_string()
        } else {
            d.last_seen.clone().unwrap_or_else(|| "never".into())
        };
        let path = d.path.map(|p| p.as_str()).unwrap_or("-");
        let _ = writeln!(
            s,
            "{:<16}  {:<24}  {:<10}  {:<25}  {:<6}  {}",
            d.device_id,
            printable(&d.name),
            printable(&d.platform),
            seen,
            path,
            d.invite_id.as_deref().unwrap_or("-")
        );
    }
    s
}
