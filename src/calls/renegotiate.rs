//! The trunk leg's session after the call is up, and the B2BUA's answer to
//! the trunk's re-offers (a re-INVITE or UPDATE with SDP, RFC 3261 14 and
//! RFC 3311): pure, no IO, no clock.
//!
//! What a re-offer may change, and what the answer does about it:
//!
//! - direction: `a=sendonly` / `a=inactive` or `c=0.0.0.0` (RFC 2543 hold)
//!   is the trunk holding the call; the answer mirrors the direction
//!   (sendonly → recvonly, inactive → inactive, sendrecv → sendrecv) and
//!   the B2BUA tells the browser `held` / `resumed`;
//! - address or port: the trunk leg moves (`MediaCommand::UpdateTrunk`);
//!   `c=0.0.0.0` keeps the old address (there is nothing to send to);
//! - `a=crypto` key: the trunk leg is re-keyed;
//! - payload types: the browser's codec is followed under the trunk's new
//!   number. An offer without it but with another codec the browser
//!   accepted ([`TrunkSession::browser_codecs`]) is a codec change: the
//!   B2BUA re-offers the browser first ([`TrunkSession::switch_for`]) and
//!   answers the trunk with the codec the browser took
//!   ([`TrunkSession::answer_switched`]), or 488 when it does not take it.
//!   An offer with neither is refused (488), as is a change between SRTP and
//!   plain RTP in either direction (a mid-call downgrade is what
//!   `secure_media = "mandatory"` exists to refuse, and an upgrade would
//!   change what the browser was told in `connected`).
//!
//! Our key: whenever the leg is rebuilt (moved, re-keyed, renumbered) the
//! answer carries a fresh key of ours, as RFC 4568 7.1.4 allows. The media
//! plane makes new SRTP contexts on every update, which restart the
//! rollover counter; the same key under a restarted counter could repeat a
//! packet index after 2^16 packets, that is reuse the keystream. A
//! re-offer that only changes the direction keeps the leg and our key.
//!
//! A refused offer leaves the session exactly as it was.
//!
//! The browser's hold and resume are offers of ours ([`TrunkSession::hold_offer`],
//! answered in [`TrunkSession::take_hold_answer`]): `a=sendonly` while the
//! browser holds, `a=sendrecv` when it resumes, the same codec and address,
//! and the same SDES key, as for a re-offer of the trunk's that only changes
//! the direction. The same key, not a fresh one: real trunks keep the first
//! key they were given (baresip 1.0's srtp module keys its contexts once per
//! call and fails every packet under a new key: measured in
//! tests/integration/test_hold.py), and a direction change rebuilds nothing
//! here, so the rollover counter runs on. An answer that moves or re-keys
//! the trunk's side still rebuilds the leg, then with our key under a
//! restarted counter: the case the fresh keys above exist for, left open
//! here (a trunk that answers a hold with a new key of its own; none seen).
//! While the browser holds, our answers to the trunk's own re-offers do not
//! receive either (sendrecv is answered sendonly), so a trunk re-INVITE does
//! not quietly end the browser's hold.

use std::net::{IpAddr, SocketAddr};

use crate::media::relay::{TrunkCrypto, TrunkLegParams};
use crate::sdp::{self, AnswerKeying, Codec, Direction, Proto, SdpError, SipOffer, TrunkDtls};
use crate::types::{PayloadType, SrtpKeyMaterial, SrtpSuite};

/// Why a re-offer was refused (488); the session goes on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Sdp(#[from] SdpError),
    #[error("the trunk leg is SRTP: a plain RTP offer is not taken in mid-call")]
    Downgrade,
    #[error("the trunk leg is plain RTP: an SRTP offer is not taken in mid-call")]
    Upgrade,
    #[error("no usable a=crypto of an allowed suite")]
    NoCrypto,
    #[error("the trunk leg is DTLS-SRTP: an SDES offer is not taken in mid-call")]
    NotDtls,
    #[error("the offer lacks the call's codec {0} and any other the browser accepted")]
    CodecGone(String),
    #[error("the answer in the ACK came without SDP")]
    NoAnswer,
}

/// SDES keys of the trunk leg.
#[derive(Debug, Clone)]
struct Sdes {
    theirs: SrtpKeyMaterial,
    ours: SrtpKeyMaterial,
    /// The tag of the trunk's line our key answers.
    tag: u32,
}

/// The relay's payload-type map: (browser PT, trunk PT, clock rate).
pub type PayloadMap = Vec<(PayloadType, PayloadType, u32)>;

/// What the B2BUA must carry out after an accepted re-offer or answer.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Rebuild the trunk leg with these (`MediaCommand::UpdateTrunk`).
    pub update: Option<(TrunkLegParams, PayloadMap)>,
    /// `Some(true)`: the trunk put the call on hold; `Some(false)`: it took
    /// it back.
    pub hold: Option<bool>,
}

/// The trunk leg as last negotiated. See the module documentation.
#[derive(Debug, Clone)]
pub struct TrunkSession {
    /// `o=` of our SDPs toward the trunk: the id stays, the version rises
    /// with each SDP we send.
    pub session_id: u64,
    pub version: u64,
    pub local_ip: IpAddr,
    pub local_port: u16,
    /// The browser's codec (with the browser's PT) and telephone-event PT.
    pub browser_codec: Codec,
    pub browser_te: Option<PayloadType>,
    /// The trunk's PTs for them.
    pub trunk_pt: PayloadType,
    pub trunk_te: Option<PayloadType>,
    pub remote_rtp: SocketAddr,
    pub remote_rtcp: Option<SocketAddr>,
    pub proto: Proto,
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
    sdes: Option<Sdes>,
    /// Suites a re-key may move to (the trunk's `srtp_suites`).
    pub suites: Vec<SrtpSuite>,
    pub held: bool,
    /// The browser holds the call (our last accepted offer was sendonly).
    pub local_hold: bool,
    /// Our key in the offer of our 2xx to an offerless re-INVITE, until the
    /// ACK's answer.
    offered_key: Option<SrtpKeyMaterial>,
    /// A DTLS-SRTP leg: the trunk's certificate and our role, and our own
    /// fingerprint for the SDPs we write. Re-offers keep the association
    /// while the certificate and role stay (RFC 5763 6.7.1).
    dtls: Option<(TrunkDtls, String)>,
    /// The codecs the browser accepted, with its PTs (outgoing calls: its
    /// offer; incoming: its answer): what a codec change may move to.
    pub browser_codecs: Vec<Codec>,
    /// The next answer rebuilds the leg (the browser's codec changed).
    switched: bool,
}

/// A re-offer, checked against the session.
struct Taken {
    codecs: Vec<Codec>,
    trunk_pt: PayloadType,
    trunk_te: Option<PayloadType>,
    theirs: Option<(u32, SrtpKeyMaterial)>,
    remote_rtp: SocketAddr,
    remote_rtcp: Option<SocketAddr>,
    held: bool,
    offer: SipOffer,
}

impl TrunkSession {
    /// The session as the call set it up. `sdes`: (their key, our key, the
    /// tag of their line), `None` for plain RTP.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session_id: u64,
        version: u64,
        local: (IpAddr, u16),
        browser: (Codec, Option<PayloadType>),
        trunk: (PayloadType, Option<PayloadType>),
        remote: (SocketAddr, Option<SocketAddr>),
        shape: (Proto, bool, Option<u32>),
        sdes: Option<(SrtpKeyMaterial, SrtpKeyMaterial, u32)>,
        suites: Vec<SrtpSuite>,
    ) -> Self {
        TrunkSession {
            session_id,
            version,
            local_ip: local.0,
            local_port: local.1,
            browser_codec: browser.0,
            browser_te: browser.1,
            trunk_pt: trunk.0,
            trunk_te: trunk.1,
            remote_rtp: remote.0,
            remote_rtcp: remote.1,
            proto: shape.0,
            rtcp_mux: shape.1,
            ptime: shape.2,
            sdes: sdes.map(|(theirs, ours, tag)| Sdes { theirs, ours, tag }),
            suites,
            held: false,
            local_hold: false,
            offered_key: None,
            dtls: None,
            browser_codecs: Vec::new(),
            switched: false,
        }
    }

    /// The session of a DTLS-SRTP leg: `theirs` from the trunk's SDP,
    /// `our_fingerprint` (sha-256, `AB:CD:...`) what our SDPs carry.
    pub fn with_dtls(mut self, theirs: TrunkDtls, our_fingerprint: String) -> Self {
        self.dtls = Some((theirs, our_fingerprint));
        self
    }

    /// How the SDPs we write are keyed: SDES with `crypto`, else DTLS on a
    /// DTLS leg, else nothing.
    fn keying<'a>(&'a self, crypto: Option<(u32, &'a SrtpKeyMaterial)>) -> AnswerKeying<'a> {
        match (crypto, &self.dtls) {
            (Some((tag, key)), _) => AnswerKeying::Sdes(tag, key),
            (None, Some((_, ours))) => AnswerKeying::Dtls {
                fingerprint_sha256: ours,
            },
            (None, None) => AnswerKeying::None,
        }
    }

    /// For a re-offer [`TrunkSession::answer`] refused with
    /// [`Refusal::CodecGone`]: the codecs to re-offer the browser (the first
    /// of the trunk's codecs that the browser accepted, with the browser's
    /// PT, and its telephone-event at that clock rate), or `None`.
    pub fn switch_for(&self, sdp: &str) -> Option<Vec<Codec>> {
        let offer = sdp::parse_sip_offer(sdp).ok()?;
        let codec = offer
            .codecs
            .iter()
            .filter(|c| !c.is_telephone_event())
            .find_map(|c| {
                self.browser_codecs
                    .iter()
                    .find(|b| !b.is_telephone_event() && b.same_as(c))
            })?;
        let mut codecs = vec![codec.clone()];
        codecs.extend(
            self.browser_codecs
                .iter()
                .find(|b| b.is_telephone_event() && b.clock_rate == codec.clock_rate)
                .cloned(),
        );
        Some(codecs)
    }

    /// The codecs the call runs toward the browser (its PTs): the codec and
    /// its telephone-event, what an offer taking the browser back to them
    /// lists.
    pub fn current_browser_codecs(&self) -> Vec<Codec> {
        let mut codecs = vec![self.browser_codec.clone()];
        codecs.extend(
            self.browser_codecs
                .iter()
                .find(|b| {
                    b.is_telephone_event()
                        && Some(b.pt) == self.browser_te
                        && b.clock_rate == self.browser_codec.clock_rate
                })
                .cloned(),
        );
        codecs
    }

    /// Answers the trunk's re-offer after the browser took `codec` (with
    /// the PT it sends) and `te` in its answer to our re-offer: the call's
    /// codec is `codec` from now on. On error nothing changed.
    pub fn answer_switched(
        &mut self,
        sdp: &str,
        codec: Codec,
        te: Option<PayloadType>,
    ) -> Result<(String, Change), Refusal> {
        let old = (self.browser_codec.clone(), self.browser_te, self.trunk_te);
        self.browser_codec = codec;
        self.browser_te = te;
        self.switched = true;
        let answered = self.answer(sdp);
        self.switched = false;
        if answered.is_err() {
            (self.browser_codec, self.browser_te, self.trunk_te) = old;
        }
        answered
    }

    /// Answers the trunk's re-offer: the SDP for the 200 and what changes.
    /// On error nothing changed.
    pub fn answer(&mut self, sdp: &str) -> Result<(String, Change), Refusal> {
        let offer = sdp::parse_sip_offer(sdp)?;
        let taken = self.take(offer)?;
        let rebuild = self.rebuilds(&taken);
        let ours = match (&taken.theirs, &self.sdes) {
            (Some((_, theirs)), Some(cur)) if !rebuild && theirs.suite == cur.ours.suite => {
                Some(cur.ours.clone())
            }
            (Some((_, theirs)), _) => Some(SrtpKeyMaterial::generate(theirs.suite)),
            (None, _) => None,
        };
        self.version += 1;
        let crypto = match (&taken.theirs, &ours) {
            (Some((tag, _)), Some(key)) => Some((*tag, key)),
            _ => None,
        };
        // The writer mirrors the offer's direction; under the browser's hold
        // the mirrored direction loses its receiving half.
        let mut shape = taken.offer.clone();
        if self.local_hold {
            shape.direction = not_receiving(shape.direction.reversed()).reversed();
        }
        let answer = sdp::write_sip_answer_keyed(
            &shape,
            &taken.codecs,
            self.local_ip,
            self.local_port,
            self.keying(crypto),
            (self.session_id, self.version),
        );
        Ok((answer, self.commit(taken, ours, rebuild)))
    }

    /// Our offer for the 2xx to a re-INVITE without SDP: the call's codec,
    /// sendrecv (sendonly while the browser holds), and (SRTP) a fresh key
    /// of ours, since the answer will rebuild the leg anyway.
    pub fn offer(&mut self) -> String {
        let direction = if self.local_hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        self.offer_with(direction, true)
    }

    /// Our offer for the browser's hold (`a=sendonly`) or resume
    /// (`a=sendrecv`), with our key as it is (see the module documentation).
    /// The answer goes to [`TrunkSession::take_hold_answer`]; a refusal to
    /// [`TrunkSession::drop_offer`].
    pub fn hold_offer(&mut self, hold: bool) -> String {
        let direction = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        self.offer_with(direction, false)
    }

    /// The trunk's answer to [`TrunkSession::hold_offer`]: the browser's
    /// hold is `hold` from now on; the leg is rebuilt only if the answer
    /// moved or re-keyed the trunk's side. Whether the trunk itself holds can only be read from an answer
    /// to an offer that let it send (sendrecv): to our sendonly it can only
    /// answer recvonly or inactive, which says nothing of its own hold.
    pub fn take_hold_answer(&mut self, sdp: Option<&str>, hold: bool) -> Result<Change, Refusal> {
        let offered = self.offered_key.take();
        let sdp = sdp.ok_or(Refusal::NoAnswer)?;
        let answer = sdp::parse_sip_offer(sdp)?;
        let mut taken = self.take(answer)?;
        if hold {
            taken.held = self.held;
        }
        self.local_hold = hold;
        let rebuild = self.rebuilds(&taken);
        Ok(self.commit(taken, offered, rebuild))
    }

    /// Our offer was refused: the session stays as before it.
    pub fn drop_offer(&mut self) {
        self.offered_key = None;
    }

    /// Our offer with our `direction`, same codec, address and shape, and
    /// a fresh or the current key.
    fn offer_with(&mut self, direction: Direction, fresh_key: bool) -> String {
        let key = self.sdes.as_ref().map(|s| {
            let key = if fresh_key {
                SrtpKeyMaterial::generate(s.ours.suite)
            } else {
                s.ours.clone()
            };
            (s.tag, key)
        });
        let mut codecs = vec![Codec {
            pt: self.trunk_pt,
            ..self.browser_codec.clone()
        }];
        if let Some(pt) = self.trunk_te {
            codecs.push(Codec {
                pt,
                name: sdp::CodecName::TelephoneEvent,
                clock_rate: self.browser_codec.clock_rate,
                channels: 1,
                fmtp: Some("0-16".into()),
            });
        }
        // Written as an answer to an imagined sendrecv offer of the same
        // shape: same m-line, codecs and attributes as an offer would have.
        let shape = SipOffer {
            address: self.remote_rtp.ip(),
            port: self.remote_rtp.port(),
            proto: self.proto,
            rtcp_mux: self.rtcp_mux,
            remote_rtcp: self.remote_rtcp,
            codecs: codecs.clone(),
            cryptos: Vec::new(),
            // Our current role, written as the answer to it would be.
            dtls: self.dtls.as_ref().map(|(theirs, _)| theirs.clone()),
            ssrcs: Vec::new(),
            // The writer answers: it mirrors this.
            direction: direction.reversed(),
            ptime: self.ptime,
            skipped: Vec::new(),
        };
        self.version += 1;
        let sdp = sdp::write_sip_answer_keyed(
            &shape,
            &codecs,
            self.local_ip,
            self.local_port,
            self.keying(key.as_ref().map(|(tag, k)| (*tag, k))),
            (self.session_id, self.version),
        );
        self.offered_key = key.map(|(_, k)| k);
        sdp
    }

    /// The trunk's answer (in the ACK) to [`TrunkSession::offer`].
    pub fn take_answer(&mut self, sdp: Option<&str>) -> Result<Change, Refusal> {
        let offered = self.offered_key.take();
        let sdp = sdp.ok_or(Refusal::NoAnswer)?;
        let answer = sdp::parse_sip_offer(sdp)?;
        let taken = self.take(answer)?;
        // Our offered key is in force from now on: rebuild the leg with it.
        Ok(self.commit(taken, offered, true))
    }

    /// Checks a peer SDP against the session.
    fn take(&self, offer: SipOffer) -> Result<Taken, Refusal> {
        let codec = offer
            .codecs
            .iter()
            .find(|c| !c.is_telephone_event() && c.same_as(&self.browser_codec))
            .cloned()
            .ok_or_else(|| Refusal::CodecGone(self.browser_codec.name.as_str().to_string()))?;
        let te = self
            .browser_te
            .and_then(|_| {
                offer
                    .codecs
                    .iter()
                    .find(|c| c.is_telephone_event() && c.clock_rate == codec.clock_rate)
            })
            .cloned();
        // A DTLS leg takes DTLS offers only (a new certificate or role
        // rebuilds the association), and they carry no a=crypto.
        match (&self.dtls, &offer.dtls) {
            (Some(_), None) if offer.proto.is_secure() => return Err(Refusal::NotDtls),
            (Some(_), None) => return Err(Refusal::Downgrade),
            (None, Some(_)) => return Err(Refusal::Upgrade),
            _ => {}
        }
        let theirs = match (&self.sdes, offer.proto.is_secure() && offer.dtls.is_none()) {
            (Some(cur), true) => {
                // The suite in use if offered, else the first allowed one.
                let line = offer
                    .cryptos
                    .iter()
                    .find(|c| c.suite == cur.ours.suite)
                    .or_else(|| offer.choose_crypto(&self.suites))
                    .ok_or(Refusal::NoCrypto)?;
                let key = line.key().ok_or(Refusal::NoCrypto)?;
                Some((line.tag, key.material.clone()))
            }
            (None, false) => None,
            (Some(_), false) => return Err(Refusal::Downgrade),
            (None, true) => return Err(Refusal::Upgrade),
        };
        let unspecified = offer.address.is_unspecified();
        let held =
            matches!(offer.direction, Direction::SendOnly | Direction::Inactive) || unspecified;
        let (remote_rtp, remote_rtcp) = if unspecified {
            (self.remote_rtp, self.remote_rtcp)
        } else {
            (
                SocketAddr::new(offer.address, offer.port),
                offer.remote_rtcp,
            )
        };
        let mut codecs = vec![codec.clone()];
        codecs.extend(te.clone());
        Ok(Taken {
            codecs,
            trunk_pt: codec.pt,
            trunk_te: te.map(|c| c.pt),
            theirs,
            remote_rtp,
            remote_rtcp,
            held,
            offer,
        })
    }

    /// Whether the media plane must rebuild the trunk leg for `t`.
    fn rebuilds(&self, t: &Taken) -> bool {
        let rekeyed = match (&t.theirs, &self.sdes) {
            (Some((_, theirs)), Some(cur)) => *theirs != cur.theirs,
            _ => false,
        };
        let dtls_changed = match (&self.dtls, &t.offer.dtls) {
            (Some((cur, _)), Some(new)) => cur != new,
            _ => false,
        };
        rekeyed
            || dtls_changed
            || self.switched
            || t.remote_rtp != self.remote_rtp
            || t.remote_rtcp != self.remote_rtcp
            || t.trunk_pt != self.trunk_pt
            || (self.browser_te.is_some() && t.trunk_te != self.trunk_te)
    }

    /// Makes `t` the session, with `ours` as our key.
    fn commit(&mut self, t: Taken, ours: Option<SrtpKeyMaterial>, rebuild: bool) -> Change {
        let hold = (t.held != self.held).then_some(t.held);
        self.held = t.held;
        self.remote_rtp = t.remote_rtp;
        self.remote_rtcp = t.remote_rtcp;
        self.trunk_pt = t.trunk_pt;
        if self.browser_te.is_some() {
            self.trunk_te = t.trunk_te;
        }
        self.rtcp_mux = t.offer.rtcp_mux;
        self.ptime = t.offer.ptime.or(self.ptime);
        if let (Some((tag, theirs)), Some(ours)) = (t.theirs, ours) {
            self.sdes = Some(Sdes { theirs, ours, tag });
        }
        if let (Some((cur, _)), Some(new)) = (self.dtls.as_mut(), t.offer.dtls.clone()) {
            *cur = new;
        }
        let update = rebuild.then(|| self.leg(t.offer.ssrcs.clone()));
        Change { update, hold }
    }

    /// The trunk leg and payload map as the session has them, the peer's
    /// SSRCs being `ssrcs` (empty: learned from its first packet).
    pub fn leg(&self, ssrcs: Vec<crate::types::Ssrc>) -> (TrunkLegParams, PayloadMap) {
        let crypto = match (&self.sdes, &self.dtls) {
            (Some(s), _) => TrunkCrypto::Sdes {
                inbound: s.theirs.clone(),
                outbound: s.ours.clone(),
            },
            (None, Some((theirs, _))) => TrunkCrypto::Dtls {
                role: theirs.role,
                remote_fingerprint: theirs.fingerprint.clone(),
                suites: self
                    .suites
                    .iter()
                    .copied()
                    .filter(|s| s.has_dtls_profile())
                    .collect(),
            },
            (None, None) => TrunkCrypto::Plain,
        };
        let clock = self.browser_codec.clock_rate;
        let mut map = vec![(self.browser_codec.pt, self.trunk_pt, clock)];
        if let (Some(b), Some(t)) = (self.browser_te, self.trunk_te) {
            map.push((b, t, clock));
        }
        let params = TrunkLegParams {
            remote_rtp: self.remote_rtp,
            remote_rtcp: self.remote_rtcp,
            crypto,
            ssrcs,
            // the call's own setting replaces this (`Call::apply`)
            media_source: crate::types::MediaSource::Signaled,
        };
        (params, map)
    }

    /// A DTLS-SRTP leg (its association belongs to one peer).
    pub fn is_dtls(&self) -> bool {
        self.dtls.is_some()
    }

    /// A label for `connected`-style security strings after a re-key.
    pub fn security(&self) -> String {
        match (&self.sdes, &self.dtls) {
            (Some(s), _) => format!("sdes-srtp {}", s.theirs.suite),
            // The profile comes with the handshake (`TrunkConnected`).
            (None, Some(_)) => "dtls-srtp".into(),
            (None, None) => "rtp (unencrypted)".into(),
        }
    }
}

/// `direction` without its receiving half: what we may answer while the
/// browser holds the call.
fn not_receiving(direction: Direction) -> Direction {
    Direction::from_flags(direction.sends(), false)
}
