//! The upgrade policy on virtual time: no sockets, no sleeping.

use super::*;
use std::net::Ipv4Addr;

const SYMMETRIC: HostNat = HostNat {
    mapping: NatMapping::EndpointDependent,
    filtering: NatFiltering::Filtered,
};
const CONE: HostNat = HostNat {
    mapping: NatMapping::EndpointIndependent,
    filtering: NatFiltering::Filtered,
};

fn drain(up: &mut Upgrade) -> Vec<Action> {
    std::iter::from_fn(|| up.poll_action()).collect()
}

/// Runs the timers up to `until`, returning every action on the way with its time.
fn run_until(up: &mut Upgrade, until: u64) -> Vec<(u64, Action)> {
    let mut out = Vec::new();
    while let Some(t) = up.poll_timeout().filter(|t| *t <= until) {
        up.handle_timeout(t);
        out.extend(drain(up).into_iter().map(|a| (t, a)));
    }
    out
}

fn events(actions: &[Action]) -> Vec<UpgradeEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// An offerer that joined on the relay at 0 and sent offer 1 at 100.
fn offering() -> Upgrade {
    let mut up = Upgrade::new(Role::Offerer, Policy::default(), 42);
    up.handle_joined(PathKind::Relay, 0);
    assert_eq!(
        drain(&mut up),
        vec![Action::EnableResend, Action::StartAttempt { attempt: 1 }]
    );
    up.handle_offer_sent(1, 100);
    up
}

#[test]
fn a_relay_session_upgrades_and_reports_the_change() {
    let mut up = offering();
    up.handle_answer(1, CONE, 300);
    up.handle_open(1, PathKind::Punched, 420);
    let actions = drain(&mut up);
    assert_eq!(
        actions,
        vec![
            Action::UseDirect {
                attempt: 1,
                kind: PathKind::Punched
            },
            Action::Event(UpgradeEvent::PathChanged {
                from: PathKind::Relay,
                to: PathKind::Punched,
                after_ms: 420,
                reason: None
            }),
        ]
    );
    assert_eq!(
        events(&actions)[0].describe(),
        "relay → punched after 420 ms"
    );
    assert_eq!(up.current_path(), Some(PathKind::Punched));
}

#[test]
fn a_session_on_a_direct_websocket_does_nothing() {
    let mut up = Upgrade::new(Role::Offerer, Policy::default(), 1);
    up.handle_joined(PathKind::Local, 0);
    assert_eq!(drain(&mut up), vec![]);
    assert_eq!(up.poll_timeout(), None);
    assert_eq!(up.current_path(), None);
}

#[test]
fn an_attempt_that_does_not_open_in_5_s_says_why_and_retries_with_backoff() {
    let mut up = offering();
    up.handle_answer(1, SYMMETRIC, 250);
    let timeline = run_until(&mut up, 5_100);
    // Pure acks every 500 ms while resend is on (the shell sends one if due).
    let acks: Vec<u64> = timeline
        .iter()
        .filter(|(_, a)| *a == Action::FlushAck)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(acks[..3], [500, 1_000, 1_500]);
    let at_deadline: Vec<&Action> = timeline
        .iter()
        .filter(|(t, _)| *t == 5_100)
        .map(|(_, a)| a)
        .collect();
    assert!(at_deadline.contains(&&Action::CancelAttempt { attempt: 1 }));
    let ev = at_deadline
        .iter()
        .find_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    let UpgradeEvent::DirectUnavailable {
        attempt: 1,
        reason,
        retry_in_ms: Some(retry),
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        reason,
        "the host's router gives every destination a new port (symmetric NAT), so no direct \
         path can be punched; staying on the relay"
    );
    assert!((1_000..=2_000).contains(&retry), "{retry}");
    // The next attempt starts after the delay; each failure waits longer, up to 30 s.
    let mut t = 5_100 + retry;
    let mut last = retry;
    for attempt in 2..10u32 {
        let tl = run_until(&mut up, t);
        assert!(
            tl.contains(&(t, Action::StartAttempt { attempt })),
            "{tl:?}"
        );
        up.handle_offer_sent(attempt, t);
        up.handle_unavailable(attempt, "too many peer connections", t + 10);
        let evs = events(&drain(&mut up));
        let [UpgradeEvent::DirectUnavailable {
            reason,
            retry_in_ms: Some(retry),
            ..
        }] = &evs[..]
        else {
            panic!("{evs:?}")
        };
        assert_eq!(
            reason,
            "the host cannot open a direct path (too many peer connections); staying on the relay"
        );
        assert!(
            *retry <= 30_000 && *retry + 500 >= last.min(15_000),
            "{retry} after {last}"
        );
        last = *retry;
        t += 10 + retry;
    }
    assert!(last >= 15_000, "the backoff reaches its cap: {last}");
}

#[test]
fn gathering_that_never_ends_fails_the_attempt() {
    let mut up = Upgrade::new(Role::Offerer, Policy::default(), 3);
    up.handle_joined(PathKind::Relay, 1_000);
    drain(&mut up);
    let tl = run_until(&mut up, 4_000);
    assert!(tl.contains(&(4_000, Action::CancelAttempt { attempt: 1 })));
    let reason = tl
        .iter()
        .find_map(|(_, a)| match a {
            Action::Event(UpgradeEvent::DirectUnavailable { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("within 3 s"), "{reason}");
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_within_2_s_and_is_tried_again() {
    let mut up = offering();
    up.handle_answer(1, CONE, 300);
    up.handle_open(1, PathKind::Punched, 420);
    drain(&mut up);
    // Pings every 500 ms; the peer's pongs keep the path alive.
    let mut t = 420;
    while t < 10_000 {
        let tl = run_until(&mut up, t + 500);
        assert!(
            tl.iter()
                .any(|(_, a)| *a == Action::SendPing { attempt: 1 }),
            "{tl:?}"
        );
        assert!(!tl.iter().any(|(_, a)| matches!(a, Action::Fallback { .. })));
        t += 500;
        up.handle_inbound_direct(1, t);
    }
    // The phone leaves the Wi-Fi at `t`: nothing arrives any more.
    let died = t;
    let tl = run_until(&mut up, died + 2_000);
    let (at, reason) = tl
        .iter()
        .find_map(|(at, a)| match a {
            Action::Fallback { attempt: 1, reason } => Some((*at, reason.clone())),
            _ => None,
        })
        .expect("a fallback");
    assert!(
        at - died <= 2_000,
        "fell back {} ms after the path died",
        at - died
    );
    assert_eq!(reason, "nothing arrived on the direct path for 1500 ms");
    assert!(tl.iter().any(|(_, a)| matches!(
        a,
        Action::Event(UpgradeEvent::PathChanged {
            from: PathKind::Punched,
            to: PathKind::Relay,
            reason: Some(_),
            ..
        })
    )));
    assert_eq!(up.current_path(), Some(PathKind::Relay));
    // The path was stable for 10 s: the retry starts from the first delay.
    let tl = run_until(&mut up, at + 2_000);
    let retry = tl
        .iter()
        .find_map(|(t, a)| (*a == Action::StartAttempt { attempt: 2 }).then_some(*t))
        .expect("a new attempt within the first backoff delay");
    assert!(retry - at >= 1_000, "{}", retry - at);
    // Restored: back to direct.
    up.handle_offer_sent(2, retry + 50);
    up.handle_open(2, PathKind::Punched, retry + 400);
    assert!(drain(&mut up).contains(&Action::UseDirect {
        attempt: 2,
        kind: PathKind::Punched
    }));
}

#[test]
fn a_closed_data_channel_falls_back_at_once() {
    let mut up = offering();
    up.handle_open(1, PathKind::Local, 300);
    drain(&mut up);
    up.handle_closed(1, "DataChannel closed", 900);
    let actions = drain(&mut up);
    assert_eq!(
        actions[0],
        Action::Fallback {
            attempt: 1,
            reason: "the direct path closed: DataChannel closed".into()
        }
    );
    assert_eq!(
        events(&actions)[0].describe(),
        "local → relay after 900 ms (the direct path closed: DataChannel closed)"
    );
}

#[test]
fn stale_reports_are_ignored() {
    let mut up = offering();
    up.handle_open(7, PathKind::Punched, 200);
    up.handle_closed(7, "x", 210);
    up.handle_unavailable(7, "x", 220);
    assert_eq!(drain(&mut up), vec![]);
    // A relay "kind" is not a direct path.
    up.handle_open(1, PathKind::Relay, 230);
    assert_eq!(drain(&mut up), vec![]);
}

#[test]
fn the_host_answers_moves_and_replaces_attempts() {
    let mut up = Upgrade::new(Role::Answerer, Policy::default(), 5);
    up.handle_joined(PathKind::Relay, 0);
    assert_eq!(drain(&mut up), vec![], "the host never starts an attempt");
    up.handle_offer_received(1, 150);
    assert_eq!(drain(&mut up), vec![Action::EnableResend]);
    up.handle_open(1, PathKind::Public, 400);
    assert_eq!(
        drain(&mut up)[0],
        Action::UseDirect {
            attempt: 1,
            kind: PathKind::Public
        }
    );
    // Silence: the host falls back too, and does not retry by itself.
    let tl = run_until(&mut up, 3_000);
    assert!(tl
        .iter()
        .any(|(_, a)| matches!(a, Action::Fallback { attempt: 1, .. })));
    assert!(!tl
        .iter()
        .any(|(_, a)| matches!(a, Action::StartAttempt { .. })));
    // A new offer while connecting replaces the old attempt; an old offer is ignored.
    up.handle_offer_received(2, 3_100);
    up.handle_offer_received(3, 3_200);
    assert_eq!(drain(&mut up), vec![Action::CancelAttempt { attempt: 2 }]);
    up.handle_offer_received(2, 3_300);
    assert_eq!(drain(&mut up), vec![]);
    // No open within 5 s: unavailable, no retry of its own.
    let tl = run_until(&mut up, 8_200);
    assert!(tl.iter().any(|(_, a)| matches!(
        a,
        Action::Event(UpgradeEvent::DirectUnavailable {
            attempt: 3,
            retry_in_ms: None,
            ..
        })
    )));
}

#[test]
fn the_direct_kind_follows_the_contract() {
    let lan = [Subnet {
        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 86, 237)),
        prefix: 24,
    }];
    let pair = |client, addr: [u8; 4]| DirectPair {
        host: CandidateKind::Host,
        client,
        client_addr: IpAddr::V4(Ipv4Addr::from(addr)),
    };
    // A browser behind mDNS is learned peer-reflexive, but from the LAN.
    let p = pair(CandidateKind::PeerReflexive, [192, 168, 86, 40]);
    assert_eq!(classify_direct(&p, &lan, SYMMETRIC), PathKind::Local);
    let p = pair(CandidateKind::Host, [10, 0, 0, 2]);
    assert_eq!(classify_direct(&p, &lan, SYMMETRIC), PathKind::Local);
    let p = pair(CandidateKind::ServerReflexive, [203, 0, 113, 9]);
    let open = HostNat {
        mapping: NatMapping::EndpointIndependent,
        filtering: NatFiltering::Open,
    };
    assert_eq!(classify_direct(&p, &lan, open), PathKind::Public);
    assert_eq!(classify_direct(&p, &lan, CONE), PathKind::Punched);
    assert_eq!(
        classify_direct(&p, &lan, HostNat::UNKNOWN),
        PathKind::Punched
    );
    // Subnets by prefix, per family.
    let s = |a: [u8; 4], prefix| Subnet {
        addr: IpAddr::V4(Ipv4Addr::from(a)),
        prefix,
    };
    assert!(s([10, 1, 2, 3], 8).contains(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))));
    assert!(!s([10, 1, 2, 3], 16).contains(IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1))));
    assert!(s([172, 16, 0, 1], 12).contains(IpAddr::V4(Ipv4Addr::new(172, 31, 255, 1))));
    assert!(!s([172, 16, 0, 1], 12).contains(IpAddr::V4(Ipv4Addr::new(172, 32, 0, 1))));
    assert!(!s([10, 1, 2, 3], 8).contains("fe80::1".parse().unwrap()));
    assert!(s([1, 2, 3, 4], 0).contains(IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9))));
    let v6 = Subnet {
        addr: "fd00:1:2:3::1".parse().unwrap(),
        prefix: 64,
    };
    assert!(v6.contains("fd00:1:2:3::99".parse().unwrap()));
    assert!(!v6.contains("fd00:1:2:4::1".parse().unwrap()));
}

#[test]
fn nat_descriptions_have_the_contract_names_and_say_why() {
    assert_eq!(
        serde_json::to_string(&SYMMETRIC).unwrap(),
        r#"{"mapping":"endpoint_dependent","filtering":"filtered"}"#
    );
    let all: HostNat = serde_json::from_str(r#"{"mapping":"unknown","filtering":"open"}"#).unwrap();
    assert_eq!(all.filtering, NatFiltering::Open);
    let timeout = AttemptFailure::Timeout { after_ms: 5_000 };
    assert_eq!(
        why_relay(&timeout, Some(CONE)),
        "no direct path opened within 5 s: the host's router only lets in answers, and this \
         device's network did not let a hole be punched (a symmetric NAT or blocked UDP here); \
         staying on the relay"
    );
    assert_eq!(
        why_relay(&timeout, None),
        "no direct path opened within 5 s; the host's NAT could not be checked; staying on the relay"
    );
    let long = "x".repeat(10_000);
    assert!(why_relay(&AttemptFailure::HostUnavailable(long), None).len() < 400);
}

#[test]
fn seconds_read_like_the_float_formatter_without_linking_it() {
    for (ms, text) in [
        (2_000, "2"),
        (1_500, "1.5"),
        (2_340, "2.3"),
        (2_360, "2.4"),
        (999, "1.0"),
        (30_000, "30"),
    ] {
        assert_eq!(secs(ms), text, "{ms} ms");
    }
}
