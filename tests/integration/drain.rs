//! The drain, against a real redis-server and SIPp peers: with a call up,
//! SIGTERM (or POST /drain) makes dialerd not ready, refuse new originates
//! with `draining` and inbound INVITEs with 503 and Retry-After, let the
//! call run to its end, unREGISTER, say `daemon.stopping`, and exit 0.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::call_control::{
    Sub, command, dialerd_env, dialerd_on_port, originate_args, pbx, publish,
};
use crate::support::redis::RedisServer;
use crate::support::scratch::Scratch;
use crate::support::sipp::{Sipp, scenario};
use crate::support::{http, ports, wait_for};

#[test]
fn sigterm_with_a_call_up_refuses_new_calls_lets_the_call_end_unregisters_and_exits_0() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("drain-sigterm");
    let extra = "[calls]\ninbound = \"answer\"\n[shutdown]\ndeadline_secs = 60\n";
    let (mut d, sip) = dialerd_on_port(&redis, pbx.local_addr(), &dir, extra);
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:dr"]);
    let to = format!("sip:service@{}", pbx.local_addr());
    // A call that ends on its own after 8 s.
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "up-1",
            "originate",
            Some("dialer:reply:dr"),
            originate_args("acct-a", &to, json!({"max_duration_secs": 8})),
        ),
    );
    sub.until(Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "up-1"
    });

    d.signal(libc::SIGTERM);
    let not_ready = wait_for(Duration::from_secs(5), || {
        http::get(d.http(), "/readyz")
            .ok()
            .filter(|r| r.status == 503 && r.json()["phase"] == "draining")
    });
    assert!(
        not_ready.is_some(),
        "not ready while draining:\n{}",
        d.log()
    );

    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "new-1",
            "originate",
            Some("dialer:reply:dr"),
            originate_args("acct-a", &to, json!({"force": true})),
        ),
    );
    let refused = sub.until(Duration::from_secs(10), |e| e["id"] == "new-1");
    let refused = refused.last().unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "draining", "{refused}");

    let caller = Sipp::client(&scenario("uac_invite_503.xml"), sip)
        .key("callee", "1001")
        .timeout(Duration::from_secs(20))
        .spawn()
        .wait();
    assert_eq!(
        caller.exit_code,
        Some(0),
        "inbound INVITE refused 503 with Retry-After:\n{}\n{}",
        caller.errors,
        caller.messages
    );

    let ended = sub.until(Duration::from_secs(20), |e| {
        e["type"] == "call.ended" && e["call_id"] == "up-1"
    });
    let ended = ended.last().unwrap();
    assert_eq!(
        ended["cause"], "max_duration",
        "the call ran to its own end: {ended}"
    );
    let (status, took) = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("dialerd did not exit:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "exit 0:\n{}", d.log());
    assert!(took < Duration::from_secs(30), "{took:?}");
    let stopping = sub.until(Duration::from_secs(5), |e| e["type"] == "daemon.stopping");
    let status = &stopping.last().unwrap()["status"];
    assert_eq!(status["instance"]["id"], "a", "the final status: {status}");
    assert_eq!(status["phase"], "stopping", "{status}");
    let pbx = pbx.stop();
    let unregister = pbx.messages.split("REGISTER sip:").skip(1).any(|m| {
        m.lines()
            .any(|l| l.trim().eq_ignore_ascii_case("Expires: 0"))
    });
    assert!(
        unregister,
        "the registrar saw the unREGISTER:\n{}",
        pbx.messages
    );
}

#[test]
fn a_drain_deadline_ends_calls_with_shutdown_and_dialerd_drain_waits_for_the_exit() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("drain-post");
    let sip = SocketAddr::from(([127, 0, 0, 1], ports::free_udp_tcp_port()));
    let listen = sip.to_string();
    let mut d = dialerd_env(
        &redis,
        pbx.local_addr(),
        "a",
        "[shutdown]\ndeadline_secs = 2\n",
        &dir,
        &[("DIALERD__SIP__UDP_LISTEN", &listen)],
    );
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:dp"]);
    let to = format!("sip:service@{}", pbx.local_addr());
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "long-1",
            "originate",
            Some("dialer:reply:dp"),
            originate_args("acct-a", &to, json!({"max_duration_secs": 600})),
        ),
    );
    sub.until(Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "long-1"
    });
    // The drain command over Redis starts it (POST /drain does the same).
    publish(
        &redis,
        "dialer:a:cmd",
        &command("drain-1", "drain", Some("dialer:reply:dp"), json!({})),
    );
    let ended = sub.until(Duration::from_secs(15), |e| {
        e["type"] == "call.ended" && e["call_id"] == "long-1"
    });
    let ended = ended.last().unwrap();
    assert_eq!(ended["cause"], "shutdown", "{ended}");
    let (status, _) = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("dialerd did not exit:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "exit 0:\n{}", d.log());

    // No calls: `dialerd drain --wait` (the preStop hook) returns once
    // the daemon is gone, exit 0 both.
    let mut d = dialerd_env(
        &redis,
        pbx.local_addr(),
        "b",
        "",
        &dir,
        &[("DIALERD__SIP__UDP_LISTEN", &listen)],
    );
    let config = dir.path().join("b.toml");
    let out = std::process::Command::new(crate::support::dialerd_bin())
        .args(["drain", "--wait", "--wait-secs", "30", "--config"])
        .arg(&config)
        .arg("--profile-dir")
        .arg(crate::support::repo_root().join("sip-profiles"))
        .env("DIALERD__HTTP__BIND", d.http().to_string())
        .env("DIALERD__REDIS__ENABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        crate::support::text(&out.stdout),
        crate::support::text(&out.stderr)
    );
    assert_eq!(
        crate::support::text(&out.stdout).trim(),
        "drained and exited"
    );
    let (status, _) = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("dialerd did not exit:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "exit 0:\n{}", d.log());
    // Nothing left to drain: a clear error, exit 1.
    let out = std::process::Command::new(crate::support::dialerd_bin())
        .args(["drain", "--config"])
        .arg(&config)
        .arg("--profile-dir")
        .arg(crate::support::repo_root().join("sip-profiles"))
        .env("DIALERD__HTTP__BIND", d.http().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::support::text(&out.stderr).contains("cannot reach the status server"),
        "{}",
        crate::support::text(&out.stderr)
    );
}
