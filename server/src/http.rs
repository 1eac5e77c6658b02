//! The one HTTP accept loop shared by the host (`serve`) and the relay.
//!
//! `axum::serve` has no deadline for reading request headers, so a client that opens a
//! connection and trickles bytes (slow-loris) would hold a task and a socket forever. Here
//! every connection runs in its own task with hyper's `header_read_timeout`, TLS (when
//! configured) must finish within the same deadline, and the peer address is handed to
//! handlers as axum's [`ConnectInfo`].

use axum::extract::ConnectInfo;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line + headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How connections are accepted.
#[derive(Clone)]
pub struct ServeOptions {
    /// Deadline for the TLS handshake and for reading a request's headers.
    pub header_timeout: Duration,
    /// Terminate TLS with this configuration (plain HTTP when `None`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `app` on `listener` until `shutdown` completes (or forever). Handlers may extract
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = options.tls.map(tokio_rustls::TlsAcceptor::from);
    let deadline = options.header_timeout;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_conn(tcp, peer, app, deadline).await,
                Some(acc) => match tokio::time::timeout(deadline, acc.accept(tcp)).await {
                    Ok(Ok(tls)) => serve_conn(tls, peer, app, deadline).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_conn<I>(io: I, peer: SocketAddr, app: Router, deadline: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(deadline)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = b
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
