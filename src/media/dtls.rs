//! DTLS-SRTP with the browser (RFC 5763, RFC 5764) on top of `rtc-dtls`'s
//! sans-IO endpoint, in the server (passive, `a=setup:passive`) role.
//!
//! What this adds to the library: the gateway's certificate, a per-call check
//! of the browser's certificate against the `a=fingerprint` of its SDP (the
//! only authentication WebRTC media has), the `use_srtp` profiles we accept,
//! and the split of the exported keying material into the two SRTP
//! directions. Events come out in the order they happen; a failed or closed
//! association ignores further input.

use super::fingerprint::{sha256_fingerprint, Fingerprint};
use crate::types::{Secret, SrtpKeyMaterial, SrtpSuite};
use bytes::BytesMut;
use rtc_crypto::RTCCryptoProvider;
use rtc_dtls::config::{
    ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, VerifyPeerCertificateFn,
};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};

use super::client_hello::ClientHelloScan;
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::error::Error as RtcError;
use rtc_shared::TransportProtocol;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// RFC 5764 4.2: the exporter label for DTLS-SRTP keys.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// Subject name of our certificate; browsers ignore it, it only shows up in
/// packet captures.
const CERT_NAME: &str = "webrtc-sip-gateway";
/// DTLS record content type of an alert.
const ALERT_CONTENT_TYPE: u8 = 21;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The browser's certificate does not hash to its SDP fingerprint: not the
    /// peer that signaled, so the call must end with nothing forwarded.
    #[error("DTLS peer certificate does not match the SDP fingerprint")]
    FingerprintMismatch,
    /// The handshake finished without a certificate from the browser.
    #[error("DTLS peer sent no certificate")]
    NoPeerCertificate,
    /// No common SRTP protection profile (or one we do not run).
    #[error("DTLS use_srtp negotiated no usable SRTP profile")]
    NoSrtpProfile,
    /// Our flight went unanswered through every retransmission.
    #[error("DTLS handshake timed out")]
    Timeout,
    /// A fatal alert was sent or received.
    #[error("DTLS fatal alert")]
    Alert,
    /// Any other handshake or record error from `rtc-dtls` (no key material in
    /// the text).
    #[error("DTLS error: {0}")]
    Protocol(String),
    #[error("DTLS keying material export failed: {0}")]
    KeyExport(String),
    #[error("DTLS certificate or configuration error: {0}")]
    Setup(String),
}

impl DtlsError {
    fn from_rtc(err: RtcError) -> Self {
        match err {
            RtcError::ErrAlertFatalOrClose => DtlsError::Alert,
            RtcError::ErrClientCertificateRequired => DtlsError::NoPeerCertificate,
            RtcError::ErrServerNoMatchingSrtpProfile => DtlsError::NoSrtpProfile,
            other => DtlsError::Protocol(other.to_string()),
        }
    }
}

/// The gateway's DTLS certificate: ECDSA P-256, self-signed, made at start
/// and shared by every call (its fingerprint goes into every SDP answer).
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: Certificate,
    fingerprint: String,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl DtlsIdentity {
    /// A fresh ECDSA P-256 key and self-signed certificate (rcgen's default
    /// algorithm, which is what browsers generate too).
    pub fn generate() -> Result<Self, DtlsError> {
        let provider = rtc_crypto::default_provider()
            .map_err(|e| DtlsError::Setup(format!("crypto provider: {e}")))?;
        let certificate =
            Certificate::generate_self_signed(vec![CERT_NAME.to_string()], provider.crypto())
                .map_err(|e| DtlsError::Setup(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| DtlsError::Setup("no certificate generated".into()))?;
        let fingerprint = sha256_fingerprint(der.as_ref());
        Ok(DtlsIdentity {
            certificate,
            fingerprint,
            provider,
        })
    }

    /// "AB:CD:..." for `a=fingerprint:sha-256 ...`.
    pub fn fingerprint_sha256(&self) -> &str {
        &self.fingerprint
    }

    /// The same as a typed [`Fingerprint`].
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            algorithm: "sha-256".to_string(),
            value: self
                .certificate
                .certificate
                .first()
                .map(|der| Fingerprint::sha256(der.as_ref()).value)
                .unwrap_or_default(),
        }
    }

    /// The DER certificate (for tests and diagnostics).
    pub fn certificate_der(&self) -> &[u8] {
        self.certificate
            .certificate
            .first()
            .map(|der| der.as_ref())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        write!(f, "DtlsIdentity(sha-256 {})", self.fingerprint)
    }
}

/// What the association reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsEvent {
    /// Handshake done, browser certificate verified, keys exported.
    Connected {
        suite: SrtpSuite,
        /// Decrypts what the browser sends (the client write key and salt).
        inbound: SrtpKeyMaterial,
        /// Encrypts what we send (the server write key and salt).
        outbound: SrtpKeyMaterial,
    },
    /// The association is dead; the call must end.
    Failed(DtlsError),
    /// The browser sent close_notify (our reply is queued for sending).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Connected,
    /// Failed or closed: input is ignored from here on.
    Done,
}

/// One DTLS association with one browser, server role.
pub struct DtlsServer {
    endpoint: Endpoint,
    /// Kept to rebuild the endpoint once the ClientHello is known.
    identity: DtlsIdentity,
    /// Reads the browser's SRTP profiles; `None` once it has.
    hello_scan: Option<ClientHelloScan>,
    /// The key of the association inside the endpoint. The driver sends our
    /// datagrams wherever ICE currently points, so this never needs to follow
    /// a changed browser address.
    remote: SocketAddr,
    expected: Fingerprint,
    /// Set by the certificate callback when the browser's certificate fails
    /// the fingerprint check, so the handshake error that follows can be
    /// reported as what it is.
    mismatch: Arc<AtomicBool>,
    phase: Phase,
    events: VecDeque<DtlsEvent>,
    /// Datagrams taken from the endpoint to look at them, not yet sent.
    transmits: VecDeque<Vec<u8>>,
}

impl DtlsServer {
    /// Prepares the server side for the browser whose SDP gave `expected`.
    /// Nothing is sent until the browser's ClientHello arrives.
    pub fn new(
        identity: &DtlsIdentity,
        expected: Fingerprint,
        remote: SocketAddr,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        // `now` is not needed before the first datagram: rtc-dtls arms its
        // timers from the instants passed to `read` and `handle_timeout`.
        let _ = now;
        let mismatch = Arc::new(AtomicBool::new(false));
        let endpoint = build_endpoint(identity, &expected, &mismatch, remote, &BOTH_PROFILES)?;
        Ok(DtlsServer {
            endpoint,
            identity: identity.clone(),
            hello_scan: Some(ClientHelloScan::default()),
            remote,
            expected,
            mismatch,
            phase: Phase::Handshaking,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        })
    }

    /// Our SRTP profile choice (see `client_hello.rs`): once the whole
    /// ClientHello is known, the association accepts only GCM when the
    /// browser offers it. Nothing has been sent yet, so swapping the endpoint
    /// loses no state.
    fn choose_profiles(&mut self, offered: Option<&[u16]>) -> Result<(), DtlsError> {
        let gcm = offered.is_some_and(|p| p.contains(&GCM_PROFILE_ID));
        tracing::debug!(?offered, gcm, "browser's SRTP profiles");
        if gcm {
            self.endpoint = build_endpoint(
                &self.identity,
                &self.expected,
                &self.mismatch,
                self.remote,
                &[SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            )?;
        }
        Ok(())
    }

    /// Feeds one DTLS datagram from the browser. An error also ends the
    /// association (reported once as `DtlsEvent::Failed`) while the handshake
    /// runs; after it, a bad record is only an error for the caller to count.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) -> Result<(), DtlsError> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        let Some(scan) = self.hello_scan.as_mut() else {
            return self.feed(now, data);
        };
        // Until the ClientHello is whole, datagrams wait in the scanner.
        let Some(result) = scan.push(data) else {
            return Ok(());
        };
        self.hello_scan = None;
        self.choose_profiles(result.profiles.as_deref())?;
        let mut outcome = Ok(());
        for datagram in &result.held {
            let fed = self.feed(now, datagram);
            if outcome.is_ok() {
                outcome = fed;
            }
        }
        outcome
    }

    fn feed(&mut self, now: Instant, data: &[u8]) -> Result<(), DtlsError> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        let result = self
            .endpoint
            .read(now, self.remote, None, BytesMut::from(data));
        match result {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => self.on_handshake_complete(now),
                        EndpointEvent::PeerClosed => {
                            self.phase = Phase::Done;
                            self.events.push_back(DtlsEvent::Closed);
                        }
                        // No data channels here: SCTP is not negotiated.
                        EndpointEvent::ApplicationData(_) => {}
                        _ => {}
                    }
                }
                match self.phase {
                    Phase::Done => match self.events.back() {
                        Some(DtlsEvent::Failed(e)) => Err(e.clone()),
                        _ => Ok(()),
                    },
                    _ => Ok(()),
                }
            }
            Err(err) => {
                // rtc-dtls returns errors both for records it merely drops
                // (a malformed datagram, say) and for handshake failures. The
                // latter always queue an alert to the browser, so an alert
                // among our outgoing records is what makes an error fatal:
                // the browser is told the handshake is over, and so are we.
                let alert_sent = self.drain_transmits();
                let err = if self.mismatch.load(Ordering::Relaxed) {
                    DtlsError::FingerprintMismatch
                } else {
                    DtlsError::from_rtc(err)
                };
                let fatal = err == DtlsError::FingerprintMismatch
                    || err == DtlsError::Alert
                    || (self.phase == Phase::Handshaking && alert_sent);
                if fatal {
                    self.fail(err.clone());
                }
                Err(err)
            }
        }
    }

    /// Moves the endpoint's queued datagrams to our queue; tells whether one
    /// of them starts with an alert record (content type 21, RFC 6347 4.1).
    fn drain_transmits(&mut self) -> bool {
        let mut alert = false;
        while let Some(t) = self.endpoint.poll_transmit() {
            alert |= t.message.first() == Some(&ALERT_CONTENT_TYPE);
            self.transmits.push_back(t.message.to_vec());
        }
        alert
    }

    fn fail(&mut self, err: DtlsError) {
        self.phase = Phase::Done;
        self.events.push_back(DtlsEvent::Failed(err));
    }

    fn on_handshake_complete(&mut self, now: Instant) {
        match self.export_keys() {
            Ok(event) => {
                self.phase = Phase::Connected;
                self.events.push_back(event);
            }
            Err(err) => {
                // Tell the browser too, so it does not wait for media.
                let _ = self.endpoint.stop(now, self.remote);
                self.fail(err);
            }
        }
    }

    /// Checks the browser's certificate once more (the callback already did,
    /// this guards against a library path that skips it) and splits the
    /// exporter output per RFC 5764 4.2:
    /// client key | server key | client salt | server salt.
    fn export_keys(&self) -> Result<DtlsEvent, DtlsError> {
        let state = self
            .endpoint
            .get_connection_state(self.remote)
            .ok_or_else(|| DtlsError::Protocol("association vanished".into()))?;
        let peer = state
            .peer_certificates
            .first()
            .ok_or(DtlsError::NoPeerCertificate)?;
        if !self.expected.matches(peer) {
            return Err(DtlsError::FingerprintMismatch);
        }
        let suite = match state.srtp_protection_profile() {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpSuite::AeadAes128Gcm,
            SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => SrtpSuite::AeadAes256Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpSuite::AesCm128HmacSha1_80,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => SrtpSuite::AesCm128HmacSha1_32,
            _ => return Err(DtlsError::NoSrtpProfile),
        };
        let (k, s) = (suite.key_len(), suite.salt_len());
        let material = state
            .export_keying_material(EXPORTER_LABEL, &[], 2 * (k + s))
            .map_err(|e| DtlsError::KeyExport(e.to_string()))?;
        let m: &[u8] = material.as_ref();
        if m.len() != 2 * (k + s) {
            return Err(DtlsError::KeyExport("short keying material".into()));
        }
        let part = |range: std::ops::Range<usize>| Secret::new(m[range].to_vec());
        let inbound = SrtpKeyMaterial {
            suite,
            key: part(0..k),
            salt: part(2 * k..2 * k + s),
            mki: None,
        };
        let outbound = SrtpKeyMaterial {
            suite,
            key: part(k..2 * k),
            salt: part(2 * k + s..2 * (k + s)),
            mki: None,
        };
        Ok(DtlsEvent::Connected {
            suite,
            inbound,
            outbound,
        })
    }

    /// The next datagram to send to the browser.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits
            .pop_front()
            .or_else(|| self.endpoint.poll_transmit().map(|t| t.message.to_vec()))
    }

    /// Drives handshake retransmission; call at or after `poll_timeout()`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Handshaking {
            return;
        }
        // No association yet (no ClientHello seen): nothing to drive.
        if self.endpoint.get_connection_state(self.remote).is_none() {
            return;
        }
        if self.endpoint.handle_timeout(self.remote, now).is_err() {
            self.fail(DtlsError::Timeout);
        }
    }

    /// When `handle_timeout` is next needed; `None` while idle, once
    /// connected, and after the end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking => self.endpoint.poll_timeout(&self.remote),
            _ => None,
        }
    }

    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Sends close_notify (when the call ends on our side) and stops.
    pub fn close(&mut self, now: Instant) {
        if self.phase != Phase::Done {
            let _ = self.endpoint.stop(now, self.remote);
            self.phase = Phase::Done;
        }
    }
}

/// The `rtc-dtls` certificate callback for one call: the browser's leaf
/// certificate must hash to the SDP fingerprint.
/// The SRTP profiles we accept, in our order of preference.
const BOTH_PROFILES: [SrtpProtectionProfile; 2] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];
/// SRTP_AEAD_AES_128_GCM in the use_srtp extension (RFC 7714 14.2).
const GCM_PROFILE_ID: u16 = 0x0007;

fn build_endpoint(
    identity: &DtlsIdentity,
    expected: &Fingerprint,
    mismatch: &Arc<AtomicBool>,
    remote: SocketAddr,
    profiles: &[SrtpProtectionProfile],
) -> Result<Endpoint, DtlsError> {
    let config = ConfigBuilder::default()
        .with_crypto_provider(identity.provider.clone())
        .with_certificates(vec![identity.certificate.clone()])
        .with_srtp_protection_profiles(profiles.to_vec())
        // A self-signed browser certificate is expected: no chain check,
        // only the fingerprint below.
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .with_verify_peer_certificate(Some(fingerprint_verifier(
            expected.clone(),
            mismatch.clone(),
        )))
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        .build(false, Some(remote))
        .map_err(|e| DtlsError::Setup(e.to_string()))?;
    Ok(Endpoint::new(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        TransportProtocol::UDP,
        Some(Arc::new(config)),
    ))
}

fn fingerprint_verifier(
    expected: Fingerprint,
    mismatch: Arc<AtomicBool>,
) -> VerifyPeerCertificateFn {
    Arc::new(
        move |certs: &[Vec<u8>], _chains: &[_]| match certs.first() {
            Some(leaf) if expected.matches(leaf) => Ok(()),
            _ => {
                mismatch.store(true, Ordering::Relaxed);
                Err(RtcError::Other(
                    "certificate does not match the SDP fingerprint".into(),
                ))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    //! Full handshakes in one process: our `DtlsServer` against a plain
    //! `rtc-dtls` client endpoint (the browser stand-in) with its own
    //! self-signed certificate, datagrams handed across by hand, time from a
    //! fake clock.
    use super::super::srtp::SrtpContext;
    use super::*;
    use rtc_dtls::config::HandshakeConfig;
    use std::time::Duration;

    const SERVER: &str = "192.0.2.10:3478";
    const CLIENT: &str = "198.51.100.20:50000";

    struct Browser {
        endpoint: Endpoint,
        certificate: Certificate,
        connected: bool,
        closed: bool,
        failed: bool,
    }

    impl Browser {
        fn new() -> Self {
            let provider = rtc_crypto::default_provider().unwrap();
            let certificate =
                Certificate::generate_self_signed(vec!["browser".into()], provider.crypto())
                    .unwrap();
            Browser {
                endpoint: Endpoint::new(CLIENT.parse().unwrap(), TransportProtocol::UDP, None),
                certificate,
                connected: false,
                closed: false,
                failed: false,
            }
        }

        fn fingerprint(&self) -> Fingerprint {
            Fingerprint::sha256(self.certificate.certificate[0].as_ref())
        }

        fn config(
            &self,
            server_fp: Fingerprint,
            profiles: Vec<SrtpProtectionProfile>,
            with_cert: bool,
        ) -> Arc<HandshakeConfig> {
            let verify: VerifyPeerCertificateFn =
                Arc::new(move |certs: &[Vec<u8>], _chains: &[_]| {
                    if certs.first().is_some_and(|c| server_fp.matches(c)) {
                        Ok(())
                    } else {
                        Err(RtcError::Other("server fingerprint".into()))
                    }
                });
            let mut builder = ConfigBuilder::default()
                .with_crypto_provider(rtc_crypto::default_provider().unwrap())
                .with_insecure_skip_verify(true)
                .with_verify_peer_certificate(Some(verify))
                .with_srtp_protection_profiles(profiles)
                .with_extended_master_secret(ExtendedMasterSecretType::Require);
            if with_cert {
                builder = builder.with_certificates(vec![self.certificate.clone()]);
            }
            Arc::new(builder.build(true, Some(SERVER.parse().unwrap())).unwrap())
        }

        fn connect(&mut self, now: Instant, config: Arc<HandshakeConfig>) {
            self.endpoint
                .connect(now, SERVER.parse().unwrap(), config, None)
                .unwrap();
        }

        fn receive(&mut self, now: Instant, datagram: &[u8]) {
            match self
                .endpoint
                .read(now, SERVER.parse().unwrap(), None, BytesMut::from(datagram))
            {
                Ok(events) => {
                    for e in events {
                        match e {
                            EndpointEvent::HandshakeComplete => self.connected = true,
                            EndpointEvent::PeerClosed => self.closed = true,
                            _ => {}
                        }
                    }
                }
                Err(_) => self.failed = true,
            }
        }

        /// The browser's view of the keys: it is the client, so it sends with
        /// the client write key.
        fn keys(&self, suite: SrtpSuite) -> (SrtpKeyMaterial, SrtpKeyMaterial) {
            let state = self
                .endpoint
                .get_connection_state(SERVER.parse().unwrap())
                .unwrap();
            let (k, s) = (suite.key_len(), suite.salt_len());
            let m = state
                .export_keying_material(EXPORTER_LABEL, &[], 2 * (k + s))
                .unwrap();
            let m: &[u8] = m.as_ref();
            let mk = |key: &[u8], salt: &[u8]| SrtpKeyMaterial {
                suite,
                key: Secret::new(key.to_vec()),
                salt: Secret::new(salt.to_vec()),
                mki: None,
            };
            let outbound = mk(&m[..k], &m[2 * k..2 * k + s]);
            let inbound = mk(&m[k..2 * k], &m[2 * k + s..]);
            (outbound, inbound)
        }
    }

    /// Hands datagrams back and forth until both sides are quiet. `drop_server`
    /// decides per server datagram (by index) whether the network loses it.
    fn pump(
        now: Instant,
        server: &mut DtlsServer,
        browser: &mut Browser,
        mut drop_server: impl FnMut(usize) -> bool,
        sent_by_server: &mut usize,
    ) {
        for _ in 0..50 {
            let mut moved = false;
            while let Some(t) = browser.endpoint.poll_transmit() {
                moved = true;
                let _ = server.handle_datagram(now, &t.message);
            }
            while let Some(d) = server.poll_transmit() {
                moved = true;
                let index = *sent_by_server;
                *sent_by_server += 1;
                if !drop_server(index) {
                    browser.receive(now, &d);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("handshake did not settle");
    }

    fn events(server: &mut DtlsServer) -> Vec<DtlsEvent> {
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    fn setup(expected: Option<Fingerprint>) -> (Instant, DtlsIdentity, DtlsServer, Browser) {
        let now = Instant::now();
        let identity = DtlsIdentity::generate().unwrap();
        let browser = Browser::new();
        let expected = expected.unwrap_or_else(|| browser.fingerprint());
        let server = DtlsServer::new(&identity, expected, CLIENT.parse().unwrap(), now).unwrap();
        (now, identity, server, browser)
    }

    fn assert_keys_mirror(
        suite: SrtpSuite,
        inbound: &SrtpKeyMaterial,
        outbound: &SrtpKeyMaterial,
        browser: &Browser,
    ) {
        let (browser_out, browser_in) = browser.keys(suite);
        assert_eq!(&browser_out, inbound);
        assert_eq!(&browser_in, outbound);
        assert_ne!(inbound, outbound);
        // And they work: browser -> gateway and gateway -> browser.
        let rtp = [
            0x80, 0x6f, 0, 1, 0, 0, 0, 160, 0xca, 0xfe, 0xba, 0xbe, 1, 2, 3, 4, 5, 6,
        ];
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        SrtpContext::new(&browser_out)
            .unwrap()
            .protect_rtp(&rtp, &mut wire)
            .unwrap();
        SrtpContext::new(inbound)
            .unwrap()
            .unprotect_rtp(&wire, &mut plain)
            .unwrap();
        assert_eq!(plain, rtp);
        SrtpContext::new(outbound)
            .unwrap()
            .protect_rtp(&rtp, &mut wire)
            .unwrap();
        SrtpContext::new(&browser_in)
            .unwrap()
            .unprotect_rtp(&wire, &mut plain)
            .unwrap();
        assert_eq!(plain, rtp);
    }

    #[test]
    fn handshake_prefers_gcm_and_keys_mirror_the_browser() {
        let (now, identity, mut server, mut browser) = setup(None);
        assert_eq!(server.poll_timeout(), None, "idle until the ClientHello");
        let config = browser.config(
            identity.fingerprint(),
            vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);

        assert!(browser.connected && !browser.failed);
        assert!(server.is_connected());
        assert_eq!(server.poll_timeout(), None);
        let evs = events(&mut server);
        let [DtlsEvent::Connected {
            suite,
            inbound,
            outbound,
        }] = &evs[..]
        else {
            panic!("expected one Connected, got {evs:?}");
        };
        assert_eq!(*suite, SrtpSuite::AeadAes128Gcm);
        assert_eq!(inbound.key.expose().len(), 16);
        assert_eq!(inbound.salt.expose().len(), 12);
        assert_keys_mirror(*suite, inbound, outbound, &browser);
        // Keys never print.
        assert!(!format!("{evs:?}").contains(&format!("{:?}", inbound.key.expose())));
    }

    /// Chromium lists AES_CM first; the server's choice (RFC 5764) is GCM.
    #[test]
    fn gcm_even_when_the_browser_lists_aes_cm_first() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            ],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        match events(&mut server).as_slice() {
            [DtlsEvent::Connected {
                suite,
                inbound,
                outbound,
            }] => {
                assert_eq!(*suite, SrtpSuite::AeadAes128Gcm);
                assert_keys_mirror(*suite, inbound, outbound, &browser);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aes_cm_when_the_browser_offers_only_that() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        match events(&mut server).as_slice() {
            [DtlsEvent::Connected {
                suite,
                inbound,
                outbound,
            }] => {
                assert_eq!(*suite, SrtpSuite::AesCm128HmacSha1_80);
                assert_eq!(inbound.salt.expose().len(), 14);
                assert_keys_mirror(*suite, inbound, outbound, &browser);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_fingerprint_fails_and_never_connects() {
        let other = Browser::new().fingerprint();
        let (now, identity, mut server, mut browser) = setup(Some(other));
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert_eq!(
            events(&mut server),
            vec![DtlsEvent::Failed(DtlsError::FingerprintMismatch)]
        );
        assert!(!server.is_connected());
        assert!(!browser.connected, "the browser must not finish either");
        // Dead: more input changes nothing.
        assert_eq!(server.handle_datagram(now, &[22, 0xfe, 0xfd, 0, 0]), Ok(()));
        assert_eq!(server.poll_event(), None);
        assert_eq!(server.poll_timeout(), None);
    }

    #[test]
    fn browser_without_certificate_is_refused() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            false,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert_eq!(
            events(&mut server),
            vec![DtlsEvent::Failed(DtlsError::NoPeerCertificate)]
        );
        assert!(!browser.connected);
    }

    #[test]
    fn no_common_srtp_profile_fails() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert_eq!(
            events(&mut server),
            vec![DtlsEvent::Failed(DtlsError::NoSrtpProfile)]
        );
        assert!(!browser.connected);
    }

    #[test]
    fn browser_without_use_srtp_gets_no_keys() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(identity.fingerprint(), vec![], true);
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert_eq!(
            events(&mut server),
            vec![DtlsEvent::Failed(DtlsError::NoSrtpProfile)]
        );
        assert!(!server.is_connected());
    }

    #[test]
    fn lost_flight_is_retransmitted_after_poll_timeout() {
        let (start, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            true,
        );
        browser.connect(start, config);
        // Datagram 0 is the HelloVerifyRequest; lose everything after it
        // once (the ServerHello..ServerHelloDone flight).
        let mut sent = 0;
        pump(start, &mut server, &mut browser, |i| i >= 1, &mut sent);
        assert!(!browser.connected);
        let first_flight = sent - 1;
        assert!(first_flight >= 1);
        let deadline = server.poll_timeout().expect("a retransmission timer");
        assert!(deadline > start);

        // Before the deadline nothing happens.
        server.handle_timeout(deadline - Duration::from_millis(1));
        assert!(server.poll_transmit().is_none());

        // At the deadline the flight goes out again and the handshake ends.
        server.handle_timeout(deadline);
        let mut resent = 0;
        while let Some(d) = server.poll_transmit() {
            resent += 1;
            browser.receive(deadline, &d);
        }
        assert_eq!(resent, first_flight, "the same flight, again");
        pump(deadline, &mut server, &mut browser, |_| false, &mut 0);
        assert!(browser.connected);
        assert!(matches!(
            events(&mut server).as_slice(),
            [DtlsEvent::Connected { .. }]
        ));
    }

    #[test]
    fn unanswered_handshake_times_out() {
        let (start, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            true,
        );
        browser.connect(start, config);
        let mut sent = 0;
        pump(start, &mut server, &mut browser, |i| i >= 1, &mut sent);
        // The browser has vanished: keep firing the timer.
        let mut rounds = 0;
        while let Some(deadline) = server.poll_timeout() {
            server.handle_timeout(deadline);
            while server.poll_transmit().is_some() {}
            rounds += 1;
            assert!(rounds < 100, "retransmission never gives up");
        }
        assert_eq!(
            events(&mut server),
            vec![DtlsEvent::Failed(DtlsError::Timeout)]
        );
    }

    #[test]
    fn close_notify_from_the_browser_closes() {
        let (now, identity, mut server, mut browser) = setup(None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert!(matches!(
            events(&mut server).as_slice(),
            [DtlsEvent::Connected { .. }]
        ));
        browser.endpoint.stop(now, SERVER.parse().unwrap());
        while let Some(t) = browser.endpoint.poll_transmit() {
            let _ = server.handle_datagram(now, &t.message);
        }
        assert_eq!(events(&mut server), vec![DtlsEvent::Closed]);
        assert!(!server.is_connected());
    }

    #[test]
    fn junk_never_panics() {
        let (now, _identity, mut server, _browser) = setup(None);
        let mut seed = 7u32;
        for n in 0..300 {
            let mut junk = vec![0u8; n % 120];
            for b in &mut junk {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            if let Some(first) = junk.first_mut() {
                *first = 20 + (*first % 44);
            }
            let _ = server.handle_datagram(now, &junk);
            while server.poll_transmit().is_some() {}
        }
    }

    #[test]
    fn stray_datagrams_before_the_handshake_do_not_kill_it() {
        let (now, identity, mut server, mut browser) = setup(None);
        // Too short for a record header, and a record cut short.
        let _ = server.handle_datagram(now, &[22, 0xfe]);
        let _ = server.handle_datagram(now, &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50, 1]);
        assert_eq!(server.poll_event(), None);
        let config = browser.config(
            identity.fingerprint(),
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            true,
        );
        browser.connect(now, config);
        pump(now, &mut server, &mut browser, |_| false, &mut 0);
        assert!(browser.connected);
        assert!(matches!(
            events(&mut server).as_slice(),
            [DtlsEvent::Connected { .. }]
        ));
    }

    #[test]
    fn association_can_move_to_a_media_worker() {
        fn assert_send<T: Send>() {}
        assert_send::<DtlsServer>();
        assert_send::<DtlsIdentity>();
        assert_send::<super::super::ice_lite::IceLite>();
    }

    #[test]
    fn identity_is_ecdsa_p256_with_sha256_fingerprint() {
        let id = DtlsIdentity::generate().unwrap();
        let fp = id.fingerprint_sha256();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp
            .bytes()
            .all(|c| c == b':' || c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
        assert_eq!(fp, sha256_fingerprint(id.certificate_der()));
        assert!(id.fingerprint().matches(id.certificate_der()));
        assert_eq!(id.fingerprint().to_string(), format!("sha-256 {fp}"));
        // ecdsa-with-SHA256 (1.2.840.10045.4.3.2) and prime256v1
        // (1.2.840.10045.3.1.7) appear in the DER.
        let der = id.certificate_der();
        let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
        assert!(has(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02
        ]));
        assert!(has(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
        ]));
        assert!(!format!("{id:?}").contains("PRIVATE"));
        assert_ne!(DtlsIdentity::generate().unwrap().fingerprint_sha256(), fp);
    }
}
