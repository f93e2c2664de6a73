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
async fn next_input(rx: &mut CallQueue, deadline: Option<Instant>) -> Option<SipMessage> {
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
                ..
            } = req;
            let mut call = IncomingCall::new(msg, source, Instant::now()).unwrap();
            let call_id = call.call_id();
            let mut messages = ep.register_call(&call_id);
            call.ringing(Instant::now());
            // The Contact is where the caller's ACK and BYE come (RFC 3261
            // 12.2.1.1): the listener of the transport the INVITE came on.
            let contact = match transport {
                Transport::Tcp => {
                    format!("<sip:echo@{};transport=tcp>", ep.tcp_local_addr().unwrap())
                }
                Transport::Tls => {
                    format!("<sip:echo@{};transport=tls>", ep.tls_local_addr().unwrap())
                }
                Transport::Udp => format!("<sip:echo@{}>", ep.local_addr()),
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
            routes: vec![],
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
            UasEvent::Acked { sdp: None },
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
        tls_listen: None,
        door: super::door::DoorConfig::open(),
        stream_limits: super::StreamLimits::default(),
        digest: None,
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
async fn a_draining_node_answers_options_503() {
    let (ep, _incoming) = start(local()).await.unwrap();
    let sock = UdpSocket::bind(local()).await.unwrap();
    assert_eq!(code(&exchange(&ep, &sock, OPTIONS.as_bytes()).await).0, 200);
    assert!(!ep.is_draining());
    ep.set_draining();
    assert!(ep.is_draining());
    let again = OPTIONS.replace("z9hG4bKprobe", "z9hG4bKprobe2");
    assert_eq!(code(&exchange(&ep, &sock, again.as_bytes()).await).0, 503);
}

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
    }) = timeout(WAIT, calls.recv()).await.unwrap().map(|m| *m)
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

/// A CA and a certificate it signed for 127.0.0.1, as a TLS trunk has.
struct TestPki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
    leaf_der: Vec<u8>,
}

fn test_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test trunk CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(crate::sip::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
        leaf_der: leaf.der().to_vec(),
    }
}

fn tls_config(server: Option<Arc<rustls::ServerConfig>>, limits: StreamLimits) -> EndpointConfig {
    EndpointConfig {
        udp_listen: local(),
        tcp_listen: Some(local()),
        tls_listen: server.map(|s| (local(), s)),
        door: super::door::DoorConfig::open(),
        stream_limits: limits,
        digest: None,
    }
}

fn trunk_profile(ca_pem: &str, pin: Option<String>) -> crate::sip::tls::TlsPeer {
    let dir = std::env::temp_dir().join(format!(
        "sip-tls-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let tls = crate::sip::tls::TrunkTls {
        host: "127.0.0.1".into(),
        verify: if pin.is_some() {
            crate::config::TlsVerify::Pinned
        } else {
            crate::config::TlsVerify::Ca
        },
        ca_file: Some(ca_file),
        fingerprint: pin,
    };
    let peer = crate::sip::tls::TlsPeer::for_trunk("trunk", &tls).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    peer
}

#[tokio::test]
async fn invite_200_ack_bye_over_tls_with_a_verified_trunk() {
    let pki = test_pki();
    let (gw, _gw_in) = start_with(tls_config(
        Some(pki.server.clone()),
        StreamLimits::default(),
    ))
    .await
    .unwrap();
    let (trunk, trunk_in) = start_with(tls_config(
        Some(pki.server.clone()),
        StreamLimits::default(),
    ))
    .await
    .unwrap();
    let dest = trunk.tls_local_addr().unwrap();
    gw.add_tls_peer(dest, trunk_profile(&pki.ca_pem, None));
    let (done_tx, mut done_rx) = mpsc::channel(1);
    tokio::spawn(echo_trunk(trunk.clone(), trunk_in, done_tx));
    let uac_events = timeout(WAIT, place_call(&gw, dest, Transport::Tls))
        .await
        .expect("call finished");
    let uas_events = timeout(WAIT, done_rx.recv()).await.unwrap().unwrap();
    check_call(&uac_events, &uas_events);
    assert!(received(&trunk, "INVITE") >= 1);
}

/// Requests of `method` an endpoint received, from its metrics.
fn received(ep: &SipEndpoint, method: &str) -> u64 {
    let mut out = String::new();
    ep.stats().traffic.render_prometheus(&mut out);
    let prefix = format!("gateway_sip_requests_total{{direction=\"in\",method=\"{method}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn pinned_trunk_certificate_is_accepted_and_another_is_not() {
    let pki = test_pki();
    let (gw, _gw_in) = start_with(tls_config(None, StreamLimits::default()))
        .await
        .unwrap();
    let (trunk, mut trunk_in) = start_with(tls_config(
        Some(pki.server.clone()),
        StreamLimits::default(),
    ))
    .await
    .unwrap();
    let dest = trunk.tls_local_addr().unwrap();
    let invite = |branch: &str| {
        Bytes::from(format!(
            "OPTIONS sip:t@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK{branch}\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:t@127.0.0.1>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ))
    };
    // Someone else's certificate under the pin: nothing leaves.
    let other = test_pki();
    let wrong = format!("sha-256 {}", crate::sip::tls::fingerprint(&other.leaf_der));
    gw.add_tls_peer(dest, trunk_profile(&pki.ca_pem, Some(wrong)));
    let err = gw
        .send(dest, Transport::Tls, invite("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, SipError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(gw.stats().tls_failures.load(Ordering::Relaxed), 1);
    // The right pin: the message arrives.
    let right = format!("sha-256 {}", crate::sip::tls::fingerprint(&pki.leaf_der));
    gw.add_tls_peer(dest, trunk_profile(&other.ca_pem, Some(right)));
    gw.send(dest, Transport::Tls, invite("b")).await.unwrap();
    // OPTIONS is answered by the endpoint itself, never queued as a call.
    timeout(WAIT, async {
        while received(&trunk, "OPTIONS") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(trunk_in.try_recv().is_err());
}

#[tokio::test]
async fn an_untrusted_trunk_gets_nothing_on_any_transport() {
    let pki = test_pki();
    let stranger_ca = test_pki();
    let (gw, _gw_in) = start_with(tls_config(None, StreamLimits::default()))
        .await
        .unwrap();
    let (trunk, _trunk_in) = start_with(tls_config(
        Some(pki.server.clone()),
        StreamLimits::default(),
    ))
    .await
    .unwrap();
    let dest = trunk.tls_local_addr().unwrap();
    gw.add_tls_peer(dest, trunk_profile(&stranger_ca.ca_pem, None));
    let events = timeout(WAIT, async {
        let call_id = message::new_call_id();
        let mut call = OutgoingCall::new(
            UacConfig {
                call_id: call_id.clone(),
                request_uri: format!("sip:echo@{dest};transport=tls"),
                from_uri: "sip:alice@127.0.0.1".into(),
                contact: "<sip:alice@127.0.0.1;transport=tls>".into(),
                via_host: "127.0.0.1".into(),
                via_port: 5061,
                transport: Transport::Tls,
                destination: dest,
                credentials: None,
                user_agent: "test".into(),
                routes: vec![],
            },
            "v=0 offer\r\n".into(),
            Instant::now(),
        );
        let (bytes, _) = call.poll_transmit().unwrap();
        gw.send(dest, Transport::Tls, bytes).await
    })
    .await
    .unwrap();
    let err = events.unwrap_err();
    assert!(
        err.to_string().contains("trunk certificate not accepted"),
        "{err}"
    );
    // The trunk counted no message.
    assert_eq!(received(&trunk, "INVITE"), 0);
    // Without a profile for an address, no TLS connection is even tried.
    let nowhere: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let err = gw
        .send(nowhere, Transport::Tls, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no TLS trunk"), "{err}");
}

#[tokio::test]
async fn stalled_and_idle_stream_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = StreamLimits {
        idle: Duration::from_millis(600),
        message: Duration::from_millis(300),
        per_source: 2,
    };
    let (gw, _gw_in) = start_with(tls_config(None, limits)).await.unwrap();
    let addr = gw.tcp_local_addr().unwrap();
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    // Half a message, then nothing: closed on the message clock.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(
        b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKa\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    timeout(WAIT, closed(half)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // Connected and silent: closed on the message clock too.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    timeout(WAIT, closed(silent)).await.unwrap();
    // One whole message, then idle: closed on the idle clock.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKb\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: idle\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    timeout(WAIT, closed(idle)).await.unwrap();
    assert!(gw.stats().connections_timed_out.load(Ordering::Relaxed) >= 3);
    // A cap per source: the third connection at once is closed at accept.
    // Told apart from the message clock by the refusal counter, not by how
    // fast it closed (a busy machine may take longer than 300 ms).
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = gw.stats().connections_refused.load(Ordering::Relaxed);
    let third = tokio::net::TcpStream::connect(addr).await.unwrap();
    timeout(WAIT, closed(third)).await.unwrap();
    assert_eq!(
        gw.stats().connections_refused.load(Ordering::Relaxed),
        refused + 1,
        "the third connection was refused at accept"
    );
    drop((a, b));
}

#[test]
fn response_routes_stay_bounded_and_drop_the_oldest_first() {
    let mut routes = super::ResponseRoutes::default();
    let t0 = Instant::now();
    let route = |at| super::ResponseRoute {
        source: "127.0.0.1:5060".parse().unwrap(),
        transport: Transport::Udp,
        at,
    };
    for i in 0..(super::MAX_RESPONSE_ROUTES + 10) {
        routes.insert(format!("b{i}"), route(t0));
    }
    assert_eq!(routes.map.len(), super::MAX_RESPONSE_ROUTES);
    assert!(!routes.map.contains_key("b0"));
    assert!(routes
        .map
        .contains_key(&format!("b{}", super::MAX_RESPONSE_ROUTES + 9)));
    // Retransmissions of one branch do not grow the table without bound.
    for _ in 0..(3 * super::MAX_RESPONSE_ROUTES) {
        routes.insert("again".into(), route(t0));
    }
    assert!(routes.order.len() <= 2 * super::MAX_RESPONSE_ROUTES);
    assert!(routes.map.contains_key("again"));
    // Past a transaction's lifetime everything older goes.
    routes.insert("late".into(), route(t0 + crate::sip::T1 * 65));
    assert_eq!(routes.map.len(), 1);
}

#[test]
fn inflight_invites_are_capped_per_source_and_end_with_a_final() {
    let mut inflight = super::Inflight::default();
    let t0 = Instant::now();
    let a: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let b: std::net::IpAddr = "198.51.100.2".parse().unwrap();
    assert!(inflight.begin("b1".into(), a, 2, t0));
    assert!(inflight.begin("b2".into(), a, 2, t0));
    // A retransmission is the same transaction.
    assert!(inflight.begin("b2".into(), a, 2, t0));
    assert!(!inflight.begin("b3".into(), a, 2, t0));
    // Another source has its own count.
    assert!(inflight.begin("c1".into(), b, 2, t0));
    inflight.end("b1");
    assert!(inflight.begin("b3".into(), a, 2, t0));
    inflight.end("b2");
    inflight.end("b3");
    inflight.end("c1");
    assert!(inflight.per_source.is_empty() && inflight.by_branch.is_empty());
}

#[tokio::test]
async fn an_invite_requiring_an_extension_we_lack_gets_420_and_reaches_no_call() {
    let (ep, mut incoming) = start(local()).await.unwrap();
    let sock = UdpSocket::bind(local()).await.unwrap();
    let invite = OPTIONS.replace("OPTIONS", "INVITE").replace(
        "Content-Length: 0",
        "Require: 100rel, timer\r\nContent-Length: 0",
    );
    let answer = exchange(&ep, &sock, invite.as_bytes()).await;
    assert_eq!(code(&answer).0, 420);
    let SipMessage::Response(resp) = &answer else {
        unreachable!()
    };
    assert_eq!(
        message::header_values(resp, "Unsupported"),
        vec!["100rel".to_string()]
    );
    assert!(incoming.try_recv().is_err(), "the B2BUA never saw it");
    // Session timers are ours (RFC 4028); an interval below 90 s is 422.
    let short = OPTIONS
        .replace("OPTIONS", "INVITE")
        .replace("probe-1", "probe-3")
        .replace(
            "Content-Length: 0",
            "Require: timer\r\nSession-Expires: 60\r\nContent-Length: 0",
        );
    let answer = exchange(&ep, &sock, short.as_bytes()).await;
    assert_eq!(code(&answer).0, 422);
    let SipMessage::Response(resp) = &answer else {
        unreachable!()
    };
    assert_eq!(
        message::header_values(resp, "Min-SE"),
        vec!["90".to_string()]
    );
    assert!(incoming.try_recv().is_err(), "the B2BUA never saw it");
    // Supported (not Require) is no obstacle.
    let fine = OPTIONS
        .replace("OPTIONS", "INVITE")
        .replace("probe-1", "probe-2")
        .replace(
            "Content-Length: 0",
            "Supported: 100rel\r\nContent-Length: 0",
        );
    sock.send_to(fine.as_bytes(), ep.local_addr())
        .await
        .unwrap();
    let got = timeout(WAIT, incoming.recv()).await.unwrap().unwrap();
    assert_eq!(message::call_id(&got.msg).unwrap(), "probe-2");
}
