//! Token format: generation from entropy, typing-tolerant parsing, exact length, hashing.

use atmosphere_shared::token::{Token, TokenError, TOKEN_BYTES, TOKEN_CHARS};
use proptest::prelude::*;

#[test]
fn known_vectors() {
    assert_eq!(
        Token::from_entropy([0; TOKEN_BYTES]).as_str(),
        "ATM-00000000000000000000000000000000"
    );
    assert_eq!(
        Token::from_entropy([0xff; TOKEN_BYTES]).as_str(),
        "ATM-ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"
    );
    let mut b = [0u8; TOKEN_BYTES];
    b[TOKEN_BYTES - 1] = 1;
    assert_eq!(
        Token::from_entropy(b).as_str(),
        "ATM-00000000000000000000000000000001"
    );
    b[0] = 0x80; // the very first bit lands in the first character: 10000 = 16 = 'G'
    assert_eq!(
        Token::from_entropy(b).as_str(),
        "ATM-G0000000000000000000000000000001"
    );
}

/// An independent Crockford base32 encoder (data-encoding's generic machinery) must agree.
fn reference_encoding() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    spec.encoding().unwrap()
}

proptest! {
    #[test]
    fn entropy_encodes_like_reference_and_round_trips(bytes in any::<[u8; TOKEN_BYTES]>()) {
        let t = Token::from_entropy(bytes);
        prop_assert_eq!(t.as_str(), format!("ATM-{}", reference_encoding().encode(&bytes)));
        prop_assert_eq!(t.as_str().len(), 4 + TOKEN_CHARS);
        prop_assert_eq!(Token::parse(t.as_str()).unwrap(), t.clone());
        prop_assert_eq!(t.as_str().parse::<Token>().unwrap(), t);
    }

    #[test]
    fn typed_in_groups_and_lower_case_parses_to_the_same_token(
        bytes in any::<[u8; TOKEN_BYTES]>(),
        group in 3usize..8,
        sep in prop::sample::select(vec!["-", " ", "  ", " - "]),
    ) {
        let t = Token::from_entropy(bytes);
        let body = &t.as_str()[4..];
        let grouped: Vec<String> = body
            .as_bytes()
            .chunks(group)
            .map(|c| String::from_utf8(c.to_vec()).unwrap().to_lowercase())
            .collect();
        let typed = format!("  atm-{}\n", grouped.join(sep));
        prop_assert_eq!(Token::parse(&typed).unwrap(), t);
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,80}") {
        let _ = Token::parse(&s);
    }
}

#[test]
fn look_alike_letters_are_forgiven() {
    // O → 0, I and L → 1, in either case.
    let typed = format!("ATM-OoIiLl{}", "0".repeat(TOKEN_CHARS - 6));
    let t = Token::parse(&typed).unwrap();
    assert_eq!(
        t.as_str(),
        format!("ATM-001111{}", "0".repeat(TOKEN_CHARS - 6))
    );
    assert_eq!(t.as_str().len(), 4 + TOKEN_CHARS);
}

#[test]
fn prefix_may_be_typed_without_its_hyphen_or_in_lower_case() {
    let canon = "ATM-ABCDEFGHJKMNPQRSTVWXYZ0123456789";
    let canon = &canon[..4 + TOKEN_CHARS];
    let want = Token::parse(canon).unwrap();
    assert_eq!(Token::parse(&canon.replace("ATM-", "ATM")).unwrap(), want);
    assert_eq!(Token::parse(&canon.to_lowercase()).unwrap(), want);
    assert_eq!(
        Token::parse(&canon.replace("ATM-", "Atm - ")).unwrap(),
        want
    );
}

#[test]
fn wrong_length_is_reported_with_both_counts() {
    let ok = Token::from_entropy([7; TOKEN_BYTES]);
    let short = &ok.as_str()[..ok.as_str().len() - 1];
    assert_eq!(
        Token::parse(short),
        Err(TokenError::WrongLength {
            got: TOKEN_CHARS - 1,
            expected: TOKEN_CHARS
        })
    );
    let long = format!("{}7", ok.as_str());
    assert_eq!(
        Token::parse(&long),
        Err(TokenError::WrongLength {
            got: TOKEN_CHARS + 1,
            expected: TOKEN_CHARS
        })
    );
    // The original design's placeholder `ATM-XXX` is a token *shape*, not a valid token.
    assert_eq!(
        Token::parse("ATM-XXX"),
        Err(TokenError::WrongLength {
            got: 3,
            expected: TOKEN_CHARS
        })
    );
    assert!(Token::parse(short).unwrap_err().to_string().contains("31"));
}

#[test]
fn characters_outside_the_alphabet_are_named() {
    let mut s = Token::from_entropy([1; TOKEN_BYTES]).as_str().to_string();
    s.replace_range(10..11, "U"); // U is not in Crockford's alphabet
    assert_eq!(Token::parse(&s), Err(TokenError::InvalidChar('U')));
    s.replace_range(10..11, "!");
    assert_eq!(Token::parse(&s), Err(TokenError::InvalidChar('!')));
    s.replace_range(10..11, "é");
    assert_eq!(Token::parse(&s), Err(TokenError::InvalidChar('é')));
    assert!(Token::parse(&s).unwrap_err().to_string().contains('é'));
}

#[test]
fn empty_and_unprefixed_input() {
    assert_eq!(Token::parse(""), Err(TokenError::Empty));
    assert_eq!(Token::parse(" \t\n"), Err(TokenError::Empty));
    let body = &Token::from_entropy([9; TOKEN_BYTES]).as_str()[4..].to_string();
    assert_eq!(Token::parse(body), Err(TokenError::MissingPrefix));
    assert_eq!(Token::parse("AT"), Err(TokenError::MissingPrefix));
    assert_eq!(Token::parse("Aé-"), Err(TokenError::MissingPrefix)); // multi-byte: no panic
}

#[test]
fn hash_is_sha256_hex_of_the_canonical_text_and_stable() {
    let t = Token::from_entropy([0; TOKEN_BYTES]);
    // `printf 'ATM-00000000000000000000000000000000' | sha256sum`
    assert_eq!(
        t.hash_hex(),
        "85a969abc0586b343b2e628d47d42c8b3aac1e011118e305cdb2399e9f6cb6e1"
    );
    // Every way of typing it hashes to the same stored value.
    let typed = Token::parse("atm-oooo oooo-0000 0000 0000-0000 0000 0000").unwrap();
    assert_eq!(typed.hash_hex(), t.hash_hex());
    let other = Token::from_entropy([1; TOKEN_BYTES]);
    assert_ne!(other.hash_hex(), t.hash_hex());
    assert_eq!(other.hash_hex().len(), 64);
    assert!(other
        .hash_hex()
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

#[test]
fn debug_does_not_print_the_secret() {
    let t = Token::from_entropy([0xab; TOKEN_BYTES]);
    let dbg = format!("{t:?}");
    assert!(!dbg.contains(&t.as_str()[4..]), "{dbg}");
    assert_eq!(t.to_string(), t.as_str());
}
