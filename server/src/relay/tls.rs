//! TLS for the relay (rustls with the `ring` provider): the server side loads a PEM
//! certificate chain and key so `wss://` works without a reverse proxy; the client side
//! (every `wss://` dial, see `crate::dial`) trusts the Mozilla roots (webpki-roots, compiled
//! in) plus extra roots named by `ATMOSPHERE_RELAY_CA`, which is how a self-signed or
//! private-CA relay is trusted.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Env var: path(s) of extra PEM root certificates to trust for `wss://` relays,
/// separated by the platform's path-list separator (`:` on Unix).
pub const RELAY_CA_ENV: &str = "ATMOSPHERE_RELAY_CA";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the relay's TLS server config from PEM files (chain first, then any key format
/// rustls-pemfile understands). ALPN offers only `http/1.1`: WebSockets upgrade over HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--tls-cert {} is not valid PEM", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "--tls-cert {} holds no CERTIFICATE block",
            cert.display()
        ));
    }
    let key_pem =
        std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("--tls-key {} is not valid PEM", key.display()))?
        .ok_or_else(|| anyhow!("--tls-key {} holds no private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .context("the TLS certificate and key do not match or are unsupported")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client TLS config for `wss://` relays: webpki roots plus the PEM roots in
/// [`RELAY_CA_ENV`]. An unreadable or empty CA file is an error (said once, clearly), not a
/// silent fallback.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(paths) = std::env::var_os(RELAY_CA_ENV) {
        for p in std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()) {
            let pem = std::fs::read(&p)
                .with_context(|| format!("cannot read {RELAY_CA_ENV} file {}", p.display()))?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.with_context(|| {
                    format!("{RELAY_CA_ENV} file {} is not valid PEM", p.display())
                })?;
                roots.add(c).with_context(|| {
                    format!(
                        "{RELAY_CA_ENV} file {} holds an unusable certificate",
                        p.display()
                    )
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(anyhow!(
                    "{RELAY_CA_ENV} file {} holds no CERTIFICATE block",
                    p.display()
                ));
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A tokio-tungstenite connector for `wss://` URLs using [`client_config`]. The config is
/// built once per process: the host dials a `wss://` data socket for every relayed member,
/// and rebuilding the root store (and re-reading the CA files) each time would be wasted
/// blocking work on the async path.
pub fn connector() -> Result<tokio_tungstenite::Connector> {
    static CONFIG: std::sync::OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    match CONFIG.get_or_init(|| client_config().map_err(|e| format!("{e:#}"))) {
        Ok(cfg) => Ok(tokio_tungstenite::Connector::Rustls(cfg.clone())),
        Err(e) => Err(anyhow!("{e}")),
    }
}
