//! The B2BUA core driven with an explicit clock and no sockets: SIP goes in
//! as parsed messages and comes out as bytes, sessions and media are plain
//! inputs and outputs.

use super::api::SessionEvent;
use super::call::{
    Call, CallTimers, IncomingSetup, MediaCommand, MediaPlan, NewInviteRoute, OutgoingSetup,
    Output, SessionInput, SipLocal,
};
use super::directory::{Account, Trunk};
use super::sessions::SessionKey;
use crate::config::{TrunkTransport, TrunkUri};
use crate::media::relay::{TelephoneEvent, TrunkCrypto};
use crate::media::MediaEvent;
use crate::policy::{CalleeStream, CallerStream, IncomingLegPlan, SecureMedia};
use crate::sdp::parse_sip_offer;
use crate::sip::message;
use crate::sip::target::Target;
use crate::sip::uas::IncomingCall;
use crate::sip::Transport;
use crate::types::{CallId, PayloadType, Personal, Secret, SrtpSuite, Ssrc};
use rsip::SipMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TRUNK: &str = "127.0.0.1:5070";
const CHROME: &str = include_str!("../../tests/fixtures/chrome-offer.sdp");

const TRUNK_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n\
a=sendrecv\r\n";

fn trunk_addr() -> SocketAddr {
    TRUNK.parse().unwrap()
}

fn account() -> Arc<Account> {
    Arc::new(Account {
        name: "alice".into(),
        trunk: Arc::new(Trunk {
            name: "carrier".into(),
            uri: TrunkUri {
                host: "127.0.0.1".into(),
                port: 5070,
                transport: TrunkTransport::Udp,
            },
            username: None,
            password: None,
            callee_stream: CalleeStream::Sdes,
            caller_stream: CallerStream::RelayOrDecrypt,
            secure_media: SecureMedia::Mandatory,
            srtp_suites: vec![
                SrtpSuite::AesCm128HmacSha1_80,
                SrtpSuite::AesCm128HmacSha1_32,
            ],
            inbound_sources: vec![("127.0.0.1".parse().unwrap(), 32)],
            reject_code: 486,
            accept_refer: false,
            options_interval: Duration::ZERO,
            media_source: crate::types::MediaSource::Signaled,
            register: None,
        }),
        caller_stream: CallerStream::RelayOrDecrypt,
        callee_stream: None,
        redact: false,
    })
}

fn media_plan() -> MediaPlan {
    MediaPlan {
        public_ip: "10.0.0.1".parse().unwrap(),
        browser_port: 20000,
        trunk_rtp_port: 20002,
        ice_ufrag: "gwUf".into(),
        ice_pwd: Secret::new("gatewayicepassword0123".into()),
        ssrc_to_browser: Ssrc(42),
        fingerprint_sha256: ["AB"; 32].join(":"),
    }
}

fn local() -> SipLocal {
    SipLocal {
        host: "10.0.0.1".into(),
        port: 5060,
        transport: Transport::Udp,
    }
}

fn parse(text: &str) -> SipMessage {
    message::parse(text.as_bytes()).unwrap()
}

fn invite_offering(offer: &str) -> SipMessage {
    parse(&format!(
        "INVITE sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKinv1\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>\r\nCall-ID: in-c1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:carrier@{TRUNK}>\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{offer}",
        offer.len()
    ))
}

/// An in-dialog request from the trunk (ACK, BYE) or the CANCEL.
fn from_trunk(method: &str, cseq: u32, to_tag: Option<&str>, branch: &str) -> SipMessage {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let cseq_method = if method == "ACK" && branch == "z9hG4bKinv1" {
        "ACK"
    } else {
        method
    };
    parse(&format!(
        "{method} sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch={branch}\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>{to_tag}\r\n\
Call-ID: in-c1\r\nCSeq: {cseq} {cseq_method}\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn browser_answer() -> String {
    let fp = ["CD"; 32].join(":");
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 8 101\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:brUf\r\na=ice-pwd:browsericepassword0123456\r\na=fingerprint:sha-256 {fp}\r\n\
a=setup:active\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=ssrc:777 cname:x\r\n"
    )
}

fn incoming(sessions: &[SessionKey], reject_code: u16, now: Instant) -> Call {
    incoming_for(account(), sessions, reject_code, now)
}

fn incoming_for(
    account: Arc<Account>,
    sessions: &[SessionKey],
    reject_code: u16,
    now: Instant,
) -> Call {
    incoming_offering(account, sessions, reject_code, TRUNK_OFFER, now)
}

fn incoming_offering(
    account: Arc<Account>,
    sessions: &[SessionKey],
    reject_code: u16,
    trunk_offer: &str,
    now: Instant,
) -> Call {
    let uas = IncomingCall::new(invite_offering(trunk_offer), trunk_addr(), now).unwrap();
    let offer = parse_sip_offer(trunk_offer).unwrap();
    incoming_with(account, sessions, reject_code, (uas, offer, 2, false), now)
}

/// An incoming call whose INVITE carried no offer (a delayed offer): the
/// gateway's template (SDES AES_CM_128_HMAC_SHA1_80, tag 1) stands for it.
fn incoming_delayed(sessions: &[SessionKey], now: Instant) -> Call {
    incoming_delayed_for(account(), sessions, now)
}

fn incoming_delayed_for(account: Arc<Account>, sessions: &[SessionKey], now: Instant) -> Call {
    let invite = invite_offering("")
        .to_string()
        .replace("Content-Type: application/sdp\r\n", "");
    let uas = IncomingCall::new(parse(&invite), trunk_addr(), now).unwrap();
    assert!(uas.offer_sdp().is_none());
    let template = crate::sdp::delayed_offer_template(Some(SrtpSuite::AesCm128HmacSha1_80));
    let offer = parse_sip_offer(&template).unwrap();
    incoming_with(account, sessions, 486, (uas, offer, 1, true), now)
}

fn incoming_with(
    account: Arc<Account>,
    sessions: &[SessionKey],
    reject_code: u16,
    (uas, offer, tag, delayed_offer): (IncomingCall, crate::sdp::SipOffer, u32, bool),
    now: Instant,
) -> Call {
    Call::incoming(
        IncomingSetup {
            id: CallId("in-1".into()),
            uas,
            offer,
            plan: IncomingLegPlan::Sdes {
                tag,
                suite: SrtpSuite::AesCm128HmacSha1_80,
            },
            trunk_dtls: None,
            sessions: sessions.to_vec(),
            from: Personal::new("+4930123", false),
            account: account.clone(),
            media: media_plan(),
            local: local(),
            trunk_sources: account.trunk.signaling_sources(&[trunk_addr().ip()]),
            reject_code,
            timers: CallTimers {
                ring: Duration::from_secs(30),
                ..CallTimers::default()
            },
            transfer_route: Some(NewInviteRoute {
                local: local(),
                destination: trunk_addr(),
                routes: Vec::new(),
            }),
            delayed_offer,
        },
        now,
    )
}

/// Session 1 accepts with `browser_answer()` and its DTLS comes up: what
/// the call did then (the 200 OK, the media commands).
fn accept_and_connect(call: &mut Call, now: Instant) -> Drained {
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer(),
        },
    );
    drain(call);
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    drain(call)
}

/// Everything the call output since the last drain.
#[derive(Default, Debug)]
struct Drained {
    sip: Vec<SipMessage>,
    /// Where each of `sip` went.
    sip_to: Vec<Target>,
    events: Vec<(SessionKey, SessionEvent)>,
    media: Vec<MediaCommand>,
    connected: usize,
    fallbacks: usize,
    /// Further Call-IDs the call listens to.
    call_ids: Vec<String>,
    /// Carried-out transfers for the record: (to as displayed, Call-ID).
    transfers: Vec<(String, String)>,
    /// DTMF counted: (toward the trunk, by SIP INFO, digits).
    dtmf_counted: Vec<(bool, bool, u64)>,
}

impl Drained {
    fn statuses(&self) -> Vec<u16> {
        self.sip
            .iter()
            .filter_map(|m| match m {
                SipMessage::Response(r) => Some(message::status_code(r)),
                _ => None,
            })
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        self.sip
            .iter()
            .filter_map(|m| match m {
                SipMessage::Request(r) => Some(r.method.to_string()),
                _ => None,
            })
            .collect()
    }

    fn to(&self, session: SessionKey) -> Vec<&SessionEvent> {
        self.events
            .iter()
            .filter(|(s, _)| *s == session)
            .map(|(_, e)| e)
            .collect()
    }

    fn hangup_of(&self, session: SessionKey) -> Option<(u16, String)> {
        self.to(session).into_iter().find_map(|e| match e {
            SessionEvent::Hangup { code, reason, .. } => Some((*code, reason.clone())),
            _ => None,
        })
    }

    fn started_media(&self) -> bool {
        self.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Start(_)))
    }

    fn stopped_media(&self) -> bool {
        self.media.iter().any(|m| matches!(m, MediaCommand::Stop))
    }

    /// The 200 OK to the INVITE, if sent.
    fn ok_to_invite(&self) -> Option<&rsip::Response> {
        self.sip.iter().find_map(|m| match m {
            SipMessage::Response(r)
                if message::status_code(r) == 200
                    && message::cseq(r).is_ok_and(|(_, m)| m == rsip::Method::Invite) =>
            {
                Some(r)
            }
            _ => None,
        })
    }
}

fn drain(call: &mut Call) -> Drained {
    let d = drain_anywhere(call);
    for to in &d.sip_to {
        assert_eq!(
            *to,
            Target::addr(trunk_addr(), Transport::Udp),
            "SIP goes back to the trunk"
        );
    }
    d
}

/// [`drain`] without the check that all SIP goes to the trunk.
fn drain_anywhere(call: &mut Call) -> Drained {
    let mut d = Drained::default();
    while let Some(out) = call.poll_output() {
        match out {
            Output::Sip { to, bytes } => {
                d.sip.push(message::parse(&bytes).unwrap());
                d.sip_to.push(to);
            }
            Output::Session { session, event } => d.events.push((session, event)),
            Output::Media(m) => d.media.push(m),
            Output::Connected => d.connected += 1,
            Output::SecureMediaFallback => d.fallbacks += 1,
            Output::Dtmf {
                to_trunk,
                info,
                digits,
            } => d.dtmf_counted.push((to_trunk, info, digits)),
            Output::ListenCallId(id) => d.call_ids.push(id),
            Output::Transferred { to, sip_call_id } => {
                d.transfers.push((to.to_string(), sip_call_id))
            }
        }
    }
    d
}

fn to_tag_of(resp: &rsip::Response) -> String {
    message::to_tag(resp).expect("our response has a To tag")
}

/// Rings sessions 1..=n, session 1 accepts, its DTLS comes up, the trunk
/// ACKs the 200: the call is connected. Returns the call, the clock and our
/// To tag.
fn connected_call(n: u64) -> (Call, Instant, String) {
    connected_call_for(account(), n)
}

fn connected_call_for(account: Arc<Account>, n: u64) -> (Call, Instant, String) {
    connected_call_answered(account, n, browser_answer())
}

fn connected_call_answered(
    account: Arc<Account>,
    n: u64,
    answer: String,
) -> (Call, Instant, String) {
    connected_call_offering(account, n, answer, TRUNK_OFFER)
}

fn connected_call_offering(
    account: Arc<Account>,
    n: u64,
    answer: String,
    trunk_offer: &str,
) -> (Call, Instant, String) {
    let now = Instant::now();
    let sessions: Vec<_> = (1..=n).collect();
    let mut call = incoming_offering(account, &sessions, 486, trunk_offer, now);
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: answer,
        },
    );
    drain(&mut call);
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    let tag = to_tag_of(d.ok_to_invite().expect("200 OK"));
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.connected, 1);
    (call, now, tag)
}

#[test]
fn an_incoming_call_rings_every_session_with_one_offer() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2, 3], 486, now);
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [100, 180], "100 at once, then 180");
    let mut sdps = Vec::new();
    for session in [1, 2, 3] {
        match d.to(session).as_slice() {
            [SessionEvent::Incoming {
                id,
                from,
                sdp,
                verstat,
            }] => {
                assert_eq!(id.0, "in-1");
                assert_eq!(from, "+4930123");
                assert_eq!(verstat, "");
                sdps.push(sdp.clone());
            }
            other => panic!("session {session}: {other:?}"),
        }
    }
    assert!(sdps.windows(2).all(|w| w[0] == w[1]));
    assert!(sdps[0].contains("a=setup:actpass") && sdps[0].contains("a=ice-lite"));
    assert!(!sdps[0].contains("crypto"), "the trunk's keys stay with us");
    assert!(!call.is_over_for_browsers());
    assert_eq!(call.poll_timeout(), Some(now + Duration::from_secs(30)));
}

#[test]
fn the_first_accept_wins_and_the_others_stop_ringing() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2, 3], 486, now);
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 2,
            sdp: browser_answer(),
        },
    );
    let d = drain(&mut call);
    assert!(d.started_media(), "the relay starts for the winner");
    assert!(d.sip.is_empty(), "no 200 before the browser's DTLS is up");
    for loser in [1, 3] {
        assert_eq!(d.hangup_of(loser), Some((200, "answered elsewhere".into())));
    }
    assert_eq!(d.hangup_of(2), None);

    // A second accept racing the first one is refused; nothing changes.
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 3,
            sdp: browser_answer(),
        },
    );
    let d = drain(&mut call);
    assert!(matches!(
        d.to(3).as_slice(),
        [SessionEvent::Error { code: 409, message, .. }] if message.contains("answered elsewhere")
    ));
    assert!(!d.started_media());

    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    let ok = d.ok_to_invite().expect("200 OK once DTLS is up");
    let body = String::from_utf8_lossy(&ok.body).to_string();
    assert!(body.contains("m=audio 20002 RTP/SAVP 8 101"), "{body}");
    assert!(
        body.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:"),
        "our srtp_suites order picks tag 2: {body}"
    );
    assert!(
        !body.contains("d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK"),
        "a fresh key"
    );
    assert_eq!(d.connected, 0, "connected waits for the ACK");

    let tag = to_tag_of(ok);
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.connected, 1);
    match d.to(2).as_slice() {
        [SessionEvent::Connected { security, .. }] => {
            assert_eq!(security.browser, "dtls-srtp AEAD_AES_128_GCM");
            assert_eq!(security.trunk, "sdes-srtp AES_CM_128_HMAC_SHA1_80");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call.poll_timeout(), None, "no ring timer once answered");
}

#[test]
fn an_accept_after_cancel_is_refused() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2], 486, now);
    drain(&mut call);
    call.handle_sip(
        now,
        from_trunk("CANCEL", 1, None, "z9hG4bKinv1"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(
        d.statuses(),
        [200, 487],
        "200 for the CANCEL, 487 for the INVITE"
    );
    for s in [1, 2] {
        assert_eq!(
            d.hangup_of(s),
            Some((487, "cancelled by the caller".into()))
        );
    }
    assert!(call.is_over_for_browsers());
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer(),
        },
    );
    let d = drain(&mut call);
    assert!(!d.started_media());
    assert!(d.sip.is_empty());
}

#[test]
fn every_session_declining_gives_the_trunks_reject_code() {
    for code in [486, 603] {
        let now = Instant::now();
        let mut call = incoming(&[1, 2], code, now);
        drain(&mut call);
        call.handle_session(now, SessionInput::Reject { session: 1 });
        let d = drain(&mut call);
        assert_eq!(d.hangup_of(1), Some((486, "declined".into())));
        assert!(d.sip.is_empty(), "session 2 still rings");
        call.handle_session(now, SessionInput::Reject { session: 2 });
        let d = drain(&mut call);
        assert_eq!(d.statuses(), [code]);
        assert_eq!(d.hangup_of(2), Some((486, "declined".into())));
        // The final response is retransmitted until the ACK (Timer G).
        call.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(drain(&mut call).statuses(), [code]);
        call.handle_sip(now, from_trunk("ACK", 1, None, "z9hG4bKinv1"), trunk_addr());
        call.handle_timeout(now + Duration::from_secs(6));
        assert!(call.is_finished());
    }
}

#[test]
fn sessions_closing_while_ringing_give_480() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2], 486, now);
    drain(&mut call);
    call.handle_session(now, SessionInput::Gone { session: 1 });
    assert!(drain(&mut call).sip.is_empty());
    call.handle_session(now, SessionInput::Gone { session: 2 });
    assert_eq!(drain(&mut call).statuses(), [480]);
}

#[test]
fn nobody_answering_within_the_ring_timeout_gives_408() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2], 486, now);
    drain(&mut call);
    let at = call.poll_timeout().unwrap();
    call.handle_timeout(at - Duration::from_millis(1));
    assert!(drain(&mut call).sip.is_empty());
    call.handle_timeout(at);
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [408]);
    for s in [1, 2] {
        assert_eq!(d.hangup_of(s), Some((408, "no answer".into())));
    }
}

#[test]
fn a_browser_that_does_not_connect_is_given_up_and_the_trunk_hears_480() {
    let now = Instant::now();
    let mut call = incoming(&[1], 486, now);
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer(),
        },
    );
    drain(&mut call);
    call.handle_timeout(now + Duration::from_secs(15));
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [480]);
    assert_eq!(d.hangup_of(1).map(|h| h.0), Some(408));
    assert!(d.stopped_media());
}

#[test]
fn an_unusable_answer_ends_only_that_sessions_part() {
    let now = Instant::now();
    let mut call = incoming(&[1, 2], 486, now);
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer().replace("a=setup:active", "a=setup:passive"),
        },
    );
    let d = drain(&mut call);
    let (code, reason) = d.hangup_of(1).unwrap();
    assert_eq!(code, 488);
    assert!(reason.contains("setup"), "{reason}");
    assert!(!d.started_media() && d.sip.is_empty());
    assert_eq!(d.hangup_of(2), None, "session 2 still rings");
}

/// Another trunk of the config: the endpoint's door lets it in, the call
/// does not listen to it.
fn other_trunk() -> SocketAddr {
    "127.0.0.2:5060".parse().unwrap()
}

#[test]
fn a_bye_from_another_trunk_is_refused_and_the_incoming_call_goes_on() {
    let (mut call, now, tag) = connected_call(1);
    // The right Call-ID, tags and CSeq: only the source is wrong.
    call.handle_sip(
        now,
        from_trunk("BYE", 2, Some(&tag), "z9hG4bKforged"),
        other_trunk(),
    );
    let d = drain_anywhere(&mut call);
    assert_eq!(d.statuses(), [403]);
    assert_eq!(d.sip_to, [Target::addr(other_trunk(), Transport::Udp)]);
    assert_eq!(d.hangup_of(1), None);
    assert!(!d.stopped_media());
    assert!(!call.is_over_for_browsers() && !call.is_finished());
    // An ACK from there is dropped without an answer.
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack9"),
        other_trunk(),
    );
    assert!(drain_anywhere(&mut call).sip.is_empty());
    // The trunk's own BYE, with the same CSeq, still ends the call: the
    // forged one left no trace in the dialog.
    call.handle_sip(
        now,
        from_trunk("BYE", 2, Some(&tag), "z9hG4bKbye1"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert_eq!(
        d.hangup_of(1),
        Some((200, "the other party hung up".into()))
    );
}

#[test]
fn in_dialog_requests_from_the_trunk_are_checked_against_the_dialog() {
    let (mut call, now, tag) = connected_call(1);
    // A tag that names no dialog: 481.
    call.handle_sip(
        now,
        from_trunk("BYE", 3, Some("not-ours"), "z9hG4bKwrongtag"),
        trunk_addr(),
    );
    assert_eq!(drain(&mut call).statuses(), [481]);
    // CSeq 1 is the INVITE's: a BYE with it is out of order (500).
    call.handle_sip(
        now,
        from_trunk("BYE", 1, Some(&tag), "z9hG4bKstale"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [500]);
    assert_eq!(d.hangup_of(1), None);
    assert!(!call.is_over_for_browsers());
}

#[test]
fn a_bye_from_another_trunk_is_refused_and_the_outgoing_call_goes_on() {
    let now = Instant::now();
    let mut call = outgoing_with(account(), now);
    let invite = the_invite(&drain(&mut call));
    let offer = parse_sip_offer(std::str::from_utf8(&invite.body).unwrap()).unwrap();
    let key = offer.cryptos[0].key().unwrap().material.clone();
    let answer = format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{} {} inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n",
        offer.cryptos[0].tag, key.suite
    );
    let ok = message::build_response(
        &invite,
        200,
        message::ResponseParts {
            to_tag: Some("t1"),
            contact: Some("<sip:x@127.0.0.1:5070>"),
            body: Some(("application/sdp", &answer)),
            ..Default::default()
        },
    );
    call.handle_sip(now, SipMessage::Response(ok), trunk_addr());
    assert_eq!(drain(&mut call).requests(), ["ACK"]);
    // The trunk's BYE as another trunk would forge it.
    let from = message::header_values(&invite, "From")[0].clone();
    let forged = parse(&format!(
        "BYE sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKf1\r\n\
From: <sip:15551234@127.0.0.1>;tag=t1\r\nTo: {from}\r\nCall-ID: out-p1\r\nCSeq: 9 BYE\r\n\
Content-Length: 0\r\n\r\n"
    ));
    call.handle_sip(now, forged.clone(), other_trunk());
    let d = drain_anywhere(&mut call);
    assert_eq!(d.statuses(), [403]);
    assert_eq!(d.hangup_of(7), None);
    assert!(!call.is_over_for_browsers());
    // The same BYE from the trunk is the end of the call: the test above
    // failed for the source alone.
    call.handle_sip(now, forged, trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert!(d.hangup_of(7).is_some());
}

#[test]
fn a_bye_from_the_trunk_ends_the_call_for_the_browser() {
    let (mut call, now, tag) = connected_call(2);
    call.handle_sip(
        now,
        from_trunk("BYE", 2, Some(&tag), "z9hG4bKbye1"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert_eq!(
        d.hangup_of(1),
        Some((200, "the other party hung up".into()))
    );
    assert!(d.stopped_media());
    assert!(call.is_finished());
}

#[test]
fn a_hangup_from_the_browser_sends_bye() {
    let (mut call, now, _) = connected_call(1);
    call.handle_session(now, SessionInput::Hangup { session: 1 });
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    assert_eq!(d.hangup_of(1), Some((200, "hung up by the browser".into())));
    assert!(d.stopped_media());
    // The same for the winner's socket closing.
    let (mut call, now, _) = connected_call(1);
    call.handle_session(now, SessionInput::Gone { session: 1 });
    assert_eq!(drain(&mut call).requests(), ["BYE"]);
}

#[test]
fn through_an_outbound_proxy_the_invite_carries_its_route() {
    let now = Instant::now();
    let proxy: std::net::SocketAddr = "127.0.0.1:5999".parse().unwrap();
    let mut call = Call::outgoing(
        OutgoingSetup {
            routes: vec![crate::calls::cluster::proxy_route("sip:127.0.0.1:5999")],
            ..outgoing_setup(proxy)
        },
        now,
    );
    let d = drain_anywhere(&mut call);
    let SipMessage::Request(invite) = &d.sip[0] else {
        unreachable!()
    };
    // Loose routing: the Request-URI stays the trunk's, the proxy is in Route
    // and the INVITE goes to the proxy.
    assert_eq!(invite.uri.to_string(), "sip:15551234@127.0.0.1:5070");
    assert_eq!(
        message::header_values(invite, "Route"),
        ["<sip:127.0.0.1:5999;lr>"]
    );
    assert_eq!(d.sip_to[0], Target::addr(proxy, Transport::Udp));
}

/// Call c1 from session 7 to 15551234, its INVITE sent to `destination`.
fn outgoing_setup(destination: std::net::SocketAddr) -> OutgoingSetup {
    OutgoingSetup {
        id: CallId("c1".into()),
        session: 7,
        to: "15551234".into(),
        browser_sdp: CHROME.into(),
        account: account(),
        media: media_plan(),
        local: local(),
        destination,
        trunk_sources: account().trunk.signaling_sources(&[destination.ip()]),
        sip_call_id: "out-c1".into(),
        timers: CallTimers::default(),
        routes: vec![],
    }
}

#[test]
fn an_outgoing_call_runs_on_the_same_core() {
    let now = Instant::now();
    let mut call = Call::outgoing(outgoing_setup(trunk_addr()), now);
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["INVITE"]);
    let SipMessage::Request(invite) = &d.sip[0] else {
        unreachable!()
    };
    assert_eq!(invite.uri.to_string(), "sip:15551234@127.0.0.1:5070");
    assert!(message::header_values(invite, "Route").is_empty());
    let offer = parse_sip_offer(std::str::from_utf8(&invite.body).unwrap()).unwrap();
    let key = offer.cryptos[0].key().unwrap().material.clone();

    let answer = format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{} {} inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n",
        offer.cryptos[0].tag, key.suite
    );
    let ok = message::build_response(
        invite,
        200,
        message::ResponseParts {
            to_tag: Some("t1"),
            contact: Some("<sip:x@127.0.0.1:5070>"),
            body: Some(("application/sdp", &answer)),
            ..Default::default()
        },
    );
    call.handle_sip(now, SipMessage::Response(ok), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(d.started_media());
    assert!(matches!(d.to(7).as_slice(), [SessionEvent::Answer { .. }]));
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    assert_eq!(d.connected, 1);
    assert!(matches!(
        d.to(7).as_slice(),
        [SessionEvent::Connected { .. }]
    ));
    // Accept/reject make no sense for an outgoing call.
    call.handle_session(now, SessionInput::Reject { session: 7 });
    assert!(matches!(
        drain(&mut call).to(7).as_slice(),
        [SessionEvent::Error { code: 409, .. }]
    ));
    call.handle_session(now, SessionInput::Hangup { session: 7 });
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    assert_eq!(d.hangup_of(7), Some((200, "hung up by the browser".into())));
}

#[test]
fn an_unusable_browser_offer_ends_an_outgoing_call_before_any_sip() {
    let now = Instant::now();
    let mut call = Call::outgoing(
        OutgoingSetup {
            id: CallId("c1".into()),
            session: 7,
            to: "1".into(),
            browser_sdp: "v=0\r\n".into(),
            account: account(),
            media: media_plan(),
            local: local(),
            destination: trunk_addr(),
            trunk_sources: account().trunk.signaling_sources(&[trunk_addr().ip()]),
            sip_call_id: "out-c2".into(),
            timers: CallTimers::default(),
            routes: vec![],
        },
        now,
    );
    let d = drain(&mut call);
    assert!(d.sip.is_empty());
    assert_eq!(d.hangup_of(7).map(|h| h.0), Some(488));
    assert!(call.is_finished());
}

/// An account on a trunk with this secure_media, and these streams.
fn account_with(
    secure_media: SecureMedia,
    caller_stream: CallerStream,
    callee_stream: Option<CalleeStream>,
) -> Arc<Account> {
    let base = account();
    let mut trunk = (*base.trunk).clone();
    trunk.secure_media = secure_media;
    Arc::new(Account {
        trunk: Arc::new(trunk),
        caller_stream,
        callee_stream,
        ..(*base).clone()
    })
}

fn outgoing_with(account: Arc<Account>, now: Instant) -> Call {
    let trunk_sources = account.trunk.signaling_sources(&[trunk_addr().ip()]);
    Call::outgoing(
        OutgoingSetup {
            id: CallId("c1".into()),
            session: 7,
            to: "15551234".into(),
            browser_sdp: CHROME.into(),
            account,
            media: media_plan(),
            local: local(),
            destination: trunk_addr(),
            trunk_sources,
            sip_call_id: "out-p1".into(),
            timers: CallTimers::default(),
            routes: vec![],
        },
        now,
    )
}

fn the_invite(d: &Drained) -> rsip::Request {
    d.sip
        .iter()
        .find_map(|m| match m {
            SipMessage::Request(r) if r.method == rsip::Method::Invite => Some(r.clone()),
            _ => None,
        })
        .expect("an INVITE went out")
}

fn reply(invite: &rsip::Request, code: u16, body: Option<&str>) -> SipMessage {
    SipMessage::Response(message::build_response(
        invite,
        code,
        message::ResponseParts {
            to_tag: Some("t1"),
            contact: Some("<sip:x@127.0.0.1:5070>"),
            body: body.map(|b| ("application/sdp", b)),
            ..Default::default()
        },
    ))
}

const PLAIN_ANSWER: &str =
    "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn trunk_crypto_of(d: &Drained) -> Option<TrunkCrypto> {
    d.media.iter().find_map(|m| match m {
        MediaCommand::Start(p) => Some(p.trunk.crypto.clone()),
        _ => None,
    })
}

#[test]
fn optional_secure_media_re_offers_plain_rtp_in_a_new_invite_after_488() {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(SecureMedia::Optional, CallerStream::RelayOrDecrypt, None),
        now,
    );
    let d = drain(&mut call);
    let first = the_invite(&d);
    let body = std::str::from_utf8(&first.body).unwrap();
    assert!(
        body.contains("RTP/SAVP") && body.contains("a=crypto:"),
        "{body}"
    );

    let t1 = now + Duration::from_millis(300);
    call.handle_sip(t1, reply(&first, 488, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "INVITE"]);
    assert_eq!(d.fallbacks, 1, "counted");
    assert!(d.hangup_of(7).is_none(), "the browser's call goes on");
    let second = the_invite(&d);
    assert_eq!(message::cseq(&second).unwrap(), (2, rsip::Method::Invite));
    assert_eq!(message::call_id(&second).unwrap(), "out-p1");
    assert_eq!(message::from_tag(&second), message::from_tag(&first));
    let body = std::str::from_utf8(&second.body).unwrap();
    assert!(body.contains("m=audio 20002 RTP/AVP "), "{body}");
    assert!(!body.contains("a=crypto"), "{body}");

    call.handle_sip(t1, reply(&second, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(matches!(trunk_crypto_of(&d), Some(TrunkCrypto::Plain)));
    assert_eq!(d.fallbacks, 0, "counted once");
    call.handle_media(
        t1,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    let security = d.to(7).into_iter().find_map(|e| match e {
        SessionEvent::Connected { security, .. } => Some(security.trunk.clone()),
        _ => None,
    });
    assert_eq!(security.as_deref(), Some("rtp (unencrypted)"));
}

#[test]
fn optional_secure_media_takes_a_plain_200_and_counts_it() {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(SecureMedia::Optional, CallerStream::RelayOrDecrypt, None),
        now,
    );
    let first = the_invite(&drain(&mut call));
    call.handle_sip(now, reply(&first, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(matches!(trunk_crypto_of(&d), Some(TrunkCrypto::Plain)));
    assert_eq!(d.fallbacks, 1);
}

/// Item 3: mandatory never ends in plain RTP: a plain 200 is BYEd with a
/// policy reason (488 to the browser), a 488 ends the call, no re-offer.
#[test]
fn mandatory_secure_media_never_runs_plain_rtp() {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(SecureMedia::Mandatory, CallerStream::RelayOrDecrypt, None),
        now,
    );
    let first = the_invite(&drain(&mut call));
    call.handle_sip(now, reply(&first, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "BYE"]);
    assert!(!d.started_media());
    assert_eq!(d.fallbacks, 0);
    let (code, reason) = d.hangup_of(7).expect("hangup");
    assert_eq!(code, 488);
    assert!(reason.contains("mandatory"), "{reason}");

    let mut call = outgoing_with(
        account_with(SecureMedia::Mandatory, CallerStream::RelayOrDecrypt, None),
        now,
    );
    let first = the_invite(&drain(&mut call));
    call.handle_sip(now, reply(&first, 488, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"], "no second INVITE");
    assert_eq!(d.hangup_of(7).map(|h| h.0), Some(488));
}

/// Rows the gateway cannot carry yet end before any SIP with 488 and a
/// reason that names the policy.
#[test]
fn unsupported_policy_rows_end_the_call_with_488_naming_the_policy() {
    let now = Instant::now();
    for (secure, caller, callee, words) in [
        (
            SecureMedia::Forbidden,
            CallerStream::ForcedRelay,
            None,
            "secure_media = \"forbidden\" conflicts with a private call",
        ),
        (
            SecureMedia::Mandatory,
            CallerStream::RelayOrDecrypt,
            Some(CalleeStream::Decrypted),
            "secure_media = \"mandatory\" conflicts",
        ),
    ] {
        let mut call = outgoing_with(account_with(secure, caller, callee), now);
        let d = drain(&mut call);
        assert!(d.sip.is_empty(), "{caller:?}");
        let (code, reason) = d.hangup_of(7).expect("hangup");
        assert_eq!(code, 488);
        assert!(reason.contains(words), "{reason}");
        assert!(call.is_finished());
    }
}

#[test]
fn a_session_that_opens_while_the_call_rings_rings_too() {
    let now = Instant::now();
    let mut call = incoming(&[1], 486, now);
    let first = drain(&mut call);
    call.handle_session(now, SessionInput::Join { session: 2 });
    let d = drain(&mut call);
    assert_eq!(d.to(2), first.to(1), "the same `incoming` as the others");
    // Joining twice changes nothing; declining by 1 leaves 2 ringing.
    call.handle_session(now, SessionInput::Join { session: 2 });
    assert!(drain(&mut call).events.is_empty());
    call.handle_session(now, SessionInput::Reject { session: 1 });
    assert!(drain(&mut call).sip.is_empty(), "session 2 still rings");
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 2,
            sdp: browser_answer(),
        },
    );
    assert!(drain(&mut call).started_media());
    // Once answered, a newcomer is not rung.
    call.handle_session(now, SessionInput::Join { session: 3 });
    assert!(drain(&mut call).to(3).is_empty());
}

// ---- the trunk's re-INVITE and UPDATE (issue 13 item 3) -------------------

/// The trunk's offer as it re-sends it: same session, version `v`, with
/// `edit` applied.
fn reoffer(v: u32, edit: impl Fn(String) -> String) -> String {
    edit(TRUNK_OFFER.replace("o=- 1 1 ", &format!("o=- 1 {v} ")))
}

/// A re-INVITE or UPDATE of the incoming call's dialog from the trunk.
fn trunk_request(
    method: &str,
    cseq: u32,
    tag: &str,
    branch: &str,
    sdp: Option<&str>,
) -> SipMessage {
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    parse(&format!(
        "{method} sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch={branch}\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>;tag={tag}\r\n\
Call-ID: in-c1\r\nCSeq: {cseq} {method}\r\nContact: <sip:carrier@{TRUNK}>\r\n{ct}\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// The one response of `d`, with its SDP.
fn the_response(d: &Drained) -> (u16, Option<String>) {
    assert_eq!(d.sip.len(), 1, "one response: {:?}", d.sip);
    match &d.sip[0] {
        SipMessage::Response(r) => (message::status_code(r), message::sdp_body(r)),
        other => panic!("expected a response, got {other}"),
    }
}

fn timeouts(d: &Drained) -> Vec<Duration> {
    d.media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::SetTimeout(t) => Some(*t),
            _ => None,
        })
        .collect()
}

fn updates(d: &Drained) -> Vec<crate::media::relay::TrunkLegParams> {
    d.media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::UpdateTrunk(u) => Some(u.trunk.clone()),
            _ => None,
        })
        .collect()
}

/// `o=- <id> <version> ...` of an SDP.
fn origin(sdp: &str) -> (String, u64) {
    let line = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[1].to_string(), f[2].parse().unwrap())
}

/// The inline key of our (single) a=crypto line.
fn our_inline(sdp: &str) -> String {
    let line = sdp.lines().find(|l| l.starts_with("a=crypto:")).unwrap();
    line.split("inline:").nth(1).unwrap().to_string()
}

#[test]
fn a_trunk_hold_is_answered_recvonly_and_the_browser_hears_held_then_resumed() {
    let (mut call, now, tag) = connected_call(1);
    let hold = reoffer(2, |s| s.replace("a=sendrecv", "a=sendonly"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    let sdp = sdp.expect("an SDP answer");
    assert!(sdp.contains("a=recvonly"), "{sdp}");
    assert!(sdp.contains("m=audio 20002 RTP/SAVP 8 101"), "{sdp}");
    assert_eq!(origin(&sdp).1, 2, "version raised from the 200's 1");
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Held {
            by: super::api::HoldParty::Trunk,
            ..
        }]
    ));
    assert_eq!(timeouts(&d), [Duration::from_secs(3600)]);
    assert_eq!(holds(&d), [true], "our recvonly: nothing goes to the trunk");
    assert!(
        updates(&d).is_empty(),
        "same address and key: the leg stays"
    );
    assert!(!call.is_over_for_browsers());

    // The 200 is resent until its ACK, which is absorbed.
    call.handle_timeout(now + Duration::from_millis(500));
    assert_eq!(drain(&mut call).statuses(), [200]);
    call.handle_sip(
        now,
        from_trunk("ACK", 2, Some(&tag), "z9hG4bKack2"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert!(d.sip.is_empty() && d.events.is_empty());
    call.handle_timeout(now + Duration::from_secs(2));
    assert!(
        drain(&mut call).sip.is_empty(),
        "no retransmission after the ACK"
    );

    // inactive is hold too, answered inactive; nothing new for the browser.
    let inactive = reoffer(3, |s| s.replace("a=sendrecv", "a=inactive"));
    let t = now + Duration::from_secs(60);
    call.handle_sip(
        t,
        trunk_request("INVITE", 3, &tag, "z9hG4bKre3", Some(&inactive)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert!(the_response(&d).1.unwrap().contains("a=inactive"));
    assert!(d.events.is_empty());
    call.handle_sip(
        t,
        from_trunk("ACK", 3, Some(&tag), "z9hG4bKack3"),
        trunk_addr(),
    );
    drain(&mut call);

    let resume = reoffer(4, |s| s);
    call.handle_sip(
        t,
        trunk_request("INVITE", 4, &tag, "z9hG4bKre4", Some(&resume)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let sdp = the_response(&d).1.unwrap();
    assert!(sdp.contains("a=sendrecv"), "{sdp}");
    assert_eq!(origin(&sdp).1, 4);
    assert!(matches!(d.to(1)[..], [SessionEvent::Resumed { .. }]));
    assert_eq!(holds(&d), [false]);
    // The trunk gets media.timeout to start sending before the short
    // timeout is back (the relay counts silence from the last packet).
    assert!(timeouts(&d).is_empty());
    call.handle_sip(
        t,
        from_trunk("ACK", 4, Some(&tag), "z9hG4bKack4"),
        trunk_addr(),
    );
    drain(&mut call);
    call.handle_timeout(t + Duration::from_secs(30));
    assert_eq!(timeouts(&drain(&mut call)), [Duration::from_secs(30)]);
}

#[test]
fn c_0_0_0_0_is_hold_and_keeps_the_old_address() {
    let (mut call, now, tag) = connected_call(1);
    let hold = reoffer(2, |s| s.replace("c=IN IP4 10.0.0.9", "c=IN IP4 0.0.0.0"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(the_response(&d).0, 200);
    assert!(matches!(d.to(1)[..], [SessionEvent::Held { .. }]));
    assert!(updates(&d).is_empty(), "nothing is sent to 0.0.0.0");
}

#[test]
fn a_new_port_moves_the_trunk_leg_and_our_key_is_fresh() {
    let (mut call, now, tag) = connected_call(1);
    let moved = reoffer(2, |s| s.replace("m=audio 30000", "m=audio 30100"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&moved)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let sdp = the_response(&d).1.unwrap();
    let up = updates(&d);
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0].remote_rtp,
        "10.0.0.9:30100".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        up[0].remote_rtcp,
        Some("10.0.0.9:30101".parse::<SocketAddr>().unwrap())
    );
    // The media plane re-creates the SRTP contexts: our answer's key is
    // new, and it is the one the leg now sends with.
    let TrunkCrypto::Sdes { outbound, inbound } = &up[0].crypto else {
        panic!("SDES leg expected");
    };
    let crypto = crate::sdp::CryptoAttribute::parse(
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=crypto:"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(crypto.tag, 2, "the tag of the trunk's line");
    assert_eq!(&crypto.key().unwrap().material, outbound);
    assert_eq!(inbound.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert!(d.events.is_empty(), "no hold");
    assert!(timeouts(&d).is_empty());
}

#[test]
fn a_new_trunk_key_rekeys_the_leg() {
    let (mut call, now, tag) = connected_call(1);
    let new_key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
    let rekeyed = reoffer(2, |s| {
        s.replace("d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK", new_key)
    });
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&rekeyed)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(the_response(&d).0, 200);
    let up = updates(&d);
    assert_eq!(up.len(), 1);
    let TrunkCrypto::Sdes { inbound, .. } = &up[0].crypto else {
        panic!("SDES leg expected");
    };
    let line = format!("2 AES_CM_128_HMAC_SHA1_80 inline:{new_key}");
    let theirs = crate::sdp::CryptoAttribute::parse(&line).unwrap();
    assert_eq!(inbound, &theirs.key().unwrap().material);
}

#[test]
fn a_direction_change_alone_keeps_our_key() {
    let (mut call, now, tag) = connected_call(1);
    let first = reoffer(2, |s| s);
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&first)),
        trunk_addr(),
    );
    let a = the_response(&drain(&mut call)).1.unwrap();
    call.handle_sip(
        now,
        from_trunk("ACK", 2, Some(&tag), "z9hG4bKack2"),
        trunk_addr(),
    );
    let hold = reoffer(3, |s| s.replace("a=sendrecv", "a=sendonly"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 3, &tag, "z9hG4bKre3", Some(&hold)),
        trunk_addr(),
    );
    let b = the_response(&drain(&mut call)).1.unwrap();
    assert_eq!(our_inline(&a), our_inline(&b));
    assert_eq!(origin(&a).0, origin(&b).0, "one session id");
}

#[test]
fn an_unacceptable_reoffer_gets_488_and_the_call_goes_on_unchanged() {
    let (mut call, now, tag) = connected_call(1);
    let cases = [
        // RTP/AVP on a secure_media = "mandatory" trunk.
        reoffer(2, |s| {
            s.replace("RTP/SAVP", "RTP/AVP")
                .lines()
                .filter(|l| !l.starts_with("a=crypto"))
                .map(|l| format!("{l}\r\n"))
                .collect()
        }),
        // Without the call's codec (PCMA).
        reoffer(2, |s| s.replace("RTP/SAVP 0 8 101", "RTP/SAVP 0 101")),
        // Only a suite the trunk's srtp_suites do not allow.
        reoffer(2, |s| {
            s.replace("AES_CM_128_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_80")
                .replace(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_32",
                    "a=crypto:1 AES_256_CM_HMAC_SHA1_32",
                )
        }),
        "v=0\r\ngarbage".to_string(),
    ];
    for (i, sdp) in cases.iter().enumerate() {
        let cseq = 2 + i as u32;
        call.handle_sip(
            now,
            trunk_request("INVITE", cseq, &tag, &format!("z9hG4bKbad{i}"), Some(sdp)),
            trunk_addr(),
        );
        let d = drain(&mut call);
        assert_eq!(d.statuses(), [488], "case {i}");
        assert!(
            d.media.is_empty() && d.events.is_empty(),
            "case {i}: unchanged"
        );
        // The ACK of the 488 (same branch) is absorbed by the dialog.
        call.handle_sip(
            now,
            from_trunk("ACK", cseq, Some(&tag), &format!("z9hG4bKbad{i}")),
            trunk_addr(),
        );
        assert!(drain(&mut call).sip.is_empty());
    }
    assert!(!call.is_over_for_browsers());
    // The next good offer is answered from the unchanged session.
    let hold = reoffer(9, |s| s.replace("a=sendrecv", "a=sendonly"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 9, &tag, "z9hG4bKre9", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(origin(&the_response(&d).1.unwrap()).1, 2);
    assert!(updates(&d).is_empty());
}

#[test]
fn update_with_sdp_is_answered_in_its_200_and_without_sdp_is_just_200() {
    let (mut call, now, tag) = connected_call(1);
    let hold = reoffer(2, |s| s.replace("a=sendrecv", "a=sendonly"));
    call.handle_sip(
        now,
        trunk_request("UPDATE", 2, &tag, "z9hG4bKup2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    assert!(sdp.unwrap().contains("a=recvonly"));
    assert!(matches!(d.to(1)[..], [SessionEvent::Held { .. }]));
    // No retransmission for a non-INVITE's 200.
    call.handle_timeout(now + Duration::from_secs(1));
    assert!(drain(&mut call).sip.is_empty());
    // A retransmitted UPDATE gets the same answer, without a second event.
    call.handle_sip(
        now,
        trunk_request("UPDATE", 2, &tag, "z9hG4bKup2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert!(d.events.is_empty());

    call.handle_sip(
        now,
        trunk_request("UPDATE", 3, &tag, "z9hG4bKup3", None),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(the_response(&d), (200, None));
    assert!(d.events.is_empty() && d.media.is_empty());
}

#[test]
fn a_reinvite_crossing_an_open_invite_gets_491() {
    // Before the trunk ACKed our 200 to its INVITE.
    let now = Instant::now();
    let mut call = incoming(&[1], 486, now);
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer(),
        },
    );
    drain(&mut call);
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let tag = to_tag_of(drain(&mut call).ok_to_invite().unwrap());
    let hold = reoffer(2, |s| s.replace("a=sendrecv", "a=sendonly"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [491]);
    assert!(d.events.is_empty() && d.media.is_empty());

    // After the ACK: while our 200 to a re-INVITE waits for its ACK, a
    // second re-INVITE is glare as well.
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
        trunk_addr(),
    );
    drain(&mut call);
    call.handle_sip(
        now,
        trunk_request("INVITE", 3, &tag, "z9hG4bKre3", Some(&hold)),
        trunk_addr(),
    );
    assert_eq!(drain(&mut call).statuses(), [200]);
    let resume = reoffer(3, |s| s);
    call.handle_sip(
        now,
        trunk_request("INVITE", 4, &tag, "z9hG4bKre4", Some(&resume)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [491]);
    assert!(d.events.is_empty(), "still held");
}

#[test]
fn a_held_call_switches_to_the_hold_timeout_and_back() {
    // The relay ends a call after `SetTimeout` of silence; the call tells
    // it the configured values: media.timeout, media.hold_timeout.
    let now = Instant::now();
    let mut call = incoming(&[1], 486, now);
    drain(&mut call);
    let d = accept_and_connect(&mut call, now);
    assert_eq!(timeouts(&d), [Duration::from_secs(30)]);
    let tag = to_tag_of(d.ok_to_invite().unwrap());
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
        trunk_addr(),
    );
    drain(&mut call);
    let hold = reoffer(2, |s| s.replace("a=sendrecv", "a=inactive"));
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&hold)),
        trunk_addr(),
    );
    assert_eq!(timeouts(&drain(&mut call)), [Duration::from_secs(3600)]);
    call.handle_sip(
        now,
        from_trunk("ACK", 2, Some(&tag), "z9hG4bKack2"),
        trunk_addr(),
    );
    // 30 s and more later the call is up: nothing shortens the timeout.
    for s in [31, 600, 3599] {
        call.handle_timeout(now + Duration::from_secs(s));
        let d = drain(&mut call);
        assert!(timeouts(&d).is_empty() && d.events.is_empty(), "{s}");
    }
    assert!(!call.is_over_for_browsers());
    // The relay reports the hold timeout: the call ends.
    call.handle_media(now + Duration::from_secs(3600), MediaEvent::Timeout);
    let d = drain(&mut call);
    assert!(d.hangup_of(1).is_some());
    assert!(d.requests().contains(&"BYE".to_string()));
}

#[test]
fn a_reinvite_without_sdp_gets_our_offer_and_the_ack_answers_it() {
    let (mut call, now, tag) = connected_call(1);
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", None),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    let offer = sdp.expect("our offer in the 200");
    assert!(
        offer.contains("a=sendrecv") && offer.contains("m=audio 20002 RTP/SAVP 8 101"),
        "{offer}"
    );
    assert!(
        offer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{offer}"
    );
    assert!(d.media.is_empty());
    // The ACK carries the answer: a new port, on hold.
    let answer = reoffer(2, |s| {
        s.replace("m=audio 30000", "m=audio 30200")
            .replace("a=sendrecv", "a=sendonly")
            .replace("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n", "")
    });
    let mut ack = trunk_request("ACK", 2, &tag, "z9hG4bKack2", Some(&answer));
    if let SipMessage::Request(r) = &mut ack {
        r.headers.retain(|h| !matches!(h, rsip::Header::Contact(_)));
    }
    call.handle_sip(now, ack, trunk_addr());
    let d = drain(&mut call);
    assert!(d.sip.is_empty());
    let up = updates(&d);
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0].remote_rtp,
        "10.0.0.9:30200".parse::<SocketAddr>().unwrap()
    );
    let TrunkCrypto::Sdes { outbound, .. } = &up[0].crypto else {
        panic!("SDES leg expected");
    };
    let line = format!("2 AES_CM_128_HMAC_SHA1_80 inline:{}", our_inline(&offer));
    assert_eq!(
        &crate::sdp::CryptoAttribute::parse(&line)
            .unwrap()
            .key()
            .unwrap()
            .material,
        outbound
    );
    assert!(matches!(d.to(1)[..], [SessionEvent::Held { .. }]));
}

/// The trunk's re-INVITE on an outgoing call (the `sip::uac` side), plain
/// RTP: answered from the trunk leg's session, o= of our INVITE's offer.
#[test]
fn an_outgoing_calls_trunk_can_hold_and_move_too() {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(
            SecureMedia::Forbidden,
            CallerStream::RelayOrDecrypt,
            Some(CalleeStream::Decrypted),
        ),
        now,
    );
    let invite = the_invite(&drain(&mut call));
    let our_offer = String::from_utf8(invite.body.clone()).unwrap();
    call.handle_sip(now, reply(&invite, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert!(d.started_media());
    let from = message::header_values(&invite, "From")[0].clone();
    let request = |method: &str, cseq: u32, branch: &str, sdp: &str| {
        parse(&format!(
            "{method} sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch={branch}\r\n\
From: <sip:15551234@127.0.0.1>;tag=t1\r\nTo: {from}\r\nCall-ID: out-p1\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:x@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ))
    };
    let hold = PLAIN_ANSWER
        .replace("o=- 1 1", "o=- 1 2")
        .replace("m=audio 30000", "m=audio 30400")
        + "a=sendonly\r\n";
    call.handle_sip(now, request("INVITE", 7, "z9hG4bKo7", &hold), trunk_addr());
    let d = drain(&mut call);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    let sdp = sdp.unwrap();
    assert!(
        sdp.contains("a=recvonly") && sdp.contains("RTP/AVP 0"),
        "{sdp}"
    );
    assert_eq!(origin(&sdp).0, origin(&our_offer).0, "our INVITE's session");
    assert_eq!(origin(&sdp).1, origin(&our_offer).1 + 1);
    assert!(matches!(d.to(7)[..], [SessionEvent::Held { .. }]));
    let up = updates(&d);
    assert_eq!(
        up[0].remote_rtp,
        "10.0.0.9:30400".parse::<SocketAddr>().unwrap()
    );
    assert!(matches!(up[0].crypto, TrunkCrypto::Plain));
    call.handle_sip(now, request("ACK", 7, "z9hG4bKa7", ""), trunk_addr());
    assert!(drain(&mut call).sip.is_empty());
    // An SRTP offer on this plain leg: 488, unchanged.
    call.handle_sip(
        now,
        request("INVITE", 8, "z9hG4bKo8", TRUNK_OFFER),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [488]);
    assert!(d.events.is_empty() && d.media.is_empty());
}

// ---- DTMF -------------------------------------------------------------------

fn digits(text: &str) -> Vec<crate::types::DtmfDigit> {
    text.chars()
        .map(|c| crate::types::DtmfDigit::from_char(c).unwrap())
        .collect()
}

fn dtmf_sent(d: &Drained) -> String {
    d.media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::Dtmf(crate::media::rewrite::Toward::Trunk, digit) => {
                Some(digit.as_char())
            }
            _ => None,
        })
        .collect()
}

// ---- the browser's hold and resume (issue 13 item 2) ----------------------

/// The trunk's answer to a request of ours in the incoming call's dialog.
fn answer_ours(req: &rsip::Request, code: u16, sdp: Option<&str>) -> SipMessage {
    SipMessage::Response(message::build_response(
        req,
        code,
        message::ResponseParts {
            contact: Some("<sip:carrier@127.0.0.1:5070>"),
            body: sdp.map(|b| ("application/sdp", b)),
            ..Default::default()
        },
    ))
}

fn holds(d: &Drained) -> Vec<bool> {
    d.media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::Hold(h) => Some(*h),
            _ => None,
        })
        .collect()
}

fn error_of(d: &Drained, session: SessionKey) -> Option<(u16, String)> {
    d.to(session).into_iter().find_map(|e| match e {
        SessionEvent::Error { code, message, .. } => Some((*code, message.clone())),
        _ => None,
    })
}

fn dtmf_heard(d: &Drained, session: SessionKey) -> String {
    d.to(session)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Dtmf { id, digit } => {
                assert_eq!(id.0, "in-1");
                Some(digit.as_char())
            }
            _ => None,
        })
        .collect()
}

fn errors(d: &Drained, session: SessionKey) -> Vec<u16> {
    d.to(session)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

#[test]
fn browser_digits_go_to_the_media_of_the_owner_only() {
    let (mut call, now, _) = connected_call(2);
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 1,
            digits: digits("1#"),
        },
    );
    let d = drain(&mut call);
    assert_eq!(dtmf_sent(&d), "1#");
    assert!(d.sip.is_empty() && d.events.is_empty(), "{d:?}");
    assert_eq!(d.dtmf_counted, [(true, false, 2)], "counted as RFC 4733");
    // Another session of the account that rang: not its call.
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 2,
            digits: digits("5"),
        },
    );
    let d = drain(&mut call);
    assert_eq!(dtmf_sent(&d), "");
    assert_eq!(error_of(&d, 2).map(|e| e.0), Some(404));
}

/// The `Signal=` of each INFO in `d`.
fn info_signals(d: &Drained) -> String {
    requests_of(d, rsip::Method::Info)
        .iter()
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body).to_string();
            assert!(
                message::header_values(r, "Content-Type")
                    .iter()
                    .any(|t| t == "application/dtmf-relay"),
                "{r}"
            );
            assert!(body.ends_with("\r\nDuration=100\r\n"), "{body:?}");
            body.strip_prefix("Signal=")
                .unwrap()
                .chars()
                .next()
                .unwrap()
        })
        .collect()
}

#[test]
fn digits_before_the_media_are_refused_and_without_telephone_event_go_by_sip_info() {
    let now = Instant::now();
    let mut call = outgoing_with(account(), now);
    let d = drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 7,
            digits: digits("1"),
        },
    );
    let refused = drain(&mut call);
    assert_eq!(error_of(&refused, 7).map(|e| e.0), Some(409));
    // The trunk answers without telephone-event (it was offered: Chrome's
    // /8000 with Chrome's number).
    let invite = the_invite(&d);
    let offer = String::from_utf8_lossy(&invite.body).to_string();
    assert!(
        offer.contains("a=rtpmap:126 telephone-event/8000"),
        "{offer}"
    );
    let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n";
    call.handle_sip(now, reply(&invite, 200, Some(answer)), trunk_addr());
    let d = drain(&mut call);
    assert!(d.started_media(), "{d:?}");
    let te = d.media.iter().find_map(|m| match m {
        MediaCommand::Start(p) => Some(p.telephone_event),
        _ => None,
    });
    assert_eq!(te, Some(None));
    // Without telephone-event the digits go as SIP INFO, one at a time,
    // each after the previous one's answer and 200 ms after it went.
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 7,
            digits: digits("1#"),
        },
    );
    let d = drain(&mut call);
    assert_eq!(info_signals(&d), "1");
    assert_eq!(dtmf_sent(&d), "");
    assert!(error_of(&d, 7).is_none(), "{d:?}");
    assert_eq!(d.dtmf_counted, [(true, true, 2)], "counted as INFO");
    let first = requests_of(&d, rsip::Method::Info).remove(0);
    let t = now + Duration::from_millis(50);
    call.handle_sip(t, reply(&first, 200, None), trunk_addr());
    assert_eq!(info_signals(&drain(&mut call)), "", "not before 200 ms");
    assert_eq!(call.poll_timeout(), Some(now + Duration::from_millis(200)));
    call.handle_timeout(now + Duration::from_millis(200));
    let d = drain(&mut call);
    assert_eq!(info_signals(&d), "#");
    let second = requests_of(&d, rsip::Method::Info).remove(0);
    assert!(
        message::cseq(&second).unwrap().0 > message::cseq(&first).unwrap().0,
        "a new CSeq per INFO"
    );
    // Until it is answered, nothing else goes, however late.
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 7,
            digits: digits("57"),
        },
    );
    assert_eq!(info_signals(&drain(&mut call)), "");
    let t = now + Duration::from_millis(600);
    call.handle_sip(t, reply(&second, 200, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(info_signals(&d), "5");
    // A refusal drops what is left and tells the browser why.
    let third = requests_of(&d, rsip::Method::Info).remove(0);
    call.handle_sip(t, reply(&third, 415, None), trunk_addr());
    let d = drain(&mut call);
    let (code, message) = error_of(&d, 7).expect("an error");
    assert_eq!(code, 488);
    assert!(message.contains("SIP INFO (415)"), "{message}");
    call.handle_timeout(t + Duration::from_secs(1));
    assert_eq!(info_signals(&drain(&mut call)), "", "the 7 was dropped");
    // The call goes on: the next digits are tried again.
    call.handle_session(
        t + Duration::from_secs(1),
        SessionInput::Dtmf {
            session: 7,
            digits: digits("9"),
        },
    );
    assert_eq!(info_signals(&drain(&mut call)), "9");
}

#[test]
fn an_incoming_call_without_telephone_event_sends_digits_by_sip_info() {
    let offer = TRUNK_OFFER
        .replace(" 0 8 101\r\n", " 0 8\r\n")
        .replace("a=rtpmap:101 telephone-event/8000\r\n", "");
    let (mut call, now, tag) = connected_call_offering(account(), 1, browser_answer(), &offer);
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 1,
            digits: digits("4*"),
        },
    );
    let d = drain(&mut call);
    assert_eq!(info_signals(&d), "4");
    assert!(error_of(&d, 1).is_none(), "{d:?}");
    let info = requests_of(&d, rsip::Method::Info).remove(0);
    // In the server dialog: toward the caller's Contact, our tag as From.
    assert_eq!(info.uri.to_string(), format!("sip:carrier@{TRUNK}"));
    assert!(
        message::header_values(&info, "From")[0].contains(&format!("tag={tag}")),
        "{info}"
    );
    call.handle_sip(now, answer_ours(&info, 200, None), trunk_addr());
    call.handle_timeout(now + Duration::from_millis(200));
    assert_eq!(info_signals(&drain(&mut call)), "*");
}

#[test]
fn an_outgoing_call_sends_digits_with_the_trunks_telephone_event() {
    let now = Instant::now();
    let mut call = outgoing_with(account(), now);
    let d = drain(&mut call);
    let invite = the_invite(&d);
    let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n";
    call.handle_sip(now, reply(&invite, 200, Some(answer)), trunk_addr());
    let d = drain(&mut call);
    let te = d.media.iter().find_map(|m| match m {
        MediaCommand::Start(p) => p.telephone_event,
        _ => None,
    });
    let te = te.expect("telephone-event negotiated");
    assert_eq!(
        (te.trunk.0, te.browser.map(|p| p.0), te.clock_rate),
        (101, Some(126), 8000)
    );
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 7,
            digits: digits("*0"),
        },
    );
    assert_eq!(dtmf_sent(&drain(&mut call)), "*0");
}

#[test]
fn an_incoming_call_keeps_the_trunks_telephone_event_for_a_browser_without_it() {
    let now = Instant::now();
    let mut call = incoming(&[1], 486, now);
    drain(&mut call);
    let answer = browser_answer()
        .replace("SAVPF 8 101", "SAVPF 8")
        .replace("a=rtpmap:101 telephone-event/8000\r\n", "");
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: answer,
        },
    );
    let d = drain(&mut call);
    let te = d.media.iter().find_map(|m| match m {
        MediaCommand::Start(p) => p.telephone_event,
        _ => None,
    });
    let te = te.expect("the trunk's telephone-event is kept");
    assert_eq!((te.trunk.0, te.browser), (101, None));
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    let ok = d.ok_to_invite().expect("200 OK");
    let sdp = String::from_utf8_lossy(&ok.body).to_string();
    assert!(sdp.contains("m=audio 20002 RTP/SAVP 8 101"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:101 telephone-event/8000"), "{sdp}");
}

#[test]
fn trunk_digits_by_rfc_4733_and_by_info_reach_the_owner() {
    let (mut call, now, tag) = connected_call(2);
    call.handle_media(
        now,
        MediaEvent::Dtmf {
            digit: digits("7")[0],
        },
    );
    let d = drain(&mut call);
    assert_eq!(dtmf_heard(&d, 1), "7");
    assert_eq!(dtmf_heard(&d, 2), "", "only the session that answered");
    assert!(
        d.media.is_empty(),
        "RFC 4733 events are relayed as they are"
    );

    let info = |cseq: u32, ct: &str, body: &str| {
        parse(&format!(
            "INFO sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKinfo{cseq}\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>;tag={tag}\r\n\
Call-ID: in-c1\r\nCSeq: {cseq} INFO\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    call.handle_sip(
        now,
        info(2, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert_eq!(dtmf_heard(&d, 1), "5");
    // The browser negotiated telephone-event: it is played the digit too.
    assert!(
        matches!(d.media.as_slice(), [MediaCommand::Dtmf(crate::media::rewrite::Toward::Browser, x)] if x.as_char() == '5'),
        "{:?}",
        d.media
    );
    call.handle_sip(now, info(3, "application/dtmf", "#"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!((d.statuses(), dtmf_heard(&d, 1)), (vec![200], "#".into()));
    call.handle_sip(now, info(4, "text/plain", "hello"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(
        (d.statuses(), dtmf_heard(&d, 1)),
        (vec![415], String::new())
    );
    assert!(!call.is_over_for_browsers());
}

#[test]
fn the_browsers_hold_is_a_sendonly_reinvite_and_resume_a_sendrecv_one() {
    use super::api::HoldParty;
    let (mut call, now, _tag) = connected_call(1);
    let hold = |call: &mut Call, t: Instant, on: bool| {
        call.handle_session(
            t,
            SessionInput::Hold {
                session: 1,
                hold: on,
            },
        )
    };
    hold(&mut call, now, true);
    let d = drain(&mut call);
    assert!(
        d.events.is_empty(),
        "nothing for the browser before the 200"
    );
    let reinvite = the_invite(&d);
    assert_eq!(message::cseq(&reinvite).unwrap().0, 1, "our first request");
    let offer = String::from_utf8(reinvite.body.clone()).unwrap();
    assert!(offer.contains("a=sendonly"), "{offer}");
    assert!(offer.contains("m=audio 20002 RTP/SAVP 8 101"), "{offer}");
    assert_eq!(origin(&offer).1, 2, "version raised from the 200's 1");
    let first_key = our_inline(&offer);
    // A second hold while the first is out: refused, nothing sent.
    hold(&mut call, now, true);
    let d = drain(&mut call);
    assert_eq!(errors(&d, 1), [409]);
    assert!(d.sip.is_empty());

    let answer = reoffer(2, |s| s.replace("a=sendrecv", "a=recvonly"));
    call.handle_sip(
        now,
        answer_ours(&reinvite, 200, Some(&answer)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Held {
            by: HoldParty::Browser,
            ..
        }]
    ));
    assert_eq!(holds(&d), [true]);
    assert_eq!(timeouts(&d), [Duration::from_secs(3600)]);
    assert!(
        updates(&d).is_empty(),
        "a direction change keeps the leg and its keys"
    );

    // Resume: sendrecv; the trunk's re-INVITE crosses it (491), we retry
    // within 0-2 s (the trunk owns this Call-ID).
    let t = now + Duration::from_secs(40);
    hold(&mut call, t, false);
    let resume = the_invite(&drain(&mut call));
    let offer = String::from_utf8(resume.body.clone()).unwrap();
    assert!(offer.contains("a=sendrecv"), "{offer}");
    assert_eq!(origin(&offer).1, 3);
    assert_eq!(our_inline(&offer), first_key, "the same key");
    call.handle_sip(t, answer_ours(&resume, 491, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"], "the 491 is ACKed");
    assert!(d.events.is_empty());
    let at = call.poll_timeout().unwrap();
    assert!(at > t && at <= t + Duration::from_secs(2), "{:?}", at - t);
    call.handle_timeout(at);
    let again = the_invite(&drain(&mut call));
    assert_eq!(message::cseq(&again).unwrap().0, 3);
    assert_eq!(again.body, resume.body, "the same offer again");
    let answer = reoffer(3, |s| s);
    call.handle_sip(at, answer_ours(&again, 200, Some(&answer)), trunk_addr());
    let d = drain(&mut call);
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Resumed {
            by: HoldParty::Browser,
            ..
        }]
    ));
    assert_eq!(holds(&d), [false]);
    // As after the trunk's resume: media.timeout comes back once the
    // trunk had that long to send again.
    assert!(timeouts(&d).is_empty());
    call.handle_timeout(at + Duration::from_secs(30));
    assert_eq!(timeouts(&drain(&mut call)), [Duration::from_secs(30)]);

    // A refused hold: the browser hears the code, the call stays as it was.
    let t = at + Duration::from_secs(31);
    hold(&mut call, t, true);
    let refused = the_invite(&drain(&mut call));
    call.handle_sip(t, answer_ours(&refused, 488, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(errors(&d, 1), [488]);
    assert!(d.media.is_empty());
    assert!(!call.is_over_for_browsers());
    // Resuming what is not held just says so again.
    hold(&mut call, t, false);
    let d = drain(&mut call);
    assert!(d.sip.is_empty());
    assert!(matches!(d.to(1)[..], [SessionEvent::Resumed { .. }]));
}

#[test]
fn a_hold_needs_a_connected_call_of_ones_own_and_481_ends_it() {
    let (mut call, now, tag) = connected_call(2);
    // Session 2 rang but did not answer: not its call.
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 2,
            hold: true,
        },
    );
    let d = drain(&mut call);
    assert_eq!(errors(&d, 2), [404]);
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 1,
            hold: true,
        },
    );
    let reinvite = the_invite(&drain(&mut call));
    // The trunk's own re-INVITE while ours is out: glare, 491.
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&reoffer(2, |s| s))),
        trunk_addr(),
    );
    assert_eq!(the_response(&drain(&mut call)).0, 491);
    call.handle_sip(now, answer_ours(&reinvite, 481, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "BYE"]);
    assert_eq!(d.hangup_of(1).map(|h| h.0), Some(481));
    assert!(call.is_over_for_browsers());
}

#[test]
fn a_trunk_reoffer_while_the_browser_holds_is_answered_without_receiving() {
    let (mut call, now, tag) = connected_call(1);
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 1,
            hold: true,
        },
    );
    let reinvite = the_invite(&drain(&mut call));
    let answer = reoffer(2, |s| s.replace("a=sendrecv", "a=recvonly"));
    call.handle_sip(
        now,
        answer_ours(&reinvite, 200, Some(&answer)),
        trunk_addr(),
    );
    drain(&mut call);
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&reoffer(3, |s| s))),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let sdp = the_response(&d).1.unwrap();
    assert!(sdp.contains("a=sendonly"), "{sdp}");
    assert!(d.events.is_empty(), "neither held nor resumed by the trunk");
}

// ---- blind transfer from the browser (issue 13 item 6) --------------------

/// A NOTIFY of the trunk about our REFER, in the incoming call's dialog.
fn notify(tag: &str, cseq: u32, frag: &str) -> SipMessage {
    parse(&format!(
        "NOTIFY sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKn{cseq}\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>;tag={tag}\r\n\
Call-ID: in-c1\r\nCSeq: {cseq} NOTIFY\r\nEvent: refer\r\nSubscription-State: active\r\n\
Content-Type: message/sipfrag\r\nContent-Length: {}\r\n\r\n{frag}",
        frag.len()
    ))
}

fn transferred(d: &Drained, session: SessionKey) -> Vec<(String, u16)> {
    d.to(session)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Transferred { to, code, .. } => Some((to.clone(), *code)),
            _ => None,
        })
        .collect()
}

fn the_refer(d: &Drained) -> rsip::Request {
    d.sip
        .iter()
        .find_map(|m| match m {
            SipMessage::Request(r) if r.method == rsip::Method::Refer => Some(r.clone()),
            _ => None,
        })
        .expect("a REFER went out")
}

#[test]
fn a_transfer_is_a_refer_whose_notify_reports_and_ends_our_part() {
    let (mut call, now, tag) = connected_call(1);
    let transfer = |call: &mut Call, to: &str| {
        call.handle_session(
            now,
            SessionInput::Transfer {
                session: 1,
                to: to.into(),
            },
        )
    };
    transfer(&mut call, "200");
    let refer = the_refer(&drain(&mut call));
    assert_eq!(
        message::header_values(&refer, "Refer-To"),
        [format!("<sip:200@{TRUNK}>")]
    );
    // One at a time.
    transfer(&mut call, "201");
    assert_eq!(errors(&drain(&mut call), 1), [409]);
    call.handle_sip(now, answer_ours(&refer, 202, None), trunk_addr());
    assert!(drain(&mut call).events.is_empty());
    call.handle_sip(now, notify(&tag, 2, "SIP/2.0 100 Trying\r\n"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200], "each NOTIFY is answered 200");
    assert!(d.events.is_empty());
    call.handle_sip(now, notify(&tag, 3, "SIP/2.0 200 OK\r\n"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert_eq!(transferred(&d, 1), [("200".to_string(), 200)]);
    assert_eq!(d.requests(), ["BYE"]);
    assert_eq!(d.hangup_of(1), Some((200, "transferred".into())));
}

#[test]
fn a_refused_refer_is_reported_and_the_call_goes_on() {
    let (mut call, now, _tag) = connected_call(1);
    call.handle_session(
        now,
        SessionInput::Transfer {
            session: 1,
            to: "200".into(),
        },
    );
    let refer = the_refer(&drain(&mut call));
    call.handle_sip(now, answer_ours(&refer, 603, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(transferred(&d, 1), [("200".to_string(), 603)]);
    assert!(!call.is_over_for_browsers());
    assert!(!d.requests().contains(&"BYE".to_string()));
}

// ---- session timers through the call (issue 13 item 5) --------------------

/// An outgoing call (plain RTP) whose 200 carries `extra` headers, its
/// browser DTLS up: connected.
fn outgoing_answered_with(extra: Vec<rsip::Header>, now: Instant) -> (Call, rsip::Request) {
    let mut call = outgoing_with(
        account_with(
            SecureMedia::Forbidden,
            CallerStream::RelayOrDecrypt,
            Some(CalleeStream::Decrypted),
        ),
        now,
    );
    let invite = the_invite(&drain(&mut call));
    let SipMessage::Response(mut ok) = reply(&invite, 200, Some(PLAIN_ANSWER)) else {
        unreachable!()
    };
    ok.headers.extend(extra);
    call.handle_sip(now, SipMessage::Response(ok), trunk_addr());
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    assert_eq!(drain(&mut call).connected, 1);
    (call, invite)
}

#[test]
fn a_trunk_that_stops_refreshing_gets_bye_and_the_browser_hears_why() {
    let now = Instant::now();
    let se = rsip::Header::Other("Session-Expires".into(), "90;refresher=uas".into());
    let (mut call, _) = outgoing_answered_with(vec![se], now);
    // 90 - 30 s: nothing before, BYE at it.
    assert_eq!(call.poll_timeout(), Some(now + Duration::from_secs(60)));
    call.handle_timeout(now + Duration::from_secs(59));
    assert!(drain(&mut call).sip.is_empty());
    call.handle_timeout(now + Duration::from_secs(60));
    let d = drain_anywhere(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    let (code, reason) = d.hangup_of(7).unwrap();
    assert_eq!(code, 408);
    assert!(reason.contains("session timer expired"), "{reason}");
    assert!(d.stopped_media());
}

#[test]
fn as_refresher_without_update_the_call_reinvites_with_the_same_sdp() {
    let now = Instant::now();
    let se = rsip::Header::Other("Session-Expires".into(), "120".into());
    let (mut call, invite) = outgoing_answered_with(vec![se], now);
    let first = String::from_utf8(invite.body.clone()).unwrap();
    let t = now + Duration::from_secs(60);
    call.handle_timeout(t);
    let d = drain_anywhere(&mut call);
    let refresh = the_invite(&d);
    let sdp = String::from_utf8(refresh.body.clone()).unwrap();
    assert!(
        sdp.contains("a=sendrecv") && sdp.contains("RTP/AVP 0"),
        "{sdp}"
    );
    assert_eq!(origin(&sdp).0, origin(&first).0, "the same session");
    assert_eq!(
        message::header_values(&refresh, "Session-Expires"),
        ["120;refresher=uac"]
    );
    assert!(d.events.is_empty(), "nothing for the browser");
    let answer = PLAIN_ANSWER.replace("o=- 1 1", "o=- 1 2");
    call.handle_sip(t, reply(&refresh, 200, Some(&answer)), trunk_addr());
    let d = drain_anywhere(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(d.events.is_empty());
    assert!(
        d.media.is_empty(),
        "same address, codec and keys: nothing moves"
    );
    assert_eq!(call.poll_timeout(), Some(t + Duration::from_secs(60)));
}

#[test]
fn a_trunks_refer_is_refused_603_where_accept_refer_is_false() {
    // account() has accept_refer = false.
    let (mut call, now, tag) = connected_call(1);
    call.handle_sip(
        now,
        trunk_request("REFER", 2, &tag, "z9hG4bKref2", None),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [603]);
    assert!(d.events.is_empty() && d.media.is_empty());
    assert!(!call.is_over_for_browsers());
}

// ---- a REFER of the trunk carried out (issue 13 item 6) ------------------

fn account_accepting_refer() -> Arc<Account> {
    let base = account();
    let mut trunk = (*base.trunk).clone();
    trunk.accept_refer = true;
    Arc::new(Account {
        trunk: Arc::new(trunk),
        ..(*base).clone()
    })
}

/// The trunk's REFER in the incoming call's dialog, with `refer_to`.
fn trunk_refer(tag: &str, cseq: u32, refer_to: &str) -> SipMessage {
    let SipMessage::Request(mut req) =
        trunk_request("REFER", cseq, tag, &format!("z9hG4bKref{cseq}"), None)
    else {
        unreachable!()
    };
    req.headers
        .push(rsip::Header::Other("Refer-To".into(), refer_to.into()));
    req.headers.push(rsip::Header::Other(
        "Referred-By".into(),
        "<sip:+4930123@carrier.example>".into(),
    ));
    SipMessage::Request(req)
}

/// The transfer target's answer: another address and key, PCMA at 18.
const TARGET_ANSWER: &str = "v=0\r\no=- 5 1 IN IP4 10.0.0.77\r\ns=-\r\nc=IN IP4 10.0.0.77\r\nt=0 0\r\n\
m=audio 40000 RTP/SAVP 18 101\r\na=rtpmap:18 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:YUJDZGVmZ2hpSktMbW5vUHFyc3RVVldYeXoxMjM0\r\na=sendrecv\r\n";

fn requests_of(d: &Drained, method: rsip::Method) -> Vec<rsip::Request> {
    d.sip
        .iter()
        .filter_map(|m| match m {
            SipMessage::Request(r) if r.method == method => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn by_trunk(d: &Drained, session: SessionKey) -> Vec<(String, u16)> {
    d.to(session)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::TransferredByTrunk { to, code, .. } => Some((to.clone(), *code)),
            _ => None,
        })
        .collect()
}

/// The sipfrag status and Subscription-State of a NOTIFY of ours.
fn notify_of(req: &rsip::Request) -> (String, String, String) {
    (
        String::from_utf8(req.body.clone()).unwrap(),
        message::header_values(req, "Subscription-State").join(","),
        message::header_values(req, "Event").join(","),
    )
}

/// A connected incoming call whose trunk sent REFER to 200: the new
/// INVITE is out. Returns the call, the clock, our tag in the old dialog
/// and the new INVITE.
fn trunk_transfer_started() -> (Call, Instant, String, rsip::Request) {
    let (mut call, now, tag) = connected_call_for(account_accepting_refer(), 1);
    call.handle_sip(
        now,
        trunk_refer(&tag, 2, "<sip:200@127.0.0.1:5070>"),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [202]);
    let notifies = requests_of(&d, rsip::Method::Notify);
    assert_eq!(notifies.len(), 1);
    assert_eq!(
        notify_of(&notifies[0]),
        (
            "SIP/2.0 100 Trying\r\n".into(),
            "active;expires=60".into(),
            "refer;id=2".into()
        )
    );
    let invite = the_invite(&d);
    assert_eq!(invite.uri.to_string(), "sip:200@127.0.0.1:5070");
    let new_id = message::call_id(&invite).unwrap();
    assert_ne!(new_id, "in-c1");
    assert_eq!(d.call_ids, [new_id]);
    assert_eq!(
        message::header_values(&invite, "Referred-By"),
        ["<sip:+4930123@carrier.example>"]
    );
    assert!(message::header_values(&invite, "Allow")
        .join(",")
        .contains("REFER"));
    let offer = String::from_utf8(invite.body.clone()).unwrap();
    // Only the codec the browser runs, with telephone-event; SDES.
    assert!(offer.contains("m=audio 20002 RTP/SAVP 8 101"), "{offer}");
    assert!(
        offer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_80"),
        "{offer}"
    );
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 100)]);
    assert!(
        d.media.is_empty(),
        "the browser keeps hearing the transferor"
    );
    (call, now, tag, invite)
}

#[test]
fn a_trunks_refer_moves_the_trunk_leg_to_the_new_call_and_ends_the_old_dialog() {
    let (mut call, now, _tag, invite) = trunk_transfer_started();
    call.handle_sip(now, reply(&invite, 180, None), trunk_addr());
    assert!(drain(&mut call).events.is_empty());
    call.handle_sip(now, reply(&invite, 200, Some(TARGET_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    // ACK in the new dialog, NOTIFY 200 (terminated) and BYE in the old.
    assert_eq!(d.requests(), ["ACK", "NOTIFY", "BYE"]);
    let ids: Vec<String> = d
        .sip
        .iter()
        .map(|m| match m {
            SipMessage::Request(r) => message::call_id(r).unwrap(),
            SipMessage::Response(r) => message::call_id(r).unwrap(),
        })
        .collect();
    let new_id = message::call_id(&invite).unwrap();
    assert_eq!(ids, [new_id.clone(), "in-c1".into(), "in-c1".into()]);
    let notify = &requests_of(&d, rsip::Method::Notify)[0];
    assert_eq!(
        notify_of(notify),
        (
            "SIP/2.0 200 OK\r\n".into(),
            "terminated;reason=noresource".into(),
            "refer;id=2".into()
        )
    );
    match d.media.as_slice() {
        [MediaCommand::UpdateTrunk(update)] => {
            let (params, map) = (&update.trunk, &update.payload_map);
            assert_eq!(
                params.remote_rtp,
                "10.0.0.77:40000".parse::<SocketAddr>().unwrap()
            );
            assert!(
                map.contains(&(
                    crate::types::PayloadType(8),
                    crate::types::PayloadType(18),
                    8000
                )),
                "{map:?}"
            );
            assert!(
                map.contains(&(
                    crate::types::PayloadType(101),
                    crate::types::PayloadType(101),
                    8000
                )),
                "{map:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 200)]);
    assert_eq!(
        d.transfers,
        [("200".to_string(), new_id.clone())],
        "the record names the target and the new dialog"
    );
    assert!(!call.is_over_for_browsers());
    // The old dialog's BYE is answered; the call goes on.
    let bye = &requests_of(&d, rsip::Method::Bye)[0];
    call.handle_sip(now, answer_ours(bye, 200, None), trunk_addr());
    assert!(drain(&mut call).events.is_empty());
    assert!(!call.is_over_for_browsers() && !call.is_finished());
    // The call is the new dialog's now: hold goes there, its BYE ends it.
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 1,
            hold: true,
        },
    );
    let d = drain(&mut call);
    let reinvite = the_invite(&d);
    assert_eq!(message::call_id(&reinvite).unwrap(), new_id);
    assert!(String::from_utf8(reinvite.body.clone())
        .unwrap()
        .contains("RTP/SAVP 18 101"));
    let SipMessage::Request(mut target_bye) = trunk_request("BYE", 9, "ftag", "z9hG4bKtb", None)
    else {
        unreachable!()
    };
    // The target's BYE: its tags are the new dialog's (ours is From).
    target_bye.headers.retain(|h| {
        !matches!(
            h,
            rsip::Header::CallId(_) | rsip::Header::From(_) | rsip::Header::To(_)
        )
    });
    let our_from = message::header_values(&invite, "From").join("");
    target_bye
        .headers
        .push(rsip::Header::CallId(new_id.clone().into()));
    target_bye
        .headers
        .push(rsip::Header::From("<sip:200@127.0.0.1:5070>;tag=t1".into()));
    target_bye.headers.push(rsip::Header::To(our_from.into()));
    call.handle_sip(now, SipMessage::Request(target_bye), trunk_addr());
    let d = drain(&mut call);
    assert!(d.statuses().contains(&200));
    assert_eq!(d.hangup_of(1).map(|h| h.0), Some(200));
}

/// The trunk legs `d` asked the relay for, by remote RTP address.
fn leg_moves(d: &Drained) -> Vec<SocketAddr> {
    updates(d).iter().map(|p| p.remote_rtp).collect()
}

#[test]
fn a_transfer_targets_early_media_is_played_then_its_answer_taken() {
    let (mut call, now, _tag, invite) = trunk_transfer_started();
    let target: SocketAddr = "10.0.0.77:40000".parse().unwrap();
    call.handle_sip(now, reply(&invite, 183, Some(TARGET_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(leg_moves(&d), [target], "the browser hears the target ring");
    assert!(
        d.events.is_empty(),
        "no held/resumed or transferred for early media: {:?}",
        d.events
    );
    // A second 183 moves nothing more.
    call.handle_sip(now, reply(&invite, 183, Some(TARGET_ANSWER)), trunk_addr());
    assert!(drain(&mut call).media.is_empty());
    call.handle_sip(now, reply(&invite, 200, Some(TARGET_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "NOTIFY", "BYE"]);
    assert_eq!(leg_moves(&d), [target]);
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 200)]);
}

#[test]
fn a_failed_transfer_gives_the_leg_back_to_the_transferor_after_early_media() {
    let (mut call, now, _tag, invite) = trunk_transfer_started();
    let target: SocketAddr = "10.0.0.77:40000".parse().unwrap();
    call.handle_sip(now, reply(&invite, 183, Some(TARGET_ANSWER)), trunk_addr());
    assert_eq!(leg_moves(&drain(&mut call)), [target]);
    call.handle_sip(now, reply(&invite, 486, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "NOTIFY"]);
    let back = updates(&d);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_ne!(back[0].remote_rtp, target);
    assert!(
        matches!(back[0].crypto, TrunkCrypto::Sdes { .. }),
        "the transferor's keys again"
    );
    assert!(back[0].ssrcs.is_empty(), "its SSRC learned anew");
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 486)]);
    assert!(!call.is_over_for_browsers());
}

#[test]
fn a_failed_trunk_transfer_is_reported_and_the_call_stays_with_the_transferor() {
    let (mut call, now, tag, invite) = trunk_transfer_started();
    call.handle_sip(now, reply(&invite, 486, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "NOTIFY"]);
    let notify = &requests_of(&d, rsip::Method::Notify)[0];
    let (frag, state, _) = notify_of(notify);
    assert!(frag.starts_with("SIP/2.0 486 "), "{frag}");
    assert_eq!(state, "terminated;reason=noresource");
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 486)]);
    assert!(d.media.is_empty() && d.hangup_of(1).is_none());
    assert!(!call.is_over_for_browsers());
    // The old dialog is still the call's: a second REFER is carried out.
    call.handle_sip(now, trunk_refer(&tag, 3, "<tel:+4930999>"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [202]);
    assert_eq!(
        the_invite(&d).uri.to_string(),
        "sip:+4930999@127.0.0.1:5070"
    );
}

#[test]
fn a_failed_trunk_transfer_after_the_transferor_left_ends_the_call() {
    let (mut call, now, tag, invite) = trunk_transfer_started();
    call.handle_sip(
        now,
        trunk_request("BYE", 3, &tag, "z9hG4bKbye3", None),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [200]);
    assert!(d.events.is_empty(), "the transfer goes on");
    assert!(!call.is_over_for_browsers());
    call.handle_sip(now, reply(&invite, 404, None), trunk_addr());
    let d = drain(&mut call);
    assert!(
        requests_of(&d, rsip::Method::Notify).is_empty(),
        "nobody to tell"
    );
    assert_eq!(by_trunk(&d, 1), [("200".to_string(), 404)]);
    let (code, reason) = d.hangup_of(1).unwrap();
    assert_eq!(code, 404);
    assert!(reason.contains("transfer"), "{reason}");
    assert!(d.stopped_media());
    // Finished once both dialogs are (Timer D of the refused INVITE, 32 s),
    // before the teardown deadline (70 s).
    let mut t = now;
    while !call.is_finished() && t < now + Duration::from_secs(60) {
        t = call.poll_timeout().expect("a deadline while not finished");
        call.handle_timeout(t);
        drain(&mut call);
    }
    assert!(call.is_finished());
    assert!(t <= now + Duration::from_secs(40), "{:?}", t - now);
}

#[test]
fn the_browsers_hangup_cancels_the_trunks_transfer() {
    let (mut call, now, _tag, invite) = trunk_transfer_started();
    // CANCEL once the target answered provisionally (RFC 3261 9.1).
    call.handle_sip(now, reply(&invite, 180, None), trunk_addr());
    drain(&mut call);
    call.handle_session(now, SessionInput::Hangup { session: 1 });
    let d = drain(&mut call);
    let mut sent = d.requests();
    sent.sort();
    assert_eq!(sent, ["BYE", "CANCEL"]);
    let cancel = &requests_of(&d, rsip::Method::Cancel)[0];
    assert_eq!(
        message::call_id(cancel).unwrap(),
        message::call_id(&invite).unwrap()
    );
}

#[test]
fn a_trunks_refer_without_a_usable_refer_to_gets_400_and_hold_waits_for_a_transfer() {
    let (mut call, now, tag) = connected_call_for(account_accepting_refer(), 1);
    call.handle_sip(now, trunk_refer(&tag, 2, "<sip:host.only>"), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [400]);
    assert!(d.events.is_empty());
    call.handle_sip(now, trunk_refer(&tag, 3, "<sip:200@x>"), trunk_addr());
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 1,
            hold: true,
        },
    );
    assert_eq!(errors(&drain(&mut call), 1), [409]);
}

// ---- DTLS-SRTP toward trunks (issue 11 item 4) ------------------------------

fn dtls_fp() -> String {
    ["EF"; 32].join(":")
}

fn dtls_answer(setup: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 UDP/TLS/RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
a=fingerprint:sha-256 {}\r\na=setup:{setup}\r\na=rtcp-mux\r\n",
        dtls_fp()
    )
}

/// An outgoing call on a trunk with `secure_media` and callee_stream
/// "dtls": the call, the clock and its INVITE.
fn dtls_call(secure_media: SecureMedia) -> (Call, Instant, rsip::Request) {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(
            secure_media,
            CallerStream::RelayOrDecrypt,
            Some(CalleeStream::Dtls),
        ),
        now,
    );
    let invite = the_invite(&drain(&mut call));
    (call, now, invite)
}

fn security_of(d: &Drained) -> Option<String> {
    d.to(7).into_iter().find_map(|e| match e {
        SessionEvent::Connected { security, .. } => Some(security.trunk.clone()),
        _ => None,
    })
}

#[test]
fn callee_stream_dtls_offers_udp_tls_and_keys_the_trunk_by_its_fingerprint() {
    for (setup, role) in [
        ("active", crate::types::DtlsRole::Server),
        ("passive", crate::types::DtlsRole::Client),
    ] {
        let (mut call, now, invite) = dtls_call(SecureMedia::Mandatory);
        let body = std::str::from_utf8(&invite.body).unwrap();
        assert!(body.contains("m=audio 20002 UDP/TLS/RTP/SAVP "), "{body}");
        assert!(
            body.contains(&format!(
                "a=fingerprint:sha-256 {}",
                media_plan().fingerprint_sha256
            )),
            "{body}"
        );
        assert!(body.contains("a=setup:actpass"), "{body}");
        assert!(
            body.contains("a=rtcp-mux") && body.contains("a=rtcp:20003"),
            "{body}"
        );
        assert!(!body.contains("a=crypto"), "{body}");

        call.handle_sip(
            now,
            reply(&invite, 200, Some(&dtls_answer(setup))),
            trunk_addr(),
        );
        let d = drain(&mut call);
        assert_eq!(d.requests(), ["ACK"]);
        match trunk_crypto_of(&d) {
            Some(TrunkCrypto::Dtls {
                role: got,
                remote_fingerprint,
                suites,
            }) => {
                assert_eq!(got, role, "answer setup:{setup}");
                assert_eq!(
                    remote_fingerprint.to_string(),
                    format!("sha-256 {}", dtls_fp())
                );
                assert_eq!(
                    suites,
                    [
                        SrtpSuite::AesCm128HmacSha1_80,
                        SrtpSuite::AesCm128HmacSha1_32
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // The browser is up, the trunk's handshake not yet: no `connected`.
        call.handle_media(
            now,
            MediaEvent::BrowserConnected {
                suite: SrtpSuite::AeadAes128Gcm,
            },
        );
        assert_eq!(drain(&mut call).connected, 0);
        call.handle_media(
            now,
            MediaEvent::TrunkConnected {
                suite: SrtpSuite::AesCm128HmacSha1_32,
            },
        );
        let d = drain(&mut call);
        assert_eq!(d.connected, 1);
        assert_eq!(
            security_of(&d).as_deref(),
            Some("dtls-srtp AES_CM_128_HMAC_SHA1_32")
        );
        assert_eq!(
            call.info().trunk_security.as_deref(),
            Some("dtls-srtp AES_CM_128_HMAC_SHA1_32")
        );
    }
}

#[test]
fn dtls_toward_a_mandatory_trunk_that_answers_plain_rtp_ends_naming_the_policy() {
    let (mut call, now, invite) = dtls_call(SecureMedia::Mandatory);
    call.handle_sip(now, reply(&invite, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "BYE"]);
    assert!(!d.started_media());
    let (code, reason) = d.hangup_of(7).expect("hangup");
    assert_eq!(code, 488);
    assert!(reason.contains("secure_media is \"mandatory\""), "{reason}");
}

#[test]
fn dtls_toward_an_optional_trunk_falls_back_to_plain_rtp() {
    let (mut call, now, invite) = dtls_call(SecureMedia::Optional);
    // 488 to the DTLS offer: a plain RTP INVITE follows.
    call.handle_sip(now, reply(&invite, 488, None), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK", "INVITE"]);
    assert_eq!(d.fallbacks, 1);
    let second = the_invite(&d);
    let body = std::str::from_utf8(&second.body).unwrap();
    assert!(
        body.contains(" RTP/AVP ") && !body.contains("fingerprint"),
        "{body}"
    );
    call.handle_sip(now, reply(&second, 200, Some(PLAIN_ANSWER)), trunk_addr());
    let d = drain(&mut call);
    assert!(matches!(trunk_crypto_of(&d), Some(TrunkCrypto::Plain)));
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    assert_eq!(
        security_of(&drain(&mut call)).as_deref(),
        Some("rtp (unencrypted)")
    );
}

#[test]
fn a_dtls_answer_without_fingerprint_or_with_actpass_is_refused() {
    for bad in [
        dtls_answer("actpass"),
        dtls_answer("active").replace(&format!("a=fingerprint:sha-256 {}\r\n", dtls_fp()), ""),
    ] {
        let (mut call, now, invite) = dtls_call(SecureMedia::Mandatory);
        call.handle_sip(now, reply(&invite, 200, Some(&bad)), trunk_addr());
        let d = drain(&mut call);
        assert!(!d.started_media());
        let (code, reason) = d.hangup_of(7).expect("hangup");
        assert_eq!(code, 488, "{reason}");
        assert!(reason.contains("trunk SDP refused"), "{reason}");
    }
}

/// A DTLS call the trunk answered (active: we are its DTLS server) whose
/// browser leg is up; the trunk's handshake has not happened.
fn dtls_answered_browser_connected() -> (Call, Instant) {
    let (mut call, now, invite) = dtls_call(SecureMedia::Mandatory);
    call.handle_sip(
        now,
        reply(&invite, 200, Some(&dtls_answer("active"))),
        trunk_addr(),
    );
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    (call, now)
}

#[test]
fn a_trunk_dtls_handshake_that_never_completes_ends_the_call() {
    let (mut call, now) = dtls_answered_browser_connected();
    let d = drain(&mut call);
    assert_eq!(d.connected, 0);
    let limit = CallTimers::default().dtls;
    assert_eq!(call.poll_timeout(), Some(now + limit));
    call.handle_timeout(now + limit - Duration::from_millis(1));
    assert!(drain(&mut call).hangup_of(7).is_none());
    call.handle_timeout(now + limit);
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    let (_, reason) = d.hangup_of(7).expect("hangup");
    assert!(
        reason.contains("the trunk's DTLS handshake did not complete"),
        "{reason}"
    );
    assert!(!reason.contains("media_source"), "{reason}");
}

#[test]
fn a_trunk_dtls_handshake_from_an_unsignaled_address_names_media_source() {
    let (mut call, now) = dtls_answered_browser_connected();
    let from = "198.51.100.7:7078".parse().unwrap();
    call.handle_media(now, MediaEvent::TrunkUnsignaledSource { from });
    call.handle_timeout(now + CallTimers::default().dtls);
    let (_, reason) = drain(&mut call).hangup_of(7).expect("hangup");
    assert!(
        reason.contains("its DTLS came from 198.51.100.7, which its SDP does not name")
            && reason.contains("trunks[].media_source"),
        "{reason}"
    );
}

#[test]
fn a_trunk_dtls_failure_ends_the_call_with_its_reason() {
    let (mut call, now, invite) = dtls_call(SecureMedia::Mandatory);
    call.handle_sip(
        now,
        reply(&invite, 200, Some(&dtls_answer("active"))),
        trunk_addr(),
    );
    drain(&mut call);
    call.handle_media(
        now,
        MediaEvent::Failed {
            reason: "DTLS with trunk 10.0.0.9:30000 failed: DTLS peer certificate does not \
                     match the SDP fingerprint"
                .into(),
        },
    );
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    let (_, reason) = d.hangup_of(7).expect("hangup");
    assert!(
        reason.contains("does not match the SDP fingerprint"),
        "{reason}"
    );
    assert_eq!(d.connected, 0);
}

const DTLS_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 30000 UDP/TLS/RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fingerprint:sha-256 EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF:EF\r\n\
a=setup:SETUP\r\na=sendrecv\r\n";

/// An incoming call from a DTLS trunk whose offer says `a=setup:offered`,
/// accepted by session 1, the browser's DTLS up: returns the call, the
/// clock, the trunk crypto the media started with, and our 200 OK.
fn dtls_incoming(offered: &str) -> (Call, Instant, Option<TrunkCrypto>, rsip::Response) {
    let now = Instant::now();
    let sdp = DTLS_OFFER.replace("SETUP", offered);
    let invite = parse(&format!(
        "INVITE sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKinv1\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>\r\nCall-ID: in-c1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:carrier@{TRUNK}>\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    let offer = parse_sip_offer(&sdp).unwrap();
    let mut call = Call::incoming(
        IncomingSetup {
            id: CallId("in-1".into()),
            uas: IncomingCall::new(invite, trunk_addr(), now).unwrap(),
            offer,
            plan: IncomingLegPlan::Dtls {
                suites: vec![SrtpSuite::AesCm128HmacSha1_80],
            },
            trunk_dtls: None,
            sessions: vec![1],
            from: Personal::new("+4930123", false),
            account: account(),
            media: media_plan(),
            local: local(),
            trunk_sources: account().trunk.signaling_sources(&[trunk_addr().ip()]),
            reject_code: 486,
            timers: CallTimers::default(),
            transfer_route: Some(NewInviteRoute {
                local: local(),
                destination: trunk_addr(),
                routes: Vec::new(),
            }),
            delayed_offer: false,
        },
        now,
    );
    drain(&mut call);
    call.handle_session(
        now,
        SessionInput::Accept {
            session: 1,
            sdp: browser_answer()
                .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000")
                .replace("SAVPF 8 101", "SAVPF 0 101"),
        },
    );
    let crypto = trunk_crypto_of(&drain(&mut call));
    call.handle_media(
        now,
        MediaEvent::BrowserConnected {
            suite: SrtpSuite::AeadAes128Gcm,
        },
    );
    let d = drain(&mut call);
    let ok = d.ok_to_invite().expect("200 OK").clone();
    (call, now, crypto, ok)
}

#[test]
fn an_incoming_dtls_offer_is_answered_with_our_fingerprint_and_the_right_setup() {
    for (offered, answered, role) in [
        ("actpass", "passive", crate::types::DtlsRole::Server),
        ("active", "passive", crate::types::DtlsRole::Server),
        ("passive", "active", crate::types::DtlsRole::Client),
    ] {
        let (mut call, now, crypto, ok) = dtls_incoming(offered);
        match crypto {
            Some(TrunkCrypto::Dtls {
                role: got,
                remote_fingerprint,
                ..
            }) => {
                assert_eq!(got, role, "offer setup:{offered}");
                assert_eq!(
                    remote_fingerprint.to_string(),
                    format!("sha-256 {}", dtls_fp())
                );
            }
            other => panic!("{other:?}"),
        }
        let body = std::str::from_utf8(&ok.body).unwrap();
        assert!(
            body.contains("m=audio 20002 UDP/TLS/RTP/SAVP 0 101"),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "a=fingerprint:sha-256 {}",
                media_plan().fingerprint_sha256
            )),
            "{body}"
        );
        assert!(body.contains(&format!("a=setup:{answered}")), "{body}");
        assert!(!body.contains("a=crypto"), "{body}");
        let tag = to_tag_of(&ok);
        call.handle_sip(
            now,
            from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
            trunk_addr(),
        );
        assert_eq!(
            drain(&mut call).connected,
            0,
            "the trunk's DTLS is not up yet"
        );
        call.handle_media(
            now,
            MediaEvent::TrunkConnected {
                suite: SrtpSuite::AesCm128HmacSha1_80,
            },
        );
        let d = drain(&mut call);
        assert_eq!(d.connected, 1);
        let security = d.to(1).into_iter().find_map(|e| match e {
            SessionEvent::Connected { security, .. } => Some(security.trunk.clone()),
            _ => None,
        });
        assert_eq!(
            security.as_deref(),
            Some("dtls-srtp AES_CM_128_HMAC_SHA1_80")
        );
    }
}

/// A DTLS trunk's hold re-INVITE (same certificate) is answered with our
/// fingerprint and role, the association stays; an SDES or plain re-offer
/// is refused with 488; the browser's hold offer carries the fingerprint.
#[test]
fn re_offers_on_a_dtls_leg_keep_the_association() {
    let (mut call, now, _, ok) = dtls_incoming("actpass");
    let tag = to_tag_of(&ok);
    call.handle_sip(
        now,
        from_trunk("ACK", 1, Some(&tag), "z9hG4bKack1"),
        trunk_addr(),
    );
    call.handle_media(
        now,
        MediaEvent::TrunkConnected {
            suite: SrtpSuite::AesCm128HmacSha1_80,
        },
    );
    drain(&mut call);
    let hold = DTLS_OFFER
        .replace("SETUP", "actpass")
        .replace("o=- 1 1 ", "o=- 1 2 ")
        .replace("a=sendrecv", "a=sendonly");
    call.handle_sip(
        now,
        trunk_request("INVITE", 2, &tag, "z9hG4bKre2", Some(&hold)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    let sdp = sdp.expect("an SDP answer");
    assert!(sdp.contains("m=audio 20002 UDP/TLS/RTP/SAVP 0"), "{sdp}");
    assert!(
        sdp.contains("a=recvonly") && sdp.contains("a=setup:passive"),
        "{sdp}"
    );
    assert!(sdp.contains(&media_plan().fingerprint_sha256), "{sdp}");
    assert!(
        updates(&d).is_empty(),
        "same certificate and role: the leg stays"
    );
    assert_eq!(
        call.info().trunk_security.as_deref(),
        Some("dtls-srtp AES_CM_128_HMAC_SHA1_80")
    );
    call.handle_sip(
        now,
        from_trunk("ACK", 2, Some(&tag), "z9hG4bKack2"),
        trunk_addr(),
    );
    drain(&mut call);

    // A new certificate: the leg is rebuilt with it.
    let other_fp = ["12"; 32].join(":");
    let moved = DTLS_OFFER
        .replace("SETUP", "actpass")
        .replace("o=- 1 1 ", "o=- 1 3 ")
        .replace(&dtls_fp(), &other_fp);
    call.handle_sip(
        now,
        trunk_request("INVITE", 3, &tag, "z9hG4bKre3", Some(&moved)),
        trunk_addr(),
    );
    let d = drain(&mut call);
    assert_eq!(the_response(&d).0, 200);
    match &updates(&d)[..] {
        [p] => match &p.crypto {
            TrunkCrypto::Dtls {
                remote_fingerprint, ..
            } => assert_eq!(
                remote_fingerprint.to_string(),
                format!("sha-256 {other_fp}")
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    call.handle_sip(
        now,
        from_trunk("ACK", 3, Some(&tag), "z9hG4bKack3"),
        trunk_addr(),
    );
    drain(&mut call);

    // SDES or plain in mid-call: 488, nothing changes.
    let sdes = reoffer(4, |s| s);
    let plain = DTLS_OFFER
        .replace("SETUP", "actpass")
        .replace("o=- 1 1 ", "o=- 1 5 ")
        .replace("UDP/TLS/RTP/SAVP", "RTP/AVP");
    for (cseq, body) in [(4, sdes), (5, plain)] {
        call.handle_sip(
            now,
            trunk_request(
                "INVITE",
                cseq,
                &tag,
                &format!("z9hG4bKre{cseq}"),
                Some(&body),
            ),
            trunk_addr(),
        );
        let d = drain(&mut call);
        assert_eq!(the_response(&d).0, 488, "{body}");
        assert!(updates(&d).is_empty());
        call.handle_sip(
            now,
            from_trunk("ACK", cseq, Some(&tag), &format!("z9hG4bKre{cseq}")),
            trunk_addr(),
        );
        drain(&mut call);
    }

    // The browser holds: our re-INVITE keeps the fingerprint and our role.
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 1,
            hold: true,
        },
    );
    let d = drain(&mut call);
    let reinvite = the_invite(&d);
    let body = std::str::from_utf8(&reinvite.body).unwrap();
    assert!(
        body.contains("UDP/TLS/RTP/SAVP") && body.contains("a=sendonly"),
        "{body}"
    );
    assert!(body.contains(&media_plan().fingerprint_sha256), "{body}");
    assert!(body.contains("a=setup:passive"), "{body}");
}

/// forced_relay: the INVITE offers DTLS-SRTP with the browser's fingerprint
/// and setup, the browser's answer carries the trunk's, the relay starts in
/// passthrough, and `connected` says private once both ends agreed keys.
#[test]
fn a_private_call_hands_each_side_the_others_fingerprint_and_says_private() {
    let now = Instant::now();
    let mut call = outgoing_with(
        account_with(SecureMedia::Mandatory, CallerStream::ForcedRelay, None),
        now,
    );
    let invite = the_invite(&drain(&mut call));
    let offer = String::from_utf8_lossy(&invite.body).to_string();
    assert!(offer.contains("UDP/TLS/RTP/SAVP "), "{offer}");
    assert!(
        offer.contains("a=fingerprint:sha-256 8D:A6:71:40"),
        "{offer}"
    );
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    assert!(!offer.contains("a=crypto"), "{offer}");

    const TRUNK_FP: &str = "sha-256 A1:B2:C3:D4:E5:F6:A7:B8:C9:D0:E1:F2:A3:B4:C5:D6:E7:F8:A9:B0:C1:D2:E3:F4:A5:B6:C7:D8:E9:F0:A1:B2";
    let answer = format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
         m=audio 30000 UDP/TLS/RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
         a=fingerprint:{TRUNK_FP}\r\na=setup:active\r\n"
    );
    call.handle_sip(now, reply(&invite, 200, Some(&answer)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["ACK"]);
    assert!(matches!(
        trunk_crypto_of(&d),
        Some(TrunkCrypto::Passthrough)
    ));
    let browser_answer = d
        .to(7)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Answer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .expect("answer");
    assert!(
        browser_answer.contains(&format!("a=fingerprint:{TRUNK_FP}")),
        "{browser_answer}"
    );
    assert!(
        browser_answer.contains("a=setup:active"),
        "{browser_answer}"
    );
    assert!(!browser_answer.contains("a=ssrc"), "{browser_answer}");
    assert_eq!(d.connected, 0, "not before the ends agreed keys");

    call.handle_media(
        now,
        MediaEvent::PrivateConnected {
            suite: Some(SrtpSuite::AesCm128HmacSha1_80),
        },
    );
    let d = drain(&mut call);
    assert_eq!(d.connected, 1);
    let security = d
        .to(7)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Connected { security, .. } => Some(security.clone()),
            _ => None,
        })
        .expect("connected");
    assert!(security.private);
    assert_eq!(
        security.browser,
        "dtls-srtp AES_CM_128_HMAC_SHA1_80 end to end"
    );
    let info = call.info();
    assert!(info.private);
    // The gateway cannot play DTMF into a stream it cannot encrypt: the
    // digit goes by SIP INFO, which needs no media key.
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 7,
            digits: vec![crate::types::DtmfDigit::from_char('1').unwrap()],
        },
    );
    let d = drain(&mut call);
    assert_eq!(info_signals(&d), "1");
    assert_eq!(dtmf_sent(&d), "");
    assert!(error_of(&d, 7).is_none(), "{d:?}");
    // Nor hold it: a clear refusal, no re-INVITE.
    call.handle_session(
        now,
        SessionInput::Hold {
            session: 7,
            hold: true,
        },
    );
    let d = drain(&mut call);
    assert!(d.sip.is_empty());
    assert!(
        d.to(7).iter().any(|e| matches!(e,
            SessionEvent::Error { code: 409, message, .. } if message.contains("private call"))),
        "{:?}",
        d.events
    );
}

// ---- the trunk changes the codec (calls::renegotiate, re-offer to the browser)

/// A connected call whose browser accepted PCMA and PCMU (PCMA in use), and
/// the trunk's re-INVITE (CSeq 2) that drops PCMA: the browser got our
/// re-offer, the trunk a 100.
fn codec_change_asked() -> (Call, Instant, String, String) {
    let answer = browser_answer()
        .replace("SAVPF 8 101", "SAVPF 8 0 101")
        .replace(
            "a=rtpmap:8 PCMA/8000\r\n",
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n",
        );
    let (mut call, now, tag) = connected_call_answered(account(), 1, answer);
    let pcmu = reoffer(2, |s| s.replace("RTP/SAVP 0 8 101", "RTP/SAVP 0 101"));
    let d = reinvite(&mut call, now, &tag, 2, &pcmu);
    assert_eq!(d.statuses(), [100], "the trunk waits for the browser");
    assert!(
        d.media.is_empty(),
        "nothing changes before the browser answers"
    );
    let offer = match &d.to(1)[..] {
        [SessionEvent::Offer { sdp, .. }] => sdp.clone(),
        other => panic!("expected our re-offer, got {other:?}"),
    };
    (call, now, tag, offer)
}

/// The trunk's re-INVITE `cseq` with `sdp`, and what came of it.
fn reinvite(call: &mut Call, now: Instant, tag: &str, cseq: u32, sdp: &str) -> Drained {
    let branch = format!("z9hG4bKcodec{cseq}");
    let req = trunk_request("INVITE", cseq, tag, &branch, Some(sdp));
    call.handle_sip(now, req, trunk_addr());
    drain(call)
}

/// The browser's `answer` to our re-offer, taking `pt`, and what came of it.
fn reanswer(call: &mut Call, now: Instant, pt: u8, name: &str) -> Drained {
    let sdp = browser_answer()
        .replace("o=- 1 2 ", "o=- 1 3 ")
        .replace("SAVPF 8 101", &format!("SAVPF {pt} 101"))
        .replace(
            "a=rtpmap:8 PCMA/8000",
            &format!("a=rtpmap:{pt} {name}/8000"),
        );
    call.handle_session(now, SessionInput::Reanswer { session: 1, sdp });
    drain(call)
}

#[test]
fn a_codec_change_is_reoffered_to_the_browser_then_answered_to_the_trunk() {
    let (mut call, now, _tag, offer) = codec_change_asked();
    // The same ICE and DTLS, only the codec changed, a new version.
    let audio = offer.lines().find(|l| l.starts_with("m=audio")).unwrap();
    assert!(audio.ends_with(" 0 101"), "{audio}");
    assert!(offer.contains("a=rtpmap:0 PCMU/8000"));
    assert!(!offer.contains("PCMA"));
    assert!(offer.contains("a=setup:actpass") && offer.contains("a=ice-lite"));
    assert!(offer.contains("a=fingerprint:sha-256 ") && offer.contains("a=ice-ufrag:"));
    let d = reanswer(&mut call, now, 0, "PCMU");
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    let sdp = sdp.unwrap();
    assert!(
        sdp.contains("m=audio") && sdp.contains(" RTP/SAVP 0 101"),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000") && !sdp.contains("PCMA"));
    let maps: Vec<_> = d
        .media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::UpdateTrunk(u) => Some(u.payload_map.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        maps,
        [vec![
            (PayloadType(0), PayloadType(0), 8000),
            (PayloadType(101), PayloadType(101), 8000)
        ]],
        "the relay maps the browser's PCMU to the trunk's"
    );
    assert!(!call.is_over_for_browsers());
    // A second answer has nothing to answer.
    let d = reanswer(&mut call, now, 0, "PCMU");
    assert!(d.sip.is_empty());
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Error { code: 409, .. }]
    ));
}

#[test]
fn a_codec_change_that_renumbers_the_browsers_telephone_event_reaches_the_relay() {
    let (mut call, now, _tag, _offer) = codec_change_asked();
    // The browser answers PCMU with its telephone-event under another
    // number than before (101).
    let sdp = browser_answer()
        .replace("o=- 1 2 ", "o=- 1 3 ")
        .replace("SAVPF 8 101", "SAVPF 0 110")
        .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000")
        .replace(
            "a=rtpmap:101 telephone-event",
            "a=rtpmap:110 telephone-event",
        );
    call.handle_session(now, SessionInput::Reanswer { session: 1, sdp });
    let d = drain(&mut call);
    assert_eq!(the_response(&d).0, 200);
    let update = d
        .media
        .iter()
        .find_map(|m| match m {
            MediaCommand::UpdateTrunk(u) => Some(u),
            _ => None,
        })
        .expect("the trunk leg is rebuilt");
    assert_eq!(
        update.telephone_event,
        Some(TelephoneEvent {
            trunk: PayloadType(101),
            browser: Some(PayloadType(110)),
            clock_rate: 8000,
        }),
        "the relay inserts and maps the browser's digits under their new number"
    );
    assert!(update
        .payload_map
        .contains(&(PayloadType(110), PayloadType(101), 8000)));
    // The browser's `dtmf` still reaches the relay.
    call.handle_session(
        now,
        SessionInput::Dtmf {
            session: 1,
            digits: digits("5"),
        },
    );
    assert_eq!(dtmf_sent(&drain(&mut call)), "5");
}

#[test]
fn a_late_answer_to_an_abandoned_reoffer_is_taken_back_with_the_calls_codec() {
    let (mut call, now, _tag, abandoned) = codec_change_asked();
    let late = now + Duration::from_secs(5);
    call.handle_timeout(late);
    assert_eq!(drain(&mut call).statuses(), [488], "the trunk keeps PCMA");
    // The browser answers PCMU after all: it now sends what the trunk
    // refused. It gets an offer of the call's PCMA, above the abandoned
    // offer's version; the trunk hears nothing of it.
    let d = reanswer(&mut call, late, 0, "PCMU");
    assert!(d.sip.is_empty() && d.media.is_empty(), "{d:?}");
    let back = match &d.to(1)[..] {
        [SessionEvent::Offer { sdp, .. }] => sdp.clone(),
        other => panic!("expected our offer back, got {other:?}"),
    };
    let version = |sdp: &str| -> u64 {
        let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
        o.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert_eq!(version(&back), version(&abandoned) + 1);
    let audio = back.lines().find(|l| l.starts_with("m=audio")).unwrap();
    assert!(audio.ends_with(" 8 101"), "{audio}");
    assert!(back.contains("a=rtpmap:8 PCMA/8000") && !back.contains("PCMU"));
    assert!(back.contains("a=setup:actpass") && back.contains("a=ice-ufrag:"));
    // Its answer with PCMA ends it quietly; a further answer is a 409.
    let d = reanswer(&mut call, late, 8, "PCMA");
    assert!(d.sip.is_empty() && d.events.is_empty(), "{d:?}");
    let d = reanswer(&mut call, late, 8, "PCMA");
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Error { code: 409, .. }]
    ));
    assert!(!call.is_over_for_browsers());
}

#[test]
fn no_answer_from_the_browser_in_time_is_488_and_the_call_unchanged() {
    let (mut call, now, tag) = {
        let (call, now, tag, _) = codec_change_asked();
        (call, now, tag)
    };
    let at = call.poll_timeout().unwrap();
    assert!(at <= now + Duration::from_secs(4));
    call.handle_timeout(now + Duration::from_secs(4));
    let d = drain(&mut call);
    assert_eq!(d.statuses(), [488]);
    assert!(d.media.is_empty() && d.events.is_empty());
    // The session is as it was: a hold re-offer keeps PCMA.
    let hold = reoffer(3, |s| s.replace("a=sendrecv", "a=sendonly"));
    let d = reinvite(&mut call, now, &tag, 3, &hold);
    let (code, sdp) = the_response(&d);
    assert_eq!(code, 200);
    assert!(sdp.unwrap().contains("a=rtpmap:8 PCMA/8000"));
    assert!(
        updates(&d).is_empty(),
        "no rebuild: nothing but the direction"
    );
}

#[test]
fn a_browser_answer_without_the_new_codec_is_488_and_the_call_unchanged() {
    let (mut call, now, _tag, _offer) = codec_change_asked();
    let d = reanswer(&mut call, now, 8, "PCMA");
    assert_eq!(d.statuses(), [488]);
    assert!(d.media.is_empty());
    assert!(!call.is_over_for_browsers());
}

#[test]
fn while_the_browser_is_asked_no_hold_of_ours_and_a_hangup_answers_the_trunk() {
    let (mut call, now, _tag, _offer) = codec_change_asked();
    let hold = SessionInput::Hold {
        session: 1,
        hold: true,
    };
    call.handle_session(now, hold);
    let d = drain(&mut call);
    assert!(d.sip.is_empty(), "no re-INVITE of ours over the trunk's");
    assert!(matches!(
        d.to(1)[..],
        [SessionEvent::Error { code: 409, .. }]
    ));
    call.handle_session(now, SessionInput::Hangup { session: 1 });
    let d = drain(&mut call);
    assert_eq!(d.requests(), ["BYE"]);
    assert_eq!(
        d.statuses(),
        [488],
        "the waiting re-INVITE gets its final answer"
    );
}

// ---- an INVITE without an offer (delayed offer) ---------------------------

/// Rings session 1 with a delayed-offer call, which accepts with
/// `browser_answer()` (PCMA), its DTLS comes up: the 200 with our offer.
fn delayed_call_answered() -> (Call, Instant, rsip::Response) {
    let now = Instant::now();
    let mut call = incoming_delayed(&[1], now);
    let d = drain(&mut call);
    let offer = match &d.to(1)[..] {
        [SessionEvent::Incoming { sdp, .. }] => sdp.clone(),
        other => panic!("expected incoming, got {other:?}"),
    };
    assert!(offer.contains("a=rtpmap:0 PCMU/8000") && offer.contains("a=rtpmap:8 PCMA/8000"));
    let d = accept_and_connect(&mut call, now);
    let ok = d.ok_to_invite().expect("200 OK").clone();
    (call, now, ok)
}

/// The trunk's ACK of our 200, with `sdp` as its body.
fn ack_with(tag: &str, sdp: Option<&str>) -> SipMessage {
    let body = sdp.unwrap_or_default();
    let ctype = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    parse(&format!(
        "ACK sip:alice@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKack1\r\n\
From: <sip:+4930123@carrier.example>;tag=ftag\r\nTo: <sip:alice@10.0.0.1>;tag={tag}\r\n\
Call-ID: in-c1\r\nCSeq: 1 ACK\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn a_delayed_offer_is_made_in_our_200_and_answered_in_the_ack() {
    let (mut call, now, ok) = delayed_call_answered();
    let offer = String::from_utf8_lossy(&ok.body).to_string();
    // Our offer: the browser's codec and telephone-event, SDES with our key.
    let audio = offer.lines().find(|l| l.starts_with("m=audio")).unwrap();
    assert!(audio.contains(" RTP/SAVP 8 101"), "{offer}");
    assert!(
        offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{offer}"
    );
    assert!(!offer.contains("0.0.0.0"), "{offer}");
    let tag = to_tag_of(&ok);
    let answer = "v=0\r\no=- 7 7 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 31000 RTP/SAVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n";
    call.handle_sip(now, ack_with(&tag, Some(answer)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.connected, 1, "{d:?}");
    let update = d.media.iter().find_map(|m| match m {
        MediaCommand::UpdateTrunk(u) => Some(u.clone()),
        _ => None,
    });
    let update = update.expect("the trunk leg from the ACK's answer");
    assert_eq!(
        update.trunk.remote_rtp,
        "10.0.0.9:31000".parse::<SocketAddr>().unwrap()
    );
    match &update.trunk.crypto {
        TrunkCrypto::Sdes { inbound, .. } => {
            assert_eq!(inbound.suite, SrtpSuite::AesCm128HmacSha1_80);
        }
        other => panic!("expected SDES, got {other:?}"),
    }
    assert!(update.telephone_event.is_some());
    assert!(!call.is_over_for_browsers());
}

#[test]
fn a_delayed_offer_whose_ack_does_not_answer_ends_the_call() {
    for (body, words) in [
        (None, "is missing"),
        (
            Some("v=0\r\no=- 7 7 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 31000 RTP/AVP 8\r\n"),
            "a=crypto:1",
        ),
        (
            Some("v=0\r\no=- 7 7 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 31000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d2VsbCBob3cgYWJvdXQgdGhhdCB0aGVuIG9rYXkK\r\n"),
            "lacks our codec",
        ),
    ] {
        let (mut call, now, ok) = delayed_call_answered();
        call.handle_sip(now, ack_with(&to_tag_of(&ok), body), trunk_addr());
        let d = drain(&mut call);
        assert_eq!(d.requests(), ["BYE"], "{words}");
        let (code, reason) = d.hangup_of(1).expect("hangup");
        assert_eq!(code, 488);
        assert!(reason.contains(words), "{reason}");
        assert_eq!(d.connected, 0);
    }
}

#[test]
fn a_delayed_offer_answered_plain_falls_back_only_when_optional() {
    let plain = "v=0\r\no=- 7 7 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=audio 31000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    // mandatory (the test account's): refused, see the test above.
    let now = Instant::now();
    let mut optional = (*account()).clone();
    let mut trunk = (*optional.trunk).clone();
    trunk.secure_media = crate::policy::SecureMedia::Optional;
    optional.trunk = Arc::new(trunk);
    let mut call = incoming_delayed_for(Arc::new(optional), &[1], now);
    drain(&mut call);
    let d = accept_and_connect(&mut call, now);
    let ok = d.ok_to_invite().expect("200 OK").clone();
    call.handle_sip(now, ack_with(&to_tag_of(&ok), Some(plain)), trunk_addr());
    let d = drain(&mut call);
    assert_eq!(d.connected, 1, "{d:?}");
    assert_eq!(d.fallbacks, 1);
    let crypto = d.media.iter().find_map(|m| match m {
        MediaCommand::UpdateTrunk(u) => Some(u.trunk.crypto.clone()),
        _ => None,
    });
    assert!(matches!(crypto, Some(TrunkCrypto::Plain)), "{crypto:?}");
    let security = d.to(1).into_iter().find_map(|e| match e {
        SessionEvent::Connected { security, .. } => Some(security.trunk.clone()),
        _ => None,
    });
    assert_eq!(security.as_deref(), Some("rtp (unencrypted)"));
}
