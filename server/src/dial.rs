//! Dialing `ws://` and `wss://`: the one way this binary opens a client WebSocket, used by
//! the host's link to its relay (control and data sockets), `netcheck`'s relay check and
//! `join`.
//!
//! A dial runs in three phases under one deadline: resolve the host (every address, in the
//! resolver's order), connect TCP (each address in turn until one answers), then the TLS
//! handshake (for `wss://`, with [`tls::connector`]: the Mozilla roots plus
//! `ATMOSPHERE_RELAY_CA`) and the WebSocket upgrade. The result says how long the TCP
//! connection and the whole dial took; a failure names its phase and keeps the underlying
//! I/O or tungstenite error, so each caller can word it for its own reader (a refused
//! connection, a certificate problem, an HTTP refusal with a JSON body).

use crate::relay::tls;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A WebSocket this process dialed: the host's control and data sockets to its relay, and a
/// member's socket to a host or relay.
pub type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// How to dial.
#[derive(Debug, Clone)]
pub struct DialOptions<'a> {
    /// Sent as `Authorization: Bearer <secret>` (the relay's data-socket proof).
    pub bearer: Option<&'a str>,
    /// Frame and message limits and buffer sizes of the socket.
    pub config: WebSocketConfig,
    /// Deadline for the whole dial: DNS, TCP, TLS and the upgrade.
    pub deadline: Duration,
}

impl Default for DialOptions<'_> {
    fn default() -> Self {
        DialOptions {
            bearer: None,
            config: WebSocketConfig::default(),
            deadline: Duration::from_secs(10),
        }
    }
}

/// An open WebSocket and how its dial went.
#[derive(Debug)]
pub struct Dialed {
    pub socket: ClientSocket,
    /// HTTP status of the upgrade answer (101).
    pub status: u16,
    /// From the start of the dial to the open TCP connection (DNS included).
    pub connected_after: Duration,
}

/// The phase a dial was in when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialPhase {
    /// Resolving the host name.
    Resolve,
    /// Connecting TCP to this address.
    Connect(SocketAddr),
    /// TLS (for `wss://`) and the WebSocket upgrade.
    Handshake,
}

impl std::fmt::Display for DialPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialPhase::Resolve => f.write_str("the DNS lookup"),
            DialPhase::Connect(addr) => write!(f, "TCP connect to {addr}"),
            DialPhase::Handshake => f.write_str("the WebSocket handshake"),
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL does not parse, is not `ws://`/`wss://`, or has no host or port.
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// The bearer secret cannot be sent as a header value.
    #[error("the bearer secret is not a valid header value")]
    BadBearer,
    /// The TLS client configuration could not be built (e.g. an unreadable
    /// `ATMOSPHERE_RELAY_CA` file).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The host name did not resolve.
    #[error("DNS lookup of {host} failed: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The host name resolved to no address.
    #[error("{host} has no address")]
    NoAddress { host: String },
    /// No address accepted the TCP connection (the error of the last one tried).
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TCP connected, then TLS or the upgrade failed. `source` is
    /// [`tungstenite::Error::Http`] when the server answered with another HTTP status (its
    /// body included), a TLS or I/O error otherwise.
    #[error("WebSocket handshake failed: {source}")]
    Handshake {
        #[source]
        source: tungstenite::Error,
        connected_after: Duration,
    },
    /// The deadline passed during `phase`.
    #[error("{phase} did not finish within {} ms", deadline.as_millis())]
    Timeout {
        phase: DialPhase,
        deadline: Duration,
        /// Set when TCP had connected before the deadline passed.
        connected_after: Option<Duration>,
    },
}

impl DialError {
    /// The time to the open TCP connection, when the dial got that far.
    pub fn connected_after(&self) -> Option<Duration> {
        match self {
            DialError::Handshake {
                connected_after, ..
            } => Some(*connected_after),
            DialError::Timeout {
                connected_after, ..
            } => *connected_after,
            _ => None,
        }
    }

    /// The underlying I/O error (DNS, TCP, or a reset during the handshake), for callers
    /// that word them ("connection refused").
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            DialError::Resolve { source, .. } | DialError::Connect { source, .. } => Some(source),
            DialError::Handshake {
                source: tungstenite::Error::Io(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// Where a URL points.
struct Target {
    /// The URL as `url` normalises it (lowercase scheme and host), which tungstenite reads.
    url: String,
    host: String,
    port: u16,
    /// `wss://`.
    tls: bool,
}

/// Checks the scheme and finds the host and port (ws → 80, wss → 443 by default).
fn target(url: &str) -> Result<Target, DialError> {
    let parsed = url::Url::parse(url).map_err(|e| DialError::BadUrl(e.to_string()))?;
    let tls = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(DialError::BadUrl(format!(
                "must start with ws:// or wss://, not {other}://"
            )))
        }
    };
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(DialError::BadUrl("no host".into())),
    };
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| DialError::BadUrl("no port".into()))?;
    Ok(Target {
        url: parsed.to_string(),
        host,
        port,
        tls,
    })
}

/// Dials `url` (`ws://` or `wss://`) and completes the WebSocket upgrade, all within
/// `options.deadline`.
pub async fn dial(url: &str, options: &DialOptions<'_>) -> Result<Dialed, DialError> {
    let start = Instant::now();
    let target = target(url)?;
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::BadUrl(e.to_string()))?;
    if let Some(secret) = options.bearer {
        let value =
            HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| DialError::BadBearer)?;
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let connector = if target.tls {
        Some(tls::connector().map_err(|e| DialError::TlsSetup(format!("{e:#}")))?)
    } else {
        None
    };

    let deadline = start + options.deadline;
    let timeout = |phase, connected_after| DialError::Timeout {
        phase,
        deadline: options.deadline,
        connected_after,
    };

    let addrs = tokio::time::timeout_at(deadline, resolve(&target))
        .await
        .map_err(|_| timeout(DialPhase::Resolve, None))??;
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(source)) => last = Some(DialError::Connect { addr, source }),
            Err(_) => return Err(timeout(DialPhase::Connect(addr), None)),
        }
    }
    let tcp = match (tcp, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(DialError::NoAddress { host: target.host }),
    };
    let connected_after = start.elapsed();
    // Control frames and small mesh messages must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);

    let handshake = tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(options.config),
        connector,
    );
    let (socket, response) = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| timeout(DialPhase::Handshake, Some(connected_after)))?
        .map_err(|source| DialError::Handshake {
            source,
            connected_after,
        })?;
    Ok(Dialed {
        socket,
        status: response.status().as_u16(),
        connected_after,
    })
}

/// Every address of the target, in the resolver's order (an IP literal is its own).
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, DialError> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| DialError::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(DialError::NoAddress {
            host: target.host.clone(),
        });
    }
    Ok(addrs)
}

/// Fixtures for the tests of the dialer and its users.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    /// A TCP server that accepts and holds every connection and never says a word (a
    /// black hole past the TCP handshake). Abort the handle to stop it.
    pub(crate) async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        (addr, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_named() {
        let o = DialOptions::default();
        for (url, says) in [
            ("http://x", "ws:// or wss://"),
            ("not a url", "bad URL"),
            ("ws://", "bad URL"),
        ] {
            let e = dial(url, &o).await.unwrap_err();
            assert!(matches!(e, DialError::BadUrl(_)), "{url}: {e:?}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        let o = DialOptions {
            bearer: Some("line\nbreak"),
            ..DialOptions::default()
        };
        assert!(matches!(
            dial("ws://127.0.0.1:1/", &o).await,
            Err(DialError::BadBearer)
        ));
    }

    #[tokio::test]
    async fn refused_connection_keeps_the_io_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = dial(&format!("ws://127.0.0.1:{port}/"), &DialOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, DialError::Connect { .. }), "{e:?}");
        assert_eq!(
            e.io_error().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(e.connected_after().is_none());
    }

    #[tokio::test]
    async fn dials_with_the_bearer_and_reports_timings() {
        use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut auth = None;
            // The callback's signature is tungstenite's (`Callback`), large error and all.
            #[allow(clippy::result_large_err)]
            let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok(resp)
            };
            let _ws = tokio_tungstenite::accept_hdr_async(s, cb).await.unwrap();
            auth
        });
        let o = DialOptions {
            bearer: Some("s3cret"),
            ..DialOptions::default()
        };
        let d = dial(&format!("ws://{addr}/x"), &o).await.unwrap();
        assert_eq!(d.status, 101);
        assert!(d.connected_after < Duration::from_secs(10));
        assert_eq!(server.await.unwrap().as_deref(), Some("Bearer s3cret"));
    }

    #[tokio::test]
    async fn an_http_refusal_keeps_the_response() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let body = r#"{"code":"rate_limited"}"#;
            let resp = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
        let e = dial(&format!("ws://{addr}/"), &DialOptions::default())
            .await
            .unwrap_err();
        match &e {
            DialError::Handshake {
                source: tungstenite::Error::Http(resp),
                ..
            } => {
                assert_eq!(resp.status().as_u16(), 429);
                assert_eq!(
                    resp.body().as_deref(),
                    Some(&br#"{"code":"rate_limited"}"#[..])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(e.connected_after().is_some());
    }

    #[tokio::test]
    async fn a_silent_server_hits_the_deadline_in_the_handshake() {
        let (addr, _keep) = crate::dial::testing::silent_server().await;
        let o = DialOptions {
            deadline: Duration::from_millis(200),
            ..DialOptions::default()
        };
        let e = dial(&format!("ws://{addr}/"), &o).await.unwrap_err();
        assert!(
            matches!(
                e,
                DialError::Timeout {
                    phase: DialPhase::Handshake,
                    connected_after: Some(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the WebSocket handshake did not finish within 200 ms"
        );
    }
}
