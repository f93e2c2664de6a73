//! A REFER of the trunk carried out: the gateway as the transferee of a
//! blind transfer (RFC 3515, RFC 5589 6). Sans-IO, no clock.
//!
//! ```text
//!  trunk (transferor)          gateway                      trunk (target)
//!   REFER Refer-To: 200  ──▶  202, NOTIFY "100 Trying"
//!                             INVITE sip:200@trunk  ─────────────▶
//!                             (new Call-ID, our session as it is:
//!                              codec, telephone-event, hold state,
//!                              a fresh SDES key)
//!                                              ◀────────  200 + SDP
//!   NOTIFY "200 OK" ◀──────   ACK; the trunk leg moves to the answer
//!   (terminated)              (UpdateTrunk: address, key, PTs)
//!   BYE ◀──────────────────   the old dialog ends
//! ```
//!
//! The browser leg is not touched: same session, same DTLS, same codec (the
//! new INVITE offers only the codec the browser already runs, so whatever
//! the target answers the browser can keep sending), and it hears the
//! transferor until the target's early media (an 18x with SDP: the trunk
//! leg moves to it, and back to the transferor if the transfer fails) or
//! its answer, then the target. The browser is
//! told `transferred` with `by: "trunk"`: code 100 when the new INVITE
//! goes out, then the final status.
//!
//! What fails: a final refusal of the new INVITE (or an answer we cannot
//! use, then BYE'd) is reported to the transferor in the last NOTIFY and
//! to the browser as `transferred` with that code; the call then goes on
//! with the transferor when it is still there (RFC 5589 6.1: the
//! transferor may take the call back), and ends with that code when the
//! transferor already hung up. [`TrunkTransfer`] is the new call while it
//! is set up; [`Retired`] an old or failed dialog that only winds down.

use std::collections::VecDeque;
use std::time::Instant;

use rsip::{Header, SipMessage};
use tracing::{info, warn};

use super::call::Output;
use super::renegotiate::{Change, TrunkSession};
use crate::sip::refer::Referral;
use crate::sip::uac::{OutgoingCall, UacConfig, UacEvent};
use crate::sip::uas::IncomingCall;

/// What came of a carried-out REFER: early media, or its end.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The target's 18x carries an SDP: the trunk leg moves to it (only
    /// the leg: hold and the session stay the transferor's) so that the
    /// browser hears the target's ringback or announcement. Once per
    /// transfer; not on DTLS legs, whose association belongs to one peer
    /// and could not be given back to the transferor if the transfer fails.
    EarlyMedia(Box<Change>),
    /// The target answered: its session, and what the trunk leg must do.
    Answered(Box<(TrunkSession, Change)>),
    /// The new call failed with this status (the SIP refusal, 408, or
    /// 488 for an answer we could not use).
    Failed { code: u16, reason: String },
}

/// The new call a trunk's REFER asked for, until its final answer.
pub(super) struct TrunkTransfer {
    /// The number the REFER named.
    pub to: String,
    /// The REFER's CSeq: the `id` of our NOTIFYs in the old dialog.
    pub refer_cseq: u32,
    pub uac: OutgoingCall,
    /// The trunk session as offered in the new INVITE.
    session: TrunkSession,
    /// The trunk leg runs on the target's early media: a failure must
    /// give it back to the transferor.
    pub early_media: bool,
}

impl TrunkTransfer {
    /// Sends the new INVITE: `cfg` is the call's own INVITE configuration
    /// with a new Call-ID and the Request-URI of the REFER's number;
    /// `current` the trunk session the call runs now. The offer is that
    /// session under a new `o=` id (a new dialog is a new session) with a
    /// fresh key of ours (a new peer, new SRTP contexts).
    pub fn start(
        referral: &Referral,
        cfg: UacConfig,
        current: &TrunkSession,
        refer_answer: u16,
        now: Instant,
    ) -> Self {
        let mut session = current.clone();
        session.session_id = u64::from(rand::random::<u32>());
        session.version = 0;
        let offer = session.offer();
        let mut headers: Vec<Header> = referral
            .referred_by
            .iter()
            .map(|v| Header::Other("Referred-By".into(), v.clone()))
            .collect();
        if let Some(replaces) = &referral.replaces {
            // An attended transfer (RFC 3891): the new call replaces the
            // trunk's dialog with the transfer target, which must honour
            // that rather than ring as a new call.
            headers.push(Header::Other("Replaces".into(), replaces.clone()));
            headers.push(Header::Require("replaces".into()));
        }
        let mut uac = OutgoingCall::with_headers(cfg, offer, headers, now);
        uac.set_refer_answer(refer_answer);
        TrunkTransfer {
            to: referral.user.clone(),
            refer_cseq: referral.cseq,
            uac,
            session,
            early_media: false,
        }
    }

    /// Moves the new call's SIP output to `out`; its outcome once the final
    /// answer came. Events after the 2xx stay queued in `uac` for the call
    /// that takes it over.
    pub fn poll(&mut self, out: &mut VecDeque<Output>, now: Instant) -> (bool, Option<Outcome>) {
        let mut progressed = false;
        loop {
            while let Some((bytes, to)) = self.uac.poll_transmit() {
                out.push_back(Output::Sip { to, bytes });
                progressed = true;
            }
            let Some(event) = self.uac.poll_event() else {
                return (progressed, None);
            };
            progressed = true;
            match event {
                UacEvent::Provisional { code, sdp } => {
                    info!(code, "the transfer target: provisional answer");
                    let Some(sdp) = sdp.filter(|_| !self.early_media && !self.session.is_dtls())
                    else {
                        continue;
                    };
                    // A clone: the final answer is taken against the
                    // session as offered (our key stays offered).
                    match self.session.clone().take_answer(Some(&sdp)) {
                        Ok(change) => {
                            info!("the transfer target's early media: the trunk leg moves to it");
                            self.early_media = true;
                            return (true, Some(Outcome::EarlyMedia(Box::new(change))));
                        }
                        Err(e) => {
                            warn!(reason = %e, "the transfer target's early SDP is unusable: not played");
                        }
                    }
                }
                UacEvent::Answered { sdp } => {
                    let mut session = self.session.clone();
                    return match session.take_answer(sdp.as_deref()) {
                        Ok(change) => {
                            info!("the transfer target answered");
                            (true, Some(Outcome::Answered(Box::new((session, change)))))
                        }
                        Err(e) => {
                            warn!(reason = %e, "the transfer target's answer is unusable: BYE");
                            self.uac.hangup(now);
                            self.drain(out);
                            let reason = format!("unusable answer: {e}");
                            (true, Some(Outcome::Failed { code: 488, reason }))
                        }
                    };
                }
                UacEvent::Rejected { code, reason } => {
                    info!(code, "the transfer target refused the call");
                    return (true, Some(Outcome::Failed { code, reason }));
                }
                // The fallback offer is never set on this call; the rest
                // needs a dialog, which comes with the 2xx.
                _ => {}
            }
        }
    }

    fn drain(&mut self, out: &mut VecDeque<Output>) {
        while let Some((bytes, to)) = self.uac.poll_transmit() {
            out.push_back(Output::Sip { to, bytes });
        }
    }
}

/// A dialog the call no longer uses (the transferor's after the transfer,
/// a failed transfer's INVITE): it only finishes its transactions (BYE,
/// ACK of a refusal, retransmissions) and its events no longer matter.
pub(super) enum Retired {
    Uac(Box<OutgoingCall>),
    Uas(Box<IncomingCall>),
}

impl Retired {
    pub fn call_id(&self) -> String {
        match self {
            Retired::Uac(u) => u.call_id().to_string(),
            Retired::Uas(u) => u.call_id(),
        }
    }

    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) {
        match self {
            Retired::Uac(u) => u.handle_message(msg, now),
            Retired::Uas(u) => u.handle_message(msg, now),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            Retired::Uac(u) => u.handle_timeout(now),
            Retired::Uas(u) => u.handle_timeout(now),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Retired::Uac(u) => u.poll_timeout(),
            Retired::Uas(u) => u.poll_timeout(),
        }
    }

    /// Moves its output to `out` and drops its events; true if anything
    /// moved.
    pub fn drain(&mut self, out: &mut VecDeque<Output>) -> bool {
        let mut progressed = false;
        match self {
            Retired::Uac(u) => {
                while let Some((bytes, to)) = u.poll_transmit() {
                    out.push_back(Output::Sip { to, bytes });
                    progressed = true;
                }
                while u.poll_event().is_some() {
                    progressed = true;
                }
            }
            Retired::Uas(u) => {
                while let Some((bytes, to)) = u.poll_transmit() {
                    out.push_back(Output::Sip { to, bytes });
                    progressed = true;
                }
                while u.poll_event().is_some() {
                    progressed = true;
                }
            }
        }
        progressed
    }

    pub fn is_finished(&self) -> bool {
        match self {
            Retired::Uac(u) => u.is_finished(),
            Retired::Uas(u) => u.is_finished(),
        }
    }
}
