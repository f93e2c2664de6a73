//! Session timers (RFC 4028), sans-IO: the negotiation rules as pure
//! functions and [`SessionTimer`], the clock of one dialog's refreshes.
//!
//! What the gateway does, on both call directions:
//!
//! - our INVITEs say `Supported: timer`, ask for `Session-Expires: 1800`
//!   ([`REQUESTED_SE`]) and state `Min-SE: 90` ([`MIN_SE`], the RFC's
//!   floor); a 422 to our INVITE names the trunk's `Min-SE`, and the INVITE
//!   goes again with that interval ([`retry_interval`], section 7.4);
//! - an INVITE whose `Session-Expires` is below our `Min-SE` gets 422 with
//!   ours ([`too_small`], section 8.1); otherwise the interval is taken and
//!   the refresher is the one the INVITE names, else the caller if it
//!   supports timers, else us ([`uas_decision`], section 9);
//! - the 2xx to our INVITE names the interval and the refresher
//!   ([`uac_decision`]): no `Session-Expires` there means no timer;
//! - every 2xx of a re-INVITE or UPDATE, ours or the trunk's, is a refresh
//!   ([`SessionTimer::refreshed`]), and may change interval and refresher;
//! - when we refresh, the refresh is due at half the interval (section 10);
//!   when the trunk refreshes and nothing came by the interval minus
//!   min(32 s, a third of it), the session has expired and the dialog ends
//!   with BYE (section 10). A refresh of ours that goes unanswered expires
//!   the same way at the full interval.

use std::time::{Duration, Instant};

use rsip::Header;

use super::own_requests::OwnEvent;

/// The smallest interval we accept (RFC 4028 4: 90 s is the floor).
pub const MIN_SE: u64 = 90;
/// The interval our INVITEs ask for (the RFC's recommended 1800 s).
pub const REQUESTED_SE: u64 = 1800;
/// How many 422s an INVITE of ours follows before giving up.
pub const MAX_422_RETRIES: usize = 2;

/// The UA that refreshes, as the `refresher` parameter names it (the UAC
/// and UAS of the dialog's first INVITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Uac,
    Uas,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Uac => "uac",
            Role::Uas => "uas",
        }
    }
}

/// A `Session-Expires` value: `1800;refresher=uac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub seconds: u64,
    pub refresher: Option<Role>,
}

impl SessionExpires {
    /// Parses a header value (also the compact form's value, `x`); `None`
    /// when the delta-seconds are missing or not a number.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let seconds = parts.next()?.trim().parse().ok()?;
        let mut refresher = None;
        for p in parts {
            let (name, v) = p.split_once('=').unwrap_or((p, ""));
            if name.trim().eq_ignore_ascii_case("refresher") {
                refresher = match v.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(Role::Uac),
                    "uas" => Some(Role::Uas),
                    _ => None,
                };
            }
        }
        Some(SessionExpires { seconds, refresher })
    }

    pub fn header_value(&self) -> String {
        match self.refresher {
            Some(r) => format!("{};refresher={}", self.seconds, r.as_str()),
            None => self.seconds.to_string(),
        }
    }
}

/// The `Min-SE` value of a header (`90`, possibly with parameters).
pub fn parse_min_se(value: &str) -> Option<u64> {
    value.split(';').next()?.trim().parse().ok()
}

/// An INVITE asking for less than our floor: the `Min-SE` to put in the
/// 422 (section 8.1). `None`: acceptable, or no timer asked for.
pub fn too_small(se: Option<SessionExpires>) -> Option<u64> {
    se.filter(|se| se.seconds < MIN_SE).map(|_| MIN_SE)
}

/// What the UAS (we, for an incoming INVITE) answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasDecision {
    /// No `Session-Expires` in the INVITE: no timer.
    None,
    /// The 2xx carries this `Session-Expires` (with the refresher named)
    /// and, when the refresher is the caller, `Require: timer`.
    Timer(SessionExpires),
}

/// Section 9: the INVITE's interval (already checked against our
/// `Min-SE`), its refresher, else the UAC if it supports timers, else us.
pub fn uas_decision(se: Option<SessionExpires>, uac_supports_timer: bool) -> UasDecision {
    let Some(se) = se else {
        return UasDecision::None;
    };
    let refresher = se.refresher.unwrap_or(if uac_supports_timer {
        Role::Uac
    } else {
        Role::Uas
    });
    UasDecision::Timer(SessionExpires {
        seconds: se.seconds.max(MIN_SE),
        refresher: Some(refresher),
    })
}

/// Section 7.2: the 2xx to our INVITE. Its `Session-Expires` sets the
/// interval; without a refresher parameter the UAC (we) refreshes.
/// `None`: the trunk runs no timer.
pub fn uac_decision(se: Option<SessionExpires>) -> Option<SessionExpires> {
    se.map(|se| SessionExpires {
        seconds: se.seconds.max(MIN_SE),
        refresher: Some(se.refresher.unwrap_or(Role::Uac)),
    })
}

/// Section 7.4: the interval for the INVITE after a 422 naming `min_se`;
/// `None` when the 422 names none or nothing above what we asked for (a
/// retry would only be refused again).
pub fn retry_interval(asked: u64, min_se: Option<u64>) -> Option<u64> {
    min_se.filter(|m| *m > asked)
}

/// What came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDue {
    /// We are the refresher and half the interval has passed: send a
    /// refresh (UPDATE, or a re-INVITE with the same SDP).
    Refresh,
    /// No refresh came in time: end the dialog with BYE.
    Expired,
}

/// The session timer of one dialog. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTimer {
    interval: Duration,
    we_refresh: bool,
    refreshed_at: Instant,
    /// Our refresh is out (reported once per interval).
    refresh_sent: bool,
}

impl SessionTimer {
    /// `me`: our role in the dialog (UAC for our calls to the trunk).
    pub fn new(se: SessionExpires, me: Role, now: Instant) -> Self {
        SessionTimer {
            interval: Duration::from_secs(se.seconds),
            we_refresh: se.refresher.unwrap_or(Role::Uac) == me,
            refreshed_at: now,
            refresh_sent: false,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn we_refresh(&self) -> bool {
        self.we_refresh
    }

    /// A 2xx to a re-INVITE or UPDATE (ours or the peer's) refreshed the
    /// session; `se` is its `Session-Expires`, if it named one (a new
    /// interval and refresher, section 9 and 10), `me` our role in that
    /// transaction's terms: the refresher parameter of a refresh names the
    /// UAC and UAS of the refresh, not of the dialog's first INVITE.
    pub fn refreshed(&mut self, se: Option<(SessionExpires, Role)>, now: Instant) {
        if let Some((se, me)) = se {
            self.interval = Duration::from_secs(se.seconds.max(MIN_SE));
            if let Some(r) = se.refresher {
                self.we_refresh = r == me;
            }
        }
        self.refreshed_at = now;
        self.refresh_sent = false;
    }

    /// When the dialog ends unless refreshed (section 10: the interval
    /// minus min(32 s, a third of it) when the peer refreshes; the full
    /// interval for our own refresh that got no answer).
    pub fn expires_at(&self) -> Instant {
        if self.we_refresh {
            self.refreshed_at + self.interval
        } else {
            let margin = Duration::from_secs(32).min(self.interval / 3);
            self.refreshed_at + self.interval - margin
        }
    }

    /// When we send our refresh (`None` when the peer refreshes or ours is
    /// already out).
    pub fn refresh_at(&self) -> Option<Instant> {
        (self.we_refresh && !self.refresh_sent).then(|| self.refreshed_at + self.interval / 2)
    }

    pub fn poll_timeout(&self) -> Instant {
        self.refresh_at()
            .map_or(self.expires_at(), |r| r.min(self.expires_at()))
    }

    /// What is due at `now`, if anything (a `Refresh` once per interval).
    pub fn poll(&mut self, now: Instant) -> Option<TimerDue> {
        if now >= self.expires_at() {
            return Some(TimerDue::Expired);
        }
        if self.refresh_at().is_some_and(|at| now >= at) {
            self.refresh_sent = true;
            return Some(TimerDue::Refresh);
        }
        None
    }

    /// A refresh of ours could not be sent (an offer of ours is already
    /// out, whose 2xx will refresh): try again at the next poll.
    pub fn refresh_not_sent(&mut self) {
        self.refresh_sent = false;
    }
}

/// What a dialog's user agent (`sip::uac`, `sip::uas`) must do about its
/// timer at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an UPDATE without SDP (the peer allows UPDATE).
    Update,
    /// Ask the B2BUA for a re-INVITE with the session's SDP.
    Reinvite,
    /// End the dialog: tell the B2BUA, which hangs up with BYE.
    Expired,
}

/// Polls `timer`: a refresh while an offer of ours is out is left to that
/// offer's 2xx; an expired timer is dropped (it fires once).
pub fn next_action(
    timer: &mut Option<SessionTimer>,
    now: Instant,
    offer_pending: bool,
    peer_allows_update: bool,
) -> Option<Action> {
    match timer.as_mut()?.poll(now)? {
        TimerDue::Expired => {
            *timer = None;
            Some(Action::Expired)
        }
        TimerDue::Refresh if offer_pending => None,
        TimerDue::Refresh if peer_allows_update => Some(Action::Update),
        TimerDue::Refresh => Some(Action::Reinvite),
    }
}

/// Takes what our own requests report into the timer (a 2xx to our
/// re-INVITE or UPDATE is a refresh, RFC 4028 10) and returns what the
/// B2BUA must still hear: our UPDATEs are the user agent's business.
pub fn absorb(timer: Option<&mut SessionTimer>, ev: OwnEvent, now: Instant) -> Option<OwnEvent> {
    let (refreshed, se) = match &ev {
        OwnEvent::Updated {
            code,
            session_expires,
        } => ((200..300).contains(code), session_expires),
        OwnEvent::Answered {
            session_expires, ..
        } => (true, session_expires),
        OwnEvent::Refused { .. } | OwnEvent::Referred { .. } | OwnEvent::InfoAnswered { .. } => {
            (false, &None)
        }
    };
    if let Some(timer) = timer {
        if refreshed {
            let se = se.as_deref().and_then(SessionExpires::parse);
            timer.refreshed(se.map(|se| (se, Role::Uac)), now);
        }
    }
    match ev {
        // A refresh that failed is not acted on: without a later one the
        // session expires and the call ends.
        OwnEvent::Updated { code, .. } => {
            if !(200..300).contains(&code) {
                tracing::warn!(code, "session refresh (UPDATE) refused");
            }
            None
        }
        other => Some(other),
    }
}

/// The RFC 4028 headers of a refresh or of a 2xx to one: `Supported:
/// timer` and `Session-Expires` naming the refresher in the terms of that
/// transaction, where we are `me`.
pub fn headers(timer: &SessionTimer, me: Role) -> Vec<Header> {
    let peer = match me {
        Role::Uac => Role::Uas,
        Role::Uas => Role::Uac,
    };
    let se = SessionExpires {
        seconds: timer.interval().as_secs(),
        refresher: Some(if timer.we_refresh() { me } else { peer }),
    };
    vec![
        Header::Supported("timer".into()),
        Header::Other("Session-Expires".into(), se.header_value()),
    ]
}

/// The peer's re-INVITE or UPDATE (with its `Session-Expires`) was
/// answered: a 2xx refreshes the session (RFC 4028 9). The headers for that
/// 2xx, naming the interval and refresher in force.
pub fn peer_refresh(
    timer: Option<&mut SessionTimer>,
    se: Option<SessionExpires>,
    accepted: bool,
    now: Instant,
) -> Vec<Header> {
    match timer {
        Some(timer) if accepted => {
            timer.refreshed(se.map(|se| (se, Role::Uas)), now);
            headers(timer, Role::Uas)
        }
        _ => Vec::new(),
    }
}

/// The `Session-Expires` of a message, parsed.
pub fn of<H: rsip::message::HeadersExt>(msg: &H) -> Option<SessionExpires> {
    super::message::header_values(msg, "Session-Expires")
        .first()
        .and_then(|v| SessionExpires::parse(v))
}

/// Whether a message's `Allow` names UPDATE.
pub fn allows_update<H: rsip::message::HeadersExt>(msg: &H) -> bool {
    super::message::header_values(msg, "Allow")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn se(seconds: u64, refresher: Option<Role>) -> SessionExpires {
        SessionExpires { seconds, refresher }
    }

    #[test]
    fn header_values_parse_and_write() {
        assert_eq!(
            SessionExpires::parse("1800;refresher=uac"),
            Some(se(1800, Some(Role::Uac)))
        );
        assert_eq!(
            SessionExpires::parse(" 90 ; Refresher = UAS"),
            Some(se(90, Some(Role::Uas)))
        );
        assert_eq!(SessionExpires::parse("120"), Some(se(120, None)));
        assert_eq!(
            SessionExpires::parse("120;refresher=x"),
            Some(se(120, None))
        );
        assert_eq!(SessionExpires::parse("soon"), None);
        assert_eq!(SessionExpires::parse(""), None);
        assert_eq!(se(90, Some(Role::Uas)).header_value(), "90;refresher=uas");
        assert_eq!(se(1800, None).header_value(), "1800");
        assert_eq!(parse_min_se("120"), Some(120));
        assert_eq!(parse_min_se("120;x=y"), Some(120));
        assert_eq!(parse_min_se("x"), None);
    }

    #[test]
    fn the_uas_rules() {
        assert_eq!(too_small(Some(se(89, None))), Some(MIN_SE));
        assert_eq!(too_small(Some(se(90, None))), None);
        assert_eq!(too_small(None), None);
        assert_eq!(uas_decision(None, true), UasDecision::None);
        assert_eq!(
            uas_decision(Some(se(300, None)), true),
            UasDecision::Timer(se(300, Some(Role::Uac)))
        );
        assert_eq!(
            uas_decision(Some(se(300, None)), false),
            UasDecision::Timer(se(300, Some(Role::Uas)))
        );
        assert_eq!(
            uas_decision(Some(se(300, Some(Role::Uas))), true),
            UasDecision::Timer(se(300, Some(Role::Uas)))
        );
    }

    #[test]
    fn the_uac_rules_and_the_422_retry() {
        assert_eq!(uac_decision(None), None);
        assert_eq!(
            uac_decision(Some(se(600, None))),
            Some(se(600, Some(Role::Uac)))
        );
        assert_eq!(
            uac_decision(Some(se(600, Some(Role::Uas)))),
            Some(se(600, Some(Role::Uas)))
        );
        assert_eq!(retry_interval(1800, Some(3600)), Some(3600));
        assert_eq!(retry_interval(1800, Some(900)), None, "no higher ask");
        assert_eq!(retry_interval(1800, None), None);
    }

    #[test]
    fn we_refresh_at_half_the_interval_once_and_expire_without_an_answer() {
        let t0 = Instant::now();
        let mut t = SessionTimer::new(se(90, Some(Role::Uac)), Role::Uac, t0);
        assert!(t.we_refresh());
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(45));
        assert_eq!(t.poll(t0 + Duration::from_millis(44_999)), None);
        assert_eq!(
            t.poll(t0 + Duration::from_secs(45)),
            Some(TimerDue::Refresh)
        );
        assert_eq!(t.poll(t0 + Duration::from_secs(46)), None, "once");
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(90));
        // The refresh is answered at 46 s: the next one at 46 + 45.
        t.refreshed(None, t0 + Duration::from_secs(46));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(91));
        assert_eq!(
            t.poll(t0 + Duration::from_secs(91)),
            Some(TimerDue::Refresh)
        );
        // This one goes unanswered: the session expires at 46 + 90.
        assert_eq!(t.poll(t0 + Duration::from_secs(135)), None);
        assert_eq!(
            t.poll(t0 + Duration::from_secs(136)),
            Some(TimerDue::Expired)
        );
    }

    #[test]
    fn the_peers_refresh_must_come_before_the_interval_minus_its_margin() {
        let t0 = Instant::now();
        // 90 s: the margin is a third, 30 s.
        let mut t = SessionTimer::new(se(90, Some(Role::Uas)), Role::Uac, t0);
        assert!(!t.we_refresh());
        assert_eq!(t.refresh_at(), None);
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(60));
        assert_eq!(t.poll(t0 + Duration::from_secs(59)), None);
        // A refresh at 50 s moves the expiry to 110 s.
        t.refreshed(None, t0 + Duration::from_secs(50));
        assert_eq!(t.poll(t0 + Duration::from_secs(109)), None);
        assert_eq!(
            t.poll(t0 + Duration::from_secs(110)),
            Some(TimerDue::Expired)
        );
        // 1800 s: the margin is 32 s.
        let t = SessionTimer::new(se(1800, Some(Role::Uac)), Role::Uas, t0);
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(1768));
    }

    #[test]
    fn a_refresh_may_hand_the_refresher_role_over() {
        let t0 = Instant::now();
        let mut t = SessionTimer::new(se(600, Some(Role::Uac)), Role::Uac, t0);
        // The peer's re-INVITE (it is the UAC of that refresh) says it
        // refreshes from now on, with 120 s.
        t.refreshed(
            Some((se(120, Some(Role::Uac)), Role::Uas)),
            t0 + Duration::from_secs(10),
        );
        assert!(!t.we_refresh());
        assert_eq!(t.interval(), Duration::from_secs(120));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(10 + 120 - 32));
        // An interval under the floor is raised to it.
        t.refreshed(Some((se(30, None), Role::Uas)), t0);
        assert_eq!(t.interval(), Duration::from_secs(MIN_SE));
    }
}
