//! Passwords (argon2id, PHC strings) and signaling tokens (HS256 JWT with
//! `sub` = account and `exp`). Also used by the CLI: `hash-password` and
//! `token`.

use super::SignalingError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An argon2id hash (default parameters, as `hash_password` makes them) of a
/// random password nobody knows. Logins for unknown accounts are checked
/// against it so that they take as long as logins with a wrong password and
/// do not reveal which account names exist.
pub(crate) const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$iOIqrefWObU/g4pqcSNIzg$ozY80Z92NRZ/7B0sFG9mAecJGdTkcHCaGRG/QWTlrRg";

/// Hashes `pw` with argon2id and a fresh random salt, as a PHC string for the
/// config's `password_hash`.
pub fn hash_password(pw: &str) -> Result<String, SignalingError> {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| SignalingError::PasswordHash(e.to_string()))?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SignalingError::PasswordHash(e.to_string()))
}

/// Whether `pw` matches the PHC hash `phc`. A malformed `phc` never matches.
/// Slow on purpose (tens of milliseconds): call it off the async executor.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(pw.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

fn now_secs() -> u64 {
    // A clock before 1970 is a broken host; treating it as 0 makes every
    // token look expired, which fails safe.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token for `account` valid for `ttl`, signed HS256 with `secret`.
pub fn mint_token(secret: &[u8], account: &str, ttl: Duration) -> Result<String, SignalingError> {
    if secret.is_empty() {
        return Err(SignalingError::EmptyTokenSecret);
    }
    let now = now_secs();
    let claims = Claims {
        sub: account.to_string(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| SignalingError::TokenInvalid(e.to_string()))
}

/// The account a token was issued for, if its HS256 signature is good and
/// it has not expired (60 s leeway for clock skew between minting servers).
pub fn verify_token(secret: &[u8], token: &str) -> Result<String, SignalingError> {
    if secret.is_empty() {
        return Err(SignalingError::EmptyTokenSecret);
    }
    // Only HS256: accepting the algorithm named in the header would let a
    // forger pick `none` or confuse key types.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => SignalingError::TokenExpired,
                // The error texts of jsonwebtoken never contain the token itself.
                _ => SignalingError::TokenInvalid(e.to_string()),
            })?;
    if data.claims.sub.is_empty() {
        return Err(SignalingError::TokenInvalid("empty `sub`".into()));
    }
    Ok(data.claims.sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn decoy_hash_parses_with_default_cost() {
        let decoy = PasswordHash::new(DECOY_HASH).unwrap();
        let real = hash_password("x").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        // Same algorithm and parameters: the decoy costs what a real check costs.
        assert_eq!(decoy.algorithm, real.algorithm);
        assert_eq!(decoy.params, real.params);
        assert!(!verify_password("", DECOY_HASH));
    }

    #[test]
    fn token_round_trip_and_refusals() {
        let token = mint_token(b"k1", "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(verify_token(b"k1", &token).unwrap(), "alice");
        assert!(matches!(
            verify_token(b"k2", &token),
            Err(SignalingError::TokenInvalid(_))
        ));
        assert!(matches!(
            verify_token(b"k1", "garbage"),
            Err(SignalingError::TokenInvalid(_))
        ));
        assert!(matches!(
            mint_token(b"", "alice", Duration::from_secs(60)),
            Err(SignalingError::EmptyTokenSecret)
        ));
        assert!(matches!(
            verify_token(b"", &token),
            Err(SignalingError::EmptyTokenSecret)
        ));
    }

    #[test]
    fn expired_token_is_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: now_secs() - 3600,
            iat: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        assert!(matches!(
            verify_token(b"k1", &token),
            Err(SignalingError::TokenExpired)
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: now_secs() + 3600,
            iat: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        assert!(verify_token(b"k1", &token).is_err());
        // An unsigned token ("alg":"none") built by hand.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now_secs() + 3600))
        );
        assert!(verify_token(b"k1", &forged).is_err());
    }
}
