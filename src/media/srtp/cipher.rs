//! The SRTP transforms, working on the caller's bytes: RFC 3711 key
//! derivation (4.3), AES counter mode (4.1.1) with HMAC-SHA1 (4.2), RFC
//! 6188's AES-192 and AES-256 variants, and RFC 7714 AES-GCM.
//!
//! AES-CTR and AES-GCM are aws-lc-rs's. HMAC-SHA1 is the RustCrypto `hmac`
//! and `sha1` crates (SHA-NI when the CPU has it): aws-lc-rs's `hmac::Context`
//! copies and then cleanses a whole `HMAC_CTX` (sized for SHA-512) per
//! packet, which measured slower than the SHA-1 itself on 172-byte packets;
//! a pre-keyed RustCrypto `Hmac<Sha1>` clones two SHA-1 states.
//!
//! Nothing here allocates after keying, and nothing here knows about packet
//! layout beyond the IV formulas: `mod.rs` decides which bytes are header,
//! payload, index and tag.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use zeroize::Zeroize;

use super::SrtpError;

/// RFC 3711 4.3.2 labels; SRTCP's are these + 3.
pub(super) const LABEL_ENCRYPTION: u8 = 0;
pub(super) const LABEL_AUTH: u8 = 1;
pub(super) const LABEL_SALT: u8 = 2;
pub(super) const LABEL_SRTCP_OFFSET: u8 = 3;

/// HMAC-SHA1 session key length (RFC 3711 4.3.2: n_a = 160 bits).
const AUTH_KEY_LEN: usize = 20;
/// GCM tag length (RFC 7714 uses the full 16 bytes).
pub(super) const GCM_TAG_LEN: usize = 16;

fn keying_error() -> SrtpError {
    // aws-lc's error says nothing either; the suite is named by the caller.
    SrtpError::Other("the crypto provider refused the SRTP key".into())
}

fn ctr_key(key: &[u8]) -> Result<EncryptingKey, SrtpError> {
    let algorithm = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        32 => &AES_256,
        _ => return Err(keying_error()),
    };
    let unbound = UnboundCipherKey::new(algorithm, key).map_err(|_| keying_error())?;
    EncryptingKey::ctr(unbound).map_err(|_| keying_error())
}

/// XORs the AES-CTR keystream starting at counter block `iv` into `data`.
/// Encryption and decryption are the same operation.
fn apply_ctr(key: &EncryptingKey, iv: [u8; 16], data: &mut [u8]) -> Result<(), SrtpError> {
    if data.is_empty() {
        return Ok(());
    }
    key.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map(|_| ())
        .map_err(|_| SrtpError::Other("AES-CTR failed".into()))
}

/// RFC 3711 4.3.1/4.3.3 with key_derivation_rate 0: the AES-CM PRF keyed with
/// the master key, IV = (master_salt XOR (label || 0^48)) * 2^16, written to
/// `out`. For RFC 7714's 96-bit salt the same layout is used (salt in the
/// high bytes, label at byte 7), as libsrtp and the browsers do.
pub(super) fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    if master_salt.len() > 14 {
        return Err(keying_error());
    }
    let prf = ctr_key(master_key)?;
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    let result = apply_ctr(&prf, iv, out);
    iv.zeroize();
    result
}

/// Session keys of one of SRTP or SRTCP for an AES-CM + HMAC-SHA1 suite.
pub(super) struct CmSession {
    ctr: EncryptingKey,
    /// Keyed once; cloned per packet (the key schedule is not redone).
    auth: Hmac<Sha1>,
    /// 112-bit session salt, left-aligned.
    salt: [u8; 14],
}

impl CmSession {
    /// `label_base` is 0 for SRTP and [`LABEL_SRTCP_OFFSET`] for SRTCP.
    pub(super) fn derive(
        master_key: &[u8],
        master_salt: &[u8],
        label_base: u8,
    ) -> Result<Self, SrtpError> {
        let mut key = [0u8; 32];
        let key = &mut key[..master_key.len().min(32)];
        let mut auth = [0u8; AUTH_KEY_LEN];
        let mut salt = [0u8; 14];
        let result = (|| {
            derive(master_key, master_salt, label_base + LABEL_ENCRYPTION, key)?;
            derive(master_key, master_salt, label_base + LABEL_AUTH, &mut auth)?;
            derive(master_key, master_salt, label_base + LABEL_SALT, &mut salt)?;
            Ok(CmSession {
                ctr: ctr_key(key)?,
                auth: Hmac::<Sha1>::new_from_slice(&auth).map_err(|_| keying_error())?,
                salt,
            })
        })();
        key.zeroize();
        auth.zeroize();
        salt.zeroize();
        result
    }

    /// RFC 3711 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16),
    /// where i is the 48-bit SRTP index or the 31-bit SRTCP index.
    pub(super) fn apply_keystream(
        &self,
        ssrc: u32,
        index: u64,
        data: &mut [u8],
    ) -> Result<(), SrtpError> {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *d ^= s;
        }
        for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *d ^= s;
        }
        apply_ctr(&self.ctr, iv, data)
    }

    /// HMAC-SHA1 over `data` followed by `trailer` (the ROC for SRTP, nothing
    /// for SRTCP); the caller truncates to the suite's tag length.
    pub(super) fn tag(&self, data: &[u8], trailer: &[u8]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        mac.update(data);
        mac.update(trailer);
        mac.finalize().into_bytes().into()
    }
}

/// Session key and salt of one of SRTP or SRTCP for an AEAD suite.
pub(super) struct GcmSession {
    key: LessSafeKey,
    /// 96-bit session salt.
    salt: [u8; 12],
}

impl GcmSession {
    pub(super) fn derive(
        master_key: &[u8],
        master_salt: &[u8],
        label_base: u8,
    ) -> Result<Self, SrtpError> {
        let mut key = [0u8; 32];
        let key = &mut key[..master_key.len().min(32)];
        let mut salt = [0u8; 12];
        let result = (|| {
            derive(master_key, master_salt, label_base + LABEL_ENCRYPTION, key)?;
            derive(master_key, master_salt, label_base + LABEL_SALT, &mut salt)?;
            Self::from_session(key, &salt)
        })();
        key.zeroize();
        salt.zeroize();
        result
    }

    /// From session key and salt directly (RFC 7714's vectors give these).
    pub(super) fn from_session(key: &[u8], salt: &[u8; 12]) -> Result<Self, SrtpError> {
        let algorithm = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            _ => return Err(keying_error()),
        };
        let unbound = UnboundKey::new(algorithm, key).map_err(|_| keying_error())?;
        Ok(GcmSession {
            key: LessSafeKey::new(unbound),
            salt: *salt,
        })
    }

    /// RFC 7714 8.1 / 9.1: IV = (0^16 || SSRC || tail48) XOR salt, where
    /// tail48 is ROC || SEQ for SRTP and 0^16 || 0 || index for SRTCP.
    fn nonce(&self, ssrc: u32, tail48: u64) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&tail48.to_be_bytes()[2..]);
        for (d, s) in iv.iter_mut().zip(self.salt) {
            *d ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypts `data` in place and returns the tag.
    pub(super) fn seal(
        &self,
        ssrc: u32,
        tail48: u64,
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; GCM_TAG_LEN], SrtpError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(ssrc, tail48), Aad::from(aad), data)
            .map_err(|_| SrtpError::Other("AES-GCM seal failed".into()))?;
        let mut out = [0u8; GCM_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Verifies and decrypts `data_and_tag` in place (the plaintext is the
    /// first `len - 16` bytes afterwards).
    pub(super) fn open(
        &self,
        ssrc: u32,
        tail48: u64,
        aad: &[u8],
        data_and_tag: &mut [u8],
    ) -> Result<(), SrtpError> {
        self.key
            .open_in_place(self.nonce(ssrc, tail48), Aad::from(aad), data_and_tag)
            .map(|_| ())
            .map_err(|_| SrtpError::AuthFailed)
    }
}

/// Compares tags without an early exit, so the time taken does not tell a
/// forger how many leading bytes were right.
pub(super) fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
