//! Answering a command: its result stored, published on its channel and
//! the events stream, its stream entry acknowledged, in that order; and the
//! duplicates parked behind it.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::ops::RedisOp;
use super::wire::error_of;
use super::{Machine, Source};
use crate::control::command::{Command, CommandError, CommandKind, ErrorCode, Scope};
use crate::control::record;

/// Whom a result answers: the command's id and type as read, where its
/// result goes and where it came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addressee<'a> {
    pub(super) id: &'a str,
    pub(super) command: Option<&'a str>,
    pub(super) reply_to: Option<&'a str>,
    pub(super) source: &'a Source,
}

impl<'a> Addressee<'a> {
    /// A valid command from `source`.
    pub(super) fn of(command: &'a Command, source: &'a Source) -> Self {
        Self {
            id: &command.id,
            command: Some(command.kind.name()),
            reply_to: command.reply_to.as_deref(),
            source,
        }
    }
}

impl Machine {
    pub(super) fn unavailable(&mut self, now_ms: u64, token: u64, why: &str) {
        let routed = self.parse_errors.remove(&token);
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        if self.running.get(&p.command.id) == Some(&token) {
            self.running.remove(&p.command.id);
        }
        // Duplicates parked behind it get the same answer (those from a
        // stream are retried from it instead).
        for (dup, source) in p.parked {
            if !source.is_stream() {
                let e = error_of(&dup, ErrorCode::Unavailable, why);
                self.answer_error(now_ms, e, &source, None);
            }
        }
        if p.source.is_stream() {
            return; // retried from the stream
        }
        let mut e = error_of(&p.command, ErrorCode::Unavailable, why);
        if let Some(r) = routed {
            // A parse error's stand-in command is not its type.
            e.command = r.command;
        }
        self.answer_error(now_ms, e, &p.source, None);
    }

    /// The result of a job.
    pub fn completed(&mut self, now_ms: u64, token: u64, result: Result<Value, CommandError>) {
        self.finish(now_ms, token, result);
    }

    pub(super) fn finish(&mut self, now_ms: u64, token: u64, result: Result<Value, CommandError>) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.running.remove(&p.command.id);
        let result = match (result, &p.command.kind) {
            (Ok(mut v), kind)
                if matches!(kind, CommandKind::Originate(_)) || kind.scope() == Scope::Call =>
            {
                if let Value::Object(o) = &mut v {
                    o.entry("instance")
                        .or_insert_with(|| Value::String(self.cfg.instance.clone()));
                }
                Ok(v)
            }
            (Err(e), CommandKind::Originate(_)) => {
                // Not placed: the destination is free again and the record
                // (if created) is closed.
                if let Some(key) = p.destination.clone() {
                    self.push(RedisOp::Del { key });
                }
                if let Some(call) = p.call_id.clone()
                    && self.calls.contains_key(&call)
                    && e.code != ErrorCode::CallIdInUse
                {
                    let fields = record::not_placed(now_ms, &e.message);
                    self.write_record(&call, fields, super::events::Stage::Last);
                    self.calls.remove(&call);
                }
                Err(e)
            }
            (r, _) => r,
        };
        let to = Addressee::of(&p.command, &p.source);
        self.answer(now_ms, &to, result.clone(), false, Some(&p.key));
        for (dup, source) in p.parked {
            self.stats.duplicates += 1;
            let to = Addressee::of(&dup, &source);
            self.answer(now_ms, &to, result.clone(), true, None);
        }
    }

    pub(super) fn answer_error(
        &mut self,
        now_ms: u64,
        e: CommandError,
        source: &Source,
        store: Option<&str>,
    ) {
        let (id, command, reply_to) = (e.id.clone(), e.command.clone(), e.reply_to.clone());
        let to = Addressee {
            id: id.as_deref().unwrap_or_default(),
            command: command.as_deref(),
            reply_to: reply_to.as_deref(),
            source,
        };
        self.answer(now_ms, &to, Err(e), false, store);
    }

    /// Publishes a result (on `reply_to` or the events channel, and on the
    /// events stream), stores it under `store`, and acknowledges a stream
    /// entry — in this order.
    pub(super) fn answer(
        &mut self,
        now_ms: u64,
        to: &Addressee<'_>,
        result: Result<Value, CommandError>,
        duplicate: bool,
        store: Option<&str>,
    ) {
        let mut body = Map::new();
        body.insert("ok".into(), Value::Bool(result.is_ok()));
        match &result {
            Ok(v) => {
                body.insert("result".into(), v.clone());
                self.stats.ok += 1;
            }
            Err(e) => {
                body.insert(
                    "error".into(),
                    json!({"code": e.code.as_str(), "message": e.message, "retryable": e.code.retryable()}),
                );
                self.stats.failed += 1;
            }
        }
        if let Some(key) = store {
            self.push(RedisOp::Set {
                key: key.to_owned(),
                value: Value::Object(body.clone()).to_string(),
                ms: self.cfg.dedup_window_ms,
            });
        }
        let mut message = json!({
            "v": 1, "type": "command.result", "instance": self.cfg.instance, "boot": self.cfg.boot,
            "ts_ms": now_ms, "id": (!to.id.is_empty()).then_some(to.id), "command": to.command,
        });
        if let Value::Object(m) = &mut message {
            m.extend(body);
            if duplicate {
                m.insert("duplicate".into(), Value::Bool(true));
            }
        }
        let payload: Arc<str> = Arc::from(message.to_string());
        let channel = to
            .reply_to
            .map_or_else(|| self.cfg.events_channel(), str::to_owned);
        self.push(RedisOp::Publish {
            channel,
            payload: payload.clone(),
        });
        self.push(RedisOp::XAdd {
            stream: self.cfg.events_stream(),
            maxlen: self.cfg.events_maxlen,
            field: "event",
            payload,
        });
        if let Source::Stream { stream, entry, .. } = to.source {
            self.push(RedisOp::XAck {
                stream: stream.clone(),
                entry: entry.clone(),
            });
        }
    }
}
