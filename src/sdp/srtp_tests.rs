//! SDES offer/answer: every policy against every kind of offer and answer.

use std::net::IpAddr;

use super::*;

const G711: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Keys whose bytes are all `seed` (distinct per side, easy to check).
fn keys(seed: u8) -> LocalKeys {
    LocalKeys::generate(|out| {
        out.fill(seed);
        true
    })
    .unwrap()
}

fn side(policy: SrtpPolicy, seed: u8) -> LocalMedia {
    LocalMedia::new(ip("192.0.2.10"), 40000, G711.to_vec()).with_srtp(policy, keys(seed))
}

fn origin() -> Origin {
    Origin::new("dialerd", 7, 1, ip("192.0.2.10"))
}

fn sdp(proto: &str, extra: &str) -> SessionDescription {
    parse(&format!(
        "v=0\r\no=peer 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
         m=audio 5004 {proto} 0 8\r\n{extra}"
    ))
    .unwrap()
}

/// A peer's key line: 30 (or 28) bytes of `0x5a`.
fn peer_crypto(tag: u32, suite: CryptoSuite) -> String {
    let key = vec![0x5a; suite.key_salt_len()];
    format!(
        "a=crypto:{tag} {} inline:{}\r\n",
        suite.as_str(),
        base64_encode(&key)
    )
}

fn cryptos_of(sdp: &SessionDescription) -> Vec<Crypto> {
    sdp.media[0]
        .attributes
        .iter()
        .filter(|a| a.name == "crypto")
        .map(|a| Crypto::parse(a.value.as_deref().unwrap()).unwrap())
        .collect()
}

#[test]
fn crypto_lines_parse_and_write() {
    // RFC 4568 §4's example key (AES_CM_128_HMAC_SHA1_80, 30 bytes) with a lifetime.
    let line = "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20";
    let c = Crypto::parse(line).unwrap();
    assert_eq!((c.tag, c.suite), (1, CryptoSuite::AesCm128HmacSha1_80));
    assert_eq!(c.key.as_bytes().len(), 30);
    assert_eq!(
        c.value(),
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    );
    assert_eq!(Crypto::parse(&c.value()), Some(c.clone()));
    assert!(
        !format!("{c:?}").contains("WVNf") && format!("{c:?}").contains("redacted"),
        "keys are never printed"
    );
    for bad in [
        // An MKI.
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4",
        // A key of 29 bytes.
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubA==",
        // A suite we do not speak.
        "1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        // Session parameters.
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP",
        // Two keys.
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz;inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        // Not base64, no tag, a method other than inline.
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!X19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "1 AES_CM_128_HMAC_SHA1_80 uri:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "",
    ] {
        assert_eq!(Crypto::parse(bad), None, "{bad}");
    }
}

#[test]
fn base64_matches_rfc4648_vectors() {
    // RFC 4648 §10.
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
        assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        assert_eq!(
            base64_decode(encoded.trim_end_matches('=')).unwrap(),
            plain.as_bytes()
        );
    }
    assert_eq!(base64_decode("Zg==="), None);
    assert_eq!(base64_decode("Z"), None);
    assert_eq!(base64_decode("Zm9v YmFy"), None);
}

#[test]
fn offers_follow_the_policy() {
    let off = offer(&side(SrtpPolicy::Off, 1), origin());
    assert_eq!(off.media[0].proto, "RTP/AVP");
    assert!(cryptos_of(&off).is_empty());

    let optional = offer(&side(SrtpPolicy::Optional, 1), origin());
    assert_eq!(
        optional.media[0].proto, "RTP/AVP",
        "best effort keeps RTP/AVP"
    );
    let suites: Vec<_> = cryptos_of(&optional)
        .iter()
        .map(|c| (c.tag, c.suite))
        .collect();
    assert_eq!(
        suites,
        [
            (1, CryptoSuite::AesCm128HmacSha1_80),
            (2, CryptoSuite::AesCm128HmacSha1_32)
        ]
    );

    let required = offer(&side(SrtpPolicy::Required, 1), origin());
    assert_eq!(required.media[0].proto, "RTP/SAVP");
    assert_eq!(cryptos_of(&required).len(), 2);
    assert!(
        cryptos_of(&required)
            .iter()
            .all(|c| c.key.as_bytes() == [1; 30])
    );
}

/// What answering an offer of each kind gives under each policy.
#[test]
fn every_policy_against_every_offer() {
    use NegotiateError::*;
    use SrtpPolicy::*;
    let aes80 = peer_crypto(3, CryptoSuite::AesCm128HmacSha1_80);
    let gcm_then_aes = format!(
        "{}{}",
        peer_crypto(1, CryptoSuite::AeadAes128Gcm),
        peer_crypto(2, CryptoSuite::AesCm128HmacSha1_80)
    );
    let unknown =
        "a=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
    let dtls = "a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\n";
    let dtls_and_sdes = format!("{dtls}{aes80}");
    // (offer proto, offer attributes, policy) -> Ok((answer proto, suite)) or the refusal.
    type Expect = Result<(&'static str, Option<CryptoSuite>), NegotiateError>;
    let cases: Vec<(&str, &str, SrtpPolicy, Expect)> = vec![
        ("RTP/AVP", "", Off, Ok(("RTP/AVP", None))),
        ("RTP/AVP", "", Optional, Ok(("RTP/AVP", None))),
        ("RTP/AVP", "", Required, Err(SrtpRequired)),
        ("RTP/AVP", &aes80, Off, Ok(("RTP/AVP", None))),
        (
            "RTP/AVP",
            &aes80,
            Optional,
            Ok(("RTP/AVP", Some(CryptoSuite::AesCm128HmacSha1_80))),
        ),
        (
            "RTP/AVP",
            &aes80,
            Required,
            Ok(("RTP/AVP", Some(CryptoSuite::AesCm128HmacSha1_80))),
        ),
        ("RTP/AVP", unknown, Required, Err(SrtpRequired)),
        ("RTP/SAVP", &aes80, Off, Err(SrtpOff)),
        (
            "RTP/SAVP",
            &aes80,
            Optional,
            Ok(("RTP/SAVP", Some(CryptoSuite::AesCm128HmacSha1_80))),
        ),
        (
            "RTP/SAVP",
            &gcm_then_aes,
            Required,
            Ok(("RTP/SAVP", Some(CryptoSuite::AeadAes128Gcm))),
        ),
        (
            "RTP/SAVPF",
            &aes80,
            Required,
            Ok(("RTP/SAVPF", Some(CryptoSuite::AesCm128HmacSha1_80))),
        ),
        ("RTP/SAVP", unknown, Required, Err(NoCommonCrypto)),
        ("RTP/SAVP", "", Optional, Err(NoCommonCrypto)),
        ("UDP/TLS/RTP/SAVP", dtls, Off, Err(SrtpOff)),
        ("UDP/TLS/RTP/SAVP", dtls, Optional, Err(DtlsUnsupported)),
        ("UDP/TLS/RTP/SAVPF", dtls, Required, Err(DtlsUnsupported)),
        // Without a certificate a DTLS offer is refused, even one that also
        // carries a=crypto: it is never answered with SDES.
        (
            "UDP/TLS/RTP/SAVP",
            &dtls_and_sdes,
            Required,
            Err(DtlsUnsupported),
        ),
    ];
    for (proto, extra, policy, expect) in cases {
        let offered = sdp(proto, extra);
        let got = answer(&offered, &side(policy, 9), origin());
        let label = format!("{proto} {extra:?} under {policy:?}");
        match expect {
            Err(e) => assert_eq!(got.unwrap_err(), e, "{label}"),
            Ok((answer_proto, suite)) => {
                let (sdp, negotiated) = got.unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(sdp.media[0].proto, answer_proto, "{label}");
                assert!(
                    !sdp.to_string().contains("fingerprint"),
                    "{label}: never DTLS"
                );
                let lines = cryptos_of(&sdp);
                match suite {
                    None => {
                        assert!(lines.is_empty(), "{label}");
                        assert_eq!(negotiated.srtp, None, "{label}");
                    }
                    Some(suite) => {
                        assert_eq!(lines.len(), 1, "{label}: one crypto line");
                        let offered_tag = cryptos_of(&offered)
                            .iter()
                            .find(|c| c.suite == suite)
                            .unwrap()
                            .tag;
                        assert_eq!((lines[0].tag, lines[0].suite), (offered_tag, suite));
                        let keys = negotiated.srtp.unwrap();
                        assert_eq!(keys.suite, suite);
                        assert_eq!(keys.local.as_bytes(), vec![9; suite.key_salt_len()]);
                        assert_eq!(keys.local, lines[0].key, "{label}: our key is answered");
                        assert_eq!(keys.remote.as_bytes(), vec![0x5a; suite.key_salt_len()]);
                    }
                }
            }
        }
    }
}

/// What our offer under each policy settles against each kind of answer.
#[test]
fn every_policy_against_every_answer() {
    use SrtpPolicy::*;
    for policy in [Off, Optional, Required, Dtls] {
        let ours = offer(&side(policy, 4), origin());
        let plain = sdp("RTP/AVP", "");
        let keyed = |proto: &str, tag: u32, suite| sdp(proto, &peer_crypto(tag, suite));
        let secure = keyed("RTP/SAVP", 1, CryptoSuite::AesCm128HmacSha1_80);
        let best_effort = keyed("RTP/AVP", 2, CryptoSuite::AesCm128HmacSha1_32);
        // Tag 1 is our _80 line: a _32 key under it is not what we offered.
        let wrong_tag = keyed("RTP/SAVP", 1, CryptoSuite::AesCm128HmacSha1_32);
        let dtls = sdp("UDP/TLS/RTP/SAVP", "a=fingerprint:sha-256 AA:BB\r\n");

        let on_plain = accept_answer(&ours, &plain);
        let on_secure = accept_answer(&ours, &secure);
        let on_best_effort = accept_answer(&ours, &best_effort);
        let on_wrong_tag = accept_answer(&ours, &wrong_tag);
        assert_eq!(
            accept_answer(&ours, &dtls).unwrap_err(),
            NegotiateError::DtlsUnsupported,
            "{policy:?}: a DTLS answer to SDES is refused"
        );
        match policy {
            Off => {
                // We offered no keys: whatever the answer says, media is plain.
                for r in [&on_plain, &on_secure, &on_best_effort, &on_wrong_tag] {
                    assert_eq!(r.as_ref().unwrap().srtp, None);
                }
            }
            // Without a certificate a dtls policy offers SDES, as required does.
            Optional | Required | Dtls => {
                let k = on_secure.unwrap().srtp.unwrap();
                assert_eq!(k.suite, CryptoSuite::AesCm128HmacSha1_80);
                assert_eq!(k.local.as_bytes(), [4; 30]);
                assert_eq!(k.remote.as_bytes(), [0x5a; 30]);
                let k = on_best_effort.unwrap().srtp.unwrap();
                assert_eq!(k.suite, CryptoSuite::AesCm128HmacSha1_32);
                if policy == Optional {
                    assert_eq!(on_plain.unwrap().srtp, None, "optional falls back");
                    assert_eq!(on_wrong_tag.unwrap().srtp, None);
                } else {
                    assert_eq!(on_plain.unwrap_err(), NegotiateError::SrtpRequired);
                    assert_eq!(on_wrong_tag.unwrap_err(), NegotiateError::SrtpRequired);
                }
            }
        }
    }
}

/// Both sides of an exchange end up with mirrored keys.
#[test]
fn offerer_and_answerer_hold_each_others_keys() {
    for (a, b) in [
        (SrtpPolicy::Required, SrtpPolicy::Optional),
        (SrtpPolicy::Optional, SrtpPolicy::Required),
        (SrtpPolicy::Optional, SrtpPolicy::Optional),
    ] {
        let o = offer(&side(a, 1), origin());
        let (ans, answerer) = answer(&o, &side(b, 2), origin()).unwrap();
        let offerer = accept_answer(&o, &ans).unwrap();
        let (x, y) = (offerer.srtp.unwrap(), answerer.srtp.unwrap());
        assert_eq!(x.suite, y.suite);
        assert_eq!(x.local, y.remote);
        assert_eq!(x.remote, y.local);
        assert_ne!(x.local, x.remote);
    }
    // Off against required: no call.
    let o = offer(&side(SrtpPolicy::Off, 1), origin());
    assert_eq!(
        answer(&o, &side(SrtpPolicy::Required, 2), origin()).unwrap_err(),
        NegotiateError::SrtpRequired
    );
    let o = offer(&side(SrtpPolicy::Required, 1), origin());
    assert_eq!(
        answer(&o, &side(SrtpPolicy::Off, 2), origin()).unwrap_err(),
        NegotiateError::SrtpOff
    );
}

#[test]
fn a_key_source_that_fails_gives_no_keys() {
    assert_eq!(LocalKeys::generate(|_| false), None);
}

fn fingerprint(byte: u8) -> Fingerprint {
    Fingerprint::sha256(vec![byte; 32])
}

fn dtls_side(policy: SrtpPolicy, seed: u8) -> LocalMedia {
    let mut media = side(policy, seed);
    media.fingerprint = Some(fingerprint(seed));
    media
}

fn attribute<'a>(sdp: &'a SessionDescription, name: &str) -> Option<&'a str> {
    sdp.media[0].attribute(name)
}

#[test]
fn fingerprints_and_setup_parse_and_write() {
    let text = "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF";
    let f = Fingerprint::parse(text).unwrap();
    assert_eq!((f.hash.as_str(), f.digest.len()), ("sha-256", 32));
    assert_eq!(f.to_string(), text);
    assert_eq!(
        Fingerprint::parse("SHA-256 4a:ad:b9:b1:3f:82:18:3b:54:02:12:df:3e:5d:49:6b")
            .unwrap()
            .hash,
        "sha-256"
    );
    for bad in [
        "sha-256",
        "sha-256 4A:AD",
        "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6",
        "sha-256 ZZ:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B",
        "",
    ] {
        assert_eq!(Fingerprint::parse(bad), None, "{bad}");
    }
    assert_eq!(Setup::from_name("ActPass"), Some(Setup::ActPass));
    assert_eq!(Setup::from_name("sometimes"), None);
}

#[test]
fn a_dtls_offer_is_answered_with_dtls_and_the_roles_of_rfc5763() {
    let peer = fingerprint(0xAB);
    for (offered_setup, our_setup, we_are_client) in [
        ("actpass", "active", true),
        ("passive", "active", true),
        ("active", "passive", false),
    ] {
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Required, SrtpPolicy::Dtls] {
            let offered = sdp(
                "UDP/TLS/RTP/SAVPF",
                &format!("a=fingerprint:{peer}\r\na=setup:{offered_setup}\r\na=rtcp-mux\r\n"),
            );
            let (ans, n) = answer(&offered, &dtls_side(policy, 3), origin()).unwrap();
            assert_eq!(ans.media[0].proto, "UDP/TLS/RTP/SAVPF");
            assert_eq!(attribute(&ans, "setup"), Some(our_setup));
            assert_eq!(
                attribute(&ans, "fingerprint"),
                Some(fingerprint(3).to_string().as_str())
            );
            assert!(cryptos_of(&ans).is_empty(), "never SDES in a DTLS answer");
            assert_eq!(n.srtp, None);
            let dtls = n.dtls.unwrap();
            assert_eq!((dtls.client, dtls.remote), (we_are_client, peer.clone()));
            assert!(n.rtcp_mux);
        }
    }
    // A session-level fingerprint counts; a missing one or holdconn does not.
    let session_level = parse(&format!(
        "v=0\r\no=peer 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
         a=fingerprint:{peer}\r\nm=audio 5004 UDP/TLS/RTP/SAVP 0\r\na=setup:actpass\r\n"
    ))
    .unwrap();
    assert!(
        answer(
            &session_level,
            &dtls_side(SrtpPolicy::Required, 3),
            origin()
        )
        .is_ok()
    );
    let bare = sdp("UDP/TLS/RTP/SAVP", "a=setup:actpass\r\n");
    assert_eq!(
        answer(&bare, &dtls_side(SrtpPolicy::Required, 3), origin()).unwrap_err(),
        NegotiateError::NoCommonCrypto
    );
    let held = sdp(
        "UDP/TLS/RTP/SAVP",
        &format!("a=fingerprint:{peer}\r\na=setup:holdconn\r\n"),
    );
    assert!(answer(&held, &dtls_side(SrtpPolicy::Required, 3), origin()).is_err());
    // An SDES offer to a side that has a certificate is still answered with SDES.
    let sdes = sdp(
        "RTP/SAVP",
        &peer_crypto(1, CryptoSuite::AesCm128HmacSha1_80),
    );
    let (ans, n) = answer(&sdes, &dtls_side(SrtpPolicy::Dtls, 3), origin()).unwrap();
    assert!(attribute(&ans, "fingerprint").is_none() && n.dtls.is_none() && n.srtp.is_some());
}

#[test]
fn a_dtls_offer_and_its_answers() {
    let ours = offer(&dtls_side(SrtpPolicy::Dtls, 5), origin());
    assert_eq!(ours.media[0].proto, "UDP/TLS/RTP/SAVP");
    assert_eq!(attribute(&ours, "setup"), Some("actpass"));
    assert!(
        cryptos_of(&ours).is_empty(),
        "a DTLS offer carries no SDES keys"
    );
    let peer = fingerprint(0xCD);
    for (setup, client) in [("active", false), ("passive", true)] {
        let theirs = sdp(
            "UDP/TLS/RTP/SAVP",
            &format!("a=fingerprint:{peer}\r\na=setup:{setup}\r\n"),
        );
        let n = accept_answer(&ours, &theirs).unwrap();
        assert_eq!(
            n.dtls,
            Some(DtlsParams {
                client,
                remote: peer.clone()
            })
        );
    }
    // An answer without setup is active (RFC 4145's default): we are the server.
    let theirs = sdp("UDP/TLS/RTP/SAVP", &format!("a=fingerprint:{peer}\r\n"));
    assert!(!accept_answer(&ours, &theirs).unwrap().dtls.unwrap().client);
    // A DTLS offer answered with SDES or plain RTP is refused.
    let sdes = sdp(
        "RTP/SAVP",
        &peer_crypto(1, CryptoSuite::AesCm128HmacSha1_80),
    );
    assert_eq!(
        accept_answer(&ours, &sdes).unwrap_err(),
        NegotiateError::SrtpRequired
    );
    assert_eq!(
        accept_answer(&ours, &sdp("RTP/AVP", "")).unwrap_err(),
        NegotiateError::SrtpRequired
    );
    // Both ends of a DTLS exchange take opposite roles and each other's fingerprints.
    let (ans, answerer) = answer(&ours, &dtls_side(SrtpPolicy::Optional, 6), origin()).unwrap();
    let offerer = accept_answer(&ours, &ans).unwrap();
    let (a, b) = (offerer.dtls.unwrap(), answerer.dtls.unwrap());
    assert_ne!(a.client, b.client);
    assert_eq!((a.remote, b.remote), (fingerprint(6), fingerprint(5)));
    // Without a certificate, a dtls policy offers SDES instead.
    assert_eq!(
        offer(&side(SrtpPolicy::Dtls, 5), origin()).media[0].proto,
        "RTP/SAVP"
    );
}
