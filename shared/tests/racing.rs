//! The racing policy on virtual time: no sockets, no sleeping. Each test plays the part of
//! a shell — it feeds the race what "the network" did at a given millisecond and checks
//! what the race asked for (starts, cancels) and reported (events), with exact times.

use atmosphere_shared::racing::{
    AttemptId, Candidate, FailReason, Outcome, Output, Policy, Race, RaceEvent,
};
use atmosphere_shared::wire::ErrorCode;
use atmosphere_shared::{Endpoints, PathKind};
use proptest::prelude::*;

use PathKind::{Local, Public, Relay};

const LOCAL: &str = "ws://192.168.86.237:11451";
const PUBLIC: &str = "ws://73.45.123.89:11451";
const RELAY: &str = "wss://relay.atmosphere.io/mesh/abc123";

fn all_three() -> Endpoints {
    Endpoints {
        local: Some(LOCAL.into()),
        public: Some(PUBLIC.into()),
        relay: Some(RELAY.into()),
    }
}

/// A virtual-time shell: drives the race and records every output with its time.
struct Sim {
    race: Race,
    now: u64,
    log: Vec<(u64, Output)>,
}

impl Sim {
    fn new(eps: &Endpoints, policy: Policy) -> Sim {
        let race = Race::from_endpoints(eps, policy, 0);
        let mut s = Sim {
            race,
            now: 0,
            log: Vec::new(),
        };
        s.drain();
        s
    }

    fn drain(&mut self) {
        while let Some(o) = self.race.poll_output() {
            self.log.push((self.now, o));
        }
    }

    /// Lets virtual time run to `t`, firing every timer on the way at its exact instant.
    fn advance_to(&mut self, t: u64) {
        while let Some(d) = self.race.poll_timeout() {
            if d > t {
                break;
            }
            assert!(d >= self.now, "timer in the past: {d} < {}", self.now);
            self.now = d;
            self.race.handle_timeout(d);
            self.drain();
        }
        self.now = t;
    }

    fn id(&self, path: PathKind) -> AttemptId {
        self.log
            .iter()
            .find_map(|(_, o)| match o {
                Output::Start { id, path: p, .. } if *p == path => Some(*id),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} was never started: {:#?}", self.log))
    }

    fn fail(&mut self, path: PathKind, reason: FailReason, t: u64) {
        self.advance_to(t);
        let id = self.id(path);
        self.race.handle_failed(id, reason, t);
        self.drain();
    }

    fn join(&mut self, path: PathKind, t: u64) {
        self.advance_to(t);
        let id = self.id(path);
        self.race.handle_joined(id, t);
        self.drain();
    }

    /// `(time, path)` of every start, in order.
    fn starts(&self) -> Vec<(u64, PathKind)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Start { path, .. } => Some((*t, *path)),
                _ => None,
            })
            .collect()
    }

    /// Paths whose attempt the race cancelled.
    fn cancelled(&self) -> Vec<PathKind> {
        self.log
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Cancel { id } => Some(self.race.candidate(*id).unwrap().path),
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<(u64, RaceEvent)> {
        self.log
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Event(e) => Some((*t, e.clone())),
                _ => None,
            })
            .collect()
    }

    fn terminal_events(&self) -> Vec<RaceEvent> {
        self.events()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.is_terminal())
            .collect()
    }
}

fn refused() -> FailReason {
    FailReason::Connect("connection refused".into())
}

fn host(code: ErrorCode, message: &str) -> FailReason {
    FailReason::Host {
        code,
        message: message.into(),
    }
}

#[test]
fn local_wins_and_nothing_else_is_tried() {
    let mut s = Sim::new(&all_three(), Policy::default());
    assert_eq!(s.starts(), vec![(0, Local)]);
    assert_eq!(
        s.race.poll_timeout(),
        Some(250),
        "next step is public's stagger"
    );
    s.join(Local, 20);
    assert_eq!(s.starts(), vec![(0, Local)]);
    assert_eq!(
        s.race.outcome(),
        Some(&Outcome::Connected {
            id: s.id(Local),
            path: Local,
            elapsed_ms: 20
        })
    );
    assert_eq!(
        s.events(),
        vec![
            (
                0,
                RaceEvent::Trying {
                    path: Local,
                    url: LOCAL.into()
                }
            ),
            (
                20,
                RaceEvent::Connected {
                    path: Local,
                    elapsed_ms: 20
                }
            ),
        ]
    );
    assert_eq!(s.race.poll_timeout(), None);
    s.advance_to(60_000);
    assert_eq!(s.starts().len(), 1, "no attempt after the win");
}

#[test]
fn black_holed_local_costs_one_stagger_then_public_wins() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.join(Public, 262);
    assert_eq!(s.starts(), vec![(0, Local), (250, Public)]);
    assert_eq!(
        s.cancelled(),
        vec![Local],
        "the black-holed local socket is dropped"
    );
    assert_eq!(
        s.race.outcome(),
        Some(&Outcome::Connected {
            id: s.id(Public),
            path: Public,
            elapsed_ms: 262
        })
    );
    // Local never "failed": it lost. Its late answer changes nothing.
    let local = s.id(Local);
    s.race.handle_joined(local, 300);
    s.race
        .handle_failed(local, FailReason::Timeout { after_ms: 10_000 }, 10_000);
    s.drain();
    assert_eq!(s.terminal_events().len(), 1);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected { path: Public, .. })
    ));
}

#[test]
fn refused_local_starts_public_at_once() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.fail(Local, refused(), 5);
    assert_eq!(s.starts(), vec![(0, Local), (5, Public)]);
    // The stagger restarts from public's start: relay is due at 255, not 250.
    assert_eq!(s.race.poll_timeout(), Some(255));
    s.join(Public, 30);
    assert_eq!(
        s.race.outcome(),
        Some(&Outcome::Connected {
            id: s.id(Public),
            path: Public,
            elapsed_ms: 30
        })
    );
    assert_eq!(
        s.events()[1],
        (
            5,
            RaceEvent::Failed {
                path: Local,
                reason: refused()
            }
        ),
        "the refusal is reported when it happens"
    );
    assert!(s.cancelled().is_empty(), "nothing was left running");
}

#[test]
fn only_relay_works() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.fail(Local, refused(), 3);
    // Public is black-holed (no port forward); relay starts one stagger after public did.
    s.join(Relay, 400);
    assert_eq!(s.starts(), vec![(0, Local), (3, Public), (253, Relay)]);
    assert_eq!(s.cancelled(), vec![Public]);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected {
            path: Relay,
            elapsed_ms: 400,
            ..
        })
    ));
}

#[test]
fn all_fail_and_every_reason_is_reported() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.fail(Local, refused(), 2);
    s.fail(Public, FailReason::ClosedBeforeJoined, 50);
    assert_eq!(s.starts(), vec![(0, Local), (2, Public), (50, Relay)]);
    // A relay whose host is offline answers with an error: not final, just that path.
    s.fail(
        Relay,
        host(
            ErrorCode::HostOffline,
            "no host is registered for this mesh",
        ),
        60,
    );
    let reasons = vec![
        (Local, "connection refused".to_string()),
        (Public, "closed before the host answered".to_string()),
        (
            Relay,
            "host_offline: no host is registered for this mesh".to_string(),
        ),
    ];
    assert_eq!(
        s.race.outcome(),
        Some(&Outcome::AllFailed {
            reasons: reasons.clone()
        })
    );
    assert_eq!(s.terminal_events(), vec![RaceEvent::AllFailed { reasons }]);
    assert_eq!(s.race.poll_timeout(), None);
}

#[test]
fn all_black_holed_time_out_one_by_one() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.advance_to(60_000);
    assert_eq!(s.starts(), vec![(0, Local), (250, Public), (500, Relay)]);
    let failures: Vec<(u64, PathKind)> = s
        .events()
        .into_iter()
        .filter_map(|(t, e)| match e {
            RaceEvent::Failed {
                path,
                reason: FailReason::Timeout { after_ms: 10_000 },
            } => Some((t, path)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        vec![(10_000, Local), (10_250, Public), (10_500, Relay)]
    );
    assert_eq!(
        s.cancelled(),
        vec![Local, Public, Relay],
        "timed-out sockets are dropped"
    );
    match s.race.outcome() {
        Some(Outcome::AllFailed { reasons }) => {
            assert_eq!(reasons.len(), 3);
            assert!(
                reasons.iter().all(|(_, r)| r == "timed out after 10000 ms"),
                "{reasons:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_rejected_on_first_path_stops_everything() {
    for code in [
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::TokenExhausted,
        ErrorCode::TokenRevoked,
        ErrorCode::UnknownDevice,
    ] {
        let mut s = Sim::new(&all_three(), Policy::default());
        s.fail(Local, host(code, "no"), 15);
        s.advance_to(60_000);
        assert_eq!(
            s.starts(),
            vec![(0, Local)],
            "{code}: nothing after a final error"
        );
        assert_eq!(
            s.race.outcome(),
            Some(&Outcome::Fatal {
                path: Local,
                code,
                message: "no".into()
            })
        );
        let evs: Vec<RaceEvent> = s.events().into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            evs[1..],
            [
                RaceEvent::Failed {
                    path: Local,
                    reason: host(code, "no")
                },
                RaceEvent::Fatal {
                    path: Local,
                    code,
                    message: "no".into()
                },
            ]
        );
    }
}

#[test]
fn final_error_cancels_attempts_still_running() {
    let mut s = Sim::new(&all_three(), Policy::default());
    // Local black-holed; public answers "token expired" at 300; relay (due at 500) never starts.
    s.fail(Public, host(ErrorCode::TokenExpired, "expired"), 300);
    s.advance_to(60_000);
    assert_eq!(s.starts(), vec![(0, Local), (250, Public)]);
    assert_eq!(s.cancelled(), vec![Local]);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Fatal {
            path: Public,
            code: ErrorCode::TokenExpired,
            ..
        })
    ));
    // Local's late success cannot override the refusal.
    let local = s.id(Local);
    s.race.handle_joined(local, 400);
    s.drain();
    assert_eq!(s.terminal_events().len(), 1);
}

#[test]
fn non_final_host_error_moves_on() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.fail(Local, host(ErrorCode::RateLimited, "slow down"), 10);
    assert_eq!(s.starts(), vec![(0, Local), (10, Public)]);
    assert!(s.race.outcome().is_none());
}

#[test]
fn late_path_joins_while_earlier_ones_pend() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.join(Relay, 510);
    assert_eq!(s.starts(), vec![(0, Local), (250, Public), (500, Relay)]);
    let mut cancelled = s.cancelled();
    cancelled.sort();
    assert_eq!(cancelled, vec![Local, Public]);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected {
            path: Relay,
            elapsed_ms: 510,
            ..
        })
    ));
    // Public's late joined does not produce a second winner.
    let public = s.id(Public);
    s.race.handle_joined(public, 520);
    s.drain();
    assert_eq!(
        s.terminal_events(),
        vec![RaceEvent::Connected {
            path: Relay,
            elapsed_ms: 510
        }]
    );
}

#[test]
fn a_socket_that_opens_is_not_success() {
    // The shell reports nothing on "open"; only `joined` wins. A relay that accepts the
    // socket but never produces `joined` times out like any other attempt.
    let eps = Endpoints {
        relay: Some(RELAY.into()),
        ..Default::default()
    };
    let mut s = Sim::new(&eps, Policy::default());
    s.advance_to(9_999);
    assert!(s.race.outcome().is_none());
    s.advance_to(10_000);
    assert!(matches!(s.race.outcome(), Some(Outcome::AllFailed { .. })));
}

#[test]
fn sequential_mode_is_the_original_one_at_a_time_policy() {
    let mut s = Sim::new(&all_three(), Policy::strictly_sequential());
    assert_eq!(
        s.race.poll_timeout(),
        Some(10_000),
        "no stagger timer in sequential mode"
    );
    s.advance_to(20_050);
    s.join(Relay, 20_050);
    assert_eq!(
        s.starts(),
        vec![(0, Local), (10_000, Public), (20_000, Relay)]
    );
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected {
            path: Relay,
            elapsed_ms: 20_050,
            ..
        })
    ));
    let order: Vec<String> = s
        .events()
        .into_iter()
        .map(|(t, e)| format!("{t} {}", e.describe(None)))
        .collect();
    assert_eq!(
        order,
        vec![
            format!("0 trying local {LOCAL}"),
            "10000 local failed: timed out after 10000 ms".to_string(),
            format!("10000 trying public {PUBLIC}"),
            "20000 public failed: timed out after 10000 ms".to_string(),
            format!("20000 trying relay {RELAY}"),
            "20050 connected via relay in 20050 ms".to_string(),
        ]
    );
}

#[test]
fn sequential_mode_moves_on_at_once_after_a_refusal() {
    let mut s = Sim::new(&all_three(), Policy::strictly_sequential());
    s.fail(Local, refused(), 7);
    s.advance_to(5_000);
    assert_eq!(s.starts(), vec![(0, Local), (7, Public)]);
}

#[test]
fn https_page_blocks_plain_ws_at_once_and_uses_wss() {
    let policy = Policy {
        page_is_https: true,
        ..Policy::default()
    };
    let mut s = Sim::new(&all_three(), policy);
    assert_eq!(
        s.starts(),
        vec![(0, Relay)],
        "only the wss:// relay is started"
    );
    assert_eq!(
        s.events()[..2],
        [
            (
                0,
                RaceEvent::Failed {
                    path: Local,
                    reason: FailReason::BlockedByBrowser
                }
            ),
            (
                0,
                RaceEvent::Failed {
                    path: Public,
                    reason: FailReason::BlockedByBrowser
                }
            ),
        ]
    );
    s.join(Relay, 90);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected {
            path: Relay,
            elapsed_ms: 90,
            ..
        })
    ));
}

#[test]
fn https_page_with_only_ws_fails_immediately_with_reasons() {
    let policy = Policy {
        page_is_https: true,
        ..Policy::default()
    };
    let eps = Endpoints {
        local: Some(LOCAL.into()),
        public: Some("WS://73.45.123.89:11451".into()),
        relay: None,
    };
    let s = Sim::new(&eps, policy);
    assert!(s.starts().is_empty());
    match s.race.outcome() {
        Some(Outcome::AllFailed { reasons }) => {
            assert_eq!(
                reasons.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                vec![Local, Public]
            );
            assert!(reasons
                .iter()
                .all(|(_, r)| r.contains("blocked by the browser")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_and_unknown_inputs_are_ignored() {
    let mut s = Sim::new(&all_three(), Policy::default());
    s.fail(Local, refused(), 5);
    let local = s.id(Local);
    // A second failure and a late join for the already failed attempt change nothing.
    s.race
        .handle_failed(local, FailReason::ClosedBeforeJoined, 6);
    s.race.handle_joined(local, 7);
    // An id the race never handed out.
    s.race.handle_joined(AttemptId(99), 8);
    s.race.handle_failed(AttemptId(99), refused(), 8);
    s.drain();
    assert!(s.race.outcome().is_none());
    assert_eq!(s.starts(), vec![(0, Local), (5, Public)]);
    // Relay, not started yet, cannot win either.
    s.race.handle_joined(AttemptId(2), 9);
    assert!(s.race.outcome().is_none());
    s.join(Public, 20);
    s.race.handle_joined(s.id(Public), 21);
    s.race.handle_failed(s.id(Public), refused(), 22);
    s.drain();
    assert_eq!(s.terminal_events().len(), 1);
    assert!(matches!(
        s.race.outcome(),
        Some(Outcome::Connected {
            path: Public,
            elapsed_ms: 20,
            ..
        })
    ));
}

#[test]
fn no_endpoints_ends_at_once() {
    let s = Sim::new(&Endpoints::default(), Policy::default());
    assert_eq!(
        s.race.outcome(),
        Some(&Outcome::AllFailed { reasons: vec![] })
    );
    assert_eq!(s.terminal_events().len(), 1);
}

#[test]
fn zero_stagger_starts_everything_together() {
    let policy = Policy {
        stagger_ms: 0,
        ..Policy::default()
    };
    let s = Sim::new(&all_three(), policy);
    assert_eq!(s.starts(), vec![(0, Local), (0, Public), (0, Relay)]);
}

#[test]
fn candidates_are_sorted_into_preference_order() {
    let cands = vec![
        Candidate {
            path: Relay,
            url: RELAY.into(),
        },
        Candidate {
            path: Local,
            url: LOCAL.into(),
        },
    ];
    let mut race = Race::new(cands, Policy::default(), 1_000);
    let first = std::iter::from_fn(|| race.poll_output()).find_map(|o| match o {
        Output::Start { path, .. } => Some(path),
        _ => None,
    });
    assert_eq!(first, Some(Local));
    assert_eq!(
        race.poll_timeout(),
        Some(1_250),
        "times are on the caller's clock"
    );
}

/// The readable lines (the CLI without `--json`); the JSON lines are pinned in
/// `atmosphere_shared::join_event`.
#[test]
fn events_read_plainly() {
    assert_eq!(
        RaceEvent::Connected {
            path: Public,
            elapsed_ms: 262
        }
        .describe(Some("Home")),
        "connected via public in 262 ms to mesh 'Home'"
    );
    assert_eq!(
        RaceEvent::Failed {
            path: Local,
            reason: refused()
        }
        .describe(None),
        "local failed: connection refused"
    );
    assert_eq!(
        RaceEvent::AllFailed {
            reasons: vec![(Local, "connection refused".into())],
        }
        .describe(None),
        "all paths failed (local: connection refused)"
    );
    assert_eq!(
        RaceEvent::Fatal {
            path: Local,
            code: ErrorCode::TokenRevoked,
            message: "revoked".into(),
        }
        .describe(None),
        "the host refused to let us in (token_revoked, via local): revoked"
    );
}

/// What "the network" does with one attempt, relative to its start.
#[derive(Debug, Clone)]
enum Fate {
    Join(u64),
    Fail(u64, FailReason),
    Silent,
}

fn fate() -> impl Strategy<Value = Fate> {
    let reason = prop_oneof![
        Just(refused()),
        Just(FailReason::ClosedBeforeJoined),
        Just(host(ErrorCode::HostOffline, "offline")),
        Just(host(ErrorCode::InvalidToken, "bad")),
        Just(host(ErrorCode::TokenExpired, "old")),
    ];
    prop_oneof![
        (0u64..15_000).prop_map(Fate::Join),
        ((0u64..15_000), reason).prop_map(|(t, r)| Fate::Fail(t, r)),
        Just(Fate::Silent),
    ]
}

proptest! {
    /// For any timings: exactly one terminal event, matching the outcome; no start after
    /// it; every started attempt ends as the winner, failed, or cancelled (no leaked socket);
    /// starts follow preference order.
    #[test]
    fn exactly_one_outcome_and_nothing_after_it(
        present in proptest::array::uniform3(any::<bool>()),
        fates in proptest::array::uniform3(fate()),
        stagger in 0u64..600,
        timeout in 1u64..12_000,
        sequential in any::<bool>(),
        https in any::<bool>(),
        late_noise in any::<bool>(),
    ) {
        let url = |p: PathKind, i: usize| {
            if !present[i] { return None; }
            // Local and public are plain ws:// (blocked on https), relay is wss://.
            Some(if p == Relay { RELAY.to_string() } else if p == Local { LOCAL.to_string() } else { PUBLIC.to_string() })
        };
        let eps = Endpoints { local: url(Local, 0), public: url(Public, 1), relay: url(Relay, 2) };
        let policy = Policy { stagger_ms: stagger, attempt_timeout_ms: timeout, sequential, page_is_https: https };
        let mut race = Race::from_endpoints(&eps, policy, 0);
        let mut now = 0u64;
        let mut started: Vec<(AttemptId, PathKind, u64)> = Vec::new();
        let mut cancelled: Vec<AttemptId> = Vec::new();
        let mut terminal: Vec<RaceEvent> = Vec::new();
        let mut start_after_terminal = false;
        // Attempts that already got their one network input (a join or a failure).
        let mut delivered: Vec<AttemptId> = Vec::new();
        let mut failed: Vec<AttemptId> = Vec::new();
        let fate_of = |p: PathKind| fates[PathKind::ENDPOINTS.iter().position(|q| *q == p).unwrap()].clone();

        for _ in 0..100 {
            while let Some(o) = race.poll_output() {
                match o {
                    Output::Start { id, path, .. } => {
                        if !terminal.is_empty() { start_after_terminal = true; }
                        if sequential {
                            // One attempt at a time: every earlier one has ended.
                            for (prev, _, _) in &started {
                                prop_assert!(
                                    cancelled.contains(prev) || failed.contains(prev),
                                    "sequential mode started a second attempt while one runs"
                                );
                            }
                        }
                        started.push((id, path, now));
                    }
                    Output::Cancel { id } => cancelled.push(id),
                    Output::Event(e) => if e.is_terminal() { terminal.push(e) },
                }
            }
            if race.is_finished() { break; }
            // The earliest pending network input among live attempts.
            let next_input = started
                .iter()
                .filter(|(id, _, _)| !cancelled.contains(id) && !delivered.contains(id))
                .filter_map(|(id, p, at)| match fate_of(*p) {
                    Fate::Join(d) | Fate::Fail(d, _) => Some((at + d, *id, *p)),
                    Fate::Silent => None,
                })
                .min();
            let next_timer = race.poll_timeout();
            match (next_input, next_timer) {
                (Some((t, id, p)), timer) if timer.is_none_or(|d| t <= d) => {
                    now = now.max(t);
                    match fate_of(p) {
                        Fate::Join(_) => race.handle_joined(id, now),
                        Fate::Fail(_, r) => { race.handle_failed(id, r, now); failed.push(id); }
                        Fate::Silent => unreachable!(),
                    }
                    delivered.push(id);
                }
                (_, Some(d)) => { now = now.max(d); race.handle_timeout(now); }
                _ => break, // nothing pending at all
            }
        }

        prop_assert!(race.is_finished(), "race did not finish");
        prop_assert_eq!(terminal.len(), 1, "terminal events: {:?}", terminal);
        prop_assert!(!start_after_terminal);
        // The terminal event and the outcome agree.
        match (race.outcome().unwrap(), &terminal[0]) {
            (Outcome::Connected { id, path, elapsed_ms }, RaceEvent::Connected { path: p2, elapsed_ms: e2 }) => {
                prop_assert_eq!(path, p2);
                prop_assert_eq!(elapsed_ms, e2);
                prop_assert!(!cancelled.contains(id), "the winner was cancelled");
                prop_assert!(started.iter().any(|(s, _, _)| s == id));
                prop_assert!(matches!(fate_of(*path), Fate::Join(_)));
            }
            (Outcome::AllFailed { reasons }, RaceEvent::AllFailed { reasons: r2 }) => {
                prop_assert_eq!(reasons, r2);
                prop_assert_eq!(reasons.len(), present.iter().filter(|p| **p).count());
            }
            (Outcome::Fatal { code, .. }, RaceEvent::Fatal { code: c2, .. }) => {
                prop_assert_eq!(code, c2);
                prop_assert!(code.is_final());
            }
            (o, e) => prop_assert!(false, "outcome {:?} vs event {:?}", o, e),
        }
        // No socket is left behind: every started attempt other than the winner was
        // cancelled by the race or failed on its own.
        let winner = match race.outcome() { Some(Outcome::Connected { id, .. }) => Some(*id), _ => None };
        for (id, p, _) in &started {
            prop_assert!(
                Some(*id) == winner || cancelled.contains(id) || failed.contains(id),
                "{} attempt left running", p
            );
        }
        // Starts follow preference order and happen at most once per path.
        let paths: Vec<PathKind> = started.iter().map(|(_, p, _)| *p).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&paths, &sorted);
        if https {
            prop_assert!(!paths.contains(&Local) && !paths.contains(&Public), "ws:// started on https");
        }
        // Late noise after the end changes nothing.
        if late_noise {
            let before = race.outcome().cloned();
            for (id, _, _) in &started {
                race.handle_joined(*id, now + 1);
                race.handle_failed(*id, host(ErrorCode::InvalidToken, "late"), now + 2);
                race.handle_timeout(now + 100_000);
            }
            prop_assert_eq!(race.outcome().cloned(), before);
            while let Some(o) = race.poll_output() {
                prop_assert!(false, "output after the end: {:?}", o);
            }
        }
    }
}

#[test]
fn plaintext_notices_before_the_handshake_are_never_final() {
    // A relay's notice, or a forged "unknown_device" from whoever answered a crafted link:
    // neither is the host's word, so neither may end the race or cost a credential.
    for text in [
        r#"{"type":"error","code":"host_offline","message":"no host is registered"}"#,
        r#"{"type":"error","code":"unknown_device","message":"forget your key"}"#,
        r#"{"type":"joined","mesh_id":"m","mesh_name":"Home","device_id":"d"}"#,
        "not json",
    ] {
        let r = FailReason::from_plaintext_notice(text);
        assert!(!r.is_final(), "{text}: {r:?}");
    }
    let r = FailReason::from_plaintext_notice(
        r#"{"type":"error","code":"host_offline","message":"no host"}"#,
    );
    assert_eq!(r.to_string(), "host_offline: no host (unverified)");
    let long = format!(
        r#"{{"type":"error","code":"x","message":"{}"}}"#,
        "é".repeat(400)
    );
    assert!(FailReason::from_plaintext_notice(&long).to_string().len() < 400);
}

#[test]
fn the_verdict_is_joined_or_the_hosts_own_error() {
    use atmosphere_shared::wire::{Joined, ServerMsg};
    let joined = Joined {
        mesh_id: "m".into(),
        mesh_name: "Home".into(),
        device_id: "d".into(),
        direct: false,
        stun_servers: Vec::new(),
    };
    assert_eq!(
        FailReason::verdict(ServerMsg::Joined(joined.clone())).unwrap(),
        joined
    );
    // Through the channel an error is the host's word: final when its code is.
    let refused = FailReason::verdict(ServerMsg::Error {
        code: ErrorCode::TokenExpired,
        message: "expired".into(),
    })
    .unwrap_err();
    assert!(refused.is_final());
    let early = FailReason::verdict(ServerMsg::Peers {
        peers: vec![],
        more: false,
    })
    .unwrap_err();
    assert_eq!(
        early.to_string(),
        "protocol error: expected joined, got peers"
    );
    // An unverified notice is bounded whatever its sender wrote.
    let long = FailReason::unverified("x".repeat(500), "y".repeat(5000));
    assert!(long.to_string().len() < 400);
}
