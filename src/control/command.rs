//! Control-channel commands (docs/control-channel.md): the JSON envelope,
//! its validation, and the error codes of failed commands. Sans-IO: bytes
//! in, a typed command or a typed error out.

use std::fmt;

use serde_json::{Map, Value};

/// Largest command payload.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Command types in the contract that are not built yet.
pub const COMING: [&str; 8] = [
    "originate",
    "hangup",
    "answer",
    "reject",
    "bridge",
    "play",
    "dtmf",
    "transfer",
];

const TOP_LEVEL: [&str; 5] = ["v", "id", "type", "reply_to", "args"];

/// Error codes of a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not a JSON object.
    BadJson,
    /// `v` missing or not 1.
    BadVersion,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or value, or is unknown.
    BadField,
    /// Not a command type.
    UnknownType,
    /// In the contract, not built yet.
    NotImplemented,
    /// No such account.
    UnknownAccount,
    /// The instance is draining.
    Draining,
    /// Over [`MAX_COMMAND_BYTES`].
    TooLarge,
    /// dialerd failed while executing.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in results.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::BadField => "bad_field",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::Draining => "draining",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A command that failed, with what could be read of it for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// Error code.
    pub code: ErrorCode,
    /// What is wrong, naming the field.
    pub message: String,
    /// The command's id, when it could be read.
    pub id: Option<String>,
    /// The command's type, when it could be read.
    pub command: Option<String>,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Its id (also the idempotency key).
    pub id: String,
    /// Channel for the result, if not the events channel.
    pub reply_to: Option<String>,
    /// What to do.
    pub kind: CommandKind,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// Liveness.
    Ping,
    /// The status snapshot.
    Status,
    /// Register an account.
    Register {
        /// Account name.
        account: String,
    },
    /// Unregister an account.
    Unregister {
        /// Account name.
        account: String,
    },
    /// Start draining.
    Drain,
    /// Switch SIP message logging.
    SipTrace {
        /// On or off.
        on: bool,
    },
}

impl CommandKind {
    /// The type name.
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::Status => "status",
            CommandKind::Register { .. } => "register",
            CommandKind::Unregister { .. } => "unregister",
            CommandKind::Drain => "drain",
            CommandKind::SipTrace { .. } => "sip_trace",
        }
    }

    /// Whether it starts new work (refused while draining).
    pub fn starts_work(&self) -> bool {
        matches!(self, CommandKind::Register { .. })
    }
}

/// Parses and validates a payload received on a command channel. `prefix`
/// is `redis.prefix` (a `reply_to` must stay under it).
pub fn parse(payload: &[u8], prefix: &str) -> Result<Command, CommandError> {
    let fail = |code, message: String| CommandError {
        code,
        message,
        id: None,
        command: None,
    };
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(fail(
            ErrorCode::TooLarge,
            format!("{} bytes, the limit is {MAX_COMMAND_BYTES}", payload.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| fail(ErrorCode::BadJson, e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(fail(ErrorCode::BadJson, "not a JSON object".into()));
    };
    // Read id and type first (leniently) so that every error can name them.
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    let command = obj.get("type").and_then(Value::as_str).map(str::to_owned);
    let fail = |code, message: String| CommandError {
        code,
        message,
        id: id.clone(),
        command: command.clone(),
    };
    match obj.get("v") {
        None => return Err(fail(ErrorCode::BadVersion, "v is missing".into())),
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(fail(
                ErrorCode::BadVersion,
                format!("v is {v}, only 1 is supported"),
            ));
        }
    }
    if let Some(unknown) = obj.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(fail(
            ErrorCode::BadField,
            format!("{unknown}: unknown field"),
        ));
    }
    let id = match obj.get("id") {
        None => return Err(fail(ErrorCode::MissingField, "id is missing".into())),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(fail(
                ErrorCode::BadField,
                format!("id must be a string, not {}", kind(other)),
            ));
        }
    };
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(fail(
            ErrorCode::BadField,
            "id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    let type_name = match obj.get("type") {
        None => return Err(fail(ErrorCode::MissingField, "type is missing".into())),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(fail(
                ErrorCode::BadField,
                format!("type must be a string, not {}", kind(other)),
            ));
        }
    };
    let reply_to = match obj.get("reply_to") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let ok = s.len() <= 200
                && s.starts_with(&format!("{prefix}:"))
                && !s.chars().any(char::is_whitespace);
            if !ok {
                return Err(fail(
                    ErrorCode::BadField,
                    format!(
                        "reply_to must be a channel name under \"{prefix}:\" of at most 200 characters"
                    ),
                ));
            }
            Some(s.clone())
        }
        Some(other) => {
            return Err(fail(
                ErrorCode::BadField,
                format!("reply_to must be a string, not {}", kind(other)),
            ));
        }
    };
    let empty = Map::new();
    let args = match obj.get("args") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(other) => {
            return Err(fail(
                ErrorCode::BadField,
                format!("args must be an object, not {}", kind(other)),
            ));
        }
    };
    let only = |allowed: &[&str]| -> Result<(), CommandError> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(fail(
                ErrorCode::BadField,
                format!("args.{k}: unknown field"),
            )),
            None => Ok(()),
        }
    };
    let account = || -> Result<String, CommandError> {
        only(&["account"])?;
        match args.get("account") {
            None => Err(fail(
                ErrorCode::MissingField,
                "args.account is missing".into(),
            )),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
            Some(Value::String(_)) => Err(fail(
                ErrorCode::BadField,
                "args.account must be 1 to 64 characters".into(),
            )),
            Some(other) => Err(fail(
                ErrorCode::BadField,
                format!("args.account must be a string, not {}", kind(other)),
            )),
        }
    };
    let kind = match type_name {
        "ping" => only(&[]).map(|()| CommandKind::Ping)?,
        "status" => only(&[]).map(|()| CommandKind::Status)?,
        "drain" => only(&[]).map(|()| CommandKind::Drain)?,
        "sip_trace" => {
            only(&["on"])?;
            match args.get("on") {
                Some(Value::Bool(on)) => CommandKind::SipTrace { on: *on },
                None => {
                    return Err(fail(ErrorCode::MissingField, "args.on is missing".into()));
                }
                Some(other) => {
                    return Err(fail(
                        ErrorCode::BadField,
                        format!("args.on must be true or false, not {}", kind(other)),
                    ));
                }
            }
        }
        "register" => CommandKind::Register {
            account: account()?,
        },
        "unregister" => CommandKind::Unregister {
            account: account()?,
        },
        t if COMING.contains(&t) => {
            return Err(fail(
                ErrorCode::NotImplemented,
                format!("{t} is not implemented yet"),
            ));
        }
        t => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!("{t:?} is not a command type"),
            ));
        }
    };
    Ok(Command { id, reply_to, kind })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Command {
        parse(json.as_bytes(), "dialer").unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn valid_commands() {
        let c = ok(
            r#"{"v":1,"id":"a-1","type":"unregister","reply_to":"dialer:reply:x","args":{"account":"ucm"}}"#,
        );
        assert_eq!(c.id, "a-1");
        assert_eq!(c.reply_to.as_deref(), Some("dialer:reply:x"));
        assert_eq!(
            c.kind,
            CommandKind::Unregister {
                account: "ucm".into()
            }
        );
        assert_eq!(
            ok(r#"{"v":1,"id":"p","type":"ping"}"#).kind,
            CommandKind::Ping
        );
        assert_eq!(
            ok(r#"{"v":1,"id":"s","type":"status","args":{}}"#).kind,
            CommandKind::Status
        );
        assert_eq!(
            ok(r#"{"v":1,"id":"t","type":"sip_trace","args":{"on":true}}"#).kind,
            CommandKind::SipTrace { on: true }
        );
        assert_eq!(
            ok(r#"{"v":1,"id":"d","type":"drain","reply_to":null}"#).kind,
            CommandKind::Drain
        );
        let r = ok(r#"{"v":1,"id":"r:2","type":"register","args":{"account":"a"}}"#);
        assert!(r.kind.starts_work());
        assert_eq!(r.kind.name(), "register");
    }

    /// At least twenty malformed commands, each with its documented code.
    #[test]
    fn malformed_commands_get_their_error_codes() {
        let big = format!(
            r#"{{"v":1,"id":"x","type":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_COMMAND_BYTES)
        );
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("", ErrorCode::BadJson, "EOF"),
            ("{", ErrorCode::BadJson, "EOF"),
            ("not json", ErrorCode::BadJson, "expected"),
            ("[1,2]", ErrorCode::BadJson, "not a JSON object"),
            (r#""ping""#, ErrorCode::BadJson, "not a JSON object"),
            (
                r#"{"id":"a","type":"ping"}"#,
                ErrorCode::BadVersion,
                "v is missing",
            ),
            (
                r#"{"v":2,"id":"a","type":"ping"}"#,
                ErrorCode::BadVersion,
                "v is 2",
            ),
            (
                r#"{"v":"1","id":"a","type":"ping"}"#,
                ErrorCode::BadVersion,
                "v is \"1\"",
            ),
            (
                r#"{"v":1,"type":"ping"}"#,
                ErrorCode::MissingField,
                "id is missing",
            ),
            (
                r#"{"v":1,"id":7,"type":"ping"}"#,
                ErrorCode::BadField,
                "id must be a string, not a number",
            ),
            (
                r#"{"v":1,"id":"","type":"ping"}"#,
                ErrorCode::BadField,
                "id must be 1 to 128",
            ),
            (
                r#"{"v":1,"id":"has space","type":"ping"}"#,
                ErrorCode::BadField,
                "id must be 1 to 128",
            ),
            (
                r#"{"v":1,"id":"a"}"#,
                ErrorCode::MissingField,
                "type is missing",
            ),
            (
                r#"{"v":1,"id":"a","type":["ping"]}"#,
                ErrorCode::BadField,
                "type must be a string, not an array",
            ),
            (
                r#"{"v":1,"id":"a","type":"reboot"}"#,
                ErrorCode::UnknownType,
                "\"reboot\" is not a command type",
            ),
            (
                r#"{"v":1,"id":"a","type":"ping","extra":1}"#,
                ErrorCode::BadField,
                "extra: unknown field",
            ),
            (
                r#"{"v":1,"id":"a","type":"ping","args":[]}"#,
                ErrorCode::BadField,
                "args must be an object",
            ),
            (
                r#"{"v":1,"id":"a","type":"ping","args":{"x":1}}"#,
                ErrorCode::BadField,
                "args.x: unknown field",
            ),
            (
                r#"{"v":1,"id":"a","type":"unregister"}"#,
                ErrorCode::MissingField,
                "args.account is missing",
            ),
            (
                r#"{"v":1,"id":"a","type":"unregister","args":{"account":5}}"#,
                ErrorCode::BadField,
                "args.account must be a string",
            ),
            (
                r#"{"v":1,"id":"a","type":"register","args":{"account":""}}"#,
                ErrorCode::BadField,
                "args.account must be 1 to 64",
            ),
            (
                r#"{"v":1,"id":"a","type":"register","args":{"account":"a","force":true}}"#,
                ErrorCode::BadField,
                "args.force: unknown field",
            ),
            (
                r#"{"v":1,"id":"a","type":"ping","reply_to":"other:x"}"#,
                ErrorCode::BadField,
                "reply_to must be a channel name under \"dialer:\"",
            ),
            (
                r#"{"v":1,"id":"a","type":"ping","reply_to":3}"#,
                ErrorCode::BadField,
                "reply_to must be a string",
            ),
            (
                r#"{"v":1,"id":"a","type":"originate","args":{"to":"+1555"}}"#,
                ErrorCode::NotImplemented,
                "originate is not implemented yet",
            ),
            (
                r#"{"v":1,"id":"a","type":"transfer"}"#,
                ErrorCode::NotImplemented,
                "transfer is not implemented yet",
            ),
            (big.as_str(), ErrorCode::TooLarge, "the limit is 65536"),
        ];
        assert!(cases.len() >= 20);
        for (json, code, message) in cases {
            let e = parse(json.as_bytes(), "dialer").expect_err(json);
            assert_eq!(e.code, *code, "{json}: {e}");
            assert!(e.message.contains(message), "{json}: {e}");
        }
    }

    #[test]
    fn errors_carry_the_id_and_type_they_could_read() {
        let e = parse(br#"{"v":1,"id":"abc","type":"unregister"}"#, "dialer").unwrap_err();
        assert_eq!(
            (e.id.as_deref(), e.command.as_deref()),
            (Some("abc"), Some("unregister"))
        );
        let e = parse(b"{", "dialer").unwrap_err();
        assert_eq!((e.id, e.command), (None, None));
        assert_eq!(ErrorCode::UnknownAccount.as_str(), "unknown_account");
    }
}
