//! Digest authentication, server side, for trunks that reach the gateway
//! from addresses not listed in their `inbound_sources` (RFC 3261 22.4,
//! RFC 7616): such a request is challenged with `401`, and one that answers
//! with a trunk's `inbound_username`/`inbound_password` is that trunk's.
//!
//! Stateless, because the challenge goes to strangers: the gateway keeps
//! nothing per challenge (no transaction, no retransmission, no nonce
//! table a flood could fill). The nonce carries its own issue time and a
//! MAC over that time and the source address, keyed with a secret made at
//! start: it verifies without stored state, expires after `NONCE_LIFETIME`,
//! and is worthless from another address. The price of statelessness is
//! that `nc` is not tracked, so a captured Authorization could be replayed
//! from the same address, for the same method and URI, until the nonce
//! expires; SIP over TLS closes that.
//!
//! Sans-IO: the caller passes the time (Unix seconds).

use std::net::IpAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::auth::{parse_params, DigestAlgorithm};
use crate::types::Secret;

/// How long a nonce is accepted after it was issued.
pub const NONCE_LIFETIME_SECS: u64 = 300;
/// Bytes of MAC kept in a nonce.
const MAC_LEN: usize = 16;

/// One trunk's inbound digest credentials.
#[derive(Debug, Clone)]
pub struct InboundCredential {
    pub trunk: String,
    pub username: String,
    pub password: Secret<String>,
}

/// What a request's `Authorization` proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// It comes from this trunk.
    Trunk(String),
    /// Right credentials on an expired nonce: challenge again with
    /// `stale=true` (RFC 7616 3.3), the client retries without asking
    /// its user.
    Stale,
    /// No Authorization, or one that proves nothing: challenge.
    Challenge,
    /// A wrong password or unknown user for a fresh nonce of ours: refuse.
    Refused,
}

pub struct DigestGuard {
    key: [u8; 32],
    realm: String,
    credentials: Vec<InboundCredential>,
}

impl std::fmt::Debug for DigestGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestGuard")
            .field("realm", &self.realm)
            .field("users", &self.credentials.len())
            .finish()
    }
}

impl DigestGuard {
    /// `key`: random, made at start (nonces die with the process, which
    /// only costs a client one more challenge).
    pub fn new(key: [u8; 32], realm: String, credentials: Vec<InboundCredential>) -> Self {
        DigestGuard {
            key,
            realm,
            credentials,
        }
    }

    /// Whether any trunk has inbound credentials (else strangers get 403 or
    /// silence, never a challenge).
    pub fn is_active(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// The `WWW-Authenticate` values of a 401 for `source`: MD5 and
    /// SHA-256 (RFC 8760). MD5 first although RFC 8760 asks for the
    /// preferred one first: SIPp, and other stacks that read only the first
    /// challenge, give up on a SHA-256 one; the digest guards no media keys
    /// here (those travel over TLS), so interop wins.
    pub fn challenges(&self, source: IpAddr, now: u64, stale: bool) -> [String; 2] {
        let nonce = self.nonce(source, now);
        let stale = if stale { ", stale=true" } else { "" };
        ["MD5", "SHA-256"].map(|algorithm| {
            format!(
                "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth\"{stale}",
                self.realm
            )
        })
    }

    /// Checks an `Authorization` value of a request `method uri` from
    /// `source`.
    pub fn verify(
        &self,
        authorization: Option<&str>,
        method: &str,
        uri: &str,
        source: IpAddr,
        now: u64,
    ) -> AuthOutcome {
        let Some(value) = authorization else {
            return AuthOutcome::Challenge;
        };
        let Some(rest) = value
            .trim()
            .split_once(char::is_whitespace)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Digest"))
            .map(|(_, rest)| rest)
        else {
            return AuthOutcome::Challenge;
        };
        let Ok(params) = parse_params(rest) else {
            return AuthOutcome::Challenge;
        };
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let (Some(username), Some(realm), Some(nonce), Some(digest_uri), Some(response)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return AuthOutcome::Challenge;
        };
        // Someone else's realm or nonce: not an answer to our challenge.
        if realm != self.realm {
            return AuthOutcome::Challenge;
        }
        let fresh = match self.nonce_issued(nonce, source) {
            None => return AuthOutcome::Challenge,
            Some(issued) => now.saturating_sub(issued) <= NONCE_LIFETIME_SECS && issued <= now + 5,
        };
        // The credentials answer a request to us, not to somewhere else.
        // Only host and port are compared: SIPp (and some trunks) put the
        // Request-URI without its user part in `uri`.
        if target(digest_uri) != target(uri) {
            return AuthOutcome::Refused;
        }
        let algorithm = match get("algorithm").map(DigestAlgorithm::parse) {
            None => DigestAlgorithm::Md5,
            Some(Ok(a)) if !a.is_sess() => a,
            _ => return AuthOutcome::Challenge,
        };
        let Some(credential) = self.credentials.iter().find(|c| c.username == username) else {
            return AuthOutcome::Refused;
        };
        let ha1 = algorithm.hash(&format!(
            "{username}:{realm}:{}",
            credential.password.expose()
        ));
        let ha2 = algorithm.hash(&format!("{method}:{digest_uri}"));
        let expected = match get("qop") {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                    return AuthOutcome::Refused;
                };
                algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
            }
            Some(_) => return AuthOutcome::Refused,
            None => algorithm.hash(&format!("{ha1}:{nonce}:{ha2}")),
        };
        if !constant_time_eq(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        ) {
            return AuthOutcome::Refused;
        }
        if !fresh {
            return AuthOutcome::Stale;
        }
        AuthOutcome::Trunk(credential.trunk.clone())
    }

    fn nonce(&self, source: IpAddr, now: u64) -> String {
        let mut raw = now.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.mac(now, source));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// When `nonce` was issued to `source`; None if it is not ours or was
    /// made for another address.
    fn nonce_issued(&self, nonce: &str, source: IpAddr) -> Option<u64> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        if raw.len() != 8 + MAC_LEN {
            return None;
        }
        let (time, mac) = raw.split_at(8);
        let issued = u64::from_be_bytes(time.try_into().ok()?);
        constant_time_eq(mac, &self.mac(issued, source)).then_some(issued)
    }

    fn mac(&self, issued: u64, source: IpAddr) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&issued.to_be_bytes());
        // IPv4-mapped IPv6 is the IPv4 address, as the door counts it.
        match source {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => mac.update(&v4.octets()),
                None => mac.update(&v6.octets()),
            },
            IpAddr::V4(v4) => mac.update(&v4.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

/// `host[:port]` of a SIP URI, lower case: no scheme, user or parameters.
fn target(uri: &str) -> String {
    let rest = uri
        .split_once(':')
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")
        })
        .map_or(uri, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split([';', '?'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{authorization, Challenge, DigestCredentials};

    const T0: u64 = 1_790_000_000;

    fn guard() -> DigestGuard {
        DigestGuard::new(
            [7; 32],
            "gw.example".into(),
            vec![InboundCredential {
                trunk: "carrier".into(),
                username: "carrier-in".into(),
                password: Secret::new("s3cret".into()),
            }],
        )
    }

    fn answer(g: &DigestGuard, source: IpAddr, now: u64, which: usize, password: &str) -> String {
        let challenge = Challenge::parse(&g.challenges(source, now, false)[which]).unwrap();
        let creds = DigestCredentials {
            username: "carrier-in".into(),
            password: Secret::new(password.into()),
        };
        authorization(&creds, &challenge, "INVITE", "sip:alice@gw", 1, "cn0nce").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_right_answer_names_the_trunk_with_either_algorithm() {
        let g = guard();
        let src = ip("203.0.113.5");
        for which in [0, 1] {
            let auth = answer(&g, src, T0, which, "s3cret");
            assert_eq!(
                g.verify(Some(&auth), "INVITE", "sip:alice@gw", src, T0 + 2),
                AuthOutcome::Trunk("carrier".into())
            );
        }
    }

    #[test]
    fn wrong_password_method_uri_or_source_prove_nothing() {
        let g = guard();
        let src = ip("203.0.113.5");
        let wrong = answer(&g, src, T0, 0, "guess");
        assert_eq!(
            g.verify(Some(&wrong), "INVITE", "sip:alice@gw", src, T0),
            AuthOutcome::Refused
        );
        let right = answer(&g, src, T0, 0, "s3cret");
        assert_eq!(
            g.verify(Some(&right), "BYE", "sip:alice@gw", src, T0),
            AuthOutcome::Refused
        );
        assert_eq!(
            g.verify(Some(&right), "INVITE", "sip:alice@elsewhere", src, T0),
            AuthOutcome::Refused
        );
        // Another user at the same target is the same target (SIPp's uri).
        assert_eq!(
            g.verify(Some(&right), "INVITE", "sip:bob@gw;transport=udp", src, T0),
            AuthOutcome::Trunk("carrier".into())
        );
        // The nonce was made for another address.
        assert_eq!(
            g.verify(
                Some(&right),
                "INVITE",
                "sip:alice@gw",
                ip("203.0.113.6"),
                T0
            ),
            AuthOutcome::Challenge
        );
        // Another gateway's key made it.
        let other = DigestGuard::new([8; 32], "gw.example".into(), vec![]);
        let foreign = answer(&other, src, T0, 0, "s3cret");
        assert_eq!(
            g.verify(Some(&foreign), "INVITE", "sip:alice@gw", src, T0),
            AuthOutcome::Challenge
        );
        assert_eq!(
            g.verify(None, "INVITE", "sip:alice@gw", src, T0),
            AuthOutcome::Challenge
        );
        assert_eq!(
            g.verify(
                Some("Basic Zm9vOmJhcg=="),
                "INVITE",
                "sip:alice@gw",
                src,
                T0
            ),
            AuthOutcome::Challenge
        );
        assert_eq!(
            g.verify(Some("Digest garbage"), "INVITE", "sip:alice@gw", src, T0),
            AuthOutcome::Challenge
        );
    }

    #[test]
    fn nonces_expire_into_stale() {
        let g = guard();
        let src = ip("::ffff:203.0.113.5");
        let auth = answer(&g, src, T0, 1, "s3cret");
        let late = T0 + NONCE_LIFETIME_SECS + 1;
        assert_eq!(
            g.verify(Some(&auth), "INVITE", "sip:alice@gw", src, late),
            AuthOutcome::Stale
        );
        // The IPv4 form of the same source is the same source.
        assert_eq!(
            g.verify(Some(&auth), "INVITE", "sip:alice@gw", ip("203.0.113.5"), T0),
            AuthOutcome::Trunk("carrier".into())
        );
        assert!(g.challenges(src, late, true)[0].contains("stale=true"));
    }
}
