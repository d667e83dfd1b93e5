//! Control-channel commands (docs/control-channel.md): the JSON envelope,
//! its validation with serde (unknown fields refused, errors naming the
//! field), and the error codes of failed commands. Sans-IO: bytes in, a
//! typed command or a typed error out.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest command payload.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most `X-` headers an originate may carry.
const MAX_HEADERS: usize = 16;

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
    /// Over [`MAX_COMMAND_BYTES`].
    TooLarge,
    /// In the contract, not built yet.
    NotImplemented,
    /// Not something this dialer does.
    NotSupported,
    /// No instance has the account.
    UnknownAccount,
    /// No such call.
    UnknownCall,
    /// The call has ended.
    CallEnded,
    /// The call's state does not allow it.
    WrongState,
    /// The call id has a record already.
    CallIdInUse,
    /// The destination was dialed within the window.
    DuplicateDestination,
    /// Past `not_after`, or a stream entry too old.
    Expired,
    /// At a concurrent-call limit.
    Capacity,
    /// Over a calls-per-second limit.
    RateLimited,
    /// The instance is draining.
    Draining,
    /// Another instance is executing this id.
    InProgress,
    /// The SIP core or Redis is not available now.
    Unavailable,
    /// The campaign's gate is closed, or could not be read (fail closed).
    CampaignGated,
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
            ErrorCode::CampaignGated => "campaign_gated",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::CallEnded => "call_ended",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::CallIdInUse => "call_id_in_use",
            ErrorCode::DuplicateDestination => "duplicate_destination",
            ErrorCode::Expired => "expired",
            ErrorCode::Capacity => "capacity",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Draining => "draining",
            ErrorCode::InProgress => "in_progress",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code of a stored result's text.
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == code)
    }

    /// Whether sending the command again may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Capacity
                | ErrorCode::RateLimited
                | ErrorCode::Draining
                | ErrorCode::InProgress
                | ErrorCode::Unavailable
                | ErrorCode::Internal
        )
    }
}

const ALL_CODES: [ErrorCode; 22] = [
    ErrorCode::CampaignGated,
    ErrorCode::BadJson,
    ErrorCode::BadVersion,
    ErrorCode::MissingField,
    ErrorCode::BadField,
    ErrorCode::UnknownType,
    ErrorCode::TooLarge,
    ErrorCode::NotImplemented,
    ErrorCode::NotSupported,
    ErrorCode::UnknownAccount,
    ErrorCode::UnknownCall,
    ErrorCode::CallEnded,
    ErrorCode::WrongState,
    ErrorCode::CallIdInUse,
    ErrorCode::DuplicateDestination,
    ErrorCode::Expired,
    ErrorCode::Capacity,
    ErrorCode::RateLimited,
    ErrorCode::Draining,
    ErrorCode::InProgress,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

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
    /// Where to answer, when a valid `reply_to` could be read.
    pub reply_to: Option<String>,
}

impl CommandError {
    /// An error of `code` saying `message`, with nothing read.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
            command: None,
            reply_to: None,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A valid command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Its id (also the idempotency key).
    pub id: String,
    /// Channel for the result, if not the events channel.
    pub reply_to: Option<String>,
    /// Unix milliseconds after which it must not run.
    pub not_after: Option<u64>,
    /// What to do.
    pub kind: CommandKind,
}

/// Who executes a command (docs/control-channel.md, "Who executes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every instance that receives it (dedup per instance).
    Instance,
    /// The instance that has the account.
    Account,
    /// The instance that owns the call.
    Call,
    /// Any one instance.
    Any,
}

/// An `originate`'s arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginateArgs {
    /// Account to call through.
    pub account: String,
    /// Callee: a SIP URI, or a user/number at the account's domain.
    pub to: String,
    /// From user part.
    pub from: Option<String>,
    /// From display name.
    pub display: Option<String>,
    /// `X-` headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The call's id (default: the command id).
    pub call_id: Option<String>,
    /// Ring timeout, seconds.
    pub ring_timeout_secs: Option<u64>,
    /// Longest talk time, seconds.
    pub max_duration_secs: Option<u64>,
    /// A live call to bridge with once answered.
    pub bridge_to: Option<String>,
    /// Dial even when the destination was dialed within the window.
    #[serde(default)]
    pub force: bool,
    /// An external media endpoint to relay the call's audio with.
    pub media: Option<MediaArgs>,
    /// SRTP policy for this call: `off`, `optional`, `required` or `dtls`
    /// (default: the account's).
    pub srtp: Option<String>,
    /// The campaign the call belongs to: its Redis gate must be open, and
    /// its live calls on this instance are limited.
    pub campaign: Option<String>,
    /// Most live calls of the campaign on this instance (default
    /// `[calls].campaign_max_calls`).
    pub campaign_max_calls: Option<usize>,
    /// Answering-machine detection.
    pub amd: Option<AmdArgs>,
    /// The safe-harbor recording (a prompt file) played when the abandon
    /// guard drops the call.
    pub safe_harbor: Option<String>,
    /// The abandon guard: the agent must be connected within this many ms
    /// of the greeting's end (default `[calls].abandon_ms`).
    pub abandon_ms: Option<u64>,
}

/// Answering-machine detection for an `originate` (every timing overrides
/// its default; see docs/control-channel.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmdArgs {
    /// `off`, `async` (default: the agent or bridge is connected at once)
    /// or `sync` (only after `human`).
    pub mode: Option<String>,
    /// On `machine`: `hangup` (default), `prompt` (play `machine_prompt`
    /// after the greeting's end, then hang up) or `bridge` (connect anyway).
    pub on_machine: Option<String>,
    /// The message left on a machine (a prompt file).
    pub machine_prompt: Option<String>,
    /// Record this many ms of the callee's audio as a WAV for tuning.
    pub capture_ms: Option<u32>,
    /// Silence before any word that makes a machine, ms.
    pub initial_silence_ms: Option<u32>,
    /// Greeting voice that makes a machine, ms.
    pub greeting_ms: Option<u32>,
    /// Silence after a short greeting that makes a person, ms.
    pub after_greeting_silence_ms: Option<u32>,
    /// Longest analysis, ms.
    pub total_analysis_ms: Option<u32>,
    /// Shortest word, ms.
    pub min_word_ms: Option<u32>,
    /// Shortest silence between words, ms.
    pub between_words_ms: Option<u32>,
    /// More words than this make a machine.
    pub max_words: Option<u32>,
    /// A longer word makes a machine, ms.
    pub max_word_ms: Option<u32>,
    /// Level under which a frame is silence (mean absolute amplitude).
    pub silence_threshold: Option<u32>,
    /// Silence that ends a machine's greeting without a beep, ms.
    pub machine_end_silence_ms: Option<u32>,
    /// Longest wait for a machine's greeting to end, ms.
    pub machine_end_timeout_ms: Option<u32>,
    /// Shortest beep, ms.
    pub min_beep_ms: Option<u32>,
}

/// The AMD modes a command may name.
pub const AMD_MODES: [&str; 3] = ["off", "async", "sync"];
/// The actions on `machine` a command may name.
pub const AMD_ON_MACHINE: [&str; 3] = ["hangup", "prompt", "bridge"];

/// The SRTP policies a command may name.
pub const SRTP_POLICIES: [&str; 4] = ["off", "optional", "required", "dtls"];

/// An external media endpoint for a call's audio (`originate`, `answer`,
/// `stream`). Its `Debug` shows header names, not their values, and the
/// URL without its query.
#[derive(Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaArgs {
    /// `rtp`: plain RTP to and from `host:port`; `websocket`: a voice agent
    /// at `url`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `rtp`: the endpoint's IP address.
    pub host: Option<std::net::IpAddr>,
    /// `rtp`: its RTP port.
    pub port: Option<u16>,
    /// `rtp`: `PCMU` (default) or `PCMA`.
    pub codec: Option<String>,
    /// `websocket`: the agent's `ws://` or `wss://` URL.
    pub url: Option<String>,
    /// `websocket`: `twilio` (default) or `l16`.
    pub protocol: Option<String>,
    /// `websocket`, `l16`: 8000 (default) or 16000.
    pub sample_rate: Option<u32>,
    /// `websocket`: the start message's `customParameters`.
    pub custom_parameters: Option<std::collections::BTreeMap<String, String>>,
    /// `websocket`: extra headers of the upgrade request.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// `websocket`: connect and upgrade within this (default 5000).
    pub connect_timeout_ms: Option<u64>,
    /// `websocket`: `hangup` (default) or `continue` when the stream ends.
    pub on_end: Option<String>,
    /// `websocket` with `on_end: "continue"`: a WAV file in the prompt
    /// directory played to the caller when the stream ends.
    pub on_end_prompt: Option<String>,
    /// `wss`: trust this CA file instead of the system roots.
    pub tls_ca_file: Option<String>,
    /// `wss`: trust exactly the certificate with this SHA-256 fingerprint.
    pub tls_fingerprint: Option<String>,
}

impl std::fmt::Debug for MediaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Option<Vec<&String>> = self.headers.as_ref().map(|h| h.keys().collect());
        f.debug_struct("MediaArgs")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("codec", &self.codec)
            .field(
                "url",
                &self
                    .url
                    .as_deref()
                    .map(|u| u.split('?').next().unwrap_or_default()),
            )
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("on_end", &self.on_end)
            .finish_non_exhaustive()
    }
}

/// What `play` plays: a WAV file from the prompt directory, a tone, or
/// nothing (`stop`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlayArgs {
    /// The call.
    pub call_id: String,
    /// A file name in `media.prompt_dir`.
    pub file: Option<String>,
    /// A tone.
    pub tone: Option<ToneArgs>,
    /// Play the file again and again.
    #[serde(default, rename = "loop")]
    pub loops: bool,
    /// Stop what plays.
    #[serde(default)]
    pub stop: bool,
}

/// A tone for `play`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToneArgs {
    /// One or two frequencies, Hz.
    pub freqs: Vec<f32>,
    /// How long, milliseconds.
    pub duration_ms: u64,
    /// Cadence: tone on, milliseconds (default: continuous).
    pub on_ms: Option<u32>,
    /// Cadence: silence, milliseconds.
    pub off_ms: Option<u32>,
    /// Level, dBm0 (default -13).
    pub level_dbm0: Option<f32>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    /// Liveness.
    Ping,
    /// The status snapshot.
    Status,
    /// A page of live calls.
    Calls {
        /// Calls to skip.
        offset: usize,
        /// Most calls to list.
        limit: usize,
    },
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
    /// Place a call.
    Originate(Box<OriginateArgs>),
    /// Hang a call up.
    Hangup {
        /// The call.
        call_id: String,
    },
    /// Answer a ringing inbound call.
    Answer {
        /// The call.
        call_id: String,
        /// An external media endpoint to relay its audio with.
        media: Option<Box<MediaArgs>>,
    },
    /// Play a prompt or tone to a call.
    Play(Box<PlayArgs>),
    /// Stream a call's audio with a voice agent (`media`), or stop it.
    Stream {
        /// The call.
        call_id: String,
        /// The agent; `None` stops the stream.
        media: Option<Box<MediaArgs>>,
    },
    /// Reject a ringing inbound call.
    Reject {
        /// The call.
        call_id: String,
        /// SIP status, 400 to 699.
        code: u16,
    },
    /// Join two calls.
    Bridge {
        /// One call.
        call_id: String,
        /// The other.
        other_call_id: String,
    },
    /// Send DTMF digits.
    Dtmf {
        /// The call.
        call_id: String,
        /// The digits.
        digits: String,
    },
    /// Transfer (not supported).
    Transfer {
        /// The call.
        call_id: String,
        /// Where to.
        to: String,
    },
    /// A call's record.
    CallStatus {
        /// The call.
        call_id: String,
    },
}

impl CommandKind {
    /// The type name.
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::Status => "status",
            CommandKind::Calls { .. } => "calls",
            CommandKind::Register { .. } => "register",
            CommandKind::Unregister { .. } => "unregister",
            CommandKind::Drain => "drain",
            CommandKind::SipTrace { .. } => "sip_trace",
            CommandKind::Originate(_) => "originate",
            CommandKind::Hangup { .. } => "hangup",
            CommandKind::Answer { .. } => "answer",
            CommandKind::Play(_) => "play",
            CommandKind::Stream { .. } => "stream",
            CommandKind::Reject { .. } => "reject",
            CommandKind::Bridge { .. } => "bridge",
            CommandKind::Dtmf { .. } => "dtmf",
            CommandKind::Transfer { .. } => "transfer",
            CommandKind::CallStatus { .. } => "call_status",
        }
    }

    /// Whether it starts new work (refused while draining).
    pub fn starts_work(&self) -> bool {
        matches!(
            self,
            CommandKind::Register { .. } | CommandKind::Originate(_)
        )
    }

    /// Who executes it.
    pub fn scope(&self) -> Scope {
        match self {
            CommandKind::Ping
            | CommandKind::Status
            | CommandKind::Calls { .. }
            | CommandKind::Drain
            | CommandKind::SipTrace { .. } => Scope::Instance,
            CommandKind::Register { .. }
            | CommandKind::Unregister { .. }
            | CommandKind::Originate(_) => Scope::Account,
            CommandKind::CallStatus { .. } => Scope::Any,
            CommandKind::Hangup { .. }
            | CommandKind::Answer { .. }
            | CommandKind::Play(_)
            | CommandKind::Stream { .. }
            | CommandKind::Reject { .. }
            | CommandKind::Bridge { .. }
            | CommandKind::Dtmf { .. }
            | CommandKind::Transfer { .. } => Scope::Call,
        }
    }

    /// The account it names.
    pub fn account(&self) -> Option<&str> {
        match self {
            CommandKind::Register { account } | CommandKind::Unregister { account } => {
                Some(account)
            }
            CommandKind::Originate(o) => Some(&o.account),
            _ => None,
        }
    }

    /// The call it names.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            CommandKind::Hangup { call_id }
            | CommandKind::Answer { call_id, .. }
            | CommandKind::Stream { call_id, .. }
            | CommandKind::Reject { call_id, .. }
            | CommandKind::Bridge { call_id, .. }
            | CommandKind::Dtmf { call_id, .. }
            | CommandKind::Transfer { call_id, .. }
            | CommandKind::CallStatus { call_id } => Some(call_id),
            CommandKind::Play(p) => Some(&p.call_id),
            _ => None,
        }
    }
}

/// The envelope, before its `args` are read for its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    v: Value,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    reply_to: Option<String>,
    not_after: Option<u64>,
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountArgs {
    account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceArgs {
    on: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageArgs {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallArgs {
    call_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectArgs {
    call_id: String,
    code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeArgs {
    call_id: String,
    other_call_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerArgs {
    call_id: String,
    media: Option<MediaArgs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamArgs {
    call_id: String,
    media: Option<MediaArgs>,
    #[serde(default)]
    stop: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DtmfArgs {
    call_id: String,
    digits: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferArgs {
    call_id: String,
    to: String,
}

/// Whether `s` is a valid id (command or call): 1 to 128 of
/// `A-Z a-z 0-9 . _ : -`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Parses and validates a payload received on a command channel or
/// stream. `prefix` is `redis.prefix` (a `reply_to` must stay under it).
pub fn parse(payload: &[u8], prefix: &str) -> Result<Command, CommandError> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::new(
            ErrorCode::TooLarge,
            format!("{} bytes, the limit is {MAX_COMMAND_BYTES}", payload.len()),
        ));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| CommandError::new(ErrorCode::BadJson, e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Err(CommandError::new(ErrorCode::BadJson, "not a JSON object"));
    };
    // Read id, type and reply_to leniently first, so that every error can
    // name them and go where the caller listens.
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let reply_to = text("reply_to").filter(|r| valid_reply_to(r, prefix));
    let fail = |code, message: String| CommandError {
        code,
        message,
        id: text("id"),
        command: text("type"),
        reply_to: reply_to.clone(),
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
    let envelope: Envelope = typed(value.clone(), "").map_err(|(c, m)| fail(c, m))?;
    if !valid_id(&envelope.id) {
        return Err(fail(
            ErrorCode::BadField,
            "id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    if let Some(r) = &envelope.reply_to
        && !valid_reply_to(r, prefix)
    {
        return Err(fail(
            ErrorCode::BadField,
            format!(
                "reply_to must be a channel name under \"{prefix}:\" of at most 200 characters"
            ),
        ));
    }
    let _ = envelope.v;
    let args = match envelope.args {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(a @ Value::Object(_)) => a,
        Some(other) => {
            return Err(fail(
                ErrorCode::BadField,
                format!("args: must be an object, not {}", json_kind(&other)),
            ));
        }
    };
    let kind = kind_of(&envelope.kind, args).map_err(|(c, m)| fail(c, m))?;
    Ok(Command {
        id: envelope.id,
        reply_to: envelope.reply_to,
        not_after: envelope.not_after,
        kind,
    })
}

fn valid_reply_to(r: &str, prefix: &str) -> bool {
    r.len() <= 200
        && r.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(':') && rest.len() > 1)
        && !r.chars().any(char::is_whitespace)
}

type Problem = (ErrorCode, String);

/// Deserializes `value` as `T`, naming the failing field under `at`.
fn typed<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde says "missing field `x`" and "unknown field `x`, expected ..."
        let field = |msg: &str| msg.split('`').nth(1).map(str::to_owned).unwrap_or_default();
        let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty() || b == ".") {
            (true, _) => b.to_owned(),
            (false, true) => a.to_owned(),
            (false, false) => format!("{a}.{b}"),
        };
        let here = join(at, if path == "." { "" } else { &path });
        if inner.starts_with("missing field") {
            (
                ErrorCode::MissingField,
                format!("{} is missing", join(&here, &field(&inner))),
            )
        } else if inner.starts_with("unknown field") {
            // The path already ends at the unknown field.
            let name = if here.is_empty() { field(&inner) } else { here };
            (ErrorCode::BadField, format!("{name}: unknown field"))
        } else {
            let name = if here.is_empty() { "command" } else { &here };
            (ErrorCode::BadField, format!("{name}: {inner}"))
        }
    })
}

fn kind_of(kind: &str, args: Value) -> Result<CommandKind, Problem> {
    let bad = |m: String| (ErrorCode::BadField, m);
    Ok(match kind {
        "ping" => typed::<NoArgs>(args, "args").map(|_| CommandKind::Ping)?,
        "status" => typed::<NoArgs>(args, "args").map(|_| CommandKind::Status)?,
        "drain" => typed::<NoArgs>(args, "args").map(|_| CommandKind::Drain)?,
        "calls" => {
            let a: PageArgs = typed(args, "args")?;
            let limit = a.limit.unwrap_or(100);
            if !(1..=1000).contains(&limit) {
                return Err(bad("args.limit: must be 1 to 1000".into()));
            }
            CommandKind::Calls {
                offset: a.offset.unwrap_or(0),
                limit,
            }
        }
        "sip_trace" => CommandKind::SipTrace {
            on: typed::<TraceArgs>(args, "args")?.on,
        },
        "register" | "unregister" => {
            let account = typed::<AccountArgs>(args, "args")?.account;
            check_account(&account)?;
            if kind == "register" {
                CommandKind::Register { account }
            } else {
                CommandKind::Unregister { account }
            }
        }
        "originate" => {
            let o: OriginateArgs = typed(args, "args")?;
            check_originate(&o)?;
            CommandKind::Originate(Box::new(o))
        }
        "answer" => {
            let a: AnswerArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            if let Some(m) = &a.media {
                check_media(m)?;
            }
            CommandKind::Answer {
                call_id: a.call_id,
                media: a.media.map(Box::new),
            }
        }
        "stream" => {
            let a: StreamArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            match (&a.media, a.stop) {
                (Some(m), false) if m.kind == "websocket" => check_media(m)?,
                (None, true) => {}
                _ => {
                    return Err((
                        ErrorCode::BadField,
                        "args: media of type websocket, or stop: true".into(),
                    ));
                }
            }
            CommandKind::Stream {
                call_id: a.call_id,
                media: a.media.map(Box::new),
            }
        }
        "hangup" | "call_status" => {
            let call_id = typed::<CallArgs>(args, "args")?.call_id;
            check_call(&call_id, "args.call_id")?;
            match kind {
                "hangup" => CommandKind::Hangup { call_id },
                _ => CommandKind::CallStatus { call_id },
            }
        }
        "reject" => {
            let a: RejectArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            let code = a.code.unwrap_or(486);
            if !(400..=699).contains(&code) {
                return Err(bad(format!("args.code: {code} is not 400 to 699")));
            }
            CommandKind::Reject {
                call_id: a.call_id,
                code,
            }
        }
        "bridge" => {
            let a: BridgeArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            check_call(&a.other_call_id, "args.other_call_id")?;
            if a.call_id == a.other_call_id {
                return Err(bad("args.other_call_id: must differ from call_id".into()));
            }
            CommandKind::Bridge {
                call_id: a.call_id,
                other_call_id: a.other_call_id,
            }
        }
        "dtmf" => {
            let a: DtmfArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            let ok = !a.digits.is_empty()
                && a.digits.chars().count() <= crate::call::MAX_DIGITS
                && a.digits.chars().all(crate::call::is_digit);
            if !ok {
                return Err(bad("args.digits: must be 1 to 32 of 0-9 * # A-D".into()));
            }
            CommandKind::Dtmf {
                call_id: a.call_id,
                digits: a.digits,
            }
        }
        "transfer" => {
            let a: TransferArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            CommandKind::Transfer {
                call_id: a.call_id,
                to: a.to,
            }
        }
        "play" => {
            let a: PlayArgs = typed(args, "args")?;
            check_call(&a.call_id, "args.call_id")?;
            check_play(&a)?;
            CommandKind::Play(Box::new(a))
        }
        t => {
            return Err((
                ErrorCode::UnknownType,
                format!("{t:?} is not a command type"),
            ));
        }
    })
}

fn check_media(m: &MediaArgs) -> Result<(), Problem> {
    if m.kind == "websocket" {
        return check_websocket(m);
    }
    if m.kind != "rtp" {
        return Err((
            ErrorCode::NotSupported,
            format!(
                "args.media.type: {:?} is not supported; \"rtp\" and \"websocket\" are",
                m.kind
            ),
        ));
    }
    let (Some(host), Some(port)) = (m.host, m.port) else {
        return Err((
            ErrorCode::BadField,
            "args.media: an rtp endpoint needs host and port".into(),
        ));
    };
    if port == 0 || host.is_unspecified() {
        return Err((
            ErrorCode::BadField,
            "args.media: host must be an address and port not 0".into(),
        ));
    }
    match m.codec.as_deref() {
        None => Ok(()),
        Some(c) if c.eq_ignore_ascii_case("pcmu") || c.eq_ignore_ascii_case("pcma") => Ok(()),
        Some(_) => Err((ErrorCode::BadField, "args.media.codec: PCMU or PCMA".into())),
    }
}

fn check_websocket(m: &MediaArgs) -> Result<(), Problem> {
    let bad = |msg: String| Err((ErrorCode::BadField, msg));
    let Some(url) = m.url.as_deref() else {
        return bad("args.media.url: a websocket endpoint needs a ws:// or wss:// URL".into());
    };
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some() => {}
        _ => return bad("args.media.url: a ws:// or wss:// URL with a host".into()),
    }
    if m.host.is_some() || m.port.is_some() || m.codec.is_some() {
        return bad("args.media: host, port and codec are for rtp endpoints".into());
    }
    match (m.protocol.as_deref(), m.sample_rate) {
        (None | Some("twilio"), None) | (Some("l16"), None | Some(8000 | 16000)) => {}
        (None | Some("twilio"), Some(_)) => {
            return bad("args.media.sample_rate: only for protocol l16 (twilio is 8000)".into());
        }
        (Some("l16"), Some(_)) => return bad("args.media.sample_rate: 8000 or 16000".into()),
        (Some(p), _) => return bad(format!("args.media.protocol: {p:?}; twilio or l16")),
    }
    if !matches!(m.on_end.as_deref(), None | Some("hangup" | "continue")) {
        return bad("args.media.on_end: hangup or continue".into());
    }
    if let Some(file) = &m.on_end_prompt {
        if m.on_end.as_deref() != Some("continue") {
            return bad("args.media.on_end_prompt: only with on_end continue".into());
        }
        if !prompt_name(file) {
            return bad(
                "args.media.on_end_prompt: a file name (A-Z a-z 0-9 . _ -) in the prompt directory"
                    .into(),
            );
        }
    }
    if m.connect_timeout_ms
        .is_some_and(|t| !(100..=60_000).contains(&t))
    {
        return bad("args.media.connect_timeout_ms: 100 to 60000".into());
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    for (name, value) in m.headers.iter().flatten() {
        let reserved = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
        ];
        if !token(name) || reserved.contains(&name.to_ascii_lowercase().as_str()) {
            return bad(format!(
                "args.media.headers: {name:?} is not a header it may set"
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) || value.len() > 4096 {
            return bad(format!(
                "args.media.headers.{name}: no line breaks, at most 4096 bytes"
            ));
        }
    }
    if m.custom_parameters.as_ref().is_some_and(|p| p.len() > 64) {
        return bad("args.media.custom_parameters: at most 64".into());
    }
    if m.tls_fingerprint.is_some() && m.tls_ca_file.is_some() {
        return bad("args.media: tls_ca_file or tls_fingerprint, not both".into());
    }
    Ok(())
}

/// A file name `play` may read from the prompt directory.
fn prompt_name(file: &str) -> bool {
    !file.is_empty()
        && file.len() <= 128
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_play(a: &PlayArgs) -> Result<(), Problem> {
    let bad = |m: &str| Err((ErrorCode::BadField, m.to_owned()));
    let given = usize::from(a.file.is_some()) + usize::from(a.tone.is_some()) + usize::from(a.stop);
    if given != 1 {
        return bad("args: exactly one of file, tone or stop");
    }
    if let Some(file) = &a.file
        && !prompt_name(file)
    {
        return bad("args.file: a file name (A-Z a-z 0-9 . _ -) in the prompt directory");
    }
    if let Some(t) = &a.tone {
        if t.freqs.is_empty()
            || t.freqs.len() > 2
            || t.freqs.iter().any(|f| !(20.0..=4000.0).contains(f))
        {
            return bad("args.tone.freqs: one or two frequencies of 20 to 4000 Hz");
        }
        if !(1..=3_600_000).contains(&t.duration_ms) {
            return bad("args.tone.duration_ms: 1 to 3600000");
        }
        if t.level_dbm0.is_some_and(|l| !(-60.0..=3.0).contains(&l)) {
            return bad("args.tone.level_dbm0: -60 to 3");
        }
    }
    Ok(())
}

fn check_account(account: &str) -> Result<(), Problem> {
    if account.is_empty() || account.len() > 64 {
        return Err((
            ErrorCode::BadField,
            "args.account: must be 1 to 64 characters".into(),
        ));
    }
    Ok(())
}

fn check_call(call_id: &str, field: &str) -> Result<(), Problem> {
    if !valid_id(call_id) {
        return Err((
            ErrorCode::BadField,
            format!("{field}: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
        ));
    }
    Ok(())
}

/// The campaign, AMD and abandon-guard fields of an `originate`.
fn check_progress(o: &OriginateArgs) -> Result<(), Problem> {
    let bad = |m: &str| Err((ErrorCode::BadField, m.to_owned()));
    if o.campaign.as_deref().is_some_and(|c| !valid_id(c)) {
        return bad("args.campaign: 1 to 128 characters of A-Z a-z 0-9 . _ : -");
    }
    if o.campaign_max_calls.is_some() && o.campaign.is_none() {
        return bad("args.campaign_max_calls: needs args.campaign");
    }
    if o.safe_harbor.as_deref().is_some_and(|f| !prompt_name(f)) {
        return bad("args.safe_harbor: a file name (A-Z a-z 0-9 . _ -) in the prompt directory");
    }
    if o.abandon_ms.is_some_and(|ms| !(100..=60_000).contains(&ms)) {
        return bad("args.abandon_ms: 100 to 60000");
    }
    let agent = o.media.as_ref().is_some_and(|m| m.kind == "websocket");
    if !agent && (o.safe_harbor.is_some() || o.abandon_ms.is_some()) {
        return bad(
            "args.safe_harbor, args.abandon_ms: the abandon guard needs a websocket media (an agent)",
        );
    }
    let Some(a) = &o.amd else {
        return Ok(());
    };
    if a.mode.as_deref().is_some_and(|m| !AMD_MODES.contains(&m)) {
        return bad("args.amd.mode: \"off\", \"async\" or \"sync\"");
    }
    if a.mode.as_deref() == Some("sync") && o.media.as_ref().is_none_or(|m| m.kind != "websocket") {
        return bad("args.amd.mode: sync needs a websocket media endpoint to connect after human");
    }
    match a.on_machine.as_deref() {
        None | Some("hangup" | "bridge") => {}
        Some("prompt") if a.machine_prompt.is_none() => {
            return bad("args.amd.machine_prompt: needed with on_machine \"prompt\"");
        }
        Some("prompt") => {}
        Some(_) => return bad("args.amd.on_machine: \"hangup\", \"prompt\" or \"bridge\""),
    }
    if a.machine_prompt.as_deref().is_some_and(|f| !prompt_name(f)) {
        return bad(
            "args.amd.machine_prompt: a file name (A-Z a-z 0-9 . _ -) in the prompt directory",
        );
    }
    if a.capture_ms.is_some_and(|ms| ms > 30_000) {
        return bad("args.amd.capture_ms: at most 30000");
    }
    let timings = [
        ("initial_silence_ms", a.initial_silence_ms),
        ("greeting_ms", a.greeting_ms),
        ("after_greeting_silence_ms", a.after_greeting_silence_ms),
        ("total_analysis_ms", a.total_analysis_ms),
        ("min_word_ms", a.min_word_ms),
        ("between_words_ms", a.between_words_ms),
        ("max_word_ms", a.max_word_ms),
        ("machine_end_silence_ms", a.machine_end_silence_ms),
        ("machine_end_timeout_ms", a.machine_end_timeout_ms),
        ("min_beep_ms", a.min_beep_ms),
    ];
    if let Some((name, _)) = timings
        .iter()
        .find(|(_, v)| v.is_some_and(|ms| !(20..=120_000).contains(&ms)))
    {
        return Err((
            ErrorCode::BadField,
            format!("args.amd.{name}: 20 to 120000"),
        ));
    }
    if a.max_words.is_some_and(|w| !(1..=100).contains(&w)) {
        return bad("args.amd.max_words: 1 to 100");
    }
    if a.silence_threshold
        .is_some_and(|t| !(1..=32_767).contains(&t))
    {
        return bad("args.amd.silence_threshold: 1 to 32767");
    }
    Ok(())
}

fn check_originate(o: &OriginateArgs) -> Result<(), Problem> {
    let bad = |m: &str| Err((ErrorCode::BadField, m.to_owned()));
    check_account(&o.account)?;
    if o.srtp
        .as_deref()
        .is_some_and(|p| !SRTP_POLICIES.contains(&p))
    {
        return bad("args.srtp: must be \"off\", \"optional\", \"required\" or \"dtls\"");
    }
    if let Some(m) = &o.media {
        check_media(m)?;
        if o.bridge_to.is_some() {
            return bad("args: media and bridge_to exclude each other");
        }
    }
    check_progress(o)?;
    let to_ok = !o.to.is_empty()
        && o.to.len() <= 256
        && !o
            .to
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if !to_ok {
        return bad("args.to: must be a SIP URI or a user part (1 to 256 characters, no spaces)");
    }
    if let Some(from) = &o.from
        && (from.is_empty()
            || from.len() > 64
            || !from
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(c)))
    {
        return bad("args.from: must be a SIP user part of 1 to 64 characters");
    }
    if let Some(display) = &o.display
        && (display.len() > 64 || display.chars().any(|c| c.is_control() || c == '"'))
    {
        return bad("args.display: at most 64 characters, no quotes or control characters");
    }
    if o.headers.len() > MAX_HEADERS {
        return bad("args.headers: at most 16 headers");
    }
    for (name, value) in &o.headers {
        // Checked as characters first: a name is any JSON string.
        let name_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && name.len() > 2
            && name.len() <= 64
            && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"));
        if !name_ok {
            return Err((
                ErrorCode::BadField,
                format!("args.headers.{name}: only X- header names are allowed"),
            ));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err((
                ErrorCode::BadField,
                format!("args.headers.{name}: at most 256 characters, no control characters"),
            ));
        }
    }
    if let Some(id) = &o.call_id {
        check_call(id, "args.call_id")?;
    }
    if let Some(b) = &o.bridge_to {
        check_call(b, "args.bridge_to")?;
    }
    if o.ring_timeout_secs.is_some_and(|s| !(1..=600).contains(&s)) {
        return bad("args.ring_timeout_secs: must be 1 to 600");
    }
    if o.max_duration_secs
        .is_some_and(|s| !(1..=86_400).contains(&s))
    {
        return bad("args.max_duration_secs: must be 1 to 86400");
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
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
#[path = "command_tests.rs"]
mod tests;
