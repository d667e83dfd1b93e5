//! Registration against real SIPp registrars over UDP and TCP: digest (401,
//! 407, stale nonce), 423, 403 and silence with their backoffs, refresh
//! before expiry, unREGISTER on SIGTERM, and the storm guard.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::scratch::Scratch;
use crate::support::sipp::{Logged, Sipp, SippRun, SippTransport, logged, scenario};
use crate::support::{http, wait_for};

/// A dialerd whose one account registers with `registrar` over `transport`.
pub struct Registering {
    pub daemon: Daemon,
    _dir: Scratch,
}

pub fn dialerd_registering(
    registrar: &str,
    transport: &str,
    extra_account: &str,
    env: &[(&str, &str)],
) -> Registering {
    dialerd_registering_with(registrar, transport, extra_account, env)
}

/// [`dialerd_registering`] (the same, named for other modules' use).
pub fn dialerd_registering_with(
    registrar: &str,
    transport: &str,
    extra_account: &str,
    env: &[(&str, &str)],
) -> Registering {
    let dir = Scratch::new("reg");
    let config = dir.write(
        "dialerd.toml",
        &format!(
            "[[accounts]]\nname = \"acct\"\nregistrar = \"{registrar}\"\nusername = \"1001\"\n\
             password = \"local-test-only\"\ntransport = \"{transport}\"\n{extra_account}"
        ),
    );
    let mut all = vec![("DIALERD__REGISTRATION__BACKOFF_INITIAL_MS", "200")];
    all.extend_from_slice(env);
    let daemon = Daemon::start(
        &["--config", config.to_str().unwrap(), "--profile", "local"],
        &all,
    );
    Registering { daemon, _dir: dir }
}

pub fn account(d: &Daemon) -> Value {
    let status = http::get(d.http(), "/status").unwrap().json();
    status["accounts"][0].clone()
}

/// Waits until the account's state is `state`; returns its status.
pub fn wait_state(d: &Daemon, state: &str, within: Duration) -> Value {
    wait_for(within, || {
        let a = account(d);
        (a["state"] == state).then_some(a)
    })
    .unwrap_or_else(|| panic!("account never {state}: {}\nlog:\n{}", account(d), d.log()))
}

pub fn registrar(name: &str, transport: SippTransport, expires: &str) -> SippRun {
    Sipp::server(&scenario(name))
        .transport(transport)
        .key("expires", expires)
        .timeout(Duration::from_secs(40))
        .spawn()
}

pub fn uri(run: &SippRun) -> String {
    format!("sip:{}", run.local_addr())
}

fn registers(log: &[Logged]) -> Vec<&Logged> {
    log.iter()
        .filter(|m| m.received && m.first_line().starts_with("REGISTER "))
        .collect()
}

fn digest_registration(transport: SippTransport, name: &str) {
    let server = registrar(name, transport, "60");
    let t = if transport == SippTransport::Tcp {
        "tcp"
    } else {
        "udp"
    };
    let r = dialerd_registering(&uri(&server), t, "", &[]);
    let a = wait_state(&r.daemon, "registered", Duration::from_secs(10));
    assert!(a["expires_at_unix_ms"].as_u64().is_some(), "{a}");
    let ready = http::get(r.daemon.http(), "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = http::get(r.daemon.http(), "/metrics").unwrap().body;
    assert!(
        metrics.contains("dialerd_accounts{state=\"registered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dialerd_registration_requests_total{account=\"acct\"} 2"),
        "{metrics}"
    );
    let result = server.wait();
    assert_eq!(result.exit_code, Some(0), "{}", result.errors);
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert_eq!(regs.len(), 2, "one challenge, one answer");
    let header = if name.contains("proxy") {
        "Proxy-Authorization"
    } else {
        "Authorization"
    };
    assert!(regs[0].header(header).is_none());
    assert!(
        regs[1]
            .header(header)
            .unwrap()
            .starts_with("Digest username=\"1001\"")
    );
    assert!(
        result.messages.contains("SIP/2.0 200 OK"),
        "the registrar accepted the digest"
    );
}

#[test]
fn digest_401_then_200_over_udp() {
    digest_registration(SippTransport::Udp, "registrar_auth.xml");
}

#[test]
fn digest_401_then_200_over_tcp() {
    digest_registration(SippTransport::Tcp, "registrar_auth.xml");
}

#[test]
fn sip_trace_logs_every_message_with_credentials_redacted_and_switches_at_run_time() {
    let server = registrar("registrar_auth.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(
        &uri(&server),
        "udp",
        "",
        &[("DIALERD__LOG__SIP_TRACE", "true")],
    );
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    let log = r.daemon.log();
    let traced: Vec<&str> = log.lines().filter(|l| l.contains("sip_trace")).collect();
    assert!(
        traced
            .iter()
            .any(|l| l.contains("direction=\"out\"") && l.contains("transport=udp")),
        "{log}"
    );
    assert!(
        traced.iter().any(|l| l.contains("direction=\"in\"")),
        "{log}"
    );
    assert!(
        log.contains("REGISTER sip:"),
        "the message itself is logged: {log}"
    );
    assert!(log.contains("Authorization: <redacted>"), "{log}");
    assert!(
        !log.contains("response=\""),
        "no digest response in the log: {log}"
    );
    // Off at run time, from loopback: a REGISTER refresh is no longer logged.
    let off = http::post(r.daemon.http(), "/sip-trace?on=false").unwrap();
    assert_eq!(off.status, 200, "{}", off.body);
    let before = r.daemon.log().matches("REGISTER sip:").count();
    let unregister = http::post(r.daemon.http(), "/sip-trace?on=maybe").unwrap();
    assert_eq!(unregister.status, 400);
    r.daemon.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        r.daemon.log().matches("REGISTER sip:").count(),
        before,
        "the unREGISTER is not traced once switched off"
    );
}

#[test]
fn proxy_challenge_407_then_200() {
    digest_registration(SippTransport::Udp, "registrar_proxy_auth.xml");
}

#[test]
fn stale_nonce_is_answered_with_the_new_nonce() {
    let server = registrar("registrar_stale.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(&uri(&server), "udp", "", &[]);
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    let result = server.wait();
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert_eq!(regs.len(), 3);
    assert!(
        regs[1]
            .header("Authorization")
            .unwrap()
            .contains("nonce=\"first")
    );
    assert!(
        regs[2]
            .header("Authorization")
            .unwrap()
            .contains("nonce=\"second")
    );
}

#[test]
fn interval_too_brief_423_then_200_with_min_expires() {
    let server = registrar("registrar_423.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(&uri(&server), "udp", "", &[]);
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    let result = server.wait();
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert_eq!(regs[0].header("Expires"), Some("60"));
    assert_eq!(
        regs[1].header("Expires"),
        Some("120"),
        "Min-Expires honoured"
    );
}

#[test]
fn forbidden_403_then_backoff_then_registered() {
    let server = registrar("registrar_403_then_ok.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(
        &uri(&server),
        "udp",
        "",
        &[("DIALERD__REGISTRATION__FORBIDDEN_RETRY_SECS", "2")],
    );
    let failed = wait_state(&r.daemon, "failed", Duration::from_secs(5));
    assert_eq!(failed["code"], 403);
    assert_eq!(failed["last_error"], "403 Forbidden");
    let ready = http::get(r.daemon.http(), "/readyz").unwrap();
    assert_eq!(ready.status, 503, "a required account is not registered");
    wait_state(&r.daemon, "registered", Duration::from_secs(6));
    let result = server.wait();
    let log = logged(&result.messages);
    let regs = registers(&log);
    let gap = regs[1].at - regs[0].at;
    assert!(gap >= 1.9, "the forbidden interval was waited: {gap} s");
}

#[test]
fn no_answer_then_backoff_then_registered() {
    let server = registrar("registrar_silent_then_ok.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(&uri(&server), "udp", "", &[("DIALERD__SIP__T1_MS", "50")]);
    let backoff = wait_state(&r.daemon, "backoff", Duration::from_secs(8));
    assert_eq!(backoff["last_error"], "no response from the registrar");
    wait_state(&r.daemon, "registered", Duration::from_secs(8));
    let result = server.wait();
    let log = logged(&result.messages);
    let cseqs: Vec<&str> = registers(&log)
        .iter()
        .filter_map(|m| m.header("CSeq"))
        .collect();
    assert!(
        cseqs.iter().filter(|c| **c == "1 REGISTER").count() > 1,
        "the first was retransmitted: {cseqs:?}"
    );
    assert_eq!(
        cseqs.last(),
        Some(&"2 REGISTER"),
        "then a new request after the backoff"
    );
}

#[test]
fn refresh_comes_before_expiry() {
    let server = registrar("registrar_refresh.xml", SippTransport::Udp, "10");
    let started = Instant::now();
    let _r = dialerd_registering(&uri(&server), "udp", "", &[]);
    let result = server.wait();
    assert_eq!(result.exit_code, Some(0), "{}", result.errors);
    assert!(started.elapsed() < Duration::from_secs(12));
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert_eq!(regs.len(), 2);
    let gap = regs[1].at - regs[0].at;
    assert!(
        (6.5..10.0).contains(&gap),
        "refreshed {gap} s after a 10 s registration"
    );
}

#[test]
fn sigterm_unregisters_answering_the_challenge() {
    let server = registrar("registrar_unregister.xml", SippTransport::Udp, "60");
    let mut r = dialerd_registering(&uri(&server), "udp", "", &[]);
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    r.daemon.signal(libc::SIGTERM);
    let (status, _) = r
        .daemon
        .wait_exit(Duration::from_secs(10))
        .expect("dialerd exits");
    assert_eq!(status.code(), Some(0), "{}", r.daemon.log());
    let result = server.wait();
    assert_eq!(result.exit_code, Some(0), "{}", result.errors);
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert_eq!(regs.len(), 4);
    assert_eq!(regs[2].header("Expires"), Some("0"));
    assert_eq!(regs[3].header("Expires"), Some("0"));
    assert!(regs[3].header("Contact").unwrap().ends_with(";expires=0"));
    assert!(
        regs[3].header("Authorization").is_some(),
        "the challenge was answered"
    );
    let ok = log
        .iter()
        .filter(|m| !m.received && m.first_line() == "SIP/2.0 200 OK")
        .count();
    assert_eq!(
        ok, 2,
        "both the registration and the unregistration were accepted"
    );
}

#[test]
fn a_hundred_failures_in_a_row_send_one_register_per_backoff_step() {
    let server = registrar("registrar_503.xml", SippTransport::Udp, "60");
    let r = dialerd_registering(
        &uri(&server),
        "udp",
        "",
        &[
            ("DIALERD__REGISTRATION__BACKOFF_INITIAL_MS", "10"),
            ("DIALERD__REGISTRATION__BACKOFF_MAX_MS", "20"),
        ],
    );
    let backoff = wait_state(&r.daemon, "backoff", Duration::from_secs(5));
    assert_eq!(backoff["last_error"], "503 Service Unavailable");
    let sent = wait_for(Duration::from_secs(20), || {
        let metrics = http::get(r.daemon.http(), "/metrics").ok()?.body;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("dialerd_registration_requests_total{account=\"acct\"}"))?;
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        // A few past 101, so that the 101st has surely reached SIPp's log
        // (dialerd counts a REGISTER as it sends it).
        (n >= 105).then_some(n)
    });
    assert!(sent.is_some(), "dialerd kept retrying");
    let result = server.stop();
    let log = logged(&result.messages);
    let regs = registers(&log);
    assert!(regs.len() >= 101, "SIPp saw {} REGISTERs", regs.len());
    // Steps: 10 ms, then 20 ms (each -20 % .. +20 %); a timer never fires early.
    for (i, pair) in regs.windows(2).enumerate() {
        let step = if i == 0 { 0.010 } else { 0.020 };
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= step * 0.8 - 0.001,
            "REGISTER {} came {gap:.4} s after the previous, the step is {step} s",
            i + 2
        );
        assert_ne!(
            pair[0].header("CSeq"),
            pair[1].header("CSeq"),
            "each a new request, not a retransmission"
        );
    }
}

#[test]
fn a_failing_primary_fails_over_to_the_secondary_registrar() {
    let primary = registrar("registrar_503_once.xml", SippTransport::Udp, "60");
    let secondary = registrar("registrar_auth.xml", SippTransport::Udp, "60");
    let secondary_uri = uri(&secondary);
    let extra = format!("failover_registrars = [\"{secondary_uri}\"]\n");
    let r = dialerd_registering(&uri(&primary), "udp", &extra, &[]);
    let a = wait_state(&r.daemon, "registered", Duration::from_secs(10));
    assert_eq!(
        a["registrar"], secondary_uri,
        "registered with the secondary"
    );
    let first = primary.wait();
    assert_eq!(first.exit_code, Some(0), "{}", first.errors);
    let second = secondary.wait();
    let log = logged(&second.messages);
    let regs = registers(&log);
    assert_eq!(
        regs[0].first_line(),
        format!("REGISTER {secondary_uri} SIP/2.0")
    );
    assert_eq!(
        regs[0].header("CSeq"),
        Some("2 REGISTER"),
        "after one failure at the primary"
    );
}

mod tls {
    use std::time::Duration;

    use super::{dialerd_registering, wait_state};
    use crate::support::tls::{TestPki, TlsRegistrar};
    use crate::support::wait_for;

    #[test]
    fn registers_over_tls_with_a_ca_file() {
        let pki = TestPki::generate();
        let registrar = TlsRegistrar::start(pki.server_config(false), None);
        let extra = format!("tls_ca_file = {:?}\n", pki.ca.to_str().unwrap());
        let r = dialerd_registering(&format!("sips:{}", registrar.addr()), "tls", &extra, &[]);
        wait_state(&r.daemon, "registered", Duration::from_secs(10));
        registrar.with_log(|log| {
            let (_, _, first) = &log.registers[0];
            assert!(first.contains("Via: SIP/2.0/TLS "), "{first}");
            assert!(first.contains(";transport=tls>"), "{first}");
        });
    }

    #[test]
    fn without_a_tls_listener_contact_and_via_carry_the_connections_own_port() {
        let pki = TestPki::generate();
        let registrar = TlsRegistrar::start(pki.server_config(false), None);
        let extra = format!("tls_ca_file = {:?}\n", pki.ca.to_str().unwrap());
        let r = dialerd_registering(&format!("sips:{}", registrar.addr()), "tls", &extra, &[]);
        wait_state(&r.daemon, "registered", Duration::from_secs(10));
        registrar.with_log(|log| {
            let local = log.peers[0];
            let (_, conn, first) = &log.registers[0];
            assert_eq!(*conn, 0);
            let reachable = format!("{local}");
            let contact = first
                .lines()
                .find(|l| l.starts_with("Contact:"))
                .unwrap_or_default();
            let via = first
                .lines()
                .find(|l| l.starts_with("Via:"))
                .unwrap_or_default();
            assert!(
                contact.contains(&format!("@{reachable};transport=tls>")),
                "Contact names the connection's local address {reachable}: {contact}"
            );
            assert!(
                via.contains(&format!("SIP/2.0/TLS {reachable};")),
                "Via sent-by is the connection's local address {reachable}: {via}"
            );
            assert!(
                !contact.contains(":5061"),
                "no port where nothing listens: {contact}"
            );
        });
    }

    #[test]
    fn registers_over_tls_with_a_pinned_fingerprint() {
        let pki = TestPki::generate();
        let registrar = TlsRegistrar::start(pki.server_config(true), None);
        let extra = format!(
            "tls_fingerprint_sha256 = \"{}\"\n",
            pki.self_signed_fingerprint
        );
        let r = dialerd_registering(&format!("sips:{}", registrar.addr()), "tls", &extra, &[]);
        wait_state(&r.daemon, "registered", Duration::from_secs(10));
    }

    #[test]
    fn a_wrong_ca_shows_a_clear_error_in_status() {
        let pki = TestPki::generate();
        let registrar = TlsRegistrar::start(pki.server_config(false), None);
        let extra = format!("tls_ca_file = {:?}\n", pki.other_ca.to_str().unwrap());
        let r = dialerd_registering(&format!("sips:{}", registrar.addr()), "tls", &extra, &[]);
        let a = wait_state(&r.daemon, "backoff", Duration::from_secs(10));
        let error = a["last_error"].as_str().unwrap();
        assert!(
            error.contains("TLS handshake with")
                && error.contains("invalid peer certificate: UnknownIssuer"),
            "{error}"
        );
        registrar.with_log(|log| {
            assert!(
                log.registers.is_empty(),
                "nothing sent over an untrusted connection"
            )
        });
    }

    #[test]
    fn a_closed_tls_connection_is_re_registered_within_two_seconds() {
        let pki = TestPki::generate();
        let registrar =
            TlsRegistrar::start(pki.server_config(false), Some(Duration::from_millis(500)));
        let extra = format!("tls_ca_file = {:?}\n", pki.ca.to_str().unwrap());
        let r = dialerd_registering(&format!("sips:{}", registrar.addr()), "tls", &extra, &[]);
        wait_state(&r.daemon, "registered", Duration::from_secs(10));
        let again = wait_for(Duration::from_secs(5), || {
            registrar.with_log(|log| {
                let closed = log.closed_first?;
                let next = log.registers.iter().find(|(_, conn, _)| *conn == 1)?;
                Some(next.0 - closed)
            })
        });
        let gap = again
            .unwrap_or_else(|| panic!("no REGISTER on a new connection; log:\n{}", r.daemon.log()));
        assert!(
            gap < Duration::from_secs(2),
            "re-registered {gap:?} after the close"
        );
        wait_state(&r.daemon, "registered", Duration::from_secs(2));
    }
}
