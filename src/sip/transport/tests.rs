//! Endpoint tests on 127.0.0.1, port 0. They wait on events with a timeout,
//! never on sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;
use crate::sip::uac::{OutgoingCall, UacConfig, UacEvent};
use crate::sip::uas::{IncomingCall, UasEvent};

const WAIT: Duration = Duration::from_secs(10);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits for the next input of a sans-IO machine: a message or its deadline.
async fn next_input(
    rx: &mut mpsc::Receiver<CallMessage>,
    deadline: Option<Instant>,
) -> Option<SipMessage> {
    match deadline {
        Some(at) => tokio::select! {
            msg = rx.recv() => msg.map(|m| m.msg),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => None,
        },
        None => rx.recv().await.map(|m| m.msg),
    }
}

/// The demo echo trunk's shape: answer every INVITE, wait for the end.
async fn echo_trunk(
    ep: SipEndpoint,
    mut incoming: mpsc::Receiver<IncomingRequest>,
    done: mpsc::Sender<Vec<UasEvent>>,
) {
    while let Some(req) = incoming.recv().await {
        let ep = ep.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let IncomingRequest {
                msg,
                source,
                transport,
            } = req;
            let mut call = IncomingCall::new(msg, source, Instant::now()).unwrap();
            let call_id = call.call_id();
            let mut messages = ep.register_call(&call_id);
            call.ringing(Instant::now());
            // The Contact is where the caller's ACK and BYE come (RFC 3261
            // 12.2.1.1): the listener of the transport the INVITE came on.
            let contact = match ep.tcp_local_addr().filter(|_| transport == Transport::Tcp) {
                Some(tcp) => format!("<sip:echo@{tcp};transport=tcp>"),
                None => format!("<sip:echo@{}>", ep.local_addr()),
            };
            call.answer("v=0 echo\r\n".into(), contact, Instant::now());
            let mut events = vec![];
            loop {
                while let Some((bytes, to)) = call.poll_transmit() {
                    let dest = to.socket_addr().unwrap();
                    ep.send(dest, to.transport, bytes).await.unwrap();
                }
                while let Some(ev) = call.poll_event() {
                    events.push(ev);
                }
                if call.is_finished() {
                    break;
                }
                match next_input(&mut messages, call.poll_timeout()).await {
                    Some(msg) => call.handle_message(msg, Instant::now()),
                    None => call.handle_timeout(Instant::now()),
                }
            }
            ep.unregister_call(&call_id);
            let _ = done.send(events).await;
        });
    }
}

/// The B2BUA's shape for one outgoing call: hang up once answered.
async fn place_call(ep: &SipEndpoint, trunk: SocketAddr, transport: Transport) -> Vec<UacEvent> {
    let call_id = message::new_call_id();
    let mut messages = ep.register_call(&call_id);
    let mut call = OutgoingCall::new(
        UacConfig {
            call_id: call_id.clone(),
            request_uri: format!("sip:echo@{trunk}"),
            from_uri: "sip:alice@127.0.0.1".into(),
            contact: format!("<sip:alice@{}>", ep.local_addr()),
            via_host: "127.0.0.1".into(),
            via_port: ep.local_addr().port(),
            transport,
            credentials: None,
            user_agent: "test".into(),
            destination: trunk,
        },
        "v=0 offer\r\n".into(),
        Instant::now(),
    );
    let mut events = vec![];
    loop {
        while let Some((bytes, to)) = call.poll_transmit() {
            let dest = to.socket_addr().unwrap();
            ep.send(dest, to.transport, bytes).await.unwrap();
        }
        while let Some(ev) = call.poll_event() {
            if matches!(ev, UacEvent::Answered { .. }) {
                call.hangup(Instant::now());
            }
            events.push(ev);
        }
        if call.is_finished() {
            break;
        }
        // Transmissions queued by the hangup above go out first.
        if let Some((bytes, to)) = call.poll_transmit() {
            let dest = to.socket_addr().unwrap();
            ep.send(dest, to.transport, bytes).await.unwrap();
            continue;
        }
        match next_input(&mut messages, call.poll_timeout()).await {
            Some(msg) => call.handle_message(msg, Instant::now()),
            None => call.handle_timeout(Instant::now()),
        }
    }
    ep.unregister_call(&call_id);
    events
}

fn check_call(uac: &[UacEvent], uas: &[UasEvent]) {
    assert!(matches!(
        uac.first(),
        Some(UacEvent::Provisional { code: 100, .. })
    ));
    assert!(uac.contains(&UacEvent::Provisional {
        code: 180,
        sdp: None
    }));
    assert!(uac.contains(&UacEvent::Answered {
        sdp: Some("v=0 echo\r\n".into())
    }));
    assert_eq!(uac.last(), Some(&UacEvent::Terminated));
    assert_eq!(
        uas,
        &[
            UasEvent::Acked,
            UasEvent::RemoteHangup,
            UasEvent::Terminated
        ]
    );
}

#[tokio::test]
async fn invite_200_ack_bye_over_udp() {
    let (gw, _gw_in) = start(local()).await.unwrap();
    let (trunk, trunk_in) = start(local()).await.unwrap();
    let (done_tx, mut done_rx) = mpsc::channel(1);
    tokio::spawn(echo_trunk(trunk.clone(), trunk_in, done_tx));
    // Timer K keeps the UAC 5 s after its BYE completes on UDP; that is the
    // protocol, so this test takes about 5 s.
    let uac_events = timeout(WAIT, place_call(&gw, trunk.local_addr(), Transport::Udp))
        .await
        .expect("call finished");
    let uas_events = timeout(WAIT, done_rx.recv()).await.unwrap().unwrap();
    check_call(&uac_events, &uas_events);
    assert_eq!(gw.stats().call_queue_full.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn invite_200_ack_bye_over_tcp() {
    let cfg = EndpointConfig {
        udp_listen: local(),
        tcp_listen: Some(local()),
        door: super::door::DoorConfig::open(),
    };
    let (gw, _gw_in) = start_with(cfg.clone()).await.unwrap();
    let (trunk, trunk_in) = start_with(cfg).await.unwrap();
    let (done_tx, mut done_rx) = mpsc::channel(1);
    tokio::spawn(echo_trunk(trunk.clone(), trunk_in, done_tx));
    let dest = trunk.tcp_local_addr().unwrap();
    let uac_events = timeout(WAIT, place_call(&gw, dest, Transport::Tcp))
        .await
        .expect("call finished");
    let uas_events = timeout(WAIT, done_rx.recv()).await.unwrap().unwrap();
    check_call(&uac_events, &uas_events);
}

async fn exchange(ep: &SipEndpoint, sock: &UdpSocket, data: &[u8]) -> SipMessage {
    sock.send_to(data, ep.local_addr()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // Lenient: a 400 for a request without Call-ID has none either.
    message::parse_lenient(&buf[..n]).unwrap()
}

fn code(msg: &SipMessage) -> (u16, String) {
    match msg {
        SipMessage::Response(r) => (r.status_code.code(), message::response_reason(r)),
        SipMessage::Request(_) => panic!("expected a response"),
    }
}

const OPTIONS: &str = "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe\r\n\
From: <sip:probe@127.0.0.1>;tag=p\r\n\
To: <sip:gw@127.0.0.1>\r\n\
Call-ID: probe-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

#[tokio::test]
async fn malformed_unknown_and_probe_requests_are_answered_or_counted() {
    let (ep, mut incoming) = start(local()).await.unwrap();
    let sock = UdpSocket::bind(local()).await.unwrap();

    let ok = exchange(&ep, &sock, OPTIONS.as_bytes()).await;
    assert_eq!(code(&ok).0, 200);

    let bye = OPTIONS.replace("OPTIONS", "BYE");
    assert_eq!(code(&exchange(&ep, &sock, bye.as_bytes()).await).0, 481);

    let no_call_id = OPTIONS.replace("Call-ID: probe-1\r\n", "");
    assert_eq!(
        code(&exchange(&ep, &sock, no_call_id.as_bytes()).await),
        (400, "Missing Call-ID".to_string())
    );
    let bad_cl = OPTIONS.replace("Content-Length: 0", "Content-Length: 50");
    assert_eq!(
        code(&exchange(&ep, &sock, bad_cl.as_bytes()).await),
        (400, "Bad Content-Length".to_string())
    );
    assert_eq!(ep.stats().bad_requests_answered.load(Ordering::Relaxed), 2);

    // Garbage cannot be answered: dropped and counted. The OPTIONS after it
    // is answered, so the garbage has been processed by then.
    sock.send_to(b"\x00\x01garbage", ep.local_addr())
        .await
        .unwrap();
    let ok = exchange(&ep, &sock, OPTIONS.as_bytes()).await;
    assert_eq!(code(&ok).0, 200);
    assert_eq!(ep.stats().malformed_dropped.load(Ordering::Relaxed), 1);

    // A new INVITE reaches the B2BUA once; its retransmission goes to the
    // call's own channel.
    let invite = OPTIONS
        .replace("OPTIONS", "INVITE")
        .replace("probe-1", "inv-1");
    sock.send_to(invite.as_bytes(), ep.local_addr())
        .await
        .unwrap();
    let req = timeout(WAIT, incoming.recv()).await.unwrap().unwrap();
    assert_eq!(message::call_id(&req.msg).unwrap(), "inv-1");
    assert_eq!(req.transport, Transport::Udp);
    sock.send_to(invite.as_bytes(), ep.local_addr())
        .await
        .unwrap();
    // Sent before the owner registered: it waits in the call's channel.
    let answered = exchange(&ep, &sock, OPTIONS.as_bytes()).await;
    assert_eq!(code(&answered).0, 200);
    let mut messages = ep.register_call("inv-1");
    let again = timeout(WAIT, messages.recv()).await.unwrap().unwrap();
    assert_eq!(message::call_id(&again.msg).unwrap(), "inv-1");
    assert_eq!(again.source, sock.local_addr().unwrap());
    assert!(incoming.try_recv().is_err());
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let (ep, _in) = start(local()).await.unwrap();
    let addr = ep.local_addr();
    let err = start(addr).await.unwrap_err();
    assert!(matches!(err, SipError::Bind { addr: a, .. } if a == addr));
    assert!(err.to_string().contains(&addr.to_string()));
}

/// RFC 3261 18.2.2 / RFC 3581: a response goes back to where its request
/// came from, even when the caller names another destination (a trunk's
/// configured address while the request came from elsewhere).
#[tokio::test]
async fn responses_follow_their_request_not_the_named_destination() {
    let (ep, _incoming) = start(local()).await.unwrap();
    let mut calls = ep.register_call("routed-1");
    let peer = UdpSocket::bind(local()).await.unwrap();
    let elsewhere = UdpSocket::bind(local()).await.unwrap();
    let bye = "BYE sip:gw@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKrouted\r\n\
From: <sip:trunk@127.0.0.1>;tag=t\r\n\
To: <sip:gw@127.0.0.1>;tag=g\r\n\
Call-ID: routed-1\r\n\
CSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n";
    peer.send_to(bye.as_bytes(), ep.local_addr()).await.unwrap();
    let Some(CallMessage {
        msg: SipMessage::Request(req),
        source,
    }) = timeout(WAIT, calls.recv()).await.unwrap()
    else {
        panic!("expected the BYE");
    };
    assert_eq!(
        source,
        peer.local_addr().unwrap(),
        "the call learns the source"
    );
    let ok = message::build_response(&req, 200, ResponseParts::default());
    let named = elsewhere.local_addr().unwrap();
    ep.send(named, Transport::Udp, message::to_bytes(ok))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));
    // Requests we originate still go where we say.
    let probe = OPTIONS.replace("z9hG4bKprobe", "z9hG4bKours");
    ep.send(named, Transport::Udp, Bytes::from(probe))
        .await
        .unwrap();
    let (n, _) = timeout(WAIT, elsewhere.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"OPTIONS"));
}
