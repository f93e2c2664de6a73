//! The browser side of one call, as a browser does it on the wire: the
//! signaling WebSocket, a `call` with an SDP offer, then toward the
//! gateway's ICE-lite candidate a STUN Binding check that nominates it, a
//! DTLS 1.2 client handshake (rtc-dtls, as the relay tests' `SimBrowser`),
//! and SRTP keyed from the DTLS exporter (RFC 5764 4.2).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint as DtlsEndpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use webrtc_sip_gateway::fingerprint::sha256_fingerprint;
use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::media::stun::{attr, is_stun, StunClass, StunMessage, StunWriter, BINDING};
use webrtc_sip_gateway::sdp::model::SessionDescription;
use webrtc_sip_gateway::types::{Secret, SrtpKeyMaterial, SrtpSuite};

use crate::https::{Target, Ws};
use crate::media::{Dir, Endpoint};

/// What every browser call shares: the gateway, the DTLS certificate (one
/// per tool run, as one browser profile has one) and where media binds.
pub struct Browser {
    pub target: Target,
    cert: Certificate,
    fingerprint: String,
    pub media_ip: IpAddr,
}

/// A connected call: its media endpoint and the signaling socket that must
/// stay open while it lasts.
pub struct BrowserCall {
    pub id: String,
    pub endpoint: Endpoint,
    pub ws: Ws,
    /// The SRTP profile DTLS agreed.
    pub suite: SrtpSuite,
}

/// How long one step of the setup may take before the call counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const STUN_RETRY: Duration = Duration::from_millis(200);

impl Browser {
    pub fn new(target: Target, media_ip: IpAddr) -> Result<Self> {
        let provider = rtc_crypto::default_provider().map_err(|e| anyhow!("{e}"))?;
        // rcgen under the hood: an ECDSA P-256 self-signed certificate.
        let cert = Certificate::generate_self_signed(vec!["gwload".to_string()], provider.crypto())
            .map_err(|e| anyhow!("DTLS certificate: {e}"))?;
        let der = cert
            .certificate
            .first()
            .ok_or_else(|| anyhow!("no DTLS certificate generated"))?;
        let fingerprint = sha256_fingerprint(der.as_ref());
        Ok(Browser {
            target,
            cert,
            fingerprint,
            media_ip,
        })
    }

    /// Places call `id` to `to` with `token`, up to connected media.
    pub async fn call(&self, token: &str, id: &str, to: &str) -> Result<BrowserCall> {
        let mut ws = self.target.websocket(token).await?;
        let socket = UdpSocket::bind((self.media_ip, 0))
            .await
            .context("bind a browser media socket")?;
        let local = socket.local_addr()?;
        let ufrag = random_token(8);
        let pwd = random_token(24);
        let ssrc: u32 = rand::random();
        let offer = self.offer(local, &ufrag, &pwd, ssrc);
        send_json(
            &mut ws,
            json!({"type": "call", "id": id, "to": to, "sdp": offer}),
        )
        .await?;
        let answer = wait_for(&mut ws, id, "answer").await?;
        let sdp = answer["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("answer without sdp"))?;
        let audio = SessionDescription::parse(sdp)?.audio()?;
        let gw_ip = audio
            .connection
            .ok_or_else(|| anyhow!("the gateway's answer has no c= address"))?;
        let remote = SocketAddr::new(gw_ip, audio.port);
        let gw_ufrag = audio
            .ice_ufrag
            .ok_or_else(|| anyhow!("the gateway's answer has no ice-ufrag"))?;
        let gw_pwd = audio
            .ice_pwd
            .ok_or_else(|| anyhow!("the gateway's answer has no ice-pwd"))?;
        let check = stun_request(&gw_ufrag, &ufrag, &gw_pwd);
        ice_check(&socket, remote, &check, gw_pwd.as_bytes()).await?;
        let (tx, rx, suite) = self.dtls(&socket, remote).await?;
        wait_for(&mut ws, id, "connected").await?;
        let mut endpoint =
            Endpoint::new(socket.into_std()?, remote, Some(tx), Some(rx), Dir::Forward);
        endpoint.ssrc = ssrc;
        endpoint.payload_type = 0;
        endpoint.keepalive = Some(check);
        Ok(BrowserCall {
            id: id.to_string(),
            endpoint,
            ws,
            suite,
        })
    }

    /// A Chrome-like audio offer: BUNDLE, rtcp-mux, one host candidate,
    /// DTLS actpass, PCMU.
    fn offer(&self, local: SocketAddr, ufrag: &str, pwd: &str, ssrc: u32) -> String {
        let ip = local.ip();
        let port = local.port();
        format!(
            "v=0\r\no=- {sess} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             a=msid-semantic: WMS gwload\r\nm=audio {port} UDP/TLS/RTP/SAVPF 0\r\n\
             c=IN IP4 {ip}\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=candidate:1 1 udp 2122260223 {ip} {port} typ host generation 0\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n\
             a=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:{ssrc} cname:gwload\r\n",
            sess = rand::random::<u32>() & 0x7fff_ffff,
            fp = self.fingerprint,
        )
    }

    /// The DTLS client handshake over `socket`; returns the SRTP contexts
    /// (what we send, what we receive) keyed from the exporter.
    async fn dtls(
        &self,
        socket: &UdpSocket,
        remote: SocketAddr,
    ) -> Result<(SrtpContext, SrtpContext, SrtpSuite)> {
        let provider = rtc_crypto::default_provider().map_err(|e| anyhow!("{e}"))?;
        let config = ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![self.cert.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            // The gateway's certificate is self-signed; a browser checks
            // it against the SDP fingerprint, which a load tool skips.
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(true, Some(remote))
            .map_err(|e| anyhow!("DTLS config: {e}"))?;
        let mut ep = DtlsEndpoint::new(
            socket.local_addr()?,
            rtc_shared::TransportProtocol::UDP,
            None,
        );
        let start = Instant::now();
        ep.connect(start, remote, Arc::new(config), None)
            .map_err(|e| anyhow!("DTLS connect: {e}"))?;
        let deadline = start + STEP_TIMEOUT;
        let mut buf = vec![0u8; 2048];
        let mut done = false;
        loop {
            while let Some(t) = ep.poll_transmit() {
                socket.send_to(&t.message, remote).await?;
            }
            if done {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("DTLS handshake with {remote} timed out");
            }
            let wake = ep
                .poll_timeout(&remote)
                .unwrap_or(now + Duration::from_millis(100))
                .min(deadline);
            match tokio::time::timeout_at(wake.into(), socket.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    // DTLS records only (RFC 7983: first byte 20..=63).
                    if from != remote || n == 0 || !(20..=63).contains(&buf[0]) {
                        continue;
                    }
                    let events = ep
                        .read(
                            Instant::now(),
                            remote,
                            None,
                            bytes::BytesMut::from(&buf[..n]),
                        )
                        .map_err(|e| anyhow!("DTLS: {e}"))?;
                    done = events
                        .iter()
                        .any(|e| matches!(e, EndpointEvent::HandshakeComplete));
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    let _ = ep.handle_timeout(remote, Instant::now());
                }
            }
        }
        let state = ep
            .get_connection_state(remote)
            .ok_or_else(|| anyhow!("DTLS connection vanished"))?;
        let suite = match state.srtp_protection_profile() {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpSuite::AeadAes128Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpSuite::AesCm128HmacSha1_80,
            other => bail!("DTLS agreed an SRTP profile we did not offer: {other:?}"),
        };
        let (k, s) = (suite.key_len(), suite.salt_len());
        let m = state
            .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (k + s))
            .map_err(|e| anyhow!("DTLS exporter: {e}"))?;
        let m: &[u8] = m.as_ref();
        let mat = |key: std::ops::Range<usize>, salt: std::ops::Range<usize>| SrtpKeyMaterial {
            suite,
            key: Secret::new(m[key].to_vec()),
            salt: Secret::new(m[salt].to_vec()),
            mki: None,
        };
        // RFC 5764 4.2: client key, server key, client salt, server salt;
        // the client writes with the client's.
        let tx = SrtpContext::new(&mat(0..k, 2 * k..2 * k + s))?;
        let rx = SrtpContext::new(&mat(k..2 * k, 2 * k + s..2 * (k + s)))?;
        Ok((tx, rx, suite))
    }
}

/// A Binding request as Chrome nominates with it: USERNAME, PRIORITY,
/// ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY keyed with the
/// gateway's ice-pwd, FINGERPRINT.
fn stun_request(gw_ufrag: &str, our_ufrag: &str, gw_pwd: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let tid: [u8; 12] = rand::random();
    let username = format!("{gw_ufrag}:{our_ufrag}");
    let tiebreaker: [u8; 8] = rand::random();
    StunWriter::new(&mut out, BINDING, StunClass::Request, &tid)
        .attribute(attr::USERNAME, username.as_bytes())
        .attribute(attr::PRIORITY, &0x6e00_1eff_u32.to_be_bytes())
        .attribute(attr::ICE_CONTROLLING, &tiebreaker)
        .attribute(attr::USE_CANDIDATE, &[])
        .message_integrity(gw_pwd.as_bytes())
        .fingerprint();
    out
}

/// Sends the check until a success response that verifies arrives.
async fn ice_check(socket: &UdpSocket, remote: SocketAddr, req: &[u8], pwd: &[u8]) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut buf = vec![0u8; 1500];
    while Instant::now() < deadline {
        socket.send_to(req, remote).await?;
        let retry = Instant::now() + STUN_RETRY;
        while let Ok(r) = tokio::time::timeout_at(retry.into(), socket.recv_from(&mut buf)).await {
            let (n, from) = r?;
            if from != remote || !is_stun(&buf[..n]) {
                continue;
            }
            let Ok(msg) = StunMessage::parse(&buf[..n]) else {
                continue;
            };
            if msg.transaction_id != req[8..20] {
                continue;
            }
            match msg.class {
                StunClass::Success => {
                    msg.verify_integrity(pwd)
                        .map_err(|e| anyhow!("STUN response from {remote}: {e}"))?;
                    return Ok(());
                }
                StunClass::Error => {
                    let (code, reason) = msg.error_code().unwrap_or((0, ""));
                    bail!("the gateway refused the ICE check: {code} {reason}");
                }
                _ => {}
            }
        }
    }
    bail!("no STUN response from {remote}")
}

async fn send_json(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("signaling send")
}

/// Reads signaling messages until `kind` for call `id`; an `error` or
/// `hangup` for it ends the call with its reason.
pub async fn wait_for(ws: &mut Ws, id: &str, kind: &str) -> Result<Value> {
    let read = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.context("signaling read")? else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).context("signaling JSON")?;
            if v["id"].as_str().is_some_and(|i| i != id) {
                continue;
            }
            match v["type"].as_str() {
                Some(t) if t == kind => return Ok(v),
                Some("error") | Some("hangup") => {
                    bail!(
                        "call {id}: {} {} {}",
                        v["type"],
                        v["code"],
                        v["message"].as_str().or(v["reason"].as_str()).unwrap_or("")
                    )
                }
                _ => {}
            }
        }
        bail!("signaling socket closed waiting for {kind}")
    };
    tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .map_err(|_| anyhow!("call {id}: no {kind} within {STEP_TIMEOUT:?}"))?
}

/// Sends `hangup` for call `id` and closes the socket.
pub async fn hang_up(mut ws: Ws, id: &str) {
    let _ = send_json(&mut ws, json!({"type": "hangup", "id": id})).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), wait_for(&mut ws, id, "hangup")).await;
    let _ = ws.close(None).await;
}

/// ICE ufrag/pwd characters (RFC 8839 ice-char).
fn random_token(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| CHARS[rand::random::<usize>() % CHARS.len()] as char)
        .collect()
}
