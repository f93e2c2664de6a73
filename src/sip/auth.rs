//! Digest authentication, client side (RFC 2617, RFC 7616, RFC 3261 section
//! 22): parse a `WWW-Authenticate`/`Proxy-Authenticate` challenge and answer
//! it with an `Authorization`/`Proxy-Authorization` value.
//!
//! The challenge is parsed here rather than with rsip's typed header because
//! rsip 0.4 rejects a `qop` list (`qop="auth,auth-int"`) and writes the
//! algorithm as `SHA256` where RFC 7616 says `SHA-256`.

use md5::Md5;
use sha2::{Digest, Sha256};

use super::SipError;
use crate::types::Secret;

/// What the gateway answers a digest challenge with. The password never
/// appears in logs (`Secret`).
#[derive(Debug, Clone)]
pub struct DigestCredentials {
    pub username: String,
    pub password: Secret<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl DigestAlgorithm {
    pub(crate) fn parse(s: &str) -> Result<Self, SipError> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Ok(Self::Md5),
            "MD5-SESS" => Ok(Self::Md5Sess),
            "SHA-256" | "SHA256" => Ok(Self::Sha256),
            "SHA-256-SESS" | "SHA256-SESS" => Ok(Self::Sha256Sess),
            _ => Err(SipError::UnsupportedDigest {
                what: "algorithm",
                value: s.to_string(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    pub(crate) fn is_sess(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }

    pub(crate) fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 | Self::Md5Sess => hex::encode(Md5::digest(data.as_bytes())),
            Self::Sha256 | Self::Sha256Sess => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// A parsed digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// `None` when the challenge named no algorithm (MD5 is then implied,
    /// and the answer names none either, for RFC 2069 peers).
    pub algorithm: Option<DigestAlgorithm>,
    /// The offered qop values, lower case; empty for the legacy no-qop form.
    pub qop: Vec<String>,
    pub stale: bool,
}

impl Challenge {
    /// Parses the value of a `WWW-Authenticate` or `Proxy-Authenticate` header.
    pub fn parse(value: &str) -> Result<Self, SipError> {
        let value = value.trim();
        let (scheme, rest) = value
            .split_once(char::is_whitespace)
            .ok_or_else(|| SipError::BadChallenge("no parameters".into()))?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(SipError::UnsupportedDigest {
                what: "scheme",
                value: scheme.to_string(),
            });
        }
        let params = parse_params(rest)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm").ok_or_else(|| SipError::BadChallenge("no realm".into()))?;
        let nonce = get("nonce").ok_or_else(|| SipError::BadChallenge("no nonce".into()))?;
        let algorithm = get("algorithm")
            .map(|a| DigestAlgorithm::parse(&a))
            .transpose()?;
        let qop = get("qop")
            .map(|q| {
                q.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Challenge {
            realm,
            nonce,
            opaque: get("opaque"),
            algorithm,
            qop,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// `name=value` pairs separated by commas; values may be quoted strings
/// with backslash escapes.
pub(crate) fn parse_params(input: &str) -> Result<Vec<(String, String)>, SipError> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(SipError::BadChallenge(format!(
                "parameter {name:?} has no value"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(SipError::BadChallenge(format!(
                    "unterminated quote in {name:?}"
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Answers challenges, counting `nc` per nonce (RFC 7616 section 3.4: the
/// count increases for each request that reuses the same nonce).
#[derive(Debug, Default)]
pub struct DigestClient {
    last_nonce: Option<String>,
    nc: u32,
}

impl DigestClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// The header value answering `challenge` for `method uri`, with a fresh
    /// random cnonce.
    pub fn authorize(
        &mut self,
        creds: &DigestCredentials,
        challenge: &Challenge,
        method: &str,
        uri: &str,
    ) -> Result<String, SipError> {
        let cnonce = crate::sip::message::new_tag() + &crate::sip::message::new_tag();
        if self.last_nonce.as_deref() == Some(challenge.nonce.as_str()) {
            self.nc += 1;
        } else {
            self.last_nonce = Some(challenge.nonce.clone());
            self.nc = 1;
        }
        authorization(creds, challenge, method, uri, self.nc, &cnonce)
    }
}

/// The challenge of a 401 (`WWW-Authenticate`) or 407
/// (`Proxy-Authenticate`, then `true`) to answer: SHA-256 when the server
/// offers several (RFC 8760), else its first usable one.
pub fn pick_challenge(resp: &rsip::Response) -> Option<(Challenge, bool)> {
    use crate::sip::message;
    let proxy = message::status_code(resp) == 407;
    let name = if proxy {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let challenges: Vec<Challenge> = message::header_values(resp, name)
        .iter()
        .filter_map(|v| Challenge::parse(v).ok())
        .collect();
    let challenge = challenges
        .iter()
        .find(|c| {
            matches!(
                c.algorithm,
                Some(DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess)
            )
        })
        .or_else(|| challenges.first())
        .cloned()?;
    Some((challenge, proxy))
}

/// Answers a dialog's 401/407 challenges with its credentials: picks the
/// challenge (SHA-256 first, RFC 8760), counts `nc`, and remembers the
/// nonces it answered so that the same nonce again (not `stale`) reads as
/// wrong credentials rather than being answered forever.
#[derive(Debug, Default)]
pub struct Authenticator {
    credentials: Option<DigestCredentials>,
    digest: DigestClient,
    answered_nonces: Vec<String>,
}

impl Authenticator {
    pub fn new(credentials: Option<DigestCredentials>) -> Self {
        Authenticator {
            credentials,
            ..Default::default()
        }
    }

    /// How many challenges were answered so far.
    pub fn answered(&self) -> usize {
        self.answered_nonces.len()
    }

    /// The `Authorization` (401) or `Proxy-Authorization` (407) header
    /// answering `resp` for `method uri`, if there are credentials and a
    /// usable challenge. With `refuse_repeat`, a nonce answered before (and
    /// not stale) means the credentials are wrong: `None`.
    pub fn answer(
        &mut self,
        resp: &rsip::Response,
        method: &str,
        uri: &str,
        refuse_repeat: bool,
    ) -> Option<rsip::Header> {
        let creds = self.credentials.clone()?;
        let Some((challenge, proxy)) = pick_challenge(resp) else {
            tracing::warn!(method, "401/407 without a usable digest challenge");
            return None;
        };
        if refuse_repeat && self.answered_nonces.contains(&challenge.nonce) && !challenge.stale {
            tracing::warn!(realm = %challenge.realm, method, "credentials refused by the trunk");
            return None;
        }
        let value = match self.digest.authorize(&creds, &challenge, method, uri) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, method, "cannot answer the challenge");
                return None;
            }
        };
        self.answered_nonces.push(challenge.nonce.clone());
        tracing::info!(realm = %challenge.realm, proxy, method, "answering digest challenge");
        Some(if proxy {
            rsip::Header::ProxyAuthorization(value.into())
        } else {
            rsip::Header::Authorization(value.into())
        })
    }
}

/// The `Authorization`/`Proxy-Authorization` value for one request, with the
/// given nonce count and cnonce (deterministic, for tests and RFC vectors).
pub fn authorization(
    creds: &DigestCredentials,
    challenge: &Challenge,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Result<String, SipError> {
    let algorithm = challenge.algorithm.unwrap_or(DigestAlgorithm::Md5);
    let use_qop = if challenge.qop.is_empty() {
        false
    } else if challenge.qop.iter().any(|q| q == "auth") {
        true
    } else {
        // auth-int would need the body hash; no trunk seen so far insists on it.
        return Err(SipError::UnsupportedDigest {
            what: "qop",
            value: challenge.qop.join(","),
        });
    };
    let mut ha1 = algorithm.hash(&format!(
        "{}:{}:{}",
        creds.username,
        challenge.realm,
        creds.password.expose()
    ));
    if algorithm.is_sess() {
        ha1 = algorithm.hash(&format!("{ha1}:{}:{cnonce}", challenge.nonce));
    }
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    let nc_str = format!("{nc:08x}");
    let response = if use_qop {
        algorithm.hash(&format!(
            "{ha1}:{}:{nc_str}:{cnonce}:auth:{ha2}",
            challenge.nonce
        ))
    } else {
        algorithm.hash(&format!("{ha1}:{}:{ha2}", challenge.nonce))
    };
    let mut out = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\"",
        quote(&creds.username),
        quote(&challenge.realm),
        quote(&challenge.nonce),
        quote(uri),
        response
    );
    if let Some(a) = challenge.algorithm {
        out.push_str(&format!(", algorithm={}", a.name()));
    }
    if use_qop {
        out.push_str(&format!(
            ", qop=auth, nc={nc_str}, cnonce=\"{}\"",
            quote(cnonce)
        ));
    }
    if let Some(opaque) = &challenge.opaque {
        out.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(header: &str, name: &str) -> String {
        let rest = header.strip_prefix("Digest ").unwrap();
        parse_params(rest)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    fn creds(user: &str, pass: &str) -> DigestCredentials {
        DigestCredentials {
            username: user.into(),
            password: Secret::new(pass.into()),
        }
    }

    #[test]
    fn rfc7616_3_9_1_md5_and_sha256() {
        let c = creds("Mufasa", "Circle of Life");
        for (alg, expected) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let ch = Challenge::parse(&format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            ))
            .unwrap();
            assert_eq!(ch.qop, vec!["auth", "auth-int"]);
            let h = authorization(
                &c,
                &ch,
                "GET",
                "/dir/index.html",
                1,
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            )
            .unwrap();
            assert_eq!(param(&h, "response"), expected, "{alg}");
            assert_eq!(param(&h, "nc"), "00000001");
            assert_eq!(param(&h, "qop"), "auth");
            assert_eq!(param(&h, "algorithm"), alg);
            assert_eq!(
                param(&h, "opaque"),
                "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
            );
        }
    }

    #[test]
    fn rfc2617_3_5_example() {
        let ch = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        let h = authorization(
            &creds("Mufasa", "Circle Of Life"),
            &ch,
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        )
        .unwrap();
        assert_eq!(param(&h, "response"), "6629fae49393a05397450978507c4ef1");
        assert!(!h.contains("algorithm"));
    }

    #[test]
    fn legacy_no_qop_form() {
        let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        let h = authorization(&creds("u", "p"), &ch, "INVITE", "sip:x@y", 1, "c").unwrap();
        // MD5(MD5(u:r:p):n:MD5(INVITE:sip:x@y))
        let ha1 = hex::encode(Md5::digest(b"u:r:p"));
        let ha2 = hex::encode(Md5::digest(b"INVITE:sip:x@y"));
        let expected = hex::encode(Md5::digest(format!("{ha1}:n:{ha2}").as_bytes()));
        assert_eq!(param(&h, "response"), expected);
        assert!(!h.contains("qop") && !h.contains("cnonce") && !h.contains("nc="));
    }

    #[test]
    fn nc_counts_per_nonce_and_password_stays_hidden() {
        let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"").unwrap();
        let c = creds("u", "hunter2");
        let mut client = DigestClient::new();
        let a = client.authorize(&c, &ch, "INVITE", "sip:x@y").unwrap();
        let b = client.authorize(&c, &ch, "INVITE", "sip:x@y").unwrap();
        assert_eq!(param(&a, "nc"), "00000001");
        assert_eq!(param(&b, "nc"), "00000002");
        let ch2 = Challenge::parse("Digest realm=\"r\", nonce=\"n2\", qop=auth").unwrap();
        let d = client.authorize(&c, &ch2, "INVITE", "sip:x@y").unwrap();
        assert_eq!(param(&d, "nc"), "00000001");
        assert!(!a.contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_challenges_are_errors() {
        for bad in [
            "",
            "Basic realm=\"x\"",
            "Digest",
            "Digest realm=\"r\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
            "Digest realm=\"r, nonce=\"n\"",
            "Digest realm",
        ] {
            assert!(Challenge::parse(bad).is_err(), "{bad:?}");
        }
        let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"").unwrap();
        assert!(authorization(&creds("u", "p"), &ch, "INVITE", "sip:x", 1, "c").is_err());
        let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n\", stale=TRUE").unwrap();
        assert!(ch.stale);
    }
}
