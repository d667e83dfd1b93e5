//! The control core, sans-IO: commands in (with where they came from),
//! Redis operations, jobs and answers out. It owns the idempotency state,
//! the event sequence, the call records and the outbox; the I/O shell
//! (`channel.rs`) runs the operations (pipelined, in order) and feeds their
//! replies back, runs the jobs and reports their results. No sockets, no
//! clock (`now_ms` comes in), no randomness (the boot id comes in).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::command::{self, Command, CommandError, CommandKind, ErrorCode, Scope};
use super::record;
use crate::events::{CoreEvent, Stamped};

/// The control core's settings.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// `redis.prefix`.
    pub prefix: String,
    /// This instance's id.
    pub instance: String,
    /// This run's id.
    pub boot: String,
    /// How long results are kept (idempotency), ms.
    pub dedup_window_ms: u64,
    /// How long a claim lasts, ms.
    pub lease_ms: u64,
    /// Oldest stream command executed, ms.
    pub stream_max_age_ms: u64,
    /// Destination dedup window, ms (0: off).
    pub destination_window_ms: u64,
    /// How long an ended call's record is kept, ms.
    pub record_ttl_ms: u64,
    /// Longest call, ms (a live record's safety TTL adds this).
    pub max_duration_ms: u64,
    /// Approximate length of the events stream.
    pub events_maxlen: u64,
    /// Events kept while Redis is away.
    pub event_buffer: usize,
    /// Accounts this instance has.
    pub accounts: HashSet<String>,
}

impl MachineConfig {
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The broadcast command channel.
    pub fn broadcast_channel(&self) -> String {
        self.key("cmd")
    }

    /// This instance's command channel.
    pub fn instance_channel(&self) -> String {
        self.key(&format!("{}:cmd", self.instance))
    }

    /// The shared command stream.
    pub fn shared_stream(&self) -> String {
        self.key("cmdq")
    }

    /// This instance's command stream.
    pub fn instance_stream(&self) -> String {
        self.stream_of(&self.instance)
    }

    /// Instance `i`'s command stream.
    pub fn stream_of(&self, i: &str) -> String {
        self.key(&format!("{i}:cmdq"))
    }

    /// The events channel.
    pub fn events_channel(&self) -> String {
        self.key("events")
    }

    /// The events stream.
    pub fn events_stream(&self) -> String {
        self.key("events:stream")
    }

    /// The set of this instance's calls that are not ended.
    pub fn live_set(&self) -> String {
        self.key(&format!("{}:calls", self.instance))
    }

    /// A call's record.
    pub fn record_key(&self, call: &str) -> String {
        self.key(&format!("call:{call}"))
    }

    /// The key that says which instance has `account`.
    pub fn account_key(&self, account: &str) -> String {
        self.key(&format!("account:{account}"))
    }

    /// This instance's status key.
    pub fn status_key(&self) -> String {
        self.key(&format!("{}:status", self.instance))
    }

    /// The last writer's status key.
    pub fn last_status_key(&self) -> String {
        self.key("sip_status")
    }

    fn pending_marker(&self) -> String {
        format!("pending:{}:{}", self.instance, self.boot)
    }
}

/// The consumer group of the command streams.
pub const GROUP: &str = "dialerd";

/// Where a command came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `<p>:cmd`.
    Broadcast,
    /// `<p>:<i>:cmd`.
    Instance,
    /// A command stream entry.
    Stream {
        /// The stream's key.
        stream: String,
        /// The entry id.
        entry: String,
        /// Whether it is the shared stream `<p>:cmdq`.
        shared: bool,
    },
}

impl Source {
    fn is_stream(&self) -> bool {
        matches!(self, Source::Stream { .. })
    }
}

/// One Redis operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOp {
    /// `PUBLISH channel payload`.
    Publish {
        /// Channel.
        channel: String,
        /// Payload.
        payload: Arc<str>,
    },
    /// `XADD stream MAXLEN ~ maxlen * field payload` (no trimming at 0).
    XAdd {
        /// Stream.
        stream: String,
        /// Approximate length kept.
        maxlen: u64,
        /// Field name.
        field: &'static str,
        /// Payload.
        payload: Arc<str>,
    },
    /// `SET key value NX PX ms` (reply: OK or nil).
    SetNx {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// TTL.
        ms: u64,
    },
    /// `SET key value PX ms`.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// TTL.
        ms: u64,
    },
    /// `GET key`.
    Get {
        /// Key.
        key: String,
    },
    /// `DEL key`.
    Del {
        /// Key.
        key: String,
    },
    /// `HSETNX key field value` (reply: 1 or 0).
    HSetNx {
        /// Key.
        key: String,
        /// Field.
        field: &'static str,
        /// Value.
        value: String,
    },
    /// `HSET key f v ...` then `PEXPIRE key ms`.
    HSet {
        /// Key.
        key: String,
        /// Fields.
        fields: Vec<(&'static str, String)>,
        /// TTL.
        ms: u64,
    },
    /// `HGETALL key`.
    HGetAll {
        /// Key.
        key: String,
    },
    /// `SADD key member`.
    SAdd {
        /// Key.
        key: String,
        /// Member.
        member: String,
    },
    /// `SREM key member`.
    SRem {
        /// Key.
        key: String,
        /// Member.
        member: String,
    },
    /// `SMEMBERS key`.
    SMembers {
        /// Key.
        key: String,
    },
    /// Deletes a status snapshot key if `instance` wrote it (a script).
    DelIfInstance {
        /// Key.
        key: String,
        /// Instance id.
        instance: String,
    },
    /// `XACK stream group entry`.
    XAck {
        /// Stream.
        stream: String,
        /// Entry id.
        entry: String,
    },
}

/// A Redis reply, as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nil.
    Nil,
    /// A status or bulk string.
    Text(String),
    /// An integer.
    Int(i64),
    /// An array of strings (SMEMBERS) or a flat field/value list (HGETALL).
    List(Vec<String>),
    /// An error reply.
    Error(String),
}

/// What a reply continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Owner,
    Claim,
    Check,
    Destination,
    Record,
    Recorded,
    RecordOwner,
    Status,
    Recover,
    RecoverRecord,
}

/// An operation and, when its reply matters, who waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The operation.
    pub op: RedisOp,
    wait: Option<(u64, Step)>,
    /// Whether it belongs to an event (the bounded event queue).
    event: bool,
}

impl Op {
    fn fire(op: RedisOp) -> Self {
        Self {
            op,
            wait: None,
            event: false,
        }
    }

    /// Whether its reply is needed.
    pub fn waits(&self) -> bool {
        self.wait.is_some()
    }
}

/// A command to execute, handed to the shell.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Report its result with this token.
    pub token: u64,
    /// The command.
    pub command: Command,
}

/// A command on its way.
#[derive(Debug)]
struct Pending {
    command: Command,
    source: Source,
    key: String,
    received_ms: u64,
    /// Duplicates waiting for this execution's result.
    parked: Vec<(Command, Source)>,
    /// For an originate: its call id and destination key once taken.
    call_id: Option<String>,
    destination: Option<String>,
    /// Retries of the claim after a claim that vanished meanwhile.
    claims: u8,
}

/// Counters the shell exports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MachineStats {
    /// Events dropped from a full buffer.
    pub events_dropped: u64,
    /// Commands answered, by outcome.
    pub ok: u64,
    /// Commands answered with an error.
    pub failed: u64,
    /// Duplicate ids answered.
    pub duplicates: u64,
}

/// The control core.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    seq: u64,
    next_token: u64,
    /// Operations for Redis, in order (commands, records).
    ops: VecDeque<Op>,
    /// Events for Redis, in order; bounded by `event_buffer`.
    events: VecDeque<Op>,
    dropped_since_report: u64,
    pending: HashMap<u64, Pending>,
    /// Ids being executed here, and their token.
    running: HashMap<String, u64>,
    jobs: VecDeque<Job>,
    /// Live calls of this instance, by call id.
    calls: HashSet<String>,
    /// Records being recovered at start: token → call id.
    recovering: HashMap<u64, String>,
    recovered: bool,
    /// Errors found while routing, answered once the id is claimed.
    parse_errors: HashMap<u64, CommandError>,
    stats: MachineStats,
}

impl Machine {
    /// A machine with no history.
    pub fn new(cfg: MachineConfig) -> Self {
        Self {
            cfg,
            seq: 0,
            next_token: 1,
            ops: VecDeque::new(),
            events: VecDeque::new(),
            dropped_since_report: 0,
            pending: HashMap::new(),
            running: HashMap::new(),
            jobs: VecDeque::new(),
            calls: HashSet::new(),
            recovering: HashMap::new(),
            recovered: false,
            parse_errors: HashMap::new(),
            stats: MachineStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &MachineStats {
        &self.stats
    }

    /// Commands on their way (claimed, routed or running).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Operations and events waiting for Redis.
    pub fn backlog(&self) -> usize {
        self.ops.len() + self.events.len()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn push(&mut self, op: RedisOp) {
        self.ops.push_back(Op::fire(op));
    }

    fn ask(&mut self, token: u64, step: Step, op: RedisOp) {
        self.ops.push_back(Op {
            op,
            wait: Some((token, step)),
            event: false,
        });
    }

    /// Up to `max` operations to run next, in order (commands and records
    /// first, then events). Give them back with [`Machine::requeue`] when
    /// they could not all run.
    pub fn take_batch(&mut self, max: usize) -> Vec<Op> {
        let from_ops = self.ops.len().min(max);
        let mut batch: Vec<Op> = self.ops.drain(..from_ops).collect();
        let from_events = self.events.len().min(max - from_ops);
        batch.extend(self.events.drain(..from_events));
        batch
    }

    /// Puts a batch that failed back in front, to run again after the
    /// reconnection (so delivery is at least once, in order).
    pub fn requeue(&mut self, batch: Vec<Op>) {
        let (events, ops): (Vec<Op>, Vec<Op>) = batch.into_iter().partition(is_event);
        for op in ops.into_iter().rev() {
            self.ops.push_front(op);
        }
        for op in events.into_iter().rev() {
            self.events.push_front(op);
        }
    }

    /// The next command to execute.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// The connection is up (first time or again): the start-up recovery of
    /// this instance's calls runs once, and a drop is reported.
    pub fn connected(&mut self, now_ms: u64, reconnects: u64, outage_ms: u64) {
        self.event(
            now_ms,
            "channel.connected",
            json!({"reconnects": reconnects, "outage_ms": outage_ms}),
        );
        if self.dropped_since_report > 0 {
            // A full buffer drops one more event for the report itself:
            // that one is in its count too.
            let evicts = u64::from(self.events.len() + 2 > self.cfg.event_buffer.max(2));
            let count = std::mem::take(&mut self.dropped_since_report) + evicts;
            self.event(now_ms, "events.dropped", json!({"count": count}));
            self.dropped_since_report = self.dropped_since_report.saturating_sub(evicts);
        }
        if !self.recovered {
            self.recovered = true;
            let token = self.token();
            let key = self.cfg.live_set();
            self.ask(token, Step::Recover, RedisOp::SMembers { key });
        }
    }

    /// The heartbeat: status snapshots and account owner keys.
    pub fn heartbeat(&mut self, snapshot: String, ttl_ms: u64) {
        let instance = self.cfg.instance.clone();
        self.push(RedisOp::Set {
            key: self.cfg.status_key(),
            value: snapshot.clone(),
            ms: ttl_ms,
        });
        self.push(RedisOp::Set {
            key: self.cfg.last_status_key(),
            value: snapshot,
            ms: ttl_ms,
        });
        let mut accounts: Vec<String> = self.cfg.accounts.iter().cloned().collect();
        accounts.sort();
        for account in accounts {
            self.push(RedisOp::Set {
                key: self.cfg.account_key(&account),
                value: instance.clone(),
                ms: ttl_ms,
            });
        }
    }

    /// A clean stop: `daemon.stopping`, and this instance's keys removed.
    pub fn stopping(&mut self, now_ms: u64) {
        self.event(now_ms, "daemon.stopping", json!({}));
        self.push(RedisOp::Del {
            key: self.cfg.status_key(),
        });
        self.push(RedisOp::DelIfInstance {
            key: self.cfg.last_status_key(),
            instance: self.cfg.instance.clone(),
        });
        let mut accounts: Vec<String> = self.cfg.accounts.iter().cloned().collect();
        accounts.sort();
        for account in accounts {
            self.push(RedisOp::Del {
                key: self.cfg.account_key(&account),
            });
        }
    }

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
                let rec = record::of_event(&c, at, &self.cfg.instance, &self.cfg.boot);
                let ended = c.ended.is_some();
                let kind = format!("call.{}", c.state.label());
                self.event(at, &kind, record::event_fields(&c, at));
                self.write_record(&name, rec, ended);
                if ended {
                    self.calls.remove(&name);
                } else {
                    self.calls.insert(name);
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
        }
    }

    fn write_record(&mut self, name: &str, fields: Vec<(&'static str, String)>, ended: bool) {
        let key = self.cfg.record_key(name);
        let ms = if ended {
            self.cfg.record_ttl_ms
        } else {
            self.cfg.record_ttl_ms + self.cfg.max_duration_ms
        };
        self.push(RedisOp::HSet { key, fields, ms });
        let set = self.cfg.live_set();
        if ended {
            self.push(RedisOp::SRem {
                key: set,
                member: name.to_owned(),
            });
        } else {
            self.push(RedisOp::SAdd {
                key: set,
                member: name.to_owned(),
            });
        }
    }

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
                            received_ms: now_ms,
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
        if expired {
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
                (!self.cfg.accounts.contains(&account)).then(|| RedisOp::Get {
                    key: self.cfg.account_key(&account),
                })
            }
            Scope::Call => {
                let call = command.kind.call_id().unwrap_or_default().to_owned();
                (!self.calls.contains(&call)).then(|| RedisOp::HGetAll {
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
                received_ms: now_ms,
                parked: Vec::new(),
                call_id: None,
                destination: None,
                claims: 0,
            },
        );
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

    fn claim(&mut self, token: u64) {
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
            Step::Owner => self.on_owner(now_ms, token, text(&reply)),
            Step::RecordOwner => {
                let fields = pairs(&reply);
                let owner = fields.get("instance").cloned();
                let state = fields.get("state").cloned();
                self.on_call_owner(now_ms, token, owner, state);
            }
            Step::Claim => self.on_claim(now_ms, token, &reply),
            Step::Check => self.on_check(now_ms, token, text(&reply)),
            Step::Destination => self.on_destination(now_ms, token, &reply),
            Step::Record => self.on_record(now_ms, token, &reply),
            Step::Recorded => self.on_recorded(now_ms, token, &reply),
            Step::Status => self.on_status(now_ms, token, &reply),
            Step::Recover => self.on_recover(&reply),
            Step::RecoverRecord => self.on_recover_record(now_ms, token, &reply),
        }
    }

    /// Where an account command goes when the account is not ours.
    fn on_owner(&mut self, now_ms: u64, token: u64, owner: Option<String>) {
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
    fn on_call_owner(
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
    fn elsewhere(&mut self, now_ms: u64, token: u64, owner: &str, why: &str, code: ErrorCode) {
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
                if let Ok(text) = serde_json::to_string(&envelope(&p.command)) {
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
    fn fail_after_claim(&mut self, token: u64, code: ErrorCode, message: String) {
        if let Some(p) = self.pending.get(&token) {
            let e = error_of(&p.command, code, &message);
            self.parse_errors.insert(token, e);
        }
        self.claim(token);
    }

    fn on_claim(&mut self, now_ms: u64, token: u64, reply: &Reply) {
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

    fn claimed(&mut self, now_ms: u64, token: u64) {
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
            if o.media.is_some() {
                let e = error_of(
                    &p.command,
                    ErrorCode::NotSupported,
                    "args.media: media endpoints come with the media relay",
                );
                self.finish(now_ms, token, Err(e));
                return;
            }
            let call_id = o.call_id.clone().unwrap_or_else(|| p.command.id.clone());
            p.call_id = Some(call_id.clone());
            if self.cfg.destination_window_ms > 0 && !o.force {
                let key = self.cfg.key(&format!("dest:{}", o.to));
                p.destination = Some(key.clone());
                let ms = self.cfg.destination_window_ms;
                self.ask(
                    token,
                    Step::Destination,
                    RedisOp::SetNx {
                        key,
                        value: call_id,
                        ms,
                    },
                );
            } else {
                self.create_record(token);
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

    fn on_destination(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        match reply {
            Reply::Nil => {
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
            Reply::Error(_) => {
                self.unavailable(now_ms, token, "Redis refused the destination check")
            }
            _ => self.create_record(token),
        }
    }

    fn create_record(&mut self, token: u64) {
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

    fn on_record(&mut self, now_ms: u64, token: u64, reply: &Reply) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        match reply {
            Reply::Int(1) => {
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
                // The INVITE leaves only once the record and the live set
                // are written: the job goes out on the reply of the SADD.
                let key = self.cfg.record_key(&call_id);
                let ms = self.cfg.record_ttl_ms + self.cfg.max_duration_ms;
                self.push(RedisOp::HSet { key, fields, ms });
                let set = self.cfg.live_set();
                let member = call_id.clone();
                self.ask(token, Step::Recorded, RedisOp::SAdd { key: set, member });
                self.calls.insert(call_id);
            }
            Reply::Error(_) => self.unavailable(now_ms, token, "Redis refused the call record"),
            _ => {
                // The record exists: this originate ran before (a crash
                // between the INVITE and its result), or the id is taken.
                let call_id = p.call_id.clone().unwrap_or_default();
                let command_id = p.command.id.clone();
                let e = error_of(
                    &p.command,
                    ErrorCode::CallIdInUse,
                    &format!("call {call_id:?} already has a record (a call id is used once)"),
                );
                let same = p.command.kind.call_id().is_none() && call_id == command_id;
                if let Some(key) = self
                    .pending
                    .get_mut(&token)
                    .and_then(|p| p.destination.take())
                {
                    self.push(RedisOp::Del { key });
                }
                if same {
                    // The call id is the command id: the record is this
                    // command's own call, placed by an earlier execution.
                    let result =
                        json!({"call_id": call_id, "instance": Value::Null, "placed_before": true});
                    self.finish(now_ms, token, Ok(result));
                } else {
                    self.finish(now_ms, token, Err(e));
                }
            }
        }
    }

    /// The record of an originate is written: its job goes out.
    fn on_recorded(&mut self, now_ms: u64, token: u64, reply: &Reply) {
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

    fn on_status(&mut self, now_ms: u64, token: u64, reply: &Reply) {
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

    fn on_check(&mut self, now_ms: u64, token: u64, stored: Option<String>) {
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
                self.answer(
                    now_ms,
                    &p.command.id,
                    Some(p.command.kind.name()),
                    p.command.reply_to.as_deref(),
                    &p.source,
                    result,
                    true,
                    None,
                );
            }
        }
    }

    fn unavailable(&mut self, now_ms: u64, token: u64, why: &str) {
        self.parse_errors.remove(&token);
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        if self.running.get(&p.command.id) == Some(&token) {
            self.running.remove(&p.command.id);
        }
        if p.source.is_stream() {
            return; // retried from the stream
        }
        let e = error_of(&p.command, ErrorCode::Unavailable, why);
        self.answer_error(now_ms, e, &p.source, None);
    }

    /// The result of a job.
    pub fn completed(&mut self, now_ms: u64, token: u64, result: Result<Value, CommandError>) {
        self.finish(now_ms, token, result);
    }

    fn finish(&mut self, now_ms: u64, token: u64, result: Result<Value, CommandError>) {
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
                    && self.calls.contains(&call)
                    && e.code != ErrorCode::CallIdInUse
                {
                    let fields = record::not_placed(now_ms, &e.message);
                    self.write_record(&call, fields, true);
                    self.calls.remove(&call);
                }
                Err(e)
            }
            (r, _) => r,
        };
        let _ = p.received_ms;
        self.answer(
            now_ms,
            &p.command.id,
            Some(p.command.kind.name()),
            p.command.reply_to.as_deref(),
            &p.source,
            result.clone(),
            false,
            Some(&p.key),
        );
        for (dup, source) in p.parked {
            self.stats.duplicates += 1;
            self.answer(
                now_ms,
                &dup.id,
                Some(dup.kind.name()),
                dup.reply_to.as_deref(),
                &source,
                result.clone(),
                true,
                None,
            );
        }
    }

    fn answer_error(&mut self, now_ms: u64, e: CommandError, source: &Source, store: Option<&str>) {
        let id = e.id.clone();
        let command = e.command.clone();
        let reply_to = e.reply_to.clone();
        self.answer(
            now_ms,
            id.as_deref().unwrap_or_default(),
            command.as_deref(),
            reply_to.as_deref(),
            source,
            Err(e),
            false,
            store,
        );
    }

    /// Publishes a result (on `reply_to` or the events channel, and on the
    /// events stream), stores it under `store`, and acknowledges a stream
    /// entry — in this order.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        now_ms: u64,
        id: &str,
        command: Option<&str>,
        reply_to: Option<&str>,
        source: &Source,
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
            "ts_ms": now_ms, "id": (!id.is_empty()).then_some(id), "command": command,
        });
        if let Value::Object(m) = &mut message {
            m.extend(body);
            if duplicate {
                m.insert("duplicate".into(), Value::Bool(true));
            }
        }
        let payload: Arc<str> = Arc::from(message.to_string());
        let channel = reply_to.map_or_else(|| self.cfg.events_channel(), str::to_owned);
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
        if let Source::Stream { stream, entry, .. } = source {
            self.push(RedisOp::XAck {
                stream: stream.clone(),
                entry: entry.clone(),
            });
        }
    }

    fn on_recover(&mut self, reply: &Reply) {
        let Reply::List(members) = reply else {
            return;
        };
        for call in members {
            if self.calls.contains(call) {
                continue;
            }
            let token = self.token();
            self.recovering.insert(token, call.clone());
            let key = self.cfg.record_key(call);
            self.ask(token, Step::RecoverRecord, RedisOp::HGetAll { key });
        }
    }

    fn on_recover_record(&mut self, now_ms: u64, token: u64, reply: &Reply) {
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
        self.write_record(&call, closed, true);
    }
}

fn is_event(op: &Op) -> bool {
    // Not by its kind: a result is published like an event but is queued
    // (and requeued) with the operations of its command.
    op.event
}

fn is_stream_add(op: &Op) -> bool {
    matches!(op.op, RedisOp::XAdd { .. })
}

fn text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn pairs(reply: &Reply) -> HashMap<String, String> {
    match reply {
        Reply::List(items) => items
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect(),
        _ => HashMap::new(),
    }
}

fn error_of(command: &Command, code: ErrorCode, message: &str) -> CommandError {
    CommandError {
        code,
        message: message.to_owned(),
        id: Some(command.id.clone()),
        command: Some(command.kind.name().to_owned()),
        reply_to: command.reply_to.clone(),
    }
}

/// A stand-in command for a parse error being claimed.
fn placeholder(e: &CommandError) -> Command {
    Command {
        id: e.id.clone().unwrap_or_default(),
        reply_to: e.reply_to.clone(),
        not_after: None,
        kind: CommandKind::Ping,
    }
}

/// The result stored under a command id.
fn stored_result(command: &Command, stored: &str) -> Result<Value, CommandError> {
    let v: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    let error = v.get("error");
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    let code = field("code")
        .and_then(ErrorCode::from_str)
        .unwrap_or(ErrorCode::Internal);
    Err(error_of(
        command,
        code,
        field("message").unwrap_or("the stored result is unreadable"),
    ))
}

/// The command as JSON again (to forward it to another instance's stream).
fn envelope(command: &Command) -> Value {
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
                    (
                        "ring_timeout_secs",
                        o.ring_timeout_secs.map_or(Value::Null, Value::from),
                    ),
                    (
                        "max_duration_secs",
                        o.max_duration_secs.map_or(Value::Null, Value::from),
                    ),
                    ("media", o.media.clone().unwrap_or(Value::Null)),
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
        CommandKind::Hangup { call_id }
        | CommandKind::Answer { call_id }
        | CommandKind::CallStatus { call_id } => {
            json!({"call_id": call_id})
        }
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

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
