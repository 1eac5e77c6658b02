//! Text that another person controls (member names and platforms, message bodies, reasons a
//! host or relay sends), made safe to print on a terminal or into a log line.
//!
//! A terminal acts on control characters: `ESC [ 2 J` clears the screen, `ESC ] 0 ; … BEL`
//! retitles the window, a C1 `CSI` (U+009B) does what `ESC [` does on many terminals, a
//! newline starts what looks like a new, forged line of output or log. [`printable`] shows
//! every such character as a visible escape instead (`\u{1b}`, `\n`, `\u{9b}`), and the
//! Unicode bidirectional overrides too (they reorder what a reader sees). Everything else,
//! including non-ASCII letters and emoji, passes unchanged, so ordinary text reads as typed.
//!
//! The one implementation for `atmosphere join`'s readable output, `atmosphere devices`'
//! table and the host's log fields that carry such text.

use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and bidirectional override written as a
/// visible escape; borrowed unchanged when there is none (the common case).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                _ => out.extend(c.escape_unicode()),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters (Unicode category Cc: C0, DEL, C1) and the bidirectional
/// embeddings, overrides, isolates and marks.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn ordinary_text_passes_unchanged_and_borrowed() {
        for s in ["hello", "Zoë's phone", "日本語 🎉", "a \\ b \"c\" 'd'", ""] {
            let p = printable(s);
            assert_eq!(p, s);
            assert!(matches!(p, std::borrow::Cow::Borrowed(_)), "{s:?}");
        }
    }

    #[test]
    fn escape_sequences_lose_their_escape_byte() {
        assert_eq!(printable("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(printable("\x1b]0;pwned\x07"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(printable("a\u{7f}b"), "a\\u{7f}b");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn newlines_cannot_start_a_forged_line() {
        let p = printable("bob\n2026-01-01T00:00:00Z  INFO admin logged in\r\tx");
        assert!(!p.contains('\n') && !p.contains('\r') && !p.contains('\t'));
        assert!(p.starts_with("bob\\n2026"));
        assert!(p.ends_with("\\r\\tx"));
    }

    #[test]
    fn bidi_overrides_are_shown() {
        assert_eq!(printable("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
    }

    #[test]
    fn no_control_character_survives_any_input() {
        for cp in 0u32..0x3000 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = format!("x{c}y");
            assert!(
                !printable(&s).chars().any(|c| c.is_control()),
                "U+{cp:04X} survived"
            );
        }
    }
}
