//! The SIP core against real SIPp peers over UDP and TCP: OPTIONS both
//! ways, retransmission across a lossy relay, 400 for a malformed request,
//! and the source allow-list.

use std::net::SocketAddr;
use std::time::Duration;

use dialerd::sip::message::Message;

use crate::support::daemon::Daemon;
use crate::support::relay::LossyRelay;
use crate::support::sipp::{Sipp, SippResult, SippTransport, scenario};
use crate::support::{http, ports, probe, text};

/// A running dialerd with UDP and TCP listeners on one free port.
fn dialerd(extra_env: &[(&str, &str)]) -> (Daemon, SocketAddr) {
    let port = ports::free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("DIALERD__SIP__UDP_LISTEN", listen.as_str()),
        ("DIALERD__SIP__TCP_LISTEN", listen.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let d = Daemon::start(&["--profile", "local"], &env);
    (d, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn to_tag(datagram: &[u8]) -> String {
    let m = Message::parse_datagram(datagram.to_vec()).expect("a SIP message");
    m.to_header()
        .expect("To")
        .tag()
        .expect("a To tag")
        .to_owned()
}

/// Runs a SIPp client scenario against a fresh dialerd and requires it to
/// succeed.
fn sipp_against_dialerd(name: &str, transport: SippTransport, env: &[(&str, &str)]) -> SippResult {
    let (d, addr) = dialerd(env);
    let r = Sipp::client(&scenario(name), addr)
        .transport(transport)
        .spawn()
        .wait();
    assert_eq!(
        r.exit_code,
        Some(0),
        "SIPp {name}: {}\ndialerd: {}",
        r.errors,
        d.log()
    );
    r
}

fn sipp_options_is_answered(transport: SippTransport) {
    let r = sipp_against_dialerd("options_uac.xml", transport, &[]);
    assert_eq!(r.successful(), 1);
    for h in [
        "SIP/2.0 200 OK",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO",
        "Accept: application/sdp",
        "Supported:",
        "Server: dialerd/",
    ] {
        assert!(r.messages.contains(h), "{h} missing in:\n{}", r.messages);
    }
}

#[test]
fn sipp_options_gets_200_over_udp() {
    sipp_options_is_answered(SippTransport::Udp);
}

#[test]
fn sipp_options_gets_200_over_tcp() {
    sipp_options_is_answered(SippTransport::Tcp);
}

#[test]
fn lost_responses_are_recovered_by_retransmission_over_udp() {
    let (d, addr) = dialerd(&[]);
    let relay = LossyRelay::start(addr, 0, 2);
    let r = Sipp::client(&scenario("options_uac.xml"), relay.addr())
        .spawn()
        .wait();
    assert_eq!(
        r.exit_code,
        Some(0),
        "SIPp: {}\ndialerd: {}",
        r.errors,
        d.log()
    );
    let log = relay.log();
    assert_eq!(log.dropped_to_client.len(), 2, "two responses lost");
    assert_eq!(
        log.forwarded_to_server.len(),
        3,
        "the request was sent three times"
    );
    assert_eq!(log.forwarded_to_client.len(), 1);
    let tag = to_tag(&log.forwarded_to_client[0]);
    for lost in &log.dropped_to_client {
        assert_eq!(
            to_tag(lost),
            tag,
            "the transaction replays its response, it does not answer anew"
        );
    }
}

fn probe_is_answered_by_sipp(transport: SippTransport, flag: &str) {
    let server = Sipp::server(&scenario("options_uas.xml"))
        .transport(transport)
        .spawn();
    let uri = format!("sip:{}", server.local_addr());
    let out = probe(&[&uri, "--transport", flag]);
    let server = server.wait();
    assert!(
        out.status.success(),
        "probe: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{flag}:{} answered 200 OK", server_addr(&uri))),
        "{stdout}"
    );
    assert_eq!(server.exit_code, Some(0), "{}", server.errors);
    assert!(
        server.messages.contains("OPTIONS sip:127.0.0.1:"),
        "{}",
        server.messages
    );
}

fn server_addr(uri: &str) -> &str {
    uri.trim_start_matches("sip:")
}

#[test]
fn probe_is_answered_by_a_sipp_server_over_udp() {
    probe_is_answered_by_sipp(SippTransport::Udp, "udp");
}

#[test]
fn probe_is_answered_by_a_sipp_server_over_tcp() {
    probe_is_answered_by_sipp(SippTransport::Tcp, "tcp");
}

#[test]
fn probe_recovers_lost_requests_by_retransmission() {
    let server = Sipp::server(&scenario("options_uas.xml")).spawn();
    let relay = LossyRelay::start(server.local_addr(), 2, 0);
    let uri = format!("sip:{}", relay.addr());
    let out = probe(&[&uri]);
    let server = server.wait();
    assert!(
        out.status.success(),
        "probe: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(server.exit_code, Some(0));
    let log = relay.log();
    assert_eq!(log.dropped_to_server.len(), 2, "two requests lost");
    let branch = |d: &[u8]| {
        let m = Message::parse_datagram(d.to_vec()).unwrap();
        m.top_via().unwrap().branch().unwrap().to_owned()
    };
    let delivered = branch(&log.forwarded_to_server[0]);
    assert!(
        log.dropped_to_server.iter().all(|d| branch(d) == delivered),
        "retransmissions, not new requests"
    );
    let ms: f64 = text(&out.stdout)
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("elapsed in the output");
    assert!(
        ms >= 1400.0,
        "answered after Timer E fired twice (0.5 s, 1.5 s): {ms} ms"
    );
}

fn malformed_gets_400(transport: SippTransport) {
    let r = sipp_against_dialerd("malformed_uac.xml", transport, &[]);
    assert!(
        r.messages
            .contains("SIP/2.0 400 Bad Expires Header (number malformed or out of range)"),
        "{}",
        r.messages
    );
}

#[test]
fn malformed_request_gets_400_over_udp() {
    malformed_gets_400(SippTransport::Udp);
}

#[test]
fn malformed_request_gets_400_over_tcp() {
    malformed_gets_400(SippTransport::Tcp);
}

#[test]
fn untrusted_source_is_refused_with_403() {
    let env = [
        ("DIALERD__SIP__ALLOWED_PEERS", "10.0.0.0/8"),
        ("DIALERD__SIP__UNTRUSTED", "reject"),
    ];
    sipp_against_dialerd("options_uac_403.xml", SippTransport::Udp, &env);
}

#[test]
fn untrusted_source_is_dropped_and_counted() {
    let (d, addr) = dialerd(&[("DIALERD__SIP__ALLOWED_PEERS", "10.0.0.0/8")]);
    let r = Sipp::client(&scenario("options_uac.xml"), addr)
        .timeout(Duration::from_secs(2))
        .spawn()
        .wait();
    assert_ne!(r.exit_code, Some(0), "no answer expected");
    assert!(!r.messages.contains("message received"), "{}", r.messages);
    let metrics = http::get(d.http(), "/metrics").unwrap().body;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("dialerd_sip_dropped_total{reason=\"untrusted_source\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2, "each retransmission counted: {line}");
}

#[test]
fn a_tcp_connection_from_outside_the_allow_list_is_closed_at_accept() {
    let (d, addr) = dialerd(&[("DIALERD__SIP__ALLOWED_PEERS", "127.0.0.1/32")]);
    // A connection from another loopback address (bound before connecting).
    let out = std::process::Command::new("python3")
        .arg(crate::support::repo_root().join("tests/tools/connect_from.py"))
        .args(["--source", "127.9.9.9", "--target", &addr.to_string()])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "closed at once, before anything is sent"
    );
    let metrics = http::get(d.http(), "/metrics").unwrap().body;
    assert!(
        metrics.contains("dialerd_sip_dropped_total{reason=\"untrusted_source\"}"),
        "{metrics}"
    );
}

#[test]
fn readiness_requires_bound_sip_listeners() {
    let (d, addr) = dialerd(&[]);
    let ready = http::get(d.http(), "/readyz").unwrap().json();
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sip_listeners")
        .cloned()
        .expect("sip_listeners check");
    assert_eq!(check["ok"], true);
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("udp {addr}")),
        "{check}"
    );
}

#[test]
fn an_occupied_sip_port_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut d = Daemon::spawn(
        &["--profile", "local"],
        &[("DIALERD__SIP__UDP_LISTEN", addr.as_str())],
    );
    let (status, _) = d.wait_exit(Duration::from_secs(10)).expect("dialerd exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        d.log().contains(&format!("sip: cannot bind udp {addr}")),
        "{}",
        d.log()
    );
}

#[test]
fn options_over_ipv6_udp() {
    let port = ports::free_udp_tcp_port();
    let listen = format!("[::1]:{port}");
    let d = Daemon::start(
        &["--profile", "local"],
        &[("DIALERD__SIP__UDP_LISTEN", listen.as_str())],
    );
    let out = probe(&[&format!("sip:{listen}")]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        d.log()
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("udp:{listen} answered 200 OK")),
        "{stdout}"
    );
    assert!(stdout.contains("Via: SIP/2.0/UDP [::1]:"), "{stdout}");
}

/// Reads from `s` until EOF or `limit`; true when the peer closed.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

fn metric(d: &Daemon, prefix: &str) -> u64 {
    let body = http::get(d.http(), "/metrics").unwrap().body;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn connections_per_source_are_limited() {
    let (d, addr) = dialerd(&[("DIALERD__SIP__MAX_CONNECTIONS_PER_SOURCE", "2")]);
    let mut conns: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    assert!(
        closed_within(&mut conns[2], Duration::from_secs(2)),
        "the third is refused"
    );
    assert!(
        !closed_within(&mut conns[0], Duration::from_millis(300)),
        "the first stays"
    );
    assert!(
        !closed_within(&mut conns[1], Duration::from_millis(300)),
        "the second stays"
    );
    assert!(metric(&d, "dialerd_sip_dropped_total{reason=\"source_limit\"}") >= 1);
    assert_eq!(metric(&d, "dialerd_sip_flows "), 2);
}

#[test]
fn idle_connections_are_closed() {
    let (d, addr) = dialerd(&[("DIALERD__SIP__IDLE_TIMEOUT_SECS", "1")]);
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let opened = std::time::Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(3)),
        "closed when idle"
    );
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not before the idle timeout: {took:?}"
    );
    let closed = crate::support::wait_for(Duration::from_secs(2), || {
        (metric(&d, "dialerd_sip_flows_closed_total{reason=\"idle\"}") == 1).then_some(())
    });
    assert!(closed.is_some());
}
