//! The campaign gate against a real redis-server, a real dialerd and a
//! SIPp PBX: an originate whose campaign flag is set, or unreadable, is
//! refused `campaign_gated` and never reaches the PBX; once the flag is
//! deleted the call is placed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::call_control::{Sub, command, dialerd_env, originate_args, pbx, publish};
use crate::support::redis::{RedisServer, Resp};
use crate::support::scratch::Scratch;
use crate::support::sipp::logged;

const GATE: &str = "dialer:campaign:c1:gated";
const REPLY: &str = "dialer:reply:campaign";

/// Runs one Redis command from the test's side.
fn redis_cmd(redis: &RedisServer, args: &[&str]) -> Resp {
    redis.client().unwrap().command(args).unwrap()
}

/// Publishes an originate of campaign `c1` to `sip:<user>@<pbx>` with id
/// `id` and returns its result.
fn originate(redis: &RedisServer, sub: &mut Sub, id: &str, to: &str) -> Value {
    let args = originate_args("acct-a", to, json!({"campaign": "c1"}));
    publish(
        redis,
        "dialer:a:cmd",
        &command(id, "originate", Some(REPLY), args),
    );
    let seen = sub.until(Duration::from_secs(30), |e| {
        e["type"] == "command.result" && e["id"] == id
    });
    seen.last().unwrap().clone()
}

#[test]
fn campaign_gate_set_or_unreadable_refuses_the_originate_and_open_places_it() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("campaign-gate");
    // An RTP block of this test's own, away from the default range.
    let d = dialerd_env(
        &redis,
        pbx.local_addr(),
        "a",
        "",
        &dir,
        &[
            ("DIALERD__MEDIA__RTP_PORT_RANGE__START", "24400"),
            ("DIALERD__MEDIA__RTP_PORT_RANGE__END", "24499"),
        ],
    );
    let host = pbx.local_addr();
    let mut sub = Sub::new(&redis, &["dialer:events", REPLY]);

    // Gate closed: refused, nothing recorded.
    assert_eq!(
        redis_cmd(&redis, &["SET", GATE, "1"]),
        Resp::Simple("OK".into())
    );
    let gated = originate(&redis, &mut sub, "g1", &format!("sip:gated@{host}"));
    assert_eq!(gated["ok"], false, "{gated}\n{}", d.log());
    assert_eq!(gated["error"]["code"], "campaign_gated", "{gated}");
    assert_eq!(gated["error"]["retryable"], false);
    let message = gated["error"]["message"].as_str().unwrap();
    assert!(message.contains(GATE), "{message}");

    // The flag's key holds a hash: GET fails (WRONGTYPE), refused anyway.
    redis_cmd(&redis, &["DEL", GATE]);
    assert_eq!(
        redis_cmd(&redis, &["HSET", GATE, "a", "b"]),
        Resp::Integer(1)
    );
    let unreadable = originate(&redis, &mut sub, "g2", &format!("sip:wrongtype@{host}"));
    assert_eq!(
        unreadable["error"]["code"], "campaign_gated",
        "{unreadable}"
    );
    let message = unreadable["error"]["message"].as_str().unwrap();
    assert!(message.contains("fail closed"), "{message}");

    // Gate open: placed, and the call runs to its end (max_duration 1 s).
    redis_cmd(&redis, &["DEL", GATE]);
    let open = originate(&redis, &mut sub, "g3", &format!("sip:open@{host}"));
    assert_eq!(open["ok"], true, "{open}\n{}", d.log());
    assert_eq!(open["result"]["call_id"], "g3");
    let seen = sub.until(Duration::from_secs(30), |e| {
        e["type"] == "call.ended" && e["call_id"] == "g3"
    });
    assert!(
        seen.iter()
            .all(|e| e["call_id"] != "g1" && e["call_id"] != "g2"),
        "refused originates announce no call: {seen:#?}"
    );
    for id in ["g1", "g2"] {
        assert_eq!(
            redis_cmd(&redis, &["EXISTS", &format!("dialer:call:{id}")]),
            Resp::Integer(0),
            "{id} has no record"
        );
    }
    for to in ["gated", "wrongtype"] {
        assert_eq!(
            redis_cmd(&redis, &["EXISTS", &format!("dialer:dest:sip:{to}@{host}")]),
            Resp::Integer(0),
            "{to}: no destination key"
        );
    }

    // What the PBX saw: the open campaign's INVITE only.
    let invites: Vec<String> = logged(&pbx.stop().messages)
        .iter()
        .filter(|m| m.received && m.first_line().starts_with("INVITE "))
        .map(|m| m.first_line().to_owned())
        .collect();
    assert!(
        invites.iter().any(|l| l.starts_with("INVITE sip:open@")),
        "the open campaign's call reached the PBX: {invites:?}"
    );
    assert!(
        invites.iter().all(|l| l.starts_with("INVITE sip:open@")),
        "no INVITE for a gated campaign: {invites:?}"
    );
}
