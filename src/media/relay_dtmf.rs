//! The DTMF half of [`CallRelay`]: digits the gateway plays into the stream
//! toward the trunk (the browser's `dtmf`) or toward the browser (a trunk's
//! SIP INFO), and the trunk's RFC 4733 events noticed on the way through.
//!
//! A played event continues the stream it goes into: the output SSRC of
//! that direction, the next sequence number (later packets of the stream
//! renumbered by [`StreamRewriter::insert`] and
//! [`StreamRewriter::suppress`], so the receiver sees no gap), a timestamp
//! on that stream's clock. The voice of that direction is muted while an
//! event plays.

use std::time::Instant;

use super::super::dtmf::{DtmfSender, DtmfTiming, EventPacket};
use super::super::rewrite::{RtpFields, StreamRewriter, Toward};
use super::super::srtp::MAX_OVERHEAD;
use super::{CallRelay, DtmfRefused, LegId, Phase, RelayEvent};
use crate::types::{DtmfDigit, PayloadType};

/// Digits being played in one direction.
#[derive(Debug)]
pub(super) struct DtmfOut {
    sender: DtmfSender,
    /// The RTP timestamp of the event being played.
    ts: u32,
}

impl CallRelay {
    /// Queues `digit` as RFC 4733 telephone-events `toward` one side (100 ms
    /// tone, 100 ms gap; see [`super::super::dtmf`]), sent from
    /// [`handle_timeout`](Self::handle_timeout) on the schedule
    /// [`poll_timeout`](Self::poll_timeout) announces, inside the stream
    /// that side already gets. Toward the browser only when it negotiated
    /// telephone-event. Digits queued before the browser's DTLS is up wait
    /// for it.
    pub fn send_dtmf(
        &mut self,
        toward: Toward,
        digit: DtmfDigit,
        now: Instant,
    ) -> Result<(), DtmfRefused> {
        if self.phase == Phase::Stopped {
            return Err(DtmfRefused::Stopped);
        }
        let te = self.telephone_event.ok_or(DtmfRefused::NotNegotiated)?;
        if toward == Toward::Browser && te.browser.is_none() {
            return Err(DtmfRefused::NotNegotiated);
        }
        let out = self.dtmf_out(toward).get_or_insert_with(|| DtmfOut {
            sender: DtmfSender::new(te.clock_rate, DtmfTiming::default()),
            ts: 0,
        });
        if out.sender.push(digit, now) {
            Ok(())
        } else {
            Err(DtmfRefused::QueueFull)
        }
    }

    /// When the next DTMF packet is due (only once media flows).
    pub(super) fn dtmf_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Connected {
            return None;
        }
        [&self.dtmf_to_trunk, &self.dtmf_to_browser]
            .into_iter()
            .flatten()
            .filter_map(|o| o.sender.poll_timeout())
            .min()
    }

    /// Sends the DTMF packets due at `now`, both ways.
    pub(super) fn play_dtmf(&mut self, now: Instant) {
        if self.phase != Phase::Connected {
            return;
        }
        for toward in [Toward::Trunk, Toward::Browser] {
            while let Some(packet) = self
                .dtmf_out(toward)
                .as_mut()
                .and_then(|o| o.sender.poll_packet(now))
            {
                self.send_event_packet(toward, packet, now);
            }
        }
    }

    fn dtmf_out(&mut self, toward: Toward) -> &mut Option<DtmfOut> {
        match toward {
            Toward::Trunk => &mut self.dtmf_to_trunk,
            Toward::Browser => &mut self.dtmf_to_browser,
        }
    }

    fn rewriter(&mut self, toward: Toward) -> &mut StreamRewriter {
        match toward {
            Toward::Trunk => &mut self.to_trunk,
            Toward::Browser => &mut self.to_browser,
        }
    }

    /// One telephone-event packet `toward` a side, continuing its stream.
    fn send_event_packet(&mut self, toward: Toward, packet: EventPacket, now: Instant) {
        let Some(te) = self.telephone_event else {
            return;
        };
        let pt = match toward {
            Toward::Trunk => te.trunk,
            Toward::Browser => match te.browser {
                Some(pt) => pt,
                None => return,
            },
        };
        let (seq, ts) = self.rewriter(toward).insert(now, te.clock_rate);
        let ssrc = self.rewriter(toward).out_ssrc();
        let Some(out) = self.dtmf_out(toward).as_mut() else {
            return;
        };
        if packet.start {
            out.ts = ts;
        }
        let ts = out.ts;
        let mut buf = self.take_buffer();
        buf.extend_from_slice(&[0x80, (u8::from(packet.start) << 7) | (pt.0 & 0x7f)]);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&ts.to_be_bytes());
        buf.extend_from_slice(&ssrc.0.to_be_bytes());
        buf.extend_from_slice(&packet.payload());
        let (leg, to, srtp_out) = match toward {
            Toward::Trunk => (
                LegId::TrunkRtp,
                self.trunk.rtp_dest(),
                self.trunk.srtp.as_mut().map(|(_, out)| out),
            ),
            Toward::Browser => {
                let Some(dest) = self.browser.dest else {
                    return self.recycle(buf);
                };
                (LegId::Browser, dest, self.browser.srtp_out.as_mut())
            }
        };
        if let Some(srtp_out) = srtp_out {
            let len = buf.len();
            buf.resize(len + MAX_OVERHEAD, 0);
            match srtp_out.protect_rtp_in_place(&mut buf, len) {
                Ok(len) => buf.truncate(len),
                Err(e) => {
                    // Cannot happen with a keyed context and this room; if
                    // it does, the digit is lost, not the call.
                    tracing::warn!(error = %e, "cannot protect a DTMF packet");
                    return self.recycle(buf);
                }
            }
        }
        self.push(leg, to, buf);
    }

    /// The DTMF side of an authenticated RTP packet going `toward` a side:
    /// a trunk's telephone-event is reported (once per event) and still
    /// relayed when the browser negotiated telephone-event too; voice is
    /// muted toward a side while one of our events plays to it. `true` when
    /// the packet goes no further.
    pub(super) fn dtmf_consumes(&mut self, toward: Toward, fields: &RtpFields, buf: &[u8]) -> bool {
        let Some(te) = self.telephone_event else {
            return false;
        };
        if toward == Toward::Browser && fields.payload_type == te.trunk.0 {
            let payload = buf.get(fields.header_len..).unwrap_or_default();
            if let Some(digit) = self.dtmf_in.on_packet(fields.timestamp, payload) {
                self.events.push_back(RelayEvent::Dtmf { digit });
            }
            // Our own events toward the browser win over the trunk's.
            if te.browser.is_none() || self.playing(toward) {
                self.rewriter(toward).suppress(fields);
                return true;
            }
            return false;
        }
        let own_event = match toward {
            Toward::Trunk => Some(PayloadType(fields.payload_type)) == te.browser,
            Toward::Browser => false,
        };
        if self.playing(toward) && !own_event {
            self.rewriter(toward).suppress(fields);
            return true;
        }
        false
    }

    fn playing(&mut self, toward: Toward) -> bool {
        self.dtmf_out(toward)
            .as_ref()
            .is_some_and(|o| o.sender.is_playing())
    }
}
