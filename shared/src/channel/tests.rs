//! The channel on in-memory paths: frames that travel once, twice, late, out of order, or
//! not at all (a dying path), and a sender that resends on the next path.

use super::*;
use crate::handshake::{
    ClientHandshake, Entropy, HostExpectation, HostHandshake, HostKeys, JoinProof, JoinRequest,
    StaticSecret,
};
use crate::path::PathKind;
use crate::wire::DeviceInfo;
use proptest::prelude::*;

/// A fresh session: (host's channel, member's channel).
fn pair() -> (SecureChannel, SecureChannel) {
    static KEYS: std::sync::OnceLock<HostKeys> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
    });
    let request = JoinRequest {
        path: PathKind::Relay,
        proof: JoinProof::Invite {
            token: "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG".into(),
            device: DeviceInfo {
                name: "Pixel 8".into(),
                platform: "browser".into(),
            },
        },
    };
    let device = StaticSecret::from_bytes([9; 32]);
    let (client, msg1) = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &request,
        &device,
        Entropy::new([1; 32]),
    )
    .unwrap();
    let (host, msg2) = HostHandshake::new(keys, Entropy::new([2; 32]))
        .read_client_hello(&msg1)
        .unwrap();
    let done = client.read_host_hello(&msg2).unwrap();
    let join = host.read_join(&done.message).unwrap();
    (join.channel, done.channel)
}

fn body(i: usize) -> Vec<u8> {
    format!(r#"{{"type":"message","from":"d1","body":"message {i}"}}"#).into_bytes()
}

/// Opens `frame` and collects everything it delivers.
fn open_all(ch: &mut SecureChannel, frame: &[u8]) -> Result<Vec<Vec<u8>>, ChannelError> {
    let mut out: Vec<Vec<u8>> = ch.open(frame)?.into_iter().collect();
    out.extend(std::iter::from_fn(|| ch.pop_ready()));
    Ok(out)
}

#[test]
fn a_frame_is_seq_then_ciphertext_of_ack_then_body() {
    let (mut host, mut member) = pair();
    let f0 = host.seal(b"hello").unwrap();
    assert_eq!(f0.len(), SEQ_BYTES + ACK_BYTES + 5 + TAG_BYTES);
    assert_eq!(&f0[..8], &0u64.to_be_bytes());
    let f1 = host.seal(b"again").unwrap();
    assert_eq!(&f1[..8], &1u64.to_be_bytes());
    assert_eq!(member.open(&f0).unwrap().unwrap(), b"hello");
    assert_eq!(member.open(&f1).unwrap().unwrap(), b"again");
    assert_eq!((host.sent(), member.received()), (2, 2));
    // The member's next frame acknowledges both; the host learns it.
    let reply = member.seal(b"{}").unwrap();
    assert_eq!(host.open(&reply).unwrap().unwrap(), b"{}");
    assert_eq!(host.acked(), 2);
    // No body ever shows up in the frame in clear.
    assert!(!f0.windows(5).any(|w| w == b"hello"));
}

#[test]
fn size_limits_adjust_by_the_header() {
    let (mut host, mut member) = pair();
    assert_eq!(MAX_BODY_BYTES, 65_503);
    assert_eq!(MIN_FRAME_BYTES, 32);
    // An oversize body is refused and breaks nothing: no sequence number was used.
    assert_eq!(
        host.seal(&vec![b'x'; MAX_BODY_BYTES + 1]),
        Err(ChannelError::TooLarge {
            what: "message",
            len: MAX_BODY_BYTES + 1,
            max: MAX_BODY_BYTES
        })
    );
    let biggest = vec![b'x'; MAX_BODY_BYTES];
    let f = host.seal(&biggest).unwrap();
    assert_eq!(f.len(), MAX_FRAME_BYTES);
    assert!(f.len() <= crate::wire::MAX_FRAME_BYTES);
    assert_eq!(member.open(&f).unwrap().unwrap(), biggest);
    // Oversize and truncated frames break the channel.
    let (_, mut member) = pair();
    assert!(matches!(
        member.open(&vec![0; MAX_FRAME_BYTES + 1]),
        Err(ChannelError::TooLarge { what: "frame", .. })
    ));
    assert_eq!(member.open(&f), Err(ChannelError::Broken));
    let (mut host, mut member) = pair();
    let f = host.seal(b"").unwrap();
    assert_eq!(f.len(), MIN_FRAME_BYTES);
    assert_eq!(
        member.open(&f[..MIN_FRAME_BYTES - 1]),
        Err(ChannelError::Truncated {
            len: MIN_FRAME_BYTES - 1
        })
    );
}

#[test]
fn any_change_breaks_the_channel_including_the_sequence_number() {
    for i in 0..(MIN_FRAME_BYTES + 5) {
        let (mut host, mut member) = pair();
        let mut f = host.seal(b"hello").unwrap();
        f[i] ^= 0x40;
        assert_eq!(member.open(&f), Err(ChannelError::Decrypt), "byte {i}");
        let next = host.seal(b"again").unwrap();
        assert_eq!(member.open(&next), Err(ChannelError::Broken));
        assert_eq!(member.seal(b"x"), Err(ChannelError::Broken));
    }
    // A frame relabelled with another seq (here: the next one) does not decrypt.
    let (mut host, mut member) = pair();
    let mut f = host.seal(b"hello").unwrap();
    f[..8].copy_from_slice(&1u64.to_be_bytes());
    assert_eq!(member.open(&f), Err(ChannelError::Decrypt));
    // Reflected: a frame the member sealed is not one from the host.
    let (_, mut member) = pair();
    let mine = member.seal(b"mine").unwrap();
    assert_eq!(member.open(&mine), Err(ChannelError::Decrypt));
    // Cut short by one byte.
    let (mut host, mut member) = pair();
    let f = host.seal(b"hello").unwrap();
    assert_eq!(member.open(&f[..f.len() - 1]), Err(ChannelError::Decrypt));
}

#[test]
fn a_duplicate_is_dropped_silently() {
    let (mut host, mut member) = pair();
    let f = host.seal(b"hello").unwrap();
    assert_eq!(member.open(&f).unwrap().unwrap(), b"hello");
    assert_eq!(member.open(&f), Ok(None));
    assert_eq!(member.open(&f), Ok(None));
    let g = host.seal(b"next").unwrap();
    assert_eq!(member.open(&g).unwrap().unwrap(), b"next");
}

#[test]
fn frames_out_of_order_are_delivered_in_order() {
    let (mut host, mut member) = pair();
    let frames: Vec<Vec<u8>> = (0..4).map(|i| host.seal(&body(i)).unwrap()).collect();
    assert_eq!(member.open(&frames[2]), Ok(None));
    assert_eq!(member.open(&frames[1]), Ok(None));
    assert_eq!(member.open(&frames[2]), Ok(None), "a waiting duplicate");
    assert_eq!(
        open_all(&mut member, &frames[0]).unwrap(),
        vec![body(0), body(1), body(2)]
    );
    assert_eq!(open_all(&mut member, &frames[3]).unwrap(), vec![body(3)]);
    assert_eq!(member.received(), 4);
}

#[test]
fn the_reorder_buffer_is_bounded() {
    let (mut host, mut member) = pair();
    let frames: Vec<Vec<u8>> = (0..=(REORDER_MAX_FRAMES as usize + 1))
        .map(|i| host.seal(&body(i)).unwrap())
        .collect();
    // Frame 0 is missing; REORDER_MAX_FRAMES frames after it are still fine...
    for f in &frames[1..=REORDER_MAX_FRAMES as usize] {
        assert_eq!(member.open(f), Ok(None));
    }
    // ... one more is too far ahead.
    assert_eq!(
        member.open(&frames[REORDER_MAX_FRAMES as usize + 1]),
        Err(ChannelError::ReorderOverflow {
            seq: REORDER_MAX_FRAMES + 1,
            expected: 0,
            max_frames: REORDER_MAX_FRAMES,
            max_bytes: REORDER_MAX_BYTES,
        })
    );
    // And by bytes: 17 big frames ahead of a missing one exceed 1 MiB.
    let (mut host, mut member) = pair();
    let big = vec![b'x'; MAX_BODY_BYTES];
    let frames: Vec<Vec<u8>> = (0..18).map(|_| host.seal(&big).unwrap()).collect();
    for f in &frames[1..17] {
        assert_eq!(member.open(f), Ok(None));
    }
    assert!(matches!(
        member.open(&frames[17]),
        Err(ChannelError::ReorderOverflow { seq: 17, .. })
    ));
}

#[test]
fn acks_are_due_after_bodies_not_after_acks() {
    let (mut host, mut member) = pair();
    assert!(!member.ack_due());
    assert_eq!(member.seal_ack(), Ok(None));
    member.open(&host.seal(b"{}").unwrap()).unwrap();
    assert!(member.ack_due());
    let ack = member.seal_ack().unwrap().unwrap();
    assert_eq!(ack.len(), MIN_FRAME_BYTES);
    assert!(!member.ack_due());
    // The host opens a pure ack: nothing to deliver, and nothing due in return.
    assert_eq!(host.open(&ack), Ok(None));
    assert_eq!(host.acked(), 1);
    assert!(!host.ack_due());
    // Any frame carries the ack: a body clears a due ack as well.
    member.open(&host.seal(b"{}").unwrap()).unwrap();
    member.seal(b"[]").unwrap();
    assert!(!member.ack_due());
}

#[test]
fn the_sender_keeps_frames_until_acked_once_resend_is_enabled() {
    let (mut host, mut member) = pair();
    let before = host.seal(&body(0)).unwrap();
    assert_eq!(
        host.unacked(),
        0,
        "nothing is kept before resend is enabled"
    );
    host.enable_resend();
    assert!(host.resend_enabled());
    let kept: Vec<Vec<u8>> = (1..4).map(|i| host.seal(&body(i)).unwrap()).collect();
    assert_eq!(host.unacked(), 3);
    assert_eq!(host.resend_frames().unwrap(), kept);
    // The member got frames 0 and 1; its ack drops frame 1 at the host.
    open_all(&mut member, &before).unwrap();
    open_all(&mut member, &kept[0]).unwrap();
    host.open(&member.seal_ack().unwrap().unwrap()).unwrap();
    assert_eq!(host.unacked(), 2);
    assert_eq!(host.resend_frames().unwrap(), kept[1..].to_vec());
    // The resend on a new path, then the frames of the dying path arrive late: once each.
    let mut got = Vec::new();
    for f in host.resend_frames().unwrap().iter().chain(&kept) {
        got.extend(open_all(&mut member, f).unwrap());
    }
    assert_eq!(got, vec![body(2), body(3)]);
}

#[test]
fn a_resend_that_needs_a_forgotten_frame_fails() {
    let (mut host, mut member) = pair();
    host.enable_resend_with(ResendLimits {
        max_frames: 3,
        max_bytes: 1 << 20,
    });
    let frames: Vec<Vec<u8>> = (0..5).map(|i| host.seal(&body(i)).unwrap()).collect();
    assert_eq!(host.unacked(), 3);
    // Frames 0 and 1 were forgotten; the member only holds frame 0.
    open_all(&mut member, &frames[0]).unwrap();
    host.open(&member.seal_ack().unwrap().unwrap()).unwrap();
    assert_eq!(
        host.resend_frames(),
        Err(ChannelError::ResendForgotten {
            needed: 1,
            forgotten: 1
        })
    );
    assert_eq!(host.seal(b"{}"), Err(ChannelError::Broken));
    // Had the member acked frame 1 as well, nothing needed would be missing.
    let (mut host, mut member) = pair();
    host.enable_resend_with(ResendLimits {
        max_frames: 100,
        max_bytes: 200,
    });
    let frames: Vec<Vec<u8>> = (0..5).map(|i| host.seal(&body(i)).unwrap()).collect();
    assert!(host.unacked() < 5, "bounded by bytes too");
    for f in &frames[..3] {
        open_all(&mut member, f).unwrap();
    }
    host.open(&member.seal_ack().unwrap().unwrap()).unwrap();
    assert_eq!(host.resend_frames().unwrap(), frames[3..].to_vec());
}

#[test]
fn an_ack_for_frames_never_sent_breaks_the_channel() {
    let (mut host, _) = pair();
    host.seal(b"{}").unwrap();
    assert_eq!(
        host.take_ack(2),
        Err(ChannelError::AckAhead { ack: 2, sent: 1 })
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let e = ChannelError::ReorderOverflow {
        seq: 900,
        expected: 3,
        max_frames: 512,
        max_bytes: 1 << 20,
    };
    assert!(e
        .to_string()
        .contains("frame 900 arrived while frame 3 is still missing"));
    let e = ChannelError::ResendForgotten {
        needed: 4,
        forgotten: 9,
    };
    assert!(e.to_string().contains("needs frame 4"), "{e}");
}

/// One step of the two-path schedule.
#[derive(Debug, Clone)]
enum Step {
    /// The host seals the next message and sends it on the current path.
    Send,
    /// The current path delivers its next frame.
    Deliver,
    /// An older (dying) path delivers its next frame late...
    DeliverLate(usize),
    /// ... or loses it.
    Drop(usize),
    /// The current path dies: a new one takes over and the host resends every unacked frame on it.
    Switch,
    /// The member sends a pure ack (if one is due) over the standby path back.
    Ack,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Send),
        3 => Just(Step::Deliver),
        2 => (0usize..8).prop_map(Step::DeliverLate),
        2 => (0usize..8).prop_map(Step::Drop),
        1 => Just(Step::Switch),
        2 => Just(Step::Ack),
    ]
}

proptest! {
    /// Random interleavings of paths, with losses on the dying ones and resends on the new
    /// one: the member delivers every message exactly once, in order.
    #[test]
    fn every_message_arrives_once_in_order_across_path_changes(
        steps in proptest::collection::vec(step(), 0..300)
    ) {
        let (mut host, mut member) = pair();
        host.enable_resend();
        let mut paths: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new()];
        let mut sent = 0usize;
        let mut got = Vec::new();
        for s in steps {
            let current = paths.len() - 1;
            match s {
                Step::Send => {
                    paths[current].push_back(host.seal(&body(sent)).unwrap());
                    sent += 1;
                }
                Step::Deliver => {
                    if let Some(f) = paths[current].pop_front() {
                        got.extend(open_all(&mut member, &f).unwrap());
                    }
                }
                Step::DeliverLate(i) | Step::Drop(i) if current > 0 => {
                    let dying = i % current;
                    if let Some(f) = paths[dying].pop_front() {
                        if matches!(s, Step::DeliverLate(_)) {
                            got.extend(open_all(&mut member, &f).unwrap());
                        }
                    }
                }
                Step::DeliverLate(_) | Step::Drop(_) => {}
                Step::Switch => {
                    paths.push(host.resend_frames().unwrap().into());
                }
                Step::Ack => {
                    if let Some(ack) = member.seal_ack().unwrap() {
                        prop_assert_eq!(host.open(&ack).unwrap(), None);
                    }
                }
            }
        }
        // The last path delivers what it holds; what the dying ones still hold is lost.
        let current = paths.len() - 1;
        while let Some(f) = paths[current].pop_front() {
            got.extend(open_all(&mut member, &f).unwrap());
        }
        let want: Vec<Vec<u8>> = (0..sent).map(body).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(member.received(), sent as u64);
        // Once the member acks, the host keeps nothing.
        if let Some(ack) = member.seal_ack().unwrap() {
            host.open(&ack).unwrap();
        }
        prop_assert_eq!(host.unacked(), 0);
    }

    /// Random bytes never panic and never deliver anything.
    #[test]
    fn random_frames_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, mut member) = pair();
        prop_assert!(member.open(&bytes).is_err());
        prop_assert_eq!(member.pop_ready(), None);
    }
}

/// Flow control: a sender that stops taking input while `resend_backlogged` and a receiver
/// that acks when `ack_urgent` move any burst with nothing forgotten, so a fallback at any
/// moment can resend everything unacked.
#[test]
fn a_backlogged_sender_waits_for_urgent_acks_and_never_forgets() {
    let (mut host, mut member) = pair();
    member.enable_resend_with(ResendLimits {
        max_frames: 64,
        max_bytes: 1 << 20,
    });
    let (mut sent, mut delivered) = (0usize, 0usize);
    while delivered < 1_000 {
        // The sender takes input only while it is not backlogged.
        let mut in_flight = Vec::new();
        while sent < 1_000 && !member.resend_backlogged() {
            in_flight.push(member.seal(&body(sent)).unwrap());
            sent += 1;
        }
        assert!(!in_flight.is_empty() || sent == 1_000, "the sender stalled");
        for f in in_flight {
            delivered += open_all(&mut host, &f).unwrap().len();
            if host.ack_urgent() {
                let ack = host.seal_ack().unwrap().expect("an urgent ack is due");
                assert!(open_all(&mut member, &ack).unwrap().is_empty());
            }
        }
        // The periodic flush for what is left.
        if let Some(ack) = host.seal_ack().unwrap() {
            open_all(&mut member, &ack).unwrap();
        }
        // A fallback now could resend everything still unacked.
        member.resend_frames().unwrap();
    }
    assert_eq!(member.unacked(), 0);
}
