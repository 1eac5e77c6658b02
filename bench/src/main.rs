//! # atmosphere-bench
//!
//! The benchmarks of issues 7 and 11, run by `scripts/bench.sh` (which builds the release
//! binary and the web bundle first). Most figures are measured on loopback against real
//! processes: the release `atmosphere` binary as host (`serve`), relay (`relay`) and client
//! (`join`). The handshake's and the channel's CPU costs are pure computation on one pinned
//! thread, and the one-hop message comparison is a socket pair inside the bench.
//! Results go into the generated block of `docs/BENCHMARKS.md` and, raw, into
//! `target/bench/results.json`.
//!
//! Sections: `connect` (time to connected per scenario and policy), `relay` (splice
//! throughput, latency, scale), `mint` (invite minting latency), `bundle` (web bundle size),
//! `host` (host memory with 10,000 devices), `handshake` (the handshake's CPU cost),
//! `messages` (encrypted message throughput against plaintext).
//!
//! Modules besides the sections: `member` (a mesh member that joins with the real
//! handshake), `report` (the results table and document), `util` (measuring tools).
//!
//! Network safety: every host runs with `ATMOSPHERE_STUN_SERVERS=none` or a silent STUN
//! socket on 127.0.0.1; every socket dialed is on 127.0.0.0/8.

mod bundle;
mod connect;
mod handshake;
mod host;
mod member;
mod messages;
mod mint;
mod relay;
mod report;
mod util;

use clap::Parser;
use report::Report;
use std::path::PathBuf;
use std::time::Instant;
use util::Machine;

/// Runs the Atmosphere benchmarks on loopback and writes docs/BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "atmosphere-bench")]
struct Args {
    /// The `atmosphere` binary to measure [default: target/release/atmosphere].
    #[arg(long, env = "ATMOSPHERE_BIN")]
    bin: Option<PathBuf>,

    /// Sections to run, comma-separated: connect, relay, mint, bundle, host, handshake,
    /// messages.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect,relay,mint,bundle,host,handshake,messages"
    )]
    only: Vec<String>,

    /// Racing and floor runs per connect scenario.
    #[arg(long, default_value_t = 15)]
    runs: usize,

    /// Sequential-policy runs per connect scenario (those behind black holes take 10–20 s
    /// each; they run side by side).
    #[arg(long, default_value_t = 10)]
    seq_runs: usize,

    /// Repetitions of each throughput/latency measurement (relay, messages) and handshake
    /// round (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,

    /// Seconds per throughput sample and per handshake round.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,

    /// Stop the idle-session ramp at this many relayed sessions (beyond it the figure is
    /// extrapolated, and says so).
    #[arg(long, default_value_t = 20_000)]
    max_sessions: usize,

    /// Fresh hosts started for the cold-mint figure.
    #[arg(long, default_value_t = 5)]
    cold_runs: usize,

    /// Devices joined for the host-memory figure.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,

    /// The trunk output directory measured by the bundle section.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,

    /// The document whose generated block is replaced.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,

    /// Internal: run the read-buffer probe child with this `read_buffer_size` (0 = default).
    #[arg(long, hide = true)]
    probe_read_buffer: Option<usize>,

    /// Internal: sockets opened by the read-buffer probe child.
    #[arg(long, hide = true, default_value_t = 2000)]
    probe_sockets: usize,

    /// Where the raw results go.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(rb) = args.probe_read_buffer {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        return match rt.block_on(relay::read_buffer_probe_child(rb, args.probe_sockets)) {
            Ok(kib) => {
                println!("{kib:.2}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("probe: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ sits in the workspace")
        .to_path_buf();
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/atmosphere"));
    if !bin.exists() {
        eprintln!(
            "error: {} is missing: run scripts/bench.sh (it builds the release binary)",
            bin.display()
        );
        return std::process::ExitCode::from(2);
    }
    // The tests' process helpers (Host, Relay) read this; set before any thread exists.
    std::env::set_var("ATMOSPHERE_BIN", &bin);
    std::env::set_var("ATMOSPHERE_STUN_SERVERS", "none");
    std::env::set_var("RUST_LOG", "warn");
    // 20,000 relayed sessions are 40,000 sockets on each side, 10,000 devices 10,000 in the
    // host and here; children inherit the limit.
    let nofile = util::raise_nofile(200_000);
    // Each relayed session is two sockets in the relay and two in this process; stay under
    // the open-file limit (a container may cap it below what the ramp wants).
    let fd_cap = (nofile.saturating_sub(1000) / 2 / 1000 * 1000) as usize;
    let max_sessions = args.max_sessions.min(fd_cap.max(1000));
    if max_sessions < args.max_sessions {
        eprintln!(
            "note: the open-file limit ({nofile}) caps the idle-session ramp at {max_sessions} sessions"
        );
    }
    // Each device is one socket in the host and one here.
    let fd_cap_devices = nofile.saturating_sub(500) as usize;
    if fd_cap_devices < args.devices {
        eprintln!(
            "note: the open-file limit ({nofile}) caps the host section at {fd_cap_devices} devices"
        );
    }
    let machine = Machine::probe();
    eprintln!(
        "atmosphere-bench: {} ({} cores, Linux {}), load {}, open-file limit {nofile}, binary {}",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.load_at_start,
        bin.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rep = Report::default();
    let started = Instant::now();
    rt.block_on(async {
        for section in &args.only {
            let t = Instant::now();
            eprintln!("== {section}");
            let r = match section.as_str() {
                "connect" => connect::run(&mut rep, args.runs, args.seq_runs).await,
                "relay" => relay::run(&mut rep, args.reps, args.secs, max_sessions, nofile).await,
                "mint" => mint::run(&mut rep, args.cold_runs).await,
                "bundle" => bundle::run(&mut rep, &root.join(&args.dist)),
                "host" => host::run(&mut rep, args.devices.min(fd_cap_devices)).await,
                "handshake" => handshake::run(&mut rep, args.reps, args.secs),
                "messages" => messages::run(&mut rep, args.reps, args.secs).await,
                other => Err(anyhow::anyhow!("unknown section {other:?}")),
            };
            if let Err(e) = r {
                eprintln!("   section {section} FAILED: {e:#}");
                rep.errors.push(format!("{section}: {e:#}"));
            }
            eprintln!("   ({section}: {:.0} s)", t.elapsed().as_secs_f64());
        }
    });
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let date = date.get(..10).unwrap_or(&date).to_string();
    let command = "scripts/bench.sh".to_string();
    let ran: Vec<u8> = args
        .only
        .iter()
        .filter_map(|s| match s.as_str() {
            "connect" => Some(1),
            "relay" => Some(2),
            "mint" => Some(3),
            "bundle" => Some(4),
            "host" => Some(5),
            "handshake" => Some(6),
            "messages" => Some(7),
            _ => None,
        })
        .collect();
    rep.merge_previous(&root.join(&args.json), &ran, &date);
    if let Err(e) = rep.write(
        &root.join(&args.out),
        &root.join(&args.json),
        &machine,
        &date,
        &command,
    ) {
        eprintln!("error: writing results: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "done in {:.0} s: {} and {}",
        started.elapsed().as_secs_f64(),
        args.out.display(),
        args.json.display()
    );
    if rep.errors.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
