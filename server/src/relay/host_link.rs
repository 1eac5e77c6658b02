//! The host's control link to a relay: keeps `/mesh/{mesh_id}/host` up (capped exponential
//! backoff with jitter), proves the mesh key, and dials a data socket per relayed session.
//! STUB: the public API below is fixed for `serve`; the implementation is being written.

use atmosphere_shared::api::RelayState;
use std::sync::Arc;

/// A relayed member's socket as the host sees it: an ordinary WebSocket to the relay that
/// the relay splices to the member. `serve` hands it to the same session handler as direct
/// sockets.
pub type DataSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Called for every new relayed session with its data socket and a description of the
/// member's address as the relay reported it (for logs).
pub type OnSession = Arc<dyn Fn(DataSocket, String) + Send + Sync>;

/// Configuration of the host link.
pub struct HostLinkConfig {
    /// Base URL of the relay, e.g. `wss://relay.example:8080` (from `--relay-url`).
    pub relay_url: String,
    /// The mesh's Ed25519 identity; `mesh_id` is derived from its public key.
    pub signing_key: ed25519_dalek::SigningKey,
}

/// Handle to the running link; cheap to clone.
#[derive(Clone)]
pub struct HostLink {
    endpoint: String,
}

impl HostLink {
    /// Starts the control link in the background.
    pub fn spawn(config: HostLinkConfig, _on_session: OnSession) -> HostLink {
        let id = atmosphere_shared::mesh_id::mesh_id_from_public_key(
            &config.signing_key.verifying_key().to_bytes(),
        );
        HostLink {
            endpoint: format!("{}/mesh/{}", config.relay_url.trim_end_matches('/'), id),
        }
    }

    /// The invite's relay endpoint: `<relay-url>/mesh/<mesh_id>`.
    pub fn invite_endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Current link state for `/api/network` and the UI.
    pub fn state(&self) -> RelayState {
        RelayState::Connecting { url: self.endpoint.clone() }
    }
}
