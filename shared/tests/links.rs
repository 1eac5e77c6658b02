//! Link codec: the original design's example links, v1 links, the web form, round trips of
//! arbitrary invites (proptest), and every malformed-link error.

use atmosphere_shared::link::{Endpoints, Invite, LinkError, MAX_LINK_LEN};
use atmosphere_shared::token::{Token, TOKEN_BYTES};
use atmosphere_shared::PathKind;
use proptest::prelude::*;

fn eps(local: Option<&str>, public: Option<&str>, relay: Option<&str>) -> Endpoints {
    Endpoints {
        local: local.map(str::to_string),
        public: public.map(str::to_string),
        relay: relay.map(str::to_string),
    }
}

fn spec_endpoints() -> Endpoints {
    eps(
        Some("ws://192.168.86.237:11451"),
        Some("ws://73.45.123.89:11451"),
        Some("wss://relay.atmosphere.io/mesh/abc123"),
    )
}

fn err(link: &str) -> LinkError {
    match Invite::parse(link) {
        Ok(inv) => panic!("{link:?} parsed as {inv:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// The original design's example links, verbatim.

/// The original design's `qr_data` with its `{...}` filled in by its own `endpoints` example.
const SPEC_V2_LINK: &str = r#"atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={"local":"ws://192.168.86.237:11451","public":"ws://73.45.123.89:11451","relay":"wss://relay.atmosphere.io/mesh/abc123"}"#;

#[test]
fn spec_v2_link_with_raw_json() {
    let inv = Invite::parse(SPEC_V2_LINK).unwrap();
    assert_eq!(inv, Invite::v2("ATM-XXX", "Home", spec_endpoints()));
    assert_eq!(
        inv.to_inspect_json(),
        r#"{"version":2,"token":"ATM-XXX","mesh_name":"Home","mesh_id":null,"endpoints":{"local":"ws://192.168.86.237:11451","public":"ws://73.45.123.89:11451","relay":"wss://relay.atmosphere.io/mesh/abc123"}}"#
    );
}

#[test]
fn spec_v2_link_with_the_pretty_printed_endpoints_block() {
    // The original design prints the endpoints object over several lines; pasted into a
    // link it is still JSON (whitespace between tokens).
    let link = "atmosphere://join?token=ATM-XXX&mesh=Home%20Mesh&endpoints={\n    \"local\": \"ws://192.168.86.237:11451\",\n    \"public\": \"ws://73.45.123.89:11451\",\n    \"relay\": \"wss://relay.atmosphere.io/mesh/abc123\"\n  }";
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv, Invite::v2("ATM-XXX", "Home Mesh", spec_endpoints()));
}

#[test]
fn spec_android_example_with_null_relay() {
    // The original design's Kotlin example: local and public, `relay = null`.
    let link = r#"atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={"local":"ws://192.168.86.237:11451","public":"ws://73.45.123.89:11451","relay":null}"#;
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv.endpoints.relay, None);
    let order: Vec<PathKind> = inv.endpoints.iter().map(|(p, _)| p).collect();
    assert_eq!(order, [PathKind::Local, PathKind::Public]);
    assert!(inv.to_inspect_json().ends_with(r#""relay":null}}"#));
}

#[test]
fn spec_qr_format_lines_verbatim() {
    // "New Format (v2)" and "Legacy Format (v1)" exactly as the original design prints them.
    let v2 = r#"atmosphere://join?token=ATM-XXX&mesh=NAME&endpoints={"local":"ws://...","public":"ws://...","relay":"wss://..."}"#;
    let v1 = "atmosphere://join?token=ATM-XXX&mesh=NAME&endpoint=ws://...";
    let inv2 = Invite::parse(v2).unwrap();
    assert_eq!(inv2.version, 2);
    assert_eq!(inv2.mesh_name, "NAME");
    assert_eq!(
        inv2.endpoints,
        eps(Some("ws://..."), Some("ws://..."), Some("wss://..."))
    );
    let inv1 = Invite::parse(v1).unwrap();
    assert_eq!(inv1.version, 1);
    assert_eq!(inv1.token, "ATM-XXX");
    assert_eq!(inv1.endpoints, eps(None, Some("ws://..."), None));
}

#[test]
fn spec_qr_data_placeholder_is_not_json() {
    // The original design's `qr_data` literally says `endpoints={...}`: a placeholder, not
    // JSON.
    let e = err("atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={...}");
    assert!(matches!(e, LinkError::BadEndpointsJson { .. }), "{e:?}");
    assert!(e.to_string().starts_with("endpoints:"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Encodings the parser must understand.

#[test]
fn generated_v2_link_is_percent_encoded_and_parses_back() {
    let inv = Invite::v2("ATM-XXX", "Tom & Jerry #1 100% +", spec_endpoints());
    let link = inv.to_v2_link();
    assert!(link.starts_with("atmosphere://join?token=ATM-XXX&mesh=Tom%20%26%20Jerry%20%231%20100%25%20%2B&endpoints=%7B%22local%22"), "{link}");
    assert!(!link.contains(['{', '"', ' ', '#']), "{link}");
    assert_eq!(Invite::parse(&link).unwrap(), inv);
}

#[test]
fn plus_and_percent_20_both_mean_space() {
    let a = Invite::parse(
        "atmosphere://join?token=ATM-XXX&mesh=Home+Mesh&endpoint=ws://10.0.0.2:11451",
    )
    .unwrap();
    let b = Invite::parse(
        "atmosphere://join?token=ATM-XXX&mesh=Home%20Mesh&endpoint=ws://10.0.0.2:11451",
    )
    .unwrap();
    assert_eq!(a.mesh_name, "Home Mesh");
    assert_eq!(a, b);
    // %2B is a real plus.
    let c =
        Invite::parse("atmosphere://join?token=ATM-XXX&mesh=C%2B%2B&endpoint=ws://10.0.0.2:11451")
            .unwrap();
    assert_eq!(c.mesh_name, "C++");
}

#[test]
fn python_urlencode_style_endpoints_with_plus_for_spaces() {
    // urllib.parse.urlencode({"endpoints": json.dumps(eps)}): spaces after ':' and ','.
    let link = "atmosphere://join?token=ATM-XXX&mesh=Home&endpoints=%7B%22local%22%3A+%22ws%3A%2F%2F192.168.86.237%3A11451%22%2C+%22public%22%3A+null%7D";
    let inv = Invite::parse(link).unwrap();
    assert_eq!(
        inv.endpoints,
        eps(Some("ws://192.168.86.237:11451"), None, None)
    );
}

#[test]
fn raw_json_with_ampersand_hash_and_equals_inside_strings() {
    let link = r#"atmosphere://join?endpoints={"relay":"wss://r.example/mesh/x?a=1&b=2","local":"ws://10.0.0.2:11451"}&token=ATM-XXX&mesh=Home&extra=1"#;
    let inv = Invite::parse(link).unwrap();
    assert_eq!(
        inv.endpoints.relay.as_deref(),
        Some("wss://r.example/mesh/x?a=1&b=2")
    );
    assert_eq!(inv.endpoints.local.as_deref(), Some("ws://10.0.0.2:11451"));
    assert_eq!(inv.mesh_name, "Home");
}

#[test]
fn browser_half_encoded_fragment() {
    // A browser's location.hash keeps `{` but turns `"` into %22 (and spaces into %20).
    let link = "http://192.168.86.237:11451/join#token=ATM-XXX&mesh=Home&endpoints={%22local%22:%20%22ws://192.168.86.237:11451%22,%22relay%22:null}";
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv.version, 2);
    assert_eq!(
        inv.endpoints,
        eps(Some("ws://192.168.86.237:11451"), None, None)
    );
}

#[test]
fn missing_keys_null_keys_empty_strings_and_unknown_keys() {
    let link = r#"atmosphere://join?token=ATM-XXX&mesh=M&endpoints={"public":"wss://h.example:443/","local":"","future":{"x":[1,2]}}&v=9&flag"#;
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv.endpoints, eps(None, Some("wss://h.example:443/"), None));
}

#[test]
fn parameters_in_any_order_and_keys_in_any_case() {
    let link = r#"atmosphere://JOIN?Mesh=Home&ENDPOINTS={"local":"ws://10.0.0.2:1"}&Token=atm-abc"#;
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv.token, "atm-abc"); // kept as given: the host decides validity
    assert_eq!(inv.mesh_name, "Home");
}

#[test]
fn surrounding_whitespace_is_ignored() {
    let inv = Invite::parse(&format!("  \n{SPEC_V2_LINK}\n ")).unwrap();
    assert_eq!(inv.endpoints, spec_endpoints());
}

// ---------------------------------------------------------------------------------------
// v1 links.

#[test]
fn v1_private_address_is_local_and_public_address_is_public() {
    let cases = [
        ("ws://192.168.86.237:11451", PathKind::Local),
        ("ws://10.1.2.3:11451", PathKind::Local),
        ("ws://172.16.0.9:11451", PathKind::Local),
        ("ws://127.0.0.1:11451", PathKind::Local),
        ("ws://169.254.1.1:11451", PathKind::Local),
        ("ws://[::1]:11451", PathKind::Local),
        ("ws://[fd00::5]:11451", PathKind::Local),
        ("ws://[fe80::1]:11451", PathKind::Local),
        ("ws://localhost:11451", PathKind::Local),
        ("ws://my-mac.local:11451", PathKind::Local),
        ("ws://73.45.123.89:11451", PathKind::Public),
        ("ws://[2001:db8::1]:11451", PathKind::Public),
        ("wss://home.example.com/", PathKind::Public),
        ("ws://172.32.0.1:11451", PathKind::Public), // just outside 172.16/12
    ];
    for (url, path) in cases {
        let link = format!("atmosphere://join?token=ATM-XXX&mesh=Home&endpoint={url}");
        let inv = Invite::parse(&link).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(inv.version, 1, "{url}");
        let got: Vec<(PathKind, &str)> = inv.endpoints.iter().collect();
        assert_eq!(got, [(path, url)], "{url}");
    }
}

#[test]
fn v1_generated_link_uses_the_legacy_endpoint() {
    let inv = Invite::v2("ATM-XXX", "Home", spec_endpoints());
    let v1 = inv.to_v1_link();
    assert_eq!(
        v1,
        "atmosphere://join?token=ATM-XXX&mesh=Home&endpoint=ws://73.45.123.89:11451"
    );
    let back = Invite::parse(&v1).unwrap();
    assert_eq!(back.version, 1);
    assert_eq!(
        back.endpoints,
        eps(None, Some("ws://73.45.123.89:11451"), None)
    );
    assert_eq!(
        back.to_inspect_json(),
        r#"{"version":1,"token":"ATM-XXX","mesh_name":"Home","mesh_id":null,"endpoints":{"local":null,"public":"ws://73.45.123.89:11451","relay":null}}"#
    );
}

#[test]
fn v2_endpoints_win_over_a_v1_endpoint_in_the_same_link() {
    let link = r#"atmosphere://join?token=ATM-XXX&mesh=H&endpoint=ws://73.45.123.89:1&endpoints={"relay":"wss://r.example/mesh/a"}"#;
    let inv = Invite::parse(link).unwrap();
    assert_eq!(inv.version, 2);
    assert_eq!(
        inv.endpoints,
        eps(None, None, Some("wss://r.example/mesh/a"))
    );
}

// ---------------------------------------------------------------------------------------
// The web form.

#[test]
fn web_link_fragment_and_query_forms() {
    let inv = Invite::v2("ATM-XXX", "Home", spec_endpoints());
    let web = inv.to_web_link("http://192.168.86.237:11451/");
    assert!(
        web.starts_with("http://192.168.86.237:11451/join#token=ATM-XXX&mesh=Home&endpoints=%7B"),
        "{web}"
    );
    assert_eq!(Invite::parse(&web).unwrap(), inv);
    let query = web.replacen("/join#", "/join?", 1);
    assert_eq!(Invite::parse(&query).unwrap(), inv);
    let sub = inv.to_web_link("https://mesh.example.com/atmosphere");
    assert!(
        sub.starts_with("https://mesh.example.com/atmosphere/join#"),
        "{sub}"
    );
    assert_eq!(Invite::parse(&sub).unwrap(), inv);
    let trailing = sub.replacen("/join#", "/join/#", 1);
    assert_eq!(Invite::parse(&trailing).unwrap(), inv);
}

#[test]
fn web_link_with_raw_json_and_v1_endpoint() {
    let raw = SPEC_V2_LINK.replace("atmosphere://join?", "https://host.example:8443/join#");
    assert_eq!(Invite::parse(&raw).unwrap().endpoints, spec_endpoints());
    let v1 = "http://[::1]:11451/join?token=ATM-XXX&mesh=Home&endpoint=ws://[::1]:11451";
    let inv = Invite::parse(v1).unwrap();
    assert_eq!(
        (inv.version, inv.endpoints.local.as_deref()),
        (1, Some("ws://[::1]:11451"))
    );
}

// ---------------------------------------------------------------------------------------
// Malformed links: each gives its own error, naming what is wrong.

const T: &str = "token=ATM-XXX&mesh=Home";

#[test]
fn non_websocket_endpoints_are_refused_naming_the_field() {
    let e = err(&format!(
        r#"atmosphere://join?{T}&endpoints={{"local":"ws://10.0.0.2:1","public":"http://73.45.123.89:11451"}}"#
    ));
    assert_eq!(
        e,
        LinkError::NonWebSocketEndpoint {
            field: "endpoints.public",
            scheme: "http".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "endpoints.public: only ws:// and wss:// endpoints are supported, found http://"
    );
    let e = err(&format!(
        r#"atmosphere://join?{T}&endpoints={{"relay":"https://relay.example/mesh/a"}}"#
    ));
    assert_eq!(
        e,
        LinkError::NonWebSocketEndpoint {
            field: "endpoints.relay",
            scheme: "https".into()
        }
    );
    let e = err(&format!("atmosphere://join?{T}&endpoint=ftp://10.0.0.2/"));
    assert_eq!(
        e,
        LinkError::NonWebSocketEndpoint {
            field: "endpoint",
            scheme: "ftp".into()
        }
    );
}

#[test]
fn unparseable_endpoint_urls_name_the_field() {
    for (json, field) in [
        (r#"{"local":"not a url"}"#, "endpoints.local"),
        (r#"{"public":"ws://"}"#, "endpoints.public"),
        (r#"{"relay":"wss://[::1"}"#, "endpoints.relay"),
        (r#"{"local":"ws://10.0.0.2:99999"}"#, "endpoints.local"),
        (r#"{"local":"ws://10.0.0.2:1/#frag"}"#, "endpoints.local"),
    ] {
        let e = err(&format!("atmosphere://join?{T}&endpoints={json}"));
        match &e {
            LinkError::BadEndpointUrl { field: f, .. } => assert_eq!(*f, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
        assert!(e.to_string().starts_with(field), "{e}");
    }
    let e = err(&format!("atmosphere://join?{T}&endpoint="));
    assert!(
        matches!(
            e,
            LinkError::BadEndpointUrl {
                field: "endpoint",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_endpoint_json() {
    for json in [
        r#"{"local":"ws://10.0.0.2:1""#, // never closed
        r#"{"local":}"#,
        "[1,2]",
        r#""ws://10.0.0.2:1""#,
        r#"{"local":5}"#,
        r#"{"public":["ws://a"]}"#,
        "%7B%22local%22",
        "",
        r#"{"local":"ws://10.0.0.2:1"}trailing"#,
    ] {
        let e = err(&format!("atmosphere://join?{T}&endpoints={json}"));
        assert!(
            matches!(e, LinkError::BadEndpointsJson { .. }),
            "{json}: {e:?}"
        );
        assert!(e.to_string().starts_with("endpoints: "), "{e}");
    }
}

#[test]
fn no_endpoint_at_all() {
    assert_eq!(
        err(&format!("atmosphere://join?{T}")),
        LinkError::MissingEndpoints
    );
    assert_eq!(
        err(&format!("atmosphere://join?{T}&endpoints={{}}")),
        LinkError::NoEndpoints
    );
    assert_eq!(
        err(&format!(
            r#"atmosphere://join?{T}&endpoints={{"local":null,"public":null,"relay":null}}"#
        )),
        LinkError::NoEndpoints
    );
    assert_eq!(
        err(&format!("atmosphere://join?{T}&endpoints=null")),
        LinkError::NoEndpoints
    );
}

#[test]
fn token_problems() {
    let e = "endpoint=ws://10.0.0.2:1";
    assert_eq!(
        err(&format!("atmosphere://join?mesh=Home&{e}")),
        LinkError::MissingToken
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=&mesh=Home&{e}")),
        LinkError::MissingToken
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=+%20&mesh=Home&{e}")),
        LinkError::MissingToken
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=XYZ-123&mesh=Home&{e}")),
        LinkError::BadTokenPrefix {
            token: "XYZ-123".into()
        }
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=ATM-1%0A2&mesh=Home&{e}")),
        LinkError::ControlCharacter { field: "token" }
    );
    assert_eq!(
        err(&format!(
            "atmosphere://join?token=ATM-1&token=ATM-2&mesh=Home&{e}"
        )),
        LinkError::DuplicateParameter { name: "token" }
    );
    // A bare token is not a link.
    assert_eq!(err("ATM-XXX"), LinkError::MissingScheme);
}

#[test]
fn mesh_problems() {
    let e = "endpoint=ws://10.0.0.2:1";
    assert_eq!(
        err(&format!("atmosphere://join?token=ATM-X&{e}")),
        LinkError::MissingMesh
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=ATM-X&mesh=&{e}")),
        LinkError::MissingMesh
    );
    assert_eq!(
        err(&format!("atmosphere://join?token=ATM-X&mesh=%20+&{e}")),
        LinkError::MissingMesh
    );
    // An escape sequence in a name could drive the terminal that prints it.
    assert_eq!(
        err(&format!("atmosphere://join?token=ATM-X&mesh=%1B%5B2J&{e}")),
        LinkError::ControlCharacter { field: "mesh" }
    );
}

#[test]
fn bad_percent_encoding_names_the_field() {
    let e = "endpoint=ws://10.0.0.2:1";
    for (link, field) in [
        (
            format!("atmosphere://join?token=ATM-X&mesh=100%&{e}"),
            "mesh",
        ),
        (
            format!("atmosphere://join?token=ATM-X&mesh=%zz&{e}"),
            "mesh",
        ),
        (
            format!("atmosphere://join?token=ATM-X&mesh=%FF&{e}"),
            "mesh",
        ), // not UTF-8
        (
            format!("atmosphere://join?token=ATM-X&mesh=%E2%82&{e}"),
            "mesh",
        ), // truncated UTF-8
        (
            format!("atmosphere://join?token=ATM-%G1&mesh=M&{e}"),
            "token",
        ),
        (
            "atmosphere://join?token=ATM-X&mesh=M&endpoint=ws://10.0.0.2:1/%".to_string(),
            "endpoint",
        ),
        (
            format!("atmosphere://join?{T}&endpoints=%7B%22local%22%3A%22ws%3A%2F%2Fa%22%"),
            "endpoints",
        ),
    ] {
        match err(&link) {
            LinkError::BadPercentEncoding { field: f, .. } => assert_eq!(f, field, "{link}"),
            other => panic!("{link}: {other:?}"),
        }
    }
    let msg = err(&format!("atmosphere://join?token=ATM-X&mesh=100%&{e}")).to_string();
    assert!(msg.starts_with("mesh: bad percent-encoding"), "{msg}");
}

#[test]
fn wrong_scheme_or_not_a_join_link() {
    let q = format!("{T}&endpoint=ws://10.0.0.2:1");
    assert_eq!(
        err(&format!("ftp://join?{q}")),
        LinkError::UnsupportedScheme {
            scheme: "ftp".into()
        }
    );
    assert_eq!(
        err(&format!("ws://10.0.0.2/join?{q}")),
        LinkError::UnsupportedScheme {
            scheme: "ws".into()
        }
    );
    assert_eq!(
        err(&format!("atmosphere://leave?{q}")),
        LinkError::NotAJoinLink {
            found: "leave".into()
        }
    );
    assert_eq!(
        err(&format!("http://10.0.0.2:11451/admin#{q}")),
        LinkError::NotAJoinLink {
            found: "/admin".into()
        }
    );
    assert_eq!(
        err(&format!("http://10.0.0.2:11451/#{q}")),
        LinkError::NotAJoinLink { found: "/".into() }
    );
    assert!(matches!(
        err(&format!("http://:11451/join#{q}")),
        LinkError::BadWebHost { .. }
    ));
    assert!(matches!(
        err(&format!("https://exa mple.com/join#{q}")),
        LinkError::BadWebHost { .. }
    ));
    assert_eq!(err(&format!("join?{q}")), LinkError::MissingScheme);
    assert_eq!(err("hello world"), LinkError::MissingScheme);
    assert_eq!(err(&format!("token=ATM-X&{q}")), LinkError::MissingScheme);
}

#[test]
fn empty_and_huge_input() {
    assert_eq!(err(""), LinkError::Empty);
    assert_eq!(err(" \n\t "), LinkError::Empty);
    let huge = format!(
        "atmosphere://join?{T}&endpoint=ws://10.0.0.2:1&pad={}",
        "a".repeat(MAX_LINK_LEN)
    );
    assert_eq!(
        err(&huge),
        LinkError::TooLong {
            len: huge.len(),
            max: MAX_LINK_LEN
        }
    );
    // Just under the limit still parses (unknown padding is ignored).
    let base = format!("atmosphere://join?{T}&endpoint=ws://10.0.0.2:1&pad=");
    let fits = format!("{base}{}", "a".repeat(MAX_LINK_LEN - base.len()));
    assert_eq!(fits.len(), MAX_LINK_LEN);
    assert!(Invite::parse(&fits).is_ok());
}

#[test]
fn error_messages_are_one_line_even_for_hostile_input() {
    let hostile = "atmosphere://le\nave\u{1b}[2J?x";
    let msg = err(hostile).to_string();
    assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg:?}");
    let long_scheme = format!("{}://join", "x".repeat(1000));
    assert!(err(&long_scheme).to_string().len() < 200);
}

// ---------------------------------------------------------------------------------------
// Round trips of arbitrary invites.

fn mesh_name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Heavy on the characters that break naive codecs.
        "[ &#%+=?{}\"'/:@,;~\\\\a-zA-Z0-9éü漢字🙂\u{a0}\u{200b}]{1,30}",
        // Anything printable, any script.
        "[^\\p{Cc}]{1,40}",
    ]
    .prop_filter("a name needs a visible character", |s| !s.trim().is_empty())
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,6}){0,2}",
        Just("[::1]".to_string()),
        Just("[2001:db8::7]".to_string()),
    ]
}

fn endpoint_url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["ws", "wss"]),
        host(),
        prop::option::of(1u16..),
        // Paths and queries with the characters a relay URL might carry, `&` included.
        "(/[a-zA-Z0-9_.~-]{0,12}){0,3}(\\?[a-z]{1,3}=[a-z0-9%]{0,4}(&[a-z]=[0-9]{1,3}){0,2})?",
    )
        .prop_map(|(scheme, host, port, path)| match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        })
        .prop_filter("must be a valid URL", |u| url::Url::parse(u).is_ok())
}

fn endpoints() -> impl Strategy<Value = Endpoints> {
    (
        prop::option::of(endpoint_url()),
        prop::option::of(endpoint_url()),
        prop::option::of(endpoint_url()),
    )
        .prop_map(|(local, public, relay)| Endpoints {
            local,
            public,
            relay,
        })
        .prop_filter("at least one endpoint", |e| e.iter().next().is_some())
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; TOKEN_BYTES]>().prop_map(|b| Token::from_entropy(b).as_str().to_string()),
        "(ATM|atm|Atm)-[A-Za-z0-9]{1,40}",
    ]
}

fn invite() -> impl Strategy<Value = Invite> {
    (token(), mesh_name(), endpoints()).prop_map(|(t, m, e)| Invite::v2(t, m, e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v2_link_round_trips(inv in invite()) {
        let link = inv.to_v2_link();
        prop_assert_eq!(Invite::parse(&link).unwrap(), inv);
    }

    #[test]
    fn web_link_round_trips(inv in invite(), base in prop::sample::select(vec![
        "http://192.168.86.237:11451", "https://mesh.example.com/", "http://[::1]:8080/app",
    ])) {
        let link = inv.to_web_link(base);
        prop_assert_eq!(Invite::parse(&link).unwrap(), inv.clone());
        // The `?` form carries the same parameters.
        let query = link.replacen("/join#", "/join?", 1);
        prop_assert_eq!(Invite::parse(&query).unwrap(), inv);
    }

    #[test]
    fn raw_and_half_encoded_json_round_trip(inv in invite()) {
        // What a hand-written link (raw JSON, as in the original design's examples) or a
        // browser's location.hash looks like.
        let json = serde_json::to_string(&inv.endpoints).unwrap();
        let mesh: String = url::form_urlencoded::byte_serialize(inv.mesh_name.as_bytes()).collect();
        let token: String = url::form_urlencoded::byte_serialize(inv.token.as_bytes()).collect();
        let raw = format!("atmosphere://join?token={token}&mesh={mesh}&endpoints={json}");
        prop_assert_eq!(Invite::parse(&raw).unwrap(), inv.clone());
        // A `%XX` already inside an endpoint URL is indistinguishable from one a browser
        // added (documented in link.rs); only the raw form can carry those exactly.
        if json.contains('%') {
            return Ok(());
        }
        let half = format!("http://h.example/join#token={token}&mesh={mesh}&endpoints={}", json.replace('"', "%22"));
        prop_assert_eq!(Invite::parse(&half).unwrap(), inv.clone());
        // Exactly what a browser's location.href holds after opening the raw link (the
        // url crate implements the same WHATWG percent-encode sets).
        for sep in ['#', '?'] {
            let typed = format!("http://192.168.86.237:11451/join{sep}token={token}&mesh={mesh}&endpoints={json}");
            let href = url::Url::parse(&typed).unwrap().to_string();
            prop_assert_eq!(Invite::parse(&href).unwrap(), inv.clone(), "{}", href);
        }
    }

    #[test]
    fn v1_link_keeps_the_legacy_endpoint(inv in invite()) {
        let back = Invite::parse(&inv.to_v1_link()).unwrap();
        prop_assert_eq!(back.version, 1);
        prop_assert_eq!(&back.token, &inv.token);
        prop_assert_eq!(&back.mesh_name, &inv.mesh_name);
        let got: Vec<&str> = back.endpoints.iter().map(|(_, u)| u).collect();
        prop_assert_eq!(got, vec![inv.endpoints.legacy().unwrap()]);
        prop_assert!(back.endpoints.relay.is_none());
    }

    #[test]
    fn inspect_json_is_the_contract_shape(inv in invite()) {
        let v: serde_json::Value = serde_json::from_str(&inv.to_inspect_json()).unwrap();
        prop_assert_eq!(&v["version"], &serde_json::json!(2));
        prop_assert_eq!(v["token"].as_str(), Some(inv.token.as_str()));
        prop_assert_eq!(v["mesh_name"].as_str(), Some(inv.mesh_name.as_str()));
        for p in PathKind::ENDPOINTS {
            // Every key present; null where the path is missing.
            prop_assert!(v["endpoints"].as_object().unwrap().contains_key(p.as_str()));
            prop_assert_eq!(v["endpoints"][p.as_str()].as_str(), inv.endpoints.get(p));
        }
        prop_assert!(!inv.to_inspect_json().contains('\n'));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(s in "\\PC{0,300}") {
        let _ = Invite::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_mangled_links(
        inv in invite(),
        cut in any::<prop::sample::Index>(),
        insert in "[%{}\"&=#?+\\\\\\[\\]é]{0,3}",
    ) {
        for link in [inv.to_v2_link(), SPEC_V2_LINK.to_string()] {
            let mut at = cut.index(link.len() + 1);
            while !link.is_char_boundary(at) { at -= 1; }
            let _ = Invite::parse(&link[..at]);
            let _ = Invite::parse(&format!("{}{insert}{}", &link[..at], &link[at..]));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The mesh id a client checks in the handshake.

const MESH_ID: &str = "yu3ed7b77d4tkz2nk4hgmx776e";

#[test]
fn links_carry_the_mesh_id_and_old_links_still_parse() {
    let inv = Invite::v2(
        "ATM-XXX",
        "Home",
        eps(Some("ws://192.168.1.2:11451/ws"), None, None),
    )
    .with_mesh_id(MESH_ID);
    for link in [
        inv.to_v2_link(),
        inv.to_v1_link(),
        inv.to_web_link("http://h:1"),
    ] {
        assert!(link.contains(&format!("&id={MESH_ID}")), "{link}");
        let back = Invite::parse(&link).unwrap();
        assert_eq!(back.mesh_id.as_deref(), Some(MESH_ID), "{link}");
        assert_eq!(back.expected_mesh_id().as_deref(), Some(MESH_ID));
    }
    assert!(inv
        .to_inspect_json()
        .contains(&format!(r#""mesh_id":"{MESH_ID}""#)));
    // An upper-case id (typed from a screen) is the same id.
    let upper = format!(
        "atmosphere://join?token=ATM-X&mesh=H&id={}&endpoint=ws://h:1",
        MESH_ID.to_uppercase()
    );
    assert_eq!(
        Invite::parse(&upper).unwrap().mesh_id.as_deref(),
        Some(MESH_ID)
    );
    // A link of an earlier version has none, and says so.
    let old = Invite::parse(SPEC_V2_LINK).unwrap();
    assert_eq!(old.mesh_id, None);
}

#[test]
fn a_relay_endpoint_names_the_mesh_when_the_link_does_not() {
    let relay = format!("wss://relay.example/mesh/{MESH_ID}");
    let inv = Invite::v2("ATM-X", "Home", eps(None, None, Some(&relay)));
    assert_eq!(inv.expected_mesh_id().as_deref(), Some(MESH_ID));
    // The spec example's relay path is not a mesh id: nothing is expected.
    assert_eq!(
        Invite::parse(SPEC_V2_LINK).unwrap().expected_mesh_id(),
        None
    );
}

#[test]
fn a_bad_mesh_id_is_refused_with_its_name() {
    for bad in ["short", "../../etc/passwd", "yu3ed7b77d4tkz2nk4hgmx776e0"] {
        let link = format!("atmosphere://join?token=ATM-X&mesh=H&id={bad}&endpoint=ws://h:1");
        let e = Invite::parse(&link).unwrap_err();
        assert!(matches!(e, LinkError::BadMeshId { .. }), "{bad}: {e:?}");
        assert!(e.to_string().contains("id="), "{e}");
    }
    let twice =
        format!("atmosphere://join?token=ATM-X&mesh=H&id={MESH_ID}&id={MESH_ID}&endpoint=ws://h:1");
    assert!(matches!(
        Invite::parse(&twice),
        Err(LinkError::DuplicateParameter { name: "id" })
    ));
}

// ---------------------------------------------------------------------------------------
// Endpoint and web-link hosts: what the URL parser accepts (IPv4 in every form, IPv6,
// internationalised names, ports) and how a v1 endpoint's host is filed.

#[test]
fn v1_hosts_in_every_address_form_are_filed_by_what_they_are() {
    let cases = [
        ("ws://127.1:11451", PathKind::Local),
        ("ws://0x7f.0.0.1:11451", PathKind::Local),
        ("ws://3232235777:11451", PathKind::Local), // 192.168.1.1
        ("ws://0300.0250.1.1", PathKind::Local),    // octal 192.168.1.1
        ("ws://[::ffff:192.168.1.2]:11451", PathKind::Local),
        ("ws://[::FFFF:c0a8:102]:11451", PathKind::Local),
        ("ws://[0:0:0:0:0:0:0:1]:11451", PathKind::Local),
        ("ws://LOCALHOST:1", PathKind::Local),
        ("ws://printer.LOCAL.:1", PathKind::Local),
        ("ws://app.localhost/ws", PathKind::Local),
        ("ws://user:pw@192.168.1.2:11451", PathKind::Local),
        ("ws://１９２．１６８．１．２:11451", PathKind::Local), // typed full-width
        ("ws://ｌｏｃａｌｈｏｓｔ:11451", PathKind::Local),
        ("ws://[::ffff:8.8.8.8]:11451", PathKind::Public),
        ("ws://8.8.8.8.:1", PathKind::Public),
        ("ws://local:1", PathKind::Public),
        ("ws://notlocal:1", PathKind::Public),
    ];
    for (url, path) in cases {
        let link = format!("atmosphere://join?token=ATM-XXX&mesh=Home&endpoint={url}");
        let inv = Invite::parse(&link).unwrap_or_else(|e| panic!("{url}: {e}"));
        let got: Vec<(PathKind, &str)> = inv.endpoints.iter().collect();
        assert_eq!(got, [(path, url)], "{url}");
    }
}

#[test]
fn endpoint_hosts_and_ports_the_url_parser_refuses() {
    for (url, why) in [
        ("ws://[fe80::1%25eth0]:1", "invalid IPv6 address"),
        ("ws://[::1", "invalid IPv6 address"),
        ("ws://[1:2:3:4:5:6:7:8:9]", "invalid IPv6 address"),
        ("ws://[::1]:65536", "invalid port number"),
        ("ws://h:0x50", "invalid port number"),
        ("ws://h:8080:1", "invalid port number"),
        ("ws://256.1.1.1:1", "invalid IPv4 address"),
        ("ws://1.2.3.4.5", "invalid IPv4 address"),
        ("ws://h%2Fx:1", "invalid international domain name"),
        ("ws://a^b:1", "invalid international domain name"),
        ("ws://%FF.example", "invalid international domain name"),
        ("ws://user@:1", "empty host"),
    ] {
        let json = serde_json::json!({ "local": url }).to_string();
        let e = err(&format!("atmosphere://join?{T}&endpoints={json}"));
        assert_eq!(
            e,
            LinkError::BadEndpointUrl {
                field: "endpoints.local",
                reason: why.into()
            },
            "{url}"
        );
    }
    // Ports up to 65535, with or without leading zeros; an empty port is no port.
    for url in [
        "ws://h:65535",
        "ws://h:011451",
        "ws://h:",
        "wss://[::1]:443/ws",
    ] {
        let json = serde_json::json!({ "public": url }).to_string();
        let inv = Invite::parse(&format!("atmosphere://join?{T}&endpoints={json}"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(inv.endpoints.public.as_deref(), Some(url));
    }
}

#[test]
fn internationalised_host_names_are_accepted_and_kept_as_written() {
    for (url, path) in [
        ("wss://bücher.example/mesh/x", PathKind::Public),
        ("ws://drücker.local:11451", PathKind::Local),
        ("ws://xn--drcker-kva.local:11451", PathKind::Local),
        ("ws://b%C3%BCcher.example", PathKind::Public),
        ("ws://例え.テスト:1", PathKind::Public),
    ] {
        let link = format!(
            "atmosphere://join?token=ATM-XXX&mesh=Home&endpoint={}",
            url.replace('%', "%25")
        );
        let inv = Invite::parse(&link).unwrap_or_else(|e| panic!("{url}: {e}"));
        let got: Vec<(PathKind, &str)> = inv.endpoints.iter().collect();
        assert_eq!(got, [(path, url)], "{url}");
        // The v2 form keeps the text as written, and round-trips.
        let v2 = Invite::v2("ATM-XXX", "Home", eps(None, None, Some(url)));
        assert_eq!(Invite::parse(&v2.to_v2_link()).unwrap(), v2, "{url}");
    }
    let web = Invite::v2("ATM-XXX", "Home", spec_endpoints());
    let link = web.to_web_link("https://maison.café:8443/atmosphere");
    assert_eq!(Invite::parse(&link).unwrap(), web);
}

#[test]
fn web_link_hosts_are_checked_like_endpoint_hosts() {
    let q = "token=ATM-XXX&mesh=Home&endpoint=ws://10.0.0.2:1";
    for ok in [
        "http://[::1]/join",
        "http://[2001:db8::1]:8080/x/join/",
        "https://user@host.example/join",
        "HTTPS://Host.Example:443/join",
        "http://127.1:11451/join",
    ] {
        assert!(Invite::parse(&format!("{ok}#{q}")).is_ok(), "{ok}");
    }
    for bad in [
        "http://[::1/join",
        "http://host:99999/join",
        "http://host:12ab/join",
        "http://999.1.1.1/join",
        "http://a|b/join",
        "http://@/join",
    ] {
        assert!(
            matches!(
                Invite::parse(&format!("{bad}#{q}")),
                Err(LinkError::BadWebHost { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn the_relay_path_names_the_mesh_after_dot_segments_are_resolved() {
    for (relay, expected) in [
        (format!("wss://r.example/mesh/{MESH_ID}"), Some(MESH_ID)),
        (
            format!("wss://r.example/x/../mesh/./{MESH_ID}"),
            Some(MESH_ID),
        ),
        (format!("wss://r.example\\mesh\\{MESH_ID}"), Some(MESH_ID)),
        (
            format!("wss://r.example:8443/mesh/{MESH_ID}?v=1#"),
            Some(MESH_ID),
        ),
        (
            format!("wss://r.example/relay/mesh/{MESH_ID}"),
            Some(MESH_ID),
        ),
        (format!("wss://r.example/mesh/{MESH_ID}/"), None),
        (format!("wss://r.example/mesh/{MESH_ID}/.."), None),
        (format!("wss://r.example/{MESH_ID}"), None),
        (format!("wss://r.example/Mesh/{MESH_ID}"), None),
        (
            format!("wss://r.example/mesh/{}", MESH_ID.to_uppercase()),
            None,
        ),
        (format!("wss://r.example:99999/mesh/{MESH_ID}"), None),
    ] {
        let inv = Invite::v2("ATM-X", "Home", eps(None, None, Some(&relay)));
        assert_eq!(inv.expected_mesh_id().as_deref(), expected, "{relay}");
    }
}
