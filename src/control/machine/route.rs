//! A received command: parsed, checked for expiry, routed to the instance
//! that owns its account or call (or forwarded, or answered), and claimed
//! by its id.

use std::sync::Arc;

use super::answer::Addressee;
use super::ops::{Op, RedisOp, Reply, Step, pairs, text};
use super::wire::{envelope, error_of, placeholder, stored_result};
use super::{Job, Machine, Pending, Source};
use crate::control::command::{self, CommandKind, ErrorCode, Scope};
use crate::control::record;

impl Machine {
    /// A payload from a command channel or stream. `entry_ms` is the stream
    /// entry's time (from its id), if it came from a stream.
    pub fn receive(&mut self, now_ms: u64, source: Source, payload: &[u8], entry_ms: Option<u64>) {
        let command = match command::parse(payload, &self.cfg.prefix) {
            Ok(c) => c,
            Err(e) => {
                // Nothing to claim: answered once here; a broadcast parse
                // error is answered by every instance that reads it only if
                // it names no readable id (then no dedup is possible).
                if source == Source::Broadcast && e.id.is_some() {
                    let token = self.token();
                    let key = self
                        .cfg
                        .key(&format!("cmd:{}", e.id.clone().unwrap_or_default()));
                    let marker = self.cfg.pending_marker();
                    // Only the instance that claims the id answers.
                    self.pending.insert(
                        token,
                        Pending {
                            command: placeholder(&e),
                            source,
                            key: key.clone(),
                            entry_ms,
                            parked: Vec::new(),
                            call_id: None,
                            destination: None,
                            claims: 0,
                        },
                    );
                    self.parse_errors.insert(token, e);
                    self.ask(
                        token,
                        Step::Claim,
                        RedisOp::SetNx {
                            key,
                            value: marker,
                            ms: self.cfg.lease_ms,
                        },
                    );
                    return;
                }
                self.answer_error(now_ms, e, &source, None);
                return;
            }
        };
        let expired = command.not_after.is_some_and(|t| now_ms > t)
            || entry_ms.is_some_and(|t| now_ms.saturating_sub(t) > self.cfg.stream_max_age_ms);
        // On the broadcast channel every instance reads it: the one that
        // claims the id answers `expired` (below).
        let answered_once = source == Source::Broadcast && command.kind.scope() != Scope::Instance;
        if expired && !answered_once {
            let e = error_of(
                &command,
                ErrorCode::Expired,
                "the command expired before it could run",
            );
            self.answer_error(now_ms, e, &source, None);
            return;
        }
        let scope = command.kind.scope();
        let key = match scope {
            Scope::Instance => self
                .cfg
                .key(&format!("{}:cmd:{}", self.cfg.instance, command.id)),
            _ => self.cfg.key(&format!("cmd:{}", command.id)),
        };
        let token = self.token();
        let route = match scope {
            Scope::Instance | Scope::Any => None,
            Scope::Account => {
                let account = command.kind.account().unwrap_or_default().to_owned();
                (!self.holds(&account)).then(|| RedisOp::Get {
                    key: self.cfg.account_key(&account),
                })
            }
            Scope::Call => {
                let call = command.kind.call_id().unwrap_or_default().to_owned();
                (!self.calls.contains_key(&call)).then(|| RedisOp::HGetAll {
                    key: self.cfg.record_key(&call),
                })
            }
        };
        self.pending.insert(
            token,
            Pending {
                command,
                source,
                key,
                entry_ms,
                parked: Vec::new(),
                call_id: None,
                destination: None,
                claims: 0,
            },
        );
        if expired {
            let message = "the command expired before it could run".to_owned();
            self.fail_after_claim(token, ErrorCode::Expired, message);
            return;
        }
        match route {
            Some(op) => {
                let step = if matches!(op, RedisOp::Get { .. }) {
                    Step::Owner
                } else {
                    Step::RecordOwner
                };
                self.ask(token, step, op);
            }
            None => self.claim(token),
        }
    }

    pub(super) fn claim(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        p.claims += 1;
        let op = RedisOp::SetNx {
            key: p.key.clone(),
            value: self.cfg.pending_marker(),
            ms: self.cfg.lease_ms,
        };
        self.ask(token, Step::Claim, op);
    }

    /// The reply to an operation of a batch (in the order of the batch).
    pub fn on_reply(&mut self, now_ms: u64, op: &Op, reply: Reply) {
        let Some((token, step)) = op.wait else {
            if let Reply::Error(e) = reply {
                tracing::debug!(op = ?op.op, error = %e, "Redis refused an operation");
            }
            return;
        };
        match step {
            Step::Owner | Step::RecordOwner if matches!(reply, Reply::Error(_)) => {
                self.unavailable(now_ms, token, "Redis refused the owner lookup");
            }
            Step::Owner => self.on_owner(now_ms, token, text(&reply)),
            Step::RecordOwner => {
                let fields = pairs(&reply);
                let owner = fields.get("instance").cloned();
                let state = fields.get("state").cloned();
                self.on_call_owner(now_ms, token, owner, state);
            }
            Step::Claim => self.on_claim(now_ms, token, &reply),
            Step::Check => self.on_check(now_ms, token, text(&reply)),
            Step::Gate => self.on_gate(now_ms, token, &reply),
            Step::Destination => self.on_destination(now_ms, token, &reply),
            Step::DestinationHolder => self.on_destination_holder(now_ms, token, &reply),
            Step::Record => self.on_record(now_ms, token, &reply),
            Step::RecordExisting => self.on_existing_record(now_ms, token, &reply),
            Step::Recorded => self.on_recorded(now_ms, token, &reply),
            Step::Status => self.on_status(now_ms, token, &reply),
            Step::Recover => self.on_recover(&reply),
            Step::RecoverRecord => self.on_recover_record(now_ms, token, &reply),
        }
    }

    /// Where an account command goes when the account is not ours.
    pub(super) fn on_owner(&mut self, now_ms: u64, token: u64, owner: Option<String>) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let account = p.command.kind.account().unwrap_or_default().to_owned();
        match owner {
            Some(owner) if owner != self.cfg.instance => {
                self.elsewhere(
                    now_ms,
                    token,
                    &owner,
                    &format!("account {account:?} is on instance {owner:?}"),
                    ErrorCode::UnknownAccount,
                );
            }
            _ if self.cfg.accounts.contains(&account) => {
                // Configured here and held by nobody else (a lease between
                // holders): run here.
                self.claim(token);
            }
            _ => {
                // No instance has it: answered once (claimed), unknown.
                self.fail_after_claim(
                    token,
                    ErrorCode::UnknownAccount,
                    format!("no instance has an account named {account:?}"),
                );
            }
        }
    }

    /// Where a call command goes when the call is not live here.
    pub(super) fn on_call_owner(
        &mut self,
        now_ms: u64,
        token: u64,
        owner: Option<String>,
        state: Option<String>,
    ) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let call = p.command.kind.call_id().unwrap_or_default().to_owned();
        let any = p.command.kind.scope() == Scope::Any;
        match owner {
            Some(owner) if owner != self.cfg.instance && !any => {
                self.elsewhere(
                    now_ms,
                    token,
                    &owner,
                    &format!("call {call:?} is on instance {owner:?}"),
                    ErrorCode::UnknownCall,
                );
            }
            Some(_) if any => self.claim(token),
            Some(_) if state.as_deref() == Some("ended") => {
                self.fail_after_claim(
                    token,
                    ErrorCode::CallEnded,
                    format!("call {call:?} has ended"),
                );
            }
            // Ours and not ended: its events may not have arrived yet.
            Some(_) => self.claim(token),
            None => {
                self.fail_after_claim(token, ErrorCode::UnknownCall, format!("no call {call:?}"))
            }
        }
    }

    /// A command for something another instance has: ignored on the
    /// broadcast channel, forwarded from the shared stream, answered
    /// otherwise.
    pub(super) fn elsewhere(
        &mut self,
        now_ms: u64,
        token: u64,
        owner: &str,
        why: &str,
        code: ErrorCode,
    ) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        match &p.source {
            Source::Broadcast => {}
            Source::Stream {
                stream,
                entry,
                shared: true,
            } => {
                // The copy keeps the original's deadline: its age counts
                // from the first entry, not from the forwarded one.
                let mut command = p.command.clone();
                if let Some(at) = p.entry_ms {
                    let deadline = at.saturating_add(self.cfg.stream_max_age_ms);
                    command.not_after =
                        Some(command.not_after.map_or(deadline, |t| t.min(deadline)));
                }
                if let Ok(text) = serde_json::to_string(&envelope(&command)) {
                    self.push(RedisOp::XAdd {
                        stream: self.cfg.stream_of(owner),
                        maxlen: 0,
                        field: "cmd",
                        payload: Arc::from(text),
                    });
                }
                self.push(RedisOp::XAck {
                    stream: stream.clone(),
                    entry: entry.clone(),
                });
            }
            _ => {
                let e = error_of(&p.command, code, why);
                self.answer_error(now_ms, e, &p.source, None);
            }
        }
    }

    /// Claims the id, then answers `code` (so that of many instances that
    /// read a broadcast, exactly one answers).
    pub(super) fn fail_after_claim(&mut self, token: u64, code: ErrorCode, message: String) {
        if let Some(p) = self.pending.get(&token) {
            let e = error_of(&p.command, code, &message);
            self.parse_errors.insert(token, e);
        }
        self.claim(token);
    }

    pub(super) fn on_claim(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        if matches!(reply, Reply::Error(_)) {
            self.unavailable(now_ms, token, "Redis refused the claim");
            return;
        }
        if *reply != Reply::Nil {
            // Claimed: run it (or answer the error found while routing).
            self.claimed(now_ms, token);
            return;
        }
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let key = p.key.clone();
        // Ours and still running: answered when it finishes. Parked now,
        // not after a GET: the run may finish while the GET is on its way,
        // which would then find our claim and run it a second time.
        let first = self.running.get(&p.command.id).copied();
        if let Some(first) = first
            && first != token
            && self.pending.get(&first).is_some_and(|f| f.key == key)
        {
            self.parse_errors.remove(&token);
            if let Some(p) = self.pending.remove(&token)
                && let Some(f) = self.pending.get_mut(&first)
            {
                f.parked.push((p.command, p.source));
            }
            return;
        }
        self.ask(token, Step::Check, RedisOp::Get { key });
    }

    pub(super) fn claimed(&mut self, now_ms: u64, token: u64) {
        if let Some(e) = self.parse_errors.remove(&token) {
            let Some(p) = self.pending.remove(&token) else {
                return;
            };
            self.answer_error(now_ms, e, &p.source, Some(&p.key));
            return;
        }
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        self.running.insert(p.command.id.clone(), token);
        if let CommandKind::Originate(o) = &p.command.kind {
            p.call_id = Some(o.call_id.clone().unwrap_or_else(|| p.command.id.clone()));
            // A campaign's gate first: a closed one leaves nothing behind.
            match o.campaign.as_deref().map(|c| self.cfg.gate_key(c)) {
                Some(key) => self.ask(token, Step::Gate, RedisOp::Get { key }),
                None => self.check_destination(token),
            }
            return;
        }
        if let CommandKind::CallStatus { call_id } = &p.command.kind {
            let key = self.cfg.record_key(call_id);
            self.ask(token, Step::Status, RedisOp::HGetAll { key });
            return;
        }
        let job = Job {
            token,
            command: p.command.clone(),
        };
        self.jobs.push_back(job);
    }

    pub(super) fn on_check(&mut self, now_ms: u64, token: u64, stored: Option<String>) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let marker = self.cfg.pending_marker();
        match stored {
            None if p.claims < 3 => self.claim(token),
            None => self.unavailable(now_ms, token, "the claim of this id keeps vanishing"),
            Some(s) if s == marker => {
                let id = p.command.id.clone();
                match self.running.get(&id).copied() {
                    // Ours, running: answered when it finishes.
                    Some(first) if first != token => {
                        if let Some(p) = self.pending.remove(&token)
                            && let Some(f) = self.pending.get_mut(&first)
                        {
                            f.parked.push((p.command, p.source));
                        }
                    }
                    // Our own claim, sent again after a reconnection.
                    _ => self.claimed(now_ms, token),
                }
            }
            Some(s) if s.starts_with("pending:") => {
                let Some(p) = self.pending.remove(&token) else {
                    return;
                };
                // A broadcast parse error is claimed under `<p>:cmd:<id>`
                // (its placeholder command is instance-scoped).
                let parse_error = self.parse_errors.remove(&token).is_some();
                if p.source.is_stream() {
                    // Left pending in the stream: claimed again after the
                    // lease, when the result is stored or the claim lapsed.
                    return;
                }
                if p.source == Source::Broadcast
                    && (p.command.kind.scope() != Scope::Instance || parse_error)
                {
                    // Another instance won the claim and answers.
                    return;
                }
                let e = error_of(
                    &p.command,
                    ErrorCode::InProgress,
                    "this id is being executed by another instance",
                );
                self.answer_error(now_ms, e, &p.source, None);
            }
            Some(s) => {
                let Some(p) = self.pending.remove(&token) else {
                    return;
                };
                let parse_error = self.parse_errors.remove(&token).is_some();
                if p.source == Source::Broadcast
                    && (p.command.kind.scope() != Scope::Instance || parse_error)
                {
                    // The instance that executed it answered it.
                    return;
                }
                let result = stored_result(&p.command, &s);
                self.stats.duplicates += 1;
                let to = Addressee::of(&p.command, &p.source);
                self.answer(now_ms, &to, result, true, None);
            }
        }
    }

    pub(super) fn on_status(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let fields = pairs(reply);
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let result = if fields.is_empty() {
            let call = p.command.kind.call_id().unwrap_or_default();
            Err(error_of(
                &p.command,
                ErrorCode::UnknownCall,
                &format!("no call {call:?}"),
            ))
        } else {
            Ok(record::to_json(&fields))
        };
        self.finish(now_ms, token, result);
    }
}
