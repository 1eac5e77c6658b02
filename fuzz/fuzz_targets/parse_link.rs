//! Fuzz target for the invite link parser and the token parser.
//!
//! Beyond "never panics", it checks the codec's round-trip invariants on every input that
//! parses: the links the generators write from a decoded invite decode to the same invite,
//! and the inspect JSON is valid JSON. A token that parses is canonical (parsing it again
//! is the identity).

#![no_main]

use atmosphere_shared::link::{Invite, MAX_LINK_LEN};
use atmosphere_shared::token::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(t) = Token::parse(s) {
        assert_eq!(Token::parse(t.as_str()).as_ref(), Ok(&t));
        assert_eq!(t.hash_hex().len(), 64);
    }

    let Ok(inv) = Invite::parse(s) else {
        return;
    };
    assert!(inv.version == 1 || inv.version == 2);
    assert!(inv.endpoints.iter().next().is_some());
    let json: serde_json::Value =
        serde_json::from_str(&inv.to_inspect_json()).expect("inspect JSON is JSON");
    assert_eq!(json["mesh_name"].as_str(), Some(inv.mesh_name.as_str()));

    let v2 = Invite {
        version: 2,
        ..inv.clone()
    };
    for link in [
        inv.to_v2_link(),
        inv.to_web_link("http://192.168.1.2:11451"),
    ] {
        // Encoding can triple the length; past the limit the parser refuses by design.
        if link.len() <= MAX_LINK_LEN {
            assert_eq!(Invite::parse(&link).as_ref(), Ok(&v2), "{link}");
        }
    }
    let v1 = inv.to_v1_link();
    if v1.len() <= MAX_LINK_LEN {
        let back = Invite::parse(&v1).expect("generated v1 link parses");
        assert_eq!(back.version, 1);
        assert_eq!((&back.token, &back.mesh_name), (&inv.token, &inv.mesh_name));
    }
});
