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
    let o = ok(
        r#"{"v":1,"id":"o1","type":"originate","not_after":99,"args":{"account":"a","to":"sip:1@x","headers":{"X-Job":"7"},"force":true,"ring_timeout_secs":5}}"#,
    );
    assert_eq!(o.not_after, Some(99));
    let CommandKind::Originate(args) = &o.kind else {
        panic!("{o:?}");
    };
    assert_eq!(args.to, "sip:1@x");
    assert!(args.force);
    assert_eq!(args.headers.get("X-Job").map(String::as_str), Some("7"));
    assert_eq!(o.kind.scope(), Scope::Account);
    assert_eq!(o.kind.account(), Some("a"));
    let h = ok(r#"{"v":1,"id":"h","type":"hangup","args":{"call_id":"c-1"}}"#);
    assert_eq!(
        (h.kind.scope(), h.kind.call_id()),
        (Scope::Call, Some("c-1"))
    );
    let r = ok(r#"{"v":1,"id":"r","type":"reject","args":{"call_id":"c"}}"#);
    assert_eq!(
        r.kind,
        CommandKind::Reject {
            call_id: "c".into(),
            code: 486
        }
    );
    let s = ok(r#"{"v":1,"id":"q","type":"call_status","args":{"call_id":"c"}}"#);
    assert_eq!(s.kind.scope(), Scope::Any);
    let l = ok(r#"{"v":1,"id":"l","type":"calls"}"#);
    assert_eq!(
        l.kind,
        CommandKind::Calls {
            offset: 0,
            limit: 100
        }
    );
}

/// Malformed commands, each with its documented code and a message naming
/// the field.
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
            "id: invalid type",
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
            "type: invalid type",
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
            "args: must be an object",
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
            "args.account: invalid type",
        ),
        (
            r#"{"v":1,"id":"a","type":"register","args":{"account":""}}"#,
            ErrorCode::BadField,
            "args.account: must be 1 to 64",
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
            "reply_to: invalid type",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"to":"+1555"}}"#,
            ErrorCode::MissingField,
            "args.account is missing",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a"}}"#,
            ErrorCode::MissingField,
            "args.to is missing",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"x y"}}"#,
            ErrorCode::BadField,
            "args.to: must be",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","headers":{"Via":"x"}}}"#,
            ErrorCode::BadField,
            "args.headers.Via: only X- header",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","ring_timeout_secs":0}}"#,
            ErrorCode::BadField,
            "args.ring_timeout_secs: must be 1 to 600",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","ring_timeout_secs":-1}}"#,
            ErrorCode::BadField,
            "args.ring_timeout_secs: invalid value",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","safe_harbor":"sh.wav"}}"#,
            ErrorCode::BadField,
            "the abandon guard needs a websocket media",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","amd":{"silence_threshold":0}}}"#,
            ErrorCode::BadField,
            "args.amd.silence_threshold: 1 to 32767",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","amd":{"mode":"sync"}}}"#,
            ErrorCode::BadField,
            "sync needs a websocket media",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","amd":{"on_machine":"prompt"}}}"#,
            ErrorCode::BadField,
            "args.amd.machine_prompt: needed",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","amd":{"greeting_ms":5}}}"#,
            ErrorCode::BadField,
            "args.amd.greeting_ms: 20 to 120000",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","amd":{"colour":"red"}}}"#,
            ErrorCode::BadField,
            "unknown field",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","campaign":"no spaces"}}"#,
            ErrorCode::BadField,
            "args.campaign:",
        ),
        (
            r#"{"v":1,"id":"a","type":"originate","args":{"account":"a","to":"1","call_id":"no spaces"}}"#,
            ErrorCode::BadField,
            "args.call_id: must be",
        ),
        (
            r#"{"v":1,"id":"a","type":"reject","args":{"call_id":"c","code":200}}"#,
            ErrorCode::BadField,
            "args.code: 200 is not 400 to 699",
        ),
        (
            r#"{"v":1,"id":"a","type":"dtmf","args":{"call_id":"c","digits":"12x"}}"#,
            ErrorCode::BadField,
            "args.digits: must be 1 to 32",
        ),
        (
            r#"{"v":1,"id":"a","type":"bridge","args":{"call_id":"c","other_call_id":"c"}}"#,
            ErrorCode::BadField,
            "args.other_call_id: must differ",
        ),
        (
            r#"{"v":1,"id":"a","type":"hangup","args":{}}"#,
            ErrorCode::MissingField,
            "args.call_id is missing",
        ),
        (
            r#"{"v":1,"id":"a","type":"calls","args":{"limit":5000}}"#,
            ErrorCode::BadField,
            "args.limit: must be 1 to 1000",
        ),
        (
            r#"{"v":1,"id":"a","type":"ping","not_after":"soon"}"#,
            ErrorCode::BadField,
            "not_after: invalid type",
        ),
        (
            r#"{"v":1,"id":"a","type":"play","args":{"call_id":"c"}}"#,
            ErrorCode::BadField,
            "exactly one of file, tone or stop",
        ),
        (
            r#"{"v":1,"id":"a","type":"play","args":{"call_id":"c","file":"../etc/passwd"}}"#,
            ErrorCode::BadField,
            "a file name",
        ),
        (
            r#"{"v":1,"id":"a","type":"play","args":{"call_id":"c","tone":{"freqs":[5],"duration_ms":10}}}"#,
            ErrorCode::BadField,
            "20 to 4000 Hz",
        ),
        (
            r#"{"v":1,"id":"a","type":"answer","args":{"call_id":"c","media":{"type":"rtp","host":"0.0.0.0","port":4000}}}"#,
            ErrorCode::BadField,
            "host must be an address",
        ),
        (big.as_str(), ErrorCode::TooLarge, "the limit is 65536"),
    ];
    for (json, code, message) in cases {
        let e = parse(json.as_bytes(), "dialer").expect_err(json);
        assert_eq!(e.code, *code, "{json}: {e}");
        assert!(e.message.contains(message), "{json}: {e}");
    }
}

#[test]
fn errors_carry_what_could_be_read_including_a_valid_reply_to() {
    let e = parse(
        br#"{"v":1,"id":"abc","type":"unregister","reply_to":"dialer:r:1"}"#,
        "dialer",
    )
    .unwrap_err();
    assert_eq!(
        (e.id.as_deref(), e.command.as_deref(), e.reply_to.as_deref()),
        (Some("abc"), Some("unregister"), Some("dialer:r:1"))
    );
    let e = parse(
        br#"{"v":1,"id":"a","type":"ping","reply_to":"elsewhere:x","x":1}"#,
        "dialer",
    )
    .unwrap_err();
    assert_eq!(e.reply_to, None, "an invalid reply_to is not used");
    let e = parse(b"{", "dialer").unwrap_err();
    assert_eq!((e.id, e.command, e.reply_to), (None, None, None));
}

#[test]
fn error_codes_round_trip_and_say_whether_to_retry() {
    for code in ALL_CODES {
        assert_eq!(ErrorCode::from_code(code.as_str()), Some(code));
    }
    assert!(ErrorCode::Capacity.retryable() && ErrorCode::RateLimited.retryable());
    assert!(!ErrorCode::BadField.retryable() && !ErrorCode::DuplicateDestination.retryable());
}

/// Found by the fuzzer: a header name with a multi-byte character across
/// the `X-` prefix was sliced inside the character.
#[test]
fn a_header_name_of_any_characters_is_refused_without_a_panic() {
    let json = r#"{"v":1,"id":"o1","type":"originate","args":{"account":"a","to":"1","headers":{"XӾ":"1","X-É":"2"}}}"#;
    let e = parse(json.as_bytes(), "dialer").unwrap_err();
    assert_eq!(e.code, ErrorCode::BadField);
    assert!(e.message.contains("only X- header names"), "{e}");
}
