//! The race driver: runs the shared [`Race`] with real sockets and a real clock until it
//! has an outcome — one tokio task per started attempt ([`super::attempt`]), each with its
//! own handshake from the one [`JoinPlan`] and fresh randomness, aborted on cancel, a timer
//! for [`Race::poll_timeout`], every event printed as it happens — and, after a lost
//! session, runs it again with the shared [`Backoff`] between rounds.

use super::attempt::{self, Report, Won};
use super::output::Printer;
use crate::printable::printable;
use crate::secret::random_bytes;
use atmosphere_shared::backoff::Backoff;
use atmosphere_shared::credential::JoinPlan;
use atmosphere_shared::handshake::Entropy;
use atmosphere_shared::racing::{AttemptId, FailReason, Outcome, Output, Policy, Race, RaceEvent};
use atmosphere_shared::Invite;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Waits between reconnection rounds: 1 s doubling to 30 s, jittered (see [`Backoff`]).
const RECONNECT: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Grace an attempt task gets beyond the race's own deadline before it gives up by itself
/// (the race cancels it first; this only bounds a task the race forgot).
const ATTEMPT_SAFETY_MARGIN_MS: u64 = 1_000;

/// Drives the shared [`Race`] with real sockets until it has an outcome. Returns the
/// winner, or how the race was lost (already printed). `before_connected` runs on the
/// winner before `connected` is printed, so whatever it keeps (the device file) is stored
/// by the time a person or a script sees the line.
pub(super) async fn race(
    invite: &Invite,
    policy: Policy,
    plan: &JoinPlan,
    out: &Printer,
    before_connected: &dyn Fn(&Won),
) -> Result<Box<Won>, Outcome> {
    let t0 = Instant::now();
    let now_ms = move || u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut race = Race::from_endpoints(&invite.endpoints, policy, 0);
    let (tx, mut rx) = mpsc::channel::<Report>(8);
    let mut tasks: HashMap<AttemptId, JoinHandle<()>> = HashMap::new();
    // Attempts that got `joined`; the race says which one (if any) won.
    let mut joined: HashMap<AttemptId, Box<Won>> = HashMap::new();

    loop {
        while let Some(out_step) = race.poll_output() {
            match out_step {
                Output::Start { id, path, url } => {
                    // Each attempt is its own handshake: fresh ephemeral randomness.
                    let (handshake, msg1) =
                        match plan.start(path, Entropy::new(random_bytes::<32>())) {
                            Ok(started) => started,
                            Err(e) => {
                                let why = format!("cannot start the handshake: {e}");
                                race.handle_failed(id, FailReason::Protocol(why), now_ms());
                                continue;
                            }
                        };
                    let safety = Duration::from_millis(
                        policy
                            .attempt_timeout_ms
                            .saturating_add(ATTEMPT_SAFETY_MARGIN_MS),
                    );
                    let task = attempt::run(id, path, url, handshake, msg1, safety, tx.clone());
                    tasks.insert(id, tokio::spawn(task));
                }
                Output::Cancel { id } => {
                    if let Some(t) = tasks.remove(&id) {
                        t.abort(); // drops the socket mid-handshake, whatever state it is in
                    }
                    joined.remove(&id);
                }
                Output::Event(ev) => {
                    let mesh = match (&ev, race.outcome()) {
                        (RaceEvent::Connected { .. }, Some(Outcome::Connected { id, .. })) => {
                            joined.get(id).map(|w| {
                                before_connected(w);
                                w.joined.mesh_name.clone()
                            })
                        }
                        _ => None,
                    };
                    out.race_event(&ev, mesh.as_deref().or(Some(invite.mesh_name.as_str())));
                }
            }
        }
        if let Some(outcome) = race.outcome().cloned() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
            return match outcome {
                Outcome::Connected { id, .. } => Ok(joined
                    .remove(&id)
                    .expect("the winner's joined was recorded")),
                failed @ (Outcome::AllFailed { .. } | Outcome::Fatal { .. }) => Err(failed),
            };
        }
        let timer = race.poll_timeout();
        let sleep = async {
            match timer {
                Some(at) => tokio::time::sleep_until((t0 + Duration::from_millis(at)).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Joined { id, won }) => {
                    tasks.remove(&id);
                    joined.insert(id, won);
                    race.handle_joined(id, now_ms());
                    // A joined the race ignored (it had already lost) is dropped, closing it.
                    if !matches!(race.outcome(), Some(Outcome::Connected { id: w, .. }) if *w == id) {
                        joined.remove(&id);
                    }
                }
                Some(Report::Failed { id, reason }) => {
                    tasks.remove(&id);
                    tracing::debug!(attempt = %id, reason = %printable(&reason.to_string()), "attempt failed");
                    race.handle_failed(id, reason, now_ms());
                }
                None => unreachable!("the loop holds a sender"),
            },
            _ = sleep => race.handle_timeout(now_ms()),
        }
    }
}

/// Races the endpoints again until one joins (`Some`), a final refusal arrives or the person
/// presses Ctrl-C (`None`; the refusal was already printed). Waits with [`RECONNECT`]
/// backoff before each round, so a host that is restarting is not hammered, and many
/// members that lost it at once do not come back in step.
pub(super) async fn reconnect(
    invite: &Invite,
    policy: Policy,
    plan: &JoinPlan,
    out: &Printer,
) -> Option<Box<Won>> {
    let mut backoff = RECONNECT;
    loop {
        let delay = backoff.next_delay(rand::random::<f64>());
        out.reconnecting(delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tokio::signal::ctrl_c() => {
                out.info("left the mesh");
                return None;
            }
        }
        match race(invite, policy, plan, out, &|_| {}).await {
            Ok(won) => return Some(won),
            Err(Outcome::Fatal { .. }) => return None,
            Err(_) => {}
        }
    }
}
