//! Why a call ended, in one table: the `code` and `reason` each browser
//! session is told in `hangup`, and the final SIP status a trunk's INVITE is
//! answered with when the gateway refuses or gives up on it. Both directions
//! of the B2BUA end calls through here, so a cause reads the same in the web
//! client, the logs and the trunk's traces.

/// A cause of the end of a call (or of one session's part in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    // ---- the browser side ------------------------------------------------
    /// The browser sent `hangup`.
    BrowserHangup,
    /// The browser's socket closed.
    BrowserGone,
    /// The browser hung up (or went away) before the trunk answered: the
    /// gateway CANCELled its INVITE.
    BrowserCancelled,
    /// The browser closed its DTLS association (close_notify).
    BrowserClosedMedia,
    /// This session declined a ringing call (`reject`).
    Declined,
    /// Every ringing session declined: the trunk hears the trunk's
    /// `reject_code` (486, or 603 where configured).
    AllDeclined { code: u16 },
    /// Another session of the account accepted first.
    AnsweredElsewhere,
    /// No browser session of the account answered or is left ringing.
    NoSession,
    /// The browser's SDP (offer or answer) cannot be used.
    BrowserSdp(String),
    /// ICE/DTLS with the browser did not complete in time.
    BrowserMediaTimeout,

    // ---- the trunk side --------------------------------------------------
    /// The trunk sent BYE.
    RemoteHangup,
    /// The trunk cancelled its INVITE while the browsers rang.
    CallerCancelled,
    /// The trunk refused our INVITE (or Timer B fired: 408).
    TrunkRejected { code: u16, reason: String },
    /// The trunk's SDP cannot be used.
    TrunkSdp { code: u16, reason: String },
    /// The per-account/trunk encryption policy cannot be met.
    Policy(String),
    /// The trunk's address does not resolve, or its transport failed.
    TrunkUnreachable(String),
    /// The Request-URI user is no account.
    UnknownUser,
    /// The browser's blind transfer succeeded (the trunk's NOTIFY said
    /// 2xx): the gateway left the call with BYE.
    Transferred,
    /// The trunk refreshes the session (RFC 4028) and no refresh came in
    /// time: the gateway ended the dialog with BYE.
    SessionExpired,

    // ---- either side or the gateway --------------------------------------
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The media plane failed (DTLS failure, fingerprint mismatch, keying).
    MediaFailed(String),
    /// A leg was silent for the media timeout.
    MediaTimeout,
    /// No media ports (or another local resource) left.
    NoResources(String),
    /// The gateway is stopping.
    Shutdown,
    /// Something the gateway cannot do (e.g. a transport not built yet).
    NotSupported(String),
}

impl Cause {
    /// `code` and `reason` of the `hangup` message a browser gets.
    pub fn browser(&self) -> (u16, String) {
        use Cause::*;
        match self {
            BrowserHangup => (200, "hung up by the browser".into()),
            BrowserGone => (200, "browser disconnected".into()),
            BrowserCancelled => (487, "cancelled by the browser".into()),
            BrowserClosedMedia => (200, "hung up by the browser".into()),
            Declined => (486, "declined".into()),
            AllDeclined { code } => (*code, "declined".into()),
            AnsweredElsewhere => (200, "answered elsewhere".into()),
            NoSession => (480, "no browser session answered".into()),
            BrowserSdp(why) => (488, why.clone()),
            BrowserMediaTimeout => (
                408,
                "browser media did not connect (ICE/DTLS timeout)".into(),
            ),
            RemoteHangup => (200, "the other party hung up".into()),
            CallerCancelled => (487, "cancelled by the caller".into()),
            TrunkRejected { code, reason } => (*code, reason.clone()),
            TrunkSdp { code, reason } => (*code, reason.clone()),
            Policy(why) => (488, why.clone()),
            TrunkUnreachable(why) => (503, why.clone()),
            UnknownUser => (404, "no such account".into()),
            Transferred => (200, "transferred".into()),
            SessionExpired => (
                408,
                "session timer expired: the trunk did not refresh the session (RFC 4028)".into(),
            ),
            NoAnswer => (408, "no answer".into()),
            MediaFailed(why) => (488, format!("media failed: {why}")),
            MediaTimeout => (408, "no media received".into()),
            NoResources(why) => (503, why.clone()),
            Shutdown => (503, "the gateway is shutting down".into()),
            NotSupported(why) => (501, why.clone()),
        }
    }

    /// The final status for a trunk's INVITE that this cause ends before
    /// our 2xx (RFC 3261 21.4/21.5/21.6 meanings).
    pub fn sip_status(&self) -> u16 {
        use Cause::*;
        match self {
            // The browser went away or failed: it is "temporarily" not
            // reachable from the trunk's point of view.
            BrowserHangup | BrowserGone | BrowserClosedMedia | NoSession => 480,
            BrowserCancelled => 487,
            BrowserMediaTimeout | MediaFailed(_) | MediaTimeout => 480,
            BrowserSdp(_) => 488,
            Declined => 486,
            AllDeclined { code } => *code,
            // Never sent for these (another session answered; the trunk
            // cancelled and got its 487 from the transaction layer), but a
            // status keeps the function total.
            AnsweredElsewhere => 200,
            CallerCancelled => 487,
            RemoteHangup => 487,
            TrunkRejected { code, .. } => *code,
            TrunkSdp { code, .. } => *code,
            Policy(_) => 488,
            TrunkUnreachable(_) => 503,
            UnknownUser => 404,
            NoAnswer | SessionExpired => 408,
            Transferred => 480,
            NoResources(_) | Shutdown => 503,
            NotSupported(_) => 501,
        }
    }
}

/// Which side ended a call: the call record's vocabulary.
pub use crate::cdr::HungUpBy as Side;

impl Cause {
    /// Who ended the call: the browser (hung up, declined, went away), the
    /// trunk (BYE, CANCEL, a rejection or unusable answer), or the gateway
    /// itself (timeouts, policy, resources, shutdown).
    pub fn side(&self) -> Side {
        use Cause::*;
        match self {
            BrowserHangup
            | BrowserGone
            | BrowserCancelled
            | BrowserClosedMedia
            | Declined
            | AllDeclined { .. }
            | BrowserSdp(_)
            | AnsweredElsewhere
            | Transferred => Side::Browser,
            RemoteHangup | CallerCancelled | TrunkRejected { .. } | TrunkSdp { .. } => Side::Trunk,
            NoSession | BrowserMediaTimeout | Policy(_) | TrunkUnreachable(_) | UnknownUser
            | NoAnswer | MediaFailed(_) | MediaTimeout | NoResources(_) | Shutdown
            | NotSupported(_) | SessionExpired => Side::Gateway,
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, reason) = self.browser();
        write!(f, "{code} {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::Cause::*;
    use super::*;

    /// The table as the issue and PROTOCOL.md state it: (cause, browser
    /// code, browser reason, SIP status toward a trunk's INVITE).
    #[test]
    fn the_code_table() {
        let rows: Vec<(Cause, u16, &str, u16)> = vec![
            (Declined, 486, "declined", 486),
            (AllDeclined { code: 603 }, 603, "declined", 603),
            (AnsweredElsewhere, 200, "answered elsewhere", 200),
            (NoSession, 480, "no browser session answered", 480),
            (UnknownUser, 404, "no such account", 404),
            (CallerCancelled, 487, "cancelled by the caller", 487),
            (NoAnswer, 408, "no answer", 408),
            (
                SessionExpired,
                408,
                "session timer expired: the trunk did not refresh the session (RFC 4028)",
                408,
            ),
            (RemoteHangup, 200, "the other party hung up", 487),
            (BrowserHangup, 200, "hung up by the browser", 480),
            (BrowserGone, 200, "browser disconnected", 480),
            (BrowserCancelled, 487, "cancelled by the browser", 487),
            (
                BrowserMediaTimeout,
                408,
                "browser media did not connect (ICE/DTLS timeout)",
                480,
            ),
            (Shutdown, 503, "the gateway is shutting down", 503),
            (Policy("p".into()), 488, "p", 488),
            (BrowserSdp("s".into()), 488, "s", 488),
            (MediaFailed("m".into()), 488, "media failed: m", 480),
            (
                TrunkRejected {
                    code: 486,
                    reason: "Busy Here".into(),
                },
                486,
                "Busy Here",
                486,
            ),
        ];
        for (cause, code, reason, sip) in rows {
            assert_eq!(cause.browser(), (code, reason.to_string()), "{cause:?}");
            assert_eq!(cause.sip_status(), sip, "{cause:?}");
        }
    }
}
