//! Secrets the host makes and checks: random ids and credentials from the OS CSPRNG, the
//! SHA-256 the store keeps instead of a secret, and the constant-time comparison of a
//! presented secret with the expected one.
//!
//! Every secret and id of the host comes from here (invite ids, device ids and keys, the
//! admin secret), so they all use the OS generator and one text encoding: lowercase hex or
//! URL-safe base64 without padding (both from `data-encoding`, as in `atmosphere-shared`).

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `N` bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Lowercase hex of `n` CSPRNG bytes (`2n` characters), e.g. device and invite ids.
pub fn random_hex(n: usize) -> String {
    data_encoding::HEXLOWER.encode(&random_vec(n))
}

/// URL-safe base64 without padding of `n` CSPRNG bytes, e.g. device keys and the admin
/// secret (characters that survive URLs, cookies and shells unquoted).
pub fn random_b64(n: usize) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&random_vec(n))
}

fn random_vec(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Lowercase hex SHA-256 of a secret: what the store keeps instead of the secret.
pub fn sha256_hex(s: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(s.as_bytes()))
}

/// Whether two secrets are equal, in time that does not depend on where they differ (only
/// on their lengths, which are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_lowercase_hex_and_url_safe_base64_without_padding() {
        let h = random_hex(8);
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        let k = random_b64(32);
        assert_eq!(k.len(), 43, "32 bytes are 43 characters without padding");
        assert!(k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        // The alphabet's last two characters are the URL-safe ones.
        assert_eq!(
            data_encoding::BASE64URL_NOPAD.encode(&[0xfb, 0xff, 0xbf]),
            "-_-_"
        );
        assert_ne!(random_b64(32), random_b64(32));
    }

    #[test]
    fn sha256_hex_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
