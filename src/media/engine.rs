//! The face of the media plane for the B2BUA.
//!
//! ```text
//! MediaEngine::allocate()  → MediaAllocation   ports + ICE credentials + our SSRCs,
//!                                               written into the SDP by `sdp`
//! MediaAllocation::start() → MediaHandle       once both SDPs are known; the
//!                                               call's media task runs
//! MediaHandle::stop() / drop                   task ends, ports are freed
//! ```
//! Events (`BrowserConnected`, `Failed`, `Timeout`) arrive on the channel the
//! B2BUA passes to `start`.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::counters::{CallCounters, MediaStats};
use super::dtls::DtlsIdentity;
use super::ice_lite::IceLite;
use super::port_pool::PortPool;
use super::relay::{CallRelay, RelayParams, TrunkLegParams};
use super::session::{self, CallSockets, Command};
use super::MediaError;
use crate::types::{PayloadType, Secret, SrtpSuite, Ssrc};

/// Where media is bound and announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Local address the media sockets bind to.
    pub bind_ip: IpAddr,
    /// Address written into SDP (`c=`, ICE candidates); differs from
    /// `bind_ip` behind 1:1 NAT.
    pub public_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
}

/// What a call's media reports to the B2BUA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The browser's DTLS completed and its fingerprint matched; media flows.
    BrowserConnected { suite: SrtpSuite },
    /// The media cannot work (DTLS failure or fingerprint mismatch, SRTP
    /// keying failed). The media task has ended.
    Failed { reason: String },
    /// No media from one leg for the media timeout (30 s), or the browser
    /// never connected within it. The media task has ended.
    Timeout,
    /// The browser closed its DTLS association (close_notify): it hung up.
    /// The media task has ended.
    BrowserClosed,
    /// The trunk sent a DTMF digit as an RFC 4733 event (once per event).
    Dtmf { digit: crate::types::DtmfDigit },
}

/// Shared by clones: the process's media engine.
#[derive(Clone)]
pub struct MediaEngine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: MediaConfig,
    identity: Arc<DtlsIdentity>,
    stats: Arc<MediaStats>,
    /// `Err` when the configured range is unusable; reported by `allocate`.
    pool: Result<PortPool, MediaError>,
}

impl MediaEngine {
    /// An engine binding in `cfg`'s range and presenting `identity`'s
    /// certificate to browsers. An unusable port range is reported by every
    /// [`allocate`](Self::allocate) (the config module validates it first).
    pub fn new(cfg: MediaConfig, identity: Arc<DtlsIdentity>) -> Self {
        let pool = PortPool::new(cfg.bind_ip, cfg.port_min, cfg.port_max);
        MediaEngine {
            inner: Arc::new(Inner {
                cfg,
                identity,
                stats: Arc::new(MediaStats::default()),
                pool,
            }),
        }
    }

    /// Our certificate's SHA-256 fingerprint, for `a=fingerprint:sha-256`.
    pub fn fingerprint_sha256(&self) -> &str {
        self.inner.identity.fingerprint_sha256()
    }

    /// The address to announce in SDP.
    pub fn public_ip(&self) -> IpAddr {
        self.inner.cfg.public_ip
    }

    /// Process-wide media counters (for `stats` and `/metrics`).
    pub fn stats(&self) -> Arc<MediaStats> {
        self.inner.stats.clone()
    }

    /// Binds the browser port and the trunk RTP/RTCP pair, and makes ICE
    /// credentials and our output SSRCs. Dropping the allocation frees the
    /// ports.
    pub async fn allocate(&self) -> Result<MediaAllocation, MediaError> {
        let pool = match &self.inner.pool {
            Ok(pool) => pool,
            Err(MediaError::InvalidPortRange { min, max, reason }) => {
                return Err(MediaError::InvalidPortRange {
                    min: *min,
                    max: *max,
                    reason,
                })
            }
            Err(_) => {
                return Err(MediaError::InvalidPortRange {
                    min: self.inner.cfg.port_min,
                    max: self.inner.cfg.port_max,
                    reason: "unusable",
                })
            }
        };
        let browser = pool.bind_one()?;
        let (rtp, rtcp) = pool.bind_pair()?;
        let (ice_ufrag, ice_pwd) = IceLite::generate_credentials();
        Ok(MediaAllocation {
            browser_port: browser.port,
            trunk_rtp_port: rtp.port,
            trunk_rtcp_port: rtcp.port,
            ice_ufrag,
            ice_pwd,
            ssrc_to_browser: Ssrc(rand::random::<u32>().max(1)),
            ssrc_to_trunk: Ssrc(rand::random::<u32>().max(1)),
            sockets: CallSockets {
                browser: browser.socket,
                trunk_rtp: rtp.socket,
                trunk_rtcp: rtcp.socket,
            },
            identity: self.inner.identity.clone(),
            stats: self.inner.stats.clone(),
        })
    }
}

/// Ports and credentials of one call, before its media starts.
pub struct MediaAllocation {
    /// Browser leg port (ICE candidate port), on [`MediaEngine::public_ip`].
    pub browser_port: u16,
    /// Trunk leg `m=` port (even).
    pub trunk_rtp_port: u16,
    /// Trunk leg RTCP port (`trunk_rtp_port + 1`).
    pub trunk_rtcp_port: u16,
    /// Our ICE credentials for the browser SDP.
    pub ice_ufrag: String,
    pub ice_pwd: Secret<String>,
    /// The SSRC we send toward the browser (for `a=ssrc` in its SDP).
    pub ssrc_to_browser: Ssrc,
    /// The SSRC we send toward the trunk (for `a=ssrc` in its SDP).
    pub ssrc_to_trunk: Ssrc,
    sockets: CallSockets,
    identity: Arc<DtlsIdentity>,
    stats: Arc<MediaStats>,
}

impl std::fmt::Debug for MediaAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaAllocation")
            .field("browser_port", &self.browser_port)
            .field("trunk_rtp_port", &self.trunk_rtp_port)
            .field("trunk_rtcp_port", &self.trunk_rtcp_port)
            .field("ice_ufrag", &self.ice_ufrag)
            .finish_non_exhaustive()
    }
}

impl MediaAllocation {
    /// Starts the call's media task (inside the current tokio runtime and
    /// tracing span). `params.browser.local_ufrag`/`local_pwd` are replaced
    /// by this allocation's credentials, and the output SSRCs are
    /// [`ssrc_to_browser`](Self::ssrc_to_browser) and
    /// [`ssrc_to_trunk`](Self::ssrc_to_trunk).
    pub fn start(self, mut params: RelayParams, events: mpsc::Sender<MediaEvent>) -> MediaHandle {
        params.browser.local_ufrag = self.ice_ufrag;
        params.browser.local_pwd = self.ice_pwd;
        let counters = Arc::new(CallCounters::default());
        let mut relay = CallRelay::new(
            params,
            self.identity,
            counters.clone(),
            self.stats.clone(),
            std::time::Instant::now(),
        );
        relay.set_output_ssrcs(self.ssrc_to_browser, self.ssrc_to_trunk);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            session::run(relay, self.sockets, events, command_rx, self.stats)
                .instrument(tracing::Span::current()),
        );
        MediaHandle {
            counters,
            commands,
            task: Some(task),
        }
    }
}

/// A running call's media. Dropping it stops the media too.
pub struct MediaHandle {
    counters: Arc<CallCounters>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MediaHandle {
    /// This call's packet counters (live).
    pub fn counters(&self) -> Arc<CallCounters> {
        self.counters.clone()
    }

    /// Ends the media task: it sends the browser a DTLS close_notify and
    /// exits, dropping its sockets (the ports are free once
    /// [`stopped`](Self::stopped) returns). Idempotent.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// Waits until the media task has ended (after `stop`, a failure or a
    /// timeout).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let _ = task.await;
            self.task = None;
        }
    }

    /// Sets how long a leg may stay silent before `MediaEvent::Timeout`
    /// (30 s by default). A ringing call with silent early media needs
    /// longer than an answered one.
    pub fn set_media_timeout(&self, timeout: std::time::Duration) {
        let _ = self.commands.send(Command::MediaTimeout(timeout));
    }

    /// A re-INVITE renegotiated the trunk leg (address, keys, SSRCs, payload
    /// types). Ignored if the task has ended.
    pub fn update_trunk(
        &self,
        trunk: TrunkLegParams,
        payload_map: Vec<(PayloadType, PayloadType, u32)>,
    ) {
        let _ = self
            .commands
            .send(Command::UpdateTrunk(Box::new((trunk, payload_map))));
    }
}

impl MediaHandle {
    /// Queues a DTMF digit `toward` a side (RFC 4733 packets in the stream
    /// it gets). Ignored if the task has ended.
    pub fn send_dtmf(&self, toward: super::rewrite::Toward, digit: crate::types::DtmfDigit) {
        let _ = self.commands.send(Command::Dtmf(toward, digit));
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        // The task also ends when the channel closes; say it explicitly.
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::counters::DropReason;
    use crate::media::relay::tests::{params, rtp_packet, SimBrowser, OPUS_BROWSER, OPUS_TRUNK};
    use crate::media::relay::TrunkCrypto;
    use crate::media::rewrite::parse_rtp;
    use crate::media::srtp::SrtpContext;
    use crate::types::SrtpKeyMaterial;
    use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const WAIT: Duration = Duration::from_secs(5);

    /// A port range around a free ephemeral port (the pool skips busy ports).
    fn test_range() -> (u16, u16) {
        let probe = std::net::UdpSocket::bind((LO, 0)).unwrap();
        let p = probe.local_addr().unwrap().port();
        let base = (p - p % 2).clamp(1024, 65000);
        (base, base + 63)
    }

    async fn recv(socket: &tokio::net::UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("datagram within 5 s")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[tokio::test]
    async fn end_to_end_over_loopback_udp() {
        let (min, max) = test_range();
        let identity = Arc::new(DtlsIdentity::generate().unwrap());
        let engine = MediaEngine::new(
            MediaConfig {
                bind_ip: LO,
                public_ip: LO,
                port_min: min,
                port_max: max,
            },
            identity.clone(),
        );
        assert_eq!(engine.fingerprint_sha256(), identity.fingerprint_sha256());
        let alloc = engine.allocate().await.unwrap();
        assert_eq!(alloc.trunk_rtp_port % 2, 0);
        assert_eq!(alloc.trunk_rtcp_port, alloc.trunk_rtp_port + 1);
        let gw_browser = SocketAddr::new(LO, alloc.browser_port);
        let gw_trunk = SocketAddr::new(LO, alloc.trunk_rtp_port);

        // The peers: a browser and an SDES trunk, each on its own socket.
        let browser_sock = tokio::net::UdpSocket::bind((LO, 0)).await.unwrap();
        let trunk_sock = tokio::net::UdpSocket::bind((LO, 0)).await.unwrap();
        let mut browser = SimBrowser::new(
            gw_browser,
            vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
        );
        let t_in = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let t_out = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let mut trunk_tx = SrtpContext::new(&t_in).unwrap();
        let mut trunk_rx = SrtpContext::new(&t_out).unwrap();

        let mut p = params(
            TrunkCrypto::Sdes {
                inbound: t_in,
                outbound: t_out,
            },
            None,
            browser.fingerprint.clone(),
            "replaced",
            "replaced",
        );
        p.trunk.remote_rtp = trunk_sock.local_addr().unwrap();
        let ufrag = alloc.ice_ufrag.clone();
        let pwd = alloc.ice_pwd.expose().clone();
        let (ssrc_to_browser, ssrc_to_trunk) = (alloc.ssrc_to_browser, alloc.ssrc_to_trunk);
        let (events_tx, mut events) = tokio::sync::mpsc::channel(8);
        let mut handle = alloc.start(p, events_tx);
        let counters = handle.counters();

        // ICE check, answered.
        let req = SimBrowser::stun_request(&ufrag, &pwd, true);
        browser_sock.send_to(&req, gw_browser).await.unwrap();
        let (resp, from) = recv(&browser_sock).await;
        assert_eq!(from, gw_browser);
        assert_eq!(&resp[0..2], &[0x01, 0x01]);

        // DTLS over the wire.
        let now = std::time::Instant::now();
        for d in browser.connect(now) {
            browser_sock.send_to(&d, gw_browser).await.unwrap();
        }
        while browser.suite.is_none() {
            let (d, _) = recv(&browser_sock).await;
            for reply in browser.handle_dtls(std::time::Instant::now(), &d) {
                browser_sock.send_to(&reply, gw_browser).await.unwrap();
            }
        }
        let event = tokio::time::timeout(WAIT, events.recv()).await.unwrap();
        assert_eq!(
            event,
            Some(MediaEvent::BrowserConnected {
                suite: SrtpSuite::AeadAes128Gcm
            })
        );

        // Browser → trunk.
        for i in 0..10u16 {
            let mut pkt = vec![];
            browser
                .tx
                .as_mut()
                .unwrap()
                .protect_rtp(
                    &rtp_packet(OPUS_BROWSER, i, 960 * u32::from(i), 0xB1, 7),
                    &mut pkt,
                )
                .unwrap();
            browser_sock.send_to(&pkt, gw_browser).await.unwrap();
            let (srtp, from) = recv(&trunk_sock).await;
            assert_eq!(from, gw_trunk, "symmetric: sent from our trunk RTP port");
            let mut plain = vec![];
            trunk_rx.unprotect_rtp(&srtp, &mut plain).unwrap();
            let f = parse_rtp(&plain).unwrap();
            assert_eq!(
                (f.payload_type, f.ssrc, f.sequence),
                (OPUS_TRUNK, ssrc_to_trunk, i)
            );
        }
        // Trunk → browser.
        for i in 0..10u16 {
            let mut pkt = vec![];
            trunk_tx
                .protect_rtp(&rtp_packet(OPUS_TRUNK, 500 + i, 0, 0x71, 9), &mut pkt)
                .unwrap();
            trunk_sock.send_to(&pkt, gw_trunk).await.unwrap();
            let (srtp, from) = recv(&browser_sock).await;
            assert_eq!(from, gw_browser);
            let mut plain = vec![];
            browser
                .rx
                .as_mut()
                .unwrap()
                .unprotect_rtp(&srtp, &mut plain)
                .unwrap();
            let f = parse_rtp(&plain).unwrap();
            assert_eq!((f.payload_type, f.ssrc), (OPUS_BROWSER, ssrc_to_browser));
            assert_eq!(&plain[12..], &[9; 160][..]);
        }
        // A stranger on the trunk port (not the latched source), and the
        // trunk itself injecting a second SSRC: both dropped and counted.
        let stranger = tokio::net::UdpSocket::bind((LO, 0)).await.unwrap();
        stranger
            .send_to(&rtp_packet(OPUS_TRUNK, 1, 0, 0x99, 0), gw_trunk)
            .await
            .unwrap();
        let mut pkt = vec![];
        trunk_tx
            .protect_rtp(&rtp_packet(OPUS_TRUNK, 1, 0, 0x72, 9), &mut pkt)
            .unwrap();
        trunk_sock.send_to(&pkt, gw_trunk).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while counters.trunk.drops_total() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(counters.trunk.drops(DropReason::WrongSource), 1);
        assert_eq!(counters.trunk.drops(DropReason::UnknownSsrc), 1);

        let b = counters.browser.snapshot();
        let t = counters.trunk.snapshot();
        assert!(b.packets_in >= 12 && t.packets_out == 10, "{b:?} {t:?}");
        let stats = engine.stats();
        assert_eq!(
            stats
                .calls_active
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(text.contains("gateway_media_packets_total{leg=\"trunk\",direction=\"out\"} 10\n"));

        // Stop frees the ports.
        handle.stop();
        handle.stopped().await;
        // The browser was told: a DTLS alert record (close_notify).
        let (alert, _) = recv(&browser_sock).await;
        assert_eq!(alert[0], 21, "DTLS alert record");
        assert_eq!(
            stats
                .calls_active
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        std::net::UdpSocket::bind(gw_browser).expect("browser port freed");
        std::net::UdpSocket::bind(gw_trunk).expect("trunk port freed");
    }

    #[tokio::test]
    async fn failure_ends_the_task_and_reports() {
        let (min, max) = test_range();
        let engine = MediaEngine::new(
            MediaConfig {
                bind_ip: LO,
                public_ip: LO,
                port_min: min,
                port_max: max,
            },
            Arc::new(DtlsIdentity::generate().unwrap()),
        );
        let alloc = engine.allocate().await.unwrap();
        let port = alloc.browser_port;
        let mut bad = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        bad.salt = Secret::new(vec![1]);
        let p = params(
            TrunkCrypto::Sdes {
                inbound: bad.clone(),
                outbound: bad,
            },
            None,
            crate::media::fingerprint::Fingerprint::sha256(b"x"),
            "u",
            "p",
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut handle = alloc.start(p, tx);
        let event = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
        assert!(
            matches!(event, Some(MediaEvent::Failed { .. })),
            "{event:?}"
        );
        handle.stopped().await;
        std::net::UdpSocket::bind((LO, port)).expect("port freed after failure");
    }

    #[tokio::test]
    async fn invalid_range_is_reported_by_allocate() {
        let engine = MediaEngine::new(
            MediaConfig {
                bind_ip: LO,
                public_ip: LO,
                port_min: 40001,
                port_max: 40001,
            },
            Arc::new(DtlsIdentity::generate().unwrap()),
        );
        let err = engine.allocate().await.unwrap_err();
        assert!(err.to_string().contains("40001-40001"), "{err}");
    }
}
