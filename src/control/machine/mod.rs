//! The control core, sans-IO: commands in (with where they came from),
//! Redis operations, jobs and answers out. It owns the idempotency state,
//! the event sequence, the call records and the outbox; the I/O shell
//! (`channel.rs`) runs the operations (pipelined, in order) and feeds their
//! replies back, runs the jobs and reports their results. No sockets, no
//! clock (`now_ms` comes in), no randomness (the boot id comes in).

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::json;

use super::command::{Command, CommandError};

mod answer;
mod events;
mod ops;
mod originate;
mod route;
mod wire;

pub use ops::{Op, RedisOp, Reply};
use ops::{Step, is_event};

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

    /// The flag that closes `campaign`'s gate: while it holds any value,
    /// its originates are refused `campaign_gated`.
    pub fn gate_key(&self, campaign: &str) -> String {
        self.key(&format!("campaign:{campaign}:gated"))
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
    /// When its stream entry was added (Unix ms), for a forwarded copy.
    entry_ms: Option<u64>,
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
    /// Writes (records, results) dropped because too many waited for Redis.
    pub ops_dropped: u64,
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
    /// Live calls of this instance, by call id, with when each was created
    /// (Unix ms), so every event and record write says the same.
    calls: HashMap<String, u64>,
    /// Records being recovered at start: token → call id.
    recovering: HashMap<u64, String>,
    recovered: bool,
    /// Errors found while routing, answered once the id is claimed.
    parse_errors: HashMap<u64, CommandError>,
    stats: MachineStats,
    /// With account leases: the accounts this instance holds now (commands
    /// for the others go to their holder).
    held: Option<HashSet<String>>,
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
            calls: HashMap::new(),
            recovering: HashMap::new(),
            recovered: false,
            parse_errors: HashMap::new(),
            stats: MachineStats::default(),
            held: None,
        }
    }

    /// With account leases, the accounts this instance holds: account
    /// commands for the others are forwarded to their holder, and only
    /// these are advertised as this instance's.
    pub fn set_held(&mut self, held: HashSet<String>) {
        self.held = Some(held);
    }

    /// Whether account commands for `account` run here.
    pub(super) fn holds(&self, account: &str) -> bool {
        match &self.held {
            Some(held) => held.contains(account),
            None => self.cfg.accounts.contains(account),
        }
    }

    fn advertised_accounts(&self) -> Vec<String> {
        let mut accounts: Vec<String> = match &self.held {
            Some(held) => held.iter().cloned().collect(),
            None => self.cfg.accounts.iter().cloned().collect(),
        };
        accounts.sort();
        accounts
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
        self.bound_ops();
        self.ops.push_back(Op::fire(op));
    }

    /// Keeps the operations waiting for Redis (while it is away) at most
    /// four event buffers: the oldest write whose reply nobody waits for is
    /// dropped and counted (a command's own steps are never dropped).
    fn bound_ops(&mut self) {
        let max = self.cfg.event_buffer.saturating_mul(4).max(16);
        if self.ops.len() < max {
            return;
        }
        if let Some(i) = self.ops.iter().position(|o| !o.waits()) {
            self.ops.remove(i);
            self.stats.ops_dropped += 1;
        }
    }

    fn ask(&mut self, token: u64, step: Step, op: RedisOp) {
        self.bound_ops();
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
    /// reconnection (so delivery is at least once, in order). Campaign
    /// gates not read yet are not read later: their originates are refused
    /// now (fail closed), whatever the flag will say.
    pub fn requeue(&mut self, now_ms: u64, batch: Vec<Op>) {
        let (events, ops): (Vec<Op>, Vec<Op>) = batch.into_iter().partition(is_event);
        for op in ops.into_iter().rev() {
            self.ops.push_front(op);
        }
        for op in events.into_iter().rev() {
            self.events.push_front(op);
        }
        self.refuse_unread_gates(now_ms);
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
        for account in self.advertised_accounts() {
            self.push(RedisOp::Set {
                key: self.cfg.account_key(&account),
                value: instance.clone(),
                ms: ttl_ms,
            });
        }
    }

    /// A clean stop: `daemon.stopping` with the final status snapshot, and
    /// this instance's keys removed.
    pub fn stopping(&mut self, now_ms: u64, status: serde_json::Value) {
        self.event(now_ms, "daemon.stopping", json!({ "status": status }));
        self.push(RedisOp::Del {
            key: self.cfg.status_key(),
        });
        self.push(RedisOp::DelIfInstance {
            key: self.cfg.last_status_key(),
            instance: self.cfg.instance.clone(),
        });
        for account in self.advertised_accounts() {
            self.push(RedisOp::Del {
                key: self.cfg.account_key(&account),
            });
        }
    }
}

#[cfg(test)]
mod tests;
