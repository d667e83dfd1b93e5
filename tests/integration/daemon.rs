//! `dialerd run`: the status server over HTTP, drain, signals and exit codes.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::http;
use crate::support::scratch::Scratch;

#[test]
fn local_profile_serves_health_ready_status_and_metrics() {
    let d = Daemon::start(&["--profile", "local"], &[]);
    let addr = d.http();
    d.wait_ready(Duration::from_secs(20));

    let health = http::get(addr, "/healthz").unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let ready = http::get(addr, "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["ready"], true);
    let checks = ready["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["accounts", "config", "http_listener", "sip_listeners"]
    );
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");

    let status = http::get(addr, "/status").unwrap();
    assert_eq!(status.status, 200);
    assert!(
        status
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let status = status.json();
    assert_eq!(status["instance"]["id"], "local");
    assert_eq!(status["instance"]["public_address"], "127.0.0.1");
    assert_eq!(status["instance"]["public_address_source"], "static");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["phase"], "running");
    assert_eq!(status["ready"], true);
    assert!(status["uptime_secs"].as_u64().is_some(), "{status}");
    assert!(status["started_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        status["accounts"],
        serde_json::json!([]),
        "the local profile has no accounts"
    );

    let metrics = http::get(addr, "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let body = &metrics.body;
    assert!(
        body.contains(&format!(
            "dialerd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(body.contains("dialerd_ready 1"), "{body}");
    assert!(
        body.contains("dialerd_http_requests_total{route=\"/healthz\",status=\"200\"}"),
        "{body}"
    );
    assert!(body.contains("dialerd_start_time_seconds "), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let missing = http::get(addr, "/nope").unwrap();
    assert_eq!(missing.status, 404);

    let log = d.log();
    assert!(log.contains("dialerd running"), "{log}");
    assert!(
        !log.contains("local-test-only"),
        "the local password leaked into the log:\n{log}"
    );
}

#[test]
fn drain_turns_readiness_off_and_exits_zero() {
    let mut d = Daemon::start(&["--profile", "local"], &[]);
    let addr = d.http();
    d.wait_ready(Duration::from_secs(20));
    assert_eq!(
        http::get(addr, "/drain").unwrap().status,
        405,
        "drain only by POST"
    );
    let drained = http::post(addr, "/drain").unwrap();
    assert_eq!(drained.status, 202, "{}", drained.body);
    assert_eq!(drained.json()["phase"], "draining");
    // With no call to wait for, the drain goes straight on to stopping;
    // until the server closes, readiness is off and health is not.
    if let Ok(ready) = http::get(addr, "/readyz") {
        assert_eq!(ready.status, 503);
        let phase = ready.json()["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(phase == "draining" || phase == "stopping", "{phase}");
    }
    let (status, _) = d
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
}

#[test]
fn sigterm_exits_zero_within_the_deadline() {
    let mut d = Daemon::start(
        &["--profile", "local"],
        &[("DIALERD__SHUTDOWN__DEADLINE_SECS", "5")],
    );
    d.signal(libc::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(took < Duration::from_secs(5));
    let log = d.log();
    assert!(
        log.contains("stop requested") && log.contains("shutdown complete"),
        "{log}"
    );
}

#[test]
fn sigint_exits_zero_and_json_logs_are_json() {
    let mut d = Daemon::start(&["--profile", "local", "--log-format", "json"], &[]);
    d.signal(libc::SIGINT);
    let (status, _) = d
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    let log = d.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "dialerd running"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{log}"
    );
}

#[test]
fn an_occupied_http_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut d = Daemon::spawn(
        &["--profile", "local"],
        &[("DIALERD__HTTP__BIND", addr.as_str())],
    );
    let (status, _) = d.wait_exit(Duration::from_secs(10)).expect("dialerd exits");
    assert_eq!(status.code(), Some(1));
    let log = d.log();
    assert!(log.contains(&format!("http.bind {addr}")), "{log}");
}

#[test]
fn public_address_comes_from_the_metadata_service() {
    // A stand-in for the DigitalOcean metadata service on loopback.
    let metadata = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = metadata.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = metadata.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n203.0.113.9\n")
            .unwrap();
        request
    });
    let url = format!("http://127.0.0.1:{port}/metadata/v1/interfaces/public/0/ipv4/address");
    let d = Daemon::start(
        &["--profile", "local"],
        &[
            ("DIALERD__INSTANCE__PUBLIC_ADDRESS__SOURCE", "do_metadata"),
            ("DIALERD__INSTANCE__PUBLIC_ADDRESS__URL", url.as_str()),
        ],
    );
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /metadata/v1/interfaces/public/0/ipv4/address HTTP/1.1\r\n"),
        "{request}"
    );
    let status = http::get(d.http(), "/status").unwrap().json();
    assert_eq!(status["instance"]["public_address"], "203.0.113.9");
    assert_eq!(status["instance"]["public_address_source"], "do_metadata");
}

#[test]
fn unreachable_metadata_service_fails_start_with_a_clear_error() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metadata", closed.local_addr().unwrap());
    drop(closed);
    let mut d = Daemon::spawn(
        &["--profile", "local"],
        &[
            ("DIALERD__INSTANCE__PUBLIC_ADDRESS__SOURCE", "do_metadata"),
            ("DIALERD__INSTANCE__PUBLIC_ADDRESS__URL", url.as_str()),
            ("DIALERD__INSTANCE__PUBLIC_ADDRESS__TIMEOUT_MS", "300"),
        ],
    );
    let (status, _) = d
        .wait_exit(Duration::from_secs(15))
        .expect("dialerd gives up");
    assert_eq!(status.code(), Some(1));
    let log = d.log();
    assert!(
        log.contains("instance.public_address: metadata service")
            && log.contains("after 3 attempts"),
        "{log}"
    );
}

#[test]
fn a_sip_core_that_panics_turns_readiness_false_and_the_process_exits_non_zero() {
    let mut d = Daemon::start(
        &["--profile", "local"],
        &[("DIALERD_TEST_FAULT", "sip-core-panic:1500")],
    );
    let addr = d.http();
    d.wait_ready(Duration::from_secs(20));
    let failed = crate::support::wait_for(Duration::from_secs(10), || {
        http::get(addr, "/readyz")
            .ok()
            .filter(|r| r.status == 503)
            .map(|r| r.json())
    })
    .expect("readiness turns false when the SIP core dies");
    let checks = failed["checks"].as_array().unwrap();
    let sip = checks
        .iter()
        .find(|c| c["name"] == "sip_core")
        .expect("a sip_core check");
    assert_eq!(sip["ok"], false);
    assert!(
        sip["detail"].as_str().unwrap().contains("panicked"),
        "{sip}"
    );
    let (status, _) = d
        .wait_exit(Duration::from_secs(15))
        .expect("the process exits");
    assert_eq!(
        status.code(),
        Some(1),
        "exit 1 so that Kubernetes restarts it"
    );
    let log = d.log();
    assert!(log.contains("a critical task ended"), "{log}");
}

/// This machine's first non-loopback IPv4 address, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let ip: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
}

const HTTP_TOKEN: &str = "it-http-token-5d1c0a9e77f3";

#[test]
fn http_token_guards_status_metrics_and_drain_from_other_addresses() {
    let dir = Scratch::new("http-token");
    let token_file = dir.write("token", &format!("{HTTP_TOKEN}\n"));
    let d = Daemon::start_http_on(
        Ipv4Addr::UNSPECIFIED.into(),
        &["--profile", "local"],
        &[("DIALERD__HTTP__TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let local = d.http();
    d.wait_ready(Duration::from_secs(20));
    // Loopback needs no token.
    assert_eq!(http::get(local, "/status").unwrap().status, 200);
    assert_eq!(http::get(local, "/metrics").unwrap().status, 200);

    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped the non-loopback part: this machine has no non-loopback IPv4 address");
        return;
    };
    let outside = SocketAddr::new(ip.into(), local.port());
    // The probes stay open.
    assert_eq!(http::get(outside, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(outside, "/readyz").unwrap().status, 200);

    let good = format!("Bearer {HTTP_TOKEN}");
    let wrong = format!("Bearer {HTTP_TOKEN}-not");
    for (method, path) in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/drain")] {
        for auth in [None, Some(wrong.as_str())] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let r = http::request_with(outside, method, path, &headers).unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body);
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{}",
                r.headers
            );
            assert_eq!(r.json()["error"], "unauthorized");
        }
    }
    assert_eq!(
        http::get(local, "/readyz").unwrap().status,
        200,
        "a refused drain drains nothing"
    );
    let auth = [("Authorization", good.as_str())];
    let status = http::request_with(outside, "GET", "/status", &auth).unwrap();
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["instance"]["id"], "local");
    let metrics = http::request_with(outside, "GET", "/metrics", &auth).unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("dialerd_http_requests_total{route=\"/status\",status=\"401\"}"),
        "{}",
        metrics.body
    );
    let drained = http::request_with(outside, "POST", "/drain", &auth).unwrap();
    assert_eq!(drained.status, 202, "{}", drained.body);
    assert_eq!(drained.json()["phase"], "draining");

    let log = d.log();
    assert!(
        !log.contains(HTTP_TOKEN),
        "the token leaked into the log:\n{log}"
    );
    assert!(
        !log.contains("no http.token is set"),
        "no open-server warning with a token:\n{log}"
    );
}

#[test]
fn without_a_token_a_non_loopback_bind_warns_and_drain_stays_loopback_only() {
    let d = Daemon::start_http_on(Ipv4Addr::UNSPECIFIED.into(), &["--profile", "local"], &[]);
    let log = d.log();
    assert_eq!(
        log.matches("no http.token is set").count(),
        1,
        "one warning at start:\n{log}"
    );
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped the non-loopback part: this machine has no non-loopback IPv4 address");
        return;
    };
    let outside = SocketAddr::new(ip.into(), d.http().port());
    assert_eq!(http::get(outside, "/status").unwrap().status, 200);
    assert_eq!(http::get(outside, "/metrics").unwrap().status, 200);
    let refused = http::post(outside, "/drain").unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"], "forbidden");
    assert_eq!(http::post(d.http(), "/drain").unwrap().status, 202);
}

#[test]
fn a_loopback_bind_without_a_token_does_not_warn() {
    let d = Daemon::start(&["--profile", "local"], &[]);
    assert!(!d.log().contains("no http.token is set"), "{}", d.log());
}
