//! Calls driven over Redis against a real redis-server, real SIPp peers
//! and real dialerd processes: originate over pub/sub and over the command
//! streams, idempotency and destination dedup, limits, two instances on one
//! Redis, commands left in a stream while dialerd was down, a consumer that
//! died holding a command, a crash mid-call, malformed commands, and the
//! Python reference client.

use std::net::SocketAddr;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::redis::{RedisServer, Resp, RespClient};
use crate::support::scratch::Scratch;
use crate::support::sipp::{Sipp, SippRun, scenario};
use crate::support::{ports, repo_root, require_program, text, wait_for};

/// A subscriber collecting JSON messages of its channels.
pub(crate) struct Sub {
    client: RespClient,
}

impl Sub {
    pub(crate) fn new(redis: &RedisServer, channels: &[&str]) -> Self {
        let mut client = redis.client().unwrap();
        for channel in channels {
            let ack = client.command(&["SUBSCRIBE", channel]).unwrap();
            assert!(matches!(ack, Resp::Array(Some(_))), "{ack:?}");
        }
        // Short reads, so that waiting honours the callers' limits.
        client.set_read_timeout(Duration::from_millis(200)).unwrap();
        Self { client }
    }

    /// The next message as `(channel, JSON)`, or `None` after `limit`.
    pub(crate) fn next(&mut self, limit: Duration) -> Option<(String, Value)> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match self.client.read() {
                Ok(Resp::Array(Some(parts))) if parts.len() == 3 => {
                    let channel = parts[1].text()?;
                    let body = parts[2].text()?;
                    return Some((channel, serde_json::from_str(&body).ok()?));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Messages until `done` holds for one (inclusive), within `limit`.
    pub(crate) fn until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some((_, v)) = self.next(end.saturating_duration_since(Instant::now())) {
            let stop = done(&v);
            seen.push(v);
            if stop {
                return seen;
            }
        }
        panic!("condition not met within {limit:?}; saw {seen:#?}");
    }

    /// Everything that arrives within `limit`.
    pub(crate) fn drain(&mut self, limit: Duration) -> Vec<(String, Value)> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(m) = self.next(end.saturating_duration_since(Instant::now())) {
            seen.push(m);
        }
        seen
    }
}

/// The SIPp PBX of the quick start: a registrar (digest) that answers the
/// calls placed through it.
pub(crate) fn pbx() -> SippRun {
    Sipp::server(&scenario("quickstart_pbx.xml"))
        .key("expires", "60")
        .calls(100_000)
        .timeout(Duration::from_secs(600))
        .args(&["-deadcall_wait", "0"])
        .spawn()
}

/// A dialerd with the control channel on `redis`, instance `id`, and an
/// account `acct-<id>` registering with `pbx`; `extra` is more TOML.
pub(crate) fn dialerd(
    redis: &RedisServer,
    pbx: SocketAddr,
    id: &str,
    extra: &str,
    dir: &Scratch,
) -> Daemon {
    dialerd_env(redis, pbx, id, extra, dir, &[])
}

/// [`dialerd`] with more environment (e.g. its SIP listener).
pub(crate) fn dialerd_env(
    redis: &RedisServer,
    pbx: SocketAddr,
    id: &str,
    extra: &str,
    dir: &Scratch,
    env: &[(&str, &str)],
) -> Daemon {
    let config = dir.write(
        &format!("{id}.toml"),
        &format!(
            "[instance]\nid = \"{id}\"\n[redis]\nenabled = true\nurl = \"{}\"\nkeepalive_secs = 1\n\
             stream_claim_idle_secs = 2\ncommand_lease_secs = 3\n\
             [[accounts]]\nname = \"acct-{id}\"\nregistrar = \"sip:{pbx}\"\nusername = \"1001\"\n\
             password = \"local-test-only\"\ntransport = \"udp\"\n{extra}",
            redis.url()
        ),
    );
    let mut all = vec![("DIALERD__REDIS__ENABLED", "true")];
    all.extend_from_slice(env);
    let d = Daemon::start(&["--config", config.to_str().unwrap()], &all);
    let ready = wait_for(Duration::from_secs(15), || {
        crate::support::http::get(d.http(), "/readyz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(ready.is_some(), "dialerd {id} not ready:\n{}", d.log());
    d
}

pub(crate) fn command(id: &str, kind: &str, reply_to: Option<&str>, args: Value) -> String {
    let mut c = json!({"v": 1, "id": id, "type": kind, "args": args});
    if let Some(r) = reply_to {
        c["reply_to"] = json!(r);
    }
    c.to_string()
}

pub(crate) fn publish(redis: &RedisServer, channel: &str, payload: &str) {
    let mut c = redis.client().unwrap();
    c.command(&["PUBLISH", channel, payload]).unwrap();
}

fn hgetall(redis: &RedisServer, key: &str) -> serde_json::Map<String, Value> {
    let mut c = redis.client().unwrap();
    let mut out = serde_json::Map::new();
    if let Resp::Array(Some(items)) = c.command(&["HGETALL", key]).unwrap() {
        for kv in items.chunks(2) {
            out.insert(
                kv[0].text().unwrap_or_default(),
                Value::String(kv[1].text().unwrap_or_default()),
            );
        }
    }
    out
}

pub(crate) fn originate_args(account: &str, to: &str, extra: Value) -> Value {
    let mut a = json!({"account": account, "to": to, "max_duration_secs": 1});
    if let (Value::Object(a), Value::Object(e)) = (&mut a, extra) {
        a.extend(e);
    }
    a
}

/// Call events of `call` in `seen`, by type.
fn call_kinds(seen: &[Value], call: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["call_id"] == call && e["type"] != "command.result")
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_originate_places_a_call_with_ordered_events_once_per_id_and_destination() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-originate");
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let to = format!("sip:service@{}", pbx.local_addr());
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:t1"]);
    let cmd = command(
        "job-1",
        "originate",
        Some("dialer:reply:t1"),
        originate_args("acct-a", &to, json!({})),
    );
    publish(&redis, "dialer:a:cmd", &cmd);
    let seen = sub.until(Duration::from_secs(20), |e| {
        e["type"] == "call.ended" && e["call_id"] == "job-1"
    });
    let result = seen
        .iter()
        .find(|e| e["type"] == "command.result")
        .unwrap_or_else(|| panic!("no result: {seen:#?}\n{}", d.log()));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["result"]["call_id"], "job-1");
    assert_eq!(result["result"]["instance"], "a");
    assert!(result.get("seq").is_none(), "results carry no seq");
    let mut kinds = call_kinds(&seen, "job-1");
    let media = kinds.iter().position(|k| k == "call.media");
    assert!(
        media.is_some(),
        "the negotiated media is announced: {kinds:?}"
    );
    kinds.retain(|k| k != "call.media");
    assert_eq!(
        kinds,
        [
            "call.created",
            "call.dialing",
            "call.ringing",
            "call.answered",
            "call.ending",
            "call.ended"
        ],
        "{seen:#?}"
    );
    let events: Vec<&Value> = seen.iter().filter(|e| e.get("seq").is_some()).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {seqs:?}"
    );
    let ended = seen.iter().find(|e| e["type"] == "call.ended").unwrap();
    assert_eq!(ended["cause"], "max_duration");
    assert!(ended["duration_ms"].as_u64().unwrap() >= 900, "{ended}");
    assert!(ended["boot"].as_str().is_some_and(|b| !b.is_empty()));
    let record = hgetall(&redis, "dialer:call:job-1");
    assert_eq!(record["state"], "ended", "{record:?}");
    assert_eq!(record["cause"], "max_duration");
    assert_eq!(record["instance"], "a");

    // The same id again: answered, not dialed again.
    publish(&redis, "dialer:a:cmd", &cmd);
    let again = sub.until(Duration::from_secs(10), |e| e["type"] == "command.result");
    let dup = again.last().unwrap();
    assert_eq!(dup["duplicate"], true, "{dup}");
    assert_eq!(dup["result"]["call_id"], "job-1");
    // A new id to the same destination inside the window: refused.
    let cmd2 = command(
        "job-2",
        "originate",
        Some("dialer:reply:t1"),
        originate_args("acct-a", &to, json!({})),
    );
    publish(&redis, "dialer:a:cmd", &cmd2);
    let refused = sub.until(Duration::from_secs(10), |e| {
        e["type"] == "command.result" && e["id"] == "job-2"
    });
    let r = refused.last().unwrap();
    assert_eq!(r["error"]["code"], "duplicate_destination", "{r}");
    assert_eq!(r["error"]["retryable"], false);
    let later = sub.drain(Duration::from_secs(2));
    assert!(
        later.iter().all(|(_, e)| e["type"] != "call.created"),
        "nothing dialed again: {later:#?}"
    );
    assert!(hgetall(&redis, "dialer:call:job-2").is_empty());
}

#[test]
fn an_account_at_its_call_limit_refuses_with_capacity_counted() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-limits");
    let extra = "max_concurrent_calls = 1\n[limits]\ncalls_per_second = 1000\nmax_concurrent_calls = 10\n\
                 [calls]\ndestination_window_secs = 0\n";
    let d = dialerd(&redis, pbx.local_addr(), "a", extra, &dir);
    let to = format!("sip:service@{}", pbx.local_addr());
    let mut sub = Sub::new(&redis, &["dialer:reply:lim"]);
    let long = originate_args("acct-a", &to, json!({"max_duration_secs": 5}));
    publish(
        &redis,
        "dialer:a:cmd",
        &command("l1", "originate", Some("dialer:reply:lim"), long.clone()),
    );
    let first = sub.until(Duration::from_secs(10), |e| e["id"] == "l1");
    assert_eq!(first.last().unwrap()["ok"], true, "{first:#?}");
    publish(
        &redis,
        "dialer:a:cmd",
        &command("l2", "originate", Some("dialer:reply:lim"), long),
    );
    let second = sub.until(Duration::from_secs(10), |e| e["id"] == "l2");
    let e = &second.last().unwrap()["error"];
    assert_eq!(e["code"], "capacity", "{e}");
    assert_eq!(e["retryable"], true);
    let record = hgetall(&redis, "dialer:call:l2");
    assert_eq!(
        record.get("cause"),
        Some(&json!("not_placed")),
        "{record:?}"
    );
    let metrics = crate::support::http::get(d.http(), "/metrics")
        .unwrap()
        .body;
    assert!(
        metrics.contains("dialerd_calls_refused_total{reason=\"capacity\"} 1"),
        "{metrics}"
    );
}

#[test]
fn an_account_rate_limit_refuses_with_rate_limited() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-rate");
    let extra = "calls_per_second = 1\n[calls]\ndestination_window_secs = 0\n";
    let _d = dialerd(&redis, pbx.local_addr(), "a", extra, &dir);
    let to = format!("sip:service@{}", pbx.local_addr());
    let mut sub = Sub::new(&redis, &["dialer:reply:rate"]);
    for id in ["r1", "r2", "r3"] {
        let c = command(
            id,
            "originate",
            Some("dialer:reply:rate"),
            originate_args("acct-a", &to, json!({})),
        );
        publish(&redis, "dialer:a:cmd", &c);
    }
    let results: Vec<(String, Value)> = sub.drain(Duration::from_secs(4));
    let codes: Vec<String> = results
        .iter()
        .map(|(_, r)| r["error"]["code"].as_str().unwrap_or("ok").to_owned())
        .collect();
    assert_eq!(codes.len(), 3, "{results:#?}");
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");
    assert!(codes.contains(&"ok".to_owned()), "{codes:?}");
}

#[test]
fn two_instances_answer_a_broadcast_once_each_and_only_the_owner_runs_an_account_command() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-two");
    let a = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let b = dialerd(&redis, pbx.local_addr(), "b", "", &dir);
    let mut sub = Sub::new(&redis, &["dialer:reply:two"]);
    publish(
        &redis,
        "dialer:cmd",
        &command("st-1", "status", Some("dialer:reply:two"), json!({})),
    );
    let results = sub.drain(Duration::from_secs(3));
    let mut from: Vec<String> = results
        .iter()
        .map(|(_, r)| r["instance"].as_str().unwrap_or_default().to_owned())
        .collect();
    from.sort();
    assert_eq!(from, ["a", "b"], "{results:#?}\n{}\n{}", a.log(), b.log());
    assert!(results.iter().all(|(_, r)| r["ok"] == true));
    // An account command on the broadcast channel: only b has acct-b.
    publish(
        &redis,
        "dialer:cmd",
        &command(
            "reg-1",
            "register",
            Some("dialer:reply:two"),
            json!({"account": "acct-b"}),
        ),
    );
    let results = sub.drain(Duration::from_secs(3));
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0].1["instance"], "b");
    assert_eq!(results[0].1["ok"], true);
    // An account nobody has: exactly one answer.
    publish(
        &redis,
        "dialer:cmd",
        &command(
            "reg-2",
            "register",
            Some("dialer:reply:two"),
            json!({"account": "nobody"}),
        ),
    );
    let results = sub.drain(Duration::from_secs(3));
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0].1["error"]["code"], "unknown_account");
}

fn xadd(redis: &RedisServer, stream: &str, payload: &str) -> String {
    let mut c = redis.client().unwrap();
    c.command(&["XADD", stream, "*", "cmd", payload])
        .unwrap()
        .text()
        .unwrap_or_default()
}

#[test]
fn stream_commands_added_while_dialerd_is_down_run_once_after_it_starts() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-stream");
    let to = |n: usize| format!("sip:s{n}@{}", pbx.local_addr());
    for n in 0..5 {
        let c = command(
            &format!("q{n}"),
            "originate",
            None,
            originate_args("acct-a", &to(n), json!({})),
        );
        xadd(&redis, "dialer:cmdq", &c);
    }
    // One too old to run: its not_after has passed.
    let mut stale: Value = serde_json::from_str(&command(
        "q-old",
        "originate",
        None,
        originate_args("acct-a", &to(9), json!({})),
    ))
    .unwrap();
    stale["not_after"] = json!(1);
    xadd(&redis, "dialer:a:cmdq", &stale.to_string());
    let mut sub = Sub::new(&redis, &["dialer:events"]);
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let mut ended = std::collections::HashSet::new();
    let seen = sub.until(Duration::from_secs(30), |e| {
        if e["type"] == "call.ended" {
            ended.insert(e["call_id"].as_str().unwrap_or_default().to_owned());
        }
        ended.len() == 5
    });
    for n in 0..5 {
        let id = format!("q{n}");
        let created = seen
            .iter()
            .filter(|e| e["type"] == "call.created" && e["call_id"] == id.as_str())
            .count();
        assert_eq!(created, 1, "{id} placed once: {seen:#?}\n{}", d.log());
    }
    let old = seen
        .iter()
        .find(|e| e["id"] == "q-old")
        .unwrap_or_else(|| panic!("no answer to q-old: {seen:#?}"));
    assert_eq!(old["error"]["code"], "expired");
    assert!(
        hgetall(&redis, "dialer:call:q-old").is_empty(),
        "never placed"
    );
    let mut c = redis.client().unwrap();
    let pending = c.command(&["XPENDING", "dialer:cmdq", "dialerd"]).unwrap();
    match pending {
        Resp::Array(Some(p)) => assert_eq!(p[0], Resp::Integer(0), "all acked: {p:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_held_by_a_dead_consumer_is_claimed_and_run_exactly_once() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-claim");
    let mut c = redis.client().unwrap();
    c.command(&[
        "XGROUP",
        "CREATE",
        "dialer:cmdq",
        "dialerd",
        "0",
        "MKSTREAM",
    ])
    .unwrap();
    let to = format!("sip:claimed@{}", pbx.local_addr());
    xadd(
        &redis,
        "dialer:cmdq",
        &command(
            "held-1",
            "originate",
            None,
            originate_args("acct-a", &to, json!({})),
        ),
    );
    // A consumer reads it and dies before acknowledging it.
    let read = c
        .command(&[
            "XREADGROUP",
            "GROUP",
            "dialerd",
            "dead-pod",
            "COUNT",
            "10",
            "STREAMS",
            "dialer:cmdq",
            ">",
        ])
        .unwrap();
    assert!(matches!(read, Resp::Array(Some(_))), "{read:?}");
    let mut sub = Sub::new(&redis, &["dialer:events"]);
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let seen = sub.until(Duration::from_secs(30), |e| {
        e["type"] == "call.ended" && e["call_id"] == "held-1"
    });
    let results: Vec<&Value> = seen.iter().filter(|e| e["id"] == "held-1").collect();
    assert_eq!(results.len(), 1, "{seen:#?}\n{}", d.log());
    assert_eq!(results[0]["ok"], true);
    assert_eq!(
        call_kinds(&seen, "held-1")
            .iter()
            .filter(|k| *k == "call.created")
            .count(),
        1
    );
    // Nothing runs it again later (the media totals of the ended call may
    // still come).
    let later = sub.drain(Duration::from_secs(4));
    assert!(
        later
            .iter()
            .all(|(_, e)| e["call_id"] != "held-1" || e["type"] == "call.media"),
        "{later:#?}"
    );
}

#[test]
fn a_call_left_by_a_killed_instance_is_closed_with_daemon_restart() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-restart");
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:k"]);
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let to = format!("sip:long@{}", pbx.local_addr());
    let args = originate_args("acct-a", &to, json!({"max_duration_secs": 600}));
    publish(
        &redis,
        "dialer:a:cmd",
        &command("k-1", "originate", Some("dialer:reply:k"), args),
    );
    sub.until(Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "k-1"
    });
    d.signal(9);
    drop(d);
    assert_eq!(hgetall(&redis, "dialer:call:k-1")["state"], "answered");
    let _d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let seen = sub.until(Duration::from_secs(15), |e| {
        e["type"] == "call.ended" && e["call_id"] == "k-1"
    });
    let ended = seen.last().unwrap();
    assert_eq!(ended["cause"], "daemon_restart", "{ended}");
    let record = hgetall(&redis, "dialer:call:k-1");
    assert_eq!(record["state"], "ended");
    assert_eq!(record["cause"], "daemon_restart");
    let mut c = redis.client().unwrap();
    assert_eq!(
        c.command(&["SCARD", "dialer:a:calls"]).unwrap(),
        Resp::Integer(0),
        "no record stays non-final"
    );
}

#[test]
fn every_malformed_command_gets_one_precise_error_on_the_right_channel() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-bad");
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:bad"]);
    let r = "\"reply_to\":\"dialer:reply:bad\"";
    let huge = format!(
        "{{\"v\":1,\"id\":\"big\",\"type\":\"ping\",{r},\"pad\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "dialer:events", "bad_json"),
        (
            format!("{{\"v\":2,\"id\":\"m1\",\"type\":\"ping\",{r}}}"),
            "dialer:reply:bad",
            "bad_version",
        ),
        (
            format!("{{\"v\":1,\"id\":\"m2\",\"type\":\"reboot\",{r}}}"),
            "dialer:reply:bad",
            "unknown_type",
        ),
        (
            format!(
                "{{\"v\":1,\"id\":\"m3\",\"type\":\"originate\",{r},\"args\":{{\"account\":\"acct-a\"}}}}"
            ),
            "dialer:reply:bad",
            "missing_field",
        ),
        (
            format!(
                "{{\"v\":1,\"id\":\"m4\",\"type\":\"originate\",{r},\"args\":{{\"account\":\"acct-a\",\"to\":5}}}}"
            ),
            "dialer:reply:bad",
            "bad_field",
        ),
        (huge, "dialer:events", "too_large"),
        (
            format!(
                "{{\"v\":1,\"id\":\"m6\",\"type\":\"originate\",{r},\"args\":{{\"account\":\"nope\",\"to\":\"sip:x@127.0.0.1\"}}}}"
            ),
            "dialer:reply:bad",
            "unknown_account",
        ),
        (
            format!(
                "{{\"v\":1,\"id\":\"m7\",\"type\":\"hangup\",{r},\"args\":{{\"call_id\":\"no-such-call\"}}}}"
            ),
            "dialer:reply:bad",
            "unknown_call",
        ),
        (
            format!(
                "{{\"v\":1,\"id\":\"m8\",\"type\":\"transfer\",{r},\"args\":{{\"call_id\":\"c\",\"to\":\"sip:x@y\"}}}}"
            ),
            "dialer:reply:bad",
            "unknown_call",
        ),
    ];
    for (payload, channel, code) in &cases {
        publish(&redis, "dialer:a:cmd", payload);
        let got: Vec<(String, Value)> = sub
            .drain(Duration::from_millis(1500))
            .into_iter()
            .filter(|(_, e)| e["type"] == "command.result")
            .collect();
        assert_eq!(got.len(), 1, "{code}: exactly one result: {got:#?}");
        assert_eq!(got[0].0, *channel, "{code}: {got:#?}");
        assert_eq!(got[0].1["error"]["code"], *code, "{got:#?}");
        assert!(
            got[0].1["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let health = crate::support::http::get(d.http(), "/healthz").unwrap();
    assert_eq!(health.status, 200, "still serving: {}", health.body);
    publish(
        &redis,
        "dialer:a:cmd",
        &command("ok-after", "ping", Some("dialer:reply:bad"), json!({})),
    );
    let pong = sub.until(Duration::from_secs(5), |e| e["id"] == "ok-after");
    assert_eq!(pong.last().unwrap()["result"]["pong"], true);
}

#[test]
fn the_python_reference_client_follows_a_call_and_resumes_after_a_disconnect() {
    require_program("python3", "python3");
    let probe = Process::new("python3")
        .args(["-c", "import redis"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "python3-redis is required (scripts/setup.sh installs it): {}",
        text(&probe.stderr)
    );
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-python");
    let _d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let to = format!("sip:py@{}", pbx.local_addr());
    let out = Process::new("python3")
        .arg(repo_root().join("examples/python/originate_and_follow.py"))
        .args([
            "--url",
            &redis.url(),
            "--account",
            "acct-a",
            "--to",
            &to,
            "--instance",
            "a",
        ])
        .args([
            "--max-duration-secs",
            "5",
            "--disconnect-after",
            "2",
            "--disconnect-secs",
            "30",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["resumed"], true, "{summary}");
    assert_eq!(summary["gaps"], json!([]), "{summary}");
    let events = summary["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap(), "call.created", "{summary}");
    assert_eq!(events.last().unwrap(), "call.ended", "{summary}");
    assert!(events.contains(&json!("call.answered")), "{summary}");
    assert_eq!(summary["record"]["state"], "ended");
}

/// The call id of the first `call.created` among `seen`.
pub(crate) fn created_call(seen: &[Value]) -> String {
    seen.iter()
        .find(|e| e["type"] == "call.created")
        .and_then(|e| e["call_id"].as_str())
        .unwrap_or_else(|| panic!("no call.created: {seen:#?}"))
        .to_owned()
}

/// A dialerd that rings inbound calls (policy `ring`) on a known SIP port.
fn ringing_dialerd(redis: &RedisServer, pbx: SocketAddr, dir: &Scratch) -> (Daemon, SocketAddr) {
    dialerd_on_port(redis, pbx, dir, "[calls]\ninbound = \"ring\"\n")
}

/// Instance `a` ([`dialerd`]) with `extra` TOML, its SIP listener on a
/// known port.
pub(crate) fn dialerd_on_port(
    redis: &RedisServer,
    pbx: SocketAddr,
    dir: &Scratch,
    extra: &str,
) -> (Daemon, SocketAddr) {
    let port = ports::free_udp_tcp_port();
    let sip = SocketAddr::from(([127, 0, 0, 1], port));
    let listen = sip.to_string();
    let d = dialerd_env(
        redis,
        pbx,
        "a",
        extra,
        dir,
        &[("DIALERD__SIP__UDP_LISTEN", &listen)],
    );
    (d, sip)
}

#[test]
fn an_inbound_call_is_answered_by_command_and_dtmf_goes_both_ways() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-answer");
    let (d, sip) = ringing_dialerd(&redis, pbx.local_addr(), &dir);
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:ans"]);
    let caller = Sipp::client(&scenario("uac_call_dtmf.xml"), sip)
        .key("callee", "1001")
        .timeout(Duration::from_secs(30))
        .spawn();
    let ringing = sub.until(Duration::from_secs(10), |e| e["type"] == "call.ringing");
    let call = created_call(&ringing);
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "ans-1",
            "answer",
            Some("dialer:reply:ans"),
            json!({"call_id": call}),
        ),
    );
    // The result and the call.answered event come in either order.
    let answered = sub.until(Duration::from_secs(10), |e| e["id"] == "ans-1");
    let result = answered.last().unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["result"]["instance"], "a");
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "dtmf-1",
            "dtmf",
            Some("dialer:reply:ans"),
            json!({"call_id": call, "digits": "12"}),
        ),
    );
    let sipp = caller.wait();
    assert_eq!(
        sipp.exit_code,
        Some(0),
        "{}\n{}\n{}",
        sipp.errors,
        sipp.messages,
        d.log()
    );
    let seen = sub.until(Duration::from_secs(15), |e| e["type"] == "call.ended");
    let infos: Vec<&str> = sipp
        .messages
        .split("INFO sip:")
        .skip(1)
        .filter_map(|m| m.split("Signal=").nth(1).and_then(|s| s.get(..1)))
        .collect();
    // dialerd's two INFOs, in order, then SIPp's own.
    assert_eq!(infos, ["1", "2", "5"], "{}", sipp.messages);
    let dtmf = seen
        .iter()
        .find(|e| e["type"] == "call.dtmf")
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert_eq!(
        (dtmf["call_id"].as_str(), dtmf["digit"].as_str()),
        (Some(call.as_str()), Some("5"))
    );
    let ended = seen.last().unwrap();
    assert_eq!(
        (ended["cause"].as_str(), ended["side"].as_str()),
        (Some("normal"), Some("remote"))
    );
}

#[test]
fn a_ringing_inbound_call_is_rejected_by_command_with_its_code() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-reject");
    let (d, sip) = ringing_dialerd(&redis, pbx.local_addr(), &dir);
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:rej"]);
    let caller = Sipp::client(&scenario("uac_ring_rejected.xml"), sip)
        .key("callee", "1001")
        .spawn();
    let ringing = sub.until(Duration::from_secs(10), |e| e["type"] == "call.ringing");
    let call = created_call(&ringing);
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "rej-1",
            "reject",
            Some("dialer:reply:rej"),
            json!({"call_id": call, "code": 486}),
        ),
    );
    let seen = sub.until(Duration::from_secs(10), |e| e["type"] == "call.ended");
    let ended = seen.last().unwrap();
    assert_eq!(
        (ended["cause"].as_str(), ended["code"].as_u64()),
        (Some("rejected"), Some(486)),
        "{seen:#?}"
    );
    let sipp = caller.wait();
    assert_eq!(sipp.exit_code, Some(0), "{}\n{}", sipp.errors, d.log());
    // The call has ended: a second command on it says so.
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "rej-2",
            "hangup",
            Some("dialer:reply:rej"),
            json!({"call_id": call}),
        ),
    );
    let again = sub.until(Duration::from_secs(5), |e| e["id"] == "rej-2");
    assert_eq!(again.last().unwrap()["error"]["code"], "call_ended");
}

#[test]
fn outbound_calls_are_bridged_and_hung_up_by_command() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-bridge");
    let d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let mut sub = Sub::new(&redis, &["dialer:events", "dialer:reply:br"]);
    for (id, user) in [("leg-a", "alice"), ("leg-b", "bob")] {
        let to = format!("sip:{user}@{}", pbx.local_addr());
        let args = originate_args("acct-a", &to, json!({"max_duration_secs": 600}));
        publish(
            &redis,
            "dialer:a:cmd",
            &command(id, "originate", Some("dialer:reply:br"), args),
        );
    }
    let mut answered = 0;
    sub.until(Duration::from_secs(15), |e| {
        answered += usize::from(e["type"] == "call.answered");
        answered == 2
    });
    let args = json!({"call_id": "leg-a", "other_call_id": "leg-b"});
    publish(
        &redis,
        "dialer:a:cmd",
        &command("br-1", "bridge", Some("dialer:reply:br"), args),
    );
    let mut bridged = Vec::new();
    let seen = sub.until(Duration::from_secs(10), |e| {
        if e["type"] == "call.bridged" {
            bridged.push(e.clone());
        }
        bridged.len() == 2
    });
    let result = seen
        .iter()
        .find(|e| e["id"] == "br-1")
        .unwrap_or_else(|| panic!("{seen:#?}\n{}", d.log()));
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        bridged
            .iter()
            .any(|e| e["call_id"] == "leg-a" && e["other_call_id"] == "leg-b"),
        "{bridged:#?}"
    );
    // Hanging up one leg ends the other.
    publish(
        &redis,
        "dialer:a:cmd",
        &command(
            "hu-1",
            "hangup",
            Some("dialer:reply:br"),
            json!({"call_id": "leg-a"}),
        ),
    );
    let mut ended = Vec::new();
    sub.until(Duration::from_secs(10), |e| {
        if e["type"] == "call.ended" {
            ended.push(e.clone());
        }
        ended.len() == 2
    });
    let cause = |id: &str| {
        ended
            .iter()
            .find(|e| e["call_id"] == id)
            .map(|e| e["cause"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(cause("leg-a").as_deref(), Some("normal"), "{ended:#?}");
    assert_eq!(cause("leg-b").as_deref(), Some("bridge_peer"), "{ended:#?}");
}

/// Every entry of the events stream, parsed.
fn events_stream(redis: &RedisServer) -> Vec<Value> {
    let mut c = redis.client().unwrap();
    let Resp::Array(Some(entries)) = c
        .command(&["XRANGE", "dialer:events:stream", "-", "+"])
        .unwrap()
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Resp::Array(Some(parts)) => match parts.get(1) {
                Some(Resp::Array(Some(fields))) => fields.get(1)?.text(),
                _ => None,
            },
            _ => None,
        })
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

#[test]
fn a_burst_of_stream_originates_survives_a_kill_9_and_each_is_dialed_once() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-kill");
    let extra = "[limits]\ncalls_per_second = 1000\nmax_concurrent_calls = 500\n";
    let d = dialerd(&redis, pbx.local_addr(), "a", extra, &dir);
    let mut sub = Sub::new(&redis, &["dialer:events"]);
    let ids: Vec<String> = (0..100).map(|n| format!("burst-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let to = format!("sip:b{n}@{}", pbx.local_addr());
        xadd(
            &redis,
            "dialer:cmdq",
            &command(
                id,
                "originate",
                None,
                originate_args("acct-a", &to, json!({})),
            ),
        );
    }
    // Killed as soon as some calls are up, while the rest are being read,
    // claimed, recorded or dialed.
    let mut created = 0;
    sub.until(Duration::from_secs(15), |e| {
        created += usize::from(e["type"] == "call.created");
        created >= 8
    });
    d.signal(9);
    drop(d);
    let _d = dialerd(&redis, pbx.local_addr(), "a", extra, &dir);
    let finished = wait_for(Duration::from_secs(60), || {
        let events = events_stream(&redis);
        let answered: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "command.result")
            .filter_map(|e| e["id"].as_str())
            .collect();
        ids.iter()
            .all(|id| answered.contains(id.as_str()))
            .then_some(events)
    });
    let events = finished
        .unwrap_or_else(|| panic!("not every command answered: {:#?}", events_stream(&redis)));
    for id in &ids {
        let results: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "command.result" && e["id"] == id.as_str())
            .collect();
        assert!(
            results.iter().all(|r| r["ok"] == true),
            "{id}: {results:#?}"
        );
        // Events announced before the kill may be lost with the process:
        // a call announced is announced once.
        let announced = events
            .iter()
            .filter(|e| e["type"] == "call.created" && e["call_id"] == id.as_str())
            .count();
        assert!(announced <= 1, "{id} announced {announced} times");
    }
    let boots: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "command.result")
        .filter_map(|e| e["boot"].as_str())
        .collect();
    assert_eq!(
        boots.len(),
        2,
        "answered by both runs: the kill was mid-burst"
    );
    let all_ended = wait_for(Duration::from_secs(20), || {
        ids.iter()
            .all(|id| {
                hgetall(&redis, &format!("dialer:call:{id}")).get("state") == Some(&json!("ended"))
            })
            .then_some(())
    });
    let open: Vec<_> = ids
        .iter()
        .map(|id| (id, hgetall(&redis, &format!("dialer:call:{id}"))))
        .filter(|(_, r)| r.get("state") != Some(&json!("ended")))
        .collect();
    assert!(
        all_ended.is_some(),
        "every record ends (max_duration or daemon_restart): {open:#?}"
    );
    let mut c = redis.client().unwrap();
    match c.command(&["XPENDING", "dialer:cmdq", "dialerd"]).unwrap() {
        Resp::Array(Some(p)) => assert_eq!(p[0], Resp::Integer(0), "all acked: {p:?}"),
        other => panic!("{other:?}"),
    }
    // What the PBX saw: at most one call (Call-ID) per destination, so no
    // command was dialed twice across the kill.
    let seen = crate::support::sipp::logged(&pbx.stop().messages);
    let mut calls: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for m in seen
        .iter()
        .filter(|m| m.received && m.first_line().starts_with("INVITE sip:b"))
    {
        let user = m
            .first_line()
            .trim_start_matches("INVITE sip:")
            .split('@')
            .next()
            .unwrap_or_default();
        let call_id = m.header("Call-ID").unwrap_or_default();
        calls
            .entry(user.to_owned())
            .or_default()
            .insert(call_id.to_owned());
    }
    assert!(calls.len() >= 8, "calls reached the PBX: {}", calls.len());
    for (user, ids) in &calls {
        assert_eq!(ids.len(), 1, "{user} dialed once: {ids:?}");
    }
}

#[test]
fn a_clean_stop_removes_the_instance_keys_and_says_so() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("cc-stop");
    let mut d = dialerd(&redis, pbx.local_addr(), "a", "", &dir);
    let mut sub = Sub::new(&redis, &["dialer:events"]);
    let mut c = redis.client().unwrap();
    let keys = [
        "dialer:a:status",
        "dialer:sip_status",
        "dialer:account:acct-a",
    ];
    let written = wait_for(Duration::from_secs(5), || {
        keys.iter()
            .all(|k| c.command(&["EXISTS", k]).ok() == Some(Resp::Integer(1)))
            .then_some(())
    });
    assert!(
        written.is_some(),
        "status, last status and account owner keys written"
    );
    d.signal(libc::SIGTERM);
    let exited = d.wait_exit(Duration::from_secs(20));
    assert!(exited.is_some(), "stopped: {}", d.log());
    let seen = sub.until(Duration::from_secs(5), |e| e["type"] == "daemon.stopping");
    assert!(!seen.is_empty());
    for key in keys {
        assert_eq!(
            c.command(&["EXISTS", key]).unwrap(),
            Resp::Integer(0),
            "{key} removed on a clean stop"
        );
    }
}
