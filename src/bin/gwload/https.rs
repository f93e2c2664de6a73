//! The browser's HTTPS side: `POST /api/login` and the signaling WebSocket.
//!
//! The gateway under test serves a self-signed certificate it generated, so
//! the tool accepts any certificate, explicitly and only here: it is a load
//! generator on the same host, not a client that protects anything.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Accepts whatever certificate the gateway presents (see the module doc);
/// the handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The gateway's HTTPS endpoint: host:port and the TLS client for it.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
}

impl Target {
    /// `https://HOST:PORT` (no path).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("--target must start with https:// (got {url:?})"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--target needs a port: https://HOST:PORT (got {url:?})"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow!("--target port {port:?} is not a number"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Ok(Target {
            host: host.to_string(),
            port,
            tls: Arc::new(tls),
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).map_err(|_| anyhow!("bad host {:?}", self.host))
    }

    /// `POST /api/login`; returns the token.
    pub async fn login(&self, account: &str, password: &str) -> Result<String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connect {}:{}", self.host, self.port))?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut tls = connector.connect(self.server_name()?, tcp).await?;
        let body = serde_json::json!({"account": account, "password": password}).to_string();
        let request = format!(
            "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        // The server may close without close_notify; what was read counts.
        let _ = tls.read_to_end(&mut reply).await;
        let reply = String::from_utf8_lossy(&reply);
        let status = reply.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!(
                "login as {account:?} failed: HTTP {status} ({})",
                reply.lines().next().unwrap_or("no reply")
            );
        }
        let json = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .ok_or_else(|| anyhow!("login reply without a body"))?;
        // A chunked body would wrap the JSON in sizes; take the object.
        let start = json
            .find('{')
            .ok_or_else(|| anyhow!("login reply is not JSON"))?;
        let end = json
            .rfind('}')
            .ok_or_else(|| anyhow!("login reply is not JSON"))?;
        let value: serde_json::Value = serde_json::from_str(&json[start..=end])?;
        value["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("login reply has no token"))
    }

    /// Opens the signaling WebSocket with `token`.
    pub async fn websocket(&self, token: &str) -> Result<Ws> {
        let url = format!("wss://{}:{}/ws?token={token}", self.host, self.port);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
        )
        .await
        .context("signaling WebSocket")?;
        Ok(ws)
    }
}
