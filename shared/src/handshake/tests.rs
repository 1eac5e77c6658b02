//! The handshake and transport on in-memory byte transports: every frame either side sends
//! goes through a [`Wire`] that records it, as a relay splicing the socket would see it.

use super::*;
use crate::channel::ChannelError;
use proptest::prelude::*;

const TOKEN: &str = "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG";
const DEVICE_ID: &str = "f446faf7bb60225a";
const LEGACY_KEY: &str = "orR9EUC0hp7pHAZdR3xC3HjRri7oBsItDSwW2Veh_jE";
const SECRET_TEXT: &str = "the spare key is under the blue flowerpot";

fn mesh_key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// The host keys of `mesh_key(7)`, built once (the proptests would otherwise sign per case).
fn host_keys() -> &'static HostKeys {
    static KEYS: std::sync::OnceLock<HostKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| HostKeys::from_signing_key(&mesh_key(7)))
}

fn entropy(n: u8) -> Entropy {
    Entropy::new([n; 32])
}

fn device() -> StaticSecret {
    StaticSecret::from_bytes([0x5a; 32])
}

fn invite_request() -> JoinRequest {
    JoinRequest {
        proof: JoinProof::Invite {
            token: TOKEN.into(),
            device: DeviceInfo {
                name: "Pixel 8".into(),
                platform: "browser".into(),
            },
        },
        path: PathKind::Relay,
    }
}

fn rejoin_request() -> JoinRequest {
    JoinRequest {
        proof: JoinProof::Device {
            device_id: DEVICE_ID.into(),
        },
        path: PathKind::Relay,
    }
}

fn legacy_request() -> JoinRequest {
    JoinRequest {
        proof: JoinProof::DeviceKey {
            device_id: DEVICE_ID.into(),
            device_key: LEGACY_KEY.into(),
        },
        path: PathKind::Public,
    }
}

/// An in-memory socket between a client and a host, through a passive relay that records
/// every frame in both directions.
#[derive(Default)]
struct Wire {
    /// Frames the client sent, in order.
    from_client: Vec<Vec<u8>>,
    /// Frames the host sent, in order.
    from_host: Vec<Vec<u8>>,
}

impl Wire {
    fn client_sends(&mut self, frame: &[u8]) -> Vec<u8> {
        self.from_client.push(frame.to_vec());
        frame.to_vec()
    }

    fn host_sends(&mut self, frame: &[u8]) -> Vec<u8> {
        self.from_host.push(frame.to_vec());
        frame.to_vec()
    }

    /// Every byte the relay saw.
    fn recorded(&self) -> Vec<u8> {
        self.from_client
            .iter()
            .chain(&self.from_host)
            .flatten()
            .copied()
            .collect()
    }
}

/// Both ends of a finished handshake, and what the host learned.
struct Session {
    client: ClientDone,
    host: HostJoin,
}

/// Runs a handshake over `wire`; the client's result is returned as an error if the client
/// refused the host (then the host never got message 3).
fn handshake(
    wire: &mut Wire,
    keys: &HostKeys,
    expectation: HostExpectation,
    request: &JoinRequest,
) -> Result<Session, HandshakeError> {
    let (client, msg1) =
        ClientHandshake::start(expectation, request, &device(), entropy(1)).unwrap();
    let msg1 = wire.client_sends(&msg1);
    let host = HostHandshake::new(keys, entropy(2));
    let (host, msg2) = host.read_client_hello(&msg1).unwrap();
    let msg2 = wire.host_sends(&msg2);
    let client = client.read_host_hello(&msg2)?;
    let msg3 = wire.client_sends(&client.message);
    let host = host.read_join(&msg3).unwrap();
    Ok(Session { client, host })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Exchanges a message each way through the channels (and the wire).
fn talk(wire: &mut Wire, s: &mut Session) {
    let joined = br#"{"type":"joined","mesh_id":"m","mesh_name":"Home","device_id":"f446faf7bb60225a","peers":[]}"#;
    let f = s.host.channel.seal(joined).unwrap();
    let f = wire.host_sends(&f);
    assert_eq!(s.client.channel.open(&f).unwrap().unwrap(), joined);
    let send = format!(r#"{{"type":"send","to":null,"body":"{SECRET_TEXT}"}}"#);
    let f = s.client.channel.seal(send.as_bytes()).unwrap();
    let f = wire.client_sends(&f);
    assert_eq!(s.host.channel.open(&f).unwrap().unwrap(), send.as_bytes());
    let message = format!(r#"{{"type":"message","from":"{DEVICE_ID}","body":"{SECRET_TEXT}"}}"#);
    let f = s.host.channel.seal(message.as_bytes()).unwrap();
    let f = wire.host_sends(&f);
    assert_eq!(
        s.client.channel.open(&f).unwrap().unwrap(),
        message.as_bytes()
    );
}

#[test]
fn a_first_join_authenticates_the_host_and_yields_working_channels() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let mut wire = Wire::default();
    let expect = HostExpectation::MeshId(keys.mesh_id().to_string());
    let mut s = handshake(&mut wire, &keys, expect, &invite_request()).unwrap();
    assert_eq!(s.client.host.mesh_id, keys.mesh_id());
    assert_eq!(
        s.client.host.public_key,
        mesh_key(7).verifying_key().to_bytes()
    );
    assert_eq!(s.client.host.static_key, keys.static_public());
    assert!(!s.client.host.first_use);
    assert_eq!(s.host.request, Ok(invite_request()));
    assert_eq!(s.host.device_key, device().public_key());
    talk(&mut wire, &mut s);
    // The message sizes are the contract's.
    assert_eq!(wire.from_client[0].len(), CLIENT_HELLO_BYTES);
    assert_eq!(wire.from_host[0].len(), HOST_HELLO_BYTES);
    assert_eq!(
        wire.from_client[1].len(),
        JOIN_OVERHEAD_BYTES + invite_request().to_bytes().len()
    );
}

#[test]
fn a_rejoin_proves_the_same_device_key_and_a_legacy_key_still_travels() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let pinned = HostExpectation::Pinned {
        mesh_id: keys.mesh_id().to_string(),
    };
    let mut wire = Wire::default();
    let first = handshake(&mut wire, &keys, pinned.clone(), &invite_request()).unwrap();
    let mut again = handshake(&mut wire, &keys, pinned.clone(), &rejoin_request()).unwrap();
    assert_eq!(again.host.request, Ok(rejoin_request()));
    // What the host stored at the first join is what the rejoin proves.
    assert_eq!(again.host.device_key, first.host.device_key);
    talk(&mut wire, &mut again);
    let mut legacy = handshake(&mut wire, &keys, pinned, &legacy_request()).unwrap();
    assert_eq!(legacy.host.request, Ok(legacy_request()));
    talk(&mut wire, &mut legacy);
}

#[test]
fn another_device_key_is_another_device() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let (client, msg1) = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &rejoin_request(),
        &StaticSecret::from_bytes([0x77; 32]),
        entropy(1),
    )
    .unwrap();
    let (host, msg2) = HostHandshake::new(&keys, entropy(2))
        .read_client_hello(&msg1)
        .unwrap();
    let done = client.read_host_hello(&msg2).unwrap();
    let join = host.read_join(&done.message).unwrap();
    assert_ne!(join.device_key, device().public_key());
}

#[test]
fn trust_on_first_use_reports_the_mesh_to_pin() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let mut wire = Wire::default();
    let s = handshake(
        &mut wire,
        &keys,
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
    )
    .unwrap();
    assert!(s.client.host.first_use);
    assert_eq!(
        s.client.host.mesh_id,
        mesh_id_from_public_key(&mesh_key(7).verifying_key().to_bytes())
    );
}

/// Asserts the client refused before message 3: it sent message 1 only.
fn assert_refused_before_the_credential(
    wire: &Wire,
    r: Result<Session, HandshakeError>,
) -> HandshakeError {
    let err = r.err().expect("the client must refuse this host");
    assert_eq!(
        wire.from_client.len(),
        1,
        "the client sent more than message 1"
    );
    assert_eq!(wire.from_client[0].len(), CLIENT_HELLO_BYTES);
    assert!(!contains(&wire.recorded(), TOKEN.as_bytes()));
    err
}

#[test]
fn a_host_with_another_mesh_key_gets_no_credential() {
    let real = HostKeys::from_signing_key(&mesh_key(7));
    let impostor = HostKeys::from_signing_key(&mesh_key(8));
    for expect in [
        HostExpectation::MeshId(real.mesh_id().to_string()),
        HostExpectation::Pinned {
            mesh_id: real.mesh_id().to_string(),
        },
    ] {
        let mut wire = Wire::default();
        let r = handshake(&mut wire, &impostor, expect, &invite_request());
        match assert_refused_before_the_credential(&wire, r) {
            HandshakeError::HostNotAuthenticated { expected, got, .. } => {
                assert_eq!(expected, real.mesh_id());
                assert_eq!(got, impostor.mesh_id());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_replayed_certificate_does_not_cover_the_impostors_key() {
    // The impostor has the real host's certificate (it is sent to every client) but its
    // own static key, since it lacks the real one's secret.
    let real = HostKeys::from_signing_key(&mesh_key(7));
    let own = StaticSecret::from_bytes([0x33; 32]);
    let impostor = HostKeys {
        static_public: own.public_key(),
        static_secret: own,
        ..real.clone()
    };
    let mut wire = Wire::default();
    let r = handshake(
        &mut wire,
        &impostor,
        HostExpectation::MeshId(real.mesh_id().to_string()),
        &invite_request(),
    );
    let err = assert_refused_before_the_credential(&wire, r);
    assert!(
        matches!(err, HandshakeError::BadCertificate { .. }),
        "{err:?}"
    );
    // Trust on first use does not accept it either: the certificate is checked first.
    let mut wire = Wire::default();
    let r = handshake(
        &mut wire,
        &impostor,
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
    );
    let err = assert_refused_before_the_credential(&wire, r);
    assert!(
        matches!(err, HandshakeError::BadCertificate { .. }),
        "{err:?}"
    );
}

#[test]
fn a_certificate_for_another_static_key_is_refused() {
    // Signed by the real mesh key, but over a different X25519 key than the one used.
    let key = mesh_key(7);
    let real = HostKeys::from_signing_key(&key);
    let other = StaticSecret::from_bytes([0x44; 32]).public_key();
    let sig = key.sign(&certificate_message(&other.0));
    let forged = HostKeys {
        certificate: certificate_bytes(&key.verifying_key(), &sig),
        ..real.clone()
    };
    let mut wire = Wire::default();
    let r = handshake(
        &mut wire,
        &forged,
        HostExpectation::MeshId(real.mesh_id().to_string()),
        &invite_request(),
    );
    let err = assert_refused_before_the_credential(&wire, r);
    assert!(
        matches!(err, HandshakeError::BadCertificate { .. }),
        "{err:?}"
    );
    // A certificate of the wrong size, or with garbage in place of the key.
    let mut garbage = real.clone();
    garbage.certificate[..32].copy_from_slice(&[0xff; 32]);
    let mut wire = Wire::default();
    let r = handshake(
        &mut wire,
        &garbage,
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
    );
    let err = assert_refused_before_the_credential(&wire, r);
    assert!(
        matches!(err, HandshakeError::BadCertificate { .. }),
        "{err:?}"
    );
}

#[test]
fn a_tampered_host_hello_does_not_decrypt() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    for at in [0, 31, 32, 70, 100, HOST_HELLO_BYTES - 1] {
        let (client, msg1) = ClientHandshake::start(
            HostExpectation::TrustOnFirstUse,
            &invite_request(),
            &device(),
            entropy(1),
        )
        .unwrap();
        let (_, mut msg2) = HostHandshake::new(&keys, entropy(2))
            .read_client_hello(&msg1)
            .unwrap();
        msg2[at] ^= 0x01;
        assert_eq!(
            client.read_host_hello(&msg2).err(),
            Some(HandshakeError::Decrypt {
                step: Step::HostHello
            }),
            "byte {at}"
        );
    }
}

#[test]
fn another_prologue_does_not_decrypt() {
    // A host of another protocol version: the transcripts differ, so message 2 fails.
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let (client, msg1) = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
        &device(),
        entropy(1),
    )
    .unwrap();
    let mut host = Builder::with_resolver(noise_params(), Box::new(Resolver::new([2; 32])))
        .prologue(b"atmosphere-mesh-v2")
        .unwrap()
        .local_private_key(&keys.static_secret.0)
        .unwrap()
        .build_responder()
        .unwrap();
    read(&mut host, Step::ClientHello, &msg1).unwrap();
    let msg2 = write(&mut host, &keys.certificate, HOST_HELLO_BYTES).unwrap();
    assert_eq!(
        client.read_host_hello(&msg2).err(),
        Some(HandshakeError::Decrypt {
            step: Step::HostHello
        })
    );
}

#[test]
fn wrong_sizes_and_reordered_messages_are_malformed_or_too_large() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let start = || {
        ClientHandshake::start(
            HostExpectation::TrustOnFirstUse,
            &invite_request(),
            &device(),
            entropy(1),
        )
        .unwrap()
    };
    let host = || HostHandshake::new(&keys, entropy(2));
    let (client, msg1) = start();
    let (awaiting, msg2) = host().read_client_hello(&msg1).unwrap();
    let done = client.read_host_hello(&msg2).unwrap();
    let msg3 = done.message.clone();

    // Message 3 where message 1 belongs, message 1 where 2 and 3 belong.
    assert!(matches!(
        host().read_client_hello(&msg3).err(),
        Some(HandshakeError::Malformed {
            step: Step::ClientHello,
            ..
        })
    ));
    assert!(matches!(
        start().0.read_host_hello(&msg1).err(),
        Some(HandshakeError::Malformed {
            step: Step::HostHello,
            ..
        })
    ));
    assert!(matches!(
        awaiting.read_join(&msg1).err(),
        Some(HandshakeError::Malformed {
            step: Step::Join,
            ..
        })
    ));
    // Truncated and padded.
    assert!(matches!(
        host().read_client_hello(&msg1[..31]).err(),
        Some(HandshakeError::Malformed { .. })
    ));
    let mut padded = msg2.clone();
    padded.push(0);
    assert!(matches!(
        start().0.read_host_hello(&padded).err(),
        Some(HandshakeError::Malformed { .. })
    ));
    assert!(matches!(
        start().0.read_host_hello(&[]).err(),
        Some(HandshakeError::Malformed { .. })
    ));
    // Oversize.
    let huge = vec![0u8; MAX_NOISE_MESSAGE_BYTES + 1];
    assert!(matches!(
        host().read_client_hello(&huge).err(),
        Some(HandshakeError::TooLarge { .. })
    ));
    assert!(matches!(
        start().0.read_host_hello(&huge).err(),
        Some(HandshakeError::TooLarge { .. })
    ));
    let (_, msg2b) = host().read_client_hello(&msg1).unwrap();
    let _ = msg2b;
    let fresh_awaiting = || host().read_client_hello(&msg1).unwrap().0;
    assert!(matches!(
        fresh_awaiting()
            .read_join(&vec![0u8; JOIN_OVERHEAD_BYTES + MAX_JOIN_REQUEST_BYTES + 1])
            .err(),
        Some(HandshakeError::TooLarge {
            step: Step::Join,
            ..
        })
    ));
    // A request the client would have to send oversize is refused before anything is sent.
    let big = JoinRequest {
        proof: JoinProof::Invite {
            token: "x".repeat(MAX_JOIN_REQUEST_BYTES),
            device: DeviceInfo::default(),
        },
        path: PathKind::Local,
    };
    assert!(matches!(
        ClientHandshake::start(
            HostExpectation::TrustOnFirstUse,
            &big,
            &device(),
            entropy(1)
        )
        .err(),
        Some(HandshakeError::TooLarge {
            step: Step::Join,
            ..
        })
    ));
}

#[test]
fn a_tampered_join_does_not_decrypt() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    for at in [0, 40, 47, 48, 60] {
        let (client, msg1) = ClientHandshake::start(
            HostExpectation::TrustOnFirstUse,
            &invite_request(),
            &device(),
            entropy(1),
        )
        .unwrap();
        let (host, msg2) = HostHandshake::new(&keys, entropy(2))
            .read_client_hello(&msg1)
            .unwrap();
        let mut msg3 = client.read_host_hello(&msg2).unwrap().message;
        msg3[at] ^= 0x80;
        assert_eq!(
            host.read_join(&msg3).err(),
            Some(HandshakeError::Decrypt { step: Step::Join }),
            "byte {at}"
        );
    }
}

#[test]
fn a_join_from_another_handshake_does_not_decrypt() {
    // A relay replaying a recorded message 3 into a new handshake with the host.
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let mut wire = Wire::default();
    handshake(
        &mut wire,
        &keys,
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
    )
    .unwrap();
    let (msg1, msg3) = (wire.from_client[0].clone(), wire.from_client[1].clone());
    // Same client ephemeral, but the host's ephemeral is new.
    let (host, _) = HostHandshake::new(&keys, entropy(3))
        .read_client_hello(&msg1)
        .unwrap();
    assert_eq!(
        host.read_join(&msg3).err(),
        Some(HandshakeError::Decrypt { step: Step::Join })
    );
}

#[test]
fn a_request_that_is_not_json_gets_a_channel_to_say_so() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let (mut client, msg1) = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
        &device(),
        entropy(1),
    )
    .unwrap();
    client.request = b"{\"type\":\"dance\"}".to_vec();
    let (host, msg2) = HostHandshake::new(&keys, entropy(2))
        .read_client_hello(&msg1)
        .unwrap();
    let mut done = client.read_host_hello(&msg2).unwrap();
    let mut join = host.read_join(&done.message).unwrap();
    assert!(matches!(
        join.request,
        Err(HandshakeError::BadJoinRequest { .. })
    ));
    let err = br#"{"type":"error","code":"bad_request","message":"not a join request"}"#;
    let f = join.channel.seal(err).unwrap();
    assert_eq!(done.channel.open(&f).unwrap().unwrap(), err);
}

#[test]
fn the_relay_records_no_token_device_id_key_or_message_text() {
    let keys = HostKeys::from_signing_key(&mesh_key(7));
    let expect = HostExpectation::MeshId(keys.mesh_id().to_string());
    let mut wire = Wire::default();
    for request in [invite_request(), rejoin_request(), legacy_request()] {
        let mut s = handshake(&mut wire, &keys, expect.clone(), &request).unwrap();
        talk(&mut wire, &mut s);
    }
    let seen = wire.recorded();
    assert!(seen.len() > 1000);
    for secret in [
        TOKEN,
        DEVICE_ID,
        LEGACY_KEY,
        SECRET_TEXT,
        "Pixel 8",
        "joined",
        "type",
    ] {
        assert!(
            !contains(&seen, secret.as_bytes()),
            "the relay saw {secret:?}"
        );
    }
    // Nor the device's static key (message 3 encrypts it) or the host's (message 2 does).
    assert!(!contains(&seen, &device().public_key().0));
    assert!(!contains(&seen, &keys.static_public().0));
    assert!(!contains(&seen, keys.certificate()));
}

#[test]
fn each_side_draws_exactly_its_entropy() {
    // Same entropy, same bytes: the core is deterministic, the shells bring the randomness.
    let a = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
        &device(),
        entropy(1),
    )
    .unwrap()
    .1;
    let b = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
        &device(),
        entropy(1),
    )
    .unwrap()
    .1;
    let c = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &invite_request(),
        &device(),
        entropy(9),
    )
    .unwrap()
    .1;
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The ephemeral key is X25519 of exactly those bytes.
    assert_eq!(a, StaticSecret::from_bytes([1; 32]).public_key().0);
    // A second draw fails instead of repeating the bytes.
    let mut draw = OneDraw(Some([1; 32]));
    let mut out = [0u8; 32];
    draw.try_fill_bytes(&mut out).unwrap();
    assert!(draw.try_fill_bytes(&mut out).is_err());
    assert!(OneDraw(Some([1; 32]))
        .try_fill_bytes(&mut [0u8; 16])
        .is_err());
}

#[test]
fn the_host_static_key_is_derived_from_the_mesh_key() {
    let a = HostKeys::from_signing_key(&mesh_key(7));
    let b = HostKeys::from_signing_key(&mesh_key(7));
    let c = HostKeys::from_signing_key(&mesh_key(8));
    assert_eq!(a.static_public(), b.static_public());
    assert_eq!(a.certificate(), b.certificate());
    assert_ne!(a.static_public(), c.static_public());
    // The static key is not the Ed25519 key's bytes and the certificate verifies.
    assert_ne!(a.static_secret.0, mesh_key(7).to_bytes());
    verify_certificate(a.certificate(), &a.static_public().0).unwrap();
    assert!(format!("{a:?}").contains(a.mesh_id()));
    assert!(!format!("{:?}", a.static_secret).contains(&format!("{}", a.static_secret.0[0])));
}

#[test]
fn static_public_keys_print_and_parse() {
    let p = device().public_key();
    let s = p.to_string();
    assert_eq!(s.len(), 43);
    assert_eq!(s.parse::<StaticPublic>(), Ok(p));
    assert!("abc".parse::<StaticPublic>().is_err());
    assert!("!!".parse::<StaticPublic>().is_err());
}

#[test]
fn join_requests_have_their_wire_shape_and_hide_secrets_in_debug() {
    let cases = [
        (
            invite_request(),
            r#"{"type":"invite","token":"ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG","device":{"name":"Pixel 8","platform":"browser"},"path":"relay"}"#,
        ),
        (
            rejoin_request(),
            r#"{"type":"device","device_id":"f446faf7bb60225a","path":"relay"}"#,
        ),
        (
            legacy_request(),
            r#"{"type":"device_key","device_id":"f446faf7bb60225a","device_key":"orR9EUC0hp7pHAZdR3xC3HjRri7oBsItDSwW2Veh_jE","path":"public"}"#,
        ),
    ];
    for (req, json) in cases {
        assert_eq!(String::from_utf8(req.to_bytes()).unwrap(), json);
        assert_eq!(JoinRequest::parse(json.as_bytes()), Ok(req.clone()));
        let dbg = format!("{req:?}");
        assert!(!dbg.contains(TOKEN) && !dbg.contains(LEGACY_KEY), "{dbg}");
    }
    assert!(matches!(
        JoinRequest::parse(br#"{"type":"device","path":"relay"}"#),
        Err(HandshakeError::BadJoinRequest { .. })
    ));
    assert!(matches!(
        JoinRequest::parse(&vec![b' '; MAX_JOIN_REQUEST_BYTES + 1]),
        Err(HandshakeError::TooLarge { .. })
    ));
}

#[test]
fn errors_name_what_is_wrong() {
    let e = HandshakeError::HostNotAuthenticated {
        expected: "aaa".into(),
        got: "bbb".into(),
        source_of_expectation: "the invite",
    };
    assert_eq!(
        e.to_string(),
        "the host is not the mesh aaa (the invite); it proved mesh bbb"
    );
    assert_eq!(
        malformed(Step::HostHello, 192, 192, 3).to_string(),
        "message 2 (host hello) must be exactly 192 bytes, got 3"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes into every read function: typed errors, never a panic, never success.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..4) {
        let keys = host_keys();
        let (client, msg1) = ClientHandshake::start(
            HostExpectation::TrustOnFirstUse, &invite_request(), &device(), entropy(1)).unwrap();
        // Stretch to a plausible size for the step now and then, so length checks pass.
        let sized = |len: usize| {
            let mut b = bytes.clone();
            b.resize(len, 0xa5);
            b
        };
        let input = match n {
            0 => bytes.clone(),
            1 => sized(CLIENT_HELLO_BYTES),
            2 => sized(HOST_HELLO_BYTES),
            _ => sized(JOIN_OVERHEAD_BYTES + bytes.len()),
        };
        // Message 1 has no authentication: any 32 bytes are an ephemeral key.
        let r = HostHandshake::new(keys, entropy(2)).read_client_hello(&input);
        prop_assert_eq!(r.is_ok(), input.len() == CLIENT_HELLO_BYTES);
        prop_assert!(client.read_host_hello(&input).is_err());
        let (awaiting, msg2) = HostHandshake::new(keys, entropy(2)).read_client_hello(&msg1).unwrap();
        let _ = msg2;
        prop_assert!(awaiting.read_join(&input).is_err());
        let mut wire = Wire::default();
        let mut s = handshake(&mut wire, keys, HostExpectation::TrustOnFirstUse, &invite_request()).unwrap();
        prop_assert!(s.client.channel.open(&input).is_err());
        prop_assert!(s.host.channel.open(&input).is_err());
        let _ = JoinRequest::parse(&input);
    }

    /// Any single-bit change anywhere in a session is detected.
    #[test]
    fn any_flipped_bit_is_detected(frame in 0usize..3, bit in 0usize..2048) {
        let keys = host_keys();
        let (client, msg1) = ClientHandshake::start(
            HostExpectation::TrustOnFirstUse, &invite_request(), &device(), entropy(1)).unwrap();
        let (host, mut msg2) = HostHandshake::new(keys, entropy(2)).read_client_hello(&msg1).unwrap();
        if frame == 0 {
            let i = bit % (msg2.len() * 8);
            msg2[i / 8] ^= 1 << (i % 8);
            prop_assert!(client.read_host_hello(&msg2).is_err());
            return Ok(());
        }
        let mut done = client.read_host_hello(&msg2).unwrap();
        if frame == 1 {
            let i = bit % (done.message.len() * 8);
            done.message[i / 8] ^= 1 << (i % 8);
            prop_assert!(host.read_join(&done.message).is_err());
            return Ok(());
        }
        let mut join = host.read_join(&done.message).unwrap();
        let mut f = join.channel.seal(b"{\"type\":\"peers\",\"peers\":[]}").unwrap();
        let i = bit % (f.len() * 8);
        f[i / 8] ^= 1 << (i % 8);
        prop_assert_eq!(done.channel.open(&f), Err(ChannelError::Decrypt));
    }
}
