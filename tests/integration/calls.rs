//! Calls against real SIPp peers over UDP. dialerd as caller (`dialerd
//! call`): answer and hang up from either side, busy, no answer cancelled at
//! the ring timeout, digest on the INVITE, early media, forked 2xx, a 200
//! crossing the CANCEL, hold and unhold by re-INVITE. dialerd as callee
//! (`dialerd run`): auto-answer with an SDP answer, CANCEL before the
//! answer, a caller that never ACKs, a caller outside the allow-list, and
//! the live call table in /status and /metrics.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::scratch::Scratch;
use crate::support::sipp::{Sipp, SippResult, SippRun, scenario};
use crate::support::{dialerd_bin, http, ports, repo_root, text, wait_for};

/// What `dialerd call` printed and how it exited.
struct Outcome {
    json: Value,
    code: Option<i32>,
    stderr: String,
}

/// Runs `dialerd call <uri> args...` with the local profile and waits for
/// it (generous bound).
fn dialerd_call(uri: &str, args: &[&str]) -> Outcome {
    dialerd_call_env(uri, args, &[])
}

/// [`dialerd_call`] with extra environment (configuration overrides).
fn dialerd_call_env(uri: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut child = Command::new(dialerd_bin())
        .arg("call")
        .args(["--profile", "local", "--profile-dir"])
        .arg(repo_root().join("sip-profiles"))
        .arg(uri)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dialerd call");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait dialerd call") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("dialerd call did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("dialerd call output");
    let stdout = text(&out.stdout);
    Outcome {
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        code: status.code(),
        stderr: text(&out.stderr),
    }
}

/// A SIPp callee running `name`, and the URI that reaches it.
fn callee(name: &str) -> (SippRun, String) {
    let run = Sipp::server(&scenario(name))
        .timeout(Duration::from_secs(30))
        .spawn();
    let uri = format!("sip:service@{}", run.local_addr());
    (run, uri)
}

/// Requires SIPp to have run its scenario to the end.
fn sipp_ok(run: SippRun, out: &Outcome) -> SippResult {
    let r = run.wait();
    assert_eq!(
        r.exit_code,
        Some(0),
        "SIPp: {}\ndialerd call: {} {}",
        r.errors,
        out.json,
        out.stderr
    );
    r
}

fn assert_outcome(out: &Outcome, answered: bool, cause: &str, code: Option<u16>, by: &str) {
    let j = &out.json;
    assert_eq!(j["answered"], answered, "{j} {}", out.stderr);
    assert_eq!(j["cause"], cause, "{j}");
    assert_eq!(j["code"].as_u64(), code.map(u64::from), "{j}");
    assert_eq!(j["ended_by"], by, "{j}");
    assert_eq!(out.code, Some(if answered { 0 } else { 1 }), "{j}");
}

#[test]
fn an_answered_call_is_hung_up_by_dialerd_after_the_hold() {
    let (sipp, uri) = callee("uas_answer.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "1", "--header", "X-Campaign: 42"]);
    assert_outcome(&out, true, "normal", None, "local");
    assert!(out.json["answered_ms"].as_u64().is_some());
    let total = out.json["total_ms"].as_u64().unwrap();
    assert!(total >= 1000, "held for the hold time: {total} ms");
    let r = sipp_ok(sipp, &out);
    let invite = &r.messages;
    assert!(invite.contains("X-Campaign: 42"), "{invite}");
    assert!(invite.contains("Content-Type: application/sdp"));
    assert!(invite.contains("m=audio "));
}

#[test]
fn a_callee_that_hangs_up_ends_the_call_as_remote() {
    let (sipp, uri) = callee("uas_answer_then_bye.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "30"]);
    assert_outcome(&out, true, "normal", None, "remote");
    sipp_ok(sipp, &out);
}

#[test]
fn busy_is_reported_with_its_code() {
    let (sipp, uri) = callee("uas_busy.xml");
    let out = dialerd_call(&uri, &[]);
    assert_outcome(&out, false, "busy", Some(486), "remote");
    sipp_ok(sipp, &out);
}

#[test]
fn no_answer_is_cancelled_at_the_ring_timeout() {
    let (sipp, uri) = callee("uas_ring_cancel.xml");
    let out = dialerd_call_env(
        &uri,
        &["--ring-timeout-secs", "1"],
        // Below the 15 s floor: the configuration allows it.
        &[("DIALERD__CALLS__MIN_RING_SECS", "0")],
    );
    assert_outcome(&out, false, "no_answer", Some(487), "local");
    assert!(out.json["ringing_ms"].as_u64().is_some());
    sipp_ok(sipp, &out);
}

#[test]
fn early_media_then_answer() {
    let (sipp, uri) = callee("uas_early_media.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "1"]);
    assert_outcome(&out, true, "normal", None, "local");
    let ringing = out.json["ringing_ms"].as_u64().unwrap();
    let answered = out.json["answered_ms"].as_u64().unwrap();
    assert!(
        answered >= ringing + 250,
        "183 at {ringing} ms, 200 at {answered} ms"
    );
    sipp_ok(sipp, &out);
}

#[test]
fn a_forked_second_200_is_acknowledged_and_ended_with_bye() {
    // The scenario itself checks that the second 200's dialog gets its ACK
    // and a BYE (To tag fork2) before the first dialog's BYE.
    let (sipp, uri) = callee("uas_forked.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "1"]);
    assert_outcome(&out, true, "normal", None, "local");
    sipp_ok(sipp, &out);
}

#[test]
fn a_200_retransmitted_because_its_ack_was_lost_is_acknowledged_again() {
    let (sipp, _) = callee("uas_200_retransmitted.xml");
    let relay = crate::support::relay::LossyRelay::start_matching(
        sipp.local_addr(),
        1,
        |d| d.starts_with(b"ACK "),
        0,
    );
    let out = dialerd_call(
        &format!("sip:service@{}", relay.addr()),
        &["--hold-secs", "2"],
    );
    assert_outcome(&out, true, "normal", None, "local");
    sipp_ok(sipp, &out);
    let log = relay.log();
    assert_eq!(log.dropped_to_server.len(), 1, "the first ACK was lost");
    let acks = log
        .forwarded_to_server
        .iter()
        .filter(|d| d.starts_with(b"ACK "))
        .count();
    assert!(acks >= 1, "the retransmitted 200 got its ACK");
    let oks = log
        .forwarded_to_client
        .iter()
        .filter(|d| d.starts_with(b"SIP/2.0 200") && d.windows(6).any(|w| w == b"INVITE"))
        .count();
    assert!(oks >= 2, "the 200 came again: {oks}");
}

#[test]
fn a_200_crossing_the_cancel_is_acknowledged_and_ended_with_bye() {
    let (sipp, uri) = callee("uas_cancel_crossing.xml");
    let out = dialerd_call_env(
        &uri,
        &["--ring-timeout-secs", "1"],
        // Below the 15 s floor: the configuration allows it.
        &[("DIALERD__CALLS__MIN_RING_SECS", "0")],
    );
    assert_outcome(&out, false, "no_answer", None, "local");
    let r = sipp_ok(sipp, &out);
    assert!(r.messages.contains("CANCEL sip:"), "{}", r.messages);
    assert!(r.messages.contains("BYE sip:"), "{}", r.messages);
}

#[test]
fn hold_and_unhold_by_re_invite_are_answered_recvonly_then_sendrecv() {
    let (sipp, uri) = callee("uas_hold_unhold.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "30"]);
    assert_outcome(&out, true, "normal", None, "remote");
    sipp_ok(sipp, &out);
}

#[test]
fn the_session_is_refreshed_by_re_invite_as_the_callee_asked() {
    // The scenario checks the refresh re-INVITE names dialerd (the
    // caller) as refresher; the hold of 3 s leaves room for one refresh
    // at half the 4 s interval.
    let (sipp, uri) = callee("uas_session_refresh.xml");
    let out = dialerd_call(&uri, &["--hold-secs", "3"]);
    assert_outcome(&out, true, "normal", None, "local");
    let r = sipp_ok(sipp, &out);
    assert!(r.messages.contains("Supported: timer"), "{}", r.messages);
}

#[test]
fn a_callee_that_vanishes_after_answering_is_ended_by_the_session_timer() {
    // The callee grants a 4 s interval as refresher and goes silent:
    // dialerd expects its refresh by 4 - 4/3 s, sends BYE (unanswered,
    // given up after 64×T1 = 3.2 s with T1 = 50 ms) and ends the call.
    let (sipp, uri) = callee("uas_vanish.xml");
    let out = dialerd_call_env(
        &uri,
        &["--hold-secs", "60"],
        &[("DIALERD__SIP__T1_MS", "50")],
    );
    assert_outcome(&out, true, "session_timer", None, "local");
    let total = out.json["total_ms"].as_u64().unwrap();
    assert!(
        total < 30_000,
        "ended after {total} ms, long before the hold"
    );
    sipp_ok(sipp, &out);
}

#[test]
fn an_invite_challenged_with_401_is_sent_again_with_credentials() {
    let (sipp, uri) = {
        let run = Sipp::server(&scenario("uas_auth.xml"))
            .calls(2)
            .timeout(Duration::from_secs(30))
            .spawn();
        let uri = format!("sip:service@{}", run.local_addr());
        (run, uri)
    };
    let dir = Scratch::new("call-auth");
    let config = dir.write(
        "dialerd.toml",
        &format!(
            "[[accounts]]\nname = \"acct\"\nregistrar = \"sip:{}\"\nusername = \"1001\"\n\
             password = \"local-test-only\"\n",
            sipp.local_addr()
        ),
    );
    let out = dialerd_call(
        &uri,
        &[
            "--config",
            config.to_str().unwrap(),
            "--account",
            "acct",
            "--hold-secs",
            "1",
        ],
    );
    assert_outcome(&out, true, "normal", None, "local");
    assert!(!out.stderr.contains("local-test-only"), "{}", out.stderr);
    let r = sipp_ok(sipp, &out);
    assert!(
        r.messages.contains("Authorization: Digest"),
        "{}",
        r.messages
    );
}

#[test]
fn an_unreachable_host_is_a_clear_error() {
    let out = dialerd_call("sip:service@no-such-host.invalid", &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot resolve"), "{}", out.stderr);
    let out = dialerd_call("mailto:someone", &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not a SIP URI"), "{}", out.stderr);
}

/// A dialerd taking calls with `policy`, on a free UDP port, T1 = 50 ms
/// (so 64×T1 is 3.2 s).
fn callee_dialerd(policy: &str, extra: &[(&str, &str)]) -> (Daemon, SocketAddr) {
    let port = ports::free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("DIALERD__SIP__UDP_LISTEN", listen.as_str()),
        ("DIALERD__SIP__T1_MS", "50"),
        ("DIALERD__CALLS__INBOUND", policy),
        ("DIALERD__CALLS__ANSWER_TIMEOUT_SECS", "20"),
    ];
    env.extend_from_slice(extra);
    let d = Daemon::start(&["--profile", "local"], &env);
    (d, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn caller(name: &str, dialerd: SocketAddr) -> SippResult {
    Sipp::client(&scenario(name), dialerd)
        .key("callee", "dialer")
        .timeout(Duration::from_secs(20))
        .spawn()
        .wait()
}

fn metric(d: &Daemon, line_start: &str) -> Option<f64> {
    let body = http::get(d.http(), "/metrics").ok()?.body;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn an_inbound_call_is_auto_answered_and_the_callers_bye_ends_it() {
    let (d, addr) = callee_dialerd("answer", &[]);
    let r = caller("uac_call.xml", addr);
    assert_eq!(r.exit_code, Some(0), "{}\n{}", r.errors, d.log());
    // The answer advertises the listener's address with a port from the
    // RTP range.
    assert!(r.messages.contains("c=IN IP4 127.0.0.1"), "{}", r.messages);
    let ended = wait_for(Duration::from_secs(5), || {
        metric(&d, "dialerd_calls_ended_total{cause=\"normal\"}").filter(|n| *n >= 1.0)
    });
    assert_eq!(ended, Some(1.0), "{}", d.log());
    let status = http::get(d.http(), "/status").unwrap().json();
    assert_eq!(status["calls"]["live"], 0, "{status}");
    assert_eq!(metric(&d, "dialerd_calls{state=\"answered\"}"), Some(0.0));
}

#[test]
fn an_inbound_call_cancelled_while_ringing_gets_487() {
    let (d, addr) = callee_dialerd("ring", &[]);
    let r = caller("uac_cancel.xml", addr);
    assert_eq!(r.exit_code, Some(0), "{}\n{}", r.errors, d.log());
    let ended = wait_for(Duration::from_secs(5), || {
        metric(&d, "dialerd_calls_ended_total{cause=\"cancelled\"}").filter(|n| *n >= 1.0)
    });
    assert_eq!(ended, Some(1.0), "{}", d.log());
}

#[test]
fn a_caller_that_never_acks_gets_a_bye_after_64_t1() {
    let (d, addr) = callee_dialerd("answer", &[]);
    let started = Instant::now();
    let r = caller("uac_no_ack.xml", addr);
    assert_eq!(r.exit_code, Some(0), "{}\n{}", r.errors, d.log());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3000), "BYE after {took:?}");
    let ended = wait_for(Duration::from_secs(5), || {
        metric(&d, "dialerd_calls_ended_total{cause=\"ack_timeout\"}").filter(|n| *n >= 1.0)
    });
    assert_eq!(ended, Some(1.0), "{}", d.log());
}

#[test]
fn an_invite_from_outside_the_allow_list_is_refused() {
    let (d, addr) = callee_dialerd(
        "answer",
        &[
            ("DIALERD__SIP__ALLOWED_PEERS", "10.0.0.0/8"),
            ("DIALERD__SIP__UNTRUSTED", "reject"),
        ],
    );
    let r = caller("uac_refused.xml", addr);
    assert_eq!(r.exit_code, Some(0), "{}\n{}", r.errors, d.log());
    let status = http::get(d.http(), "/status").unwrap().json();
    assert_eq!(status["calls"]["live"], 0, "{status}");
    assert_eq!(
        metric(&d, "dialerd_calls_ended_total"),
        None,
        "no call was created"
    );
}

#[test]
fn a_ringing_calls_media_port_is_bound_and_counts_what_arrives() {
    let (d, addr) = callee_dialerd(
        "ring",
        &[
            ("DIALERD__MEDIA__RTP_PORT_RANGE__START", "41000"),
            ("DIALERD__MEDIA__RTP_PORT_RANGE__END", "41999"),
        ],
    );
    let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = caller.local_addr().unwrap();
    let sdp = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "INVITE sip:dialer@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKmedia1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=m1\r\nTo: <sip:dialer@{addr}>\r\n\
         Call-ID: media-port-test\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{local}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    // Sent again while nothing shows, as a UAC's Timer A would (the same
    // branch: a retransmission, absorbed by the server transaction), so a
    // loaded machine that lost the first datagram does not fail the test.
    let port = wait_for(Duration::from_secs(15), || {
        caller.send_to(invite.as_bytes(), addr).unwrap();
        let status = http::get(d.http(), "/status").ok()?.json();
        status["calls"]["items"][0]["media_port"].as_u64()
    })
    .unwrap_or_else(|| panic!("no live call with a media port: {}", d.log()));
    assert!((41000..42000).contains(&port), "{port}");
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let counted = wait_for(Duration::from_secs(5), || {
        let _ = rtp.send_to(
            &[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            ("127.0.0.1", port as u16),
        );
        metric(&d, "dialerd_media_packets_received_total").filter(|n| *n >= 1.0)
    });
    assert!(counted.is_some(), "{}", d.log());
}
