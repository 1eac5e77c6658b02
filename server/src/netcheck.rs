//! STUB: being written.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> ExitCode {
    ExitCode::from(1)
}
