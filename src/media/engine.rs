//! The face of the media plane for the B2BUA.
//!
//! ```text
//! MediaEngine::new()       → starts the media workers (one per core by
//!                             default), each with its shared browser port
//! MediaEngine::allocate()  → MediaAllocation   a worker, its trunk RTP/RTCP
//!                                               pair, ICE credentials and our
//!                                               SSRCs, written into the SDP
//! MediaAllocation::start() → MediaHandle       once both SDPs are known; the
//!                                               call runs on its worker
//! MediaHandle::stop() / drop                   the call ends, ports are freed
//! ```
//! Events (`BrowserConnected`, `Failed`, `Timeout`) arrive on the channel the
//! B2BUA passes to `start`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::counters::{CallCounters, MediaStats, WorkerStats};
use super::dtls::DtlsIdentity;
use super::ice_lite::IceLite;
use super::port_pool::PortPool;
use super::relay::{CallRelay, RelayParams, TrunkUpdate};
use super::worker::{CallId, Command, LoadGuard, StartCall, WorkerHandle};
use super::MediaError;
use crate::types::{Secret, SrtpSuite, Ssrc};

/// Where media is bound and announced, and how it is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Local address the media sockets bind to.
    pub bind_ip: IpAddr,
    /// Address written into SDP (`c=`, ICE candidates); differs from
    /// `bind_ip` behind 1:1 NAT.
    pub public_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    /// Media worker threads; 0: one per core.
    pub workers: usize,
    /// Browser legs share one UDP port per worker (demultiplexed by ICE),
    /// rather than one port per call.
    pub single_port: bool,
}

/// What a call's media reports to the B2BUA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The browser's DTLS completed and its fingerprint matched; media flows.
    BrowserConnected { suite: SrtpSuite },
    /// A DTLS-SRTP trunk's handshake completed, its fingerprint matched:
    /// the trunk leg runs `suite`.
    TrunkConnected { suite: SrtpSuite },
    /// A private call: the browser and the trunk completed DTLS with each
    /// other through the relay; media flows, the gateway holds no key.
    /// `suite` is the SRTP profile they chose, when the relay could read it.
    PrivateConnected { suite: Option<SrtpSuite> },
    /// The media cannot work (DTLS failure or fingerprint mismatch, SRTP
    /// keying failed). The call's media has ended.
    Failed { reason: String },
    /// No media from one leg for the media timeout (30 s), or the browser
    /// never connected within it. The call's media has ended.
    Timeout,
    /// The browser closed its DTLS association (close_notify): it hung up.
    /// The call's media has ended.
    BrowserClosed,
    /// The trunk sent a DTMF digit as an RFC 4733 event (once per event).
    Dtmf { digit: crate::types::DtmfDigit },
    /// Trunk media came from an IP its SDP does not name and was dropped
    /// (`media_source = "signaled"`); once per call.
    TrunkUnsignaledSource { from: std::net::SocketAddr },
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
    /// `Err` (why) when the workers could not start; reported by `allocate`.
    workers: Result<Vec<Arc<WorkerHandle>>, String>,
    next_call: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for worker in self.workers.iter().flatten() {
            worker.send(Command::Shutdown);
        }
    }
}

impl MediaEngine {
    /// An engine binding in `cfg`'s range and presenting `identity`'s
    /// certificate to browsers; starts the media workers (in single-port
    /// mode each takes one port of the range for its browser legs). An
    /// unusable port range or workers that could not start are reported by
    /// [`startup_error`](Self::startup_error) and every
    /// [`allocate`](Self::allocate) (the config module validates first).
    pub fn new(cfg: MediaConfig, identity: Arc<DtlsIdentity>) -> Self {
        Self::with_batch(cfg, identity, super::worker::batch::BATCH)
    }

    /// As [`new`](Self::new) with `batch` datagrams per syscall (1: no
    /// batching). For the benchmark's with/without comparison.
    #[doc(hidden)]
    pub fn with_batch(cfg: MediaConfig, identity: Arc<DtlsIdentity>, batch: usize) -> Self {
        let pool = PortPool::new(cfg.bind_ip, cfg.port_min, cfg.port_max);
        let workers = match &pool {
            Ok(pool) => start_workers(&cfg, pool, batch),
            Err(e) => Err(e.to_string()),
        };
        // Each worker counts on its own shard; readers get the sum.
        let stats = Arc::new(MediaStats::new(
            workers.iter().flatten().map(|w| w.stats.clone()).collect(),
        ));
        if let Err(e) = &workers {
            tracing::error!(error = %e, "media workers did not start");
        }
        MediaEngine {
            inner: Arc::new(Inner {
                cfg,
                identity,
                stats,
                pool,
                workers,
                next_call: AtomicU64::new(1),
            }),
        }
    }

    /// Why the engine cannot allocate calls, if it cannot (bad port range,
    /// a worker's browser port or thread could not be had).
    pub fn startup_error(&self) -> Option<String> {
        self.inner.workers.as_ref().err().cloned()
    }

    /// Our certificate's SHA-256 fingerprint, for `a=fingerprint:sha-256`.
    pub fn fingerprint_sha256(&self) -> &str {
        self.inner.identity.fingerprint_sha256()
    }

    /// The address to announce in SDP.
    pub fn public_ip(&self) -> IpAddr {
        self.inner.cfg.public_ip
    }

    /// Process-wide media counters, summed over the workers on read (for
    /// `stats` and `/metrics`).
    pub fn stats(&self) -> Arc<MediaStats> {
        self.inner.stats.clone()
    }

    /// Places the call on the worker with the fewest calls, binds the trunk
    /// RTP/RTCP pair (and in per-call port mode the browser port), and makes
    /// ICE credentials and our output SSRCs. Dropping the allocation frees
    /// the ports.
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
        let workers = self
            .inner
            .workers
            .as_ref()
            .map_err(|e| MediaError::Workers(e.clone()))?;
        let worker = workers
            .iter()
            .min_by_key(|w| w.load.load(Relaxed))
            .ok_or_else(|| MediaError::Workers("no media worker".into()))?
            .clone();
        let load = LoadGuard::new(worker.load.clone());
        let (browser_port, browser_socket) = match worker.browser_port {
            Some(port) => (port, None),
            None => {
                let bound = pool.bind_one()?;
                (bound.port, Some(bound.socket))
            }
        };
        let (rtp, rtcp) = pool.bind_pair()?;
        let (ice_ufrag, ice_pwd) = IceLite::generate_credentials();
        Ok(MediaAllocation {
            browser_port,
            trunk_rtp_port: rtp.port,
            trunk_rtcp_port: rtcp.port,
            ice_ufrag,
            ice_pwd,
            ssrc_to_browser: Ssrc(rand::random::<u32>().max(1)),
            ssrc_to_trunk: Ssrc(rand::random::<u32>().max(1)),
            browser_socket,
            trunk_rtp: rtp.socket,
            trunk_rtcp: rtcp.socket,
            load,
            id: self.inner.next_call.fetch_add(1, Relaxed),
            identity: self.inner.identity.clone(),
            stats: worker.stats.clone(),
            worker,
        })
    }
}

/// Starts `cfg.workers` workers (0: one per core), each with a browser port
/// of the range in single-port mode.
fn start_workers(
    cfg: &MediaConfig,
    pool: &PortPool,
    batch: usize,
) -> Result<Vec<Arc<WorkerHandle>>, String> {
    let count = match cfg.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    (0..count)
        .map(|index| {
            let shared = if cfg.single_port {
                let bound = pool.bind_one().map_err(|e| e.to_string())?;
                Some(bound.socket)
            } else {
                None
            };
            WorkerHandle::spawn(index, shared, Arc::new(WorkerStats::default()), batch)
                .map(Arc::new)
                .map_err(|e| format!("cannot start media worker {index}: {e}"))
        })
        .collect()
}

/// Ports and credentials of one call, before its media starts.
pub struct MediaAllocation {
    /// Browser leg port (ICE candidate port), on [`MediaEngine::public_ip`]:
    /// the worker's shared port in single-port mode.
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
    /// The call's own browser socket in per-call port mode.
    browser_socket: Option<std::net::UdpSocket>,
    trunk_rtp: std::net::UdpSocket,
    trunk_rtcp: std::net::UdpSocket,
    worker: Arc<WorkerHandle>,
    load: LoadGuard,
    id: CallId,
    identity: Arc<DtlsIdentity>,
    /// The counters of the worker the call is placed on.
    stats: Arc<WorkerStats>,
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
    /// Hands the call to its worker (under the current tracing span).
    /// `params.browser.local_ufrag`/`local_pwd` are replaced by this
    /// allocation's credentials, and the output SSRCs are
    /// [`ssrc_to_browser`](Self::ssrc_to_browser) and
    /// [`ssrc_to_trunk`](Self::ssrc_to_trunk).
    pub fn start(self, mut params: RelayParams, events: mpsc::Sender<MediaEvent>) -> MediaHandle {
        params.browser.local_ufrag = self.ice_ufrag.clone();
        params.browser.local_pwd = self.ice_pwd.clone();
        let counters = Arc::new(CallCounters::default());
        let relay = CallRelay::new(
            params,
            self.identity.clone(),
            counters.clone(),
            self.stats.clone(),
            std::time::Instant::now(),
        );
        self.start_relay(relay, counters, events)
    }

    /// As [`start`](Self::start) with the browser leg already keyed and at
    /// `browser_addr` (no ICE, no DTLS). For the worker benchmark only.
    #[doc(hidden)]
    pub fn start_keyed_for_bench(
        self,
        mut params: RelayParams,
        browser_inbound: &crate::types::SrtpKeyMaterial,
        browser_outbound: &crate::types::SrtpKeyMaterial,
        browser_addr: std::net::SocketAddr,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<MediaHandle, super::srtp::SrtpError> {
        params.browser.local_ufrag = self.ice_ufrag.clone();
        let counters = Arc::new(CallCounters::default());
        let relay = CallRelay::new_keyed_for_bench(
            params,
            self.identity.clone(),
            browser_inbound,
            browser_outbound,
            browser_addr,
            counters.clone(),
            self.stats.clone(),
            std::time::Instant::now(),
        )?;
        Ok(self.start_relay(relay, counters, events))
    }

    fn start_relay(
        self,
        mut relay: CallRelay,
        counters: Arc<CallCounters>,
        events: mpsc::Sender<MediaEvent>,
    ) -> MediaHandle {
        relay.set_output_ssrcs(self.ssrc_to_browser, self.ssrc_to_trunk);
        let (done, stopped) = oneshot::channel();
        self.worker.send(Command::Start(Box::new(StartCall {
            id: self.id,
            relay,
            ufrag: self.ice_ufrag,
            browser: self.browser_socket,
            trunk_rtp: self.trunk_rtp,
            trunk_rtcp: self.trunk_rtcp,
            events,
            done,
            load: self.load,
            span: tracing::Span::current(),
        })));
        MediaHandle {
            counters,
            worker: self.worker,
            id: self.id,
            stopped: Some(stopped),
        }
    }
}

/// A running call's media. Dropping it stops the media too.
pub struct MediaHandle {
    counters: Arc<CallCounters>,
    worker: Arc<WorkerHandle>,
    id: CallId,
    stopped: Option<oneshot::Receiver<()>>,
}

impl MediaHandle {
    /// This call's packet counters (live).
    pub fn counters(&self) -> Arc<CallCounters> {
        self.counters.clone()
    }

    /// Ends the call's media: its worker sends the browser a DTLS
    /// close_notify and closes the call's sockets (the ports are free once
    /// [`stopped`](Self::stopped) returns). Idempotent.
    pub fn stop(&self) {
        self.worker.send(Command::Stop(self.id));
    }

    /// Waits until the call's media has ended and its ports are freed
    /// (after `stop`, a failure or a timeout).
    pub async fn stopped(&mut self) {
        if let Some(stopped) = self.stopped.as_mut() {
            // An error means the worker is gone, and the sockets with it.
            let _ = stopped.await;
            self.stopped = None;
        }
    }

    /// Sets how long a leg may stay silent before `MediaEvent::Timeout`
    /// (30 s by default). A ringing call with silent early media needs
    /// longer than an answered one.
    pub fn set_media_timeout(&self, timeout: std::time::Duration) {
        self.worker.send(Command::MediaTimeout(self.id, timeout));
    }

    /// The browser held (true) or resumed the call: its audio stops at the
    /// relay or goes to the trunk again. Ignored if the task has ended.
    pub fn set_hold(&self, hold: bool) {
        self.worker.send(Command::Hold(self.id, hold));
    }

    /// A re-INVITE renegotiated the trunk leg (address, keys, SSRCs, payload
    /// types, telephone-event). Ignored if the call's media has ended.
    pub fn update_trunk(&self, update: TrunkUpdate) {
        self.worker
            .send(Command::UpdateTrunk(self.id, Box::new(update)));
    }
}

impl MediaHandle {
    /// Queues a DTMF digit `toward` a side (RFC 4733 packets in the stream
    /// it gets). Ignored if the task has ended.
    pub fn send_dtmf(&self, toward: super::rewrite::Toward, digit: crate::types::DtmfDigit) {
        self.worker.send(Command::Dtmf(self.id, toward, digit));
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        // Only if the media has not already ended: no command for a call
        // the worker forgot.
        if self.stopped.is_some() {
            self.stop();
        }
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

    fn engine(identity: Arc<DtlsIdentity>, single_port: bool) -> MediaEngine {
        let (min, max) = test_range();
        MediaEngine::new(
            MediaConfig {
                bind_ip: LO,
                public_ip: LO,
                port_min: min,
                port_max: max,
                workers: 2,
                single_port,
            },
            identity,
        )
    }

    #[tokio::test]
    async fn end_to_end_over_loopback_udp_single_port() {
        end_to_end_over_loopback_udp(true).await;
    }

    #[tokio::test]
    async fn end_to_end_over_loopback_udp_port_per_call() {
        end_to_end_over_loopback_udp(false).await;
    }

    async fn end_to_end_over_loopback_udp(single_port: bool) {
        let identity = Arc::new(DtlsIdentity::generate().unwrap());
        let engine = engine(identity.clone(), single_port);
        assert_eq!(engine.startup_error(), None);
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

        let stats = engine.stats();
        let unknown = || stats.unknown_source_dropped();
        // Before any check: DTLS from the browser's address is nobody's
        // (single port: dropped and counted by the worker).
        let early_dtls = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        browser_sock.send_to(&early_dtls, gw_browser).await.unwrap();

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
        if single_port {
            // The early ClientHello from an unvalidated address.
            assert_eq!(unknown(), 1);
            // A check naming no call, from a stranger: dropped, no answer.
            let stranger = tokio::net::UdpSocket::bind((LO, 0)).await.unwrap();
            let req = SimBrowser::stun_request("nobody00", "x", true);
            stranger.send_to(&req, gw_browser).await.unwrap();
            let deadline = tokio::time::Instant::now() + WAIT;
            while stats.unknown_ufrag_dropped() < 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(stats.unknown_ufrag_dropped(), 1);
        } else {
            // The call's own port: the early ClientHello reached the call,
            // which dropped it as from an address that passed no check.
            assert_eq!(unknown(), 0);
        }
        assert_eq!(stats.calls_active(), 1);
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(text.contains("gateway_media_packets_total{leg=\"trunk\",direction=\"out\"} 10\n"));

        // Stop frees the ports.
        handle.stop();
        handle.stopped().await;
        // The browser was told: a DTLS alert record (close_notify).
        let (alert, _) = recv(&browser_sock).await;
        assert_eq!(alert[0], 21, "DTLS alert record");
        assert_eq!(stats.calls_active(), 0);
        if single_port {
            // The worker's port stays: other calls share it.
            assert!(std::net::UdpSocket::bind(gw_browser).is_err());
        } else {
            std::net::UdpSocket::bind(gw_browser).expect("browser port freed");
        }
        std::net::UdpSocket::bind(gw_trunk).expect("trunk port freed");
    }

    #[tokio::test]
    async fn failure_ends_the_call_and_reports() {
        let engine = engine(Arc::new(DtlsIdentity::generate().unwrap()), true);
        let alloc = engine.allocate().await.unwrap();
        let port = alloc.trunk_rtp_port;
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

    /// Calls go to the worker with the fewest; each worker has its own
    /// browser port, and an allocation dropped unstarted gives its place
    /// back.
    #[tokio::test]
    async fn calls_are_spread_over_workers() {
        let engine = engine(Arc::new(DtlsIdentity::generate().unwrap()), true);
        let a = engine.allocate().await.unwrap();
        let b = engine.allocate().await.unwrap();
        assert_ne!(a.browser_port, b.browser_port);
        let b_port = b.browser_port;
        drop(b);
        let c = engine.allocate().await.unwrap();
        assert_eq!(c.browser_port, b_port);
        let d = engine.allocate().await.unwrap();
        assert!([a.browser_port, b_port].contains(&d.browser_port));
        assert_ne!(a.ice_ufrag, c.ice_ufrag);
    }

    #[tokio::test]
    async fn invalid_range_is_reported_by_allocate() {
        let engine = MediaEngine::new(
            MediaConfig {
                bind_ip: LO,
                public_ip: LO,
                port_min: 40001,
                port_max: 40001,
                workers: 1,
                single_port: true,
            },
            Arc::new(DtlsIdentity::generate().unwrap()),
        );
        let err = engine.allocate().await.unwrap_err();
        assert!(err.to_string().contains("40001-40001"), "{err}");
    }
}
