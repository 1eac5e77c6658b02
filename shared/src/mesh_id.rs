//! Self-certifying mesh ids: a mesh id is derived from the host's Ed25519 public key, so a
//! relay can check that whoever registers a mesh holds its key, without any database.

use sha2::{Digest, Sha256};

/// Number of hash bytes kept in a mesh id (128 bits).
const MESH_ID_BYTES: usize = 16;

/// The mesh id of a host public key: lowercase unpadded base32 of the first 128 bits of
/// SHA-256("atmosphere-mesh-id-v1" ‖ key). 26 characters, URL-path safe.
pub fn mesh_id_from_public_key(public_key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"atmosphere-mesh-id-v1");
    h.update(public_key);
    let digest = h.finalize();
    data_encoding::BASE32_NOPAD
        .encode(&digest[..MESH_ID_BYTES])
        .to_ascii_lowercase()
}

/// Whether `s` has the shape of a mesh id (cheap check before any lookup).
pub fn is_valid_mesh_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable_and_key_dependent() {
        let a = mesh_id_from_public_key(&[1; 32]);
        assert_eq!(a, mesh_id_from_public_key(&[1; 32]));
        assert_ne!(a, mesh_id_from_public_key(&[2; 32]));
        assert!(is_valid_mesh_id(&a), "{a}");
        assert!(!is_valid_mesh_id("../etc"));
    }
}
