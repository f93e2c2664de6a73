//! The outgoing call task against a scripted SIP trunk on 127.0.0.1 (a plain
//! UDP socket that answers as the test says): regressions of what review
//! found in the B2BUA glue. Waits are on events with timeouts, never sleeps
//! as synchronisation.

use super::api::{CallControl, SessionCommand, SessionControl, SessionEvent};
use super::directory::{Account, Trunk};
use super::sessions::LocalSessions;
use super::{Calls, CallsContext, Directory};
use crate::config::{TrunkTransport, TrunkUri};
use crate::media::dtls::DtlsIdentity;
use crate::media::{MediaConfig, MediaEngine};
use crate::policy::{CalleeStream, CallerStream, SecureMedia};
use crate::sip::message::{self, ResponseParts};
use crate::sip::transport::SipEndpoint;
use crate::stats::CallStats;
use crate::types::{AccountName, CallId, SrtpSuite};
use rsip::SipMessage;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CHROME: &str = include_str!("../../tests/fixtures/chrome-offer.sdp");
const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    calls: Calls,
    trunk: UdpSocket,
    _incoming: mpsc::Receiver<crate::sip::transport::IncomingRequest>,
}

async fn setup() -> Setup {
    let trunk = UdpSocket::bind((LO, 0)).await.unwrap();
    let (sip, incoming) = SipEndpoint::start(SocketAddr::new(LO, 0)).await.unwrap();
    // The media ports are never used by these tests (no SDP answers): any
    // free range in the pool's search works.
    let media = MediaEngine::new(
        MediaConfig {
            bind_ip: LO,
            public_ip: LO,
            port_min: 42000,
            port_max: 42999,
            workers: 1,
            single_port: true,
        },
        Arc::new(DtlsIdentity::generate().unwrap()),
    );
    let trunk_config = Arc::new(Trunk {
        name: "scripted".into(),
        uri: TrunkUri {
            host: "127.0.0.1".into(),
            port: trunk.local_addr().unwrap().port(),
            transport: TrunkTransport::Udp,
        },
        username: None,
        password: None,
        callee_stream: CalleeStream::Sdes,
        caller_stream: CallerStream::RelayOrDecrypt,
        secure_media: SecureMedia::Optional,
        srtp_suites: vec![SrtpSuite::AesCm128HmacSha1_80],
        inbound_sources: Vec::new(),
        reject_code: 486,
        accept_refer: true,
        options_interval: Duration::ZERO,
        media_source: crate::types::MediaSource::Signaled,
        register: None,
    });
    let mut directory = Directory::default();
    directory.insert(Account {
        name: "alice".into(),
        trunk: trunk_config,
        caller_stream: CallerStream::RelayOrDecrypt,
        callee_stream: None,
        redact: true,
    });
    Setup {
        calls: Calls::new(CallsContext {
            directory,
            sip,
            media,
            public_ip: LO,
            stats: Arc::new(CallStats::default()),
            sessions: Arc::new(LocalSessions::default()),
            live: Arc::default(),
            cdr: test_cdr(),
            trunk_health: Arc::default(),
            outbound_proxy: None,
            ring_timeout: Duration::from_secs(120),
            media_timeout: Duration::from_secs(30),
            hold_timeout: Duration::from_secs(3600),
        }),
        trunk,
        _incoming: incoming,
    }
}

/// A call-record store in a directory of its own under the temp dir.
fn test_cdr() -> crate::cdr::CdrStore {
    let dir = std::env::temp_dir().join(format!(
        "gw-calls-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    crate::cdr::CdrStore::open(&dir.join("cdr.sqlite3"), std::time::SystemTime::now()).unwrap()
}

/// A session of alice places call `c1`; keep the session: dropping it is
/// the browser's socket closing.
fn start_call(s: &Setup, events: mpsc::Sender<SessionEvent>) -> Box<dyn SessionControl> {
    let mut session = s.calls.attach(AccountName("alice".into()), events);
    session.command(SessionCommand::Call {
        id: CallId("c1".into()),
        to: "15551234".into(),
        sdp: CHROME.into(),
    });
    session
}

async fn recv(sock: &UdpSocket) -> Option<(SipMessage, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((message::parse(&buf[..n]).unwrap(), from))
}

async fn recv_invite(sock: &UdpSocket) -> (rsip::Request, SocketAddr) {
    loop {
        let (msg, from) = recv(sock).await.expect("the gateway sends an INVITE");
        if let SipMessage::Request(r) = msg {
            if r.method == rsip::Method::Invite {
                return (r, from);
            }
        }
    }
}

fn respond(req: &rsip::Request, code: u16) -> bytes::Bytes {
    // The Contact names the trunk itself (the Request-URI's host and port):
    // the dialog's ACK and BYE come there.
    let contact = format!("<sip:x@{}>", req.uri.host_with_port);
    message::to_bytes(message::build_response(
        req,
        code,
        ResponseParts {
            to_tag: Some("trunktag"),
            contact: (code < 300).then_some(contact.as_str()),
            user_agent: "scripted-trunk",
            ..Default::default()
        },
    ))
}

fn is_ack(msg: &SipMessage) -> bool {
    matches!(msg, SipMessage::Request(r) if r.method == rsip::Method::Ack)
}

/// The dialog runs to `Terminated` after a rejection, so a retransmitted 486
/// (our ACK was lost) is ACKed again instead of hitting a forgotten Call-ID.
#[tokio::test]
async fn a_retransmitted_rejection_is_acked_again() {
    let s = setup().await;
    let (events, mut browser) = mpsc::channel(64);
    let _commands = start_call(&s, events);
    let (invite, gw) = recv_invite(&s.trunk).await;
    let busy = respond(&invite, 486);
    s.trunk.send_to(&busy, gw).await.unwrap();
    let (ack, _) = recv(&s.trunk).await.expect("ACK for the 486");
    assert!(is_ack(&ack));
    let hangup = tokio::time::timeout(WAIT, browser.recv()).await.unwrap();
    assert!(
        matches!(hangup, Some(SessionEvent::Hangup { code: 486, .. })),
        "{hangup:?}"
    );
    s.trunk.send_to(&busy, gw).await.unwrap();
    let (again, _) = recv(&s.trunk).await.expect("the 486 is ACKed again");
    assert!(is_ack(&again));
}

/// A browser session that stops reading its events must not freeze the
/// call's SIP handling: the 200 is still ACKed.
#[tokio::test]
async fn a_browser_that_stops_reading_does_not_stall_sip() {
    let s = setup().await;
    let (events, _browser_not_reading) = mpsc::channel(1);
    events
        .try_send(SessionEvent::Error {
            id: None,
            code: 400,
            message: "fills the queue".into(),
        })
        .unwrap();
    let _commands = start_call(&s, events);
    let (invite, gw) = recv_invite(&s.trunk).await;
    s.trunk.send_to(&respond(&invite, 180), gw).await.unwrap();
    s.trunk.send_to(&respond(&invite, 200), gw).await.unwrap();
    loop {
        let (msg, _) = recv(&s.trunk).await.expect("the 200 is ACKed");
        if is_ack(&msg) {
            break;
        }
    }
}

/// A browser hangup while ringing sends CANCEL, and the browser hears the
/// end at once.
#[tokio::test]
async fn a_hangup_while_ringing_cancels() {
    let s = setup().await;
    let (events, mut browser) = mpsc::channel(64);
    let mut session = start_call(&s, events);
    let (invite, gw) = recv_invite(&s.trunk).await;
    s.trunk.send_to(&respond(&invite, 180), gw).await.unwrap();
    let progress = tokio::time::timeout(WAIT, browser.recv()).await.unwrap();
    assert!(
        matches!(progress, Some(SessionEvent::Progress { code: 180, .. })),
        "{progress:?}"
    );
    session.command(SessionCommand::Hangup {
        id: CallId("c1".into()),
    });
    let ended = tokio::time::timeout(WAIT, browser.recv()).await.unwrap();
    assert!(
        matches!(ended, Some(SessionEvent::Hangup { code: 487, .. })),
        "{ended:?}"
    );
    loop {
        let (msg, _) = recv(&s.trunk).await.expect("CANCEL");
        if matches!(&msg, SipMessage::Request(r) if r.method == rsip::Method::Cancel) {
            break;
        }
    }
}
