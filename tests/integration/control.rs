//! The Redis control channel against a real redis-server (and SIPp
//! registrars): events and the status key, `dialerd ctl`, recovery from a
//! killed subscription, a restart, an idle timeout and a half-open path,
//! malformed commands, and idempotency.

use std::process::Command as Process;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registration::{Registering, account, dialerd_registering, registrar, uri, wait_state};
use crate::support::daemon::Daemon;
use crate::support::proxy::FreezingProxy;
use crate::support::redis::{RedisServer, Resp, RespClient};
use crate::support::sipp::{SippRun, SippTransport, logged};
use crate::support::{dialerd_bin, http, repo_root, text, wait_for};

/// A subscriber on `channel` that collects JSON messages.
pub(crate) struct Listener {
    client: RespClient,
}

impl Listener {
    pub(crate) fn new(redis: &RedisServer, channel: &str) -> Self {
        let mut client = redis.client().unwrap();
        let ack = client.command(&["SUBSCRIBE", channel]).unwrap();
        assert!(matches!(ack, Resp::Array(Some(_))), "{ack:?}");
        Self { client }
    }

    /// The next message as JSON, or `None` after `limit`.
    pub(crate) fn next(&mut self, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match self.client.read() {
                Ok(Resp::Array(Some(parts))) if parts.len() == 3 => {
                    let text = parts[2].text()?;
                    return serde_json::from_str(&text).ok();
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Messages until one satisfies `done` (inclusive), within `limit`.
    pub(crate) fn until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(v) = self.next(end.saturating_duration_since(Instant::now())) {
            let stop = done(&v);
            seen.push(v);
            if stop {
                return seen;
            }
        }
        panic!("condition not met within {limit:?}; saw {seen:#?}");
    }
}

fn redis_env(redis: &RedisServer, keepalive: &str) -> Vec<(String, String)> {
    vec![
        ("DIALERD__REDIS__ENABLED".into(), "true".into()),
        ("DIALERD__REDIS__URL".into(), redis.url()),
        ("DIALERD__REDIS__KEEPALIVE_SECS".into(), keepalive.into()),
    ]
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn ctl(redis: &RedisServer, args: &[&str]) -> (bool, Value) {
    let out = Process::new(dialerd_bin())
        .arg("ctl")
        .args(["--profile", "local", "--profile-dir"])
        .arg(repo_root().join("sip-profiles"))
        .args(args)
        .env("DIALERD__REDIS__URL", redis.url())
        .output()
        .expect("run dialerd ctl");
    let stdout = text(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|_| panic!("ctl printed {stdout:?}; stderr {}", text(&out.stderr)));
    (out.status.success(), json)
}

pub(crate) fn numsub(redis: &RedisServer, channel: &str) -> i64 {
    let mut c = redis.client().unwrap();
    match c.command(&["PUBSUB", "NUMSUB", channel]).unwrap() {
        Resp::Array(Some(v)) => match v.get(1) {
            Some(Resp::Integer(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

fn subscribed_within(redis: &RedisServer, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_for(limit, || {
        (numsub(redis, "dialer:local:cmd") == 1).then(|| start.elapsed())
    })
}

/// A SIPp registrar running `scenario_name` and a dialerd registering with
/// it, the control channel on (`redis`, 1 s keepalive).
fn registering_with_redis(redis: &RedisServer, scenario_name: &str) -> (SippRun, Registering) {
    let server = registrar(scenario_name, SippTransport::Udp, "60");
    let env = redis_env(redis, "1");
    let r = dialerd_registering(&uri(&server), "udp", "", &env_refs(&env));
    (server, r)
}

#[test]
fn events_arrive_in_order_and_the_status_key_expires_after_a_kill() {
    let redis = RedisServer::start(&[]);
    let mut events = Listener::new(&redis, "dialer:events");
    let (_server, r) = registering_with_redis(&redis, "registrar_auth.xml");
    // daemon.started and the registration's events come from different
    // tasks: both are awaited, in whichever order they were published.
    let (mut registered, mut started) = (false, false);
    let seen = events.until(Duration::from_secs(10), |e| {
        registered |= e["type"] == "registration.state" && e["state"] == "registered";
        started |= e["type"] == "daemon.started";
        registered && started
    });
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free, in order: {seen:#?}"
    );
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["type"].as_str().unwrap(),
                e["state"]
                    .as_str()
                    .map(|s| format!(":{s}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    // Every transition is an event, however brief: the registration's
    // states arrive one by one and in order.
    let states: Vec<&str> = kinds
        .iter()
        .filter_map(|k| k.strip_prefix("registration.state:"))
        .collect();
    assert_eq!(states, ["unregistered", "registering", "registered"]);
    let registered = seen
        .iter()
        .find(|e| e["type"] == "registration.state" && e["state"] == "registered")
        .unwrap();
    assert_eq!(
        registered["code"], 200,
        "the status behind it: {registered}"
    );
    assert!(registered["boot"].as_str().is_some_and(|b| !b.is_empty()));
    for expected in ["daemon.started", "channel.connected"] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|e| e["instance"] == "local" && e["v"] == 1 && e["ts_ms"].as_u64().is_some())
    );
    let mut c = redis.client().unwrap();
    let status = wait_for(Duration::from_secs(3), || {
        let text = c.command(&["GET", "dialer:sip_status"]).ok()?.text()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["accounts"][0]["state"] == "registered").then_some(v)
    });
    assert!(
        status.is_some(),
        "dialer:sip_status shows the account registered"
    );
    assert!(
        c.command(&["GET", "dialer:local:status"])
            .unwrap()
            .text()
            .is_some()
    );
    r.daemon.signal(libc::SIGKILL);
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(5), || {
        (c.command(&["EXISTS", "dialer:sip_status"]).ok()? == Resp::Integer(0))
            .then(|| killed.elapsed())
    });
    let gone = gone.expect("the status key expires");
    assert!(
        gone <= Duration::from_millis(3200),
        "gone {gone:?} after the kill (three 1 s heartbeats)"
    );
}

#[test]
fn ctl_status_and_unregister() {
    let redis = RedisServer::start(&[]);
    let mut events = Listener::new(&redis, "dialer:events");
    let (server, r) = registering_with_redis(&redis, "registrar_unregister.xml");
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    wait_for(Duration::from_secs(5), || {
        (numsub(&redis, "dialer:local:cmd") == 1).then_some(())
    });
    let (ok, status) = ctl(&redis, &["status"]);
    assert!(ok, "{status}");
    assert_eq!(status["result"]["accounts"][0]["state"], "registered");
    assert_eq!(status["result"]["redis"]["connected"], true);
    let (ok, result) = ctl(&redis, &["unregister", "acct"]);
    assert!(ok, "{result}");
    assert_eq!(result["result"]["state"], "unregistering");
    let sipp = server.wait();
    assert_eq!(sipp.exit_code, Some(0), "{}", sipp.errors);
    let log = logged(&sipp.messages);
    assert!(
        log.iter()
            .any(|m| m.received && m.header("Expires") == Some("0")),
        "SIPp saw the unREGISTER"
    );
    events.until(Duration::from_secs(5), |e| {
        e["type"] == "registration.state" && e["state"] == "unregistered"
    });
    let (ok, error) = ctl(&redis, &["unregister", "nobody"]);
    assert!(!ok);
    assert_eq!(error["error"]["code"], "unknown_account");
}

#[test]
fn a_killed_subscription_and_a_restart_are_recovered_within_five_seconds() {
    let mut redis = RedisServer::start(&[]);
    let (_server, r) = registering_with_redis(&redis, "registrar_auth.xml");
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    subscribed_within(&redis, Duration::from_secs(5)).expect("subscribed");
    let mut c = redis.client().unwrap();
    assert!(
        matches!(c.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap(), Resp::Integer(n) if n >= 1)
    );
    let again = subscribed_within(&redis, Duration::from_secs(5))
        .expect("subscribed again after CLIENT KILL");
    assert!(again < Duration::from_secs(5));
    let (ok, pong) = ctl(&redis, &["ping"]);
    assert!(ok, "{pong}");
    redis.restart(&[]);
    let again = subscribed_within(&redis, Duration::from_secs(5))
        .expect("subscribed again after a restart");
    assert!(again < Duration::from_secs(5));
    let (ok, pong) = ctl(&redis, &["ping"]);
    assert!(ok && pong["result"]["pong"] == true, "{pong}");
    assert_eq!(
        account(&r.daemon)["state"],
        "registered",
        "registration unaffected"
    );
    let status = http::get(r.daemon.http(), "/status").unwrap().json();
    assert!(
        status["redis"]["reconnects"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

pub(crate) fn reconnects(d: &Daemon) -> u64 {
    http::get(d.http(), "/status").unwrap().json()["redis"]["reconnects"]
        .as_u64()
        .unwrap_or(0)
}

pub(crate) fn connected(d: &Daemon) -> bool {
    http::get(d.http(), "/status").unwrap().json()["redis"]["connected"] == true
}

#[test]
fn an_idle_timeout_is_detected_and_recovered() {
    // keepalive 3 s against a server that closes connections idle for 2 s:
    // the publishing connection is closed between heartbeats, which the next
    // heartbeat notices.
    let redis = RedisServer::start(&["--timeout", "2"]);
    let env = redis_env(&redis, "3");
    let d = Daemon::start(&["--profile", "local"], &env_refs(&env));
    wait_for(Duration::from_secs(5), || connected(&d).then_some(())).expect("connected");
    // Expected within two keepalive intervals; the bound is generous for a
    // loaded 2-core machine.
    let recovered = wait_for(Duration::from_secs(20), || {
        (reconnects(&d) >= 1 && connected(&d)).then_some(())
    });
    assert!(recovered.is_some(), "detected and recovered: {}", d.log());
    let (ok, pong) = ctl(&redis, &["ping"]);
    assert!(ok, "a command after recovery runs: {pong}");
}

#[test]
fn a_half_open_connection_is_detected_and_events_survive_the_outage() {
    let redis = RedisServer::start(&[]);
    let proxy = FreezingProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port())));
    let mut events = Listener::new(&redis, "dialer:events");
    let sip =
        std::net::SocketAddr::from(([127, 0, 0, 1], crate::support::ports::free_udp_tcp_port()));
    let env = vec![
        ("DIALERD__REDIS__ENABLED".to_owned(), "true".to_owned()),
        (
            "DIALERD__REDIS__URL".to_owned(),
            format!("redis://{}", proxy.addr()),
        ),
        ("DIALERD__REDIS__KEEPALIVE_SECS".to_owned(), "1".to_owned()),
        (
            "DIALERD__REDIS__RESPONSE_TIMEOUT_SECS".to_owned(),
            "1".to_owned(),
        ),
        ("DIALERD__CALLS__INBOUND".to_owned(), "answer".to_owned()),
        ("DIALERD__SIP__UDP_LISTEN".to_owned(), sip.to_string()),
    ];
    let _d = Daemon::start(&["--profile", "local"], &env_refs(&env));
    let before = events.until(Duration::from_secs(5), |e| e["type"] == "channel.connected");
    let last_seq = before.last().and_then(|e| e["seq"].as_u64()).unwrap();
    assert_eq!(proxy.accepted(), 3, "writer, subscriber and stream reader");
    proxy.freeze();
    let frozen = Instant::now();
    // Events produced while the path is dead: an inbound call, answered
    // and hung up by its caller.
    let caller =
        crate::support::sipp::Sipp::client(&crate::support::sipp::scenario("uac_call.xml"), sip)
            .key("callee", "1001")
            .timeout(Duration::from_secs(10))
            .spawn()
            .wait();
    assert_eq!(caller.exit_code, Some(0), "{}", caller.errors);
    // An event whose PUBLISH reply was cut off by the freeze is published
    // again after the reconnection, with its seq: a reader drops a seq it
    // has seen (docs/control-channel.md).
    let seen: Vec<Value> = events
        .until(Duration::from_secs(5), |e| {
            e["type"] == "channel.connected" && e["seq"].as_u64() > Some(last_seq)
        })
        .into_iter()
        .filter(|e| e["seq"].as_u64() > Some(last_seq))
        .collect();
    let detected = frozen.elapsed();
    assert!(
        detected <= Duration::from_secs(4),
        "recovered {detected:?} after the freeze (1 s keepalive, 1 s reply deadline)"
    );
    let ended: Vec<&Value> = seen.iter().filter(|e| e["type"] == "call.ended").collect();
    assert_eq!(
        ended.len(),
        1,
        "the events produced during the outage arrived: {seen:#?}"
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap: {seqs:?}"
    );
    assert!(proxy.accepted() >= 6, "new connections after the freeze");
    let (ok, pong) = ctl(&redis, &["ping"]);
    assert!(ok, "no command after recovery is lost: {pong}");
}

#[test]
fn malformed_commands_each_get_their_error_and_the_daemon_stays_healthy() {
    let redis = RedisServer::start(&[]);
    let mut events = Listener::new(&redis, "dialer:events");
    let env = redis_env(&redis, "1");
    let d = Daemon::start(&["--profile", "local"], &env_refs(&env));
    events.until(Duration::from_secs(5), |e| e["type"] == "channel.connected");
    let cases: &[(&str, &str)] = &[
        ("", "bad_json"),
        ("{", "bad_json"),
        ("not json", "bad_json"),
        ("[1]", "bad_json"),
        (r#"{"id":"m1","type":"ping"}"#, "bad_version"),
        (r#"{"v":2,"id":"m2","type":"ping"}"#, "bad_version"),
        (r#"{"v":1,"type":"ping"}"#, "missing_field"),
        (r#"{"v":1,"id":3,"type":"ping"}"#, "bad_field"),
        (r#"{"v":1,"id":"bad id","type":"ping"}"#, "bad_field"),
        (r#"{"v":1,"id":"m3"}"#, "missing_field"),
        (r#"{"v":1,"id":"m4","type":7}"#, "bad_field"),
        (r#"{"v":1,"id":"m5","type":"reboot"}"#, "unknown_type"),
        (r#"{"v":1,"id":"m6","type":"ping","x":1}"#, "bad_field"),
        (r#"{"v":1,"id":"m7","type":"ping","args":[]}"#, "bad_field"),
        (
            r#"{"v":1,"id":"m8","type":"status","args":{"all":true}}"#,
            "bad_field",
        ),
        (r#"{"v":1,"id":"m9","type":"unregister"}"#, "missing_field"),
        (
            r#"{"v":1,"id":"m10","type":"unregister","args":{"account":1}}"#,
            "bad_field",
        ),
        (
            r#"{"v":1,"id":"m11","type":"register","args":{"account":"nobody"}}"#,
            "unknown_account",
        ),
        (
            r#"{"v":1,"id":"m12","type":"ping","reply_to":"elsewhere"}"#,
            "bad_field",
        ),
        (
            r#"{"v":1,"id":"m13","type":"originate","args":{"to":"+15550100"}}"#,
            "missing_field",
        ),
        (
            r#"{"v":1,"id":"m14","type":"hangup","args":{"call_id":"c"}}"#,
            "unknown_call",
        ),
        (
            r#"{"v":1,"id":"m15","type":"play","args":{"call_id":"c"}}"#,
            "bad_field",
        ),
    ];
    let mut c = redis.client().unwrap();
    for (payload, _) in cases {
        c.command(&["PUBLISH", "dialer:local:cmd", payload])
            .unwrap();
    }
    let mut results = Vec::new();
    while results.len() < cases.len() {
        let e = events
            .next(Duration::from_secs(5))
            .expect("a result for every command");
        if e["type"] == "command.result" {
            results.push(e);
        }
    }
    // Commands with an id are matched by it (some take a Redis round trip
    // before their answer); those without, in order.
    let mut anonymous = results.iter().filter(|r| r["id"].is_null());
    for (payload, code) in cases {
        let id = serde_json::from_str::<Value>(payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        let result = match &id {
            Some(id) => results.iter().find(|r| r["id"] == id.as_str()),
            None => anonymous.next(),
        }
        .unwrap_or_else(|| panic!("no result for {payload}: {results:#?}"));
        assert_eq!(result["ok"], false, "{payload}: {result}");
        assert_eq!(result["error"]["code"], *code, "{payload}: {result}");
        assert!(!result["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(http::get(d.http(), "/healthz").unwrap().status, 200);
    let (ok, _) = ctl(&redis, &["ping"]);
    assert!(ok, "still serving commands");
}

#[test]
fn a_repeated_command_id_executes_once_and_gets_the_same_result() {
    let redis = RedisServer::start(&[]);
    let mut replies = Listener::new(&redis, "dialer:reply:dedup");
    let (server, r) = registering_with_redis(&redis, "registrar_dedup.xml");
    wait_state(&r.daemon, "registered", Duration::from_secs(10));
    wait_for(Duration::from_secs(5), || {
        (numsub(&redis, "dialer:local:cmd") == 1).then_some(())
    });
    let unregister = r#"{"v":1,"id":"dedup-1","type":"unregister","reply_to":"dialer:reply:dedup","args":{"account":"acct"}}"#;
    let register = r#"{"v":1,"id":"dedup-2","type":"register","reply_to":"dialer:reply:dedup","args":{"account":"acct"}}"#;
    let mut c = redis.client().unwrap();
    c.command(&["PUBLISH", "dialer:local:cmd", unregister])
        .unwrap();
    let first = replies.next(Duration::from_secs(5)).expect("first result");
    wait_state(&r.daemon, "unregistered", Duration::from_secs(5));
    c.command(&["PUBLISH", "dialer:local:cmd", register])
        .unwrap();
    replies
        .next(Duration::from_secs(5))
        .expect("register result");
    wait_state(&r.daemon, "registered", Duration::from_secs(5));
    // The same id again, while registered: executing it would unREGISTER.
    c.command(&["PUBLISH", "dialer:local:cmd", unregister])
        .unwrap();
    let second = replies.next(Duration::from_secs(5)).expect("second result");
    assert_eq!(first["ok"], true);
    assert_eq!(
        (first["ok"].clone(), first["result"].clone()),
        (second["ok"].clone(), second["result"].clone())
    );
    assert_eq!(second["id"], "dedup-1");
    assert_eq!(second["duplicate"], true, "{second}");
    let sipp = server.wait();
    assert_eq!(sipp.exit_code, Some(0), "{}", sipp.errors);
    let log = logged(&sipp.messages);
    let unregisters = log
        .iter()
        .filter(|m| m.received && m.header("Expires") == Some("0"))
        .count();
    assert_eq!(unregisters, 1, "executed once");
    assert_eq!(account(&r.daemon)["state"], "registered");
}

#[test]
fn an_acl_user_and_password_authenticate_and_stay_secret() {
    let redis = RedisServer::start(&[]);
    let mut admin = redis.client().unwrap();
    let setuser = [
        "ACL",
        "SETUSER",
        "dialer",
        "on",
        ">acl-pw-77",
        "~*",
        "&*",
        "+@all",
    ];
    assert_eq!(admin.command(&setuser).unwrap(), Resp::Simple("OK".into()));
    assert_eq!(
        admin
            .command(&["ACL", "SETUSER", "default", "off"])
            .unwrap(),
        Resp::Simple("OK".into())
    );
    let mut env = redis_env(&redis, "1");
    env.push(("DIALERD__REDIS__USERNAME".into(), "dialer".into()));
    env.push(("DIALERD__REDIS__PASSWORD".into(), "acl-pw-77".into()));
    let d = Daemon::start(&["--profile", "local"], &env_refs(&env));
    wait_for(Duration::from_secs(5), || connected(&d).then_some(()))
        .expect("connected as the ACL user");
    let status = http::get(d.http(), "/status").unwrap().body;
    assert!(
        !status.contains("acl-pw-77") && !d.log().contains("acl-pw-77"),
        "the password never shows"
    );
}

#[test]
fn an_answered_inbound_call_publishes_each_transition_with_its_cause() {
    let redis = RedisServer::start(&[]);
    let mut events = Listener::new(&redis, "dialer:events");
    let port = crate::support::ports::free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = redis_env(&redis, "1");
    env.push(("DIALERD__SIP__UDP_LISTEN".into(), listen));
    env.push(("DIALERD__CALLS__INBOUND".into(), "answer".into()));
    let d = Daemon::start(&["--profile", "local"], &env_refs(&env));
    events.until(Duration::from_secs(5), |e| e["type"] == "channel.connected");
    let sipp = crate::support::sipp::Sipp::client(
        &crate::support::sipp::scenario("uac_call.xml"),
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .key("callee", "dialer")
    .spawn()
    .wait();
    assert_eq!(sipp.exit_code, Some(0), "{}\n{}", sipp.errors, d.log());
    let seen = events.until(Duration::from_secs(5), |e| e["type"] == "call.ended");
    let calls: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("call.")))
        .collect();
    let kinds: Vec<&str> = calls.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["call.created", "call.answered", "call.media", "call.ended"],
        "{calls:#?}"
    );
    let ended = calls[3];
    assert_eq!(ended["cause"], "normal");
    assert_eq!(ended["side"], "remote");
    assert_eq!(ended["direction"], "inbound");
    assert!(calls.iter().all(|e| e["call_id"] == calls[0]["call_id"]));
    assert!(
        calls
            .iter()
            .filter(|e| e["type"] != "call.media")
            .all(|e| e["sip_call_id"] == calls[0]["sip_call_id"])
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
