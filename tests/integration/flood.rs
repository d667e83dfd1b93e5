//! dialerd under a connection flood: 1,100 slow TCP senders (one byte every
//! 10 s, reconnecting when closed, each from its own loopback address) and
//! 20,000 idle HTTP connections at once, while an account is registered over
//! TLS. The registration's flow keeps working, `dialerd probe` over TCP is
//! answered, /healthz answers within a second, and the process stays within
//! its file limit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registration::{dialerd_registering_with, wait_state};
use crate::support::tls::{TestPki, TlsRegistrar};
use crate::support::{http, ports, probe, repo_root, text, wait_for};

fn python(script: &str, args: &[String]) -> Child {
    Command::new("python3")
        .arg(repo_root().join("tests/tools").join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn fd_limit(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn a_flood_of_slow_senders_and_idle_http_connections_starves_nothing() {
    let pki = TestPki::generate();
    let registrar = TlsRegistrar::start(pki.server_config(false), None);
    let sip_tcp = ports::free_tcp_port();
    let extra = format!(
        "tls_ca_file = {:?}\nkeepalive_secs = 4\n",
        pki.ca.to_str().unwrap()
    );
    let listen = format!("127.0.0.1:{sip_tcp}");
    let r = dialerd_registering_with(
        &format!("sips:{}", registrar.addr()),
        "tls",
        &extra,
        &[("DIALERD__SIP__TCP_LISTEN", listen.as_str())],
    );
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    let pid = r.daemon.pid();
    let limit = fd_limit(pid);
    let http_addr = r.daemon.http();

    let seconds = 16.0;
    let slow = python(
        "slow_senders.py",
        &[
            format!("--target={listen}"),
            "--count=1100".into(),
            "--interval=10".into(),
            format!("--duration={seconds}"),
        ],
    );
    let idle: Vec<Child> = (0..2)
        .map(|i| {
            python(
                "idle_http.py",
                &[
                    format!("--target={http_addr}"),
                    "--count=10000".into(),
                    format!("--hold={seconds}"),
                    format!("--source=127.66.{i}.1"),
                ],
            )
        })
        .collect();
    let started = Instant::now();
    let mut most_fds = 0;
    let mut slowest_health = Duration::ZERO;
    let mut probes = Vec::new();
    // Let the flood build up, then check while it lasts.
    std::thread::sleep(Duration::from_secs(3));
    while started.elapsed() < Duration::from_secs_f64(seconds - 2.0) {
        most_fds = most_fds.max(open_fds(pid));
        let asked = Instant::now();
        let health = http::get(http_addr, "/healthz");
        slowest_health = slowest_health.max(asked.elapsed());
        assert_eq!(
            health.map(|h| h.status).ok(),
            Some(200),
            "/healthz during the flood"
        );
        let out = probe(&[
            &format!("sip:127.0.0.1:{sip_tcp};transport=tcp"),
            "--timeout-secs",
            "3",
        ]);
        probes.push((out.status.success(), text(&out.stdout), text(&out.stderr)));
        std::thread::sleep(Duration::from_millis(700));
    }
    let slow_report = slow.wait_with_output().expect("slow senders");
    for child in idle {
        let out = child.wait_with_output().expect("idle clients");
        assert!(out.status.success());
    }
    let slow_stats: serde_json::Value =
        serde_json::from_str(text(&slow_report.stdout).trim()).expect("slow sender stats");
    eprintln!(
        "flood: {} probes, slowest /healthz {slowest_health:?}, most open files {most_fds} of {limit}, slow senders {slow_stats}",
        probes.len()
    );
    assert!(
        // Generous for a loaded 2-core machine; the liveness limit is 5 s.
        slowest_health < Duration::from_secs(2),
        "/healthz took {slowest_health:?} at worst"
    );
    assert!(
        probes.iter().all(|(ok, ..)| *ok),
        "every probe over TCP answered: {probes:?}"
    );
    assert!(
        most_fds < limit,
        "open files peaked at {most_fds}, limit {limit}"
    );
    assert!(
        slow_stats["closed_by_peer"].as_u64().unwrap_or(0) >= 1100,
        "every slow sender was closed at least once: {slow_stats}"
    );
    // The registration's flow was never lost, and it is still registered.
    let account = wait_state(&r.daemon, "registered", Duration::from_secs(2));
    assert_eq!(account["state"], "registered");
    registrar.with_log(|log| {
        assert_eq!(log.peers.len(), 1, "one TLS connection throughout");
        assert!(log.errors.is_empty(), "{:?}", log.errors);
    });
    let metrics = http::get(http_addr, "/metrics").unwrap().body;
    assert!(
        metrics.contains("dialerd_sip_flows_closed_total{reason=\"slow_sender\"}")
            || metrics.contains("dialerd_sip_flows_closed_total{reason=\"evicted\"}"),
        "slow senders are counted"
    );
    let log = r.daemon.log();
    assert!(!log.contains("accept failed"), "no accept failure: {log}");
    let _ = wait_for(Duration::from_secs(1), || None::<()>);
}
