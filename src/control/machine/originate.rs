//! The steps of an `originate` before its INVITE: its campaign's gate, the
//! destination window, then the call record and the live set, then the job.

use serde_json::{Value, json};

use super::ops::{RedisOp, Reply, Step, pairs};
use super::wire::error_of;
use super::{Job, Machine};
use crate::control::command::{CommandKind, ErrorCode};
use crate::control::record;

impl Machine {
    /// The campaign's gate flag: absent, the originate goes on; set, it is
    /// refused; unreadable (an error reply), it is refused too (fail
    /// closed). A refusal leaves no record and no destination key.
    pub(super) fn on_gate(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        if *reply == Reply::Nil {
            self.check_destination(token);
            return;
        }
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let campaign = match &p.command.kind {
            CommandKind::Originate(o) => o.campaign.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let message = match reply {
            Reply::Error(e) => return self.gate_unreadable(now_ms, token, e),
            _ => format!(
                "campaign {campaign:?} is gated (its flag {} is set)",
                self.cfg.gate_key(&campaign)
            ),
        };
        let e = error_of(&p.command, ErrorCode::CampaignGated, &message);
        self.finish(now_ms, token, Err(e));
    }

    /// The campaign gate of `token`'s originate could not be read (`why`):
    /// refused, fail closed.
    pub(super) fn gate_unreadable(&mut self, now_ms: u64, token: u64, why: &str) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let campaign = match &p.command.kind {
            CommandKind::Originate(o) => o.campaign.clone().unwrap_or_default(),
            _ => String::new(),
        };
        tracing::warn!(
            campaign = %campaign,
            command = %p.command.id,
            error = %why,
            "campaign gate unreadable; originate refused (fail closed)"
        );
        let message =
            format!("the gate of campaign {campaign:?} could not be read; refused (fail closed)");
        let e = error_of(&p.command, ErrorCode::CampaignGated, &message);
        self.finish(now_ms, token, Err(e));
    }

    /// Gate reads queued or in flight when the connection was lost: their
    /// originates are refused rather than read after the reconnection.
    pub(super) fn refuse_unread_gates(&mut self, now_ms: u64) {
        let tokens: Vec<u64> = self
            .ops
            .iter()
            .filter_map(|op| match op.wait {
                Some((token, Step::Gate)) => Some(token),
                _ => None,
            })
            .collect();
        if tokens.is_empty() {
            return;
        }
        self.ops
            .retain(|op| !matches!(op.wait, Some((_, Step::Gate))));
        for token in tokens {
            self.gate_unreadable(now_ms, token, "the connection to Redis was lost");
        }
    }

    /// The destination window (unless off or forced), then the record.
    pub(super) fn check_destination(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let CommandKind::Originate(o) = &p.command.kind else {
            return;
        };
        if self.cfg.destination_window_ms == 0 || o.force {
            self.create_record(token);
            return;
        }
        let key = self.cfg.key(&format!("dest:{}", o.to));
        let value = p.call_id.clone().unwrap_or_else(|| p.command.id.clone());
        p.destination = Some(key.clone());
        let ms = self.cfg.destination_window_ms;
        self.ask(token, Step::Destination, RedisOp::SetNx { key, value, ms });
    }

    pub(super) fn on_destination(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        match reply {
            Reply::Nil => {
                // Taken: by another call, or by this very command in a run
                // that died before answering it (the key holds the call id).
                let Some(key) = self.pending.get(&token).and_then(|p| p.destination.clone()) else {
                    return;
                };
                self.ask(token, Step::DestinationHolder, RedisOp::Get { key });
            }
            Reply::Error(_) => {
                self.unavailable(now_ms, token, "Redis refused the destination check")
            }
            _ => self.create_record(token),
        }
    }

    /// Who holds the destination: this command's own call goes on (its
    /// record decides whether it was placed), another call refuses it.
    pub(super) fn on_destination_holder(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let ours = self
            .pending
            .get(&token)
            .and_then(|p| p.call_id.as_deref())
            .is_some_and(|call| *reply == Reply::Text(call.to_owned()));
        match reply {
            _ if ours => self.create_record(token),
            Reply::Error(_) => {
                self.unavailable(now_ms, token, "Redis refused the destination check")
            }
            _ => {
                let Some(p) = self.pending.get_mut(&token) else {
                    return;
                };
                p.destination = None;
                let to = match &p.command.kind {
                    CommandKind::Originate(o) => o.to.clone(),
                    _ => String::new(),
                };
                let e = error_of(
                    &p.command,
                    ErrorCode::DuplicateDestination,
                    &format!(
                        "{to} was dialed within the last {} s (send force: true to dial anyway)",
                        self.cfg.destination_window_ms / 1000
                    ),
                );
                self.finish(now_ms, token, Err(e));
            }
        }
    }

    pub(super) fn create_record(&mut self, token: u64) {
        let Some(call_id) = self.pending.get(&token).and_then(|p| p.call_id.clone()) else {
            return;
        };
        let key = self.cfg.record_key(&call_id);
        let value = self.cfg.instance.clone();
        self.ask(
            token,
            Step::Record,
            RedisOp::HSetNx {
                key,
                field: "instance",
                value,
            },
        );
    }

    pub(super) fn on_record(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        match reply {
            Reply::Int(1) => self.write_new_record(now_ms, token),
            Reply::Error(_) => self.unavailable(now_ms, token, "Redis refused the call record"),
            _ => {
                // The record exists: this originate ran before (its
                // instance died before answering), or the id is taken.
                let key = self
                    .cfg
                    .record_key(p.call_id.as_deref().unwrap_or_default());
                self.ask(token, Step::RecordExisting, RedisOp::HGetAll { key });
            }
        }
    }

    /// Writes the record's fields and the live set; the job goes out on the
    /// reply of the SADD, so the INVITE leaves only once both are written.
    fn write_new_record(&mut self, now_ms: u64, token: u64) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let CommandKind::Originate(o) = &p.command.kind else {
            return;
        };
        let call_id = p.call_id.clone().unwrap_or_default();
        let fields = record::created(
            &call_id,
            &p.command.id,
            o,
            &self.cfg.instance,
            &self.cfg.boot,
            now_ms,
        );
        let key = self.cfg.record_key(&call_id);
        let ms = Some(self.cfg.record_ttl_ms + self.cfg.max_duration_ms);
        self.push(RedisOp::HSet { key, fields, ms });
        let set = self.cfg.live_set();
        let member = call_id.clone();
        self.ask(token, Step::Recorded, RedisOp::SAdd { key: set, member });
        self.calls.insert(call_id, now_ms);
    }

    /// A record already exists for the call id. Written by this command
    /// in a run that died: without its fields, that run stopped before its
    /// INVITE, and the call is placed now; with them, the call was placed
    /// (or was about to be) and is not dialed again: a record left open is
    /// closed `daemon_restart`. Written by another command: `call_id_in_use`.
    pub(super) fn on_existing_record(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let fields = pairs(reply);
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let call_id = p.call_id.clone().unwrap_or_default();
        // A record with no fields but its claim is an originate that died
        // right after claiming it; one with fields but no command is
        // another call (inbound).
        let ours = match fields.get("command_id") {
            Some(c) => *c == p.command.id,
            None => !fields.contains_key("state"),
        };
        if !ours {
            let e = error_of(
                &p.command,
                ErrorCode::CallIdInUse,
                &format!("call {call_id:?} already has a record (a call id is used once)"),
            );
            if let Some(key) = p.destination.take() {
                self.push(RedisOp::Del { key });
            }
            self.finish(now_ms, token, Err(e));
            return;
        }
        if !fields.contains_key("state") {
            self.write_new_record(now_ms, token);
            return;
        }
        let open = fields.get("state").is_some_and(|s| s != "ended");
        let previous_run = fields.get("boot").is_some_and(|b| *b != self.cfg.boot);
        if open && previous_run {
            let closed = record::restart_closed(&fields, now_ms);
            let event = record::restart_event(&call_id, &fields, now_ms);
            self.event(now_ms, "call.ended", event);
            self.write_record(&call_id, closed, super::events::Stage::Last);
        }
        let instance = fields
            .get("instance")
            .map_or(Value::Null, |i| Value::String(i.clone()));
        let result = json!({"call_id": call_id, "instance": instance, "placed_before": true});
        self.finish(now_ms, token, Ok(result));
    }

    /// The record of an originate is written: its job goes out.
    pub(super) fn on_recorded(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        if matches!(reply, Reply::Error(_)) {
            let e = error_of(
                &p.command,
                ErrorCode::Unavailable,
                "Redis refused the call record",
            );
            self.finish(now_ms, token, Err(e));
            return;
        }
        let command = p.command.clone();
        self.jobs.push_back(Job { token, command });
    }
}
