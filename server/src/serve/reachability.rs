//! The host's side of the public-reachability dial-back (the protocol is
//! `atmosphere_shared::dial_back`): asks the relay to dial the public endpoint back, answers
//! the relay's probe on `GET /dial-back/{nonce}` ([`probe_route`]), and keeps the verdict
//! that `network_info.reachability` shows and invite minting reads.
//!
//! When it checks (one check in flight at a time, see [`Checker::run`]):
//! - after each relay registration (a new registration is also a fresh relay-side limit);
//! - whenever the public endpoint (`ws://ip:port`) changes, by discovery or because a port
//!   mapping was made or lost (the mapped external address is the one checked);
//! - after each finished discovery round, unless the verdict on this endpoint is younger than
//!   the relay's per-registration interval anyway;
//! - after a "rate limited" answer, once the relay's `retry_in_secs` has passed.
//!
//! The first check waits (at most [`MAPPING_GRACE`]) while port mapping is still searching,
//! so a mapping made in the first moments is what gets dialed, not the closed port before it.
//!
//! With `--public-url` nothing is checked (a reverse proxy in front of the host is not the
//! host's own port): `unknown`, "--public-url is set; not checked". Without a relay:
//! `unknown`, "no relay to check from", and invites behave as before.

use super::relay_link::{HostLink, LinkEvent};
use crate::discovery::Discovery;
use crate::port_mapping::PortMapper;
use atmosphere_shared::api::{
    NetworkSnapshot, PortMappingState, PortMappingStatus, PublicReachability, Reachability,
    RelayState,
};
use atmosphere_shared::dial_back::{
    self, format_nonce, DialBackResult, PendingNonces, ANSWER_WAIT_MS, NONCE_BYTES,
    PER_HOST_INTERVAL_MS,
};
use atmosphere_shared::relay_proto::{DialBackRequest, HostMsg};
use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// The verdict and the pending nonces, shared by the checker and the probe route.
#[derive(Clone)]
pub struct ReachabilityCheck {
    inner: Arc<Mutex<Shared>>,
    started: Instant,
}

struct Shared {
    pending: PendingNonces,
    current: PublicReachability,
    /// When `current` was decided (for the refresh rule).
    decided_at: Option<Instant>,
}

fn unknown(detail: &str) -> PublicReachability {
    PublicReachability {
        state: Reachability::Unknown,
        endpoint: None,
        checked_at: None,
        detail: Some(detail.to_string()),
    }
}

impl ReachabilityCheck {
    /// The check of a host with (or without) a relay and `--public-url`; starts its
    /// background task when there is something to check.
    pub fn start(
        link: Option<&HostLink>,
        public_url_set: bool,
        discovery: &Discovery,
        mapper: &PortMapper,
    ) -> ReachabilityCheck {
        let initial = match (public_url_set, link) {
            (true, _) => unknown("--public-url is set; not checked"),
            (false, None) => unknown("no relay to check from (--relay-url)"),
            (false, Some(_)) => unknown("not checked yet"),
        };
        let check = ReachabilityCheck {
            inner: Arc::new(Mutex::new(Shared {
                pending: PendingNonces::default(),
                current: initial,
                decided_at: None,
            })),
            started: Instant::now(),
        };
        if let (false, Some(link)) = (public_url_set, link) {
            let checker = Checker {
                check: check.clone(),
                link: link.clone(),
                discovery: discovery.clone(),
                mapper: mapper.clone(),
            };
            tokio::spawn(checker.run());
        }
        check
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The verdict as `network_info.reachability` shows it for the snapshot's current
    /// public endpoint `public`: a verdict on another endpoint is stale (`unknown` until the
    /// new one is checked).
    pub fn current_for(&self, public: Option<&str>) -> PublicReachability {
        let current = self.shared().current.clone();
        match (&current.endpoint, public) {
            (Some(checked), Some(now)) if checked != now => PublicReachability {
                state: Reachability::Unknown,
                endpoint: Some(now.to_string()),
                checked_at: None,
                detail: Some("the public endpoint changed; checking it".into()),
            },
            (Some(_), None) => unknown("no public endpoint to check"),
            _ => current,
        }
    }

    /// The relay's probe for `nonce` arrived: whether it is pending (answer 200).
    fn arrived(&self, nonce: &str) -> bool {
        let now = self.now_ms();
        self.shared().pending.arrived(nonce, now)
    }

    fn decide(&self, r: PublicReachability) {
        let mut s = self.shared();
        if s.current.state != r.state || s.current.endpoint != r.endpoint {
            tracing::info!(state = ?r.state, endpoint = ?r.endpoint, detail = ?r.detail,
                "public reachability");
        }
        s.current = r;
        s.decided_at = Some(Instant::now());
    }
}

impl FromRef<super::AppState> for ReachabilityCheck {
    fn from_ref(st: &super::AppState) -> ReachabilityCheck {
        st.reachability.clone()
    }
}

/// `GET /dial-back/{nonce}` (open, on the mesh port): 200 with the nonce as the body for a
/// pending nonce, 404 otherwise. Cheap and bounded: a format check and a lookup among at
/// most `dial_back::MAX_PENDING` entries.
pub async fn probe_route(
    State(check): State<ReachabilityCheck>,
    Path(nonce): Path<String>,
) -> Response {
    if dial_back::is_valid_nonce(&nonce) && check.arrived(&nonce) {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], nonce).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Why the checker runs a check now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Registered,
    EndpointChanged,
    Refreshed,
    Retry,
}

/// How long the first check waits for the router to answer a port-mapping request.
const MAPPING_GRACE: Duration = Duration::from_secs(1);

/// What about a port mapping changes reachability: held or not, and where it points.
fn mapping_key(status: &PortMappingStatus) -> (PortMappingState, Option<String>, Option<u16>) {
    (status.state, status.external_ip.clone(), status.tcp_port)
}

/// Whether a trigger leads to a check: a finished discovery round re-checks only a verdict
/// older than the relay's per-registration interval (the relay would refuse sooner anyway).
fn worth_checking(trigger: Trigger, verdict_age: Option<Duration>) -> bool {
    match trigger {
        Trigger::Refreshed => {
            verdict_age.is_none_or(|a| a >= Duration::from_millis(PER_HOST_INTERVAL_MS))
        }
        Trigger::Registered | Trigger::EndpointChanged | Trigger::Retry => true,
    }
}

/// The background task: waits for a trigger, runs one check, repeats.
struct Checker {
    check: ReachabilityCheck,
    link: HostLink,
    discovery: Discovery,
    mapper: PortMapper,
}

impl Checker {
    /// The snapshot as `network_info` shows it: discovery's, with a port mapping's external
    /// address as the public endpoint (so a mapped port is what gets checked).
    fn effective_snapshot(&self) -> NetworkSnapshot {
        let mut snap = self.discovery.snapshot();
        crate::port_mapping::apply_to_snapshot(&mut snap, &self.mapper.status(), false);
        snap
    }

    async fn run(self) {
        let mut events = self.link.subscribe();
        let mut snaps = self.discovery.subscribe();
        let mut mapping = self.mapper.subscribe();
        let mut seen_endpoint = self.effective_snapshot().endpoints.public;
        let mut seen_mapping = mapping_key(&mapping.borrow_and_update());
        let mut mapping_live = true;
        let grace_until = tokio::time::Instant::now() + MAPPING_GRACE;
        let mut seen_round = snaps.borrow().updated_at.clone();
        let mut retry_at: Option<tokio::time::Instant> = None;
        // The link may have registered before this task subscribed.
        let mut next = matches!(self.link.state(), RelayState::Connected { .. })
            .then_some(Trigger::Registered);
        loop {
            let trigger = match next.take() {
                Some(t) => t,
                None => tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(LinkEvent::Registered) => Trigger::Registered,
                        // A late answer to a check that gave up; or lagging: nothing to do.
                        Ok(LinkEvent::DialBackResult(_)) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    },
                    changed = snaps.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        snaps.borrow_and_update();
                        let snap = self.effective_snapshot();
                        if snap.endpoints.public != seen_endpoint {
                            seen_endpoint = snap.endpoints.public.clone();
                            seen_round = snap.updated_at.clone();
                            Trigger::EndpointChanged
                        } else if snap.updated_at != seen_round {
                            seen_round = snap.updated_at.clone();
                            Trigger::Refreshed
                        } else {
                            continue;
                        }
                    }
                    changed = mapping.changed(), if mapping_live => {
                        if changed.is_err() {
                            // Port mapping is off (or its task ended): nothing more to hear.
                            mapping_live = false;
                            continue;
                        }
                        let held = mapping_key(&mapping.borrow_and_update());
                        let public = self.effective_snapshot().endpoints.public;
                        // A mapping made (or lost) behind an unchanged endpoint string (the
                        // router grants the port STUN already named) changes the answer too.
                        if public == seen_endpoint && held == seen_mapping {
                            continue;
                        }
                        seen_endpoint = public;
                        seen_mapping = held;
                        Trigger::EndpointChanged
                    }
                    _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                        retry_at = None;
                        Trigger::Retry
                    }
                },
            };
            let age = self.check.shared().decided_at.map(|t| t.elapsed());
            if !worth_checking(trigger, age) {
                continue;
            }
            // The router is still being asked for a mapping: a dial now would most likely
            // fail and spend the relay's allowance, so the first check waits for the
            // mapping's outcome (which triggers it), but never longer than MAPPING_GRACE: a
            // LAN with no mapping gateway takes seconds to rule out, and a manual forward
            // should not wait for that.
            if self.mapper.status().state == PortMappingState::Searching
                && tokio::time::Instant::now() < grace_until
            {
                retry_at = Some(grace_until);
                continue;
            }
            let snap = self.effective_snapshot();
            let (outcome, registered_meanwhile) = self.check_once(&snap, &mut events).await;
            if let Some(secs) = outcome {
                retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(secs));
            }
            if registered_meanwhile {
                next = Some(Trigger::Registered);
            }
        }
    }

    /// One check of `snap`'s public endpoint. Returns the relay's `retry_in_secs` when it was
    /// rate limited, and whether a new registration happened while waiting.
    async fn check_once(
        &self,
        snap: &NetworkSnapshot,
        events: &mut tokio::sync::broadcast::Receiver<LinkEvent>,
    ) -> (Option<u64>, bool) {
        let Some(endpoint) = snap.endpoints.public.clone() else {
            self.check.decide(unknown(
                "no public endpoint to check (STUN found no public address)",
            ));
            return (None, false);
        };
        let Some(port) = snap.public_port else {
            self.check
                .decide(unknown("the public endpoint has no port"));
            return (None, false);
        };
        if !matches!(self.link.state(), RelayState::Connected { .. }) {
            self.check.decide(unknown(
                "the relay link is not connected; checking once it is",
            ));
            return (None, false);
        }
        let nonce = format_nonce(&crate::secret::random_bytes::<NONCE_BYTES>());
        let now = self.check.now_ms();
        self.check.shared().pending.insert(nonce.clone(), now);
        let sent = self.link.send(HostMsg::DialBack(DialBackRequest {
            port,
            nonce: nonce.clone(),
        }));
        let mut registered_meanwhile = false;
        let result = if sent {
            let wait = Duration::from_millis(ANSWER_WAIT_MS);
            tokio::time::timeout(wait, async {
                loop {
                    match events.recv().await {
                        Ok(LinkEvent::DialBackResult(r)) if r.nonce == nonce => return Some(r),
                        Ok(LinkEvent::Registered) => registered_meanwhile = true,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        let seen = self.check.shared().pending.finish(&nonce);
        let retry = result.as_ref().and_then(|r| r.retry_in_secs);
        self.conclude(endpoint, result.as_ref(), seen);
        (retry, registered_meanwhile)
    }

    /// Records the verdict, except that a rate-limited answer does not replace a verdict on
    /// the same endpoint (it says nothing new about the endpoint).
    fn conclude(&self, endpoint: String, result: Option<&DialBackResult>, seen: bool) {
        let (state, detail) = dial_back::verdict(result, seen);
        let limited = result.is_some_and(|r| r.retry_in_secs.is_some());
        if limited {
            let current = self.check.shared().current.clone();
            if current.endpoint.as_deref() == Some(&endpoint)
                && current.state != Reachability::Unknown
            {
                return;
            }
        }
        self.check.decide(PublicReachability {
            state,
            endpoint: Some(endpoint),
            checked_at: Some(crate::clock::now_rfc3339()),
            detail: Some(detail),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_rechecks_only_an_old_verdict() {
        let fresh = Some(Duration::from_secs(5));
        let old = Some(Duration::from_millis(PER_HOST_INTERVAL_MS));
        assert!(!worth_checking(Trigger::Refreshed, fresh));
        assert!(worth_checking(Trigger::Refreshed, old));
        assert!(worth_checking(Trigger::Refreshed, None));
        for t in [
            Trigger::Registered,
            Trigger::EndpointChanged,
            Trigger::Retry,
        ] {
            assert!(worth_checking(t, fresh), "{t:?}");
        }
    }

    #[tokio::test]
    async fn a_verdict_on_another_endpoint_is_shown_as_unknown() {
        let check = ReachabilityCheck {
            inner: Arc::new(Mutex::new(Shared {
                pending: PendingNonces::default(),
                current: PublicReachability {
                    state: Reachability::Unreachable,
                    endpoint: Some("ws://198.51.100.7:11451".into()),
                    checked_at: Some("2026-11-29T00:00:00Z".into()),
                    detail: Some("connection refused".into()),
                },
                decided_at: None,
            })),
            started: Instant::now(),
        };
        let same = check.current_for(Some("ws://198.51.100.7:11451"));
        assert_eq!(same.state, Reachability::Unreachable);
        let moved = check.current_for(Some("ws://198.51.100.8:11451"));
        assert_eq!(moved.state, Reachability::Unknown);
        assert_eq!(moved.endpoint.as_deref(), Some("ws://198.51.100.8:11451"));
        assert_eq!(check.current_for(None).state, Reachability::Unknown);
    }

    #[tokio::test]
    async fn the_probe_route_answers_only_pending_nonces() {
        let check = ReachabilityCheck {
            inner: Arc::new(Mutex::new(Shared {
                pending: PendingNonces::default(),
                current: unknown("x"),
                decided_at: None,
            })),
            started: Instant::now(),
        };
        let n = format_nonce(&[7; NONCE_BYTES]);
        let answer = |n: &str| probe_route(State(check.clone()), Path(n.to_string()));
        assert_eq!(answer(&n).await.status(), StatusCode::NOT_FOUND);
        check.shared().pending.insert(n.clone(), 0);
        assert_eq!(answer(&n).await.status(), StatusCode::OK);
        assert_eq!(answer("not-a-nonce").await.status(), StatusCode::NOT_FOUND);
        assert!(
            check.shared().pending.finish(&n),
            "the arrival was recorded"
        );
    }
}
