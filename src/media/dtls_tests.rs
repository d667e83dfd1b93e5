//! Two DTLS-SRTP sessions on a fake clock, the wire between them a queue
//! this test drops from.

use std::time::{Duration, Instant};

use super::*;
use crate::media::srtp::{Transform, provider};

const CLIENT: &str = "192.0.2.1:4000";
const SERVER: &str = "192.0.2.2:5000";

fn pair(t0: Instant, server_expects: Option<Vec<u8>>) -> (DtlsSession, DtlsSession) {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let client = DtlsSession::new(
        t0,
        &a,
        DtlsSetup {
            client: true,
            fingerprint: b.fingerprint().to_vec(),
        },
        SERVER.parse().unwrap(),
    )
    .unwrap();
    let server = DtlsSession::new(
        t0,
        &b,
        DtlsSetup {
            client: false,
            fingerprint: server_expects.unwrap_or_else(|| a.fingerprint().to_vec()),
        },
        CLIENT.parse().unwrap(),
    )
    .unwrap();
    (client, server)
}

/// Runs the two sessions, dropping the datagrams whose overall index is in
/// `drop`; the keys each side got and the time it took, or the first error.
#[allow(clippy::type_complexity)]
fn run(
    t0: Instant,
    client: &mut DtlsSession,
    server: &mut DtlsSession,
    drop: &[usize],
) -> Result<(SrtpKeys, SrtpKeys, Duration), DtlsError> {
    let mut now = t0;
    let mut sent = 0usize;
    let (mut ck, mut sk) = (None, None);
    for _ in 0..10_000 {
        let mut moved = false;
        while let Some(p) = client.poll_transmit() {
            moved = true;
            sent += 1;
            assert!(is_dtls(&p));
            if !drop.contains(&(sent - 1)) {
                sk = server.handle(now, &p)?.or(sk);
            }
        }
        while let Some(p) = server.poll_transmit() {
            moved = true;
            sent += 1;
            if !drop.contains(&(sent - 1)) {
                ck = client.handle(now, &p)?.or(ck);
            }
        }
        if let (Some(c), Some(s)) = (&ck, &sk) {
            return Ok((c.clone(), s.clone(), now - t0));
        }
        if !moved {
            let next = [client.poll_timeout(), server.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .expect("a pending handshake has a deadline");
            now = now.max(next);
            client.handle_timeout(now)?;
            server.handle_timeout(now)?;
        }
    }
    panic!("no progress");
}

#[test]
fn a_handshake_exports_mirrored_srtp_keys_that_protect_both_ways() {
    let t0 = Instant::now();
    let (mut client, mut server) = pair(t0, None);
    let (ck, sk, took) = run(t0, &mut client, &mut server, &[]).unwrap();
    assert!(client.is_done() && server.is_done());
    assert_eq!(took, Duration::ZERO, "no loss, no wait");
    assert_eq!(ck.suite, sk.suite);
    assert_eq!(ck.send, sk.receive);
    assert_eq!(ck.receive, sk.send);
    assert_ne!(ck.send, ck.receive);
    assert_eq!(client.poll_timeout(), None);
    // The keys work as SRTP between the two.
    let crypto = provider().unwrap();
    let mut c = Transform::new(&ck, crypto.as_ref()).unwrap();
    let mut s = Transform::new(&sk, crypto.as_ref()).unwrap();
    let mut buf = [0u8; 256];
    buf[0] = 0x80;
    buf[12..172].fill(0x55);
    let n = c.protect_rtp(&mut buf, 172).unwrap();
    assert!(!is_dtls(&buf[..n]), "SRTP is told apart from DTLS");
    assert_eq!(s.unprotect_rtp(&mut buf, n).unwrap(), 172);
    assert!(buf[12..172].iter().all(|&b| b == 0x55));
}

#[test]
fn lost_flights_are_retransmitted() {
    let t0 = Instant::now();
    let (mut client, mut server) = pair(t0, None);
    // The ClientHello, then the server's first flight, lost once each.
    let (ck, sk, took) = run(t0, &mut client, &mut server, &[0, 2]).unwrap();
    assert_eq!(ck.send, sk.receive);
    assert!(
        took >= Duration::from_millis(500),
        "retransmitted after a wait: {took:?}"
    );
    assert!(took < HANDSHAKE_TIMEOUT);
}

#[test]
fn a_certificate_that_does_not_match_the_fingerprint_fails_the_handshake() {
    let t0 = Instant::now();
    let (mut client, mut server) = pair(t0, Some(vec![0xAB; 32]));
    let e = run(t0, &mut client, &mut server, &[]).unwrap_err();
    assert!(matches!(e, DtlsError::Handshake(_)), "{e}");
    assert!(!server.is_done());
}

#[test]
fn a_peer_that_never_answers_fails_the_handshake_by_the_deadline() {
    let t0 = Instant::now();
    let (mut client, _) = pair(t0, None);
    let mut flights = 0;
    let (e, at) = loop {
        while client.poll_transmit().is_some() {
            flights += 1;
        }
        let now = client.poll_timeout().unwrap();
        assert!(
            now <= t0 + HANDSHAKE_TIMEOUT,
            "a deadline past the handshake's"
        );
        if let Err(e) = client.handle_timeout(now) {
            break (e, now);
        }
    };
    // The DTLS machine gives up after its retransmissions, or the deadline ends it.
    assert!(
        matches!(e, DtlsError::Handshake(_) | DtlsError::Timeout(_)),
        "{e}"
    );
    assert!(
        at > t0 + Duration::from_secs(1),
        "retransmitted first: {at:?}"
    );
    assert!(flights >= 3, "the ClientHello was sent again: {flights}");
    // A server that never hears a ClientHello fails at the deadline.
    let (_, mut server) = pair(t0, None);
    assert_eq!(server.poll_timeout(), Some(t0 + HANDSHAKE_TIMEOUT));
    assert_eq!(
        server.handle_timeout(t0 + HANDSHAKE_TIMEOUT),
        Err(DtlsError::Timeout(HANDSHAKE_TIMEOUT))
    );
}
