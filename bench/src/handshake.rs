//! Section 6: what the mesh handshake costs in CPU, as joins per second on one core.
//!
//! Pure computation, no sockets: a thread pinned to one CPU runs complete handshakes of
//! `atmosphere_shared::handshake` (the code the host, the native `join` and the browser run)
//! between a [`HostHandshake`] and a [`ClientHandshake`] that joins with an invite token:
//! message 1, message 2 with the host certificate (checked by the client: Ed25519 signature,
//! mesh id against the invite), message 3 with the join request (parsed by the host), then
//! one sealed `joined` opened by the client. The host's calls and the client's calls are
//! timed separately, each including its 32-byte entropy draw from the OS (`OsRng`), as the
//! shells do. Time is the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), so other
//! processes on a shared machine do not inflate it. What the host does next (the database
//! lookup of the invite or device) is not part of the handshake and not counted. Repeated in
//! rounds; medians are reported.

use crate::report::Report;
use crate::util::{median, pin_to_one_cpu, thread_cpu};
use anyhow::{anyhow, Result};
use atmosphere_shared::handshake::{
    ClientHandshake, Entropy, HostExpectation, HostHandshake, HostKeys, JoinProof, JoinRequest,
    StaticSecret,
};
use atmosphere_shared::wire::DeviceInfo;
use atmosphere_shared::PathKind;
use rand::RngCore;
use std::time::Duration;

/// One round's totals.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Round {
    handshakes: u32,
    host_secs: f64,
    client_secs: f64,
}

fn entropy() -> Entropy {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    Entropy::new(b)
}

/// Runs complete handshakes for at least `dur` of this thread's CPU time.
fn round(keys: &HostKeys, request: &JoinRequest, dur: Duration) -> Result<Round> {
    let expect = HostExpectation::MeshId(keys.mesh_id().to_string());
    let mut r = Round {
        handshakes: 0,
        host_secs: 0.0,
        client_secs: 0.0,
    };
    let started = thread_cpu();
    while thread_cpu() - started < dur {
        let t0 = thread_cpu();
        let mut device = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut device);
        let (client, msg1) = ClientHandshake::start(
            expect.clone(),
            request,
            &StaticSecret::from_bytes(device),
            entropy(),
        )?;
        let t1 = thread_cpu();
        let (host, msg2) = HostHandshake::new(keys, entropy()).read_client_hello(&msg1)?;
        let t2 = thread_cpu();
        let done = client.read_host_hello(&msg2)?;
        let t3 = thread_cpu();
        let mut join = host.read_join(&done.message)?;
        join.request?;
        let verdict = join.channel.seal(br#"{"type":"joined"}"#)?;
        let t4 = thread_cpu();
        let mut channel = done.channel;
        channel.open(&verdict)?;
        let t5 = thread_cpu();
        r.client_secs += ((t1 - t0) + (t3 - t2) + (t5 - t4)).as_secs_f64();
        r.host_secs += ((t2 - t1) + (t4 - t3)).as_secs_f64();
        r.handshakes += 1;
    }
    Ok(r)
}

/// Runs section 6: `reps` rounds of `secs` each on one pinned thread.
pub fn run(rep: &mut Report, reps: usize, secs: f64) -> Result<()> {
    let handle = std::thread::spawn(move || -> Result<(usize, Vec<Round>)> {
        let cpu = pin_to_one_cpu()?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let keys = HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&seed));
        let request = JoinRequest {
            proof: JoinProof::Invite {
                token: "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG".into(),
                device: DeviceInfo {
                    name: "Pixel 8".into(),
                    platform: "browser".into(),
                },
            },
            path: PathKind::Local,
        };
        // Warm caches and the CPU's clock before measuring.
        round(&keys, &request, Duration::from_millis(300))?;
        let rounds = (0..reps.max(1))
            .map(|_| round(&keys, &request, Duration::from_secs_f64(secs)))
            .collect::<Result<Vec<_>>>()?;
        Ok((cpu, rounds))
    });
    let (cpu, rounds) = handle
        .join()
        .map_err(|_| anyhow!("the handshake thread panicked"))??;
    let per = |f: fn(&Round) -> f64| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| f(r) / f64::from(r.handshakes.max(1)) * 1e6)
            .collect()
    };
    let host_us = median(&per(|r| r.host_secs));
    let client_us = median(&per(|r| r.client_secs));
    let full_us = median(&per(|r| r.host_secs + r.client_secs));
    let n: u32 = rounds.iter().map(|r| r.handshakes).sum();
    rep.fig(
        6,
        "Handshake cost on one core (Noise XX + host certificate, invite join; no sockets, no database)",
        "— (reported)",
        format!(
            "host side {host_us:.0} µs = **{:.0} joins/s** per core · client side {client_us:.0} µs = {:.0}/s · both sides {full_us:.0} µs = {:.0} complete handshakes/s (thread CPU time, median of {} rounds × {secs:.0} s, {n} handshakes, thread pinned to CPU {cpu})",
            1e6 / host_us,
            1e6 / client_us,
            1e6 / full_us,
            rounds.len()
        ),
        None,
    );
    rep.raw(
        "handshake",
        serde_json::json!({"cpu": cpu, "rounds": rounds, "host_us": host_us,
                           "client_us": client_us, "full_us": full_us}),
    );
    Ok(())
}
