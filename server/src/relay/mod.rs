//! The relay: `atmosphere relay` (server) and the host's control link to it (`host_link`).
//! STUB: being written.

pub mod host_link;

use std::process::ExitCode;

/// `atmosphere relay` flags.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the relay server until interrupted.
pub async fn run(_args: Args) -> ExitCode {
    ExitCode::from(1)
}
