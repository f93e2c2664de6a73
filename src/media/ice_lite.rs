//! ICE-lite responder (RFC 8445 section 2.5 and 7.3, STUN per RFC 5389).
//!
//! The gateway has public host candidates only, so it takes the lite role: it
//! never sends checks, it answers the browser's Binding requests, and the
//! browser (the full, controlling agent) nominates with USE-CANDIDATE. The
//! same requests keep flowing every few seconds as consent freshness
//! (RFC 7675), so answering them is all this struct does; it remembers the
//! nominated address so the driver knows where to send media.

use super::stun::{StunClass, StunError, StunMessage, StunWriter, BINDING};
use crate::types::Secret;
use rand::Rng;
use std::net::SocketAddr;

/// ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839 5.4).
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// RFC 8839: ufrag at least 4 characters, pwd at least 22; more is allowed
/// and costs nothing.
const UFRAG_LEN: usize = 8;
const PWD_LEN: usize = 24;

/// What a valid Binding request told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunOutcome {
    /// The request carried USE-CANDIDATE: the browser nominated this pair.
    pub nominated: bool,
}

/// One ICE-lite agent for one media stream (BUNDLE: one per call leg).
pub struct IceLite {
    local_ufrag: String,
    local_pwd: Secret<String>,
    remote_ufrag: Option<String>,
    selected: Option<SocketAddr>,
}

impl IceLite {
    /// `remote_ufrag` is the browser's `a=ice-ufrag`; when known, the
    /// USERNAME of each request must end with it. It may be unknown while
    /// the offer is still in flight (then only our half is checked).
    pub fn new(
        local_ufrag: String,
        local_pwd: Secret<String>,
        remote_ufrag: Option<String>,
    ) -> Self {
        IceLite {
            local_ufrag,
            local_pwd,
            remote_ufrag,
            selected: None,
        }
    }

    /// Fresh local credentials for `a=ice-ufrag`/`a=ice-pwd`: 8 and 24
    /// characters from the ICE character set, from the thread CSPRNG (the
    /// password is the STUN integrity key).
    pub fn generate_credentials() -> (String, Secret<String>) {
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ICE_CHARS[rng.gen_range(0..ICE_CHARS.len())]))
                .collect()
        };
        let ufrag = pick(UFRAG_LEN);
        let pwd = pick(PWD_LEN);
        (ufrag, Secret::new(pwd))
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    pub fn local_pwd(&self) -> &Secret<String> {
        &self.local_pwd
    }

    /// Learns (or, after an ICE restart, changes) the browser's ufrag.
    pub fn set_remote_ufrag(&mut self, ufrag: String) {
        self.remote_ufrag = Some(ufrag);
    }

    /// The address of the last request that authenticated with
    /// USE-CANDIDATE: where media to the browser goes.
    pub fn selected(&self) -> Option<SocketAddr> {
        self.selected
    }

    /// Answers a Binding request from `from`; writes the success response
    /// into `out` (cleared first).
    ///
    /// On error, `out` holds the error response RFC 5389 asks for when there
    /// is one to send (400 for a request without USERNAME or
    /// MESSAGE-INTEGRITY, 401 for a wrong USERNAME or integrity, 420 for
    /// unknown comprehension-required attributes), and is empty when the
    /// datagram must be dropped silently (not STUN, bad FINGERPRINT,
    /// not a request, or an error response that would be larger than the
    /// request). Error responses carry no MESSAGE-INTEGRITY: the request
    /// could not be authenticated, so there is no key to use.
    pub fn handle_stun(
        &mut self,
        request: &[u8],
        from: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<StunOutcome, StunError> {
        let result = self.answer(request, from, out);
        // `from` is unauthenticated when the request fails, so an error
        // response must not be a way to bounce more bytes at a spoofed
        // victim than the spoofer sent: answer only when it is no larger
        // than the request, else stay silent (a real ICE agent's requests
        // are always larger than our short error responses).
        if result.is_err() && out.len() > request.len() {
            out.clear();
        }
        result
    }

    fn answer(
        &mut self,
        request: &[u8],
        from: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<StunOutcome, StunError> {
        out.clear();
        let msg = StunMessage::parse(request)?;
        // A bad FINGERPRINT means this is probably not STUN at all (RFC 5389
        // 7.3): drop without answering.
        msg.verify_fingerprint()?;
        if msg.class != StunClass::Request {
            // Indications (keepalives) and stray responses get no answer.
            return Err(StunError::NotBindingRequest);
        }
        if msg.method != BINDING {
            error_response(out, &msg, 400, "Bad Request");
            return Err(StunError::NotBindingRequest);
        }
        if !msg.unknown_attributes().is_empty() {
            StunWriter::new(out, BINDING, StunClass::Error, &msg.transaction_id)
                .error_code(420, "Unknown Attribute")
                .unknown_attributes(msg.unknown_attributes())
                .fingerprint();
            return Err(StunError::UnknownAttributes);
        }
        let Some(username) = msg.username() else {
            error_response(out, &msg, 400, "Bad Request");
            return Err(StunError::MissingUsername);
        };
        if !msg.has_integrity() {
            error_response(out, &msg, 400, "Bad Request");
            return Err(StunError::MissingIntegrity);
        }
        if !self.username_matches(username) {
            error_response(out, &msg, 401, "Unauthorized");
            return Err(StunError::UsernameMismatch);
        }
        if let Err(e) = msg.verify_integrity(self.local_pwd.expose().as_bytes()) {
            error_response(out, &msg, 401, "Unauthorized");
            return Err(e);
        }

        let nominated = msg.use_candidate();
        if nominated {
            self.selected = Some(from);
        }
        StunWriter::new(out, BINDING, StunClass::Success, &msg.transaction_id)
            .xor_mapped_address(from)
            .message_integrity(self.local_pwd.expose().as_bytes())
            .fingerprint();
        Ok(StunOutcome { nominated })
    }

    /// USERNAME of a request to us is "{our ufrag}:{their ufrag}" (RFC 8445
    /// 7.2.2). Ufrags are public (they travel in SDP), so a plain comparison
    /// is fine here; the password check is the one that must not leak.
    fn username_matches(&self, username: &[u8]) -> bool {
        let local = self.local_ufrag.as_bytes();
        let Some(rest) = username
            .strip_prefix(local)
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return false;
        };
        match &self.remote_ufrag {
            Some(remote) => rest == remote.as_bytes(),
            None => !rest.is_empty(),
        }
    }
}

fn error_response(out: &mut Vec<u8>, msg: &StunMessage<'_>, code: u16, reason: &str) {
    StunWriter::new(out, msg.method, StunClass::Error, &msg.transaction_id)
        .error_code(code, reason)
        .fingerprint();
}

#[cfg(test)]
mod tests {
    use super::super::stun::attr;
    use super::*;

    const LOCAL_UFRAG: &str = "gWx8Lq3Z";
    const LOCAL_PWD: &str = "p4ssw0rdOfTwentyFourChrs";
    const REMOTE_UFRAG: &str = "brwz";

    fn agent(remote: Option<&str>) -> IceLite {
        IceLite::new(
            LOCAL_UFRAG.into(),
            Secret::new(LOCAL_PWD.into()),
            remote.map(String::from),
        )
    }

    /// A browser-like request: PRIORITY, ICE-CONTROLLING, optional
    /// USE-CANDIDATE, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT.
    fn request(username: &str, pwd: &str, use_candidate: bool, tid: [u8; 12]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StunWriter::new(&mut out, BINDING, StunClass::Request, &tid);
        w.attribute(attr::USERNAME, username.as_bytes())
            .attribute(attr::PRIORITY, &0x6e00_01ffu32.to_be_bytes())
            .attribute(
                attr::ICE_CONTROLLING,
                &0x1122_3344_5566_7788u64.to_be_bytes(),
            );
        if use_candidate {
            w.attribute(attr::USE_CANDIDATE, &[]);
        }
        w.message_integrity(pwd.as_bytes()).fingerprint();
        out
    }

    fn good_username() -> String {
        format!("{LOCAL_UFRAG}:{REMOTE_UFRAG}")
    }

    #[test]
    fn answers_a_valid_request_ipv4_and_ipv6() {
        for from in ["203.0.113.7:51000", "[2001:db8::7]:51000"] {
            let from: SocketAddr = from.parse().unwrap();
            let mut ice = agent(Some(REMOTE_UFRAG));
            let tid = [9u8; 12];
            let req = request(&good_username(), LOCAL_PWD, false, tid);
            let mut out = Vec::new();
            let outcome = ice.handle_stun(&req, from, &mut out).unwrap();
            assert_eq!(outcome, StunOutcome { nominated: false });
            assert_eq!(ice.selected(), None);

            let resp = StunMessage::parse(&out).unwrap();
            assert_eq!((resp.method, resp.class), (BINDING, StunClass::Success));
            assert_eq!(resp.transaction_id, tid);
            assert_eq!(resp.xor_mapped_address(), Some(from));
            resp.verify_integrity(LOCAL_PWD.as_bytes()).unwrap();
            assert!(resp.has_fingerprint());
            resp.verify_fingerprint().unwrap();
        }
    }

    #[test]
    fn use_candidate_nominates() {
        let mut ice = agent(Some(REMOTE_UFRAG));
        let from: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let req = request(&good_username(), LOCAL_PWD, true, [1; 12]);
        let mut out = Vec::new();
        assert!(ice.handle_stun(&req, from, &mut out).unwrap().nominated);
        assert_eq!(ice.selected(), Some(from));
    }

    #[test]
    fn ipv4_mapped_source_is_answered_as_ipv4() {
        let mut ice = agent(None);
        let from: SocketAddr = "[::ffff:192.0.2.1]:32853".parse().unwrap();
        let req = request(&good_username(), LOCAL_PWD, false, [2; 12]);
        let mut out = Vec::new();
        ice.handle_stun(&req, from, &mut out).unwrap();
        let resp = StunMessage::parse(&out).unwrap();
        assert_eq!(
            resp.xor_mapped_address(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn remote_ufrag_checked_only_when_known() {
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let req = request(&format!("{LOCAL_UFRAG}:other"), LOCAL_PWD, false, [3; 12]);
        let mut out = Vec::new();
        assert!(agent(None).handle_stun(&req, from, &mut out).is_ok());
        assert_eq!(
            agent(Some(REMOTE_UFRAG)).handle_stun(&req, from, &mut out),
            Err(StunError::UsernameMismatch)
        );
        let mut ice = agent(None);
        ice.set_remote_ufrag("other".into());
        assert!(ice.handle_stun(&req, from, &mut out).is_ok());
    }

    fn expect_error_response(out: &[u8], code: u16) {
        let m = StunMessage::parse(out).unwrap();
        assert_eq!(m.class, StunClass::Error);
        assert_eq!(m.error_code().map(|(c, _)| c), Some(code));
        assert!(!m.has_integrity());
        m.verify_fingerprint().unwrap();
    }

    #[test]
    fn wrong_credentials_get_401() {
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let mut ice = agent(Some(REMOTE_UFRAG));
        let mut out = Vec::new();
        for (username, pwd, err) in [
            (
                good_username(),
                "wrong-password-000000000",
                StunError::IntegrityMismatch,
            ),
            (
                format!("xxxx:{REMOTE_UFRAG}"),
                LOCAL_PWD,
                StunError::UsernameMismatch,
            ),
            (
                format!("{LOCAL_UFRAG}{REMOTE_UFRAG}"),
                LOCAL_PWD,
                StunError::UsernameMismatch,
            ),
            (
                format!("{LOCAL_UFRAG}:"),
                LOCAL_PWD,
                StunError::UsernameMismatch,
            ),
            (
                LOCAL_UFRAG.to_string(),
                LOCAL_PWD,
                StunError::UsernameMismatch,
            ),
        ] {
            let req = request(&username, pwd, true, [4; 12]);
            assert_eq!(
                ice.handle_stun(&req, from, &mut out),
                Err(err),
                "{username}"
            );
            expect_error_response(&out, 401);
        }
        assert_eq!(ice.selected(), None, "failed checks never nominate");
    }

    #[test]
    fn missing_username_or_integrity_gets_400() {
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let mut ice = agent(None);
        let mut out = Vec::new();

        let mut req = Vec::new();
        StunWriter::new(&mut req, BINDING, StunClass::Request, &[5; 12])
            .attribute(attr::PRIORITY, &1u32.to_be_bytes())
            .message_integrity(LOCAL_PWD.as_bytes())
            .fingerprint();
        assert_eq!(
            ice.handle_stun(&req, from, &mut out),
            Err(StunError::MissingUsername)
        );
        expect_error_response(&out, 400);

        StunWriter::new(&mut req, BINDING, StunClass::Request, &[5; 12])
            .attribute(attr::USERNAME, good_username().as_bytes())
            .attribute(attr::SOFTWARE, b"some client")
            .fingerprint();
        assert_eq!(
            ice.handle_stun(&req, from, &mut out),
            Err(StunError::MissingIntegrity)
        );
        expect_error_response(&out, 400);
    }

    #[test]
    fn error_responses_never_outgrow_the_request() {
        // A bare 28-byte request (header and FINGERPRINT) would earn a
        // 48-byte 400: from an unauthenticated source that is amplification.
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let mut req = Vec::new();
        StunWriter::new(&mut req, BINDING, StunClass::Request, &[5; 12]).fingerprint();
        let mut out = vec![1];
        assert_eq!(
            agent(None).handle_stun(&req, from, &mut out),
            Err(StunError::MissingUsername)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let mut req = Vec::new();
        StunWriter::new(&mut req, BINDING, StunClass::Request, &[6; 12])
            .attribute(attr::USERNAME, good_username().as_bytes())
            .attribute(0x0777, b"????")
            .message_integrity(LOCAL_PWD.as_bytes())
            .fingerprint();
        let mut out = Vec::new();
        assert_eq!(
            agent(None).handle_stun(&req, from, &mut out),
            Err(StunError::UnknownAttributes)
        );
        expect_error_response(&out, 420);
    }

    #[test]
    fn silently_dropped_inputs_leave_out_empty() {
        let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
        let mut ice = agent(Some(REMOTE_UFRAG));
        let mut out = vec![0xaa];

        // Bad fingerprint.
        let mut req = request(&good_username(), LOCAL_PWD, true, [7; 12]);
        let n = req.len();
        req[n - 1] ^= 0xff;
        assert_eq!(
            ice.handle_stun(&req, from, &mut out),
            Err(StunError::FingerprintMismatch)
        );
        assert!(out.is_empty());

        // An indication and a success response.
        for class in [StunClass::Indication, StunClass::Success] {
            let mut msg = Vec::new();
            StunWriter::new(&mut msg, BINDING, class, &[8; 12]).fingerprint();
            assert_eq!(
                ice.handle_stun(&msg, from, &mut out),
                Err(StunError::NotBindingRequest)
            );
            assert!(out.is_empty());
        }

        // Truncations and junk.
        let req = request(&good_username(), LOCAL_PWD, true, [7; 12]);
        for len in 0..req.len() {
            assert!(ice.handle_stun(&req[..len], from, &mut out).is_err());
        }
        assert!(ice.handle_stun(&[0x80; 40], from, &mut out).is_err());
        assert_eq!(ice.selected(), None);
    }

    #[test]
    fn rfc5769_request_authenticates_with_matching_credentials() {
        // RFC 5769 2.1 addressed to an agent whose credentials it used.
        let raw = super::super::stun::tests::rfc5769_request();
        let mut ice = IceLite::new(
            "evtj".into(),
            Secret::new("VOkJxbRl1RmTxUk/WvJxBt".into()),
            Some("h6vY".into()),
        );
        let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(
            ice.handle_stun(&raw, from, &mut out),
            Ok(StunOutcome { nominated: false })
        );
        let resp = StunMessage::parse(&out).unwrap();
        assert_eq!(resp.xor_mapped_address(), Some(from));
    }

    #[test]
    fn generated_credentials_fit_the_grammar() {
        let (ufrag, pwd) = IceLite::generate_credentials();
        assert_eq!(ufrag.len(), 8);
        assert_eq!(pwd.expose().len(), 24);
        assert!(ufrag
            .bytes()
            .chain(pwd.expose().bytes())
            .all(|c| ICE_CHARS.contains(&c)));
        let (ufrag2, pwd2) = IceLite::generate_credentials();
        assert_ne!((&ufrag, &pwd), (&ufrag2, &pwd2));
        assert_eq!(format!("{pwd2:?}"), "<redacted>");
    }
}
