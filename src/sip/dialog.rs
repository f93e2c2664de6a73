//! Dialog state (RFC 3261 section 12): identifiers, remote target, route
//! set and CSeq counters; builds in-dialog requests, says where they go
//! ([`Dialog::next_hop`]), and answers the peer's.
//!
//! Where requests go: every request of the dialog (the ACK for a 2xx, BYE,
//! re-INVITE) carries the remote target as Request-URI and the route set as
//! Route headers (12.2.1.1), and is sent to the first route, or to the remote
//! target when there is no route set: not to the address the INVITE went to.
//! Only the INVITE's own transaction (its CANCEL, the ACK of a non-2xx) keeps
//! that address (9.1, 17.1.1.3); `sip::uac` sees to it.
//!
//! What is accepted from the peer: a request must name this dialog (Call-ID
//! and both tags, else 481), and carry a CSeq above the last one seen (else
//! 500, 12.2.2); a retransmission of the last request is answered again with
//! the same response, as its server transaction would.

use rsip::message::HeadersExt;
use rsip::{Header, Method, Request, Response};

use super::info::{self, InfoBody};
use super::message::{self, RequestParts, ResponseParts};
use super::refer::{self, Referral};
use super::target::Target;
use super::{SipError, Transport};
use crate::types::DtmfDigit;

/// How the gateway appears in the requests it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub via_host: String,
    pub via_port: u16,
    pub transport: Transport,
    /// Full Contact value, e.g. `<sip:gw@192.0.2.1:5060;transport=udp>`.
    pub contact: String,
    pub user_agent: String,
}

#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our From (UAC) / To (UAS) value, tag included.
    local_header: String,
    /// The peer's To (UAC) / From (UAS) value, tag included.
    remote_header: String,
    /// Where in-dialog requests go: the peer's Contact URI.
    pub remote_target: String,
    /// Route values, in the order they go into requests.
    pub route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    /// The last request of the peer (top Via branch, method, CSeq) and our
    /// answer, resent for its retransmissions.
    last_remote: Option<(String, Method, u32, Response)>,
    local: LocalEndpoint,
    /// The answer to the peer's REFER: 202 (accepted: reported as
    /// [`InDialog::Refer`] for the B2BUA to carry out), 501 (not carried
    /// out), or 603 where the trunk's `accept_refer` is false.
    refer_answer: u16,
}

/// What an in-dialog request from the peer amounts to.
#[derive(Debug, Clone)]
pub enum InDialog {
    /// The peer hangs up; send the 200 OK.
    Bye(Response),
    /// An ACK (for our 2xx): nothing to answer.
    Ack,
    /// Anything else, with the answer to send.
    Other(Response),
    /// A retransmission of the peer's last request: its answer again, and
    /// nothing else to do (the BYE was reported the first time).
    Retransmission(Response),
    /// A re-INVITE or UPDATE in order: its answer depends on the session
    /// (the B2BUA's SDP), so the caller writes it with [`Dialog::answer`].
    Offer,
    /// An INFO with a DTMF digit (see `sip::info`), with its 200.
    Dtmf(Response, DtmfDigit),
    /// A REFER accepted with 202 (its answer): the user agent reports it
    /// and sends the NOTIFYs (RFC 3515 2.4.4).
    Refer(Response, Referral),
}

impl Dialog {
    /// The dialog of a UAC from its INVITE and the 2xx (RFC 3261 12.1.2):
    /// route set is the Record-Route of the response, reversed.
    pub fn uac(invite: &Request, resp: &Response, local: LocalEndpoint) -> Result<Self, SipError> {
        let call_id = message::call_id(invite)?;
        let (cseq, _) = message::cseq(invite)?;
        let local_tag = message::from_tag(invite).unwrap_or_default();
        let remote_tag = message::to_tag(resp).unwrap_or_default();
        let local_header = header_value(invite, |h| match h {
            rsip::Header::From(v) => Some(v.to_string()),
            _ => None,
        })?;
        let remote_header = header_value(resp, |h| match h {
            rsip::Header::To(v) => Some(v.to_string()),
            _ => None,
        })?;
        let remote_target = message::contact_uri(resp).unwrap_or_else(|| invite.uri.to_string());
        let mut route_set = message::record_routes(resp);
        route_set.reverse();
        Ok(Dialog {
            call_id,
            local_tag,
            remote_tag,
            local_header,
            remote_header,
            remote_target,
            route_set,
            local_cseq: cseq,
            remote_cseq: None,
            last_remote: None,
            local,
            refer_answer: 501,
        })
    }

    /// The dialog of a UAS from the INVITE it answers (RFC 3261 12.1.1):
    /// route set is the Record-Route of the request, in order.
    pub fn uas(invite: &Request, local_tag: &str, local: LocalEndpoint) -> Result<Self, SipError> {
        let call_id = message::call_id(invite)?;
        let (cseq, _) = message::cseq(invite)?;
        let remote_tag = message::from_tag(invite).unwrap_or_default();
        let to = header_value(invite, |h| match h {
            rsip::Header::To(v) => Some(v.to_string()),
            _ => None,
        })?;
        let local_header = if message::to_tag(invite).is_some() {
            to
        } else {
            format!("{to};tag={local_tag}")
        };
        let remote_header = header_value(invite, |h| match h {
            rsip::Header::From(v) => Some(v.to_string()),
            _ => None,
        })?;
        let remote_target = message::contact_uri(invite)
            .or_else(|| message::addr_uri(&remote_header))
            .unwrap_or_default();
        Ok(Dialog {
            call_id,
            local_tag: local_tag.to_string(),
            remote_tag,
            local_header,
            remote_header,
            remote_target,
            route_set: message::record_routes(invite),
            local_cseq: 0,
            remote_cseq: Some(cseq),
            last_remote: None,
            local,
            refer_answer: 501,
        })
    }

    /// A request of this dialog from the peer (Call-ID and both tags match).
    pub fn matches_request(&self, req: &Request) -> bool {
        message::call_id(req).is_ok_and(|c| c == self.call_id)
            && message::from_tag(req).unwrap_or_default() == self.remote_tag
            && message::to_tag(req).unwrap_or_default() == self.local_tag
    }

    /// A response to a request of ours in this dialog.
    pub fn matches_response(&self, resp: &Response) -> bool {
        message::call_id(resp).is_ok_and(|c| c == self.call_id)
            && message::from_tag(resp).unwrap_or_default() == self.local_tag
            && message::to_tag(resp).unwrap_or_default() == self.remote_tag
    }

    /// A new in-dialog request (not ACK: see [`Dialog::ack`]); the local CSeq
    /// is incremented and a new branch used.
    pub fn request(
        &mut self,
        method: Method,
        body: Option<(&str, &str)>,
    ) -> Result<Request, SipError> {
        self.request_with(method, body, Vec::new())
    }

    /// [`Dialog::request`] with further headers (e.g. credentials).
    pub fn request_with(
        &mut self,
        method: Method,
        body: Option<(&str, &str)>,
        extra: Vec<rsip::Header>,
    ) -> Result<Request, SipError> {
        self.local_cseq += 1;
        self.build(method, self.local_cseq, body, extra)
    }

    /// `old` (a request of ours in this dialog) again with `header` added:
    /// the next CSeq and a new branch, everything else as it was (RFC 3261
    /// 22.2: a request challenged with 401/407 is retried as a new
    /// transaction carrying the credentials).
    pub fn reissue_with(&mut self, old: &Request, header: rsip::Header) -> Request {
        self.local_cseq += 1;
        let mut req = old.clone();
        let mut via_done = false;
        for h in req.headers.iter_mut() {
            match h {
                rsip::Header::CSeq(_) => {
                    *h = rsip::Header::CSeq(format!("{} {}", self.local_cseq, old.method).into());
                }
                rsip::Header::Via(v) if !via_done => {
                    via_done = true;
                    let value = rsip::headers::UntypedHeader::value(v).to_string();
                    let fresh = match value.find(";branch=") {
                        Some(at) => {
                            let rest = &value[at + 8..];
                            let end = rest.find(';').unwrap_or(rest.len());
                            format!(
                                "{};branch={}{}",
                                &value[..at],
                                message::new_branch(),
                                &rest[end..]
                            )
                        }
                        None => format!("{value};branch={}", message::new_branch()),
                    };
                    *h = rsip::Header::Via(fresh.into());
                }
                _ => {}
            }
        }
        req.headers.push(header);
        req
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (RFC 3261
    /// 13.2.2.4): its own branch, the INVITE's CSeq number.
    pub fn ack(&self, invite_cseq: u32) -> Result<Request, SipError> {
        self.ack_with(invite_cseq, Vec::new())
    }

    /// The ACK with the INVITE's credentials (RFC 3261 22.1: they are
    /// repeated in the ACK for the 2xx).
    pub fn ack_with(
        &self,
        invite_cseq: u32,
        extra: Vec<rsip::Header>,
    ) -> Result<Request, SipError> {
        self.build(Method::Ack, invite_cseq, None, extra)
    }

    pub fn bye(&mut self) -> Result<Request, SipError> {
        self.request(Method::Bye, None)
    }

    fn build(
        &self,
        method: Method,
        cseq: u32,
        body: Option<(&str, &str)>,
        extra: Vec<rsip::Header>,
    ) -> Result<Request, SipError> {
        // Loose routing (;lr) keeps the remote target as Request-URI; a strict
        // router (RFC 2543) wants its own URI there and the target last.
        let (uri, routes) = match self.route_set.first() {
            Some(first) if !is_loose(first) => {
                let uri = message::addr_uri(first).unwrap_or_else(|| self.remote_target.clone());
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        };
        let branch = message::new_branch();
        // The Via names the transport the request really goes on. Its port
        // stays ours for the dialog's transport: over TCP the answer comes
        // back on the connection (18.2.2), over UDP to our source port
        // (`rport`, RFC 3581).
        let transport = self
            .next_hop()
            .map(|t| t.transport)
            .unwrap_or(self.local.transport);
        message::build_request(RequestParts {
            method,
            uri: &uri,
            via: message::via_value(
                &self.local.via_host,
                self.local.via_port,
                transport,
                &branch,
            ),
            from: &self.local_header,
            to: &self.remote_header,
            call_id: &self.call_id,
            cseq,
            contact: (method != Method::Bye && method != Method::Ack)
                .then_some(self.local.contact.as_str()),
            routes: &routes,
            user_agent: &self.local.user_agent,
            body,
            extra,
        })
    }

    /// Where the dialog's requests go (RFC 3261 12.2.1.1 and 8.1.2): the
    /// first route (loose or strict, the request is sent to it either way),
    /// else the remote target. An error when that URI is unusable; the
    /// caller then falls back to an address it knows.
    pub fn next_hop(&self) -> Result<Target, SipError> {
        let uri = match self.route_set.first() {
            Some(route) => message::addr_uri(route).ok_or_else(|| SipError::InvalidUri {
                uri: route.chars().take(80).collect(),
                reason: "Route without a URI".into(),
            })?,
            None => self.remote_target.clone(),
        };
        Target::from_uri(&uri, self.local.transport)
    }

    /// Target refresh (RFC 3261 12.2.1.2 and 12.2.2): the Contact of a 2xx
    /// to our target refresh request, or of a target refresh request of the
    /// peer that we accept, becomes the remote target. The route set never
    /// changes after the dialog is established.
    pub fn refresh_target<H: HeadersExt>(&mut self, msg: &H) {
        if let Some(contact) = message::contact_uri(msg) {
            if rsip::Uri::try_from(contact.as_str()).is_ok() && contact != self.remote_target {
                tracing::info!(call_id = %self.call_id, "the peer moved: new remote target");
                self.remote_target = contact;
            }
        }
    }

    /// Answers a request of this dialog from the peer (the caller has
    /// checked [`Dialog::matches_request`]). A CSeq not above the last one
    /// seen gets 500 (RFC 3261 12.2.2), unless the request is a
    /// retransmission of the last one (same Via branch, method and CSeq),
    /// which gets the same answer again (17.2.2).
    pub fn handle_request(&mut self, req: &Request) -> InDialog {
        let ua = self.local.user_agent.clone();
        let respond = |code: u16| {
            message::build_response(
                req,
                code,
                ResponseParts {
                    user_agent: &ua,
                    ..Default::default()
                },
            )
        };
        if req.method == Method::Ack {
            return InDialog::Ack;
        }
        let Ok((seq, _)) = message::cseq(req) else {
            return InDialog::Other(respond(400));
        };
        let branch = message::top_via_branch(req).unwrap_or_default();
        if let Some((b, m, s, resp)) = &self.last_remote {
            if *b == branch && !b.is_empty() && *m == req.method && *s == seq {
                return InDialog::Retransmission(resp.clone());
            }
        }
        if req.method == Method::Cancel {
            // A CANCEL repeats the CSeq number of the request it cancels, so
            // the order check is not for it (9.2). Every request here got its
            // final answer at once: one that matches has no effect but 200.
            let known = self
                .last_remote
                .as_ref()
                .is_some_and(|(b, _, s, _)| *b == branch && !b.is_empty() && *s == seq);
            return InDialog::Other(respond(if known { 200 } else { 481 }));
        }
        if self.remote_cseq.is_some_and(|last| seq <= last) {
            return InDialog::Other(respond(500));
        }
        self.remote_cseq = Some(seq);
        let mut digit = None;
        let mut referral = None;
        let answer = match req.method {
            Method::Bye => respond(200),
            Method::Info => {
                let body = InfoBody::parse(message::content_type(req).as_deref(), &req.body);
                if let InfoBody::Dtmf(d) = body {
                    digit = Some(d);
                }
                let mut resp = respond(body.status());
                if body == InfoBody::Unsupported {
                    resp.headers.push(Header::Accept(info::ACCEPT.into()));
                }
                resp
            }
            // Keep-alives and mid-call notifications are harmless to accept.
            Method::Options | Method::Notify => respond(200),
            // Re-INVITE and UPDATE need the B2BUA's media answer.
            Method::Invite | Method::Update => return InDialog::Offer,
            Method::Refer if self.refer_answer == 202 => {
                let refer_to = message::header_values(req, "Refer-To")
                    .into_iter()
                    .chain(message::header_values(req, "r"))
                    .next()
                    .unwrap_or_default();
                match refer::refer_to_user(&refer_to) {
                    Ok((user, replaces)) => {
                        referral = Some(Referral {
                            user,
                            replaces,
                            referred_by: message::header_values(req, "Referred-By")
                                .into_iter()
                                .chain(message::header_values(req, "b"))
                                .next(),
                            cseq: seq,
                        });
                        respond(202)
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %self.call_id, error = %e, "REFER refused");
                        respond(e.status())
                    }
                }
            }
            Method::Refer => respond(self.refer_answer),
            _ => respond(501),
        };
        self.last_remote = Some((branch, req.method, seq, answer.clone()));
        if let Some(referral) = referral {
            return InDialog::Refer(answer, referral);
        }
        match (req.method, digit) {
            (Method::Bye, _) => InDialog::Bye(answer),
            (_, Some(digit)) => InDialog::Dtmf(answer, digit),
            _ => InDialog::Other(answer),
        }
    }

    /// Answers a re-INVITE or UPDATE that [`Dialog::handle_request`] took
    /// as [`InDialog::Offer`]: `code` with `body`, our Contact on a 2xx
    /// (RFC 3261 12.1.1, RFC 3311 5.2), remembered for its retransmissions.
    /// A target refresh takes effect only when it succeeds: a refused
    /// re-INVITE leaves the dialog as it was (RFC 3261 12.2.2).
    pub fn answer(
        &mut self,
        req: &Request,
        code: u16,
        body: Option<(&str, &str)>,
        extra: Vec<rsip::Header>,
    ) -> Response {
        let ok = (200..300).contains(&code);
        let resp = message::build_response(
            req,
            code,
            ResponseParts {
                user_agent: &self.local.user_agent,
                contact: ok.then_some(self.local.contact.as_str()),
                body,
                extra,
                ..Default::default()
            },
        );
        if ok {
            self.refresh_target(req);
        }
        if let Ok((seq, _)) = message::cseq(req) {
            let branch = message::top_via_branch(req).unwrap_or_default();
            self.last_remote = Some((branch, req.method, seq, resp.clone()));
        }
        resp
    }

    /// Our name-addr in the dialog without its tag (for Referred-By).
    pub fn local_uri(&self) -> String {
        match message::addr_uri(&self.local_header) {
            Some(uri) => format!("<{uri}>"),
            None => self.local_header.clone(),
        }
    }

    /// How the peer's REFERs are answered (501 by default; 202 to carry
    /// them out, 603 when the trunk's `accept_refer` is false).
    pub fn set_refer_answer(&mut self, code: u16) {
        self.refer_answer = code;
    }

    pub fn local_cseq(&self) -> u32 {
        self.local_cseq
    }

    /// Our next request's CSeq will be above `cseq` (requests sent in the
    /// early dialog, such as PRACK, used the numbers up to it).
    pub fn raise_local_cseq(&mut self, cseq: u32) {
        self.local_cseq = self.local_cseq.max(cseq);
    }
}

fn is_loose(route: &str) -> bool {
    message::addr_uri(route).is_some_and(|uri| {
        uri.split(';').skip(1).any(|p| {
            p.trim().eq_ignore_ascii_case("lr") || p.trim().to_ascii_lowercase().starts_with("lr=")
        })
    })
}

fn header_value<H: rsip::message::HeadersExt>(
    msg: &H,
    pick: impl Fn(&rsip::Header) -> Option<String>,
) -> Result<String, SipError> {
    msg.headers()
        .iter()
        .find_map(|h| {
            pick(h).map(|line| {
                line.split_once(':')
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            })
        })
        .ok_or(SipError::MissingHeader("From/To"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsip::Header;

    fn local() -> LocalEndpoint {
        LocalEndpoint {
            via_host: "192.0.2.1".into(),
            via_port: 5060,
            transport: Transport::Udp,
            contact: "<sip:gw@192.0.2.1:5060>".into(),
            user_agent: "t".into(),
        }
    }

    fn invite() -> Request {
        message::build_request(RequestParts {
            method: Method::Invite,
            uri: "sip:bob@192.0.2.2",
            via: message::via_value("192.0.2.1", 5060, Transport::Udp, &message::new_branch()),
            from: "<sip:gw@192.0.2.1>;tag=ours",
            to: "<sip:bob@192.0.2.2>",
            call_id: "cid",
            cseq: 7,
            contact: Some("<sip:gw@192.0.2.1:5060>"),
            routes: &[],
            user_agent: "t",
            body: None,
            extra: vec![],
        })
        .unwrap()
    }

    fn ok_with_routes(invite: &Request, rr: &[&str]) -> Response {
        message::build_response(
            invite,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:bob@198.51.100.9:5080>"),
                extra: rr
                    .iter()
                    .map(|r| Header::RecordRoute((*r).into()))
                    .collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn uac_dialog_builds_ack_and_bye_with_reversed_routes() {
        let inv = invite();
        let ok = ok_with_routes(&inv, &["<sip:p2.example;lr>", "<sip:p1.example;lr>"]);
        let mut d = Dialog::uac(&inv, &ok, local()).unwrap();
        assert_eq!(d.remote_target, "sip:bob@198.51.100.9:5080");
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        );
        assert!(d.matches_response(&ok));

        let ack = d.ack(7).unwrap();
        assert_eq!(ack.uri.to_string(), "sip:bob@198.51.100.9:5080");
        assert_eq!(message::cseq(&ack).unwrap(), (7, Method::Ack));
        assert_ne!(message::top_via_branch(&ack), message::top_via_branch(&inv));
        assert_eq!(message::to_tag(&ack).as_deref(), Some("theirs"));
        assert_eq!(message::from_tag(&ack).as_deref(), Some("ours"));
        let routes: Vec<String> = message::header_values(&ack, "Route");
        assert_eq!(routes, vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);

        let bye = d.bye().unwrap();
        assert_eq!(message::cseq(&bye).unwrap(), (8, Method::Bye));
        let again = message::parse(&message::to_bytes(bye)).unwrap();
        assert_eq!(message::call_id(&again).unwrap(), "cid");
    }

    #[test]
    fn strict_router_goes_into_the_request_uri() {
        let inv = invite();
        let ok = ok_with_routes(&inv, &["<sip:strict.example>"]);
        let mut d = Dialog::uac(&inv, &ok, local()).unwrap();
        let bye = d.bye().unwrap();
        assert_eq!(bye.uri.to_string(), "sip:strict.example");
        assert_eq!(
            message::header_values(&bye, "Route"),
            vec!["<sip:bob@198.51.100.9:5080>"]
        );
    }

    #[test]
    fn peer_requests_are_recognised_and_answered() {
        let inv = invite();
        let ok = ok_with_routes(&inv, &[]);
        let mut ours = Dialog::uac(&inv, &ok, local()).unwrap();
        // The peer's view of the same dialog, to write its BYE.
        let mut theirs = Dialog::uas(&inv, "theirs", local()).unwrap();
        let bye = theirs.bye().unwrap();
        assert!(ours.matches_request(&bye));
        match ours.handle_request(&bye) {
            InDialog::Bye(resp) => {
                assert_eq!(resp.status_code.code(), 200);
                assert_eq!(message::to_tag(&resp).as_deref(), Some("ours"));
            }
            other => panic!("{other:?}"),
        }
        let reinvite = theirs.request(Method::Invite, None).unwrap();
        assert!(matches!(ours.handle_request(&reinvite), InDialog::Offer));
        let refused = ours.answer(&reinvite, 488, None, vec![]);
        assert_eq!(refused.status_code.code(), 488);
        // Its retransmission gets the same answer.
        assert!(
            matches!(ours.handle_request(&reinvite), InDialog::Retransmission(r) if r.status_code.code() == 488)
        );
        // An old CSeq is refused.
        assert!(
            matches!(ours.handle_request(&bye), InDialog::Other(r) if r.status_code.code() == 500)
        );
        let mut stranger = bye.clone();
        stranger.headers.retain(|h| !matches!(h, Header::CallId(_)));
        stranger.headers.push(Header::CallId("other".into()));
        assert!(!ours.matches_request(&stranger));
    }

    fn addr(s: &str) -> Option<std::net::SocketAddr> {
        Some(s.parse().unwrap())
    }

    /// The 2xx of the issue: Contact sip:x@192.0.2.7:5099 and, in one
    /// header, Record-Route <sip:192.0.2.8:5070;lr>,<sip:192.0.2.9;lr>.
    fn ok_via_two_proxies(inv: &Request) -> Response {
        message::build_response(
            inv,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:x@192.0.2.7:5099>"),
                extra: vec![Header::RecordRoute(
                    "<sip:192.0.2.8:5070;lr>,<sip:192.0.2.9;lr>".into(),
                )],
                ..Default::default()
            },
        )
    }

    #[test]
    fn uac_requests_go_to_the_last_record_route_first() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok_via_two_proxies(&inv), local()).unwrap();
        // 12.1.2: the UAC's route set is the Record-Route reversed, so the
        // proxy nearest to us (listed last by the proxies) comes first.
        let hop = d.next_hop().unwrap();
        assert_eq!(hop.socket_addr(), addr("192.0.2.9:5060"));
        assert_eq!(hop.transport, Transport::Udp);
        for req in [d.ack(7).unwrap(), d.bye().unwrap()] {
            assert_eq!(
                req.uri.to_string(),
                "sip:x@192.0.2.7:5099",
                "{}",
                req.method
            );
            assert_eq!(
                message::header_values(&req, "Route"),
                vec!["<sip:192.0.2.9;lr>", "<sip:192.0.2.8:5070;lr>"]
            );
        }
    }

    #[test]
    fn without_record_route_requests_go_to_the_contact() {
        let inv = invite();
        let ok = message::build_response(
            &inv,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:x@192.0.2.7:5099;transport=tcp>"),
                ..Default::default()
            },
        );
        let mut d = Dialog::uac(&inv, &ok, local()).unwrap();
        let hop = d.next_hop().unwrap();
        assert_eq!(hop.socket_addr(), addr("192.0.2.7:5099"));
        // The Contact's transport parameter wins over the dialog's, and the
        // Via says so.
        assert_eq!(hop.transport, Transport::Tcp);
        let bye = d.bye().unwrap();
        assert!(message::header_values(&bye, "Route").is_empty());
        // (rsip writes the parameter's value in capitals: same URI, 19.1.4.)
        assert!(bye
            .uri
            .to_string()
            .eq_ignore_ascii_case("sip:x@192.0.2.7:5099;transport=tcp"));
        assert!(message::header_values(&bye, "Via")[0].starts_with("SIP/2.0/TCP "));
    }

    #[test]
    fn a_strict_router_is_the_request_uri_and_the_destination() {
        let inv = invite();
        let ok = message::build_response(
            &inv,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<sip:x@192.0.2.7:5099>"),
                // Reversed by the UAC: the strict 192.0.2.9 comes first.
                extra: vec![Header::RecordRoute(
                    "<sip:192.0.2.8:5070;lr>, <sip:192.0.2.9:5062>".into(),
                )],
                ..Default::default()
            },
        );
        let mut d = Dialog::uac(&inv, &ok, local()).unwrap();
        assert_eq!(d.next_hop().unwrap().socket_addr(), addr("192.0.2.9:5062"));
        let bye = d.bye().unwrap();
        // 12.2.1.1: the strict router's URI as Request-URI, the rest of the
        // route set, then the remote target last.
        assert_eq!(bye.uri.to_string(), "sip:192.0.2.9:5062");
        assert_eq!(
            message::header_values(&bye, "Route"),
            vec!["<sip:192.0.2.8:5070;lr>", "<sip:x@192.0.2.7:5099>"]
        );
    }

    #[test]
    fn uas_requests_follow_the_invites_record_route_in_order() {
        let mut inv = invite();
        inv.headers.push(Header::RecordRoute(
            "<sip:192.0.2.8:5070;lr>,<sip:192.0.2.9;lr>".into(),
        ));
        let mut d = Dialog::uas(&inv, "mine", local()).unwrap();
        // 12.1.1: in order, so the proxy nearest to us is the first one.
        assert_eq!(d.next_hop().unwrap().socket_addr(), addr("192.0.2.8:5070"));
        let bye = d.bye().unwrap();
        // The INVITE's Contact is the remote target.
        assert_eq!(bye.uri.to_string(), "sip:gw@192.0.2.1:5060");
        assert_eq!(
            message::header_values(&bye, "Route"),
            vec!["<sip:192.0.2.8:5070;lr>", "<sip:192.0.2.9;lr>"]
        );
        // Without Record-Route: the Contact itself.
        let d = Dialog::uas(&invite(), "mine", local()).unwrap();
        assert_eq!(d.next_hop().unwrap().socket_addr(), addr("192.0.2.1:5060"));
    }

    #[test]
    fn an_unusable_contact_is_an_error_for_the_caller_to_handle() {
        let inv = invite();
        let ok = message::build_response(
            &inv,
            200,
            ResponseParts {
                to_tag: Some("theirs"),
                contact: Some("<tel:+4930123>"),
                ..Default::default()
            },
        );
        let d = Dialog::uac(&inv, &ok, local()).unwrap();
        assert!(d.next_hop().is_err());
    }

    /// A request of the peer in the dialog `ours` (a UAC dialog on `invite()`).
    fn peer_request(method: Method, cseq: u32, branch: &str) -> Request {
        message::build_request(RequestParts {
            method,
            uri: "sip:gw@192.0.2.1:5060",
            via: message::via_value("198.51.100.9", 5080, Transport::Udp, branch),
            from: "<sip:bob@192.0.2.2>;tag=theirs",
            to: "<sip:gw@192.0.2.1>;tag=ours",
            call_id: "cid",
            cseq,
            contact: Some("<sip:bob@198.51.100.10:5080>"),
            routes: &[],
            user_agent: "peer",
            body: None,
            extra: vec![],
        })
        .unwrap()
    }

    fn code(answer: InDialog) -> (&'static str, u16) {
        match answer {
            InDialog::Offer => ("offer", 0),
            InDialog::Bye(r) => ("bye", r.status_code.code()),
            InDialog::Other(r) => ("other", r.status_code.code()),
            InDialog::Retransmission(r) => ("again", r.status_code.code()),
            InDialog::Ack => ("ack", 0),
            InDialog::Dtmf(r, d) => (
                if d.as_char() == '5' { "dtmf 5" } else { "dtmf" },
                r.status_code.code(),
            ),
            InDialog::Refer(r, _) => ("refer", r.status_code.code()),
        }
    }

    #[test]
    fn refer_is_carried_out_refused_or_not_done_by_configuration() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok_with_routes(&inv, &[]), local()).unwrap();
        let refer = |seq: u32, refer_to: Option<&str>| {
            let mut req = peer_request(Method::Refer, seq, &format!("z9hG4bKr{seq}"));
            if let Some(to) = refer_to {
                req.headers
                    .push(Header::Other("Refer-To".into(), to.into()));
            }
            req.headers.push(Header::Other(
                "Referred-By".into(),
                "<sip:bob@192.0.2.2>".into(),
            ));
            req
        };
        // The default: not carried out.
        assert_eq!(
            code(d.handle_request(&refer(1, Some("<sip:200@x>")))),
            ("other", 501)
        );
        d.set_refer_answer(603);
        assert_eq!(
            code(d.handle_request(&refer(2, Some("<sip:200@x>")))),
            ("other", 603)
        );
        d.set_refer_answer(202);
        match d.handle_request(&refer(3, Some("<sip:200@x;transport=udp>"))) {
            InDialog::Refer(resp, referral) => {
                assert_eq!(resp.status_code.code(), 202);
                assert_eq!(
                    referral,
                    Referral {
                        user: "200".into(),
                        referred_by: Some("<sip:bob@192.0.2.2>".into()),
                        replaces: None,
                        cseq: 3,
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Its retransmission is answered again, not carried out twice.
        assert_eq!(
            code(d.handle_request(&refer(3, Some("<sip:200@x;transport=udp>")))),
            ("again", 202)
        );
        assert_eq!(code(d.handle_request(&refer(4, None))), ("other", 400));
        assert_eq!(
            code(d.handle_request(&refer(5, Some("<sip:host-only>")))),
            ("other", 400)
        );
        assert_eq!(
            code(d.handle_request(&refer(6, Some("<sip:200@x?Replaces=a%40b>")))),
            ("other", 400)
        );
    }

    #[test]
    fn info_with_dtmf_is_a_digit_and_other_bodies_get_415() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok_with_routes(&inv, &[]), local()).unwrap();
        let info = |seq: u32, branch: &str, ct: Option<&str>, body: &str| {
            let mut req = peer_request(Method::Info, seq, branch);
            if let Some(ct) = ct {
                req.headers.push(Header::ContentType(ct.into()));
            }
            req.body = body.as_bytes().to_vec();
            req
        };
        let relay = info(
            30,
            "z9hG4bKi30",
            Some("application/dtmf-relay"),
            "Signal=5\r\nDuration=160\r\n",
        );
        assert_eq!(code(d.handle_request(&relay)), ("dtmf 5", 200));
        // Its retransmission is answered again, not a second digit.
        assert_eq!(code(d.handle_request(&relay)), ("again", 200));
        let plain = info(31, "z9hG4bKi31", Some("application/dtmf"), "#");
        assert_eq!(code(d.handle_request(&plain)), ("dtmf", 200));
        let xml = info(
            32,
            "z9hG4bKi32",
            Some("application/media_control+xml"),
            "<x/>",
        );
        match d.handle_request(&xml) {
            InDialog::Other(r) => {
                assert_eq!(r.status_code.code(), 415);
                assert!(r.headers.iter().any(
                    |h| matches!(h, Header::Accept(a) if a.to_string().contains(info::ACCEPT))
                ));
            }
            other => panic!("{other:?}"),
        }
        let bad = info(
            33,
            "z9hG4bKi33",
            Some("application/dtmf-relay"),
            "Duration=160",
        );
        assert_eq!(code(d.handle_request(&bad)), ("other", 400));
        let empty = info(34, "z9hG4bKi34", None, "");
        assert_eq!(code(d.handle_request(&empty)), ("other", 200));
    }

    #[test]
    fn cseq_must_rise_and_retransmissions_get_the_same_answer() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok_with_routes(&inv, &[]), local()).unwrap();
        let options = peer_request(Method::Options, 20, "z9hG4bKo20");
        assert!(d.matches_request(&options));
        assert_eq!(code(d.handle_request(&options)), ("other", 200));
        // The same request again (same branch): answered again, not 500.
        assert_eq!(code(d.handle_request(&options)), ("again", 200));
        // Same CSeq, another transaction: out of order (12.2.2).
        let same = peer_request(Method::Info, 20, "z9hG4bKi20");
        assert_eq!(code(d.handle_request(&same)), ("other", 500));
        let older = peer_request(Method::Bye, 19, "z9hG4bKb19");
        assert_eq!(code(d.handle_request(&older)), ("other", 500));
        // A CANCEL of the OPTIONS (its branch and CSeq): 200, no effect;
        // of nothing known: 481. Neither moves the CSeq.
        let cancel = peer_request(Method::Cancel, 20, "z9hG4bKo20");
        assert_eq!(code(d.handle_request(&cancel)), ("other", 200));
        let stray = peer_request(Method::Cancel, 20, "z9hG4bKx");
        assert_eq!(code(d.handle_request(&stray)), ("other", 481));
        let bye = peer_request(Method::Bye, 21, "z9hG4bKb21");
        assert_eq!(code(d.handle_request(&bye)), ("bye", 200));
        // A retransmitted BYE is not a second hangup.
        assert_eq!(code(d.handle_request(&bye)), ("again", 200));
    }

    #[test]
    fn a_uas_dialog_counts_from_the_invites_cseq() {
        let inv = invite(); // CSeq 7
        let mut d = Dialog::uas(&inv, "mine", local()).unwrap();
        let mut bye = peer_request(Method::Bye, 7, "z9hG4bKb7");
        // The peer of a UAS dialog is the INVITE's sender: its tags.
        bye.headers
            .retain(|h| !matches!(h, Header::From(_) | Header::To(_)));
        bye.headers
            .push(Header::From("<sip:gw@192.0.2.1>;tag=ours".into()));
        bye.headers
            .push(Header::To("<sip:bob@192.0.2.2>;tag=mine".into()));
        assert!(d.matches_request(&bye));
        assert_eq!(code(d.handle_request(&bye)), ("other", 500));
    }

    #[test]
    fn target_refresh_moves_the_remote_target_not_the_route_set() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok_via_two_proxies(&inv), local()).unwrap();
        // A refused re-INVITE changes nothing (its Contact names .10).
        let reinvite = peer_request(Method::Invite, 5, "z9hG4bKr5");
        assert!(matches!(d.handle_request(&reinvite), InDialog::Offer));
        d.answer(&reinvite, 488, None, vec![]);
        assert_eq!(d.remote_target, "sip:x@192.0.2.7:5099");
        // An accepted one does (12.2.2), and its 2xx names our Contact.
        let again = peer_request(Method::Update, 6, "z9hG4bKu6");
        assert!(matches!(d.handle_request(&again), InDialog::Offer));
        let ok = d.answer(&again, 200, Some(("application/sdp", "v=0\r\n")), vec![]);
        assert_eq!(
            message::contact_uri(&ok).as_deref(),
            Some("sip:gw@192.0.2.1:5060")
        );
        assert_eq!(d.remote_target, "sip:bob@198.51.100.10:5080");
        d.remote_target = "sip:x@192.0.2.7:5099".into();
        // A 2xx to a target refresh of ours does (12.2.1.2).
        let mut ok = ok_via_two_proxies(&inv);
        ok.headers.retain(|h| !matches!(h, Header::Contact(_)));
        ok.headers
            .push(Header::Contact("<sip:x@192.0.2.70:5099>".into()));
        d.refresh_target(&ok);
        assert_eq!(d.remote_target, "sip:x@192.0.2.70:5099");
        assert_eq!(d.bye().unwrap().uri.to_string(), "sip:x@192.0.2.70:5099");
        assert_eq!(d.next_hop().unwrap().socket_addr(), addr("192.0.2.9:5060"));
        // No route set: the new target is the destination.
        let mut direct = Dialog::uac(&inv, &ok_with_routes(&inv, &[]), local()).unwrap();
        direct.refresh_target(&ok);
        assert_eq!(
            direct.next_hop().unwrap().socket_addr(),
            addr("192.0.2.70:5099")
        );
    }
}
