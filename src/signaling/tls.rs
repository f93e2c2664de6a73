//! HTTPS-specific TLS: logging what each connection negotiated. The
//! certificate and the rustls config come from [`crate::certs`], shared with
//! SIP over TLS.

use axum_server::accept::Accept;
use std::future::Future;
use std::pin::Pin;
use tokio::net::TcpStream;
use tracing::debug;

/// Wraps the rustls acceptor to log, per connection, the TLS version and
/// key-exchange group that were negotiated (DESIGN.md asks to log the group,
/// so a fallback from X25519MLKEM768 is visible).
#[derive(Clone)]
pub(crate) struct LoggingAcceptor {
    inner: axum_server::tls_rustls::RustlsAcceptor,
}

impl LoggingAcceptor {
    pub(crate) fn new(inner: axum_server::tls_rustls::RustlsAcceptor) -> Self {
        LoggingAcceptor { inner }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for LoggingAcceptor {
    type Stream = <axum_server::tls_rustls::RustlsAcceptor as Accept<TcpStream, S>>::Stream;
    type Service = S;
    type Future =
        Pin<Box<dyn Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let result = handshake.await;
            match &result {
                Ok((tls, _)) => {
                    let conn = tls.get_ref().1;
                    debug!(
                        peer = ?peer,
                        version = ?conn.protocol_version(),
                        group = ?conn.negotiated_key_exchange_group().map(|g| g.name()),
                        "TLS connection"
                    );
                }
                Err(e) => debug!(peer = ?peer, error = %e, "TLS handshake failed"),
            }
            result
        })
    }
}
