//! SIP over TLS against a rustls peer with generated certificates: trust by
//! CA file and by pinned fingerprint, refusals with clear errors, inbound
//! TLS, a request arriving over a connection dialerd opened; and dead-flow
//! detection by CRLF keepalive.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use dialerd::sip::endpoint::{Event, OutRequest, OwnerId, PeerOptions, TlsClient};
use dialerd::sip::message::OutMessage;
use dialerd::sip::target::{Target, Transport};
use dialerd::sip::transport::CloseReason;
use dialerd::sip::transport::tls::{self as stack_tls, Trust};

use crate::support::daemon::Daemon;
use crate::support::live::Live;
use crate::support::tls::{PeerPlan, TestPki, TlsPeer, ok_for, read_message, tls_options};
use crate::support::{ports, probe, text};

#[test]
fn probe_over_tls_with_a_ca_file() {
    let pki = TestPki::generate();
    let peer = TlsPeer::start(pki.server_config(false), PeerPlan::Answer);
    let uri = format!("sips:{}", peer.addr());
    let out = probe(&[&uri, "--tls-ca", pki.ca.to_str().unwrap()]);
    let report = peer.finish();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).starts_with(&format!("tls:{} answered 200 OK", peer_addr(&uri))));
    let request = report.request.expect("the peer got the OPTIONS");
    assert!(
        request.starts_with(&format!("OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/TLS ")),
        "{request}"
    );
}

fn peer_addr(uri: &str) -> &str {
    uri.trim_start_matches("sips:")
}

#[test]
fn probe_over_tls_with_a_pinned_fingerprint() {
    let pki = TestPki::generate();
    let peer = TlsPeer::start(pki.server_config(true), PeerPlan::Answer);
    let uri = format!("sips:{}", peer.addr());
    let out = probe(&[&uri, "--tls-fingerprint", &pki.self_signed_fingerprint]);
    peer.finish();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() {
    let pki = TestPki::generate();
    let peer = TlsPeer::start(pki.server_config(false), PeerPlan::Answer);
    let addr = peer.addr();
    let uri = format!("sips:{addr}");
    let out = probe(&[&uri, "--tls-ca", pki.other_ca.to_str().unwrap()]);
    let report = peer.finish();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "TLS handshake with {addr}: invalid peer certificate: UnknownIssuer"
        )),
        "{stderr}"
    );
    assert!(
        report.request.is_none(),
        "nothing was sent over an untrusted connection"
    );
}

#[test]
fn a_wrong_pin_is_refused_with_a_clear_error() {
    let pki = TestPki::generate();
    let peer = TlsPeer::start(pki.server_config(false), PeerPlan::Answer);
    let uri = format!("sips:{}", peer.addr());
    let out = probe(&[&uri, "--tls-fingerprint", &pki.self_signed_fingerprint]);
    peer.finish();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("does not match the pinned fingerprint"),
        "{stderr}"
    );
}

#[test]
fn inbound_tls_is_accepted_by_dialerd_run() {
    let pki = TestPki::generate();
    let port = ports::free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start(
        &["--profile", "local"],
        &[
            ("DIALERD__SIP__TLS_LISTEN", listen.as_str()),
            ("DIALERD__SIP__TLS__CERT_FILE", pki.cert.to_str().unwrap()),
            ("DIALERD__SIP__TLS__KEY_FILE", pki.key.to_str().unwrap()),
        ],
    );
    let addr: SocketAddr = listen.parse().unwrap();
    let answer =
        tls_options(addr, pki.client_config()).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"),
        "{answer}"
    );
    // And dialerd's own probe, trusting the CA, reaches dialerd over TLS.
    let out = probe(&[
        &format!("sips:{listen}"),
        "--tls-ca",
        pki.ca.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn options(uri: &str) -> OutRequest {
    OutRequest::new(
        OutMessage::request("OPTIONS", uri)
            .header("Max-Forwards", "70")
            .header("From", "<sip:test@127.0.0.1>;tag=t1")
            .header("To", format!("<{uri}>"))
            .header("Call-ID", dialerd::sip::ids::call_id("127.0.0.1"))
            .header("CSeq", "1 OPTIONS"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_request_arrives_over_the_connection_dialerd_opened() {
    let pki = TestPki::generate();
    let peer = TlsPeer::start(pki.server_config(false), PeerPlan::AnswerThenRequest);
    let addr = peer.addr();
    let rt = runtime();
    rt.block_on(async {
        let mut live = Live::start().await;
        let tls = TlsClient {
            config: stack_tls::client_config(&Trust::CaFile(pki.ca.clone())).unwrap(),
            name: stack_tls::server_name("127.0.0.1").unwrap(),
        };
        let options_for = PeerOptions {
            keepalive: None,
            tls: Some(tls),
        };
        let txn = live.send(
            OwnerId(1),
            options(&format!("sips:{addr}")),
            Target::new(Transport::Tls, addr),
            Some(options_for),
        );
        let response = live.final_response(txn, Duration::from_secs(10)).await;
        assert_eq!(response.unwrap().status(), Some(200));
        // The peer now sends its own OPTIONS over the same connection; give
        // the endpoint time to answer it before stopping.
        let _ = live.next_event(Duration::from_millis(500)).await;
        let _ = live.next_event(Duration::from_millis(500)).await;
    });
    let report = peer.finish();
    let answer = report
        .answer
        .unwrap_or_else(|| panic!("no answer to the peer's request: {:?}", report.error));
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Call-ID: peer-call-1"), "{answer}");
}

/// A plain TCP peer that answers one OPTIONS, then answers the first
/// `pongs` pings with pongs and ignores the rest, counting the pings.
fn keepalive_peer(pongs: usize) -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let request = read_message(&mut s).unwrap();
        s.write_all(ok_for(&request).as_bytes()).unwrap();
        let mut pings = 0;
        let mut buf = [0u8; 4];
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match s.read_exact(&mut buf) {
                Ok(()) if &buf == b"\r\n\r\n" => {
                    pings += 1;
                    if pings <= pongs {
                        let _ = s.write_all(b"\r\n");
                    }
                }
                _ => break,
            }
        }
        pings
    });
    (addr, thread)
}

/// The final status of `txn` within 10 s.
async fn final_status(live: &mut Live, txn: dialerd::sip::transaction::TxnId) -> Option<u16> {
    live.final_response(txn, Duration::from_secs(10))
        .await
        .unwrap()
        .status()
}

async fn first_close(live: &mut Live, within: Duration) -> Option<CloseReason> {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match live.next_event(left).await {
            Some(Event::FlowClosed { reason, .. }) => return Some(reason),
            Some(_) => continue,
            None => return None,
        }
    }
}

/// Sends one OPTIONS over TCP with a 1 s keepalive on the new connection,
/// then returns the first close within `watch`, and when it came.
fn options_with_keepalive(addr: SocketAddr, watch: Duration) -> (Option<CloseReason>, Duration) {
    runtime().block_on(async {
        let mut live = Live::start().await;
        let sent = Instant::now();
        let txn = live.send(
            OwnerId(1),
            options(&format!("sip:{addr};transport=tcp")),
            Target::new(Transport::Tcp, addr),
            Some(PeerOptions {
                keepalive: Some(Duration::from_secs(1)),
                tls: None,
            }),
        );
        let response = live.final_response(txn, Duration::from_secs(10)).await;
        assert_eq!(response.unwrap().status(), Some(200));
        let reason = first_close(&mut live, watch).await;
        (reason, sent.elapsed())
    })
}

#[test]
fn a_dead_flow_is_detected_within_two_keepalive_intervals() {
    // Pings at 1 s (answered) and 2 s (not): dead at 3 s, two intervals
    // after the last sign of life.
    let (addr, peer) = keepalive_peer(1);
    let (reason, elapsed) = options_with_keepalive(addr, Duration::from_secs(5));
    assert_eq!(reason, Some(CloseReason::KeepaliveTimeout));
    assert!(
        elapsed <= Duration::from_millis(3500),
        "detected after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(2900),
        "one unanswered ping is not yet dead: {elapsed:?}"
    );
    assert_eq!(peer.join().unwrap(), 2, "two pings, the second unanswered");
}

#[test]
fn a_peer_that_never_answers_pings_keeps_its_flow() {
    let (addr, peer) = keepalive_peer(0);
    let (reason, _) = options_with_keepalive(addr, Duration::from_millis(3500));
    assert_eq!(
        reason, None,
        "no RFC 5626 pongs: pings continue as NAT keepalives"
    );
    assert!(peer.join().unwrap() >= 3);
}

#[test]
fn a_flow_answering_pongs_stays_open() {
    let (addr, peer) = keepalive_peer(usize::MAX);
    let (reason, _) = options_with_keepalive(addr, Duration::from_millis(3500));
    assert_eq!(reason, None, "no close while pongs arrive");
    assert!(peer.join().unwrap() >= 3, "pinged about once a second");
}

#[test]
fn a_request_on_a_connection_that_closes_fails_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = read_message(&mut s);
        // Closes without answering.
    });
    let started = Instant::now();
    let outcome = runtime().block_on(async {
        let mut live = Live::start().await;
        let txn = live.send(
            OwnerId(1),
            options(&format!("sip:{addr};transport=tcp")),
            Target::new(Transport::Tcp, addr),
            None,
        );
        live.final_response(txn, Duration::from_secs(40)).await
    });
    peer.join().unwrap();
    let error = outcome.unwrap_err().to_string();
    assert!(error.contains("connection closed (peer_closed)"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not at Timer F: {:?}",
        started.elapsed()
    );
}

/// A TCP peer that answers `answers[i]` requests on its i-th connection,
/// counts the CRLF CRLF pings on each (answering pongs), and closes each
/// connection `hold` after its last answer. Returns pings per connection.
fn counting_peer(
    answers: Vec<usize>,
    hold: Duration,
) -> (SocketAddr, std::thread::JoinHandle<Vec<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut pings = Vec::new();
        for n in answers {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = Vec::new();
            let (mut answered, mut count) = (0, 0);
            let mut last = Instant::now();
            let end_by = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end_by && (answered < n || last.elapsed() < hold) {
                let mut chunk = [0u8; 2048];
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(_) => {}
                }
                loop {
                    if buf.starts_with(b"\r\n\r\n") {
                        buf.drain(..4);
                        count += 1;
                        let _ = s.write_all(b"\r\n");
                        continue;
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    let request: Vec<u8> = buf.drain(..end + 4).collect();
                    let request = String::from_utf8_lossy(&request).into_owned();
                    s.write_all(ok_for(&request).as_bytes()).unwrap();
                    answered += 1;
                    last = Instant::now();
                }
            }
            pings.push(count);
            drop(s);
        }
        pings
    });
    (addr, thread)
}

#[test]
fn every_owner_on_a_flow_hears_of_its_loss_and_the_peers_keepalive_survives_other_requests() {
    let (addr, peer) = counting_peer(vec![2, 1], Duration::from_millis(2500));
    let target = Target::new(Transport::Tcp, addr);
    let (lost, pings) = runtime().block_on(async {
        let mut live = Live::start().await;
        // The registration configures its peer: 1 s keepalive.
        let registration = OwnerId(1);
        let call = OwnerId(2);
        let first = live.send(
            registration,
            options(&format!("sip:{addr};transport=tcp")),
            target,
            Some(PeerOptions {
                keepalive: Some(Duration::from_secs(1)),
                tls: None,
            }),
        );
        assert_eq!(final_status(&mut live, first).await, Some(200));
        // A second owner uses the same connection, with no options of its own.
        let second = live.send(
            call,
            options(&format!("sip:{addr};transport=tcp")),
            target,
            None,
        );
        assert_eq!(final_status(&mut live, second).await, Some(200));
        assert_eq!(live.ep.flows().connections(), 1, "one connection for both");
        let mut lost = Vec::new();
        while lost.len() < 2 {
            match live.next_event(Duration::from_secs(10)).await {
                Some(Event::FlowLost { owner, .. }) => lost.push(owner),
                Some(_) => continue,
                None => break,
            }
        }
        lost.sort();
        // The registration sends again: a new connection, still with the
        // peer's keepalive.
        let third = live.send(
            registration,
            options(&format!("sip:{addr};transport=tcp")),
            target,
            None,
        );
        assert_eq!(final_status(&mut live, third).await, Some(200));
        let _ = live.next_event(Duration::from_secs(3)).await;
        (lost, peer.join().unwrap())
    });
    assert_eq!(lost, [OwnerId(1), OwnerId(2)], "both owners told");
    assert!(
        pings[0] >= 2,
        "keepalive on the first connection: {pings:?}"
    );
    assert!(
        pings[1] >= 1,
        "the new connection kept the peer's keepalive: {pings:?}"
    );
}

#[test]
fn closing_a_registrars_tls_flow_tells_the_registration_and_every_other_owner_on_it() {
    use crate::support::tls::TlsRegistrar;
    let pki = TestPki::generate();
    // Answers the first request, then closes the connection 700 ms later.
    let registrar = TlsRegistrar::start(pki.server_config(false), Some(Duration::from_millis(700)));
    let addr = registrar.addr();
    let target = Target::new(Transport::Tls, addr);
    let lost = runtime().block_on(async {
        let mut live = Live::start().await;
        let registration = OwnerId(1);
        let call = OwnerId(2);
        let trust = PeerOptions {
            keepalive: Some(Duration::from_secs(25)),
            tls: Some(TlsClient {
                config: stack_tls::client_config(&Trust::CaFile(pki.ca.clone())).unwrap(),
                name: stack_tls::server_name("127.0.0.1").unwrap(),
            }),
        };
        let register = OutRequest::new(
            OutMessage::request("REGISTER", &format!("sips:{addr}"))
                .header("Max-Forwards", "70")
                .header("From", "<sips:1001@127.0.0.1>;tag=r1")
                .header("To", "<sips:1001@127.0.0.1>")
                .header("Call-ID", "reg-1@127.0.0.1")
                .header("CSeq", "1 REGISTER")
                .header("Expires", "60"),
        );
        let first = live.send(registration, register, target, Some(trust));
        assert_eq!(final_status(&mut live, first).await, Some(200));
        // A second owner sends over the same TLS connection (no options of
        // its own); the registrar closes before answering it.
        let _ = live.send(call, options(&format!("sips:{addr}")), target, None);
        assert_eq!(live.ep.flows().connections(), 1, "one TLS connection");
        let mut lost = Vec::new();
        while lost.len() < 2 {
            match live.next_event(Duration::from_secs(10)).await {
                Some(Event::FlowLost {
                    owner, transport, ..
                }) => {
                    assert_eq!(transport, Transport::Tls);
                    lost.push(owner);
                }
                Some(_) => continue,
                None => break,
            }
        }
        lost.sort();
        lost
    });
    assert_eq!(lost, [OwnerId(1), OwnerId(2)], "both owners told");
    registrar.with_log(|log| assert_eq!(log.peers.len(), 1));
}
