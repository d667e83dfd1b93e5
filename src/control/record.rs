//! Call records (`<p>:call:<id>` hashes) and the fields of call events,
//! derived from the SIP core's transitions. Pure functions.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::command::OriginateArgs;
use crate::call::{CallDirection, CallEvent};

fn direction(d: CallDirection) -> &'static str {
    match d {
        CallDirection::Outbound => "outbound",
        CallDirection::Inbound => "inbound",
    }
}

/// The fields of a `call.*` event stamped `at_ms` of a call created at
/// `created` (Unix ms).
pub fn event_fields(c: &CallEvent, at_ms: u64, created: u64) -> Value {
    let mut f = json!({
        "call_id": &*c.name, "sip_call_id": c.sip_call_id, "direction": direction(c.direction),
        "account": c.account, "from": &*c.from, "to": &*c.to, "code": c.code,
        "created_ms": created, "elapsed_ms": c.elapsed_ms,
    });
    if let Value::Object(m) = &mut f {
        if let Some(other) = &c.other {
            m.insert("other_call_id".into(), Value::String(other.to_string()));
        }
        if let Some(e) = c.ended {
            let answered = c.answered_ms.map(|a| created + a);
            m.insert("cause".into(), Value::String(e.cause.label().into()));
            if let Some(d) = c.disposition {
                m.insert("disposition".into(), Value::String(d.label().into()));
            }
            m.insert("side".into(), Value::String(e.side.label().into()));
            m.insert(
                "answered_ms".into(),
                answered.map_or(Value::Null, Value::from),
            );
            m.insert("ended_ms".into(), Value::from(at_ms));
            let duration = answered.map_or(0, |a| at_ms.saturating_sub(a));
            m.insert("duration_ms".into(), Value::from(duration));
        }
    }
    f
}

/// The record fields written for a transition.
pub fn of_event(
    c: &CallEvent,
    at_ms: u64,
    created: u64,
    instance: &str,
    boot: &str,
) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("call_id", c.name.to_string()),
        ("instance", instance.to_owned()),
        ("boot", boot.to_owned()),
        ("direction", direction(c.direction).to_owned()),
        ("account", c.account.clone().unwrap_or_default()),
        ("from", c.from.to_string()),
        ("to", c.to.to_string()),
        ("sip_call_id", c.sip_call_id.clone()),
        ("state", c.state.label().to_owned()),
        ("created_ms", created.to_string()),
        ("updated_ms", at_ms.to_string()),
    ];
    if let Some(code) = c.code {
        f.push(("code", code.to_string()));
    }
    if let Some(a) = c.answered_ms {
        f.push(("answered_ms", (created + a).to_string()));
    }
    if let Some(other) = &c.other {
        f.push(("other_call_id", other.to_string()));
    }
    if let Some(e) = c.ended {
        let duration = c
            .answered_ms
            .map_or(0, |a| at_ms.saturating_sub(created + a));
        f.push(("cause", e.cause.label().to_owned()));
        if let Some(d) = c.disposition {
            f.push(("disposition", d.label().to_owned()));
        }
        f.push(("side", e.side.label().to_owned()));
        f.push(("ended_ms", at_ms.to_string()));
        f.push(("duration_ms", duration.to_string()));
    }
    f
}

/// The record of an originate before its INVITE leaves.
pub fn created(
    call_id: &str,
    command_id: &str,
    o: &OriginateArgs,
    instance: &str,
    boot: &str,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("call_id", call_id.to_owned()),
        ("instance", instance.to_owned()),
        ("boot", boot.to_owned()),
        ("command_id", command_id.to_owned()),
        ("direction", "outbound".to_owned()),
        ("account", o.account.clone()),
        ("to", o.to.clone()),
        ("state", "created".to_owned()),
        ("created_ms", now_ms.to_string()),
        ("updated_ms", now_ms.to_string()),
    ]
}

/// The record of an originate the SIP core refused.
pub fn not_placed(now_ms: u64, why: &str) -> Vec<(&'static str, String)> {
    vec![
        ("state", "ended".to_owned()),
        ("cause", "not_placed".to_owned()),
        ("side", "local".to_owned()),
        ("reason", why.to_owned()),
        ("ended_ms", now_ms.to_string()),
        ("updated_ms", now_ms.to_string()),
        ("duration_ms", "0".to_owned()),
    ]
}

/// The fields that close a record left non-final by a previous run.
pub fn restart_closed(
    fields: &HashMap<String, String>,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    let duration = fields
        .get("answered_ms")
        .and_then(|a| a.parse::<u64>().ok())
        .map_or(0, |a| now_ms.saturating_sub(a));
    vec![
        ("state", "ended".to_owned()),
        ("cause", "daemon_restart".to_owned()),
        ("side", "local".to_owned()),
        ("ended_ms", now_ms.to_string()),
        ("updated_ms", now_ms.to_string()),
        ("duration_ms", duration.to_string()),
    ]
}

/// The `call.ended` event for a record closed after a restart.
pub fn restart_event(call: &str, fields: &HashMap<String, String>, now_ms: u64) -> Value {
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    let text = |k: &str| fields.get(k).cloned().map_or(Value::Null, Value::String);
    let created = num("created_ms");
    let answered = num("answered_ms");
    json!({
        "call_id": call, "sip_call_id": text("sip_call_id"), "direction": text("direction"),
        "account": text("account"), "from": text("from"), "to": text("to"), "code": Value::Null,
        "created_ms": created, "elapsed_ms": created.map(|c| now_ms.saturating_sub(c)),
        "cause": "daemon_restart", "side": "local", "answered_ms": answered, "ended_ms": now_ms,
        "duration_ms": answered.map_or(0, |a| now_ms.saturating_sub(a)),
        "previous_boot": text("boot"),
    })
}

/// A record as JSON: numbers for the `_ms` fields and `code`.
pub fn to_json(fields: &HashMap<String, String>) -> Value {
    let mut m = Map::new();
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort();
    for k in keys {
        let v = &fields[k];
        let numeric = k.ends_with("_ms") || k == "code";
        let value = match v.parse::<u64>() {
            Ok(n) if numeric => Value::from(n),
            _ => Value::String(v.clone()),
        };
        m.insert(k.clone(), value);
    }
    Value::Object(m)
}
