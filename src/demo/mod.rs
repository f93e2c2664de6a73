//! The built-in demo trunk: a small SIP endpoint on loopback that answers
//! every INVITE with SDES-SRTP and plays the caller's audio back, so that a
//! newcomer on defaults clicks Call and hears themselves through the whole
//! media path (browser DTLS-SRTP → relay → SDES-SRTP → echo → back).
//!
//! It speaks real SIP over UDP and real SRTP with its own keys; the gateway
//! treats it exactly like any other trunk.

use crate::media::srtp::SrtpContext;
use crate::sdp;
use crate::sip::reinvite::{OfferAnswer, RenegotiationEvent};
use crate::sip::transport::{IncomingRequest, SipEndpoint};
use crate::sip::uas::{IncomingCall, UasEvent};
use crate::types::{SrtpKeyMaterial, SrtpSuite, Ssrc};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

/// An echo call ends by itself after this long, so a forgotten tab does not
/// hold ports for ever.
const MAX_CALL: Duration = Duration::from_secs(600);

pub struct EchoTrunk {
    pub sip_addr: SocketAddr,
}

impl EchoTrunk {
    /// Starts the echo endpoint on 127.0.0.1 with an ephemeral SIP port.
    pub async fn start() -> Result<EchoTrunk, crate::sip::SipError> {
        let (endpoint, incoming) =
            SipEndpoint::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
        let sip_addr = endpoint.local_addr();
        tokio::spawn(accept_loop(endpoint, incoming));
        info!(%sip_addr, "demo echo trunk listening");
        Ok(EchoTrunk { sip_addr })
    }
}

async fn accept_loop(endpoint: SipEndpoint, mut incoming: mpsc::Receiver<IncomingRequest>) {
    while let Some(request) = incoming.recv().await {
        let endpoint = endpoint.clone();
        let span = info_span!("echo_call");
        tokio::spawn(
            async move {
                if let Err(e) = echo_call(endpoint, request).await {
                    warn!(error = %e, "echo call failed");
                }
            }
            .instrument(span),
        );
    }
}

#[derive(Debug, thiserror::Error)]
enum EchoError {
    #[error("not an INVITE")]
    NotInvite,
    #[error("offer refused: {0}")]
    Offer(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

async fn echo_call(endpoint: SipEndpoint, request: IncomingRequest) -> Result<(), EchoError> {
    let now = Instant::now();
    // The transport is the INVITE's Via's, which IncomingCall reads itself.
    let IncomingRequest { msg, source, .. } = request;
    let mut uas = match IncomingCall::new(msg, source, now) {
        Ok(uas) => uas,
        Err(e) => {
            debug!(error = %e, "not a call for the echo trunk");
            return Err(EchoError::NotInvite);
        }
    };
    let call_id = uas.call_id().to_string();
    let mut sip_rx = endpoint.register_call(&call_id);
    let result = run_echo(&endpoint, &mut uas, &mut sip_rx).await;
    endpoint.unregister_call(&call_id);
    result
}

async fn run_echo(
    endpoint: &SipEndpoint,
    uas: &mut IncomingCall,
    sip_rx: &mut crate::sip::transport::CallQueue,
) -> Result<(), EchoError> {
    let offer = match uas.offer_sdp().map(sdp::parse_sip_offer) {
        Some(Ok(offer)) => offer,
        Some(Err(e)) => {
            uas.reject(488, Instant::now());
            flush(endpoint, uas).await;
            return Err(EchoError::Offer(e.to_string()));
        }
        None => {
            uas.reject(488, Instant::now());
            flush(endpoint, uas).await;
            return Err(EchoError::Offer("no SDP".into()));
        }
    };
    // The echo only speaks SRTP: it is there to exercise the secure path.
    let Some(their_crypto) = offer.choose_crypto(&SrtpSuite::ALL).cloned() else {
        uas.reject(488, Instant::now());
        flush(endpoint, uas).await;
        return Err(EchoError::Offer("no supported a=crypto".into()));
    };
    let Some(their_key) = their_crypto.key().map(|k| k.material.clone()) else {
        uas.reject(488, Instant::now());
        flush(endpoint, uas).await;
        return Err(EchoError::Offer("a=crypto without a key".into()));
    };
    let our_key = SrtpKeyMaterial::generate(their_crypto.suite);
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = socket.local_addr()?.port();
    let answer = sdp::write_sip_answer(
        &offer,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        Some((their_crypto.tag, &our_key)),
        rand::random::<u32>() as u64,
    );
    let contact = format!("<sip:echo@127.0.0.1:{}>", endpoint.local_addr().port());
    uas.ringing(Instant::now());
    uas.answer(answer, contact, Instant::now());
    flush(endpoint, uas).await;

    let mut inbound = SrtpContext::new(&their_key).map_err(|e| EchoError::Offer(e.to_string()))?;
    let mut outbound = SrtpContext::new(&our_key).map_err(|e| EchoError::Offer(e.to_string()))?;
    let our_ssrc = Ssrc(rand::random());
    let mut buf = vec![0u8; 2048];
    let mut plain = Vec::with_capacity(2048);
    let mut protected = Vec::with_capacity(2048);
    let end_at = tokio::time::Instant::now() + MAX_CALL;
    let mut hung_up = false;
    let mut echoed: u64 = 0;
    loop {
        flush(endpoint, uas).await;
        let mut done = false;
        while let Some(event) = uas.poll_event() {
            // Keep absorbing retransmissions until the UAS says it is done.
            match event {
                UasEvent::Terminated => done = true,
                // The demo's media is fixed: a session change is refused
                // and the call goes on as it was (RFC 3261 14.2).
                // An UPDATE without SDP is a session refresh (RFC 4028).
                UasEvent::Renegotiation(RenegotiationEvent::Offer {
                    update: true,
                    sdp: None,
                }) => uas.answer_offer(OfferAnswer::Empty, Instant::now()),
                UasEvent::Renegotiation(RenegotiationEvent::Offer { .. }) => {
                    uas.answer_offer(OfferAnswer::Refuse(488), Instant::now());
                }
                // The caller did not refresh: end the call (RFC 4028 10).
                UasEvent::SessionExpired => uas.hangup(Instant::now()),
                UasEvent::Renegotiation(RenegotiationEvent::AckAnswer { .. })
                | UasEvent::RemoteHangup
                | UasEvent::Cancelled { .. }
                | UasEvent::Dtmf(_)
                // The demo never re-INVITEs (a refresh of its own included:
                // without one the caller's timer ends the call).
                | UasEvent::Own(_)
                | UasEvent::RefreshDue
                | UasEvent::TransferNotify { .. }
                // The demo leaves REFERs answered 501 (the default).
                | UasEvent::Referred(_)
                | UasEvent::Acked { .. } => {}
            }
        }
        if done {
            break;
        }
        let sip_deadline = uas.poll_timeout();
        let sleep = async {
            match sip_deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = sip_rx.recv() => match msg {
                Some(m) => uas.handle_message(m.msg, Instant::now()),
                None => break,
            },
            _ = sleep => uas.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(end_at), if !hung_up => {
                hung_up = true;
                uas.hangup(Instant::now());
            }
            received = socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                // RTCP (rtcp-mux) is not echoed; only RTP (payload types < 64 after the marker bit).
                if len < 12 || (200..=206).contains(&buf[1]) {
                    continue;
                }
                if inbound.unprotect_rtp(&buf[..len], &mut plain).is_err() {
                    continue;
                }
                plain[8..12].copy_from_slice(&our_ssrc.0.to_be_bytes());
                if outbound.protect_rtp(&plain, &mut protected).is_ok() {
                    let _ = socket.send_to(&protected, from).await;
                    echoed += 1;
                }
            }
        }
    }
    flush(endpoint, uas).await;
    info!(echoed, "echo call ended");
    Ok(())
}

/// Sends what `uas` queued, each message on the transport it names.
async fn flush(endpoint: &SipEndpoint, uas: &mut IncomingCall) {
    while let Some((bytes, to)) = uas.poll_transmit() {
        // The gateway's Contact is its address: no name to resolve.
        let Some(dest) = to.socket_addr() else {
            warn!(to = %to, "echo trunk cannot send to a host name");
            continue;
        };
        if let Err(e) = endpoint.send(dest, to.transport, bytes).await {
            warn!(error = %e, "echo trunk could not send");
        }
    }
}
