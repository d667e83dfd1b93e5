//! Events (stamped with the instance, the boot id and a gap-free `seq`),
//! call records written on every transition, and the start-up recovery of
//! the calls a previous run left open.

use serde_json::{Value, json};
use std::sync::Arc;

use super::Machine;
use super::ops::{Op, RedisOp, Reply, Step, is_stream_add, pairs};
use crate::control::record;
use crate::events::{CoreEvent, Stamped};

/// Where a record write is in the call's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// The call's first write in this run.
    First,
    /// A transition in between.
    Update,
    /// The call ended.
    Last,
}

impl Machine {
    /// Queues an event of `kind` with `fields`, stamped with `at_ms`.
    pub fn event(&mut self, at_ms: u64, kind: &str, fields: Value) {
        self.seq += 1;
        let mut event = json!({
            "v": 1, "type": kind, "instance": self.cfg.instance, "boot": self.cfg.boot,
            "seq": self.seq, "ts_ms": at_ms,
        });
        if let (Value::Object(e), Value::Object(f)) = (&mut event, fields) {
            e.extend(f);
        }
        let payload: Arc<str> = Arc::from(event.to_string());
        while self.events.len() + 2 > self.cfg.event_buffer.max(2) {
            // The oldest event goes (its publish and its stream entry).
            self.events.pop_front();
            if self.events.front().is_some_and(is_stream_add) {
                self.events.pop_front();
            }
            self.dropped_since_report += 1;
            self.stats.events_dropped += 1;
        }
        self.events.push_back(Op {
            event: true,
            ..Op::fire(RedisOp::Publish {
                channel: self.cfg.events_channel(),
                payload: payload.clone(),
            })
        });
        self.events.push_back(Op {
            event: true,
            ..Op::fire(RedisOp::XAdd {
                stream: self.cfg.events_stream(),
                maxlen: self.cfg.events_maxlen,
                field: "event",
                payload,
            })
        });
    }

    /// A transition from the SIP core: an event, and the call's record.
    pub fn core_event(&mut self, stamped: Stamped) {
        let at = stamped.at_ms;
        match stamped.event {
            CoreEvent::Registration(a) => {
                let fields = json!({
                    "account": a.name, "state": a.state, "code": a.code, "reason": a.last_error,
                    "expires_at_ms": a.expires_at_unix_ms, "retry_at_ms": a.retry_at_unix_ms,
                });
                self.event(at, "registration.state", fields);
            }
            CoreEvent::Call(c) => {
                let name = c.name.to_string();
                let first = !self.calls.contains_key(&name);
                let created = *self
                    .calls
                    .entry(name.clone())
                    .or_insert_with(|| at.saturating_sub(c.elapsed_ms));
                let rec = record::of_event(&c, at, created, &self.cfg.instance, &self.cfg.boot);
                let ended = c.ended.is_some();
                let kind = format!("call.{}", c.state.label());
                self.event(at, &kind, record::event_fields(&c, at, created));
                let stage = match (first, ended) {
                    (_, true) => Stage::Last,
                    (true, false) => Stage::First,
                    (false, false) => Stage::Update,
                };
                self.write_record(&name, rec, stage);
                if ended {
                    self.calls.remove(&name);
                }
            }
            CoreEvent::Note(n) => match n.kind {
                crate::call::NoteKind::Dtmf { digit, duration_ms } => self.event(
                    at,
                    "call.dtmf",
                    json!({"call_id": &*n.name, "digit": digit.to_string(), "duration_ms": duration_ms, "via": "info"}),
                ),
                crate::call::NoteKind::Media {
                    codec,
                    local_port,
                    remote,
                } => self.event(
                    at,
                    "call.media",
                    json!({"call_id": &*n.name, "codec": codec, "local_port": local_port, "remote": remote}),
                ),
            },
            CoreEvent::Media(m) => self.media_event(at, m),
            CoreEvent::Progress { kind, name, fields } => {
                let mut fields = fields;
                if let Some(m) = fields.as_object_mut() {
                    m.insert("call_id".into(), serde_json::Value::from(&*name));
                    if kind == "call.amd"
                        && let Some(result) = m.get("result").and_then(|r| r.as_str())
                        && matches!(result, "human" | "machine" | "unknown" | "fax" | "sit")
                    {
                        let verdict = vec![("amd", result.to_owned())];
                        self.write_record(&name, verdict, Stage::Update);
                    }
                }
                self.event(at, kind, fields);
            }
        }
    }

    /// A media shard's report: `call.dtmf` for a telephone-event digit,
    /// `call.media` for the rest; a leg's closing totals also go into the
    /// call's record (field `media`, or `media_endpoint`).
    fn media_event(&mut self, at: u64, m: crate::media::MediaEvent) {
        use crate::media::MediaEventKind;
        let leg = if m.leg & crate::media::ENDPOINT_BIT != 0 {
            "endpoint"
        } else {
            "call"
        };
        match m.kind {
            MediaEventKind::Dtmf { digit, duration_ms } => self.event(
                at,
                "call.dtmf",
                json!({"call_id": &*m.name, "digit": digit.to_string(), "duration_ms": duration_ms, "via": "rtp"}),
            ),
            MediaEventKind::Closed { stats } => {
                let totals = serde_json::to_value(&stats).unwrap_or_default();
                let field = if leg == "endpoint" { "media_endpoint" } else { "media" };
                self.write_record(&m.name, vec![(field, totals.to_string())], Stage::Update);
                self.event(
                    at,
                    "call.media",
                    json!({"call_id": &*m.name, "leg": leg, "report": "totals", "totals": totals}),
                );
            }
            kind => {
                let mut fields = json!({"call_id": &*m.name, "leg": leg});
                if let (Some(map), Ok(serde_json::Value::Object(extra))) =
                    (fields.as_object_mut(), serde_json::to_value(&kind))
                {
                    for (k, v) in extra {
                        let k = if k == "kind" { "report".to_owned() } else { k };
                        map.insert(k, v);
                    }
                }
                self.event(at, "call.media", fields);
            }
        }
    }

    /// Writes a call's record: on its first write in this run it joins the
    /// live set and gets the safety TTL; on its last it leaves the set and
    /// gets the ended TTL; in between only the fields change.
    pub(super) fn write_record(
        &mut self,
        name: &str,
        fields: Vec<(&'static str, String)>,
        stage: Stage,
    ) {
        let key = self.cfg.record_key(name);
        let ms = match stage {
            Stage::First => Some(self.cfg.record_ttl_ms + self.cfg.max_duration_ms),
            Stage::Update => None,
            Stage::Last => Some(self.cfg.record_ttl_ms),
        };
        self.push(RedisOp::HSet { key, fields, ms });
        let key = self.cfg.live_set();
        let member = name.to_owned();
        match stage {
            Stage::First => self.push(RedisOp::SAdd { key, member }),
            Stage::Update => {}
            Stage::Last => self.push(RedisOp::SRem { key, member }),
        }
    }

    pub(super) fn on_recover(&mut self, reply: &Reply) {
        let Reply::List(members) = reply else {
            return;
        };
        for call in members {
            if self.calls.contains_key(call) {
                continue;
            }
            let token = self.token();
            self.recovering.insert(token, call.clone());
            let key = self.cfg.record_key(call);
            self.ask(token, Step::RecoverRecord, RedisOp::HGetAll { key });
        }
    }

    pub(super) fn on_recover_record(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let Some(call) = self.recovering.remove(&token) else {
            return;
        };
        let fields = pairs(reply);
        let set = self.cfg.live_set();
        let stale = fields.get("boot").is_none_or(|b| *b != self.cfg.boot)
            && fields.get("state").is_none_or(|s| s != "ended");
        if fields.is_empty() || !stale {
            if fields.get("boot").is_none_or(|b| *b != self.cfg.boot) {
                self.push(RedisOp::SRem {
                    key: set,
                    member: call,
                });
            }
            return;
        }
        let closed = record::restart_closed(&fields, now_ms);
        let event = record::restart_event(&call, &fields, now_ms);
        self.event(now_ms, "call.ended", event);
        self.write_record(&call, closed, Stage::Last);
    }
}
