//! The per-call relay decision, sans-IO: [`CallRelay`].
//!
//! It is fed datagrams (which leg's socket, from where, the bytes, `now`) and
//! timer ticks, and it answers with datagrams to send ([`CallRelay::poll_transmit`]),
//! events ([`CallRelay::poll_event`]) and its next deadline
//! ([`CallRelay::poll_timeout`]). It owns no socket and reads no clock, so the
//! same struct runs under the per-call tokio task of [`super::session`] today
//! and under batched (recvmmsg/sendmmsg) media workers later.
//!
//! Per datagram: classify (RFC 7983), then
//! - browser STUN → ICE-lite answers; the address that passed is allowed and
//!   (once nominated) is where media to the browser goes;
//! - browser DTLS (only from an allowed address) → the DTLS server, created on
//!   the first one; `Connected` keys the browser SRTP contexts;
//! - RTP and RTCP, either way, SRTP or plain → one pipeline
//!   ([`CallRelay::forward`]) working in place in one buffer: source check →
//!   SSRC pre-check → unprotect → SSRC accept → payload type map → header
//!   rewrite (RTCP: minimal rewrite) → protect → queued for the other leg.
//!
//! Every drop is counted by reason on the leg it arrived on.
//!
//! Invariants:
//! - nothing is forwarded in either direction before the browser's DTLS
//!   handshake completed with the fingerprint of its SDP (`Phase::Connected`);
//! - after `Failed` or `Timeout` nothing is forwarded any more;
//! - the packet path allocates nothing in steady state: a media datagram is
//!   copied once into a pooled buffer (or not at all, through
//!   [`CallRelay::handle_datagram_in_place`]), decrypted, rewritten and
//!   encrypted there, and sent from it; buffers come back to the pool when
//!   the driver polls the next transmit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::{CallCounters, DropReason, Leg, WorkerStats};
use super::demux::{classify, PacketKind};
use super::dtls::{DtlsEvent, DtlsIdentity, DtlsServer};
use super::dtmf::DtmfReceiver;
use super::fingerprint::Fingerprint;
use super::ice_lite::IceLite;
use super::rewrite::{parse_rtp, rewrite_rtcp, rtp_ssrc, PayloadMap, StreamRewriter, Toward};
use super::rtcp_stats::RtcpWatch;
use super::srtp::{SrtpContext, SrtpError, MAX_OVERHEAD};
use super::ssrc_filter::SsrcFilter;
use crate::types::{
    DtlsRole, DtmfDigit, MediaSource, PayloadType, Secret, SrtpKeyMaterial, SrtpSuite, Ssrc,
};

/// What the relay needs to know about the browser leg (from the browser's
/// SDP and our answer).
#[derive(Debug, Clone)]
pub struct BrowserLegParams {
    /// Our ICE credentials (in our SDP to the browser).
    pub local_ufrag: String,
    pub local_pwd: Secret<String>,
    /// The browser's `a=ice-ufrag`.
    pub remote_ufrag: String,
    /// The browser's `a=fingerprint`; the DTLS handshake fails unless the
    /// browser's certificate matches it.
    pub remote_fingerprint: Fingerprint,
    /// The browser's `a=ssrc` values (may be empty: learn the first).
    pub ssrcs: Vec<Ssrc>,
}

/// How the trunk leg is protected.
#[derive(Debug, Clone)]
pub enum TrunkCrypto {
    /// SDES (RFC 4568): `inbound` is the trunk's `a=crypto` key (what it
    /// sends), `outbound` ours (what we send).
    Sdes {
        inbound: SrtpKeyMaterial,
        outbound: SrtpKeyMaterial,
    },
    /// Plain RTP/RTCP.
    Plain,
    /// DTLS-SRTP (RFC 5763/5764) on the trunk's RTP port, without ICE: the
    /// gateway plays `role` (from `a=setup`), the trunk's certificate must
    /// hash to `remote_fingerprint`, the profile is the first of `suites`
    /// both sides have. Nothing is forwarded either way on the trunk leg
    /// until the handshake keyed it.
    Dtls {
        role: DtlsRole,
        remote_fingerprint: Fingerprint,
        suites: Vec<SrtpSuite>,
    },
    /// A private call: the browser's DTLS peer is the trunk. The relay
    /// forwards the DTLS handshake and SRTP/SRTCP both ways unchanged and
    /// never holds a key (see `relay_private.rs`); it still answers the
    /// browser's ICE, checks sources and filters SSRCs (clear headers).
    Passthrough,
}

/// What the relay needs to know about the trunk leg (from the trunk's SDP).
#[derive(Debug, Clone)]
pub struct TrunkLegParams {
    /// The trunk's signaled RTP address (`c=` and `m=` port).
    pub remote_rtp: SocketAddr,
    /// The trunk's RTCP address when rtcp-mux was *not* accepted (`a=rtcp`,
    /// or RTP port + 1); `None` means rtcp-mux: RTCP shares the RTP port and
    /// socket.
    pub remote_rtcp: Option<SocketAddr>,
    pub crypto: TrunkCrypto,
    /// The trunk's `a=ssrc` values (usually empty: learn the first).
    pub ssrcs: Vec<Ssrc>,
    /// Where its plain RTP may come from: the signaled IP only, or latched.
    pub media_source: MediaSource,
}

/// Everything a [`CallRelay`] starts from.
#[derive(Debug, Clone)]
pub struct RelayParams {
    pub browser: BrowserLegParams,
    pub trunk: TrunkLegParams,
    /// `(browser PT, trunk PT, clock rate)` of each negotiated payload
    /// (codec and telephone-event); anything else is dropped.
    pub payload_map: Vec<(PayloadType, PayloadType, u32)>,
    /// The telephone-event (RFC 4733) the trunk leg negotiated, if any:
    /// what `send_dtmf` sends with and what the trunk's events are read
    /// from.
    pub telephone_event: Option<TelephoneEvent>,
}

/// A later SDP of the trunk: its leg, the payload map and the
/// telephone-event as the call now has them.
#[derive(Debug, Clone)]
pub struct TrunkUpdate {
    pub trunk: TrunkLegParams,
    /// As [`RelayParams::payload_map`].
    pub payload_map: Vec<(PayloadType, PayloadType, u32)>,
    /// As [`RelayParams::telephone_event`]: the call's, since a codec change
    /// may have given the browser's telephone-event a new number too.
    pub telephone_event: Option<TelephoneEvent>,
}

/// The telephone-event payload of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Its payload type toward the trunk.
    pub trunk: PayloadType,
    /// Its payload type toward the browser, if the browser negotiated it
    /// too (then it is also in the payload map and relayed both ways);
    /// `None`: the trunk's events reach the browser only as `dtmf` events.
    pub browser: Option<PayloadType>,
    pub clock_rate: u32,
}

/// Why [`CallRelay::send_dtmf`] refused a digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfRefused {
    #[error("the trunk did not negotiate telephone-event (RFC 4733)")]
    NotNegotiated,
    #[error("too many digits are waiting to be sent")]
    QueueFull,
    #[error("the call's media has ended")]
    Stopped,
}

/// Which socket of the call a datagram came in on or goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    /// The browser port (ICE, DTLS, SRTP and SRTCP multiplexed).
    Browser,
    /// The trunk RTP port (and RTCP with rtcp-mux).
    TrunkRtp,
    /// The trunk RTCP port (RTP port + 1) when rtcp-mux is not used.
    TrunkRtcp,
}

/// One datagram to send, borrowed from the relay until the next
/// [`CallRelay::poll_transmit`].
#[derive(Debug)]
pub struct Transmit<'a> {
    pub leg: LegId,
    pub to: SocketAddr,
    pub data: &'a [u8],
}

/// What the relay reports to its driver. Each is reported at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// DTLS with the browser completed, fingerprint verified, SRTP keyed:
    /// media flows from now on.
    BrowserConnected { suite: SrtpSuite },
    /// DTLS with a DTLS-SRTP trunk completed, its fingerprint verified: the
    /// trunk leg is keyed with `suite`.
    TrunkConnected { suite: SrtpSuite },
    /// A private call: the browser and the trunk completed their DTLS
    /// handshake through the relay (or media flows). `suite` is the SRTP
    /// profile the DTLS server's ServerHello chose, when it could be read.
    PrivateConnected { suite: Option<SrtpSuite> },
    /// The call's media cannot work (DTLS failed or the fingerprint did not
    /// match, SRTP keying failed). Nothing is
    /// forwarded any more.
    Failed { reason: String },
    /// No valid packet from `leg` for the media timeout (or the browser never
    /// connected within it). Nothing is forwarded any more.
    Timeout { leg: Leg },
    /// The browser sent a DTLS close_notify (it closed the peer connection).
    /// Nothing is forwarded any more.
    BrowserClosed,
    /// The trunk started a telephone-event (RFC 4733): reported once per
    /// event, not per packet.
    Dtmf { digit: DtmfDigit },
    /// With `media_source = "signaled"`, trunk media (or its DTLS) came from
    /// an IP its SDP does not name and was dropped: reported once per call,
    /// so the operator learns why the trunk leg stays silent (a NATed or
    /// multi-homed trunk needs `media_source = "latch"`).
    TrunkUnsignaledSource { from: SocketAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for ICE and DTLS; every media packet is dropped as NotReady.
    Connecting,
    Connected,
    /// Failed or timed out: terminal.
    Stopped,
}

/// Most addresses a browser validates through STUN that we remember (host,
/// srflx, relay candidates of one or two interfaces); older ones are
/// forgotten first.
const MAX_BROWSER_ADDRS: usize = 8;
/// Output buffers kept for reuse; a burst larger than this allocates.
const POOL_LIMIT: usize = 64;
/// Capacity of a fresh output buffer: an Ethernet-sized datagram plus the
/// most SRTP can add to it.
const BUFFER_CAPACITY: usize = 1500 + MAX_OVERHEAD;

/// What the pipeline is forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Rtp,
    Rtcp,
}

struct BrowserLeg {
    ice: IceLite,
    /// Taken when the DTLS server is created (one per call).
    remote_fingerprint: Option<Fingerprint>,
    dtls: Option<DtlsServer>,
    /// Addresses that passed an ICE connectivity check (consent).
    allowed: Vec<SocketAddr>,
    /// Where media to the browser goes: the nominated pair, or until then
    /// the first address that passed a check.
    dest: Option<SocketAddr>,
    nominated: bool,
    srtp_in: Option<SrtpContext>,
    srtp_out: Option<SrtpContext>,
    filter: SsrcFilter,
}

struct TrunkLeg {
    remote_rtp: SocketAddr,
    remote_rtcp: Option<SocketAddr>,
    srtp: Option<(SrtpContext, SrtpContext)>,
    /// Latched source of RTP (and muxed RTCP), with the time it was last
    /// heard from; a different source may take over after it went silent.
    rtp_latch: Option<(SocketAddr, Instant)>,
    rtcp_latch: Option<(SocketAddr, Instant)>,
    filter: SsrcFilter,
    /// Addresses the trunk leg used before a renegotiation (the early-media
    /// server of a 183, say). Their late packets must not latch the leg
    /// back to them: the new signaled address wins.
    retired: Vec<SocketAddr>,
    media_source: MediaSource,
    /// A DTLS-SRTP trunk: its handshake (`srtp` is `None` until it keyed
    /// the leg).
    dtls: Option<TrunkDtls>,
    /// An SDES leg: the trunk's key its inbound context was made with.
    sdes_in: Option<SrtpKeyMaterial>,
    /// [`RelayEvent::TrunkUnsignaledSource`] went out already.
    unsignaled_reported: bool,
}

/// The DTLS side of a DTLS-SRTP trunk leg.
struct TrunkDtls {
    /// Created at once as the client; as the server, at the trunk's first
    /// DTLS datagram (whose source is the association's key).
    assoc: Option<DtlsServer>,
    role: DtlsRole,
    expected: Fingerprint,
    suites: Vec<SrtpSuite>,
    /// Where our DTLS records go: the signaled RTP address, then the source
    /// of the trunk's last DTLS datagram (a NATed trunk answers from there).
    peer: SocketAddr,
}

impl TrunkDtls {
    fn new(
        role: DtlsRole,
        expected: Fingerprint,
        suites: Vec<SrtpSuite>,
        remote_rtp: SocketAddr,
        identity: &DtlsIdentity,
        now: Instant,
    ) -> Result<Self, String> {
        let assoc = match role {
            DtlsRole::Client => Some(
                DtlsServer::client(identity, expected.clone(), remote_rtp, &suites, now)
                    .map_err(|e| format!("cannot start DTLS toward trunk {remote_rtp}: {e}"))?,
            ),
            DtlsRole::Server => None,
        };
        Ok(TrunkDtls {
            assoc,
            role,
            expected,
            suites,
            peer: remote_rtp,
        })
    }
}

/// How many previous trunk addresses are remembered as retired.
const MAX_RETIRED: usize = 8;

impl TrunkLeg {
    fn rtp_dest(&self) -> SocketAddr {
        self.rtp_latch.map_or(self.remote_rtp, |(addr, _)| addr)
    }

    /// Where RTCP goes, and from which socket.
    fn rtcp_dest(&self) -> (LegId, SocketAddr) {
        match self.remote_rtcp {
            None => (LegId::TrunkRtp, self.rtp_dest()),
            Some(signaled) => (
                LegId::TrunkRtcp,
                self.rtcp_latch.map_or(signaled, |(addr, _)| addr),
            ),
        }
    }
}

struct Queued {
    leg: LegId,
    to: SocketAddr,
    buf: Vec<u8>,
}

/// The media state of one call. See the module documentation.
pub struct CallRelay {
    phase: Phase,
    identity: Arc<DtlsIdentity>,
    browser: BrowserLeg,
    trunk: TrunkLeg,
    payload_map: PayloadMap,
    to_trunk: StreamRewriter,
    to_browser: StreamRewriter,
    counters: Arc<CallCounters>,
    stats: Arc<WorkerStats>,
    /// Loss, jitter and round trip per leg from the RTCP relayed.
    rtcp_watch: RtcpWatch,
    queue: VecDeque<Queued>,
    /// The transmit last handed out by `poll_transmit` (its buffer goes back
    /// to the pool on the next call).
    in_flight: Option<Queued>,
    pool: Vec<Vec<u8>>,
    events: VecDeque<RelayEvent>,
    created: Instant,
    last_browser_rx: Instant,
    last_trunk_rx: Instant,
    media_timeout: Duration,
    telephone_event: Option<TelephoneEvent>,
    /// Digits we play toward the trunk and toward the browser, each
    /// created at its first digit (see `relay_dtmf.rs`).
    dtmf_to_trunk: Option<DtmfOut>,
    dtmf_to_browser: Option<DtmfOut>,
    /// Events from the trunk, told apart from their updates.
    dtmf_in: DtmfReceiver,
    /// The browser put the call on hold: its RTP is taken (the leg stays
    /// alive) but not sent to the trunk, the held party. RTCP still flows.
    hold_trunk: bool,
    /// `Some` for a private call (`TrunkCrypto::Passthrough`).
    private: Option<private_side::Passthrough>,
}

impl CallRelay {
    /// No valid packet from a leg for this long ends the call.
    pub const DEFAULT_MEDIA_TIMEOUT: Duration = Duration::from_secs(30);

    /// A relay waiting for the browser's ICE and DTLS. Never fails: bad trunk
    /// keys give a `RelayEvent::Failed` on the first `poll_event`. Output
    /// SSRCs are random until [`set_output_ssrcs`](Self::set_output_ssrcs).
    pub fn new(
        params: RelayParams,
        identity: Arc<DtlsIdentity>,
        counters: Arc<CallCounters>,
        stats: Arc<WorkerStats>,
        now: Instant,
    ) -> Self {
        let RelayParams {
            browser,
            trunk,
            payload_map,
            telephone_event,
        } = params;
        let mut events = VecDeque::new();
        let mut phase = Phase::Connecting;
        let private = matches!(trunk.crypto, TrunkCrypto::Passthrough)
            .then(private_side::Passthrough::default);
        let (srtp, dtls) = match trunk_keying(&trunk, &identity, now) {
            Ok(keying) => keying,
            Err(reason) => {
                phase = Phase::Stopped;
                events.push_back(RelayEvent::Failed { reason });
                (None, None)
            }
        };
        if srtp.is_some() {
            counters.srtp_contexts.fetch_add(2, Relaxed);
        }
        let ice = IceLite::new(
            browser.local_ufrag,
            browser.local_pwd,
            Some(browser.remote_ufrag),
        );
        let mut relay = CallRelay {
            phase,
            identity,
            browser: BrowserLeg {
                ice,
                remote_fingerprint: Some(browser.remote_fingerprint),
                dtls: None,
                allowed: Vec::with_capacity(MAX_BROWSER_ADDRS),
                dest: None,
                nominated: false,
                srtp_in: None,
                srtp_out: None,
                filter: SsrcFilter::new(browser.ssrcs, SsrcFilter::DEFAULT_SILENCE),
            },
            trunk: TrunkLeg {
                remote_rtp: trunk.remote_rtp,
                remote_rtcp: trunk.remote_rtcp,
                srtp,
                rtp_latch: None,
                rtcp_latch: None,
                filter: SsrcFilter::new(trunk.ssrcs, SsrcFilter::DEFAULT_SILENCE),
                retired: Vec::new(),
                media_source: trunk.media_source,
                dtls,
                sdes_in: sdes_inbound(&trunk.crypto).cloned(),
                unsignaled_reported: false,
            },
            // Jitter is reported in the clock of the stream: the codec's.
            rtcp_watch: RtcpWatch::new(payload_map.first().map_or(8000, |(_, _, clock)| *clock)),
            payload_map: PayloadMap::new(&payload_map),
            to_trunk: StreamRewriter::new(random_ssrc()),
            to_browser: StreamRewriter::new(random_ssrc()),
            counters,
            stats,
            queue: VecDeque::with_capacity(16),
            in_flight: None,
            pool: Vec::with_capacity(POOL_LIMIT),
            events,
            created: now,
            last_browser_rx: now,
            last_trunk_rx: now,
            media_timeout: Self::DEFAULT_MEDIA_TIMEOUT,
            telephone_event,
            dtmf_to_trunk: None,
            dtmf_to_browser: None,
            dtmf_in: DtmfReceiver::default(),
            hold_trunk: false,
            private,
        };
        // A DTLS client toward the trunk speaks first.
        relay.drain_trunk_dtls(now);
        relay
    }

    /// A relay already connected with the given browser SRTP keys and browser
    /// address, skipping ICE and DTLS. For the benchmark and tests only.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn new_keyed_for_bench(
        params: RelayParams,
        identity: Arc<DtlsIdentity>,
        browser_inbound: &SrtpKeyMaterial,
        browser_outbound: &SrtpKeyMaterial,
        browser_addr: SocketAddr,
        counters: Arc<CallCounters>,
        stats: Arc<WorkerStats>,
        now: Instant,
    ) -> Result<Self, SrtpError> {
        let mut relay = Self::new(params, identity, counters, stats, now);
        relay.browser.srtp_in = Some(SrtpContext::new(browser_inbound)?);
        relay.browser.srtp_out = Some(SrtpContext::new(browser_outbound)?);
        relay.counters.srtp_contexts.fetch_add(2, Relaxed);
        relay.browser.allowed.push(browser_addr);
        relay.browser.dest = Some(browser_addr);
        if relay.phase == Phase::Connecting {
            relay.phase = Phase::Connected;
        }
        Ok(relay)
    }

    /// The SSRCs we send: toward the browser and toward the trunk (to be
    /// announced in `a=ssrc`). Call before media flows.
    pub fn set_output_ssrcs(&mut self, to_browser: Ssrc, to_trunk: Ssrc) {
        self.to_browser.set_out_ssrc(to_browser);
        self.to_trunk.set_out_ssrc(to_trunk);
    }

    /// `(toward the browser, toward the trunk)`.
    pub fn output_ssrcs(&self) -> (Ssrc, Ssrc) {
        (self.to_browser.out_ssrc(), self.to_trunk.out_ssrc())
    }

    /// Changes the media timeout (default 30 s).
    pub fn set_media_timeout(&mut self, timeout: Duration) {
        self.media_timeout = timeout;
    }

    /// The browser's hold (true) or resume (false): whether its RTP stops
    /// at the relay instead of going to the trunk. The streams toward the
    /// trunk continue with a gap in sequence numbers on resume, as after loss.
    pub fn set_hold(&mut self, hold: bool) {
        self.hold_trunk = hold;
    }

    /// Whether media is flowing (DTLS done, not failed or timed out).
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Whether `addr` passed an ICE connectivity check of this call: a
    /// worker sharing one browser port among calls routes `addr`'s media
    /// here from then on.
    pub fn browser_address_valid(&self, addr: SocketAddr) -> bool {
        self.browser.allowed.contains(&addr)
    }

    /// Ends the call's media from our side: tells the browser with a DTLS
    /// close_notify (queued for [`poll_transmit`](Self::poll_transmit)) and
    /// stops forwarding. No event is reported: the caller decided.
    pub fn close(&mut self, now: Instant) {
        if let Some(dtls) = self.browser.dtls.as_mut() {
            dtls.close(now);
        }
        // Only the alert: events of a closing association do not matter.
        while let Some(datagram) = self.browser.dtls.as_mut().and_then(|d| d.poll_transmit()) {
            if let Some(dest) = self.browser.dest {
                let mut buf = self.take_buffer();
                buf.extend_from_slice(&datagram);
                self.push(LegId::Browser, dest, buf);
            }
        }
        if let Some(dtls) = self.trunk.dtls.as_mut() {
            let peer = dtls.peer;
            if let Some(assoc) = dtls.assoc.as_mut() {
                assoc.close(now);
            }
            while let Some(datagram) = self
                .trunk
                .dtls
                .as_mut()
                .and_then(|d| d.assoc.as_mut())
                .and_then(|a| a.poll_transmit())
            {
                let mut buf = self.take_buffer();
                buf.extend_from_slice(&datagram);
                self.push(LegId::TrunkRtp, peer, buf);
            }
        }
        self.phase = Phase::Stopped;
    }

    /// A re-INVITE renegotiated the trunk leg: new address, keys, SSRCs and
    /// payload map. The SSRC filter and the latches start over; the output
    /// streams toward both sides continue.
    pub fn update_trunk(&mut self, update: TrunkUpdate, now: Instant) {
        let TrunkUpdate {
            trunk,
            payload_map,
            telephone_event,
        } = update;
        // The same DTLS peer (same certificate, role and address) keeps its
        // association and keys across a re-INVITE (RFC 5763 6.7.1, RFC 8842
        // 5.5); anything else starts a new one.
        let keep = match (&trunk.crypto, &self.trunk.dtls) {
            (
                TrunkCrypto::Dtls {
                    role,
                    remote_fingerprint,
                    ..
                },
                Some(cur),
            ) => {
                *role == cur.role
                    && *remote_fingerprint == cur.expected
                    && trunk.remote_rtp == self.trunk.remote_rtp
            }
            _ => false,
        };
        let (mut srtp, dtls) = if keep {
            (self.trunk.srtp.take(), self.trunk.dtls.take())
        } else {
            match trunk_keying(&trunk, &self.identity, now) {
                Ok(keying) => keying,
                Err(reason) => return self.fail(reason),
            }
        };
        if !keep && srtp.is_some() {
            self.counters.srtp_contexts.fetch_add(2, Relaxed);
        }
        // The trunk's key did not change (the re-INVITE moved the leg, or
        // changed only our key): its stream goes on, and so does our
        // context for it, rollover counters and replay windows included. A
        // fresh one would take a call past 65,536 packets for ROC 0 and
        // fail every packet after the move (RFC 3711 3.3.1).
        let new_in = sdes_inbound(&trunk.crypto);
        if let (Some((fresh, _)), Some((old, _))) = (srtp.as_mut(), self.trunk.srtp.as_mut()) {
            if new_in.is_some() && self.trunk.sdes_in.as_ref() == new_in {
                std::mem::swap(fresh, old);
            }
        }
        self.trunk.sdes_in = new_in.cloned();
        // A latching trunk keeps sending from its NAT's address whatever it
        // signals: only a strict leg retires the sources it latched to.
        let latched = match trunk.media_source {
            MediaSource::Signaled => [
                self.trunk.rtp_latch.map(|(a, _)| a),
                self.trunk.rtcp_latch.map(|(a, _)| a),
            ],
            MediaSource::Latch => [None, None],
        };
        let old = [
            Some(self.trunk.remote_rtp),
            self.trunk.remote_rtcp,
            latched[0],
            latched[1],
        ];
        let new = [Some(trunk.remote_rtp), trunk.remote_rtcp];
        for addr in old.into_iter().flatten() {
            if !new.contains(&Some(addr)) && !self.trunk.retired.contains(&addr) {
                if self.trunk.retired.len() == MAX_RETIRED {
                    self.trunk.retired.remove(0);
                }
                self.trunk.retired.push(addr);
            }
        }
        self.trunk.retired.retain(|a| !new.contains(&Some(*a)));
        self.trunk.remote_rtp = trunk.remote_rtp;
        self.trunk.remote_rtcp = trunk.remote_rtcp;
        self.trunk.srtp = srtp;
        self.trunk.dtls = dtls;
        // A new DTLS client toward the trunk speaks first.
        self.drain_trunk_dtls(now);
        self.trunk.rtp_latch = None;
        self.trunk.rtcp_latch = None;
        self.trunk.filter.reset(trunk.ssrcs);
        self.trunk.media_source = trunk.media_source;
        self.payload_map = PayloadMap::new(&payload_map);
        // Event durations count in the clock of the event's payload: a
        // digit sender made for another clock starts afresh at the next
        // digit (one still playing is cut short, as the codec change cuts
        // the audio).
        if self.telephone_event.map(|t| t.clock_rate) != telephone_event.map(|t| t.clock_rate) {
            self.dtmf_to_trunk = None;
            self.dtmf_to_browser = None;
        }
        self.telephone_event = telephone_event;
    }

    /// Handles one datagram received on `leg`'s socket from `from`.
    pub fn handle_datagram(&mut self, leg: LegId, from: SocketAddr, data: &[u8], now: Instant) {
        match leg {
            LegId::Browser => {
                self.counters.browser.add_in_single_writer(data.len());
                self.stats.browser.add_in_single_writer(data.len());
                self.handle_browser(from, data, now);
            }
            LegId::TrunkRtp | LegId::TrunkRtcp => {
                self.counters.trunk.add_in_single_writer(data.len());
                self.stats.trunk.add_in_single_writer(data.len());
                self.handle_trunk(leg, from, data, now);
            }
        }
    }

    /// Handles one datagram received on `leg` from `from` in the caller's
    /// buffer, without copying it: RTP and RTCP are decrypted, rewritten and
    /// re-encrypted in place, and `Some((leg, to))` means `buf` now holds the
    /// datagram to send on `leg` to `to`. Anything else (STUN, DTLS, a drop)
    /// gives `None`; answers to STUN and DTLS are queued for
    /// [`poll_transmit`](Self::poll_transmit) as with
    /// [`handle_datagram`](Self::handle_datagram). `buf` grows by at most
    /// [`MAX_OVERHEAD`] bytes; with that much spare capacity it never
    /// reallocates. The seam for a driver that receives into its own buffers
    /// (recvmmsg batches) and sends from them.
    pub fn handle_datagram_in_place(
        &mut self,
        leg: LegId,
        from: SocketAddr,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Option<(LegId, SocketAddr)> {
        let kind = match classify(buf) {
            PacketKind::Rtp => Media::Rtp,
            PacketKind::Rtcp => Media::Rtcp,
            _ => {
                self.handle_datagram(leg, from, buf, now);
                return None;
            }
        };
        let arrival = counted_leg(leg);
        self.counters.leg(arrival).add_in_single_writer(buf.len());
        self.stats.leg(arrival).add_in_single_writer(buf.len());
        match self.forward(leg, from, kind, buf, now) {
            Ok(Some((out_leg, to))) => {
                let out = counted_leg(out_leg);
                self.counters.leg(out).add_out_single_writer(buf.len());
                self.stats.leg(out).add_out_single_writer(buf.len());
                Some((out_leg, to))
            }
            Ok(None) => None,
            Err(reason) => {
                self.drop(arrival, reason);
                None
            }
        }
    }

    /// The next datagram to send. Its bytes stay valid until the next call.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if let Some(done) = self.in_flight.take() {
            self.recycle(done.buf);
        }
        self.in_flight = self.queue.pop_front();
        self.in_flight.as_ref().map(|q| Transmit {
            leg: q.leg,
            to: q.to,
            data: &q.buf,
        })
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has something to do (DTLS retransmission, media timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let media = match self.phase {
            Phase::Connecting => Some(self.created + self.media_timeout),
            // The deadline of the leg heard from least recently; when it
            // fires and the leg has spoken since, the deadline just moves.
            Phase::Connected => {
                Some(self.last_browser_rx.min(self.last_trunk_rx) + self.media_timeout)
            }
            Phase::Stopped => return None,
        };
        let dtls = self.browser.dtls.as_ref().and_then(|d| d.poll_timeout());
        let trunk_dtls = self
            .trunk
            .dtls
            .as_ref()
            .and_then(|d| d.assoc.as_ref())
            .and_then(|a| a.poll_timeout());
        [media, dtls, trunk_dtls, self.dtmf_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Stopped {
            return;
        }
        if let Some(dtls) = self.browser.dtls.as_mut() {
            dtls.handle_timeout(now);
        }
        self.drain_dtls(now);
        if let Some(assoc) = self.trunk.dtls.as_mut().and_then(|d| d.assoc.as_mut()) {
            assoc.handle_timeout(now);
        }
        self.drain_trunk_dtls(now);
        if self.phase == Phase::Stopped {
            return;
        }
        let expired = |last: Instant| now.saturating_duration_since(last) >= self.media_timeout;
        let timed_out = match self.phase {
            Phase::Connecting if expired(self.created) => Some(Leg::Browser),
            Phase::Connected if expired(self.last_browser_rx) => Some(Leg::Browser),
            Phase::Connected if expired(self.last_trunk_rx) => Some(Leg::Trunk),
            _ => None,
        };
        if let Some(leg) = timed_out {
            self.phase = Phase::Stopped;
            WorkerStats::incr(&self.stats.media_timeouts);
            self.events.push_back(RelayEvent::Timeout { leg });
        }
        self.play_dtmf(now);
    }

    // ---- browser leg ------------------------------------------------------

    fn handle_browser(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        match classify(data) {
            PacketKind::Stun => self.browser_stun(from, data, now),
            PacketKind::Dtls => self.browser_dtls(from, data, now),
            PacketKind::Rtp => self.media(LegId::Browser, from, Media::Rtp, data, now),
            PacketKind::Rtcp => self.media(LegId::Browser, from, Media::Rtcp, data, now),
            PacketKind::Unknown => self.drop(Leg::Browser, DropReason::Malformed),
        }
    }

    fn browser_stun(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if self.phase == Phase::Stopped {
            return self.drop(Leg::Browser, DropReason::NotReady);
        }
        let mut buf = self.take_buffer();
        match self.browser.ice.handle_stun(data, from, &mut buf) {
            Ok(outcome) => {
                let b = &mut self.browser;
                if !b.allowed.contains(&from) {
                    if b.allowed.len() == MAX_BROWSER_ADDRS {
                        b.allowed.remove(0);
                    }
                    b.allowed.push(from);
                }
                // ICE-lite: the controlling browser decides. Follow its
                // nomination; before one, answer media where checks came from.
                if outcome.nominated {
                    b.dest = Some(from);
                    b.nominated = true;
                } else if b.dest.is_none() || !b.nominated {
                    b.dest = Some(from);
                }
                // Consent freshness (RFC 7675) proves the browser is alive.
                if self.phase == Phase::Connected {
                    self.last_browser_rx = now;
                }
                if buf.is_empty() {
                    self.recycle(buf);
                } else {
                    self.push(LegId::Browser, from, buf);
                }
                // A private call: the trunk's DTLS that came before the
                // browser's address was known goes out now.
                self.flush_private_pending();
            }
            Err(_) => {
                // Not logged: a per-packet event an attacker controls. The
                // agent may have written the error response RFC 5389 asks
                // for (400/401/420, no larger than the request: no
                // amplification); it goes back to the sender.
                self.drop(Leg::Browser, DropReason::StunRejected);
                if buf.is_empty() {
                    self.recycle(buf);
                } else {
                    self.push(LegId::Browser, from, buf);
                }
            }
        }
    }

    fn browser_dtls(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if self.phase == Phase::Stopped {
            return self.drop(Leg::Browser, DropReason::NotReady);
        }
        if !self.browser.allowed.contains(&from) {
            return self.drop(Leg::Browser, DropReason::WrongSource);
        }
        if self.private.is_some() {
            return self.private_browser_dtls(data, now);
        }
        if self.browser.dtls.is_none() {
            let Some(expected) = self.browser.remote_fingerprint.take() else {
                return self.drop(Leg::Browser, DropReason::NotReady);
            };
            match DtlsServer::new(&self.identity, expected, from, now) {
                Ok(server) => self.browser.dtls = Some(server),
                Err(e) => {
                    return self.fail(format!("cannot start DTLS with browser {from}: {e}"));
                }
            }
        }
        if let Some(dtls) = self.browser.dtls.as_mut() {
            if dtls.handle_datagram(now, data).is_err() {
                // A bad record is dropped; a fatal handshake error arrives
                // as DtlsEvent::Failed below.
                self.drop(Leg::Browser, DropReason::Malformed);
            }
        }
        self.drain_dtls(now);
    }

    /// Sends what the DTLS server queued and acts on its events.
    fn drain_dtls(&mut self, now: Instant) {
        loop {
            let Some(dtls) = self.browser.dtls.as_mut() else {
                return;
            };
            if let Some(datagram) = dtls.poll_transmit() {
                if let Some(dest) = self.browser.dest {
                    let mut buf = self.take_buffer();
                    buf.extend_from_slice(&datagram);
                    self.push(LegId::Browser, dest, buf);
                }
                continue;
            }
            let Some(event) = dtls.poll_event() else {
                return;
            };
            match event {
                DtlsEvent::Connected {
                    suite,
                    inbound,
                    outbound,
                } => {
                    if self.phase != Phase::Connecting {
                        continue;
                    }
                    match (SrtpContext::new(&inbound), SrtpContext::new(&outbound)) {
                        (Ok(i), Ok(o)) => {
                            self.counters.srtp_contexts.fetch_add(2, Relaxed);
                            self.browser.srtp_in = Some(i);
                            self.browser.srtp_out = Some(o);
                            self.phase = Phase::Connected;
                            self.last_browser_rx = now;
                            self.last_trunk_rx = now;
                            WorkerStats::incr(&self.stats.dtls_connected);
                            self.events
                                .push_back(RelayEvent::BrowserConnected { suite });
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            self.fail(format!("cannot key DTLS-SRTP ({suite}): {e}"));
                        }
                    }
                }
                DtlsEvent::Failed(e) => {
                    WorkerStats::incr(&self.stats.dtls_failed);
                    let peer = self
                        .browser
                        .dest
                        .map_or_else(|| "?".to_string(), |a| a.to_string());
                    self.fail(format!("DTLS with browser {peer} failed: {e}"));
                }
                DtlsEvent::Closed => {
                    // close_notify: the browser closed its peer connection,
                    // i.e. it hung up. Not a failure.
                    if self.phase != Phase::Stopped {
                        self.phase = Phase::Stopped;
                        self.events.push_back(RelayEvent::BrowserClosed);
                    }
                }
            }
        }
    }

    // ---- trunk leg --------------------------------------------------------

    fn handle_trunk(&mut self, leg: LegId, from: SocketAddr, data: &[u8], now: Instant) {
        match classify(data) {
            PacketKind::Rtp => self.media(leg, from, Media::Rtp, data, now),
            PacketKind::Rtcp => self.media(leg, from, Media::Rtcp, data, now),
            PacketKind::Dtls if self.trunk.dtls.is_some() => self.trunk_dtls(leg, from, data, now),
            PacketKind::Dtls if self.private.is_some() => {
                self.private_trunk_dtls(leg, from, data, now)
            }
            // STUN/DTLS toward a SDES or plain trunk, or noise.
            _ => self.drop(Leg::Trunk, DropReason::Malformed),
        }
    }

    /// A DTLS datagram from a DTLS-SRTP trunk. Only on the RTP port: with
    /// rtcp-mux refused, RFC 5764 would want a second association on the
    /// RTCP port, which is not run (its datagrams are dropped, counted).
    /// With `media_source = "signaled"` it must come from the signaled IP;
    /// either way the fingerprint check decides who the peer is.
    fn trunk_dtls(&mut self, leg: LegId, from: SocketAddr, data: &[u8], now: Instant) {
        if self.phase == Phase::Stopped {
            return self.drop(Leg::Trunk, DropReason::NotReady);
        }
        if leg != LegId::TrunkRtp
            || (self.trunk.media_source == MediaSource::Signaled
                && from.ip() != self.trunk.remote_rtp.ip())
            || self.trunk.retired.contains(&from)
        {
            self.report_unsignaled(from);
            return self.drop(Leg::Trunk, DropReason::WrongSource);
        }
        let identity = self.identity.clone();
        let Some(dtls) = self.trunk.dtls.as_mut() else {
            return;
        };
        if dtls.assoc.is_none() {
            match DtlsServer::new_server(&identity, dtls.expected.clone(), from, &dtls.suites, now)
            {
                Ok(server) => dtls.assoc = Some(server),
                Err(e) => return self.fail(format!("cannot start DTLS with trunk {from}: {e}")),
            }
        }
        dtls.peer = from;
        let bad = dtls
            .assoc
            .as_mut()
            .is_some_and(|a| a.handle_datagram(now, data).is_err());
        if bad {
            // A bad record is dropped; a fatal handshake error arrives as
            // DtlsEvent::Failed below.
            self.drop(Leg::Trunk, DropReason::Malformed);
        }
        self.drain_trunk_dtls(now);
    }

    /// Sends what the trunk's DTLS association queued and acts on its
    /// events: `Connected` keys the trunk leg, `Failed` ends the call. What
    /// the association queued together with a failure (its fatal alert) is
    /// not sent: a peer whose certificate failed the fingerprint check is
    /// told nothing, and a genuine trunk hears the call's BYE, so that the
    /// call ends for the failure rather than for the trunk's reaction to
    /// the alert.
    fn drain_trunk_dtls(&mut self, _now: Instant) {
        let Some(dtls) = self.trunk.dtls.as_mut() else {
            return;
        };
        let peer = dtls.peer;
        let Some(assoc) = dtls.assoc.as_mut() else {
            return;
        };
        let mut outgoing = Vec::new();
        while let Some(datagram) = assoc.poll_transmit() {
            outgoing.push(datagram);
        }
        let events: Vec<DtlsEvent> = std::iter::from_fn(|| assoc.poll_event()).collect();
        let failed = events.iter().any(|e| matches!(e, DtlsEvent::Failed(_)));
        if !failed {
            for datagram in outgoing {
                let mut buf = self.take_buffer();
                buf.extend_from_slice(&datagram);
                self.push(LegId::TrunkRtp, peer, buf);
            }
        }
        for event in events {
            match event {
                DtlsEvent::Connected {
                    suite,
                    inbound,
                    outbound,
                } => match (SrtpContext::new(&inbound), SrtpContext::new(&outbound)) {
                    (Ok(i), Ok(o)) => {
                        tracing::info!(%suite, trunk = %peer, "trunk DTLS-SRTP connected");
                        self.counters.srtp_contexts.fetch_add(2, Relaxed);
                        self.trunk.srtp = Some((i, o));
                        self.events.push_back(RelayEvent::TrunkConnected { suite });
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        self.fail(format!("cannot key DTLS-SRTP toward trunk ({suite}): {e}"));
                    }
                },
                DtlsEvent::Failed(e) => {
                    self.fail(format!("DTLS with trunk {peer} failed: {e}"));
                }
                DtlsEvent::Closed => {
                    // close_notify: the trunk is hanging up (its BYE ends the
                    // call). Its keys are gone: nothing more is forwarded.
                    tracing::info!(trunk = %peer, "trunk closed DTLS");
                    self.trunk.srtp = None;
                }
            }
        }
    }

    /// Source check of the trunk leg: plain RTP must come from the signaled
    /// IP (unless `media_source = latch`); any trunk packet must come from
    /// the latched address unless that one went silent. (SRTP sources are
    /// checked again by authentication; a latching plain leg by its SSRC and
    /// payload type before it latches.)
    fn trunk_source_ok(
        &self,
        leg: LegId,
        from: SocketAddr,
        now: Instant,
    ) -> Result<(), DropReason> {
        let (signaled, latch) = match (leg, self.trunk.remote_rtcp) {
            (LegId::TrunkRtcp, Some(rtcp)) => (rtcp, self.trunk.rtcp_latch),
            _ => (self.trunk.remote_rtp, self.trunk.rtp_latch),
        };
        if self.trunk.srtp.is_none()
            && self.trunk.media_source == MediaSource::Signaled
            && from.ip() != signaled.ip()
        {
            return Err(DropReason::WrongSource);
        }
        if self.trunk.retired.contains(&from) {
            return Err(DropReason::WrongSource);
        }
        match latch {
            Some((addr, last))
                if addr != from
                    && now.saturating_duration_since(last) < self.trunk.filter.silence() =>
            {
                Err(DropReason::WrongSource)
            }
            _ => Ok(()),
        }
    }

    /// A trunk packet dropped for its source: if the strict default was the
    /// reason (the IP is not in the SDP at all), say so once.
    fn report_unsignaled(&mut self, from: SocketAddr) {
        let t = &mut self.trunk;
        let signaled = |ip| ip == t.remote_rtp.ip() || t.remote_rtcp.is_some_and(|r| r.ip() == ip);
        if t.unsignaled_reported
            || t.media_source != MediaSource::Signaled
            || signaled(from.ip())
            || t.retired.contains(&from)
        {
            return;
        }
        t.unsignaled_reported = true;
        self.events
            .push_back(RelayEvent::TrunkUnsignaledSource { from });
    }

    fn latch(&mut self, leg: LegId, from: SocketAddr, now: Instant) {
        let slot = match (leg, self.trunk.remote_rtcp) {
            (LegId::TrunkRtcp, Some(_)) => &mut self.trunk.rtcp_latch,
            _ => &mut self.trunk.rtp_latch,
        };
        if slot.is_none_or(|(addr, _)| addr != from) {
            // Once per (re)latch, not per packet.
            tracing::info!(leg = ?leg, source = %from, signaled = %self.trunk.remote_rtp,
                "trunk media latched");
        }
        *slot = Some((from, now));
        self.last_trunk_rx = now;
    }

    // ---- the forwarding pipeline ------------------------------------------

    /// One RTP or RTCP datagram from `leg`: copied once into the buffer it
    /// will be sent from, forwarded in place, then queued, or dropped and
    /// counted.
    fn media(&mut self, leg: LegId, from: SocketAddr, kind: Media, data: &[u8], now: Instant) {
        let mut buf = self.take_buffer();
        buf.extend_from_slice(data);
        match self.forward(leg, from, kind, &mut buf, now) {
            Ok(Some((out_leg, to))) => self.push(out_leg, to, buf),
            Ok(None) => self.recycle(buf),
            Err(reason) => {
                self.recycle(buf);
                self.drop(counted_leg(leg), reason);
            }
        }
    }

    /// The one pipeline for both directions, RTP and RTCP, SRTP and plain,
    /// in place in `buf` (the datagram on entry, what to send on success):
    ///
    /// 1. admit: browser media only from an address that passed ICE, trunk
    ///    media only from the signaled/latched source; nothing before the
    ///    browser's DTLS completed;
    /// 2. SSRC pre-check (RTP), before spending a decryption;
    /// 3. unprotect in place (a plain trunk's packet already is plaintext);
    /// 4. RTP: parse, accept the SSRC, mark the leg alive, map the payload
    ///    type, rewrite SSRC/sequence/timestamp; RTCP: watch, rewrite, mark
    ///    the leg alive;
    /// 5. protect in place for the other leg (or leave plain).
    ///
    /// Returns where `buf` goes, `None` when nothing is left to forward (RTCP
    /// made only of feedback the other side never negotiated), or the reason
    /// to drop it.
    fn forward(
        &mut self,
        leg: LegId,
        from: SocketAddr,
        kind: Media,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Option<(LegId, SocketAddr)>, DropReason> {
        let toward = match leg {
            LegId::Browser => Toward::Trunk,
            LegId::TrunkRtp | LegId::TrunkRtcp => Toward::Browser,
        };
        match toward {
            Toward::Trunk if !self.browser.allowed.contains(&from) => {
                return Err(DropReason::WrongSource)
            }
            Toward::Trunk => {}
            Toward::Browser => {
                if let Err(reason) = self.trunk_source_ok(leg, from, now) {
                    self.report_unsignaled(from);
                    return Err(reason);
                }
            }
        }
        if self.private.is_some() {
            return self.forward_private(leg, from, kind, buf, now);
        }
        if self.phase != Phase::Connected {
            return Err(DropReason::NotReady);
        }
        // A DTLS-SRTP trunk leg carries nothing before its handshake keyed
        // it (nor after the trunk closed it).
        if self.trunk.dtls.is_some() && self.trunk.srtp.is_none() {
            return Err(DropReason::NotReady);
        }

        // Before decrypting: cheaper, and the SRTP context keeps no state
        // for SSRCs an attacker sprays.
        let ssrc = match kind {
            Media::Rtp => {
                let ssrc = rtp_ssrc(buf).ok_or(DropReason::Malformed)?;
                self.arrival_filter(toward).check(ssrc, now)?;
                Some(ssrc)
            }
            Media::Rtcp => None,
        };

        let inbound = match toward {
            Toward::Trunk => Some(self.browser.srtp_in.as_mut().ok_or(DropReason::NotReady)?),
            Toward::Browser => self.trunk.srtp.as_mut().map(|(srtp_in, _)| srtp_in),
        };
        if let Some(srtp_in) = inbound {
            let len = match kind {
                Media::Rtp => srtp_in.unprotect_rtp_in_place(buf),
                Media::Rtcp => srtp_in.unprotect_rtcp_in_place(buf),
            }
            .map_err(drop_reason)?;
            buf.truncate(len);
        }

        match (kind, ssrc) {
            (Media::Rtp, Some(ssrc)) => {
                let fields = parse_rtp(buf)?;
                // A packet of a payload type nobody negotiated proves nothing
                // about its source: it must not latch a trunk leg.
                let trunk_event = toward == Toward::Browser
                    && self
                        .telephone_event
                        .is_some_and(|te| te.trunk.0 == fields.payload_type);
                let mapped = self.payload_map.map(toward, fields.payload_type);
                if !trunk_event && mapped.is_none() {
                    return Err(DropReason::UnknownPayloadType);
                }
                self.arrival_filter(toward).accept(ssrc, now);
                self.heard_from(leg, from, now);
                if self.dtmf_consumes(toward, &fields, buf) {
                    return Ok(None);
                }
                // The browser holds the trunk: its audio is taken (the leg
                // stays alive) and not forwarded.
                if self.hold_trunk && toward == Toward::Trunk {
                    return Ok(None);
                }
                // (a trunk event the browser did not negotiate was consumed)
                let (pt, clock_rate) = mapped.ok_or(DropReason::UnknownPayloadType)?;
                let rewriter = match toward {
                    Toward::Trunk => &mut self.to_trunk,
                    Toward::Browser => &mut self.to_browser,
                };
                rewriter.rewrite(buf, &fields, pt, clock_rate, now);
            }
            _ => {
                self.rtcp_watch
                    .observe(counted_leg(leg), buf, now, &self.counters);
                // RTCP is not SSRC-filtered: a receive-only browser reports
                // with an SSRC it never sends RTP from, and authentication
                // (or a plain trunk's source check) already vetted the sender.
                let (same, opposite) = match toward {
                    Toward::Trunk => (&self.to_trunk, &self.to_browser),
                    Toward::Browser => (&self.to_browser, &self.to_trunk),
                };
                let len = rewrite_rtcp(buf, same, opposite)?;
                self.heard_from(leg, from, now);
                if len == 0 {
                    return Ok(None);
                }
                buf.truncate(len);
            }
        }

        let (out_leg, to, outbound) = match toward {
            Toward::Trunk => {
                let (out_leg, to) = match kind {
                    Media::Rtp => (LegId::TrunkRtp, self.trunk.rtp_dest()),
                    Media::Rtcp => self.trunk.rtcp_dest(),
                };
                (out_leg, to, self.trunk.srtp.as_mut().map(|(_, out)| out))
            }
            Toward::Browser => {
                let (Some(srtp_out), Some(dest)) =
                    (self.browser.srtp_out.as_mut(), self.browser.dest)
                else {
                    return Err(DropReason::NotReady);
                };
                (LegId::Browser, dest, Some(srtp_out))
            }
        };
        if let Some(srtp_out) = outbound {
            let len = buf.len();
            // Room for the tag (and SRTCP index); within the buffer's
            // capacity, so no reallocation.
            buf.resize(len + MAX_OVERHEAD, 0);
            let len = match kind {
                Media::Rtp => srtp_out.protect_rtp_in_place(buf, len),
                Media::Rtcp => srtp_out.protect_rtcp_in_place(buf, len),
            }
            .map_err(drop_reason)?;
            buf.truncate(len);
        }
        Ok(Some((out_leg, to)))
    }

    /// The SSRC filter of the leg a packet going `toward` arrived on.
    fn arrival_filter(&mut self, toward: Toward) -> &mut SsrcFilter {
        match toward {
            Toward::Trunk => &mut self.browser.filter,
            Toward::Browser => &mut self.trunk.filter,
        }
    }

    /// A packet from `leg` proved genuine (authenticated, or a plain trunk's
    /// packet that parsed): the leg is alive, and a trunk latches to it.
    fn heard_from(&mut self, leg: LegId, from: SocketAddr, now: Instant) {
        match leg {
            LegId::Browser => self.last_browser_rx = now,
            LegId::TrunkRtp | LegId::TrunkRtcp => self.latch(leg, from, now),
        }
    }

    // ---- plumbing ---------------------------------------------------------

    fn fail(&mut self, reason: String) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        tracing::warn!(%reason, "media relay failed");
        self.events.push_back(RelayEvent::Failed { reason });
    }

    fn drop(&self, leg: Leg, reason: DropReason) {
        self.counters.leg(leg).add_drop_single_writer(reason);
        self.stats.leg(leg).add_drop_single_writer(reason);
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY))
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_LIMIT {
            buf.clear();
            self.pool.push(buf);
        }
    }

    fn push(&mut self, leg: LegId, to: SocketAddr, buf: Vec<u8>) {
        let out_leg = counted_leg(leg);
        self.counters.leg(out_leg).add_out_single_writer(buf.len());
        self.stats.leg(out_leg).add_out_single_writer(buf.len());
        self.queue.push_back(Queued { leg, to, buf });
    }
}

/// The trunk leg's SRTP contexts (SDES) or DTLS side (DTLS-SRTP, keyed
/// later), or neither (plain); `Err` names why the keys are unusable.
#[allow(clippy::type_complexity)]
fn trunk_keying(
    trunk: &TrunkLegParams,
    identity: &DtlsIdentity,
    now: Instant,
) -> Result<(Option<(SrtpContext, SrtpContext)>, Option<TrunkDtls>), String> {
    match &trunk.crypto {
        // A private call's trunk leg is keyed by nobody here.
        TrunkCrypto::Plain | TrunkCrypto::Passthrough => Ok((None, None)),
        TrunkCrypto::Sdes { inbound, outbound } => {
            match (SrtpContext::new(inbound), SrtpContext::new(outbound)) {
                (Ok(i), Ok(o)) => Ok((Some((i, o)), None)),
                (Err(e), _) | (_, Err(e)) => Err(format!(
                    "cannot key SDES-SRTP toward trunk {} ({}): {e}",
                    trunk.remote_rtp, inbound.suite
                )),
            }
        }
        TrunkCrypto::Dtls {
            role,
            remote_fingerprint,
            suites,
        } => TrunkDtls::new(
            *role,
            remote_fingerprint.clone(),
            suites.clone(),
            trunk.remote_rtp,
            identity,
            now,
        )
        .map(|dtls| (None, Some(dtls))),
    }
}

/// The trunk's key of an SDES leg.
fn sdes_inbound(crypto: &TrunkCrypto) -> Option<&SrtpKeyMaterial> {
    match crypto {
        TrunkCrypto::Sdes { inbound, .. } => Some(inbound),
        _ => None,
    }
}

fn drop_reason(e: SrtpError) -> DropReason {
    match e {
        SrtpError::AuthFailed => DropReason::AuthFailed,
        SrtpError::Replay => DropReason::Replay,
        SrtpError::Malformed
        | SrtpError::NoRoom { .. }
        | SrtpError::UnsupportedSuite(_)
        | SrtpError::Other(_) => DropReason::Malformed,
    }
}

/// The counters' name for a socket of the call.
fn counted_leg(leg: LegId) -> Leg {
    match leg {
        LegId::Browser => Leg::Browser,
        LegId::TrunkRtp | LegId::TrunkRtcp => Leg::Trunk,
    }
}

fn random_ssrc() -> Ssrc {
    // Zero is legal but some stacks treat it as "unset"; avoid it.
    Ssrc(rand::random::<u32>().max(1))
}

/// The DTMF half of `CallRelay`: digits we play into either stream, and
/// the trunk's events.
#[path = "relay_dtmf.rs"]
mod dtmf_side;
use dtmf_side::DtmfOut;

/// The private-call (passthrough) half of `CallRelay`: DTLS and SRTP
/// relayed unchanged, no keys.
#[path = "relay_private.rs"]
mod private_side;

/// Private calls through the relay, on the fixtures of `tests`.
#[cfg(test)]
#[path = "relay_private_tests.rs"]
mod private_tests;

/// DTMF toward the trunk and from it, on the fixtures of `tests`.
#[cfg(test)]
#[path = "relay_dtmf_tests.rs"]
mod dtmf_tests;

/// A DTLS-SRTP trunk leg, on the fixtures of `tests`.
#[cfg(test)]
#[path = "relay_dtls_trunk_tests.rs"]
mod dtls_trunk_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::counters::LegSnapshot;

    pub(crate) const PCMU: u8 = 0;
    pub(crate) const OPUS_BROWSER: u8 = 111;
    pub(crate) const OPUS_TRUNK: u8 = 96;

    pub(crate) fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[fill; 160]);
        p
    }

    /// An RTCP receiver report with one report block about `about`.
    pub(crate) fn rtcp_rr(sender: u32, about: u32) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&[0; 20]);
        p
    }

    pub(crate) fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(crate) fn payload_map() -> Vec<(PayloadType, PayloadType, u32)> {
        vec![
            (PayloadType(OPUS_BROWSER), PayloadType(OPUS_TRUNK), 48000),
            (PayloadType(PCMU), PayloadType(PCMU), 8000),
            (PayloadType(126), PayloadType(101), 8000),
        ]
    }

    pub(crate) fn params(
        trunk_crypto: TrunkCrypto,
        remote_rtcp: Option<SocketAddr>,
        remote_fingerprint: Fingerprint,
        local_ufrag: &str,
        local_pwd: &str,
    ) -> RelayParams {
        RelayParams {
            browser: BrowserLegParams {
                local_ufrag: local_ufrag.to_string(),
                local_pwd: Secret::new(local_pwd.to_string()),
                remote_ufrag: "brws".to_string(),
                remote_fingerprint,
                ssrcs: vec![],
            },
            trunk: TrunkLegParams {
                remote_rtp: addr("192.0.2.10:30000"),
                remote_rtcp,
                crypto: trunk_crypto,
                ssrcs: vec![],
                media_source: MediaSource::Signaled,
            },
            payload_map: payload_map(),
            telephone_event: None,
        }
    }

    pub(crate) fn identity() -> Arc<DtlsIdentity> {
        use std::sync::OnceLock;
        static ID: OnceLock<Arc<DtlsIdentity>> = OnceLock::new();
        ID.get_or_init(|| Arc::new(DtlsIdentity::generate().unwrap()))
            .clone()
    }

    pub(crate) const BROWSER: &str = "198.51.100.7:50000";

    /// A relay past DTLS, with the simulated peers' SRTP contexts.
    pub(crate) struct Keyed {
        pub(crate) relay: CallRelay,
        pub(crate) counters: Arc<CallCounters>,
        /// The browser's sender (we unprotect) and receiver (we protect).
        pub(crate) browser_tx: SrtpContext,
        pub(crate) browser_rx: SrtpContext,
        /// The trunk's sender and receiver (SDES), if SRTP.
        pub(crate) trunk_tx: Option<SrtpContext>,
        pub(crate) trunk_rx: Option<SrtpContext>,
        /// The trunk leg's SDES keys (inbound, outbound), if SRTP.
        pub(crate) trunk_keys: Option<(SrtpKeyMaterial, SrtpKeyMaterial)>,
        pub(crate) t0: Instant,
    }

    pub(crate) fn keyed(sdes: bool, remote_rtcp: Option<SocketAddr>) -> Keyed {
        keyed_from(sdes, remote_rtcp, MediaSource::Signaled)
    }

    fn keyed_from(sdes: bool, remote_rtcp: Option<SocketAddr>, source: MediaSource) -> Keyed {
        let t0 = Instant::now();
        let b_in = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
        let b_out = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
        let t_in = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let t_out = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let crypto = if sdes {
            TrunkCrypto::Sdes {
                inbound: t_in.clone(),
                outbound: t_out.clone(),
            }
        } else {
            TrunkCrypto::Plain
        };
        let counters = Arc::new(CallCounters::default());
        let fp = Fingerprint::sha256(b"not used");
        let mut p = params(crypto, remote_rtcp, fp, "gwuf", "gateway-password-0123456");
        p.trunk.media_source = source;
        let mut relay = CallRelay::new_keyed_for_bench(
            p,
            identity(),
            &b_in,
            &b_out,
            addr(BROWSER),
            counters.clone(),
            Arc::new(WorkerStats::default()),
            t0,
        )
        .unwrap();
        relay.set_output_ssrcs(Ssrc(0xB0B0), Ssrc(0x7070));
        Keyed {
            relay,
            counters,
            browser_tx: SrtpContext::new(&b_in).unwrap(),
            browser_rx: SrtpContext::new(&b_out).unwrap(),
            trunk_tx: sdes.then(|| SrtpContext::new(&t_in).unwrap()),
            trunk_rx: sdes.then(|| SrtpContext::new(&t_out).unwrap()),
            trunk_keys: sdes.then(|| (t_in.clone(), t_out.clone())),
            t0,
        }
    }

    pub(crate) fn drain(relay: &mut CallRelay) -> Vec<(LegId, SocketAddr, Vec<u8>)> {
        let mut out = vec![];
        while let Some(t) = relay.poll_transmit() {
            out.push((t.leg, t.to, t.data.to_vec()));
        }
        out
    }

    pub(crate) fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        ctx.protect_rtp(plain, &mut out).unwrap();
        out
    }

    pub(crate) fn unprotect(ctx: &mut SrtpContext, srtp: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        ctx.unprotect_rtp(srtp, &mut out).unwrap();
        out
    }

    /// One RTP packet from the browser: where the relay sent it, and what.
    fn browser_rtp_to_trunk(k: &mut Keyed) -> (SocketAddr, Vec<u8>) {
        let out = protect(&mut k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &out, k.t0 + ms(1));
        let mut sent = drain(&mut k.relay);
        assert_eq!(sent.len(), 1);
        let (_, to, data) = sent.remove(0);
        (to, data)
    }

    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(crate) fn trunk_snap(k: &Keyed) -> LegSnapshot {
        k.counters.trunk.snapshot()
    }

    #[test]
    fn media_flows_both_ways_with_rewritten_headers() {
        let mut k = keyed(true, None);
        let trunk_src = addr("192.0.2.10:30000");
        for i in 0..5u16 {
            let now = k.t0 + ms(20 * u64::from(i));
            // Browser → trunk: Opus 111 becomes 96, SSRC becomes ours.
            let pkt = protect(
                &mut k.browser_tx,
                &rtp_packet(OPUS_BROWSER, 100 + i, 960 * u32::from(i), 0xB1, 0x11),
            );
            k.relay
                .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, now);
            let out = drain(&mut k.relay);
            assert_eq!(out.len(), 1, "{:?}", k.counters.browser.snapshot());
            assert_eq!((out[0].0, out[0].1), (LegId::TrunkRtp, trunk_src));
            let plain = unprotect(k.trunk_rx.as_mut().unwrap(), &out[0].2);
            let f = parse_rtp(&plain).unwrap();
            assert_eq!(f.payload_type, OPUS_TRUNK);
            assert_eq!(f.ssrc, Ssrc(0x7070));
            assert_eq!(f.sequence, 100 + i);
            assert_eq!(&plain[12..], &[0x11; 160][..]);

            // Trunk → browser: 96 becomes 111.
            let pkt = protect(
                k.trunk_tx.as_mut().unwrap(),
                &rtp_packet(OPUS_TRUNK, 7000 + i, 960 * u32::from(i), 0x71, 0x22),
            );
            k.relay
                .handle_datagram(LegId::TrunkRtp, trunk_src, &pkt, now);
            let out = drain(&mut k.relay);
            assert_eq!(out.len(), 1, "{:?}", trunk_snap(&k));
            assert_eq!((out[0].0, out[0].1), (LegId::Browser, addr(BROWSER)));
            let plain = unprotect(&mut k.browser_rx, &out[0].2);
            let f = parse_rtp(&plain).unwrap();
            assert_eq!(f.payload_type, OPUS_BROWSER);
            assert_eq!(f.ssrc, Ssrc(0xB0B0));
            assert_eq!(&plain[12..], &[0x22; 160][..]);
        }
        let b = k.counters.browser.snapshot();
        let t = trunk_snap(&k);
        assert_eq!((b.packets_in, b.packets_out), (5, 5));
        assert_eq!((t.packets_in, t.packets_out), (5, 5));
        assert_eq!(b.drops.iter().sum::<u64>() + t.drops.iter().sum::<u64>(), 0);
    }

    #[test]
    fn foreign_ssrc_on_trunk_is_dropped_until_the_stream_goes_silent() {
        let mut k = keyed(true, None);
        let src = addr("192.0.2.10:30000");
        let tx = k.trunk_tx.as_mut().unwrap();
        let a = protect(tx, &rtp_packet(PCMU, 1, 0, 0xAAAA, 1));
        let b = protect(tx, &rtp_packet(PCMU, 1, 0, 0xBBBB, 2));
        let b2 = protect(tx, &rtp_packet(PCMU, 2, 160, 0xBBBB, 2));
        k.relay.handle_datagram(LegId::TrunkRtp, src, &a, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        k.relay
            .handle_datagram(LegId::TrunkRtp, src, &b, k.t0 + ms(20));
        assert!(
            drain(&mut k.relay).is_empty(),
            "foreign SSRC must not come out"
        );
        assert_eq!(trunk_snap(&k).drops(DropReason::UnknownSsrc), 1);
        // After 2 s of silence of 0xAAAA, 0xBBBB takes over, numbering continues.
        k.relay
            .handle_datagram(LegId::TrunkRtp, src, &b2, k.t0 + ms(2100));
        let out = drain(&mut k.relay);
        assert_eq!(out.len(), 1);
        let plain = unprotect(&mut k.browser_rx, &out[0].2);
        let f = parse_rtp(&plain).unwrap();
        assert_eq!((f.ssrc, f.sequence), (Ssrc(0xB0B0), 2));
    }

    #[test]
    fn tampered_and_replayed_packets_are_counted() {
        let mut k = keyed(true, None);
        let src = addr("192.0.2.10:30000");
        let good = protect(k.trunk_tx.as_mut().unwrap(), &rtp_packet(PCMU, 1, 0, 5, 1));
        let mut bad = protect(
            k.trunk_tx.as_mut().unwrap(),
            &rtp_packet(PCMU, 2, 160, 5, 1),
        );
        bad[40] ^= 1;
        k.relay.handle_datagram(LegId::TrunkRtp, src, &bad, k.t0);
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::AuthFailed), 1);
        k.relay.handle_datagram(LegId::TrunkRtp, src, &good, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        k.relay
            .handle_datagram(LegId::TrunkRtp, src, &good, k.t0 + ms(1));
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::Replay), 1);

        // Same on the browser leg.
        let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 9, 0, 0xB1, 3));
        let mut forged = pkt.clone();
        forged[20] ^= 0x80;
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &forged, k.t0);
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0);
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        let b = k.counters.browser.snapshot();
        assert_eq!(b.drops(DropReason::AuthFailed), 1);
        assert_eq!(b.drops(DropReason::Replay), 1);
    }

    #[test]
    fn unknown_payload_type_and_unchecked_browser_address_are_dropped() {
        let mut k = keyed(true, None);
        let pkt = protect(&mut k.browser_tx, &rtp_packet(8, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0);
        let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 2, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr("203.0.113.9:4444"), &pkt, k.t0);
        assert!(drain(&mut k.relay).is_empty());
        let b = k.counters.browser.snapshot();
        assert_eq!(b.drops(DropReason::UnknownPayloadType), 1);
        assert_eq!(b.drops(DropReason::WrongSource), 1);
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &[0xff; 40], k.t0);
        assert_eq!(k.counters.browser.drops(DropReason::Malformed), 1);
    }

    #[test]
    fn plain_rtp_only_from_the_signaled_ip_and_port_latched() {
        let mut k = keyed(false, None);
        let pkt = rtp_packet(PCMU, 1, 0, 0x55, 4);
        k.relay
            .handle_datagram(LegId::TrunkRtp, addr("203.0.113.66:30000"), &pkt, k.t0);
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 1);

        // Right IP, another port (NAT): accepted and latched.
        let natted = addr("192.0.2.10:41000");
        k.relay.handle_datagram(LegId::TrunkRtp, natted, &pkt, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        let (to, sent) = browser_rtp_to_trunk(&mut k);
        assert_eq!(to, natted, "media goes to the latched port");
        let f = parse_rtp(&sent).unwrap();
        assert_eq!((f.payload_type, f.ssrc), (PCMU, Ssrc(0x7070)));

        // Another port of the same IP while the latched one talks: refused.
        let pkt2 = rtp_packet(PCMU, 2, 160, 0x55, 4);
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            addr("192.0.2.10:42000"),
            &pkt2,
            k.t0 + ms(20),
        );
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 2);
    }

    #[test]
    fn an_unsignaled_trunk_source_is_reported_once_and_only_when_strict() {
        let mut k = keyed_from(false, None, MediaSource::Signaled);
        // Another port of the signaled IP: not the strict rule's doing.
        let pkt = rtp_packet(PCMU, 1, 0, 0x55, 4);
        k.relay
            .handle_datagram(LegId::TrunkRtp, addr("192.0.2.10:30002"), &pkt, k.t0);
        // linphone's way: the SDP names one address, media leaves another.
        let elsewhere = addr("198.51.100.7:7078");
        for seq in 2..5 {
            let pkt = rtp_packet(PCMU, seq, 160 * u32::from(seq), 0x55, 4);
            k.relay
                .handle_datagram(LegId::TrunkRtp, elsewhere, &pkt, k.t0 + ms(20));
        }
        assert!(drain(&mut k.relay).len() <= 1);
        let events: Vec<_> = std::iter::from_fn(|| k.relay.poll_event()).collect();
        assert_eq!(
            events,
            [RelayEvent::TrunkUnsignaledSource { from: elsewhere }],
            "once per call"
        );
        assert!(trunk_snap(&k).drops(DropReason::WrongSource) >= 3);

        // With latch the same packets are media, nothing to report.
        let mut k = keyed_from(false, None, MediaSource::Latch);
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            elsewhere,
            &rtp_packet(PCMU, 1, 0, 0x55, 4),
            k.t0,
        );
        assert_eq!(drain(&mut k.relay).len(), 1);
        assert_eq!(k.relay.poll_event(), None);
    }

    #[test]
    fn media_source_latch_takes_plain_rtp_from_any_address_with_a_negotiated_payload() {
        let mut k = keyed_from(false, None, MediaSource::Latch);
        // A payload type nobody negotiated proves nothing: no latch.
        let stranger = addr("203.0.113.66:30000");
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            stranger,
            &rtp_packet(8, 1, 0, 0x55, 4),
            k.t0,
        );
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::UnknownPayloadType), 1);

        // The trunk sends from another address than its SDP's (linphone's
        // default, a NAT): accepted and latched; our media goes there.
        let real = addr("198.51.100.7:7078");
        let pkt = rtp_packet(PCMU, 1, 0, 0x55, 4);
        k.relay.handle_datagram(LegId::TrunkRtp, real, &pkt, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        let (to, _) = browser_rtp_to_trunk(&mut k);
        assert_eq!(to, real, "media goes to the latched source");

        // While it talks, nobody else takes the leg over, even with the
        // right SSRC and payload type.
        let hijack = rtp_packet(PCMU, 2, 160, 0x55, 4);
        k.relay
            .handle_datagram(LegId::TrunkRtp, stranger, &hijack, k.t0 + ms(20));
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 1);

        // A re-INVITE with the same SDP keeps the NAT's address usable (a
        // strict leg would retire it), and the leg re-latches to it.
        k.relay.update_trunk(
            TrunkUpdate {
                trunk: TrunkLegParams {
                    remote_rtp: addr("192.0.2.10:30000"),
                    remote_rtcp: None,
                    crypto: TrunkCrypto::Plain,
                    ssrcs: vec![],
                    media_source: MediaSource::Latch,
                },
                payload_map: payload_map(),
                telephone_event: None,
            },
            k.t0,
        );
        let again = rtp_packet(PCMU, 3, 320, 0x55, 4);
        k.relay
            .handle_datagram(LegId::TrunkRtp, real, &again, k.t0 + ms(40));
        assert_eq!(drain(&mut k.relay).len(), 1);
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 1);
    }

    #[test]
    fn sdes_latches_to_the_first_authenticated_source() {
        let mut k = keyed(true, None);
        let forged = rtp_packet(PCMU, 1, 0, 5, 1);
        let elsewhere = addr("203.0.113.5:7078");
        // Unauthenticated junk from elsewhere does not latch.
        let mut junk = protect(k.trunk_tx.as_mut().unwrap(), &forged);
        junk[30] ^= 1;
        k.relay
            .handle_datagram(LegId::TrunkRtp, elsewhere, &junk, k.t0);
        let good = protect(
            k.trunk_tx.as_mut().unwrap(),
            &rtp_packet(PCMU, 2, 160, 5, 1),
        );
        let real = addr("192.0.2.99:5004");
        k.relay.handle_datagram(LegId::TrunkRtp, real, &good, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0 + ms(1));
        assert_eq!(drain(&mut k.relay)[0].1, real);
    }

    #[test]
    fn rtcp_goes_to_the_rtcp_port_without_mux_and_is_rewritten() {
        let rtcp_addr = addr("192.0.2.10:30001");
        let mut k = keyed(true, Some(rtcp_addr));
        // Some RTP first so both directions know their streams.
        let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &pkt, k.t0);
        let pkt = protect(
            k.trunk_tx.as_mut().unwrap(),
            &rtp_packet(PCMU, 1, 0, 0x71, 3),
        );
        k.relay
            .handle_datagram(LegId::TrunkRtp, addr("192.0.2.10:30000"), &pkt, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 2);

        // Browser RR about what we sent it (0xB0B0) → trunk RR about 0x71.
        let mut srtcp = vec![];
        k.browser_tx
            .protect_rtcp(&rtcp_rr(0xB1, 0xB0B0), &mut srtcp)
            .unwrap();
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &srtcp, k.t0 + ms(5));
        let out = drain(&mut k.relay);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1), (LegId::TrunkRtcp, rtcp_addr));
        let mut plain = vec![];
        k.trunk_rx
            .as_mut()
            .unwrap()
            .unprotect_rtcp(&out[0].2, &mut plain)
            .unwrap();
        assert_eq!(&plain[4..8], &0x7070u32.to_be_bytes());
        assert_eq!(&plain[8..12], &0x71u32.to_be_bytes());

        // Trunk SRTCP on the RTCP port → browser.
        let mut srtcp = vec![];
        k.trunk_tx
            .as_mut()
            .unwrap()
            .protect_rtcp(&rtcp_rr(0x71, 0x7070), &mut srtcp)
            .unwrap();
        k.relay
            .handle_datagram(LegId::TrunkRtcp, rtcp_addr, &srtcp, k.t0 + ms(6));
        let out = drain(&mut k.relay);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, LegId::Browser);
        let mut plain = vec![];
        k.browser_rx.unprotect_rtcp(&out[0].2, &mut plain).unwrap();
        assert_eq!(&plain[4..8], &0xB0B0u32.to_be_bytes());
        assert_eq!(&plain[8..12], &0xB1u32.to_be_bytes());
    }

    #[test]
    fn media_timeout_after_silence() {
        let mut k = keyed(true, None);
        let deadline = k.relay.poll_timeout().unwrap();
        assert_eq!(deadline, k.t0 + CallRelay::DEFAULT_MEDIA_TIMEOUT);
        // Browser keeps talking; the trunk is silent.
        for s in 0..29u64 {
            let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, s as u16, 0, 0xB1, 3));
            k.relay.handle_datagram(
                LegId::Browser,
                addr(BROWSER),
                &pkt,
                k.t0 + Duration::from_secs(s),
            );
            assert_eq!(drain(&mut k.relay).len(), 1);
        }
        k.relay.handle_timeout(k.t0 + Duration::from_secs(29));
        assert_eq!(k.relay.poll_event(), None);
        k.relay.handle_timeout(k.t0 + Duration::from_secs(30));
        assert_eq!(
            k.relay.poll_event(),
            Some(RelayEvent::Timeout { leg: Leg::Trunk })
        );
        assert_eq!(k.relay.poll_timeout(), None);
        // Stopped: nothing forwarded any more.
        let pkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 99, 0, 0xB1, 3));
        k.relay.handle_datagram(
            LegId::Browser,
            addr(BROWSER),
            &pkt,
            k.t0 + Duration::from_secs(31),
        );
        assert!(drain(&mut k.relay).is_empty());
        assert_eq!(k.counters.browser.drops(DropReason::NotReady), 1);
    }

    #[test]
    fn bad_sdes_key_fails_at_once() {
        let mut bad = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        bad.key = Secret::new(vec![0; 3]);
        let crypto = TrunkCrypto::Sdes {
            inbound: bad.clone(),
            outbound: bad,
        };
        let mut relay = CallRelay::new(
            params(crypto, None, Fingerprint::sha256(b"x"), "u", "p"),
            identity(),
            Arc::new(CallCounters::default()),
            Arc::new(WorkerStats::default()),
            Instant::now(),
        );
        match relay.poll_event() {
            Some(RelayEvent::Failed { reason }) => {
                assert!(reason.contains("192.0.2.10:30000"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The trunk's stream past 65,535 (ROC 1), then a re-INVITE that moves
    /// the leg with `inbound` as the trunk's key: is its next packet taken?
    fn moved_past_the_rollover(same_key: bool) -> usize {
        let mut k = keyed(true, None);
        let (t_in, t_out) = k.trunk_keys.clone().unwrap();
        let old = addr("192.0.2.10:30000");
        let mut forwarded = 0;
        for (i, seq) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
            let ts = 160 * i as u32;
            let pkt = protect(
                k.trunk_tx.as_mut().unwrap(),
                &rtp_packet(PCMU, seq, ts, 0x71, 1),
            );
            k.relay
                .handle_datagram(LegId::TrunkRtp, old, &pkt, k.t0 + ms(20 * i as u64));
            forwarded += drain(&mut k.relay).len();
        }
        assert_eq!(forwarded, 4, "the stream crossed 65,535 intact");
        let new = addr("192.0.2.10:30002");
        let inbound = if same_key {
            t_in
        } else {
            SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80)
        };
        k.relay.update_trunk(
            TrunkUpdate {
                trunk: TrunkLegParams {
                    remote_rtp: new,
                    remote_rtcp: None,
                    crypto: TrunkCrypto::Sdes {
                        inbound,
                        // Our answer to their re-offer brings a new key.
                        outbound: SrtpKeyMaterial::generate(t_out.suite),
                    },
                    ssrcs: vec![],
                    media_source: MediaSource::Signaled,
                },
                payload_map: payload_map(),
                telephone_event: None,
            },
            k.t0 + ms(80),
        );
        let pkt = protect(
            k.trunk_tx.as_mut().unwrap(),
            &rtp_packet(PCMU, 2, 640, 0x71, 1),
        );
        k.relay
            .handle_datagram(LegId::TrunkRtp, new, &pkt, k.t0 + ms(100));
        drain(&mut k.relay).len()
    }

    #[test]
    fn a_move_keeping_the_trunks_key_keeps_its_rollover_counter() {
        assert_eq!(
            moved_past_the_rollover(true),
            1,
            "index 65,538 authenticates"
        );
        // A new key of the trunk is a new context: the old sender's packet
        // no longer authenticates (the test itself can fail).
        assert_eq!(moved_past_the_rollover(false), 0);
    }

    #[test]
    fn re_invite_moves_the_trunk_and_the_stream_continues() {
        let mut k = keyed(true, None);
        let old = addr("192.0.2.10:30000");
        let pkt = protect(
            k.trunk_tx.as_mut().unwrap(),
            &rtp_packet(PCMU, 40, 800, 0x71, 1),
        );
        k.relay.handle_datagram(LegId::TrunkRtp, old, &pkt, k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);

        // The trunk moves to plain RTP on another media server.
        let new = addr("192.0.2.20:31000");
        k.relay.update_trunk(
            TrunkUpdate {
                trunk: TrunkLegParams {
                    remote_rtp: new,
                    remote_rtcp: None,
                    crypto: TrunkCrypto::Plain,
                    ssrcs: vec![Ssrc(0x99)],
                    media_source: MediaSource::Signaled,
                },
                payload_map: payload_map(),
                telephone_event: None,
            },
            k.t0,
        );
        // The old server's SRTP now fails the IP check; the new stream
        // (announced SSRC) is accepted at once and continues the numbering.
        k.relay
            .handle_datagram(LegId::TrunkRtp, old, &pkt, k.t0 + ms(20));
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 1);
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            new,
            &rtp_packet(PCMU, 7, 0, 0x99, 2),
            k.t0 + ms(40),
        );
        let out = drain(&mut k.relay);
        assert_eq!(out.len(), 1);
        let plain = unprotect(&mut k.browser_rx, &out[0].2);
        let f = parse_rtp(&plain).unwrap();
        assert_eq!((f.ssrc, f.sequence), (Ssrc(0xB0B0), 41));
        assert_eq!(f.timestamp, 800 + 320, "40 ms at 8 kHz after the last one");

        // Browser media now goes to the new address in clear.
        let bpkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &bpkt, k.t0 + ms(41));
        let out = drain(&mut k.relay);
        assert_eq!(out[0].1, new);
        assert_eq!(parse_rtp(&out[0].2).unwrap().ssrc, Ssrc(0x7070));
    }

    /// 183 from an announcement server A, 200 moves the leg to B on the same
    /// IP: A's late packets must not pull the leg back to A.
    #[test]
    fn late_packets_from_the_previous_address_do_not_latch() {
        let mut k = keyed(false, None);
        let a = addr("192.0.2.10:30000");
        let b = addr("192.0.2.10:30100");
        k.relay
            .handle_datagram(LegId::TrunkRtp, a, &rtp_packet(PCMU, 1, 0, 0xA, 1), k.t0);
        assert_eq!(drain(&mut k.relay).len(), 1);
        k.relay.update_trunk(
            TrunkUpdate {
                trunk: TrunkLegParams {
                    remote_rtp: b,
                    remote_rtcp: None,
                    crypto: TrunkCrypto::Plain,
                    ssrcs: vec![],
                    media_source: MediaSource::Signaled,
                },
                payload_map: payload_map(),
                telephone_event: None,
            },
            k.t0,
        );
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            a,
            &rtp_packet(PCMU, 2, 160, 0xA, 1),
            k.t0 + ms(20),
        );
        assert!(drain(&mut k.relay).is_empty(), "late early media dropped");
        assert_eq!(trunk_snap(&k).drops(DropReason::WrongSource), 1);
        let bpkt = protect(&mut k.browser_tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        k.relay
            .handle_datagram(LegId::Browser, addr(BROWSER), &bpkt, k.t0 + ms(21));
        assert_eq!(drain(&mut k.relay)[0].1, b, "browser media goes to B");
        k.relay.handle_datagram(
            LegId::TrunkRtp,
            b,
            &rtp_packet(PCMU, 1, 0, 0xB, 1),
            k.t0 + ms(40),
        );
        assert_eq!(drain(&mut k.relay).len(), 1, "B's stream is relayed");
    }

    #[test]
    fn announced_browser_ssrc_is_the_only_one_forwarded() {
        let t0 = Instant::now();
        let b_in = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
        let b_out = SrtpKeyMaterial::generate(SrtpSuite::AeadAes128Gcm);
        let mut p = params(
            TrunkCrypto::Plain,
            None,
            Fingerprint::sha256(b"x"),
            "u",
            "p",
        );
        p.browser.ssrcs = vec![Ssrc(0xB1)];
        let counters = Arc::new(CallCounters::default());
        let mut relay = CallRelay::new_keyed_for_bench(
            p,
            identity(),
            &b_in,
            &b_out,
            addr(BROWSER),
            counters.clone(),
            Arc::new(WorkerStats::default()),
            t0,
        )
        .unwrap();
        let mut tx = SrtpContext::new(&b_in).unwrap();
        let other = protect(&mut tx, &rtp_packet(PCMU, 1, 0, 0xB2, 3));
        let mine = protect(&mut tx, &rtp_packet(PCMU, 1, 0, 0xB1, 3));
        relay.handle_datagram(LegId::Browser, addr(BROWSER), &other, t0);
        relay.handle_datagram(LegId::Browser, addr(BROWSER), &mine, t0);
        assert_eq!(drain(&mut relay).len(), 1);
        assert_eq!(counters.browser.drops(DropReason::UnknownSsrc), 1);
    }

    #[test]
    fn close_sends_nothing_without_dtls_and_stops() {
        let mut k = keyed(true, None);
        k.relay.close(k.t0);
        assert!(drain(&mut k.relay).is_empty());
        assert!(!k.relay.is_connected());
        assert_eq!(k.relay.poll_timeout(), None);
    }

    #[test]
    fn garbage_never_panics_and_is_counted() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Plain trunk: garbage reaches the RTP/RTCP parsers and rewriters
        // without authentication in the way.
        let mut k = keyed(false, Some(addr("192.0.2.10:30001")));
        let seeds = [
            rtp_packet(PCMU, 1, 0, 0x55, 1),
            rtcp_rr(0x55, 0x7070),
            vec![0x81, 200, 0, 12],
        ];
        let mut sent = 0u64;
        for i in 0..20_000u32 {
            let mut d = if rng.gen_bool(0.5) {
                let len = rng.gen_range(0..300);
                (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                seeds[(i % 3) as usize].clone()
            };
            // Mutate: flip bytes, truncate.
            for _ in 0..rng.gen_range(0..4) {
                if !d.is_empty() {
                    let at = rng.gen_range(0..d.len());
                    d[at] = rng.gen();
                }
            }
            if rng.gen_bool(0.2) {
                let keep = rng.gen_range(0..=d.len());
                d.truncate(keep);
            }
            let leg = [LegId::Browser, LegId::TrunkRtp, LegId::TrunkRtcp][(i % 3) as usize];
            let from = if leg == LegId::Browser {
                addr(BROWSER)
            } else {
                addr("192.0.2.10:30000")
            };
            k.relay
                .handle_datagram(leg, from, &d, k.t0 + Duration::from_millis(u64::from(i)));
            sent += 1;
            drain(&mut k.relay);
        }
        let b = k.counters.browser.snapshot();
        let t = trunk_snap(&k);
        assert_eq!(b.packets_in + t.packets_in, sent);
        // Every datagram was either forwarded or dropped for a reason
        // (browser STUN garbage counts as StunRejected, RTCP that shrinks to
        // nothing is neither: allow for it).
        let handled = b.packets_out
            + t.packets_out
            + b.drops.iter().sum::<u64>()
            + t.drops.iter().sum::<u64>();
        assert!(
            handled <= sent && handled > sent * 9 / 10,
            "{handled} of {sent}"
        );
    }

    #[test]
    fn in_place_forwarding_sends_from_the_callers_buffer() {
        let mut k = keyed(true, None);
        let src = addr("192.0.2.10:30000");
        let mut buf = Vec::with_capacity(1600);
        let mut last = Vec::new();
        for i in 0..3u16 {
            last = protect(
                k.trunk_tx.as_mut().unwrap(),
                &rtp_packet(OPUS_TRUNK, i, 960 * u32::from(i), 0x71, 0x22),
            );
            buf.clear();
            buf.extend_from_slice(&last);
            let ptr = buf.as_ptr();
            let now = k.t0 + ms(20 * u64::from(i));
            let out = k
                .relay
                .handle_datagram_in_place(LegId::TrunkRtp, src, &mut buf, now);
            assert_eq!(out, Some((LegId::Browser, addr(BROWSER))));
            assert_eq!(buf.as_ptr(), ptr, "sent from the same allocation");
            let plain = unprotect(&mut k.browser_rx, &buf);
            let f = parse_rtp(&plain).unwrap();
            assert_eq!((f.payload_type, f.ssrc), (OPUS_BROWSER, Ssrc(0xB0B0)));
            assert_eq!(&plain[12..], &[0x22; 160][..]);
        }
        // A replay is dropped and counted as on the copying path.
        buf.clear();
        buf.extend_from_slice(&last);
        let out = k
            .relay
            .handle_datagram_in_place(LegId::TrunkRtp, src, &mut buf, k.t0 + ms(60));
        assert_eq!(out, None);
        // Browser to trunk, and RTCP, through the same entry.
        buf.clear();
        buf.extend_from_slice(&protect(
            &mut k.browser_tx,
            &rtp_packet(OPUS_BROWSER, 5, 0, 0xB1, 0x11),
        ));
        let out = k.relay.handle_datagram_in_place(
            LegId::Browser,
            addr(BROWSER),
            &mut buf,
            k.t0 + ms(61),
        );
        assert_eq!(out, Some((LegId::TrunkRtp, src)));
        let plain = unprotect(k.trunk_rx.as_mut().unwrap(), &buf);
        assert_eq!(parse_rtp(&plain).unwrap().payload_type, OPUS_TRUNK);
        buf.clear();
        k.browser_tx
            .protect_rtcp(&rtcp_rr(0xB1, 0xB0B0), &mut buf)
            .unwrap();
        let out = k.relay.handle_datagram_in_place(
            LegId::Browser,
            addr(BROWSER),
            &mut buf,
            k.t0 + ms(62),
        );
        assert_eq!(out, Some((LegId::TrunkRtp, src)));
        // STUN goes the queued way.
        let mut stun = SimBrowser::stun_request("gwuf", "gateway-password-0123456", false);
        let out = k.relay.handle_datagram_in_place(
            LegId::Browser,
            addr(BROWSER),
            &mut stun,
            k.t0 + ms(63),
        );
        assert_eq!(out, None);
        assert_eq!(drain(&mut k.relay).len(), 1, "the Binding response");
        let t = trunk_snap(&k);
        assert_eq!((t.packets_in, t.packets_out), (4, 2));
        assert_eq!(t.drops(DropReason::Replay), 1);
        let b = k.counters.browser.snapshot();
        assert_eq!((b.packets_in, b.packets_out), (3, 4));
    }

    #[test]
    fn steady_state_reuses_buffers() {
        let mut k = keyed(true, None);
        let src = addr("192.0.2.10:30000");
        let mut seen = std::collections::HashSet::new();
        for i in 0..50u16 {
            let pkt = protect(k.trunk_tx.as_mut().unwrap(), &rtp_packet(PCMU, i, 0, 5, 1));
            k.relay.handle_datagram(LegId::TrunkRtp, src, &pkt, k.t0);
            let t = k.relay.poll_transmit().unwrap();
            seen.insert(t.data.as_ptr() as usize);
        }
        assert!(seen.len() <= 2, "buffers are recycled, got {}", seen.len());
    }

    // ---- a simulated browser: rtc-dtls client + STUN + SRTP ---------------

    use crate::media::stun::{attr, StunClass, StunWriter, BINDING};
    use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType};
    use rtc_dtls::crypto::Certificate;
    use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
    use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;

    /// What a browser does on the wire, minus the browser: ICE checks,
    /// DTLS client, SRTP from the exported keys.
    pub(crate) struct SimBrowser {
        endpoint: Endpoint,
        gateway: SocketAddr,
        pub fingerprint: Fingerprint,
        /// Encrypts what the browser sends / decrypts what it receives.
        pub tx: Option<SrtpContext>,
        pub rx: Option<SrtpContext>,
        pub suite: Option<SrtpSuite>,
        profiles: Vec<SrtpProtectionProfile>,
        cert: Certificate,
    }

    impl SimBrowser {
        pub(crate) fn new(gateway: SocketAddr, profiles: Vec<SrtpProtectionProfile>) -> Self {
            let provider = rtc_crypto::default_provider().unwrap();
            let cert =
                Certificate::generate_self_signed(vec!["browser".to_string()], provider.crypto())
                    .unwrap();
            let fingerprint = Fingerprint::sha256(cert.certificate[0].as_ref());
            SimBrowser {
                endpoint: Endpoint::new(
                    addr("0.0.0.0:0"),
                    rtc_shared::TransportProtocol::UDP,
                    None,
                ),
                gateway,
                fingerprint,
                tx: None,
                rx: None,
                suite: None,
                profiles,
                cert,
            }
        }

        /// A Binding request as Chrome sends it (USERNAME, PRIORITY,
        /// ICE-CONTROLLING, USE-CANDIDATE when nominating, MESSAGE-INTEGRITY
        /// with the gateway's password, FINGERPRINT).
        pub(crate) fn stun_request(gw_ufrag: &str, gw_pwd: &str, nominate: bool) -> Vec<u8> {
            let mut out = vec![];
            let tid: [u8; 12] = rand::random();
            let username = format!("{gw_ufrag}:brws");
            let mut w = StunWriter::new(&mut out, BINDING, StunClass::Request, &tid);
            w.attribute(attr::USERNAME, username.as_bytes())
                .attribute(attr::PRIORITY, &0x6e00_1eff_u32.to_be_bytes())
                .attribute(attr::ICE_CONTROLLING, &[1, 2, 3, 4, 5, 6, 7, 8]);
            if nominate {
                w.attribute(attr::USE_CANDIDATE, &[]);
            }
            w.message_integrity(gw_pwd.as_bytes()).fingerprint();
            out
        }

        /// Starts the handshake; returns the ClientHello.
        pub(crate) fn connect(&mut self, now: Instant) -> Vec<Vec<u8>> {
            let provider = rtc_crypto::default_provider().unwrap();
            let config = ConfigBuilder::default()
                .with_crypto_provider(provider)
                .with_certificates(vec![self.cert.clone()])
                .with_srtp_protection_profiles(self.profiles.clone())
                .with_insecure_skip_verify(true)
                .with_extended_master_secret(ExtendedMasterSecretType::Require)
                .build(true, Some(self.gateway))
                .unwrap();
            self.endpoint
                .connect(now, self.gateway, Arc::new(config), None)
                .unwrap();
            self.transmits()
        }

        fn transmits(&mut self) -> Vec<Vec<u8>> {
            let mut out = vec![];
            while let Some(t) = self.endpoint.poll_transmit() {
                out.push(t.message.to_vec());
            }
            out
        }

        /// Feeds a DTLS datagram from the gateway; returns what to send back.
        pub(crate) fn handle_dtls(&mut self, now: Instant, data: &[u8]) -> Vec<Vec<u8>> {
            let events = self
                .endpoint
                .read(now, self.gateway, None, bytes::BytesMut::from(data))
                .unwrap_or_default();
            for e in events {
                if let EndpointEvent::HandshakeComplete = e {
                    self.key_srtp();
                }
            }
            self.transmits()
        }

        fn key_srtp(&mut self) {
            let state = self.endpoint.get_connection_state(self.gateway).unwrap();
            let suite = match state.srtp_protection_profile() {
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpSuite::AeadAes128Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
                    SrtpSuite::AesCm128HmacSha1_80
                }
                other => panic!("{other:?}"),
            };
            let (k, s) = (suite.key_len(), suite.salt_len());
            let m = state
                .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (k + s))
                .unwrap();
            let m: &[u8] = m.as_ref();
            let mat = |key: std::ops::Range<usize>, salt: std::ops::Range<usize>| SrtpKeyMaterial {
                suite,
                key: Secret::new(m[key].to_vec()),
                salt: Secret::new(m[salt].to_vec()),
                mki: None,
            };
            // The client writes with the client key and salt.
            self.tx = Some(SrtpContext::new(&mat(0..k, 2 * k..2 * k + s)).unwrap());
            self.rx = Some(SrtpContext::new(&mat(k..2 * k, 2 * k + s..2 * (k + s))).unwrap());
            self.suite = Some(suite);
        }
    }

    const GW_UFRAG: &str = "gwufrag1";
    const GW_PWD: &str = "gateway-ice-password-123";

    /// A relay waiting for `browser`, with an SDES trunk; returns the relay,
    /// its counters and the trunk's (tx, rx) contexts.
    fn fresh(
        fingerprint: Fingerprint,
        t0: Instant,
    ) -> (CallRelay, Arc<CallCounters>, SrtpContext, SrtpContext) {
        let t_in = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let t_out = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
        let counters = Arc::new(CallCounters::default());
        let relay = CallRelay::new(
            params(
                TrunkCrypto::Sdes {
                    inbound: t_in.clone(),
                    outbound: t_out.clone(),
                },
                None,
                fingerprint,
                GW_UFRAG,
                GW_PWD,
            ),
            identity(),
            counters.clone(),
            Arc::new(WorkerStats::default()),
            t0,
        );
        (
            relay,
            counters,
            SrtpContext::new(&t_in).unwrap(),
            SrtpContext::new(&t_out).unwrap(),
        )
    }

    /// Runs the DTLS handshake between `browser` and `relay` by handing
    /// datagrams across; returns what the relay sent to the trunk meanwhile.
    fn handshake(
        relay: &mut CallRelay,
        browser: &mut SimBrowser,
        from: SocketAddr,
        now: Instant,
    ) -> Vec<(LegId, SocketAddr, Vec<u8>)> {
        let mut to_trunk = vec![];
        let mut to_gateway = browser.connect(now);
        for _ in 0..20 {
            for d in to_gateway.drain(..) {
                relay.handle_datagram(LegId::Browser, from, &d, now);
            }
            for (leg, to, data) in drain(relay) {
                if leg == LegId::Browser {
                    assert_eq!(to, from);
                    to_gateway.extend(browser.handle_dtls(now, &data));
                } else {
                    to_trunk.push((leg, to, data));
                }
            }
            if to_gateway.is_empty() {
                break;
            }
        }
        to_trunk
    }

    fn gcm_and_cm() -> Vec<SrtpProtectionProfile> {
        vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ]
    }

    #[test]
    fn ice_dtls_then_media_both_ways() {
        let t0 = Instant::now();
        let from = addr(BROWSER);
        let mut browser = SimBrowser::new(addr("192.0.2.1:40000"), gcm_and_cm());
        // The relay expects the browser certificate's fingerprint, as the
        // SDP carries it.
        let hello = browser.connect(t0);
        let (mut relay, counters, mut trunk_tx, mut trunk_rx) =
            fresh(browser.fingerprint.clone(), t0);

        // Media before anything: dropped, nothing to the trunk.
        let early = rtp_packet(PCMU, 1, 0, 0xB1, 1);
        relay.handle_datagram(LegId::Browser, from, &early, t0);
        // DTLS before ICE: wrong source.
        relay.handle_datagram(LegId::Browser, from, &hello[0], t0);
        assert!(drain(&mut relay).is_empty());
        let b = counters.browser.snapshot();
        assert_eq!(b.drops(DropReason::WrongSource), 2);

        // A check with a wrong password: rejected, 401 answered.
        let bad = SimBrowser::stun_request(GW_UFRAG, "wrong-password-000000000", true);
        relay.handle_datagram(LegId::Browser, from, &bad, t0);
        let out = drain(&mut relay);
        assert_eq!(out.len(), 1);
        assert_eq!(counters.browser.drops(DropReason::StunRejected), 1);

        // The real check: answered with a success response.
        let req = SimBrowser::stun_request(GW_UFRAG, GW_PWD, true);
        relay.handle_datagram(LegId::Browser, from, &req, t0);
        let out = drain(&mut relay);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, from);
        assert_eq!(&out[0].2[0..2], &[0x01, 0x01], "Binding success response");

        // Trunk media before DTLS completes: NotReady, nothing to the browser.
        let tpkt = protect(&mut trunk_tx, &rtp_packet(OPUS_TRUNK, 1, 0, 0x71, 2));
        relay.handle_datagram(LegId::TrunkRtp, addr("192.0.2.10:30000"), &tpkt, t0);
        assert!(drain(&mut relay).is_empty());
        assert_eq!(counters.trunk.drops(DropReason::NotReady), 1);

        // DTLS (the ClientHello already made, then the rest of the flights).
        let mut to_gateway = hello;
        let mut to_trunk = vec![];
        for _ in 0..20 {
            for d in to_gateway.drain(..) {
                relay.handle_datagram(LegId::Browser, from, &d, t0);
            }
            for (leg, to, data) in drain(&mut relay) {
                if leg == LegId::Browser {
                    to_gateway.extend(browser.handle_dtls(t0, &data));
                } else {
                    to_trunk.push((leg, to, data));
                }
            }
            if to_gateway.is_empty() {
                break;
            }
        }
        assert!(to_trunk.is_empty(), "nothing to the trunk during DTLS");
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::BrowserConnected {
                suite: SrtpSuite::AeadAes128Gcm
            })
        );
        assert_eq!(browser.suite, Some(SrtpSuite::AeadAes128Gcm));
        assert!(relay.is_connected());

        // Media both ways.
        let now = t0 + ms(20);
        let bpkt = protect(
            browser.tx.as_mut().unwrap(),
            &rtp_packet(OPUS_BROWSER, 10, 960, 0xB1, 0x33),
        );
        relay.handle_datagram(LegId::Browser, from, &bpkt, now);
        let out = drain(&mut relay);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, LegId::TrunkRtp);
        let plain = unprotect(&mut trunk_rx, &out[0].2);
        assert_eq!(parse_rtp(&plain).unwrap().payload_type, OPUS_TRUNK);

        let tpkt = protect(&mut trunk_tx, &rtp_packet(OPUS_TRUNK, 2, 960, 0x71, 0x44));
        relay.handle_datagram(LegId::TrunkRtp, addr("192.0.2.10:30000"), &tpkt, now);
        let out = drain(&mut relay);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1), (LegId::Browser, from));
        let plain = unprotect(browser.rx.as_mut().unwrap(), &out[0].2);
        let f = parse_rtp(&plain).unwrap();
        assert_eq!(f.payload_type, OPUS_BROWSER);
        assert_eq!(f.ssrc, relay.output_ssrcs().0);
        assert_eq!(&plain[12..], &[0x44; 160][..]);
    }

    #[test]
    fn wrong_fingerprint_fails_and_nothing_is_forwarded() {
        let t0 = Instant::now();
        let from = addr(BROWSER);
        let mut browser = SimBrowser::new(addr("192.0.2.1:40000"), gcm_and_cm());
        // The SDP claimed another certificate.
        let (mut relay, counters, mut trunk_tx, _) =
            fresh(Fingerprint::sha256(b"some other certificate"), t0);
        let req = SimBrowser::stun_request(GW_UFRAG, GW_PWD, true);
        relay.handle_datagram(LegId::Browser, from, &req, t0);
        drain(&mut relay);
        let to_trunk = handshake(&mut relay, &mut browser, from, t0);
        assert!(to_trunk.is_empty());
        match relay.poll_event() {
            Some(RelayEvent::Failed { reason }) => {
                assert!(reason.contains("fingerprint"), "{reason}");
                assert!(reason.contains(BROWSER), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(!relay.is_connected());
        assert_eq!(relay.poll_timeout(), None);
        // Whatever comes now goes nowhere.
        let tpkt = protect(&mut trunk_tx, &rtp_packet(PCMU, 1, 0, 0x71, 2));
        relay.handle_datagram(LegId::TrunkRtp, addr("192.0.2.10:30000"), &tpkt, t0);
        let junk = rtp_packet(PCMU, 1, 0, 0xB1, 1);
        relay.handle_datagram(LegId::Browser, from, &junk, t0);
        assert!(drain(&mut relay).is_empty());
        assert_eq!(counters.trunk.drops(DropReason::NotReady), 1);
        // (The browser's last flight after our alert counts here too.)
        assert!(counters.browser.drops(DropReason::NotReady) >= 1);
    }

    #[test]
    fn browser_never_connecting_times_out() {
        let t0 = Instant::now();
        let (mut relay, _, _, _) = fresh(Fingerprint::sha256(b"x"), t0);
        assert_eq!(relay.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        relay.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::Timeout { leg: Leg::Browser })
        );
    }

    #[test]
    fn aes_cm_profile_when_the_browser_offers_only_that() {
        let t0 = Instant::now();
        let from = addr(BROWSER);
        let mut browser = SimBrowser::new(
            addr("192.0.2.1:40000"),
            vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
        );
        let hello = browser.connect(t0);
        let (mut relay, _, _, _) = fresh(browser.fingerprint.clone(), t0);
        let req = SimBrowser::stun_request(GW_UFRAG, GW_PWD, false);
        relay.handle_datagram(LegId::Browser, from, &req, t0);
        drain(&mut relay);
        let mut to_gateway = hello;
        for _ in 0..20 {
            for d in to_gateway.drain(..) {
                relay.handle_datagram(LegId::Browser, from, &d, t0);
            }
            for (leg, _, data) in drain(&mut relay) {
                assert_eq!(leg, LegId::Browser);
                to_gateway.extend(browser.handle_dtls(t0, &data));
            }
        }
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::BrowserConnected {
                suite: SrtpSuite::AesCm128HmacSha1_80
            })
        );
    }
}
