//! The boundary between `signaling` (one WebSocket session of a browser) and
//! `calls` (the B2BUA). Signaling parses JSON into `SessionCommand`s and turns
//! `SessionEvent`s back into JSON; it never sees SIP or SRTP.

use crate::types::{AccountName, CallId, DtmfDigit};
use serde::Serialize;
use tokio::sync::mpsc;

/// What a browser asks for, already parsed and validated by signaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Place a call to `to` (a number or user part) with the browser's SDP offer.
    Call { id: CallId, to: String, sdp: String },
    /// End a call in any state.
    Hangup { id: CallId },
    /// Answer an incoming call with the browser's SDP answer.
    Accept { id: CallId, sdp: String },
    /// Decline an incoming call.
    Reject { id: CallId },
    /// Send DTMF digits toward the trunk (at least one, validated).
    Dtmf { id: CallId, digits: Vec<DtmfDigit> },
    /// Put a connected call on hold (true) or take it back (false).
    Hold { id: CallId, hold: bool },
    /// Blind transfer of a connected call to `to` (REFER toward the trunk).
    Transfer { id: CallId, to: String },
    /// The browser's answer to the gateway's re-offer (`offer`).
    Answer { id: CallId, sdp: String },
}

/// Security of both legs of a connected call, shown by the web client's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Security {
    /// e.g. "dtls-srtp AEAD_AES_128_GCM"
    pub browser: String,
    /// e.g. "sdes-srtp AES_CM_128_HMAC_SHA1_80" or "rtp (unencrypted)"
    pub trunk: String,
    /// A private call: the media is encrypted end to end between the
    /// browser and the trunk and relayed, never decrypted, by the gateway.
    /// Only written when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// Who put a call on hold or took it back (`held` / `resumed`, field `by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldParty {
    /// The trunk's re-INVITE or UPDATE (a=sendonly/inactive, c=0.0.0.0).
    Trunk,
    /// The browser's own `hold` / `resume`, once the trunk accepted our
    /// re-INVITE (a=sendonly / a=sendrecv).
    Browser,
}

/// What the gateway tells a browser session (PROTOCOL.md section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Progress {
        id: CallId,
        code: u16,
    },
    Answer {
        id: CallId,
        sdp: String,
    },
    Connected {
        id: CallId,
        security: Security,
    },
    Hangup {
        id: CallId,
        code: u16,
        reason: String,
    },
    /// The call was put on hold (`by` the trunk or the browser).
    Held {
        id: CallId,
        by: HoldParty,
    },
    /// The call was taken off hold.
    Resumed {
        id: CallId,
        by: HoldParty,
    },
    /// The trunk sent a DTMF digit (RFC 4733 event or SIP INFO).
    Dtmf {
        id: CallId,
        digit: DtmfDigit,
    },
    /// The outcome of the browser's `transfer`: the REFER's refusal code,
    /// or the transferred call's status from the trunk's NOTIFY.
    Transferred {
        id: CallId,
        to: String,
        code: u16,
    },
    /// The trunk's REFER carried out (`calls::transferee`): 100 when the
    /// call to `to` starts, then its final status (2xx: the browser now
    /// talks to `to`; otherwise it failed).
    TransferredByTrunk {
        id: CallId,
        to: String,
        code: u16,
    },
    /// The gateway's re-offer in a connected call (the trunk changed the
    /// codec): the browser answers with `answer`.
    Offer {
        id: CallId,
        sdp: String,
    },
    /// A call for this account; `sdp` is the gateway's offer.
    Incoming {
        id: CallId,
        from: String,
        sdp: String,
        verstat: String,
    },
    Error {
        id: Option<CallId>,
        code: u16,
        message: String,
    },
}

/// The call layer as signaling sees it. Implemented by `calls::Calls`; tests
/// of signaling use a fake.
pub trait CallControl: Send + Sync + 'static {
    /// A browser session of `account` opened; events for it go to `events`.
    /// Dropping the returned session (the socket closed) hangs up its calls.
    fn attach(
        &self,
        account: AccountName,
        events: mpsc::Sender<SessionEvent>,
    ) -> Box<dyn SessionControl>;
}

/// One attached browser session.
pub trait SessionControl: Send {
    /// Hand a command to the call layer. Never blocks; problems come back as
    /// `SessionEvent::Error` or `SessionEvent::Hangup`.
    fn command(&mut self, cmd: SessionCommand);
}
