//! SRTP known answers and behaviour.
//!
//! The known answers chain: a small reference of the RFC 3711 transforms
//! (AES-CM keystream, key derivation, HMAC-SHA1 tag) is checked against
//! RFC 3711 Appendix B.2 and B.3, and the RFC 7714 GCM construction against
//! its Section 16 vector; whole packets from [`Transform`], keyed with the
//! B.3 master key, must then equal what the reference makes of them,
//! including after a rollover-counter wrap.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::Mac;

use super::*;

type AesCtr = ctr::Ctr128BE<aes::Aes128>;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `len` bytes of AES-128 counter-mode keystream from the 16-byte `iv`.
fn keystream(key: &[u8], iv: &[u8; 16], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut cipher = AesCtr::new(key.into(), iv.into());
    cipher.apply_keystream(&mut out);
    out
}

/// The RFC 3711 §4.3.3 AES-CM PRF with key derivation rate 0: the salt
/// (14 bytes, or GCM's 12 zero-padded) with the label at byte 7.
fn derive(master_key: &[u8], master_salt: &[u8], label: u8, len: usize) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    keystream(master_key, &iv, len)
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3711 B.3's master key and salt.
const B3_KEY: &str = "E1F97A0D3E018BE0D64FA32C06DE4139";
const B3_SALT: &str = "0EC675AD498AFEEBB6960B3AABE6";

fn b3_master() -> MasterKey {
    MasterKey::new([hex(B3_KEY), hex(B3_SALT)].concat())
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    // RFC 3711 Appendix B.2.
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
    let stream = keystream(&key, &iv, 0xff02 * 16);
    let block = |n: usize| &stream[n * 16..n * 16 + 16];
    assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
    assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
    assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
    assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
    assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
    assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
}

#[test]
fn rfc3711_b3_key_derivation() {
    // RFC 3711 Appendix B.3.
    let (key, salt) = (hex(B3_KEY), hex(B3_SALT));
    assert_eq!(
        derive(&key, &salt, 0, 16),
        hex("C61E7A93744F39EE10734AFE3FF7A087")
    );
    assert_eq!(
        derive(&key, &salt, 2, 14),
        hex("30CBBC08863D8C85D49DB34A9AE1")
    );
    assert_eq!(
        derive(&key, &salt, 1, 20),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

/// An RTP packet: version 2, payload type 0, `seq`, `ts`, `ssrc`, and
/// `payload_len` bytes counting up.
fn rtp(seq: u16, ts: u32, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| i as u8));
    p
}

/// RFC 3711 §3.3 and §4.1.1 by hand: AES-CM with HMAC-SHA1, tag of `tag_len`.
fn reference_aes_cm(master: &MasterKey, packet: &[u8], roc: u32, tag_len: usize) -> Vec<u8> {
    let (mk, ms) = master.as_bytes().split_at(16);
    let (k_e, k_s, k_a) = (
        derive(mk, ms, 0, 16),
        derive(mk, ms, 2, 14),
        derive(mk, ms, 1, 20),
    );
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let index = (u64::from(roc) << 16) | u64::from(seq);
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&k_s);
    for (i, b) in packet[8..12].iter().enumerate() {
        iv[4 + i] ^= b;
    }
    for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
        iv[8 + i] ^= b;
    }
    let mut out = packet.to_vec();
    let ks = keystream(&k_e, &iv, packet.len() - 12);
    for (b, k) in out[12..].iter_mut().zip(ks) {
        *b ^= k;
    }
    let tag = hmac_sha1(&k_a, &[&out, &roc.to_be_bytes()]);
    out.extend_from_slice(&tag[..tag_len]);
    out
}

/// RFC 7714 §8: AES-128-GCM with the header as associated data.
fn reference_gcm(key: &[u8], salt: &[u8], packet: &[u8], roc: u32) -> Vec<u8> {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&packet[8..12]);
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&packet[2..4]);
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).unwrap());
    let (header, payload) = packet.split_at(12);
    let mut body = payload.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header),
            &mut body,
        )
        .unwrap();
    [header, &body, tag.as_ref()].concat()
}

fn transform(suite: Suite, send: &MasterKey, receive: &MasterKey) -> Transform {
    let keys = SrtpKeys {
        suite,
        send: send.clone(),
        receive: receive.clone(),
    };
    Transform::new(&keys, provider().unwrap().as_ref()).unwrap()
}

fn protect(t: &mut Transform, packet: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    buf[..packet.len()].copy_from_slice(packet);
    let n = t.protect_rtp(&mut buf, packet.len()).unwrap();
    buf[..n].to_vec()
}

fn unprotect(t: &mut Transform, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = [0u8; 1500];
    buf[..packet.len()].copy_from_slice(packet);
    let n = t.unprotect_rtp(&mut buf, packet.len())?;
    Ok(buf[..n].to_vec())
}

#[test]
fn aes_cm_packets_match_the_rfc3711_reference_across_a_rollover() {
    let master = b3_master();
    for (suite, tag_len) in [
        (Suite::AesCm128HmacSha1_80, 10),
        (Suite::AesCm128HmacSha1_32, 4),
    ] {
        let mut sender = transform(suite, &master, &master);
        let mut receiver = transform(suite, &master, &master);
        // Sequence numbers 65530..65535, then 0..9 of the next cycle (ROC 1).
        for n in 0u32..16 {
            let seq = (65530 + n) as u16;
            let roc = u32::from(seq < 100);
            let plain = rtp(seq, 160 * n, 0xCAFE_BABE, 160);
            let protected = protect(&mut sender, &plain);
            assert_eq!(
                protected,
                reference_aes_cm(&master, &plain, roc, tag_len),
                "{suite:?} seq {seq} roc {roc}"
            );
            assert_eq!(unprotect(&mut receiver, &protected).unwrap(), plain);
        }
    }
}

#[test]
fn rfc7714_gcm_reference_and_packets() {
    // RFC 7714 §16.1.1: the AEAD_AES_128_GCM vector (session key and salt).
    let key = hex("000102030405060708090a0b0c0d0e0f");
    let salt = hex("517569642070726f2071756f");
    let packet = [
        hex("8040f17b8041f8d35501a0b2"),
        hex("47616c6c696120657374206f6d6e6973206469766973612069
             6e207061727465732074726573"),
    ]
    .concat();
    let expected = hex(
        "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd5
         0d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee439
         0cce",
    );
    assert_eq!(reference_gcm(&key, &salt, &packet, 0), expected);

    // Whole packets from a master key: session keys by the RFC 3711 PRF
    // (RFC 7714 §11), then GCM as above.
    let master = MasterKey::new([hex(B3_KEY), hex(&B3_SALT[..24])].concat());
    let (mk, ms) = master.as_bytes().split_at(16);
    let (k_e, k_s) = (derive(mk, ms, 0, 16), derive(mk, ms, 2, 12));
    let mut sender = transform(Suite::AeadAes128Gcm, &master, &master);
    let mut receiver = transform(Suite::AeadAes128Gcm, &master, &master);
    for n in 0u32..8 {
        let seq = (65533 + n) as u16;
        let roc = u32::from(seq < 100);
        let plain = rtp(seq, 160 * n, 0x0102_0304, 160);
        let protected = protect(&mut sender, &plain);
        assert_eq!(
            protected,
            reference_gcm(&k_e, &k_s, &plain, roc),
            "seq {seq}"
        );
        assert_eq!(unprotect(&mut receiver, &protected).unwrap(), plain);
    }
}

/// A receiver report with one block.
fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..24).map(|i| i as u8));
    p
}

#[test]
fn srtcp_round_trips_and_matches_the_reference() {
    for suite in [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
    ] {
        let key = MasterKey::new((0..(16 + suite.salt_len()) as u8).collect());
        let mut a = transform(suite, &key, &key);
        let mut b = transform(suite, &key, &key);
        let plain = rtcp_rr(0xDEAD_BEEF);
        let mut buf = [0u8; 1500];
        buf[..plain.len()].copy_from_slice(&plain);
        let n = a.protect_rtcp(&mut buf, plain.len()).unwrap();
        assert_eq!(n, plain.len() + suite.rtcp_overhead(), "{suite:?}");
        assert_ne!(&buf[8..plain.len()], &plain[8..], "{suite:?}: encrypted");
        let protected = buf[..n].to_vec();
        if suite == Suite::AesCm128HmacSha1_80 {
            // RFC 3711 §3.4: E flag and index 1, tag over all of it with labels 3-5.
            let (mk, ms) = key.as_bytes().split_at(16);
            let (k_e, k_s, k_a) = (
                derive(mk, ms, 3, 16),
                derive(mk, ms, 5, 14),
                derive(mk, ms, 4, 20),
            );
            let mut iv = [0u8; 16];
            iv[..14].copy_from_slice(&k_s);
            for (i, b) in plain[4..8].iter().enumerate() {
                iv[4 + i] ^= b;
            }
            iv[13] ^= 1;
            let mut expected = plain.clone();
            for (b, k) in expected[8..]
                .iter_mut()
                .zip(keystream(&k_e, &iv, plain.len() - 8))
            {
                *b ^= k;
            }
            expected.extend_from_slice(&[0x80, 0, 0, 1]);
            let tag = hmac_sha1(&k_a, &[&expected]);
            expected.extend_from_slice(&tag[..10]);
            assert_eq!(protected, expected);
        }
        let n = b.unprotect_rtcp(&mut buf, n).unwrap();
        assert_eq!(&buf[..n], &plain[..], "{suite:?}");
        // The same SRTCP index again is a replay.
        buf[..protected.len()].copy_from_slice(&protected);
        assert!(b.unprotect_rtcp(&mut buf, protected.len()).is_err());
    }
}

#[test]
fn replays_and_tampering_are_rejected() {
    let key = b3_master();
    let mut a = transform(Suite::AesCm128HmacSha1_80, &key, &key);
    let mut b = transform(Suite::AesCm128HmacSha1_80, &key, &key);
    let first = protect(&mut a, &rtp(1, 0, 7, 160));
    let second = protect(&mut a, &rtp(2, 160, 7, 160));
    assert!(unprotect(&mut b, &first).is_ok());
    assert!(matches!(
        unprotect(&mut b, &first),
        Err(SrtpError::Rejected(_))
    ));
    let mut forged = second.clone();
    forged[20] ^= 1;
    assert!(matches!(
        unprotect(&mut b, &forged),
        Err(SrtpError::Rejected(_))
    ));
    // The forgery did not consume the real packet's place in the window.
    assert!(unprotect(&mut b, &second).is_ok());
    // Short and empty packets are refused, not a panic.
    for len in [0, 5, 12, 21] {
        assert!(unprotect(&mut b, &second[..len]).is_err(), "{len} bytes");
    }
    // A packet from far behind the replay window is refused.
    for seq in 3..300u16 {
        let p = protect(&mut a, &rtp(seq, 0, 7, 20));
        assert!(unprotect(&mut b, &p).is_ok());
    }
    let mut late = transform(Suite::AesCm128HmacSha1_80, &key, &key);
    let old = protect(&mut late, &rtp(10, 0, 7, 20));
    assert!(unprotect(&mut b, &old).is_err());
}

#[test]
fn keys_of_the_wrong_length_and_a_full_buffer_are_errors() {
    let short = MasterKey::new(vec![1; 29]);
    let keys = SrtpKeys {
        suite: Suite::AesCm128HmacSha1_80,
        send: short.clone(),
        receive: short,
    };
    assert!(matches!(
        Transform::new(&keys, provider().unwrap().as_ref()),
        Err(SrtpError::KeyLength {
            want: 30,
            got: 29,
            ..
        })
    ));
    let key = b3_master();
    let mut t = transform(Suite::AesCm128HmacSha1_80, &key, &key);
    let plain = rtp(1, 0, 7, 160);
    let mut buf = plain.clone();
    assert!(matches!(
        t.protect_rtp(&mut buf, plain.len()),
        Err(SrtpError::NoRoom { .. })
    ));
    assert!(!format!("{key:?}").contains("E1"), "keys are never printed");
}

#[test]
fn rekeying_keeps_the_direction_whose_key_did_not_change() {
    let (k1, k2, k3) = (
        MasterKey::new(vec![1; 30]),
        MasterKey::new(vec![2; 30]),
        MasterKey::new(vec![3; 30]),
    );
    let crypto = provider().unwrap();
    let mut ours = transform(Suite::AesCm128HmacSha1_80, &k1, &k2);
    let mut theirs = transform(Suite::AesCm128HmacSha1_80, &k2, &k1);
    for seq in 65530..=65535u16 {
        let p = protect(&mut ours, &rtp(seq, 0, 9, 40));
        assert!(unprotect(&mut theirs, &p).is_ok());
    }
    // The peer re-keys its side in a re-INVITE; ours is unchanged.
    let keys = SrtpKeys {
        suite: Suite::AesCm128HmacSha1_80,
        send: k1.clone(),
        receive: k3.clone(),
    };
    ours.rekey(&keys, crypto.as_ref()).unwrap();
    // Our outbound context kept its rollover state across the wrap.
    let p = protect(&mut ours, &rtp(0, 0, 9, 40));
    assert_eq!(p, reference_aes_cm(&k1, &rtp(0, 0, 9, 40), 1, 10));
    assert!(unprotect(&mut theirs, &p).is_ok());
    // Inbound now takes the new key only.
    let mut peer_new = transform(Suite::AesCm128HmacSha1_80, &k3, &k1);
    let fresh = protect(&mut peer_new, &rtp(5, 0, 11, 40));
    assert!(unprotect(&mut ours, &fresh).is_ok());
    let mut peer_old = transform(Suite::AesCm128HmacSha1_80, &k2, &k1);
    let stale = protect(&mut peer_old, &rtp(6, 0, 11, 40));
    assert!(unprotect(&mut ours, &stale).is_err());
}
