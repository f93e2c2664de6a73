//! The registration state machine against scripted registrar answers, on a
//! clock the tests move: no sockets, no sleeps.

use super::*;
use crate::sip::auth;
use crate::sip::message::ResponseParts;
use crate::types::Secret;
use rsip::Request;

const AOR: &str = "sip:gw@192.0.2.10";
const REGISTRAR: &str = "sip:192.0.2.10:5060";
const CONTACT: &str = "<sip:gw@192.0.2.1:5060;transport=udp>";

fn config(expires: u32) -> RegisterConfig {
    RegisterConfig {
        registrar_uri: REGISTRAR.into(),
        aor: AOR.into(),
        contact: CONTACT.into(),
        via_host: "192.0.2.1".into(),
        via_port: 5060,
        transport: Transport::Udp,
        call_id: "reg-call-1".into(),
        credentials: DigestCredentials {
            username: "gw".into(),
            password: Secret::new("hunter2".into()),
        },
        expires,
        user_agent: "test".into(),
    }
}

/// A registration whose first REGISTER went out at `t0`; returns it.
fn started(expires: u32, t0: Instant) -> (Registration, Request) {
    let mut reg = Registration::new(config(expires), t0);
    assert_eq!(reg.poll_timeout(), Some(t0));
    reg.handle_timeout(t0);
    let req = sent(&mut reg).expect("REGISTER at once");
    (reg, req)
}

/// The last request queued, if any (earlier ones are retransmissions).
fn sent(reg: &mut Registration) -> Option<Request> {
    let bytes = std::iter::from_fn(|| reg.poll_transmit()).last()?;
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("hunter2"), "the password went on the wire");
    match message::parse(&bytes) {
        Ok(SipMessage::Request(r)) => Some(r),
        other => panic!("not a request: {other:?}"),
    }
}

fn events(reg: &mut Registration) -> Vec<RegEvent> {
    std::iter::from_fn(|| reg.poll_event()).collect()
}

fn reply(req: &Request, code: u16, contact: Option<&str>, extra: Vec<Header>) -> SipMessage {
    SipMessage::Response(message::build_response(
        req,
        code,
        ResponseParts {
            to_tag: Some("reg-tag"),
            contact,
            extra,
            ..Default::default()
        },
    ))
}

fn www(value: &str) -> Header {
    Header::WwwAuthenticate(value.into())
}

fn header(req: &Request, name: &str) -> Option<String> {
    message::header_values(req, name).into_iter().next()
}

fn cseq(req: &Request) -> u32 {
    message::cseq(req).unwrap().0
}

/// The parameters of a `Digest k=v, k="v"` value.
fn digest_params(value: &str) -> Vec<(String, String)> {
    let rest = value.strip_prefix("Digest ").expect("a Digest value");
    message::split_top_level_commas(rest)
        .into_iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {params:?}"))
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn first_register_names_the_aor_contact_and_expiry() {
    let t0 = Instant::now();
    let (reg, req) = started(3600, t0);
    assert_eq!(req.method, Method::Register);
    assert_eq!(req.uri.to_string(), REGISTRAR);
    assert_eq!(
        message::addr_uri(&header(&req, "To").unwrap()).unwrap(),
        AOR
    );
    assert_eq!(
        message::addr_uri(&header(&req, "From").unwrap()).unwrap(),
        AOR
    );
    assert!(message::from_tag(&req).is_some() && message::to_tag(&req).is_none());
    assert_eq!(header(&req, "Contact").unwrap(), CONTACT);
    assert_eq!(header(&req, "Expires").unwrap(), "3600");
    assert_eq!(message::call_id(&req).unwrap(), "reg-call-1");
    assert_eq!(cseq(&req), 1);
    assert!(header(&req, "Authorization").is_none());
    assert!(header(&req, "Via")
        .unwrap()
        .starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK"));
    assert_eq!(reg.state(), &RegState::Registering);
}

#[test]
fn challenge_is_answered_with_a_correct_digest() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    let challenge =
        "Digest realm=\"sipp.test\", nonce=\"n-1\", opaque=\"op\", qop=\"auth\", algorithm=MD5";
    reg.handle_message(reply(&first, 401, None, vec![www(challenge)]), t0);
    let second = sent(&mut reg).expect("an authorised REGISTER");
    assert_eq!(message::call_id(&second).unwrap(), "reg-call-1");
    assert_eq!(cseq(&second), 2);
    assert_eq!(message::from_tag(&second), message::from_tag(&first));
    assert_ne!(
        message::top_via_branch(&second),
        message::top_via_branch(&first),
        "a new transaction"
    );
    let auth = header(&second, "Authorization").expect("Authorization");
    let p = digest_params(&auth);
    assert_eq!(param(&p, "username"), "gw");
    assert_eq!(param(&p, "realm"), "sipp.test");
    assert_eq!(param(&p, "uri"), REGISTRAR);
    assert_eq!(param(&p, "nc"), "00000001");
    assert_eq!(param(&p, "opaque"), "op");
    // The response a registrar knowing the password computes.
    let expected = auth::authorization(
        &config(3600).credentials,
        &auth::Challenge::parse(challenge).unwrap(),
        "REGISTER",
        REGISTRAR,
        1,
        param(&p, "cnonce"),
    )
    .unwrap();
    assert_eq!(
        param(&p, "response"),
        param(&digest_params(&expected), "response")
    );
    // RFC 2617 by hand, so a shared mistake with auth.rs cannot hide.
    let md5 = |s: String| hex::encode(<md5::Md5 as sha2::Digest>::digest(s.as_bytes()));
    let ha1 = md5("gw:sipp.test:hunter2".into());
    let ha2 = md5(format!("REGISTER:{REGISTRAR}"));
    let by_hand = md5(format!(
        "{ha1}:n-1:00000001:{}:auth:{ha2}",
        param(&p, "cnonce")
    ));
    assert_eq!(param(&p, "response"), by_hand);

    reg.handle_message(reply(&second, 200, Some(CONTACT), vec![]), t0);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Registered { expires: S(3600) }]
    );
    assert_eq!(reg.state(), &RegState::Registered { expires: S(3600) });
}

#[test]
fn proxy_challenge_is_answered_with_proxy_authorization() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    let ch = Header::ProxyAuthenticate("Digest realm=\"p\", nonce=\"pn\"".into());
    reg.handle_message(reply(&first, 407, None, vec![ch]), t0);
    let second = sent(&mut reg).unwrap();
    assert!(header(&second, "Proxy-Authorization").is_some());
    assert!(header(&second, "Authorization").is_none());
}

#[test]
fn contact_expires_schedules_a_refresh_with_the_same_call_id_and_next_cseq() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    // Our contact's own expires wins over the Expires header and over
    // another binding of the same AOR listed in the answer.
    let contacts = format!("<sip:other@198.51.100.7:5060>;expires=10, {CONTACT};expires=120");
    reg.handle_message(
        reply(
            &first,
            200,
            Some(&contacts),
            vec![Header::Expires("3600".into())],
        ),
        t0,
    );
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Registered { expires: S(120) }]
    );
    // Refreshed at half its life (a short binding), well before it ends.
    assert_eq!(reg.poll_timeout(), Some(t0 + S(60)));
    reg.handle_timeout(t0 + S(59));
    assert!(sent(&mut reg).is_none());
    reg.handle_timeout(t0 + S(60));
    let refresh = sent(&mut reg).expect("a refresh");
    assert_eq!(message::call_id(&refresh).unwrap(), "reg-call-1");
    assert_eq!(cseq(&refresh), cseq(&first) + 1);
    assert_eq!(message::from_tag(&refresh), message::from_tag(&first));
    assert_eq!(header(&refresh, "Expires").unwrap(), "3600");
    assert_eq!(reg.state(), &RegState::Registered { expires: S(120) });

    // No contact parameter: the Expires header; refreshed 5 min early.
    let t1 = t0 + S(60);
    reg.handle_message(
        reply(&refresh, 200, None, vec![Header::Expires("1800".into())]),
        t1,
    );
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Refreshed { expires: S(1800) }]
    );
    assert_eq!(reg.poll_timeout(), Some(t1 + S(1500)));

    // Neither: what we asked for. Never more than that either.
    reg.handle_timeout(t1 + S(1500));
    let again = sent(&mut reg).unwrap();
    assert_eq!(cseq(&again), cseq(&refresh) + 1);
    let t2 = t1 + S(1500);
    reg.handle_message(
        reply(
            &again,
            200,
            Some(&format!("{CONTACT};expires=99999")),
            vec![],
        ),
        t2,
    );
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Refreshed { expires: S(3600) }]
    );
    assert_eq!(reg.poll_timeout(), Some(t2 + S(3300)));
}

#[test]
fn refresh_time_is_before_expiry_for_any_grant() {
    for secs in [1, 2, 4, 60, 599, 600, 601, 3600, 86_400] {
        let e = S(secs);
        let r = refresh_after(e);
        assert!(r <= e && r >= Duration::from_millis(500), "{secs}: {r:?}");
        if secs >= 4 {
            assert!(r < e, "{secs}: refresh at expiry");
        }
    }
    assert_eq!(refresh_after(S(4)), S(2));
    assert_eq!(refresh_after(S(3600)), S(3300));
}

#[test]
fn interval_too_brief_retries_with_min_expires_and_keeps_the_credentials() {
    let t0 = Instant::now();
    let (mut reg, first) = started(60, t0);
    reg.handle_message(
        reply(
            &first,
            401,
            None,
            vec![www("Digest realm=\"r\", nonce=\"n\", qop=\"auth\"")],
        ),
        t0,
    );
    let authorised = sent(&mut reg).unwrap();
    reg.handle_message(
        reply(
            &authorised,
            423,
            None,
            vec![Header::MinExpires("300".into())],
        ),
        t0,
    );
    let longer = sent(&mut reg).expect("a REGISTER asking Min-Expires");
    assert_eq!(header(&longer, "Expires").unwrap(), "300");
    assert_eq!(cseq(&longer), cseq(&authorised) + 1);
    // Authorised up front with the same challenge, the nonce count one up.
    let auth = header(&longer, "Authorization").expect("still authorised");
    assert_eq!(param(&digest_params(&auth), "nc"), "00000002");
    assert!(events(&mut reg).is_empty());
    reg.handle_message(reply(&longer, 200, Some(CONTACT), vec![]), t0);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Registered { expires: S(300) }]
    );
    // The next refresh asks the configured value again.
    reg.handle_timeout(t0 + S(150));
    assert_eq!(header(&sent(&mut reg).unwrap(), "Expires").unwrap(), "60");
}

#[test]
fn interval_too_brief_without_a_longer_minimum_fails() {
    let t0 = Instant::now();
    for min in [None, Some("60"), Some("30"), Some("100000"), Some("soon")] {
        let (mut reg, first) = started(60, t0);
        let extra = min
            .map(|m| vec![Header::MinExpires(m.into())])
            .unwrap_or_default();
        reg.handle_message(reply(&first, 423, None, extra), t0);
        assert!(sent(&mut reg).is_none(), "{min:?}");
        assert!(
            matches!(reg.state(), RegState::Failed { failure, .. } if failure.code == 423),
            "{min:?}: {:?}",
            reg.state()
        );
    }
}

#[test]
fn the_same_nonce_challenged_again_means_wrong_credentials() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    let ch = || vec![www("Digest realm=\"r\", nonce=\"same\", qop=\"auth\"")];
    reg.handle_message(reply(&first, 401, None, ch()), t0);
    let authorised = sent(&mut reg).unwrap();
    reg.handle_message(reply(&authorised, 401, None, ch()), t0);
    assert!(sent(&mut reg).is_none(), "no second answer to one nonce");
    let ev = events(&mut reg);
    assert!(
        matches!(&ev[..], [RegEvent::Failed { failure, retry_in, consecutive: 1 }]
            if failure.code == 401 && *retry_in == S(10)),
        "{ev:?}"
    );
    assert_eq!(reg.failures(), 1);
    // stale=true is a new nonce to answer, not a refusal.
    let t1 = t0 + S(10);
    reg.handle_timeout(t1);
    let next = sent(&mut reg).unwrap();
    reg.handle_message(reply(&next, 401, None, ch()), t1);
    let answered = sent(&mut reg).unwrap();
    reg.handle_message(
        reply(
            &answered,
            401,
            None,
            vec![www("Digest realm=\"r\", nonce=\"same\", stale=true")],
        ),
        t1,
    );
    assert!(sent(&mut reg).is_some(), "a stale nonce is answered again");
}

#[test]
fn a_fresh_nonce_every_time_stops_after_a_few_answers() {
    let t0 = Instant::now();
    let (mut reg, mut req) = started(3600, t0);
    let mut registers = 1;
    for i in 0..10 {
        let ch = www(&format!("Digest realm=\"r\", nonce=\"n{i}\""));
        reg.handle_message(reply(&req, 401, None, vec![ch]), t0);
        match sent(&mut reg) {
            Some(next) => {
                registers += 1;
                req = next;
            }
            None => break,
        }
    }
    assert_eq!(registers, 1 + MAX_AUTH_RETRIES);
    assert!(matches!(reg.state(), RegState::Failed { failure, .. } if failure.code == 401));
    assert_eq!(reg.poll_timeout(), Some(t0 + S(10)));
}

#[test]
fn a_challenge_without_usable_digest_fails() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    reg.handle_message(reply(&first, 401, None, vec![www("Basic realm=\"x\"")]), t0);
    assert!(sent(&mut reg).is_none());
    assert!(matches!(reg.state(), RegState::Failed { failure, .. } if failure.code == 401));
}

/// Runs the clock by `poll_timeout` without ever answering, until `until`;
/// returns the offsets at which each new REGISTER (a new CSeq) went out and
/// the failure events.
fn unanswered(reg: &mut Registration, t0: Instant, until: Duration) -> (Vec<u64>, Vec<RegEvent>) {
    let (mut starts, mut evs, mut last_cseq) = (vec![], vec![], 0);
    while let Some(at) = reg.poll_timeout() {
        if at > t0 + until {
            break;
        }
        reg.handle_timeout(at);
        for bytes in std::iter::from_fn(|| reg.poll_transmit()) {
            let Ok(SipMessage::Request(r)) = message::parse(&bytes) else {
                panic!("a request")
            };
            if cseq(&r) != last_cseq {
                last_cseq = cseq(&r);
                starts.push((at - t0).as_secs());
            }
        }
        evs.extend(events(reg));
    }
    (starts, evs)
}

#[test]
fn timeouts_back_off_doubling_up_to_a_cap() {
    let t0 = Instant::now();
    let mut reg = Registration::new(config(3600), t0);
    let (starts, evs) = unanswered(&mut reg, t0, S(4 * 3600));
    let waits: Vec<u64> = evs
        .iter()
        .map(|e| match e {
            RegEvent::Failed {
                failure,
                retry_in,
                consecutive,
            } => {
                assert_eq!(failure.code, 408);
                assert!(*consecutive >= 1);
                retry_in.as_secs()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        &waits[..10],
        &[10, 30, 60, 120, 240, 480, 960, 1800, 1800, 1800]
    );
    // Each attempt waits Timer F (32 s) for an answer, then the back-off.
    assert_eq!(&starts[..4], &[0, 42, 104, 196]);
    assert_eq!(reg.failures(), waits.len() as u64);
    assert!(matches!(reg.state(), RegState::Failed { failure, .. } if failure.code == 408));
}

#[test]
fn forbidden_fails_backs_off_and_a_later_success_resets_the_back_off() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    reg.handle_message(reply(&first, 403, None, vec![]), t0);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Failed {
            failure: Failure {
                code: 403,
                reason: "Forbidden".into()
            },
            retry_in: S(10),
            consecutive: 1
        }]
    );
    assert_eq!(
        reg.state(),
        &RegState::Failed {
            failure: Failure {
                code: 403,
                reason: "Forbidden".into()
            },
            retry_at: t0 + S(10)
        }
    );
    assert!(sent(&mut reg).is_none());
    reg.handle_timeout(t0 + S(9));
    assert!(sent(&mut reg).is_none(), "not before the back-off");
    let t1 = t0 + S(10);
    reg.handle_timeout(t1);
    let retry = sent(&mut reg).expect("a retry");
    assert_eq!(cseq(&retry), 2);
    assert_eq!(message::call_id(&retry).unwrap(), "reg-call-1");
    reg.handle_message(reply(&retry, 403, None, vec![]), t1);
    assert!(matches!(
        events(&mut reg)[..],
        [RegEvent::Failed {
            consecutive: 2,
            retry_in,
            ..
        }] if retry_in == S(30)
    ));
    let t2 = t1 + S(30);
    reg.handle_timeout(t2);
    let third = sent(&mut reg).unwrap();
    reg.handle_message(reply(&third, 200, Some(CONTACT), vec![]), t2);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Registered { expires: S(3600) }]
    );
    assert_eq!(reg.failures(), 2);
    // The refresh fails: back to the first, short retry.
    let t3 = t2 + S(3300);
    reg.handle_timeout(t3);
    let refresh = sent(&mut reg).unwrap();
    reg.handle_message(reply(&refresh, 500, None, vec![]), t3);
    assert!(matches!(
        events(&mut reg)[..],
        [RegEvent::Failed { consecutive: 1, retry_in, .. }] if retry_in == S(10)
    ));
}

#[test]
fn a_transport_error_fails_the_attempt_like_a_503() {
    let t0 = Instant::now();
    let (mut reg, _) = started(3600, t0);
    reg.handle_transport_error(t0);
    assert!(matches!(reg.state(), RegState::Failed { failure, .. } if failure.code == 503));
    assert_eq!(reg.poll_timeout(), Some(t0 + S(10)));
    // Nothing in flight: nothing to fail.
    reg.handle_transport_error(t0);
    assert_eq!(reg.failures(), 1);
}

#[test]
fn a_foreign_or_provisional_response_changes_nothing() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    let (_, other) = started(3600, t0);
    reg.handle_message(reply(&other, 200, Some(CONTACT), vec![]), t0);
    reg.handle_message(reply(&first, 100, None, vec![]), t0);
    assert!(events(&mut reg).is_empty());
    assert_eq!(reg.state(), &RegState::Registering);
}

#[test]
fn unregister_sends_expires_zero_and_answers_a_challenge() {
    let t0 = Instant::now();
    let (mut reg, first) = started(3600, t0);
    reg.handle_message(reply(&first, 200, Some(CONTACT), vec![]), t0);
    events(&mut reg);
    let t1 = t0 + S(100);
    reg.unregister(t1);
    let bye = sent(&mut reg).expect("REGISTER Expires: 0");
    assert_eq!(header(&bye, "Expires").unwrap(), "0");
    assert_eq!(header(&bye, "Contact").unwrap(), CONTACT);
    assert_eq!(cseq(&bye), cseq(&first) + 1);
    assert_eq!(message::call_id(&bye).unwrap(), "reg-call-1");
    reg.handle_message(
        reply(
            &bye,
            401,
            None,
            vec![www("Digest realm=\"r\", nonce=\"u\"")],
        ),
        t1,
    );
    let authorised = sent(&mut reg).expect("authorised");
    assert_eq!(header(&authorised, "Expires").unwrap(), "0");
    assert!(header(&authorised, "Authorization").is_some());
    reg.handle_message(reply(&authorised, 200, None, vec![]), t1);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Unregistered { removed: true }]
    );
    assert_eq!(reg.state(), &RegState::Unregistered);
    assert_eq!(reg.poll_timeout(), None, "no refresh after unregistering");
    reg.unregister(t1);
    assert!(sent(&mut reg).is_none() && events(&mut reg).is_empty());
}

#[test]
fn unregister_without_a_binding_is_immediate_and_a_refusal_ends_it_too() {
    let t0 = Instant::now();
    // Never got anywhere: nothing to remove.
    let (mut reg, first) = started(3600, t0);
    reg.handle_message(reply(&first, 403, None, vec![]), t0);
    events(&mut reg);
    reg.unregister(t0);
    assert!(sent(&mut reg).is_none());
    assert!(events(&mut reg).is_empty());
    assert_eq!(reg.state(), &RegState::Unregistered);
    assert_eq!(reg.poll_timeout(), None);

    // A REGISTER in flight may have bound us: remove it anyway; a refusal
    // ends the attempt without a retry and without counting a failure.
    let (mut reg, _) = started(3600, t0);
    reg.unregister(t0);
    let bye = sent(&mut reg).expect("REGISTER Expires: 0");
    assert_eq!(header(&bye, "Expires").unwrap(), "0");
    reg.handle_message(reply(&bye, 500, None, vec![]), t0);
    assert_eq!(
        events(&mut reg),
        vec![RegEvent::Unregistered { removed: false }]
    );
    assert_eq!(reg.failures(), 0);
    assert_eq!(reg.poll_timeout(), None);

    // Unanswered: over when the transaction times out (the driver gives
    // up sooner at shutdown).
    let (mut reg, first) = started(3600, t0);
    reg.handle_message(reply(&first, 200, Some(CONTACT), vec![]), t0);
    events(&mut reg);
    reg.unregister(t0);
    let (starts, evs) = unanswered(&mut reg, t0, S(60));
    assert_eq!(starts, [0], "one REGISTER Expires: 0, no retry");
    assert_eq!(evs, vec![RegEvent::Unregistered { removed: false }]);
    assert_eq!(reg.poll_timeout(), None);
}

#[test]
fn backoff_table() {
    let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(
        secs,
        [10, 30, 60, 120, 240, 480, 960, 1800, 1800, 1800, 1800, 1800]
    );
    assert_eq!(backoff(u32::MAX), S(1800));
}
