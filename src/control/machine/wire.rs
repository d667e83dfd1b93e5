//! Commands and results as JSON: errors of a command, stored results read
//! back, and a command written again to forward it.

use serde_json::{Value, json};

use crate::control::command::{Command, CommandError, CommandKind, ErrorCode};

pub(super) fn error_of(command: &Command, code: ErrorCode, message: &str) -> CommandError {
    CommandError {
        code,
        message: message.to_owned(),
        id: Some(command.id.clone()),
        command: Some(command.kind.name().to_owned()),
        reply_to: command.reply_to.clone(),
    }
}

/// A stand-in command for a parse error being claimed.
pub(super) fn placeholder(e: &CommandError) -> Command {
    Command {
        id: e.id.clone().unwrap_or_default(),
        reply_to: e.reply_to.clone(),
        not_after: None,
        kind: CommandKind::Ping,
    }
}

/// The result stored under a command id.
pub(super) fn stored_result(command: &Command, stored: &str) -> Result<Value, CommandError> {
    let v: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    let error = v.get("error");
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    let code = field("code")
        .and_then(ErrorCode::from_code)
        .unwrap_or(ErrorCode::Internal);
    Err(error_of(
        command,
        code,
        field("message").unwrap_or("the stored result is unreadable"),
    ))
}

/// The command as JSON again (to forward it to another instance's stream).
pub(super) fn envelope(command: &Command) -> Value {
    let args = match &command.kind {
        CommandKind::Register { account } | CommandKind::Unregister { account } => {
            json!({"account": account})
        }
        CommandKind::Originate(o) => {
            let mut a = json!({"account": o.account, "to": o.to, "force": o.force});
            let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
            if let Value::Object(m) = &mut a {
                for (k, v) in [
                    ("from", opt(&o.from)),
                    ("display", opt(&o.display)),
                    ("call_id", opt(&o.call_id)),
                    ("bridge_to", opt(&o.bridge_to)),
                    ("srtp", opt(&o.srtp)),
                    ("campaign", opt(&o.campaign)),
                    ("safe_harbor", opt(&o.safe_harbor)),
                    ("abandon_ms", o.abandon_ms.map_or(Value::Null, Value::from)),
                    (
                        "amd",
                        o.amd
                            .as_ref()
                            .and_then(|a| serde_json::to_value(a).ok())
                            .unwrap_or(Value::Null),
                    ),
                    (
                        "campaign_max_calls",
                        o.campaign_max_calls.map_or(Value::Null, Value::from),
                    ),
                    (
                        "ring_timeout_secs",
                        o.ring_timeout_secs.map_or(Value::Null, Value::from),
                    ),
                    (
                        "max_duration_secs",
                        o.max_duration_secs.map_or(Value::Null, Value::from),
                    ),
                    (
                        "media",
                        o.media
                            .as_ref()
                            .and_then(|m| serde_json::to_value(m).ok())
                            .unwrap_or(Value::Null),
                    ),
                ] {
                    if !v.is_null() {
                        m.insert(k.into(), v);
                    }
                }
                if !o.headers.is_empty() {
                    m.insert("headers".into(), json!(o.headers));
                }
            }
            a
        }
        CommandKind::Answer {
            call_id,
            media: Some(media),
        } => json!({"call_id": call_id, "media": media}),
        CommandKind::Hangup { call_id }
        | CommandKind::Answer { call_id, .. }
        | CommandKind::CallStatus { call_id } => {
            json!({"call_id": call_id})
        }
        CommandKind::Play(p) => serde_json::to_value(p).unwrap_or_default(),
        CommandKind::Stream {
            call_id,
            media: Some(media),
        } => json!({"call_id": call_id, "media": media}),
        CommandKind::Stream {
            call_id,
            media: None,
        } => json!({"call_id": call_id, "stop": true}),
        CommandKind::Reject { call_id, code } => json!({"call_id": call_id, "code": code}),
        CommandKind::Bridge {
            call_id,
            other_call_id,
        } => {
            json!({"call_id": call_id, "other_call_id": other_call_id})
        }
        CommandKind::Dtmf { call_id, digits } => json!({"call_id": call_id, "digits": digits}),
        CommandKind::Transfer { call_id, to } => json!({"call_id": call_id, "to": to}),
        CommandKind::SipTrace { on } => json!({"on": on}),
        CommandKind::Calls { offset, limit } => json!({"offset": offset, "limit": limit}),
        CommandKind::Ping | CommandKind::Status | CommandKind::Drain => json!({}),
    };
    let mut e = json!({"v": 1, "id": command.id, "type": command.kind.name(), "args": args});
    if let Value::Object(m) = &mut e {
        if let Some(r) = &command.reply_to {
            m.insert("reply_to".into(), Value::String(r.clone()));
        }
        if let Some(t) = command.not_after {
            m.insert("not_after".into(), Value::from(t));
        }
    }
    e
}
