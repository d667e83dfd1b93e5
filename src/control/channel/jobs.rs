//! Commands executed by their owners: the SIP core (calls, registrations,
//! SIP logging) and the shared status (snapshot, drain).

use std::time::Duration;

use serde_json::{Value, json};

use super::{agent, progress};
use crate::call::CallError;
use crate::control::command::{CommandError, CommandKind, ErrorCode, MediaArgs, PlayArgs};
use crate::control::machine::Job;
use crate::engine::RtpEndpoint;
use crate::engine::{CallAction, PlaceCall, PlaceError, SipCore};
use crate::lifecycle::Phase;
use crate::media::player::{Clip, Source, Tone};
use crate::sdp::Codec;
use crate::status::Shared;

pub(super) fn failure(kind: &CommandKind, code: ErrorCode, message: &str) -> CommandError {
    CommandError {
        code,
        message: message.to_owned(),
        id: None,
        command: Some(kind.name().to_owned()),
        reply_to: None,
    }
}

/// Executes a command in its owner.
pub(super) async fn execute(
    job: Job,
    shared: &Shared,
    sip: &SipCore,
) -> Result<Value, CommandError> {
    let kind = &job.command.kind;
    let fail = |code, message: String| failure(kind, code, &message);
    if kind.starts_work() && shared.lifecycle.phase() != Phase::Running {
        return Err(fail(
            ErrorCode::Draining,
            "the instance is draining; no new work".into(),
        ));
    }
    match kind {
        CommandKind::Ping => Ok(json!({"pong": true})),
        CommandKind::Status => serde_json::to_value(shared.snapshot())
            .map_err(|e| fail(ErrorCode::Internal, e.to_string())),
        CommandKind::Drain => Ok(json!({"phase": shared.lifecycle.drain()})),
        CommandKind::SipTrace { on } => {
            if sip.set_trace(*on).await {
                Ok(json!({"sip_trace": on}))
            } else {
                Err(fail(
                    ErrorCode::Unavailable,
                    "the SIP core is not running".into(),
                ))
            }
        }
        CommandKind::Calls { offset, limit } => match sip.calls(*offset, *limit).await {
            Some((live, calls)) => Ok(json!({"live": live, "calls": calls})),
            None => Err(fail(
                ErrorCode::Unavailable,
                "the SIP core is not running".into(),
            )),
        },
        CommandKind::Register { account } | CommandKind::Unregister { account } => {
            let register = matches!(kind, CommandKind::Register { .. });
            match sip.control(account, register).await {
                Some(state) => Ok(json!({"account": account, "state": state})),
                None => Err(fail(
                    ErrorCode::UnknownAccount,
                    format!("no account named {account:?}"),
                )),
            }
        }
        CommandKind::Originate(o) => {
            let call_id = o.call_id.clone().unwrap_or_else(|| job.command.id.clone());
            let agent = match o.media.as_ref().filter(|m| m.kind == "websocket") {
                Some(m) => Some(Box::new(
                    agent::agent_spec(
                        m,
                        &call_id,
                        &shared.instance_id,
                        shared.prompt_dir.get().map(|p| p.as_path()),
                    )
                    .await
                    .map_err(|e| fail(ErrorCode::BadField, e))?,
                )),
                None => None,
            };
            let defaults = shared.progress.get().cloned().unwrap_or_default();
            let plan = progress::plan(o, &defaults, shared.prompt_dir.get().map(|p| p.as_path()))
                .await
                .map_err(|e| fail(ErrorCode::BadField, e))?;
            let place = PlaceCall {
                to: o.to.clone(),
                account: Some(o.account.clone()),
                from_user: o.from.clone(),
                display: o.display.clone(),
                asserted_identity: None,
                headers: o
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ring_timeout: o.ring_timeout_secs.map(Duration::from_secs),
                max_duration: o.max_duration_secs.map(Duration::from_secs),
                name: Some(call_id.clone()),
                bridge_to: o.bridge_to.clone(),
                endpoint: o
                    .media
                    .as_ref()
                    .filter(|m| m.kind == "rtp")
                    .and_then(rtp_endpoint),
                agent,
                srtp: o
                    .srtp
                    .as_deref()
                    .and_then(crate::sdp::SrtpPolicy::from_name),
                campaign: progress::campaign(o, &defaults),
                progress: plan,
            };
            match sip.place(place).await {
                Ok(placed) => Ok(match placed.endpoint {
                    Some(a) => json!({"call_id": &*placed.name, "media": {
                        "host": a.local.ip().to_string(), "port": a.local.port()}}),
                    None if o.media.is_some() => json!({"call_id": &*placed.name, "media": {
                        "type": "websocket", "call_sid": agent::call_sid(&placed.name)}}),
                    None => json!({"call_id": &*placed.name}),
                }),
                Err(e) => Err(place_error(kind, e)),
            }
        }
        CommandKind::Transfer { .. } => Err(fail(
            ErrorCode::NotSupported,
            "transfer (REFER) is not supported by this dialer".into(),
        )),
        CommandKind::CallStatus { .. } => Err(fail(
            ErrorCode::Internal,
            "call_status is answered from the record".into(),
        )),
        CommandKind::Stream { call_id, media } => {
            let spec = match media {
                Some(m) => Some(Box::new(
                    agent::agent_spec(
                        m,
                        call_id,
                        &shared.instance_id,
                        shared.prompt_dir.get().map(|p| p.as_path()),
                    )
                    .await
                    .map_err(|e| fail(ErrorCode::BadField, e))?,
                )),
                None => None,
            };
            let streaming = spec.is_some();
            match sip.act(call_id, CallAction::Stream(spec)).await {
                Some(Ok(_)) => Ok(if streaming {
                    json!({"call_id": call_id, "streaming": true, "call_sid": agent::call_sid(call_id)})
                } else {
                    json!({"call_id": call_id, "streaming": false})
                }),
                Some(Err(e)) => Err(call_error(kind, e)),
                None => Err(fail(
                    ErrorCode::Unavailable,
                    "the SIP core is not running".into(),
                )),
            }
        }
        CommandKind::Play(p) => {
            let source = play_source(p, shared).map_err(|m| fail(ErrorCode::BadField, m))?;
            match sip.act(&p.call_id, CallAction::Play(source)).await {
                Some(Ok(_)) => Ok(json!({"call_id": p.call_id, "playing": !p.stop})),
                Some(Err(e)) => Err(call_error(kind, e)),
                None => Err(fail(
                    ErrorCode::Unavailable,
                    "the SIP core is not running".into(),
                )),
            }
        }
        CommandKind::Hangup { call_id }
        | CommandKind::Answer { call_id, .. }
        | CommandKind::Reject { call_id, .. }
        | CommandKind::Bridge { call_id, .. }
        | CommandKind::Dtmf { call_id, .. } => {
            let mut result = json!({"call_id": call_id});
            if let CommandKind::Answer { media: Some(m), .. } = kind {
                let action = match rtp_endpoint(m) {
                    Some(endpoint) => CallAction::Attach(endpoint),
                    None => CallAction::Stream(Some(Box::new(
                        agent::agent_spec(
                            m,
                            call_id,
                            &shared.instance_id,
                            shared.prompt_dir.get().map(|p| p.as_path()),
                        )
                        .await
                        .map_err(|e| fail(ErrorCode::BadField, e))?,
                    ))),
                };
                if let (CallAction::Stream(_), Value::Object(map)) = (&action, &mut result) {
                    map.insert(
                        "media".into(),
                        json!({"type": "websocket", "call_sid": agent::call_sid(call_id)}),
                    );
                }
                match sip.act(call_id, action).await {
                    Some(Ok(attached)) => {
                        if let (Some(a), Value::Object(map)) = (attached, &mut result) {
                            map.insert(
                                "media".into(),
                                json!({"host": a.local.ip().to_string(), "port": a.local.port()}),
                            );
                        }
                    }
                    Some(Err(e)) => return Err(call_error(kind, e)),
                    None => {
                        return Err(fail(
                            ErrorCode::Unavailable,
                            "the SIP core is not running".into(),
                        ));
                    }
                }
            }
            let action = match kind {
                CommandKind::Hangup { .. } => CallAction::Hangup,
                CommandKind::Answer { .. } => CallAction::Answer,
                CommandKind::Reject { code, .. } => CallAction::Reject(*code),
                CommandKind::Bridge { other_call_id, .. } => {
                    CallAction::Bridge(other_call_id.clone())
                }
                CommandKind::Dtmf { digits, .. } => CallAction::Dtmf(digits.clone()),
                _ => CallAction::Hangup,
            };
            match kind {
                CommandKind::Bridge { other_call_id, .. } => {
                    if let Value::Object(m) = &mut result {
                        m.insert("other_call_id".into(), Value::String(other_call_id.clone()));
                    }
                }
                CommandKind::Dtmf { digits, .. } => {
                    if let Value::Object(m) = &mut result {
                        m.insert("digits".into(), Value::String(digits.clone()));
                    }
                }
                _ => {}
            }
            match sip.act(call_id, action).await {
                Some(Ok(_)) => Ok(result),
                Some(Err(e)) => Err(call_error(kind, e)),
                None => Err(fail(
                    ErrorCode::Unavailable,
                    "the SIP core is not running".into(),
                )),
            }
        }
    }
}

/// The RTP endpoint a command's `media` names, if it is one.
fn rtp_endpoint(m: &MediaArgs) -> Option<RtpEndpoint> {
    let codec = match m.codec.as_deref() {
        Some(c) if c.eq_ignore_ascii_case("pcma") => Codec::Pcma,
        _ => Codec::Pcmu,
    };
    Some(RtpEndpoint {
        address: std::net::SocketAddr::new(m.host?, m.port?),
        codec,
    })
}

/// What a `play` command plays: `None` stops; a tone; or a WAV file from
/// the prompt directory.
fn play_source(p: &PlayArgs, shared: &Shared) -> Result<Option<Box<Source>>, String> {
    if p.stop {
        return Ok(None);
    }
    if let Some(t) = &p.tone {
        let on = t.on_ms.unwrap_or(0);
        let (on, off) = if on == 0 {
            (u32::try_from(t.duration_ms).unwrap_or(u32::MAX), 0)
        } else {
            (on, t.off_ms.unwrap_or(0))
        };
        let tone = Tone::new(
            &t.freqs,
            t.level_dbm0.unwrap_or(-13.0),
            on,
            off,
            Some(t.duration_ms),
        );
        return Ok(Some(Box::new(Source::tone(tone))));
    }
    let name = p.file.as_deref().unwrap_or_default();
    let dir = shared
        .prompt_dir
        .get()
        .ok_or("args.file: no media.prompt_dir is configured")?;
    let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("args.file {name:?}: {e}"))?;
    let clip = Clip::from_wav(&bytes).map_err(|e| format!("args.file {name:?}: {e}"))?;
    Ok(Some(Box::new(Source::clip(clip, p.loops))))
}

pub(super) fn call_error(kind: &CommandKind, e: CallError) -> CommandError {
    let code = match &e {
        CallError::Unknown(_) | CallError::NotFound(_) => ErrorCode::CallEnded,
        CallError::WrongState { .. } | CallError::NoDialog(_) => ErrorCode::WrongState,
        CallError::Header(_) => ErrorCode::BadField,
        CallError::Full(_)
        | CallError::AccountFull { .. }
        | CallError::CampaignFull { .. }
        | CallError::Media(_) => ErrorCode::Capacity,
        CallError::RingBelowFloor { .. } => ErrorCode::BadField,
        CallError::RateLimited(_) | CallError::AccountRateLimited { .. } => ErrorCode::RateLimited,
        CallError::NameInUse(_) => ErrorCode::CallIdInUse,
        CallError::Send(_) | CallError::NoKeySource | CallError::NoMedia => ErrorCode::Unavailable,
    };
    failure(kind, code, &e.to_string())
}

pub(super) fn place_error(kind: &CommandKind, e: PlaceError) -> CommandError {
    match e {
        PlaceError::Call(c) => call_error(kind, c),
        PlaceError::Uri(m) => failure(kind, ErrorCode::BadField, &format!("args.to: {m}")),
        PlaceError::BridgeTo(name) => failure(
            kind,
            ErrorCode::UnknownCall,
            &format!("args.bridge_to: no live call {name:?} on this instance"),
        ),
        PlaceError::Account(m) | PlaceError::Resolve(m) => {
            failure(kind, ErrorCode::Unavailable, &m)
        }
        PlaceError::Stopped => failure(kind, ErrorCode::Unavailable, "the SIP core stopped"),
    }
}
