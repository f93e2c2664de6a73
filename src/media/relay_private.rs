//! Private calls in `CallRelay` (`TrunkCrypto::Passthrough`): the gateway
//! relays the encrypted stream without holding any media key.
//!
//! The browser's DTLS peer is the trunk (its fingerprint is in the browser's
//! answer, the browser's in the trunk's offer). The relay still terminates
//! ICE-lite with the browser (so single-port demultiplexing by ufrag and
//! the address a check authenticated works as for every call), and:
//! - DTLS records from the browser's checked address go to the trunk's RTP
//!   address, and the trunk's to the browser's selected address (those that
//!   arrive before the browser passed ICE wait, a few at most); DTLS on a
//!   separate trunk RTCP port is dropped: a browser runs one association;
//! - SRTP and SRTCP pass unchanged: the source is checked (trunk: the
//!   signaled IP unless `media_source = "latch"`, then latched), RTP's clear
//!   header is SSRC-filtered and its payload type checked against the
//!   negotiated ones (no renumbering: SRTP authenticates the header, so the
//!   SDP keeps the same numbers on both legs); RTCP goes to the trunk's RTCP
//!   port when it does not mux.
//!
//! No SRTP context is ever created: `CallCounters::srtp_contexts` stays 0.
//! The gateway cannot play DTMF into the stream or read the trunk's
//! telephone-events (they stay inside the encryption), nor watch RTCP
//! reports.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::counters::{DropReason, Leg};
use super::super::dtls_watch;
use super::super::rewrite::{parse_rtp, Toward};
use super::{CallRelay, LegId, Media, Phase, RelayEvent};
use crate::types::SrtpSuite;

/// Trunk DTLS datagrams kept until the browser's address is known.
const MAX_PENDING: usize = 8;

/// The state a private call adds to the relay.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    /// A ChangeCipherSpec has passed from each side.
    ccs_from_browser: bool,
    ccs_from_trunk: bool,
    /// The SRTP profile the DTLS server's ServerHello chose.
    suite: Option<SrtpSuite>,
    /// The trunk's DTLS datagrams that came before the browser passed ICE.
    pending: Vec<Vec<u8>>,
}

impl CallRelay {
    /// A DTLS datagram from the browser (already from a checked address):
    /// to the trunk, unread but for its clear record headers.
    pub(super) fn private_browser_dtls(&mut self, data: &[u8], now: Instant) {
        let Some(p) = self.private.as_mut() else {
            return;
        };
        let seen = dtls_watch::scan(data);
        p.ccs_from_browser |= seen.change_cipher_spec;
        p.suite = seen.srtp_profile.or(p.suite);
        if self.phase == Phase::Connected {
            self.last_browser_rx = now;
        }
        let to = self.trunk.rtp_dest();
        let mut buf = self.take_buffer();
        buf.extend_from_slice(data);
        self.push(LegId::TrunkRtp, to, buf);
        self.private_maybe_connected(now);
    }

    /// A DTLS datagram from the trunk: to the browser once its address is
    /// known.
    pub(super) fn private_trunk_dtls(
        &mut self,
        leg: LegId,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        if self.phase == Phase::Stopped {
            return self.drop(Leg::Trunk, DropReason::NotReady);
        }
        if leg == LegId::TrunkRtcp && self.trunk.remote_rtcp.is_some() {
            // A second association on the RTCP component (RFC 5764 without
            // rtcp-mux): the browser runs one, on its muxed port.
            return self.drop(Leg::Trunk, DropReason::Malformed);
        }
        if let Err(reason) = self.trunk_source_ok(leg, from, now) {
            return self.drop(Leg::Trunk, reason);
        }
        self.latch(leg, from, now);
        let Some(p) = self.private.as_mut() else {
            return;
        };
        let seen = dtls_watch::scan(data);
        p.ccs_from_trunk |= seen.change_cipher_spec;
        p.suite = seen.srtp_profile.or(p.suite);
        match self.browser.dest {
            Some(dest) => {
                let mut buf = self.take_buffer();
                buf.extend_from_slice(data);
                self.push(LegId::Browser, dest, buf);
            }
            None if p.pending.len() < MAX_PENDING => p.pending.push(data.to_vec()),
            None => self.drop(Leg::Trunk, DropReason::NotReady),
        }
        self.private_maybe_connected(now);
    }

    /// Sends the trunk's DTLS that waited for the browser's address.
    pub(super) fn flush_private_pending(&mut self) {
        let Some(dest) = self.browser.dest else {
            return;
        };
        let Some(pending) = self
            .private
            .as_mut()
            .map(|p| std::mem::take(&mut p.pending))
        else {
            return;
        };
        for datagram in pending {
            let mut buf = self.take_buffer();
            buf.extend_from_slice(&datagram);
            self.push(LegId::Browser, dest, buf);
        }
    }

    /// RTP or RTCP of a private call, after the source check: filtered on
    /// its clear header and forwarded unchanged.
    pub(super) fn forward_private(
        &mut self,
        leg: LegId,
        from: SocketAddr,
        kind: Media,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Option<(LegId, SocketAddr)>, DropReason> {
        if self.phase == Phase::Stopped {
            return Err(DropReason::NotReady);
        }
        let toward = match leg {
            LegId::Browser => Toward::Trunk,
            LegId::TrunkRtp | LegId::TrunkRtcp => Toward::Browser,
        };
        if kind == Media::Rtp {
            let fields = parse_rtp(buf)?;
            self.arrival_filter(toward).check(fields.ssrc, now)?;
            if self.payload_map.map(toward, fields.payload_type).is_none() {
                return Err(DropReason::UnknownPayloadType);
            }
            self.arrival_filter(toward).accept(fields.ssrc, now);
        }
        self.heard_from(leg, from, now);
        // SRTP flows only once both ends hold keys: a packet that passed
        // proves the handshake is done even if its last records were missed.
        if self.phase == Phase::Connecting {
            self.private_connected(now);
        }
        if kind == Media::Rtp && self.hold_trunk && toward == Toward::Trunk {
            return Ok(None);
        }
        match toward {
            Toward::Trunk => Ok(Some(match kind {
                Media::Rtp => (LegId::TrunkRtp, self.trunk.rtp_dest()),
                Media::Rtcp => self.trunk.rtcp_dest(),
            })),
            Toward::Browser => match self.browser.dest {
                Some(dest) => Ok(Some((LegId::Browser, dest))),
                None => Err(DropReason::NotReady),
            },
        }
    }

    fn private_maybe_connected(&mut self, now: Instant) {
        let done = self
            .private
            .as_ref()
            .is_some_and(|p| p.ccs_from_browser && p.ccs_from_trunk);
        if done && self.phase == Phase::Connecting {
            self.private_connected(now);
        }
    }

    fn private_connected(&mut self, now: Instant) {
        let suite = self.private.as_ref().and_then(|p| p.suite);
        self.phase = Phase::Connected;
        self.last_browser_rx = now;
        self.last_trunk_rx = now;
        tracing::info!(
            suite = suite.map_or("unknown", |s| s.name()),
            "private call: the browser and the trunk agreed DTLS-SRTP keys end to end; \
             the gateway relays without them"
        );
        self.events
            .push_back(RelayEvent::PrivateConnected { suite });
    }
}
