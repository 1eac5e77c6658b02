//! The part of the WHATWG URL Standard (<https://url.spec.whatwg.org/>) the link codec
//! ([`crate::link`]) needs: parsing a `ws`, `wss`, `http` or `https` URL into its host, its
//! path and whether it has a fragment (its port is checked, not kept), refusing what a
//! browser would refuse.
//!
//! # Why not the `url` crate
//!
//! The link codec runs in the browser bundle. `url` always links the IDNA (UTS 46) mapping
//! and normalisation tables, about 45 KB of the gzipped web bundle, to normalise non-ASCII
//! host names. The codec never needs a normalised host: it keeps every endpoint URL as
//! given and only asks whether it is valid, where its host is, and what its path is. The
//! host's relay code ([`crate::relay_proto::relay_name`], never in the browser) does compare
//! normalised names and still uses `url`.
//!
//! # What it does
//!
//! Exactly what `url` 2 (the same standard) does for these schemes, as far as the codec can
//! tell, for every URL whose host is ASCII: leading and trailing C0 controls and spaces are
//! trimmed and tabs and newlines removed; the scheme is case-insensitive; any run of `/` and
//! `\` may follow it (`ws:host`, `ws:\\host`); userinfo (`user:pass@`) is allowed; the host
//! is an IPv6 address in brackets, an IPv4 address in any form the standard reads
//! (`127.1`, `0x7f.0.0.1`, `2130706433`), or a domain (percent-decoded, lowercased; empty
//! or with a forbidden code point such as space, `%`, `<` or `^` it is refused); the port
//! is digits, at most 65535; the path's `.` and `..` segments (also as `%2e`) are resolved
//! and `\` separates segments. The unit tests compare all of this with `url` on generated
//! input.
//!
//! The one difference: a non-ASCII host name (or an ASCII `xn--` label) is not put through
//! IDNA: it is accepted as given, lowercased only in its ASCII letters, with full-width
//! ASCII and ideographic full stops read as ASCII (the only mapping kept). Any valid
//! internationalised name is therefore accepted, as before; a name IDNA would refuse is
//! accepted here and refused by the WebSocket client when it connects (browsers and the
//! native dialer apply IDNA themselves). No host name that `url` accepts is refused.

use percent_encoding::percent_decode_str;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A URL's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// A domain name: ASCII letters lowercased, percent-escapes decoded.
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// A parsed `ws`, `wss`, `http` or `https` URL: the parts the link codec reads (the port is
/// checked, not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebUrl {
    /// Lowercase: `ws`, `wss`, `http` or `https`.
    pub scheme: String,
    pub host: Host,
    /// The path's segments after `.`/`..` resolution, as written (not percent-encoded the
    /// way `url` serialises them): `/mesh/abc/` is `["mesh", "abc", ""]`, no path is `[""]`.
    pub path: Vec<String>,
    /// Whether the URL has a `#fragment` (even an empty one).
    pub fragment: bool,
}

/// Why a URL is refused. The messages are the `url` crate's, word for word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlError {
    /// No `scheme:` at the start.
    NoScheme,
    /// A valid scheme that is not `ws`, `wss`, `http` or `https` (lowercase).
    OtherScheme(String),
    EmptyHost,
    /// A forbidden code point in a domain, or percent-escapes that are not UTF-8.
    BadDomain,
    BadPort,
    BadIpv4,
    BadIpv6,
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UrlError::NoScheme => "relative URL without a base",
            UrlError::OtherScheme(_) => "not a ws, wss, http or https URL",
            UrlError::EmptyHost => "empty host",
            UrlError::BadDomain => "invalid international domain name",
            UrlError::BadPort => "invalid port number",
            UrlError::BadIpv4 => "invalid IPv4 address",
            UrlError::BadIpv6 => "invalid IPv6 address",
        })
    }
}

/// Ends of the authority (and of the host, port and userinfo in it) in a special URL.
fn is_authority_end(c: char) -> bool {
    matches!(c, '/' | '\\' | '?' | '#')
}

impl WebUrl {
    /// Parses `input` as the standard's basic URL parser does, without a base URL.
    pub fn parse(input: &str) -> Result<WebUrl, UrlError> {
        let trimmed = input.trim_matches(|c: char| c <= ' ');
        let cleaned: String;
        let s = if trimmed.contains(['\t', '\n', '\r']) {
            cleaned = trimmed.replace(['\t', '\n', '\r'], "");
            &cleaned
        } else {
            trimmed
        };

        let (scheme, rest) = split_scheme(s).ok_or(UrlError::NoScheme)?;
        if !matches!(scheme.as_str(), "ws" | "wss" | "http" | "https") {
            return Err(UrlError::OtherScheme(scheme));
        }
        // Special authority (ignore) slashes: any run of `/` and `\`.
        let rest = rest.trim_start_matches(['/', '\\']);

        // Userinfo ends at the last `@` before the authority ends.
        let auth_len = rest.find(is_authority_end).unwrap_or(rest.len());
        let rest = match rest[..auth_len].rfind('@') {
            // `@` right before the authority ends: userinfo, then no host.
            Some(at) if at + 1 == auth_len => return Err(UrlError::EmptyHost),
            Some(at) => &rest[at + 1..],
            None => rest,
        };

        // The host ends at the first `:` outside brackets.
        let mut in_brackets = false;
        let host_len = rest
            .char_indices()
            .find(|&(_, c)| match c {
                '[' => {
                    in_brackets = true;
                    false
                }
                ']' => {
                    in_brackets = false;
                    false
                }
                ':' => !in_brackets,
                c => is_authority_end(c),
            })
            .map_or(rest.len(), |(i, _)| i);
        let host_str = &rest[..host_len];
        if host_str.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        let host = parse_host(host_str)?;
        let mut rest = &rest[host_len..];

        if let Some(after_colon) = rest.strip_prefix(':') {
            // Digits up to the end of the authority (none is fine); leading zeros are fine
            // (`:0080`), the value is at most 65535.
            let end = after_colon
                .find(is_authority_end)
                .unwrap_or(after_colon.len());
            let mut port = 0u32;
            for b in after_colon[..end].bytes() {
                if !b.is_ascii_digit() {
                    return Err(UrlError::BadPort);
                }
                port = port * 10 + u32::from(b - b'0');
                if port > u32::from(u16::MAX) {
                    return Err(UrlError::BadPort);
                }
            }
            rest = &after_colon[end..];
        }

        // Path start: one leading `/` or `\` belongs to no segment.
        let rest = rest.strip_prefix(['/', '\\']).unwrap_or(rest);
        let path_len = rest.find(['?', '#']).unwrap_or(rest.len());
        Ok(WebUrl {
            scheme,
            host,
            path: resolve_path(&rest[..path_len]),
            fragment: rest[path_len..].contains('#'),
        })
    }
}

/// The lowercase scheme and what follows its `:`, if `s` starts with one
/// (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn split_scheme(s: &str) -> Option<(String, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// The path segments of `path` (after the first `/`, before `?`/`#`), with `.` and `..`
/// resolved as the standard's path state does.
fn resolve_path(path: &str) -> Vec<String> {
    let raw: Vec<&str> = path.split(['/', '\\']).collect();
    let last = raw.len() - 1;
    let mut out: Vec<String> = Vec::new();
    for (i, seg) in raw.into_iter().enumerate() {
        let lower = seg.to_ascii_lowercase();
        match lower.as_str() {
            ".." | ".%2e" | "%2e." | "%2e%2e" => {
                out.pop();
                if i == last {
                    out.push(String::new());
                }
            }
            "." | "%2e" => {
                if i == last {
                    out.push(String::new());
                }
            }
            _ => out.push(seg.to_string()),
        }
    }
    out
}

/// The host parser for special URLs: IPv6 in brackets, else a domain that may turn out to
/// be an IPv4 address.
fn parse_host(s: &str) -> Result<Host, UrlError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(UrlError::BadIpv6)?;
        return parse_ipv6(inner.as_bytes()).map(Host::Ipv6);
    }
    let bytes: Vec<u8> = percent_decode_str(s).collect();
    let decoded = String::from_utf8(bytes).map_err(|_| UrlError::BadDomain)?;
    let domain: String = decoded.chars().map(full_width_to_ascii).collect();
    if domain.chars().any(is_forbidden_domain_char) {
        return Err(UrlError::BadDomain);
    }
    let domain = domain.to_ascii_lowercase();
    if domain.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    if ends_in_a_number(&domain) {
        return parse_ipv4(&domain).map(Host::Ipv4);
    }
    Ok(Host::Domain(domain))
}

/// The one part of IDNA's mapping kept: full-width ASCII (U+FF01–U+FF5E) and the
/// ideographic full stops are their ASCII characters, as an input method may type an
/// address (`１９２．１６８．１．２` is 192.168.1.2).
fn full_width_to_ascii(c: char) -> char {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c),
        '\u{3002}' | '\u{ff61}' => '.',
        c => c,
    }
}

/// The standard's forbidden domain code points (what IDNA's URL deny list refuses): C0
/// controls, space, DEL and `#%/:<>?@[\]^|`.
fn is_forbidden_domain_char(c: char) -> bool {
    c <= ' ' || c == '\u{7f}' || "#%/:<>?@[\\]^|".contains(c)
}

/// Whether the domain's last label (ignoring one trailing dot) is a number, which makes
/// the whole host an IPv4 address or an error.
fn ends_in_a_number(domain: &str) -> bool {
    let mut labels = domain.rsplit('.');
    let mut last = labels.next().unwrap_or("");
    if last.is_empty() {
        match labels.next() {
            Some(l) => last = l,
            None => return false,
        }
    }
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// One part of an IPv4 address: decimal, `0x` hex or `0` octal. `None` if it is not a
/// number; `Some(None)` if it is one that overflows 32 bits.
fn parse_ipv4_number(s: &str) -> Option<Option<u32>> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() >= 2 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return Some(Some(0));
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(u32::from_str_radix(digits, radix).ok())
}

/// The standard's IPv4 parser (1 to 4 parts, the last filling the remaining bytes).
fn parse_ipv4(domain: &str) -> Result<Ipv4Addr, UrlError> {
    let mut parts: Vec<&str> = domain.split('.').collect();
    if parts.last() == Some(&"") {
        parts.pop();
    }
    if parts.len() > 4 {
        return Err(UrlError::BadIpv4);
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in parts {
        numbers.push(parse_ipv4_number(part).flatten().ok_or(UrlError::BadIpv4)?);
    }
    let last = numbers.pop().ok_or(UrlError::BadIpv4)?;
    if u64::from(last) > u64::from(u32::MAX) >> (8 * numbers.len())
        || numbers.iter().any(|&n| n > 255)
    {
        return Err(UrlError::BadIpv4);
    }
    let mut ip = last;
    for (i, n) in numbers.iter().enumerate() {
        ip += n << (8 * (3 - i));
    }
    Ok(Ipv4Addr::from(ip))
}

/// The standard's IPv6 parser (the text between the brackets), including `::` compression
/// and a trailing dotted IPv4 part.
fn parse_ipv6(input: &[u8]) -> Result<Ipv6Addr, UrlError> {
    const E: UrlError = UrlError::BadIpv6;
    let len = input.len();
    let mut pieces = [0u16; 8];
    let mut piece = 0;
    let mut compress = None;
    let mut i = 0;
    if len < 2 {
        return Err(E);
    }
    if input[0] == b':' {
        if input[1] != b':' {
            return Err(E);
        }
        i = 2;
        piece = 1;
        compress = Some(1);
    }
    let mut ipv4 = false;
    while i < len {
        if piece == 8 {
            return Err(E);
        }
        if input[i] == b':' {
            if compress.is_some() {
                return Err(E);
            }
            i += 1;
            piece += 1;
            compress = Some(piece);
            continue;
        }
        let start = i;
        let mut value = 0u16;
        while i < len.min(start + 4) {
            match (input[i] as char).to_digit(16) {
                Some(d) => {
                    value = value * 16 + d as u16;
                    i += 1;
                }
                None => break,
            }
        }
        if i < len {
            match input[i] {
                b'.' => {
                    if i == start || piece > 6 {
                        return Err(E);
                    }
                    i = start;
                    ipv4 = true;
                    break;
                }
                b':' => {
                    i += 1;
                    if i == len {
                        return Err(E);
                    }
                }
                _ => return Err(E),
            }
        }
        pieces[piece] = value;
        piece += 1;
    }
    if ipv4 {
        let mut seen = 0;
        while i < len {
            if seen > 0 {
                if seen < 4 && input[i] == b'.' {
                    i += 1;
                } else {
                    return Err(E);
                }
            }
            let mut part: Option<u16> = None;
            while i < len && input[i].is_ascii_digit() {
                let d = u16::from(input[i] - b'0');
                part = match part {
                    None => Some(d),
                    Some(0) => return Err(E), // no leading zero
                    Some(v) if v * 10 + d > 255 => return Err(E),
                    Some(v) => Some(v * 10 + d),
                };
                i += 1;
            }
            pieces[piece] = pieces[piece] * 0x100 + part.ok_or(E)?;
            seen += 1;
            if seen == 2 || seen == 4 {
                piece += 1;
            }
        }
        if seen != 4 {
            return Err(E);
        }
    }
    match compress {
        Some(c) => {
            // Move the pieces after `::` to the end.
            let moved = piece - c;
            pieces.copy_within(c..piece, 8 - moved);
            pieces[c..8 - moved].fill(0);
        }
        None if piece != 8 => return Err(E),
        None => {}
    }
    Ok(Ipv6Addr::from(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    use proptest::prelude::*;

    fn host(s: &str) -> Host {
        WebUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).host
    }

    #[test]
    fn ports_are_digits_up_to_65535() {
        for ok in [
            "ws://h:11451",
            "wss://h:443/x",
            "ws://h:",
            "ws://h:00000000000000000000011451",
            "ws://h:65535",
            "ws://h:0",
            "ws://h:1?x",
            "ws://h:1#x",
            "ws://h:1\\x",
            "ws://[::1]:8080",
        ] {
            assert!(WebUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://h:65536",
            "ws://h:99999999999999999999",
            "ws://h:1x",
            "ws://h:-1",
            "ws://h:+1",
            "ws://h:1:2",
            "ws://h: 1",
            "ws://[::1]:x",
        ] {
            assert_eq!(WebUrl::parse(bad), Err(UrlError::BadPort), "{bad}");
        }
    }

    #[test]
    fn ipv6_hosts() {
        let v6 = |s: &str| match host(s) {
            Host::Ipv6(ip) => ip,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(v6("ws://[::1]:11451"), Ipv6Addr::LOCALHOST);
        assert_eq!(v6("ws://[fd00::5]"), "fd00::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6("ws://[1:2:3:4:5:6:7:8]/"),
            "1:2:3:4:5:6:7:8".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6("ws://[::FFFF:192.168.0.1]"),
            "::ffff:192.168.0.1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6("ws://[1::]"), "1::".parse::<Ipv6Addr>().unwrap());
        for bad in [
            "ws://[::1",
            "ws://[]",
            "ws://[:1]",
            "ws://[1:2:3:4:5:6:7:8:9]",
            "ws://[::1::]",
            "ws://[12345::]",
            "ws://[::1.2.3]",
            "ws://[::01.2.3.4]",
            "ws://[::256.2.3.4]",
            "ws://[g::]",
            "ws://[1:2:3:4:5:6:7]",
        ] {
            assert_eq!(WebUrl::parse(bad), Err(UrlError::BadIpv6), "{bad}");
        }
    }

    #[test]
    fn ipv4_hosts_in_every_form_the_standard_reads() {
        for (s, ip) in [
            ("ws://127.0.0.1", [127, 0, 0, 1]),
            ("ws://127.1", [127, 0, 0, 1]),
            ("ws://0x7f.0.0.1", [127, 0, 0, 1]),
            ("ws://0177.0.0.1.", [127, 0, 0, 1]),
            ("ws://3232235777", [192, 168, 1, 1]),
            ("ws://192.168.1.1:8080/x", [192, 168, 1, 1]),
        ] {
            assert_eq!(host(s), Host::Ipv4(Ipv4Addr::from(ip)), "{s}");
        }
        for bad in [
            "ws://1.2.3.4.5",
            "ws://256.0.0.1",
            "ws://1.2.3.09",
            "ws://4294967296",
        ] {
            assert_eq!(WebUrl::parse(bad), Err(UrlError::BadIpv4), "{bad}");
        }
        // Not ending in a number: a domain.
        assert_eq!(host("ws://1.2.3.x"), Host::Domain("1.2.3.x".into()));
    }

    #[test]
    fn domains_are_lowercased_decoded_and_checked() {
        assert_eq!(
            host("WS://Home.Example:1"),
            Host::Domain("home.example".into())
        );
        assert_eq!(host("ws://h%41st/"), Host::Domain("hast".into()));
        assert_eq!(host("ws://user:pw@h/"), Host::Domain("h".into()));
        assert_eq!(host("ws:\\\\h\\x"), Host::Domain("h".into()));
        assert_eq!(host("ws:h"), Host::Domain("h".into()));
        for bad in [
            "ws://a b/",
            "ws://a%20b/",
            "ws://a%/",
            "ws://a^b",
            "ws://a<b",
            "ws://%ff",
        ] {
            assert_eq!(WebUrl::parse(bad), Err(UrlError::BadDomain), "{bad}");
        }
        for empty in [
            "ws://",
            "ws:///",
            "ws://:1",
            "ws://u@",
            "ws://u@/x",
            "ws://?",
        ] {
            assert_eq!(WebUrl::parse(empty), Err(UrlError::EmptyHost), "{empty}");
        }
    }

    #[test]
    fn internationalised_names_are_accepted_as_given() {
        // As before (the `url` crate accepts valid IDNs), just not normalised to punycode.
        assert_eq!(
            host("wss://Bücher.example/"),
            Host::Domain("bücher.example".into())
        );
        assert_eq!(
            host("ws://b%C3%BCcher.example"),
            Host::Domain("bücher.example".into())
        );
        assert_eq!(
            host("ws://xn--bcher-kva.example"),
            Host::Domain("xn--bcher-kva.example".into())
        );
        // Full-width ASCII, as an input method types it, is ASCII.
        assert_eq!(
            host("ws://１９２．１６８。１．２:1"),
            Host::Ipv4(Ipv4Addr::new(192, 168, 1, 2))
        );
        assert_eq!(
            host("ws://ＬＯＣＡＬＨＯＳＴ"),
            Host::Domain("localhost".into())
        );
        assert_eq!(WebUrl::parse("ws://a＃b"), Err(UrlError::BadDomain));
        // Still refused: forbidden code points, escapes that are not UTF-8.
        assert_eq!(WebUrl::parse("ws://bü cher/"), Err(UrlError::BadDomain));
        assert_eq!(WebUrl::parse("ws://b%FCcher/"), Err(UrlError::BadDomain));
    }

    #[test]
    fn paths_resolve_dot_segments() {
        let path = |s: &str| WebUrl::parse(s).unwrap().path;
        assert_eq!(path("ws://h"), [""]);
        assert_eq!(path("ws://h/mesh/abc"), ["mesh", "abc"]);
        assert_eq!(path("ws://h/mesh/abc/"), ["mesh", "abc", ""]);
        assert_eq!(path("ws://h/x/../mesh/./abc?q#f"), ["mesh", "abc"]);
        assert_eq!(path("ws://h/mesh/abc/%2E%2e"), ["mesh", ""]);
        assert_eq!(path("ws://h\\mesh\\abc"), ["mesh", "abc"]);
        assert_eq!(path("ws://h/../../a"), ["a"]);
    }

    #[test]
    fn schemes_and_fragments() {
        assert_eq!(WebUrl::parse("not a url"), Err(UrlError::NoScheme));
        assert_eq!(WebUrl::parse("1ws://h"), Err(UrlError::NoScheme));
        assert_eq!(
            WebUrl::parse("ftp://h"),
            Err(UrlError::OtherScheme("ftp".into()))
        );
        assert_eq!(WebUrl::parse("HTTPS://h").unwrap().scheme, "https");
        assert!(WebUrl::parse("ws://h/#").unwrap().fragment);
        assert!(WebUrl::parse("ws://h?a#b").unwrap().fragment);
        assert!(!WebUrl::parse("ws://h/?a").unwrap().fragment);
        // Tabs and newlines anywhere are ignored; surrounding spaces too.
        assert_eq!(
            WebUrl::parse(" ws://h\t.x\n/a\tb/ ").unwrap(),
            WebUrl::parse("ws://h.x/ab/").unwrap()
        );
    }

    // -----------------------------------------------------------------------------------
    // The same answers as the `url` crate, on generated input.

    /// What `url` says about `s`, in this module's terms.
    fn reference(s: &str) -> Result<WebUrl, String> {
        let u = url::Url::parse(s).map_err(|e| e.to_string())?;
        let host = match u.host() {
            Some(url::Host::Domain(d)) => Host::Domain(d.to_string()),
            Some(url::Host::Ipv4(ip)) => Host::Ipv4(ip),
            Some(url::Host::Ipv6(ip)) => Host::Ipv6(ip),
            None => return Err("no host".into()),
        };
        Ok(WebUrl {
            scheme: u.scheme().to_string(),
            host,
            path: u.path_segments().unwrap().map(str::to_string).collect(),
            fragment: u.fragment().is_some(),
        })
    }

    /// Host-ish text: labels, numbers in every radix, brackets, colons and escapes.
    fn host_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z]{1,6}",
            "[0-9]{1,11}",
            "0[xX][0-9a-fA-F]{0,9}",
            "0[0-9]{1,4}",
            "[0-9a-fA-F:]{0,12}",
            Just("[".to_string()),
            Just("]".to_string()),
            Just("::".to_string()),
            Just(".".to_string()),
            Just("@".to_string()),
            Just("-".to_string()),
            "%[0-9a-fA-F]{0,2}",
            "[ ^|<>%_~!$&'()*+,;=]",
        ];
        prop_oneof![
            3 => prop::collection::vec(piece, 0..7).prop_map(|v| v.concat()),
            1 => "\\[[0-9a-fA-F:.]{0,24}\\]?",
            1 => any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
            1 => any::<[u16; 8]>().prop_map(|p| format!(
                "[{:x}:{:X}::{:x}:{}.{}.{}.{}]",
                p[0], p[1], p[2], p[3] % 300, p[4] % 300, p[5] % 260, p[6] % 256
            )),
            1 => any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        ]
    }

    fn url_text() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                4 => Just("ws"),
                2 => Just("WSS"),
                1 => Just("http"),
                1 => Just("https"),
                1 => Just("w s"),
                1 => Just("")
            ],
            prop_oneof![
                8 => Just("://"),
                1 => Just(":"),
                1 => Just(":/"),
                1 => Just(":\\\\"),
                1 => Just(":///"),
                1 => Just("//")
            ],
            "([a-z:]{0,4}@){0,2}",
            host_text(),
            prop_oneof![
                2 => Just(String::new()),
                2 => ":[0-9]{0,6}",
                1 => "(:[0-9a-z]{0,7}){1,2}"
            ],
            "[a-z0-9./\\\\%2eE]{0,16}",
            "(\\?[a-z/.#]{0,6})?(#[a-z#/]{0,4})?",
        )
            .prop_map(|(scheme, sep, user, host, port, path, tail)| {
                format!("{scheme}{sep}{user}{host}{port}{path}{tail}")
            })
    }

    /// Whether `url`'s answer depends on IDNA's Unicode tables (the documented difference):
    /// non-ASCII text or an `xn--` label, also behind percent-escapes.
    fn needs_idna(s: &str) -> bool {
        let decoded = percent_decode_str(s)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        let valid_utf8 = !decoded.contains('\u{fffd}');
        (!decoded.is_ascii() && valid_utf8) || decoded.contains("xn--")
    }

    /// The WHATWG path percent-encode set, as `url` applies it.
    const PATH: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'#')
        .add(b'?')
        .add(b'{')
        .add(b'}');

    fn same_as_url(s: &str) -> Result<(), TestCaseError> {
        if needs_idna(s) {
            return Ok(());
        }
        match (WebUrl::parse(s), reference(s)) {
            (Ok(mut mine), Ok(theirs)) => {
                // `url` serialises the path percent-encoded; compare like with like.
                for seg in &mut mine.path {
                    *seg = utf8_percent_encode(seg, PATH).to_string();
                }
                prop_assert_eq!(mine, theirs, "{:?}", s)
            }
            (Err(UrlError::OtherScheme(_)), _) => {}
            (Err(mine), Err(theirs)) => prop_assert_eq!(mine.to_string(), theirs, "{:?}", s),
            (mine, theirs) => prop_assert!(false, "{:?}: {:?} but url says {:?}", s, mine, theirs),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn agrees_with_the_url_crate_on_url_shaped_text(s in url_text()) {
            same_as_url(&s)?;
        }

        #[test]
        fn agrees_with_the_url_crate_on_any_ascii(s in "(ws|wss|http)://[ -~]{0,40}") {
            same_as_url(&s)?;
        }

        #[test]
        fn accepts_every_non_ascii_host_the_url_crate_accepts(
            label in "[a-zé漢ü🙂\u{a0}\u{200b}\u{ff21}\u{3002}.-]{1,12}",
        ) {
            let s = format!("wss://{label}.example:1/x");
            if let Ok(theirs) = reference(&s) {
                let mine = WebUrl::parse(&s);
                prop_assert!(mine.is_ok(), "{:?}: {:?} but url says {:?}", s, mine, theirs);
                let mine = mine.unwrap();
                prop_assert_eq!(mine.path, theirs.path);
            }
        }
    }
}
