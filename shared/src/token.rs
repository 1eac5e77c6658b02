//! Invite tokens: `ATM-` followed by 160 bits of CSPRNG output in Crockford base32.
//!
//! Crockford's alphabet (`0-9`, `A-Z` without `I`, `L`, `O`, `U`) is chosen because a
//! person may read a token off one screen and type it into another: it has no pair of
//! look-alike letters, and the decoder forgives the usual slips (`O` for `0`, `I`/`L` for
//! `1`, lower case, spaces or hyphens used to group characters). 20 bytes are exactly
//! 32 characters, so every 32-character string over the alphabet is a valid token and
//! parsing is a pure normalisation (no padding bits to check).
//!
//! `shared` does no I/O, so the caller supplies the random bytes (the server uses the OS
//! CSPRNG). The host stores only [`Token::hash_hex`], never the token itself.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Number of random bytes in a token (160 bits).
pub const TOKEN_BYTES: usize = 20;

/// The prefix every token starts with.
pub const TOKEN_PREFIX: &str = "ATM-";

/// Number of base32 characters after the prefix (`TOKEN_BYTES * 8 / 5`).
pub const TOKEN_CHARS: usize = TOKEN_BYTES * 8 / 5;

/// Crockford base32 alphabet: digits and upper-case letters without `I`, `L`, `O`, `U`.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A canonical invite token (`ATM-…`, uppercase, no separators after the prefix).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing (or only whitespace) was given.
    #[error("token is empty")]
    Empty,
    /// The text does not start with `ATM-` (case-insensitive).
    #[error("token must start with ATM-")]
    MissingPrefix,
    /// A character outside the token alphabet (after forgiving `O`, `I`, `L`).
    #[error("token has an invalid character {0:?}")]
    InvalidChar(char),
    /// The number of characters after the prefix (separators not counted) is wrong.
    #[error("token has {got} characters after ATM-, expected {expected}")]
    WrongLength {
        /// Characters found.
        got: usize,
        /// Characters required ([`TOKEN_CHARS`]).
        expected: usize,
    },
}

/// Maps a typed character to its canonical alphabet character, forgiving case and the
/// look-alikes Crockford defines (`O`→`0`, `I`/`L`→`1`). `None`: not in the alphabet.
fn canonical_char(c: char) -> Option<char> {
    let up = c.to_ascii_uppercase();
    match up {
        'O' => Some('0'),
        'I' | 'L' => Some('1'),
        // `U` is deliberately absent from Crockford's alphabet (accidental obscenities).
        _ if up.is_ascii() && ALPHABET.contains(&(up as u8)) => Some(up),
        _ => None,
    }
}

impl Token {
    /// Builds a token from CSPRNG bytes (the caller owns the randomness: `shared` does no I/O).
    pub fn from_entropy(bytes: [u8; TOKEN_BYTES]) -> Token {
        let mut s = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_CHARS);
        s.push_str(TOKEN_PREFIX);
        // 160 bits split into 32 groups of 5 bits, most significant first.
        let mut acc: u16 = 0;
        let mut bits = 0u32;
        for b in bytes {
            acc = (acc << 8) | u16::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                s.push(ALPHABET[usize::from((acc >> bits) & 0x1f)] as char);
            }
            // Keep only the bits not yet emitted so `acc` never overflows.
            acc &= (1u16 << bits) - 1;
        }
        debug_assert_eq!(bits, 0, "160 bits divide evenly into 5-bit groups");
        Token(s)
    }

    /// Parses a token as a person may type it: case-insensitive, spaces and hyphens
    /// ignored after the `ATM` prefix, `O` read as `0` and `I`/`L` as `1`. The length must
    /// be exact, so a truncated or doubled paste is reported rather than silently accepted.
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        // `get` (not slicing) so a multi-byte character at index 1..3 cannot panic.
        let rest = match s.get(..3) {
            Some(p) if p.eq_ignore_ascii_case("ATM") => &s[3..],
            _ => return Err(TokenError::MissingPrefix),
        };
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_CHARS);
        out.push_str(TOKEN_PREFIX);
        let mut got = 0usize;
        for c in rest.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let canon = canonical_char(c).ok_or(TokenError::InvalidChar(c))?;
            got += 1;
            // Only keep what a valid token can hold; still count the rest for the error.
            if got <= TOKEN_CHARS {
                out.push(canon);
            }
        }
        if got != TOKEN_CHARS {
            return Err(TokenError::WrongLength {
                got,
                expected: TOKEN_CHARS,
            });
        }
        Ok(Token(out))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the canonical text: what the host stores. Because it hashes the
    /// canonical form, every typing variant of a token maps to the same stored hash.
    pub fn hash_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&Sha256::digest(self.0.as_bytes()))
    }
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::parse(s)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a whole secret into logs.
        write!(f, "Token({}…)", &self.0[..self.0.len().min(8)])
    }
}
