//! Routing of new INVITEs from trunks: who may call in, which account is
//! called, and whether it can ring. An INVITE that can ring becomes an
//! incoming [`Call`]; every other one is answered here with its final status
//! (404 unknown user, 480 no session, 488 unusable offer or policy, 503
//! overloaded or shutting down) by a small server transaction that runs until
//! its response is acknowledged.
//!
//! A source outside every trunk's `inbound_sources` gets nothing at all
//! (DESIGN.md: answering spoofed sources would make the gateway a reflector).

use super::call::{Call, IncomingSetup, MediaPlan, NewInviteRoute, SessionInput};
use super::cause::Cause;
use super::driver::{self, CallIo};
use super::sessions::SessionHandle;
use super::{Calls, IncomingEntry};
use crate::policy::{self, IncomingOffer};
use crate::sdp;
use crate::sip::message::{self, ResponseParts};
use crate::sip::transport::{CallQueue, IncomingRequest, SipEndpoint};
use crate::sip::uas::{IncomingCall, USER_AGENT};
use crate::sip::Transport;
use crate::stats::live::{self, CallStart, LiveCall};
use crate::types::{CallId, Personal};
use rsip::SipMessage;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

/// The most INVITEs being refused at once (each a small task absorbing
/// retransmissions until its ACK); past it a stateless 503 goes out.
const MAX_REFUSALS: usize = 1024;
/// The longest caller id shown to browsers.
const MAX_FROM_LEN: usize = 128;

/// Takes every new request the SIP endpoint hands over, until it closes.
pub async fn route(calls: Calls, mut incoming: mpsc::Receiver<IncomingRequest>) {
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    while let Some(request) = incoming.recv().await {
        route_one(&calls, &refusals, request).await;
    }
}

async fn route_one(calls: &Calls, refusals: &Arc<Semaphore>, request: IncomingRequest) {
    let source = request.source;
    let authenticated = request.trunk.is_some();
    let trunk = match &request.trunk {
        Some(name) => calls.ctx.directory.trunk(name),
        None => calls.ctx.directory.trunk_for_source(source.ip()),
    };
    let Some(trunk) = trunk else {
        debug!(%source, "request from a source outside every trunk's inbound_sources: ignored");
        return;
    };
    let is_invite =
        matches!(&request.msg, SipMessage::Request(r) if r.method == rsip::Method::Invite);
    if !is_invite {
        // In-dialog requests reach their call by Call-ID; anything else new
        // (OPTIONS is answered by the endpoint) has no dialog to join.
        debug!(%source, "non-INVITE request without a dialog: ignored");
        return;
    }
    let now = Instant::now();
    let transport = request.transport;
    let mut uas = match IncomingCall::new(request.msg, source, now) {
        Ok(uas) => uas,
        Err(e) => {
            debug!(%source, error = %e, "unusable inbound request");
            return;
        }
    };
    uas.set_credentials(trunk.credentials());
    let refuse = |uas: IncomingCall, cause: Cause| {
        // A refusal is an incoming call that ended at once, with its cause.
        let stats = &calls.ctx.stats;
        stats.call_started(live::Direction::Incoming);
        stats.call_ended(
            live::Direction::Incoming,
            cause.sip_status(),
            cause.side().as_str(),
        );
        spawn_refusal(calls.ctx.sip.clone(), refusals, uas, transport, cause);
    };
    if !calls.is_accepting() {
        return refuse(uas, Cause::Shutdown);
    }
    let user = called_user(uas.invite(), &trunk);
    let Some(account) = user.as_deref().and_then(|u| calls.ctx.directory.account(u)) else {
        info!(%source, trunk = %trunk.name, "INVITE for no account: 404");
        return refuse(uas, Cause::UnknownUser);
    };
    let sessions = calls.ctx.sessions.sessions_of(&account.name);
    if sessions.is_empty() {
        info!(%source, account = %account.name, "INVITE for an account with no session open: 480");
        return refuse(uas, Cause::NoSession);
    }
    let mut delayed_offer = false;
    let (offer, trunk_dtls) = match uas.offer_sdp().map(sdp::parse_any_sip_offer) {
        Some(Ok(offer)) => offer,
        Some(Err(e)) => {
            warn!(%source, error = %e, "inbound offer refused");
            let code = e.sip_status();
            return refuse(
                uas,
                Cause::TrunkSdp {
                    code,
                    reason: format!("unusable SDP offer: {e}"),
                },
            );
        }
        None => {
            // A delayed offer (RFC 3261 13.2.1): our 200 carries the offer,
            // G.711 SDES or plain as the trunk's secure_media says, and the
            // trunk answers in its ACK. A private call needs the trunk's own
            // DTLS offer, so forced_relay cannot take one.
            if trunk.caller_stream == policy::CallerStream::ForcedRelay {
                warn!(%source, "INVITE without an SDP offer on a forced_relay trunk refused");
                return refuse(
                    uas,
                    Cause::TrunkSdp {
                        code: 488,
                        reason: "a private call (forced_relay) needs the trunk's SDP offer".into(),
                    },
                );
            }
            let suite = (trunk.secure_media != policy::SecureMedia::Forbidden)
                .then(|| trunk.srtp_suites.first().copied())
                .flatten();
            info!(%source, srtp = suite.is_some(), "INVITE without an SDP offer: our 200 will offer");
            delayed_offer = true;
            match sdp::parse_any_sip_offer(&sdp::delayed_offer_template(suite)) {
                Ok(offer) => offer,
                Err(e) => {
                    warn!(error = %e, "cannot write the delayed-offer template");
                    return refuse(
                        uas,
                        Cause::TrunkSdp {
                            code: 500,
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
    };
    let cryptos: Vec<(u32, crate::types::SrtpSuite)> = offer
        .cryptos
        .iter()
        .filter(|c| c.key().is_some())
        .map(|c| (c.tag, c.suite))
        .collect();
    // The trunk calls: its caller_stream, its secure_media and suites, and
    // whether it asked for encryption (RTP/SAVP); the callee is a browser.
    let plan = match policy::plan_incoming(
        trunk.caller_stream,
        trunk.media(),
        IncomingOffer {
            secure: offer.proto.is_secure(),
            dtls: offer.dtls.is_some(),
            cryptos: &cryptos,
        },
    ) {
        Ok(plan) => plan,
        Err(e) => {
            warn!(%source, trunk = %trunk.name, error = %e, "inbound offer refused by policy");
            return refuse(uas, Cause::Policy(e.to_string()));
        }
    };
    let allocation = match calls.ctx.media.allocate().await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "no media ports for an inbound call");
            return refuse(uas, Cause::NoResources("no media ports available".into()));
        }
    };
    let from = Personal::new(caller(uas.invite()), account.redact);
    let id = CallId(format!("in-{:016x}", rand::random::<u64>()));
    let span = info_span!("call", call_id = %id, account = %account.name, direction = "incoming");
    let _enter = span.enter();
    let media = MediaPlan {
        public_ip: calls.ctx.media.public_ip(),
        browser_port: allocation.browser_port,
        trunk_rtp_port: allocation.trunk_rtp_port,
        ice_ufrag: allocation.ice_ufrag.clone(),
        ice_pwd: allocation.ice_pwd.clone(),
        ssrc_to_browser: allocation.ssrc_to_browser,
        fingerprint_sha256: calls.ctx.media.fingerprint_sha256().to_string(),
    };
    let sip_call_id = uas.call_id();
    let sip_rx = calls.ctx.sip.register_call(&sip_call_id);
    let start = CallStart {
        id: id.0.clone(),
        direction: live::Direction::Incoming,
        account: account.name.clone(),
        remote: from.to_string(),
        trunk: trunk.name.clone(),
        redact: account.redact,
    };
    driver::record_start(&calls.ctx.cdr, &start, &sip_call_id);
    let live = calls.ctx.live.begin(start);
    driver::observe_message(&live, "in", &SipMessage::Request(uas.invite().clone()));
    let local = calls.sip_local(transport);
    // The call hears only this trunk: its inbound_sources (the INVITE's
    // source among them), its own address, and the INVITE's source when
    // it proved itself the trunk with digest credentials.
    let resolved = super::resolve_all(&trunk.uri.host, trunk.uri.port).await;
    let mut trunk_addresses: Vec<std::net::IpAddr> = resolved.iter().map(|a| a.ip()).collect();
    if authenticated {
        trunk_addresses.push(source.ip());
    }
    // Where a new INVITE goes when the trunk's REFER is carried out: as an
    // outgoing call's, through the cluster's outbound proxy when there is
    // one (its answers and requests then come from the proxy).
    let transfer_route = match &calls.ctx.outbound_proxy {
        Some(proxy) => {
            let found = super::resolve_all(&proxy.uri.host, proxy.uri.port).await;
            trunk_addresses.extend(found.iter().map(|a| a.ip()));
            found.first().map(|&destination| NewInviteRoute {
                local: calls.sip_local(Transport::from(proxy.uri.transport)),
                destination,
                routes: vec![proxy.route.clone()],
            })
        }
        None => resolved.first().map(|&destination| NewInviteRoute {
            local: calls.sip_local(Transport::from(trunk.uri.transport)),
            destination,
            routes: Vec::new(),
        }),
    };
    let trunk_sources = trunk.signaling_sources(&trunk_addresses);
    // 100 Trying is queued in `uas`; the call sends it with its 180.
    let call = Call::incoming(
        IncomingSetup {
            id: id.clone(),
            uas,
            offer,
            plan,
            trunk_dtls,
            sessions: sessions.iter().map(|s| s.key).collect(),
            from,
            account: account.clone(),
            media,
            local,
            trunk_sources,
            reject_code: trunk.reject_code,
            timers: calls.ctx.call_timers(),
            transfer_route,
            delayed_offer,
        },
        now,
    );
    drop(_enter);
    calls.ctx.stats.call_started(live::Direction::Incoming);
    spawn_incoming(
        calls,
        call,
        sessions,
        allocation,
        sip_rx,
        live,
        now,
        &account.name,
        span,
    );
}

#[allow(clippy::too_many_arguments)]
fn spawn_incoming(
    calls: &Calls,
    call: Call,
    sessions: Vec<SessionHandle>,
    allocation: crate::media::MediaAllocation,
    sip_rx: CallQueue,
    live: Arc<LiveCall>,
    now: Instant,
    account: &str,
    span: tracing::Span,
) {
    let id = call.id().clone();
    let (tx, commands) = mpsc::unbounded_channel::<SessionInput>();
    let (joins_tx, joins) = mpsc::unbounded_channel();
    calls.register_incoming(
        id.clone(),
        IncomingEntry {
            commands: tx.clone(),
            joins: joins_tx,
            account: account.to_string(),
        },
    );
    let forget = {
        let calls = calls.clone();
        let id = id.clone();
        Box::new(move || calls.forget_incoming(&id)) as Box<dyn FnOnce() + Send>
    };
    let io = CallIo {
        sip: calls.ctx.sip.clone(),
        sip_rx,
        allocation,
        sessions: sessions.into_iter().map(|s| (s.key, s.events)).collect(),
        commands,
        closed_means: None,
        joins: Some(joins),
        stats: calls.ctx.stats.clone(),
        on_over: forget,
        live,
        live_calls: calls.ctx.live.clone(),
        cdr: calls.ctx.cdr.clone(),
        started: now,
        direction: live::Direction::Incoming,
    };
    calls.spawn_task(tx, driver::run(call, io).instrument(span));
}

/// Answers an INVITE with `cause`'s final status and keeps its server
/// transaction until the ACK (or Timer H), bounded by `MAX_REFUSALS`.
fn spawn_refusal(
    sip: SipEndpoint,
    permits: &Arc<Semaphore>,
    mut uas: IncomingCall,
    transport: crate::sip::Transport,
    cause: Cause,
) {
    let code = cause.sip_status();
    let source = uas.source();
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        // Over the limit: one stateless 503 with Retry-After, no
        // retransmissions; a trunk can act on it.
        let retry_after = rsip::Header::Other("Retry-After".into(), "5".into());
        let resp = message::build_response(
            uas.invite(),
            503,
            ResponseParts {
                user_agent: USER_AGENT,
                extra: vec![retry_after],
                ..Default::default()
            },
        );
        let bytes = message::to_bytes(resp);
        tokio::spawn(async move {
            let _ = sip.send(source, transport, bytes).await;
        });
        debug!(%source, "too many refusals in progress: INVITE answered 503");
        return;
    };
    let call_id = uas.call_id();
    let mut messages = sip.register_call(&call_id);
    // An offer the gateway cannot take: the trunk is told why in a Warning.
    let why = matches!(
        cause,
        Cause::TrunkSdp { .. } | Cause::Policy(_) | Cause::NotSupported(_)
    )
    .then(|| cause.browser().1);
    uas.reject_with_warning(code, why.as_deref(), Instant::now());
    tokio::spawn(async move {
        let mut permit = Some(permit);
        while !uas.is_finished() {
            // Only responses here, to the INVITE's source: always an address.
            while let Some((bytes, to)) = uas.poll_transmit() {
                let Some(dest) = to.socket_addr() else {
                    continue;
                };
                if let Err(e) = sip.send(dest, to.transport, bytes).await {
                    warn!(error = %e, "could not answer an inbound INVITE");
                }
            }
            while uas.poll_event().is_some() {}
            if permit.is_none() {
                break;
            }
            let Some(deadline) = uas.poll_timeout() else {
                break;
            };
            tokio::select! {
                msg = messages.recv() => match msg {
                    Some(m) => {
                        let msg = m.msg;
                        // Once the final response is ACKed only Timer I's
                        // absorbing of ACK copies is left (the transport
                        // drops stray ACKs anyway): free the slot now.
                        if matches!(&msg, SipMessage::Request(r) if r.method == rsip::Method::Ack) {
                            permit = None;
                        }
                        uas.handle_message(msg, Instant::now());
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => uas.handle_timeout(Instant::now()),
            }
        }
        drop(permit);
        sip.unregister_call(&call_id);
    });
}

/// The account called: the Request-URI's user, except on a trunk the
/// gateway registers to, whose calls come to the registered Contact (its
/// user is the trunk's `username`): then the To URI's user (the number or
/// name dialled) names the account.
fn called_user(invite: &rsip::Request, trunk: &super::directory::Trunk) -> Option<String> {
    let user = request_user(invite)?;
    let registered_contact =
        trunk.register.is_some() && trunk.username.as_deref() == Some(user.as_str());
    if !registered_contact {
        return Some(user);
    }
    let to = message::header_values(invite, "To")
        .into_iter()
        .next()
        .and_then(|v| message::addr_uri(&v))?;
    let rest = to
        .strip_prefix("sip:")
        .or_else(|| to.strip_prefix("sips:"))?;
    rest.split_once('@')
        .map(|(user, _)| user.split(';').next().unwrap_or(user).to_string())
        .filter(|u| !u.is_empty())
}

/// The Request-URI's user part.
fn request_user(invite: &rsip::Request) -> Option<String> {
    invite
        .uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .filter(|u| !u.is_empty())
}

/// The caller as browsers are shown it: the From URI's user part (a number,
/// usually), else the whole URI; printable ASCII, bounded.
fn caller(invite: &rsip::Request) -> String {
    let from = message::header_values(invite, "From")
        .into_iter()
        .next()
        .and_then(|v| message::addr_uri(&v))
        .unwrap_or_default();
    let without_scheme = from
        .strip_prefix("sip:")
        .or_else(|| from.strip_prefix("sips:"))
        .or_else(|| from.strip_prefix("tel:"))
        .unwrap_or(&from);
    let shown = match without_scheme.split_once('@') {
        Some((user, _)) if !user.is_empty() => user.split(';').next().unwrap_or(user),
        _ => from.as_str(),
    };
    let clean: String = shown
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_FROM_LEN)
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(uri: &str, from: &str) -> rsip::Request {
        let text = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
From: {from};tag=1\r\nTo: <{uri}>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn account_and_caller_come_from_the_request() {
        let r = invite(
            "sip:alice@10.0.0.1:5060",
            "\"Bob\" <sip:+4930123@carrier.example>",
        );
        assert_eq!(request_user(&r).as_deref(), Some("alice"));
        assert_eq!(caller(&r), "+4930123");
        let r = invite("sip:10.0.0.1:5060", "<sip:carrier.example>");
        assert_eq!(request_user(&r), None);
        assert_eq!(caller(&r), "sip:carrier.example");
        let r = invite("sip:bob@h", "<tel:+1555;phone-context=x>");
        assert_eq!(caller(&r), "tel:+1555;phone-context=x");
    }

    #[test]
    fn calls_to_a_registered_contact_name_the_account_in_to() {
        let text = "INVITE sip:gw-user@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
From: <sip:+4930123@carrier.example>;tag=1\r\nTo: <sip:alice@carrier.example>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let SipMessage::Request(r) = message::parse(text.as_bytes()).unwrap() else {
            unreachable!()
        };
        let mut trunk = crate::calls::directory::demo_trunk(5070);
        trunk.username = Some("gw-user".into());
        // Not registering: the Request-URI's user is the account.
        assert_eq!(called_user(&r, &trunk).as_deref(), Some("gw-user"));
        trunk.register = Some(std::time::Duration::from_secs(3600));
        assert_eq!(called_user(&r, &trunk).as_deref(), Some("alice"));
    }
}
