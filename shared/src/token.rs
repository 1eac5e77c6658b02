//! Invite tokens: `ATM-` followed by ≥128 bits of CSPRNG output in an unambiguous alphabet.
//! STUB: the public API below is fixed; the implementation is being written.

use std::fmt;

/// Number of random bytes in a token (160 bits).
pub const TOKEN_BYTES: usize = 20;

/// A canonical invite token (`ATM-…`, uppercase, no separators after the prefix).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token must start with ATM-")]
    MissingPrefix,
    #[error("token has an invalid character {0:?}")]
    InvalidChar(char),
    #[error("token has {got} characters after ATM-, expected {expected}")]
    WrongLength { got: usize, expected: usize },
}

impl Token {
    /// Builds a token from CSPRNG bytes (the caller owns the randomness: `shared` does no I/O).
    pub fn from_entropy(_bytes: [u8; TOKEN_BYTES]) -> Token {
        todo!()
    }

    /// Parses a token as a person may type it: case-insensitive, spaces and hyphens ignored.
    pub fn parse(_s: &str) -> Result<Token, TokenError> {
        todo!()
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the canonical text: what the host stores.
    pub fn hash_hex(&self) -> String {
        todo!()
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
