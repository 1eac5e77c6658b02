//! `atmosphere invite inspect LINK [--json]`: decodes a v1, v2 or web invite link with the
//! shared codec and prints it normalised. A thin shell: all parsing is
//! [`atmosphere_shared::Invite::parse`], so what this prints is exactly what `join` and the
//! web app would use.

use atmosphere_shared::link::MAX_LINK_LEN;
use atmosphere_shared::{Invite, PathKind};
use std::io::{Read, Write};
use std::process::ExitCode;

/// Decode an invite link and print what it contains (nothing is dialed).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  atmosphere invite inspect 'atmosphere://join?token=ATM-…&mesh=Home&endpoint=ws://10.0.0.2:11451'
  atmosphere invite inspect --json 'http://192.168.1.2:11451/join#token=…'
  pbpaste | atmosphere invite inspect -

Exit status: 0 if the link is valid, 2 if it is not (the reason is printed on stderr).")]
pub struct Args {
    /// The invite link: `atmosphere://join?…` (v2 or v1) or `http(s)://HOST/join#…`.
    /// Quote it: it contains `&`. Use `-` to read it from standard input.
    #[arg(value_name = "LINK")]
    pub link: String,

    /// Print one line of JSON:
    /// {"version":1|2,"token":…,"mesh_name":…,"mesh_id":…|null,"endpoints":{"local":…,"public":…,"relay":…}}
    #[arg(long)]
    pub json: bool,
}

/// Exit status for a link that does not decode (also clap's status for a usage error).
const BAD_LINK: u8 = 2;

/// Runs the command: 0 and the invite on stdout, or 2 and `error: <reason>` on stderr.
pub fn run(args: Args) -> ExitCode {
    let link = if args.link == "-" {
        match read_stdin() {
            Ok(s) => s,
            Err(reason) => return fail(&reason),
        }
    } else {
        args.link
    };
    let invite = match Invite::parse(&link) {
        Ok(i) => i,
        Err(e) => return fail(&e.to_string()),
    };
    let out = if args.json {
        format!("{}\n", invite.to_inspect_json())
    } else {
        summary(&invite)
    };
    // A closed pipe (`| head`) is not worth a panic or an error message.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

/// Reads the link from stdin, refusing more than the codec would accept anyway.
fn read_stdin() -> Result<String, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_LINK_LEN as u64 * 2 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the link from standard input: {e}"))?;
    String::from_utf8(buf).map_err(|_| "the link on standard input is not UTF-8".to_string())
}

fn fail(reason: &str) -> ExitCode {
    // One line, whatever the reason contains.
    let reason = reason.replace(['\n', '\r'], " ");
    eprintln!("error: {reason}");
    ExitCode::from(BAD_LINK)
}

/// The human-readable form: version, token, mesh and each path (`—` when absent).
fn summary(inv: &Invite) -> String {
    let mut s = String::new();
    let form = match inv.version {
        1 => "v1 (legacy, single endpoint)",
        _ => "v2 (multi-endpoint)",
    };
    s.push_str(&format!("Invite link {form}\n"));
    s.push_str(&format!("  token:   {}\n", inv.token));
    s.push_str(&format!("  mesh:    {}\n", inv.mesh_name));
    // What the host must prove before the token is sent (see `Invite::expected_mesh_id`).
    s.push_str(&match inv.expected_mesh_id() {
        Some(id) => format!("  mesh id: {id} (the host must prove it)\n"),
        None => {
            "  mesh id: — (not in the link: the first host that answers is trusted and pinned)\n"
                .to_string()
        }
    });
    s.push_str("  endpoints (tried in this order):\n");
    for path in PathKind::ENDPOINTS {
        let url = inv.endpoints.get(path).unwrap_or("—");
        s.push_str(&format!("    {:<7} {url}\n", format!("{path}:")));
    }
    if inv.version == 1 {
        s.push_str(
            "  note: a v1 link names one endpoint without its path; a private or loopback\n        \
             address is shown as local, anything else as public.\n",
        );
    }
    s
}
