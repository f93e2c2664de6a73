//! The rustls server configurations of the gateway's TLS listeners. Both
//! take their certificate from a [`GatewayCert`], so a renewed certificate
//! reaches every new connection without rebuilding them.
//!
//! rustls with the aws-lc-rs provider, the hybrid post-quantum group
//! X25519MLKEM768 first (DESIGN.md, Security: SDES keys travel inside
//! SIP-TLS, so a recording of today's signaling must not yield tomorrow's
//! media keys), TLS 1.3 and 1.2, only AEAD suites (rustls implements no
//! others).

use super::GatewayCert;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::ServerConfig;
use std::sync::Arc;

/// HTTPS and WSS (`server.https_listen`): ALPN `http/1.1`.
pub fn https_server_config(cert: Arc<GatewayCert>) -> ServerConfig {
    let mut config = server_config(cert);
    // HTTP/1.1 only: WebSockets over HTTP/2 need extended CONNECT, which the
    // server stack does not enable; browsers then use HTTP/1.1 anyway.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// SIP over TLS (`sip.tls_listen`): no ALPN, SIP peers do not send one.
pub fn sip_server_config(cert: Arc<GatewayCert>) -> ServerConfig {
    server_config(cert)
}

/// The provider every TLS listener uses; also what private keys are loaded
/// with, so a key the provider cannot sign with is refused at load.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let mut provider = aws_lc_rs::default_provider();
    // Explicit order rather than the provider default, which puts
    // X25519MLKEM768 last unless the `prefer-post-quantum` feature is on.
    provider.kx_groups = vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1];
    Arc::new(provider)
}

fn server_config(cert: Arc<GatewayCert>) -> ServerConfig {
    // The builder only fails when the provider has no suite for a requested
    // version; aws-lc-rs has suites for both, on every build (a unit test
    // below builds this config). No file or network input is involved.
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs provides TLS 1.3 and 1.2 suites");
    builder.with_no_client_auth().with_cert_resolver(cert)
}

#[cfg(test)]
mod tests {
    use super::super::tests::self_signed_cert;
    use super::*;

    #[test]
    fn only_aead_suites_and_pq_group_first_on_both_listeners() {
        let (_dir, cert) = self_signed_cert();
        let https = https_server_config(cert.clone());
        let sip = sip_server_config(cert);
        assert_eq!(https.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(sip.alpn_protocols.is_empty());
        for config in [https, sip] {
            let provider = config.crypto_provider();
            assert_eq!(
                provider.kx_groups[0].name(),
                rustls::NamedGroup::X25519MLKEM768
            );
            for suite in &provider.cipher_suites {
                let name = format!("{:?}", suite.suite());
                assert!(
                    name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                    "{name}"
                );
            }
        }
    }
}
