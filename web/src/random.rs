//! Secrets from the browser's CSPRNG, `crypto.getRandomValues`: 32 fresh bytes for each
//! handshake's ephemeral key ([`Entropy`](atmosphere_shared::handshake::Entropy)) and for a
//! new device's static key. There is no fallback (`Math.random` is not a CSPRNG): without
//! it the page says so and does not join.

use std::fmt;

/// The browser could not produce random bytes (no `window.crypto`, or it threw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCsprng(String);

impl fmt::Display for NoCsprng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this browser cannot generate secure random numbers (crypto.getRandomValues: {})",
            self.0
        )
    }
}

/// 32 bytes from `crypto.getRandomValues`.
pub fn bytes32() -> Result<[u8; 32], NoCsprng> {
    let why = |e: wasm_bindgen::JsValue| {
        NoCsprng(
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| "unavailable".into()),
        )
    };
    let crypto = web_sys::window()
        .ok_or_else(|| NoCsprng("no window".into()))?
        .crypto()
        .map_err(why)?;
    let mut bytes = [0u8; 32];
    crypto
        .get_random_values_with_u8_array(&mut bytes)
        .map_err(why)?;
    Ok(bytes)
}
