//! Known answers come from four places: the RFCs' own vectors, run
//! through the same `rtc-crypto` primitives `rtc-srtp` builds on (RFC 3711
//! B.2/B.3, RFC 6188 7.1/7.2, RFC 7714 16/17, which give session keys, so
//! they cannot enter through a master key); libsrtp's published
//! AES_CM_128_HMAC_SHA1_80 packet, which does enter through a master key
//! and so covers KDF, cipher and tag together; and, for the other suites, a
//! small reference implementation of RFC 3711/7714 written here from the
//! RFC text (HMAC from the `hmac` crate), which `SrtpContext` must match
//! byte for byte. The RFC vectors are also run through our own key
//! derivation and transforms (`cipher.rs`, over aws-lc-rs), and `rtc-srtp`,
//! the implementation this one replaced, must accept what we protect and
//! the other way round, across a sequence number wrap. rtc-crypto has no
//! AES-192, so the reference's AES-CM (PRF and keystream) is RustCrypto's
//! `aes`/`ctr`, checked against RFC 6188's AES-192 keystream vector, and
//! rtc-srtp (no AES-192, no MKI) is compared on the suites it has.
use super::*;
use crate::types::Secret;
use hmac::{Hmac, Mac as _};
use rtc_crypto::{AeadAlgorithm, RTCCrypto, StreamCipherAlgorithm};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).unwrap()
}

fn with_crypto<R>(f: impl FnOnce(&dyn RTCCrypto) -> R) -> R {
    let provider = rtc_crypto::default_provider().unwrap();
    f(provider.crypto())
}

fn material(suite: SrtpSuite, key: &[u8], salt: &[u8]) -> SrtpKeyMaterial {
    SrtpKeyMaterial {
        suite,
        key: Secret::new(key.to_vec()),
        salt: Secret::new(salt.to_vec()),
        mki: None,
    }
}

/// A deterministic key and salt per suite, for the reference comparisons.
fn fixed_material(suite: SrtpSuite, seed: u8) -> SrtpKeyMaterial {
    let key: Vec<u8> = (0..suite.key_len() as u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(seed))
        .collect();
    let salt: Vec<u8> = (0..suite.salt_len() as u8)
        .map(|i| i.wrapping_mul(13) ^ seed)
        .collect();
    material(suite, &key, &salt)
}

fn rtp_packet(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ 0x55));
    p
}

/// A receiver report with one report block (RFC 3550 6.4.2).
fn rtcp_packet(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0x00, 0x07];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..24).map(|i| i as u8));
    p
}

// ---- reference implementation, from RFC 3711 4.1.1, 4.2, 4.3 and RFC 7714 8, 9, 11

/// AES in counter mode (128-bit big-endian counter) with a 16, 24 or
/// 32-byte key, from RustCrypto: independent of both rtc-crypto and the
/// aws-lc-rs code under test.
fn ref_ctr(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    use ctr::cipher::{KeyIvInit, StreamCipher};
    match key.len() {
        16 => ctr::Ctr128BE::<aes::Aes128>::new(key.into(), iv.into()).apply_keystream(data),
        24 => ctr::Ctr128BE::<aes::Aes192>::new(key.into(), iv.into()).apply_keystream(data),
        32 => ctr::Ctr128BE::<aes::Aes256>::new(key.into(), iv.into()).apply_keystream(data),
        n => panic!("no AES with a {n}-byte key"),
    }
}

/// RFC 3711 4.3.1/4.3.3 with kdr 0: AES-CM PRF over (salt XOR label<<48) * 2^16
/// (RFC 6188 4: the same with AES-192 and AES-256 keys).
fn ref_kdf(master_key: &[u8], master_salt: &[u8], label: u8, len: usize) -> Vec<u8> {
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    // key_id = label || r (48 bits of zero), right-aligned in the 112-bit
    // salt: the label lands at byte 7.
    x[7] ^= label;
    let mut out = vec![0u8; len];
    ref_ctr(master_key, &x, &mut out);
    out
}

struct RefSession {
    key: Vec<u8>,
    salt: Vec<u8>,
    auth: Vec<u8>,
}

fn ref_session(m: &SrtpKeyMaterial, rtcp: bool) -> RefSession {
    let base = if rtcp { 3 } else { 0 };
    let (k, s) = (m.key.expose(), m.salt.expose());
    RefSession {
        key: ref_kdf(k, s, base, k.len()),
        auth: ref_kdf(k, s, base + 1, 20),
        salt: ref_kdf(k, s, base + 2, s.len()),
    }
}

fn is_gcm(suite: SrtpSuite) -> bool {
    matches!(suite, SrtpSuite::AeadAes128Gcm | SrtpSuite::AeadAes256Gcm)
}

fn gcm_algorithm(key: &[u8]) -> AeadAlgorithm {
    if key.len() == 32 {
        AeadAlgorithm::Aes256Gcm
    } else {
        AeadAlgorithm::Aes128Gcm
    }
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// RFC 3711 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16).
fn cm_iv(salt: &[u8], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..14].copy_from_slice(&index.to_be_bytes()[2..]);
    for (d, s) in iv.iter_mut().zip(salt) {
        *d ^= s;
    }
    iv
}

/// RFC 7714 8.1 / 9.1: 12-byte IV = (0^16 || SSRC || ROC/0^16,0 || SEQ/index) XOR salt.
fn gcm_iv(salt: &[u8], ssrc: u32, tail: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&tail.to_be_bytes()[2..]);
    for (d, s) in iv.iter_mut().zip(salt) {
        *d ^= s;
    }
    iv
}

/// SRTP-protects a 12-byte-header RTP packet with ROC 0. The MKI, if the
/// key has one, goes between the authenticated part and the HMAC tag (RFC
/// 3711 3.1), or after the AEAD tag (RFC 7714 8).
fn ref_protect_rtp(m: &SrtpKeyMaterial, rtp: &[u8]) -> Vec<u8> {
    let s = ref_session(m, false);
    let mki = m.mki.clone().unwrap_or_default();
    let ssrc = u32::from_be_bytes(rtp[8..12].try_into().unwrap());
    let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
    let mut out = rtp.to_vec();
    if is_gcm(m.suite) {
        with_crypto(|c| {
            let iv = gcm_iv(&s.salt, ssrc, u64::from(seq));
            let mut aead = c.new_aead(gcm_algorithm(&s.key), &s.key).unwrap();
            let (aad, body) = out.split_at_mut(12);
            let mut tag = [0u8; 16];
            aead.seal_in_place(&iv, aad, body, &mut tag).unwrap();
            out.extend_from_slice(&tag);
        });
        out.extend_from_slice(&mki);
    } else {
        let iv = cm_iv(&s.salt, ssrc, u64::from(seq));
        ref_ctr(&s.key, &iv, &mut out[12..]);
        let tag = hmac_sha1(&s.auth, &[&out, &0u32.to_be_bytes()]);
        out.extend_from_slice(&mki);
        out.extend_from_slice(&tag[..srtp_overhead(m.suite)]);
    }
    out
}

/// SRTCP-protects with the given index, E=1; the MKI follows the index
/// word (RFC 3711 3.4, RFC 7714 9).
fn ref_protect_rtcp(m: &SrtpKeyMaterial, rtcp: &[u8], index: u32) -> Vec<u8> {
    let s = ref_session(m, true);
    let mki = m.mki.clone().unwrap_or_default();
    let ssrc = u32::from_be_bytes(rtcp[4..8].try_into().unwrap());
    let e_index = (index | 0x8000_0000).to_be_bytes();
    let mut out = rtcp.to_vec();
    if is_gcm(m.suite) {
        with_crypto(|c| {
            let iv = gcm_iv(&s.salt, ssrc, u64::from(index));
            let mut aad = rtcp[..8].to_vec();
            aad.extend_from_slice(&e_index);
            let mut aead = c.new_aead(gcm_algorithm(&s.key), &s.key).unwrap();
            let mut tag = [0u8; 16];
            aead.seal_in_place(&iv, &aad, &mut out[8..], &mut tag)
                .unwrap();
            out.extend_from_slice(&tag);
        });
        out.extend_from_slice(&e_index);
        out.extend_from_slice(&mki);
    } else {
        let iv = cm_iv(&s.salt, ssrc, u64::from(index));
        ref_ctr(&s.key, &iv, &mut out[8..]);
        out.extend_from_slice(&e_index);
        // SRTCP always carries an 80-bit tag (RFC 3711 5.2 and RFC 4568
        // for the _32 suites), over everything before the MKI.
        let tag = hmac_sha1(&s.auth, &[&out]);
        out.extend_from_slice(&mki);
        out.extend_from_slice(&tag[..10]);
    }
    out
}

// ---- RFC vectors through the reference's primitives

/// RFC 3711 B.3: master key and salt to session keys.
#[test]
fn rfc3711_b3_key_derivation() {
    let key = unhex("E1F97A0D3E018BE0D64FA32C06DE4139");
    let salt = unhex("0EC675AD498AFEEBB6960B3AABE6");
    assert_eq!(
        ref_kdf(&key, &salt, 0, 16),
        unhex("C61E7A93744F39EE10734AFE3FF7A087")
    );
    assert_eq!(
        ref_kdf(&key, &salt, 2, 14),
        unhex("30CBBC08863D8C85D49DB34A9AE1")
    );
    assert_eq!(
        ref_kdf(&key, &salt, 1, 20),
        unhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

/// RFC 3711 B.2: AES-CM keystream for SSRC 0, index 0.
#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key = unhex("2B7E151628AED2A6ABF7158809CF4F3C");
    let salt = unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD");
    let iv = cm_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    let mut stream = [0u8; 48];
    with_crypto(|c| {
        let mut ctr = c
            .new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &key)
            .unwrap();
        ctr.apply_keystream(&iv, &mut stream).unwrap();
    });
    assert_eq!(
        stream.to_vec(),
        unhex(
            "E03EAD0935C95E80E166B16DD92B4EB4
             D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )
    );
}

/// RFC 6188 7.1 (AES-256-CM keystream) and 7.2 (AES-256 key derivation).
#[test]
fn rfc6188_aes_256_cm() {
    let key = unhex("57f82fe3613fd170a85ec93c40b1f0922ec4cb0dc025b58272147cc438944a98");
    let iv = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfd0000");
    let mut stream = [0u8; 48];
    with_crypto(|c| {
        let mut ctr = c
            .new_stream_cipher(StreamCipherAlgorithm::Aes256Ctr, &key)
            .unwrap();
        ctr.apply_keystream(&iv, &mut stream).unwrap();
    });
    assert_eq!(
        stream.to_vec(),
        unhex(
            "92bdd28a93c3f52511c677d08b5515a4
             9da71b2378a854f67050756ded165bac
             63c4868b7096d88421b563b8c94c9a31"
        )
    );

    let mk = unhex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6");
    let ms = unhex("3b04803de51ee7c96423ab5b78d2");
    assert_eq!(
        ref_kdf(&mk, &ms, 0, 32),
        unhex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
    );
    assert_eq!(
        ref_kdf(&mk, &ms, 2, 14),
        unhex("fa31791685ca444a9e07c6c64e93")
    );
    assert_eq!(
        ref_kdf(&mk, &ms, 1, 20),
        unhex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")
    );
    // The same keystream from the reference's RustCrypto AES.
    let mut again = [0u8; 48];
    ref_ctr(&key, &iv.clone().try_into().unwrap(), &mut again);
    assert_eq!(again, stream);
}

/// RFC 6188 7.3 (AES-192-CM keystream: session key, session salt as the
/// IV, SSRC 0 and index 0) and 7.4 (AES-192 key derivation), through the
/// reference's AES (ours: below). Debian's libsrtp 2.5.0 fails 7.4: it runs
/// the AES-256 KDF for AES-192 keys (cisco/libsrtp#763).
#[test]
fn rfc6188_aes_192_cm() {
    let key = unhex("eab234764e517b2d3d160d587d8c86219740f65f99b6bcf7");
    let salt = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfd");
    let iv = cm_iv(&salt, 0, 0);
    let expected = unhex(
        "35096cba4610028dc1b57503804ce37c
         5de986291dcce161d5165ec4568f5c9a",
    );
    let mut stream = [0u8; 32];
    ref_ctr(&key, &iv, &mut stream);
    assert_eq!(stream.to_vec(), expected);

    // 7.4: AES-192 key derivation.
    let mk = unhex("73edc66c4fa15776fb57f9505c17136550ffda71f3e8e5f1");
    let ms = unhex("c8522f3acd4ce86d5add78edbb11");
    assert_eq!(
        ref_kdf(&mk, &ms, 0, 24),
        unhex("31874736a8f1143870c26e4857d8a5b2c4a354407faadabb")
    );
    assert_eq!(
        ref_kdf(&mk, &ms, 2, 14),
        unhex("2372b82d639b6d8503a47adc0a6c")
    );
    assert_eq!(
        ref_kdf(&mk, &ms, 1, 20),
        unhex("355b10973cd95b9eacf4061c7e1a7151e7cfbfcb")
    );
}

/// RFC 7714 16.1.1 (SRTP) and 17.1.1 (SRTCP), AEAD_AES_128_GCM with the
/// session key and salt given directly.
#[test]
fn rfc7714_aead_aes_128_gcm() {
    let key = unhex("000102030405060708090a0b0c0d0e0f");
    let salt = unhex("517569642070726f2071756f");
    let rtp = unhex(
        "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
         20646976 69736120 696e2070 61727465 73207472 6573",
    );
    let iv = gcm_iv(&salt, 0x5501_a0b2, 0xf17b);
    assert_eq!(iv.to_vec(), unhex("51753c6580c2726f20718414"));
    let mut out = rtp.clone();
    let mut tag = [0u8; 16];
    with_crypto(|c| {
        let mut aead = c.new_aead(AeadAlgorithm::Aes128Gcm, &key).unwrap();
        let (aad, body) = out.split_at_mut(12);
        aead.seal_in_place(&iv, aad, body, &mut tag).unwrap();
    });
    out.extend_from_slice(&tag);
    assert_eq!(
        out,
        unhex(
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca
             be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833 899d7f27
             beb16a91 52cf765e e4390cce"
        )
    );

    let rtcp = unhex(
        "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
         4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef",
    );
    let iv = gcm_iv(&salt, 0x4d61_7273, 0x5d4);
    assert_eq!(iv.to_vec(), unhex("517524055203726f207170bb"));
    let mut out = rtcp.clone();
    let mut aad = rtcp[..8].to_vec();
    aad.extend_from_slice(&unhex("800005d4"));
    with_crypto(|c| {
        let mut aead = c.new_aead(AeadAlgorithm::Aes128Gcm, &key).unwrap();
        aead.seal_in_place(&iv, &aad, &mut out[8..], &mut tag)
            .unwrap();
    });
    out.extend_from_slice(&tag);
    out.extend_from_slice(&unhex("800005d4"));
    assert_eq!(
        out,
        unhex(
            "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7
             6c06f32d c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458
             96cf4d2f c5abf872 45d9eade 800005d4"
        )
    );
}

// ---- SrtpContext itself

/// libsrtp's test/srtp_driver.c packet for AES_CM_128_HMAC_SHA1_80, master
/// key and salt of RFC 3711 B.3: KDF, keystream and tag in one answer.
#[test]
fn libsrtp_aes_cm_128_hmac_sha1_80_packet() {
    let m = material(
        SrtpSuite::AesCm128HmacSha1_80,
        &unhex("e1f97a0d3e018be0d64fa32c06de4139"),
        &unhex("0ec675ad498afeebb6960b3aabe6"),
    );
    let plain = unhex("800f1234decafbadcafebabeabababababababababababababababab");
    let expected =
        unhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb");
    let mut out = Vec::new();
    SrtpContext::new(&m)
        .unwrap()
        .protect_rtp(&plain, &mut out)
        .unwrap();
    assert_eq!(out, expected);
    assert_eq!(ref_protect_rtp(&m, &plain), expected);
    SrtpContext::new(&m)
        .unwrap()
        .unprotect_rtp(&expected, &mut out)
        .unwrap();
    assert_eq!(out, plain);
}

#[test]
fn every_suite_matches_the_reference() {
    for suite in SrtpSuite::ALL {
        let m = fixed_material(suite, 0x21);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut out = Vec::new();
        for seq in [1u16, 2, 3, 1000] {
            let rtp = rtp_packet(seq, 0xdead_beef, 160);
            tx.protect_rtp(&rtp, &mut out).unwrap();
            assert_eq!(out, ref_protect_rtp(&m, &rtp), "{suite} rtp seq {seq}");
            assert_eq!(out.len(), rtp.len() + srtp_overhead(suite));
        }
        let rtcp = rtcp_packet(0xdead_beef);
        for index in 1..=3 {
            tx.protect_rtcp(&rtcp, &mut out).unwrap();
            assert_eq!(
                out,
                ref_protect_rtcp(&m, &rtcp, index),
                "{suite} rtcp {index}"
            );
            assert_eq!(out.len(), rtcp.len() + srtcp_overhead(suite));
        }
    }
}

#[test]
fn every_suite_round_trips_and_rejects_tampering_and_replay() {
    for suite in SrtpSuite::ALL {
        let m = SrtpKeyMaterial::generate(suite);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut rx = SrtpContext::new(&m).unwrap();
        let (mut wire, mut plain) = (Vec::new(), Vec::new());

        for seq in 0..5u16 {
            let rtp = rtp_packet(seq.wrapping_add(65533), 0x1234_5678, 172);
            tx.protect_rtp(&rtp, &mut wire).unwrap();
            assert_ne!(wire[12..rtp.len()], rtp[12..], "{suite} payload encrypted");
            rx.unprotect_rtp(&wire, &mut plain).unwrap();
            assert_eq!(plain, rtp, "{suite} seq {seq}");
        }
        // The same packet again.
        assert_eq!(
            rx.unprotect_rtp(&wire, &mut plain),
            Err(SrtpError::Replay),
            "{suite}"
        );
        assert!(plain.is_empty());

        let rtp = rtp_packet(5, 0x1234_5678, 20);
        tx.protect_rtp(&rtp, &mut wire).unwrap();
        for at in [1, 3, 12, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                rx.unprotect_rtp(&bad, &mut plain),
                Err(SrtpError::AuthFailed),
                "{suite} flip at {at}"
            );
        }
        // Tampering did not consume the index: the genuine packet passes.
        rx.unprotect_rtp(&wire, &mut plain).unwrap();
        assert_eq!(plain, rtp);

        let rtcp = rtcp_packet(0x1234_5678);
        tx.protect_rtcp(&rtcp, &mut wire).unwrap();
        let mut bad = wire.clone();
        bad[10] ^= 0x80;
        assert_eq!(
            rx.unprotect_rtcp(&bad, &mut plain),
            Err(SrtpError::AuthFailed)
        );
        rx.unprotect_rtcp(&wire, &mut plain).unwrap();
        assert_eq!(plain, rtcp, "{suite} rtcp");
        assert_eq!(rx.unprotect_rtcp(&wire, &mut plain), Err(SrtpError::Replay));

        // Another key.
        let mut other = SrtpContext::new(&SrtpKeyMaterial::generate(suite)).unwrap();
        tx.protect_rtp(&rtp_packet(6, 0x1234_5678, 20), &mut wire)
            .unwrap();
        assert_eq!(
            other.unprotect_rtp(&wire, &mut plain),
            Err(SrtpError::AuthFailed)
        );
    }
}

#[test]
fn unencrypted_srtcp_is_refused() {
    // E=0 with a valid-looking tag: rtc-srtp would return it unchecked.
    for suite in SrtpSuite::ALL {
        let m = SrtpKeyMaterial::generate(suite);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut rx = SrtpContext::new(&m).unwrap();
        let mut wire = Vec::new();
        let rtcp = rtcp_packet(7);
        tx.protect_rtcp(&rtcp, &mut wire).unwrap();
        let e_at = wire.len() - 4 - if is_gcm(suite) { 0 } else { 10 };
        wire[e_at] &= 0x7f;
        let mut plain = Vec::new();
        assert_eq!(
            rx.unprotect_rtcp(&wire, &mut plain),
            Err(SrtpError::AuthFailed)
        );
        // Forged: a plain RTCP packet with an E=0 trailer and garbage tag.
        let mut forged = rtcp.clone();
        forged.extend_from_slice(&[0, 0, 0, 9]);
        forged.extend_from_slice(&[0u8; 16]);
        assert!(rx.unprotect_rtcp(&forged, &mut plain).is_err());
    }
}

#[test]
fn malformed_input_never_panics() {
    for suite in SrtpSuite::ALL {
        let m = SrtpKeyMaterial::generate(suite);
        let mut ctx = SrtpContext::new(&m).unwrap();
        let mut out = vec![1, 2, 3];
        let mut good = Vec::new();
        SrtpContext::new(&m)
            .unwrap()
            .protect_rtp(&rtp_packet(1, 9, 40), &mut good)
            .unwrap();
        for len in 0..good.len() {
            let r = ctx.unprotect_rtp(&good[..len], &mut out);
            assert!(r.is_err(), "{suite} truncated to {len}");
            assert!(out.is_empty());
        }
        // Version 1, CSRC count past the end, extension past the end.
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(ctx.unprotect_rtp(&v1, &mut out), Err(SrtpError::Malformed));
        let mut cc = good.clone();
        cc[0] = 0x8f;
        assert!(ctx.unprotect_rtp(&cc[..30], &mut out).is_err());
        let mut ext = rtp_packet(1, 9, 8);
        ext[0] |= 0x10;
        ext[12..16].copy_from_slice(&[0xbe, 0xde, 0xff, 0xff]);
        assert_eq!(ctx.protect_rtp(&ext, &mut out), Err(SrtpError::Malformed));
        assert_eq!(ctx.unprotect_rtp(&ext, &mut out), Err(SrtpError::Malformed));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            assert!(ctx.unprotect_rtcp(&junk, &mut out).is_err());
            let _ = ctx.protect_rtcp(&junk, &mut out);
            let _ = ctx.protect_rtp(&junk, &mut out);
        }
    }
}

#[test]
fn rtp_with_csrcs_and_header_extension_round_trips() {
    for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm] {
        let m = SrtpKeyMaterial::generate(suite);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut rx = SrtpContext::new(&m).unwrap();
        // CC=1, X=1 with a one-byte (RFC 8285) extension: id 1, len 1 (audio level) + padding.
        let mut p = vec![0x91, 0x6f, 0, 1, 0, 0, 0, 160, 0, 0, 0, 5];
        p.extend_from_slice(&[0, 0, 0, 6]);
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0x7f, 0x00, 0x00]);
        p.extend_from_slice(&[0xaa; 30]);
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        tx.protect_rtp(&p, &mut wire).unwrap();
        assert_eq!(wire[..24], p[..24], "header left in clear");
        rx.unprotect_rtp(&wire, &mut plain).unwrap();
        assert_eq!(plain, p);
    }
}

#[test]
fn wrong_key_lengths_are_refused_without_printing_keys() {
    let m = material(SrtpSuite::AesCm128HmacSha1_80, &[0x42; 15], &[0x43; 14]);
    let err = SrtpContext::new(&m).unwrap_err();
    assert!(matches!(err, SrtpError::Other(_)));
    assert!(!err.to_string().contains("42"));
    let ctx = SrtpContext::new(&fixed_material(SrtpSuite::AeadAes256Gcm, 1)).unwrap();
    assert_eq!(format!("{ctx:?}"), "SrtpContext(AEAD_AES_256_GCM)");
}

#[test]
fn context_can_move_to_a_media_worker() {
    fn assert_send<T: Send>() {}
    assert_send::<SrtpContext>();
}

// ---- the RFC vectors through our own transforms (aws-lc-rs)

/// RFC 3711 B.3 and RFC 6188 7.2 through `cipher::derive`.
#[test]
fn rfc3711_b3_and_rfc6188_key_derivation_ours() {
    // RFC 3711 B.3 (AES-128), RFC 6188 7.2 (AES-256) and 7.4 (AES-192).
    let cases = [
        (
            "E1F97A0D3E018BE0D64FA32C06DE4139",
            "0EC675AD498AFEEBB6960B3AABE6",
            [
                "C61E7A93744F39EE10734AFE3FF7A087",
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4",
                "30CBBC08863D8C85D49DB34A9AE1",
            ],
        ),
        (
            "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
            "3b04803de51ee7c96423ab5b78d2",
            [
                "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4",
                "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05",
                "fa31791685ca444a9e07c6c64e93",
            ],
        ),
        (
            "73edc66c4fa15776fb57f9505c17136550ffda71f3e8e5f1",
            "c8522f3acd4ce86d5add78edbb11",
            [
                "31874736a8f1143870c26e4857d8a5b2c4a354407faadabb",
                "355b10973cd95b9eacf4061c7e1a7151e7cfbfcb",
                "2372b82d639b6d8503a47adc0a6c",
            ],
        ),
    ];
    for (key, salt, expected) in cases {
        let (key, salt) = (unhex(key), unhex(salt));
        for (label, want) in expected.iter().enumerate() {
            let want = unhex(want);
            let mut out = vec![0u8; want.len()];
            cipher::derive(&key, &salt, label as u8, &mut out).unwrap();
            assert_eq!(out, want, "label {label}");
        }
    }
}

/// RFC 3711 B.2 and RFC 6188 7.1: the AES-CM keystream for SSRC 0, index 0
/// is the PRF output with label 0 (IV = salt * 2^16).
#[test]
fn rfc3711_b2_and_rfc6188_keystream_ours() {
    // B.2 (AES-128), RFC 6188 7.1 (AES-256) and 7.3 (AES-192).
    let cases = [
        (
            "2B7E151628AED2A6ABF7158809CF4F3C",
            "E03EAD0935C95E80E166B16DD92B4EB4D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0",
        ),
        (
            "57f82fe3613fd170a85ec93c40b1f0922ec4cb0dc025b58272147cc438944a98",
            "92bdd28a93c3f52511c677d08b5515a49da71b2378a854f67050756ded165bac
             63c4868b7096d88421b563b8c94c9a31",
        ),
        (
            "eab234764e517b2d3d160d587d8c86219740f65f99b6bcf7",
            "35096cba4610028dc1b57503804ce37c5de986291dcce161d5165ec4568f5c9a",
        ),
    ];
    let salt = unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD");
    for (key, stream) in cases {
        let stream = unhex(stream);
        let mut out = vec![0u8; stream.len()];
        cipher::derive(&unhex(key), &salt, 0, &mut out).unwrap();
        assert_eq!(out, stream);
    }
}

/// RFC 7714 16.1.1, 17.1.1, 16.2.1 and 17.2.1 through `GcmSession`.
#[test]
fn rfc7714_aead_aes_128_and_256_gcm_ours() {
    // (session key, protected RTP, protected RTCP): 16.1.1 and 17.1.1
    // (AEAD_AES_128_GCM), 16.2.1 and 17.2.1 (AEAD_AES_256_GCM).
    let cases = [
        (
            "000102030405060708090a0b0c0d0e0f",
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca
             be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833 899d7f27
             beb16a91 52cf765e e4390cce",
            "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7
             6c06f32d c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458
             96cf4d2f c5abf872 45d9eade 800005d4",
        ),
        (
            "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
            "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa
             b1801238 9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b 7aa3db36
             dfffd6b0 f9bb7878 d7a76c13",
            "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d
             bffe0a50 a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c
             4446839f 57ff6f6c b26ac3be 800005d4",
        ),
    ];
    let salt: [u8; 12] = unhex("517569642070726f2071756f").try_into().unwrap();
    for (key, srtp, srtcp) in cases {
        let s = cipher::GcmSession::from_session(&unhex(key), &salt).unwrap();
        let plain_rtp = unhex(
            "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
             20646976 69736120 696e2070 61727465 73207472 6573",
        );
        let mut rtp = plain_rtp.clone();
        let (aad, body) = rtp.split_at_mut(12);
        let tag = s.seal(0x5501_a0b2, 0xf17b, aad, body).unwrap();
        rtp.extend_from_slice(&tag);
        assert_eq!(rtp, unhex(srtp), "key {key}");
        let (aad, body) = rtp.split_at_mut(12);
        s.open(0x5501_a0b2, 0xf17b, aad, body).unwrap();
        assert_eq!(rtp[..plain_rtp.len()], plain_rtp[..]);

        let mut rtcp = unhex(
            "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
             4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef",
        );
        let mut aad = rtcp[..8].to_vec();
        aad.extend_from_slice(&unhex("800005d4"));
        let tag = s.seal(0x4d61_7273, 0x5d4, &aad, &mut rtcp[8..]).unwrap();
        rtcp.extend_from_slice(&tag);
        rtcp.extend_from_slice(&unhex("800005d4"));
        assert_eq!(rtcp, unhex(srtcp), "key {key}");
    }
}

// ---- against rtc-srtp, the implementation this one replaced

/// rtc-srtp's profile for `suite`; `None` for AES-192, which it lacks.
fn rtc_profile(suite: SrtpSuite) -> Option<rtc_srtp::protection_profile::ProtectionProfile> {
    use rtc_srtp::protection_profile::ProtectionProfile as P;
    Some(match suite {
        SrtpSuite::AesCm128HmacSha1_80 => P::Aes128CmHmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32 => P::Aes128CmHmacSha1_32,
        SrtpSuite::AesCm256HmacSha1_80 => P::Aes256CmHmacSha1_80,
        SrtpSuite::AesCm256HmacSha1_32 => P::Aes256CmHmacSha1_32,
        SrtpSuite::AeadAes128Gcm => P::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm => P::AeadAes256Gcm,
        SrtpSuite::AesCm192HmacSha1_80 | SrtpSuite::AesCm192HmacSha1_32 => return None,
    })
}

fn rtc_context(m: &SrtpKeyMaterial) -> rtc_srtp::context::Context {
    with_crypto(|c| {
        rtc_srtp::context::Context::new(
            m.key.expose(),
            m.salt.expose(),
            rtc_profile(m.suite).unwrap(),
            None,
            None,
            c,
        )
        .unwrap()
    })
}

#[test]
fn interoperates_with_rtc_srtp_across_a_sequence_wrap() {
    for suite in SrtpSuite::ALL
        .into_iter()
        .filter(|s| rtc_profile(*s).is_some())
    {
        let m = SrtpKeyMaterial::generate(suite);
        let mut ours_tx = SrtpContext::new(&m).unwrap();
        let mut ours_rx = SrtpContext::new(&m).unwrap();
        let mut theirs_tx = rtc_context(&m);
        let mut theirs_rx = rtc_context(&m);
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        // 65530 .. 65535, 0 .. 9: the ROC goes from 0 to 1 on the way.
        for i in 0..16u32 {
            let seq = 65530u16.wrapping_add(i as u16);
            let rtp = rtp_packet(seq, 0x0bad_cafe, 160);
            ours_tx.protect_rtp(&rtp, &mut wire).unwrap();
            let theirs = theirs_tx.encrypt_rtp(&rtp).unwrap();
            assert_eq!(wire, theirs.as_ref(), "{suite} protect seq {seq}");
            assert_eq!(theirs_rx.decrypt_rtp(&wire).unwrap().as_ref(), &rtp[..]);
            ours_rx.unprotect_rtp(&theirs, &mut plain).unwrap();
            assert_eq!(plain, rtp, "{suite} unprotect seq {seq}");
        }
        for _ in 0..3 {
            let rtcp = rtcp_packet(0x0bad_cafe);
            ours_tx.protect_rtcp(&rtcp, &mut wire).unwrap();
            let theirs = theirs_tx.encrypt_rtcp(&rtcp).unwrap();
            assert_eq!(wire, theirs.as_ref(), "{suite} rtcp");
            assert_eq!(theirs_rx.decrypt_rtcp(&wire).unwrap().as_ref(), &rtcp[..]);
            ours_rx.unprotect_rtcp(&theirs, &mut plain).unwrap();
            assert_eq!(plain, rtcp);
        }
    }
}

#[test]
fn reordering_across_a_wrap_is_accepted_once() {
    for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm] {
        let m = SrtpKeyMaterial::generate(suite);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut rx = SrtpContext::new(&m).unwrap();
        let wire: Vec<Vec<u8>> = (0..8u16)
            .map(|i| {
                let mut out = Vec::new();
                tx.protect_rtp(&rtp_packet(65532u16.wrapping_add(i), 3, 20), &mut out)
                    .unwrap();
                out
            })
            .collect();
        let mut plain = Vec::new();
        // 65532, 65533, 0, 1, then the late 65534, 65535, then 2, 3.
        for at in [0, 1, 4, 5, 2, 3, 6, 7] {
            rx.unprotect_rtp(&wire[at], &mut plain).unwrap();
            assert_eq!(
                &plain[2..4],
                &65532u16.wrapping_add(at as u16).to_be_bytes()
            );
        }
        for w in &wire {
            assert_eq!(rx.unprotect_rtp(w, &mut plain), Err(SrtpError::Replay));
        }
    }
}

#[test]
fn in_place_works_in_a_fixed_buffer_and_reports_missing_room() {
    for suite in SrtpSuite::ALL {
        let m = SrtpKeyMaterial::generate(suite);
        let mut tx = SrtpContext::new(&m).unwrap();
        let mut rx = SrtpContext::new(&m).unwrap();
        let rtp = rtp_packet(7, 9, 160);
        let mut buf = [0u8; 1500];
        buf[..rtp.len()].copy_from_slice(&rtp);
        let n = tx.protect_rtp_in_place(&mut buf, rtp.len()).unwrap();
        assert_eq!(n, rtp.len() + srtp_overhead(suite));
        let p = rx.unprotect_rtp_in_place(&mut buf[..n]).unwrap();
        assert_eq!(&buf[..p], &rtp[..]);

        let rtcp = rtcp_packet(9);
        buf[..rtcp.len()].copy_from_slice(&rtcp);
        let n = tx.protect_rtcp_in_place(&mut buf, rtcp.len()).unwrap();
        assert_eq!(n, rtcp.len() + srtcp_overhead(suite));
        assert!(n - rtcp.len() <= MAX_OVERHEAD);
        let p = rx.unprotect_rtcp_in_place(&mut buf[..n]).unwrap();
        assert_eq!(&buf[..p], &rtcp[..]);

        let mut tight = rtp.clone();
        assert!(matches!(
            tx.protect_rtp_in_place(&mut tight, rtp.len()),
            Err(SrtpError::NoRoom { .. })
        ));
        assert_eq!(
            tx.protect_rtp_in_place(&mut tight, rtp.len() + 1),
            Err(SrtpError::Malformed)
        );
    }
}

// ---- MKI (RFC 3711 3.1/3.4, RFC 7714 8/9, RFC 4568 `|value:length`)

fn with_mki(mut m: SrtpKeyMaterial, mki: &[u8]) -> SrtpKeyMaterial {
    m.mki = Some(mki.to_vec());
    m
}

#[test]
fn every_suite_with_an_mki_matches_the_reference() {
    for suite in SrtpSuite::ALL {
        for mki in [&[0x07][..], &[0x00, 0x00, 0x01, 0x02][..]] {
            let m = with_mki(fixed_material(suite, 0x42), mki);
            let mut tx = SrtpContext::new(&m).unwrap();
            let mut rx = SrtpContext::new(&m).unwrap();
            let (mut out, mut plain) = (Vec::new(), Vec::new());
            for seq in [1u16, 2, 1000] {
                let rtp = rtp_packet(seq, 0x0102_0304, 160);
                tx.protect_rtp(&rtp, &mut out).unwrap();
                assert_eq!(out, ref_protect_rtp(&m, &rtp), "{suite} rtp mki {mki:?}");
                assert_eq!(out.len(), rtp.len() + srtp_overhead(suite) + mki.len());
                rx.unprotect_rtp(&out, &mut plain).unwrap();
                assert_eq!(plain, rtp, "{suite}");
            }
            let rtcp = rtcp_packet(0x0102_0304);
            for index in 1..=2 {
                tx.protect_rtcp(&rtcp, &mut out).unwrap();
                assert_eq!(out, ref_protect_rtcp(&m, &rtcp, index), "{suite} rtcp");
                rx.unprotect_rtcp(&out, &mut plain).unwrap();
                assert_eq!(plain, rtcp, "{suite} rtcp");
            }
        }
    }
}

#[test]
fn a_packet_naming_another_mki_or_none_fails_authentication() {
    for suite in SrtpSuite::ALL {
        let m = fixed_material(suite, 0x43);
        let mut tx = SrtpContext::new(&with_mki(m.clone(), &[1, 2])).unwrap();
        let mut other_mki = SrtpContext::new(&with_mki(m.clone(), &[1, 3])).unwrap();
        let mut no_mki = SrtpContext::new(&m).unwrap();
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        let rtp = rtp_packet(9, 0x0a0b_0c0d, 40);
        tx.protect_rtp(&rtp, &mut wire).unwrap();
        assert_eq!(
            other_mki.unprotect_rtp(&wire, &mut plain),
            Err(SrtpError::AuthFailed),
            "{suite}"
        );
        assert!(no_mki.unprotect_rtp(&wire, &mut plain).is_err(), "{suite}");
        tx.protect_rtcp(&rtcp_packet(0x0a0b_0c0d), &mut wire)
            .unwrap();
        assert_eq!(
            other_mki.unprotect_rtcp(&wire, &mut plain),
            Err(SrtpError::AuthFailed),
            "{suite}"
        );
        // Too short to even hold header, MKI and tag: malformed, no panic.
        let mut short = SrtpContext::new(&with_mki(m, &[0; 128])).unwrap();
        assert!(short.unprotect_rtp(&wire[..20], &mut plain).is_err());
        assert!(short.unprotect_rtcp(&wire[..20], &mut plain).is_err());
    }
}
