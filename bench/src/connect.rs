//! Section 1: time to connected, per scenario, with the real `atmosphere join --once --json`
//! process against a real host and relay on loopback.
//!
//! Every scenario is run three ways: the racing policy (default flags), the original
//! design's strictly sequential policy (`--sequential --attempt-timeout-ms 10000`) and the
//! physical floor (a link that lists only the winning endpoint, so nothing else can cost
//! time). The figure is the process's own `elapsed_ms` (race start → host's `joined`); the
//! wall time of the whole process (spawn → exit, including start-up and the clean close) is
//! kept in the raw data.
//! Racing and floor runs are interleaved, so both see the same machine load.

use crate::report::{ms, Report};
use crate::util::median;
use anyhow::{anyhow, bail, Context, Result};
use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::link::{Endpoints, Invite};
use atmosphere_shared::racing::DEFAULT_STAGGER_MS;
use atmosphere_tests::{bin_path, refused_url, BlackHole, Host, Relay};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One `join` run.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    path: String,
    elapsed_ms: f64,
    wall_ms: f64,
}

/// Runs `atmosphere join LINK --json --once` with extra flags; returns the winning path and
/// times, or an error with the process's output.
async fn join_once(link: &str, extra: &[&str], name: &str) -> Result<Run> {
    let start = Instant::now();
    let child = tokio::process::Command::new(bin_path())
        .args(["join", link, "--json", "--once", "--name", name])
        .args(extra)
        .env("ATMOSPHERE_STUN_SERVERS", "none")
        .env_remove("ATMOSPHERE_RELAY_URL")
        .env_remove("ATMOSPHERE_DEVICE_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("join did not finish within 60 s")??;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] == "connected" {
            let elapsed_ms = v["elapsed_ms"]
                .as_f64()
                .ok_or_else(|| anyhow!("connected without elapsed_ms: {line}"))?;
            let path = v["path"].as_str().unwrap_or_default().to_string();
            if !out.status.success() {
                bail!("join connected but exited with {}", out.status);
            }
            return Ok(Run {
                path,
                elapsed_ms,
                wall_ms,
            });
        }
    }
    bail!(
        "join did not connect ({}):\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scenario: which endpoints the invite lists and which path must win.
struct Scenario {
    key: &'static str,
    title: &'static str,
    endpoints: Endpoints,
    /// The winning path (`local`, `public`, `relay`).
    wins: &'static str,
    /// The floor: a link with only the winning endpoint.
    floor: Endpoints,
    /// How many candidates precede the winner (the stagger steps before it may start).
    k: u64,
}

#[derive(Default, serde::Serialize)]
struct Samples {
    racing: Vec<Run>,
    sequential: Vec<Run>,
    floor: Vec<Run>,
    wrong_path: Vec<String>,
}

fn elapsed(v: &[Run]) -> Vec<f64> {
    v.iter().map(|r| r.elapsed_ms).collect()
}
fn wall(v: &[Run]) -> Vec<f64> {
    v.iter().map(|r| r.wall_ms).collect()
}

/// Runs section 1 with `runs` racing/floor runs and `seq_runs` sequential runs per scenario.
pub async fn run(rep: &mut Report, runs: usize, seq_runs: usize) -> Result<()> {
    let relay = Relay::start(&[]).await;
    let host = Host::start_with(&["--relay-url", &relay.url()], &[]).await;
    // The relay path only works once the host's control link is registered.
    let t = Instant::now();
    while relay.health().await["meshes"] != 1 {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the host never registered with the relay");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inv = host
        .mint(&TokenRequest {
            label: Some("bench connect".into()),
            ..TokenRequest::unlimited()
        })
        .await;
    let relay_ep = inv
        .endpoints
        .relay
        .clone()
        .context("the invite has no relay endpoint")?;
    let host_ep = host.ws_url();
    let bh1 = BlackHole::start().await;
    let bh2 = BlackHole::start().await;
    let refused = refused_url();
    let ep = |l: Option<&str>, p: Option<&str>, r: Option<&str>| Endpoints {
        local: l.map(str::to_string),
        public: p.map(str::to_string),
        relay: r.map(str::to_string),
    };
    let h = Some(host_ep.as_str());
    let r = Some(relay_ep.as_str());
    let scenarios = [
        Scenario {
            key: "a",
            title: "(a) local works",
            endpoints: ep(h, h, r),
            wins: "local",
            floor: ep(h, None, None),
            k: 0,
        },
        Scenario {
            key: "b",
            title: "(b) local black-holed, public works",
            endpoints: ep(Some(&bh1.url()), h, r),
            wins: "public",
            floor: ep(None, h, None),
            k: 1,
        },
        Scenario {
            key: "c",
            title: "(c) local + public black-holed, relay works",
            endpoints: ep(Some(&bh1.url()), Some(&bh2.url()), r),
            wins: "relay",
            floor: ep(None, None, r),
            k: 2,
        },
        Scenario {
            key: "d",
            title: "(d) local refused, public works",
            endpoints: ep(Some(&refused), h, r),
            wins: "public",
            floor: ep(None, h, None),
            k: 1,
        },
    ];
    let link = |e: &Endpoints| Invite::v2(&inv.token, &inv.mesh_name, e.clone()).to_v2_link();
    let seq_flags = ["--sequential", "--attempt-timeout-ms", "10000"];
    let mut samples: Vec<Samples> = scenarios.iter().map(|_| Samples::default()).collect();

    // Warm-up: page cache, SQLite, the relay's first session.
    for s in &scenarios {
        join_once(&link(&s.floor), &[], "bench-warmup").await?;
    }

    // Racing and floor interleaved (and the sequential policy where it is fast).
    eprintln!(
        "  racing / floor: {runs} runs x {} scenarios",
        scenarios.len()
    );
    for i in 0..runs {
        for (s, out) in scenarios.iter().zip(samples.iter_mut()) {
            let name = format!("bench-{}-{i}", s.key);
            let f = join_once(&link(&s.floor), &[], &name).await?;
            let rr = join_once(&link(&s.endpoints), &[], &name).await?;
            for run in [&f, &rr] {
                if run.path != s.wins {
                    out.wrong_path.push(format!("{}: {}", s.key, run.path));
                }
            }
            out.floor.push(f);
            out.racing.push(rr);
            if s.k == 0 || s.key == "d" {
                // No timeout in the way: sequential is as quick as one attempt per failure.
                if i < seq_runs {
                    let q = join_once(&link(&s.endpoints), &seq_flags, &name).await?;
                    out.sequential.push(q);
                }
            }
        }
    }

    // The sequential policy behind black holes waits out 10 s per dead path. Those runs are
    // independent, so they run side by side (started 150 ms apart so their surviving
    // attempts do not all hit the host in the same millisecond).
    eprintln!("  sequential behind black holes: {seq_runs} runs each (about 20 s)");
    let mut batch = Vec::new();
    for (idx, s) in scenarios.iter().enumerate() {
        if s.k == 0 || s.key == "d" {
            continue;
        }
        for i in 0..seq_runs {
            let l = link(&s.endpoints);
            let name = format!("bench-seq-{}-{i}", s.key);
            let delay = Duration::from_millis(150 * (i as u64));
            batch.push((
                idx,
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    join_once(&l, &seq_flags, &name).await
                }),
            ));
        }
    }
    for (idx, t) in batch {
        let run = t.await??;
        if run.path != scenarios[idx].wins {
            samples[idx]
                .wrong_path
                .push(format!("{} (sequential): {}", scenarios[idx].key, run.path));
        }
        samples[idx].sequential.push(run);
    }

    let stagger = DEFAULT_STAGGER_MS as f64;
    let mut raw = serde_json::Map::new();
    for (s, out) in scenarios.iter().zip(&samples) {
        let race = median(&elapsed(&out.racing));
        let seq = median(&elapsed(&out.sequential));
        let floor = median(&elapsed(&out.floor));
        let race_wall = median(&wall(&out.racing));
        let floor_wall = median(&wall(&out.floor));
        let over = race - floor;
        let (target, met) = match s.k {
            0 => (
                "racing within 10 % of the floor (elapsed_ms has 1 ms resolution)".to_string(),
                // Within 10 %, or within the 1 ms resolution of elapsed_ms.
                Some(race <= floor * 1.10 || over <= 1.0),
            ),
            _ if s.key == "d" => (
                "— (a refused port fails at once: expect ≈ floor)".to_string(),
                None,
            ),
            k => {
                let budget = stagger * k as f64 + 50.0;
                (
                    format!("racing ≤ floor + stagger×{k} + 50 ms = floor + {budget:.0} ms"),
                    Some(over <= budget),
                )
            }
        };
        let wrong = if out.wrong_path.is_empty() {
            String::new()
        } else {
            format!("; WRONG PATH in {} runs", out.wrong_path.len())
        };
        rep.fig(
            1,
            format!(
                "Time to connected {} → `{}` (median elapsed_ms)",
                s.title, s.wins
            ),
            target,
            format!(
                "racing {} · sequential {} · floor {} · racing − floor = {} \
                 (n = {}/{}/{}; whole process wall: racing {}, floor {}){wrong}",
                ms(race),
                ms(seq),
                ms(floor),
                ms(over),
                out.racing.len(),
                out.sequential.len(),
                out.floor.len(),
                ms(race_wall),
                ms(floor_wall),
            ),
            met,
        );
        raw.insert(s.key.to_string(), serde_json::to_value(out)?);
    }
    rep.raw("connect", serde_json::Value::Object(raw));
    drop(host);
    drop(relay);
    Ok(())
}
