use super::*;

// The control core against an in-memory fake Redis (strings with expiry on a
// fake clock, hashes, sets, logs of PUBLISHes, XADDs and XACKs), one or two
// machines sharing it, jobs answered by closures. No sockets, no sleeps.

use std::collections::{BTreeMap, BTreeSet};

use crate::call::{CallDirection, CallEvent, CallId, CallState, EndCause, Ended};
use crate::control::command::{self, CommandKind, ErrorCode};
use crate::events::{CoreEvent, Stamped};
use serde_json::{Value, json};
use std::sync::Arc;

const T0: u64 = 1_795_300_000_000;
const DEDUP_MS: u64 = 86_400_000;
const LEASE_MS: u64 = 30_000;
const MAX_AGE_MS: u64 = 60_000;
const DEST_MS: u64 = 60_000;
const RECORD_TTL_MS: u64 = 86_400_000;
const MAX_DURATION_MS: u64 = 3_600_000;
const EVENTS: &str = "dialer:events";
const EVENTS_STREAM: &str = "dialer:events:stream";

// ---------------------------------------------------------------------------
// The fake Redis.

/// One stream entry.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    field: &'static str,
    payload: String,
}

/// Redis in memory, enough of it for the machine's operations.
#[derive(Debug)]
struct Fake {
    /// The clock, Unix ms.
    now: u64,
    strings: HashMap<String, String>,
    hashes: HashMap<String, BTreeMap<String, String>>,
    sets: HashMap<String, BTreeSet<String>>,
    /// Key → when it expires.
    expiry: HashMap<String, u64>,
    /// Every PUBLISH, in order: (channel, payload).
    published: Vec<(String, Value)>,
    /// Every XADD, per stream, in order.
    streams: HashMap<String, Vec<Entry>>,
    /// XACKed (stream, entry).
    acked: HashSet<(String, String)>,
    /// Every operation run, in order.
    log: Vec<RedisOp>,
    entries: u64,
}

impl Fake {
    fn new() -> Self {
        Self {
            now: T0,
            strings: HashMap::new(),
            hashes: HashMap::new(),
            sets: HashMap::new(),
            expiry: HashMap::new(),
            published: Vec::new(),
            streams: HashMap::new(),
            acked: HashSet::new(),
            log: Vec::new(),
            entries: 0,
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    fn expired(&self, key: &str) -> bool {
        self.expiry.get(key).is_some_and(|at| *at <= self.now)
    }

    fn purge(&mut self) {
        let now = self.now;
        let gone: Vec<String> = self
            .expiry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn exists(&self, key: &str) -> bool {
        !self.expired(key)
            && (self.strings.contains_key(key)
                || self.hashes.contains_key(key)
                || self.sets.contains_key(key))
    }

    fn remove(&mut self, key: &str) -> bool {
        self.expiry.remove(key);
        let s = self.strings.remove(key).is_some();
        let h = self.hashes.remove(key).is_some();
        let m = self.sets.remove(key).is_some();
        s || h || m
    }

    fn set_string(&mut self, key: &str, value: &str, ms: u64) {
        self.remove(key);
        self.strings.insert(key.to_owned(), value.to_owned());
        self.expiry.insert(key.to_owned(), self.now + ms);
    }

    fn wrong_type(&self, key: &str, kind: &str) -> bool {
        match kind {
            "string" => self.hashes.contains_key(key) || self.sets.contains_key(key),
            "hash" => self.strings.contains_key(key) || self.sets.contains_key(key),
            _ => self.strings.contains_key(key) || self.hashes.contains_key(key),
        }
    }

    fn wrongtype() -> Reply {
        Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
    }

    /// Runs one operation and answers as Redis would.
    fn apply(&mut self, op: &RedisOp) -> Reply {
        self.purge();
        self.log.push(op.clone());
        match op {
            RedisOp::Publish { channel, payload } => {
                let v: Value = serde_json::from_str(payload).expect("a JSON payload");
                self.published.push((channel.clone(), v));
                Reply::Int(0)
            }
            RedisOp::XAdd {
                stream,
                field,
                payload,
                ..
            } => {
                self.entries += 1;
                let id = format!("{}-{}", self.now, self.entries);
                self.streams.entry(stream.clone()).or_default().push(Entry {
                    id: id.clone(),
                    field,
                    payload: payload.to_string(),
                });
                Reply::Text(id)
            }
            RedisOp::SetNx { key, value, ms } => {
                if *ms == 0 {
                    return Reply::Error("ERR invalid expire time in 'set' command".into());
                }
                if self.exists(key) {
                    Reply::Nil
                } else {
                    self.set_string(key, value, *ms);
                    Reply::Text("OK".into())
                }
            }
            RedisOp::Set { key, value, ms } => {
                if *ms == 0 {
                    return Reply::Error("ERR invalid expire time in 'set' command".into());
                }
                self.set_string(key, value, *ms);
                Reply::Text("OK".into())
            }
            RedisOp::Get { key } => {
                if self.wrong_type(key, "string") {
                    return Self::wrongtype();
                }
                self.strings
                    .get(key)
                    .map_or(Reply::Nil, |v| Reply::Text(v.clone()))
            }
            RedisOp::Del { key } => Reply::Int(i64::from(self.remove(key))),
            RedisOp::HSetNx { key, field, value } => {
                if self.wrong_type(key, "hash") {
                    return Self::wrongtype();
                }
                let h = self.hashes.entry(key.clone()).or_default();
                if h.contains_key(*field) {
                    Reply::Int(0)
                } else {
                    h.insert((*field).to_owned(), value.clone());
                    Reply::Int(1)
                }
            }
            RedisOp::HSet { key, fields, ms } => {
                if self.wrong_type(key, "hash") {
                    return Self::wrongtype();
                }
                let h = self.hashes.entry(key.clone()).or_default();
                let mut added = 0;
                for (f, v) in fields {
                    if h.insert((*f).to_owned(), v.clone()).is_none() {
                        added += 1;
                    }
                }
                // PEXPIRE key ms
                if let Some(ms) = ms {
                    self.expiry.insert(key.clone(), self.now + ms);
                }
                Reply::Int(added)
            }
            RedisOp::HGetAll { key } => {
                if self.wrong_type(key, "hash") {
                    return Self::wrongtype();
                }
                let flat = self
                    .hashes
                    .get(key)
                    .map(|h| h.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect())
                    .unwrap_or_default();
                Reply::List(flat)
            }
            RedisOp::SAdd { key, member } => {
                if self.wrong_type(key, "set") {
                    return Self::wrongtype();
                }
                let added = self
                    .sets
                    .entry(key.clone())
                    .or_default()
                    .insert(member.clone());
                Reply::Int(i64::from(added))
            }
            RedisOp::SRem { key, member } => {
                let Some(s) = self.sets.get_mut(key) else {
                    return Reply::Int(0);
                };
                let removed = s.remove(member);
                if s.is_empty() {
                    self.remove(key);
                }
                Reply::Int(i64::from(removed))
            }
            RedisOp::SMembers { key } => {
                if self.wrong_type(key, "set") {
                    return Self::wrongtype();
                }
                let members = self
                    .sets
                    .get(key)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                Reply::List(members)
            }
            RedisOp::DelIfInstance { key, instance } => {
                let ours = self
                    .strings
                    .get(key)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .is_some_and(|v| v["instance"]["id"] == instance.as_str());
                Reply::Int(i64::from(ours && self.remove(key)))
            }
            RedisOp::XAck { stream, entry } => Reply::Int(i64::from(
                self.acked.insert((stream.clone(), entry.clone())),
            )),
        }
    }

    // Reading what is stored (expired keys read as absent).

    fn string(&self, key: &str) -> Option<String> {
        (!self.expired(key))
            .then(|| self.strings.get(key).cloned())
            .flatten()
    }

    fn hash(&self, key: &str) -> BTreeMap<String, String> {
        if self.expired(key) {
            return BTreeMap::new();
        }
        self.hashes.get(key).cloned().unwrap_or_default()
    }

    fn members(&self, key: &str) -> BTreeSet<String> {
        if self.expired(key) {
            return BTreeSet::new();
        }
        self.sets.get(key).cloned().unwrap_or_default()
    }

    fn ttl(&self, key: &str) -> Option<u64> {
        self.expiry.get(key).map(|at| at.saturating_sub(self.now))
    }

    /// Every result published, with its channel.
    fn results(&self) -> Vec<(String, Value)> {
        self.published
            .iter()
            .filter(|(_, v)| v["type"] == "command.result")
            .cloned()
            .collect()
    }

    /// The results published for command `id`.
    fn results_for(&self, id: &str) -> Vec<(String, Value)> {
        self.results()
            .into_iter()
            .filter(|(_, v)| v["id"] == id)
            .collect()
    }

    /// The one result of `id` (panics unless there is exactly one).
    fn result(&self, id: &str) -> (String, Value) {
        let all = self.results_for(id);
        assert_eq!(all.len(), 1, "results of {id}: {all:?}");
        all.into_iter().next().expect("one result")
    }

    /// Events published on the events channel (results left out).
    fn events(&self) -> Vec<Value> {
        self.published
            .iter()
            .filter(|(c, v)| c == EVENTS && v["type"] != "command.result")
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// The payloads added to `stream`.
    fn stream(&self, stream: &str) -> Vec<Entry> {
        self.streams.get(stream).cloned().unwrap_or_default()
    }

    fn acked(&self, stream: &str, entry: &str) -> bool {
        self.acked.contains(&(stream.to_owned(), entry.to_owned()))
    }

    /// Where the first logged operation matching `f` is.
    fn position(&self, f: impl Fn(&RedisOp) -> bool) -> usize {
        self.log
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("no such operation in {:#?}", self.log))
    }

    fn seed_string(&mut self, key: &str, value: &str) {
        self.strings.insert(key.to_owned(), value.to_owned());
    }

    fn seed_hash(&mut self, key: &str, fields: &[(&str, &str)]) {
        let h = self.hashes.entry(key.to_owned()).or_default();
        for (k, v) in fields {
            h.insert((*k).to_owned(), (*v).to_owned());
        }
    }
}

// ---------------------------------------------------------------------------
// Machines, commands, the driver.

fn config(instance: &str, boot: &str, accounts: &[&str]) -> MachineConfig {
    MachineConfig {
        prefix: "dialer".into(),
        instance: instance.into(),
        boot: boot.into(),
        dedup_window_ms: DEDUP_MS,
        lease_ms: LEASE_MS,
        stream_max_age_ms: MAX_AGE_MS,
        destination_window_ms: DEST_MS,
        record_ttl_ms: RECORD_TTL_MS,
        max_duration_ms: MAX_DURATION_MS,
        events_maxlen: 1000,
        event_buffer: 10_000,
        accounts: accounts.iter().map(|a| (*a).to_owned()).collect(),
    }
}

fn machine_a() -> Machine {
    Machine::new(config("a", "boot-a", &["acc-a"]))
}

fn machine_b() -> Machine {
    Machine::new(config("b", "boot-b", &["acc-b"]))
}

/// A command's payload; `extra` adds top-level fields (`reply_to`, ...).
fn cmd(id: &str, kind: &str, args: Value, extra: Value) -> Vec<u8> {
    let mut c = json!({"v": 1, "id": id, "type": kind, "args": args});
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        c.extend(e);
    }
    c.to_string().into_bytes()
}

fn ping(id: &str, reply_to: Option<&str>) -> Vec<u8> {
    cmd(id, "ping", json!({}), json!({"reply_to": reply_to}))
}

fn register(id: &str, account: &str, reply_to: Option<&str>) -> Vec<u8> {
    cmd(
        id,
        "register",
        json!({"account": account}),
        json!({"reply_to": reply_to}),
    )
}

fn originate(id: &str, account: &str, to: &str, more: Value) -> Vec<u8> {
    let mut args = json!({"account": account, "to": to});
    if let (Value::Object(a), Value::Object(m)) = (&mut args, more) {
        a.extend(m);
    }
    cmd(id, "originate", args, json!({}))
}

fn hangup(id: &str, call: &str, reply_to: Option<&str>) -> Vec<u8> {
    cmd(
        id,
        "hangup",
        json!({"call_id": call}),
        json!({"reply_to": reply_to}),
    )
}

fn stream_source(stream: &str, entry: &str, shared: bool) -> Source {
    Source::Stream {
        stream: stream.into(),
        entry: entry.into(),
        shared,
    }
}

/// Runs one batch: every operation against the fake, every reply back.
/// False when the machine had nothing for Redis.
fn step(m: &mut Machine, r: &mut Fake) -> bool {
    let batch = m.take_batch(512);
    if batch.is_empty() {
        return false;
    }
    for op in &batch {
        let reply = r.apply(&op.op);
        m.on_reply(r.now, op, reply);
    }
    true
}

/// Runs batches until the machine has nothing left for Redis; the jobs it
/// handed out meanwhile (taken after each batch, as the shell does).
fn drive(m: &mut Machine, r: &mut Fake) -> Vec<Job> {
    let mut jobs = Vec::new();
    loop {
        let more = step(m, r);
        jobs.extend(std::iter::from_fn(|| m.poll_job()));
        if !more {
            return jobs;
        }
    }
}

/// Runs batches until a job is handed out, and returns it (what was
/// queued after it stays queued).
fn drive_until_job(m: &mut Machine, r: &mut Fake) -> Job {
    loop {
        let more = step(m, r);
        if let Some(job) = m.poll_job() {
            return job;
        }
        assert!(more, "no job was handed out");
    }
}

/// Drives two machines sharing `r`, one batch each in turn, until neither
/// has anything for Redis; how many jobs they handed out.
fn drive_pair(a: &mut Machine, b: &mut Machine, r: &mut Fake) -> usize {
    let mut jobs = 0;
    loop {
        let more_a = step(a, r);
        let more_b = step(b, r);
        jobs += std::iter::from_fn(|| a.poll_job()).count();
        jobs += std::iter::from_fn(|| b.poll_job()).count();
        if !more_a && !more_b {
            return jobs;
        }
    }
}

/// Drives, answering every job with `answer` and driving again, until
/// nothing is left; the commands that ran.
fn settle_with(
    m: &mut Machine,
    r: &mut Fake,
    mut answer: impl FnMut(&Command) -> Result<Value, CommandError>,
) -> Vec<Command> {
    let mut ran = Vec::new();
    loop {
        let jobs = drive(m, r);
        if jobs.is_empty() {
            return ran;
        }
        for job in jobs {
            let result = answer(&job.command);
            m.completed(r.now, job.token, result);
            ran.push(job.command);
        }
    }
}

/// What the shell answers for a command that succeeds.
fn success(c: &Command) -> Result<Value, CommandError> {
    Ok(match &c.kind {
        CommandKind::Ping => json!({"pong": true}),
        CommandKind::Register { account } => json!({"account": account, "state": "registering"}),
        CommandKind::Unregister { account } => {
            json!({"account": account, "state": "unregistering"})
        }
        CommandKind::Originate(o) => {
            json!({"call_id": o.call_id.clone().unwrap_or_else(|| c.id.clone())})
        }
        CommandKind::Hangup { call_id } => json!({"call_id": call_id}),
        _ => json!({}),
    })
}

fn settle(m: &mut Machine, r: &mut Fake) -> Vec<Command> {
    settle_with(m, r, success)
}

/// A job's failure as the shell reports it (no id, no reply_to).
fn failure(c: &Command, code: ErrorCode, message: &str) -> CommandError {
    CommandError {
        code,
        message: message.into(),
        id: None,
        command: Some(c.kind.name().into()),
        reply_to: None,
    }
}

fn error_code(result: &Value) -> &str {
    result["error"]["code"].as_str().unwrap_or("")
}

fn ids(ran: &[Command]) -> Vec<&str> {
    ran.iter().map(|c| c.id.as_str()).collect()
}

fn call_event(name: &str, state: CallState, ended: Option<Ended>, elapsed_ms: u64) -> Stamped {
    Stamped {
        at_ms: T0 + elapsed_ms,
        event: CoreEvent::Call(CallEvent {
            call: CallId(7),
            name: Arc::from(name),
            from: Arc::from("sip:2001@pbx.example.com"),
            to: Arc::from("sip:1002@pbx.example.com"),
            answered_ms: (state >= CallState::Answered).then_some(1_000),
            other: None,
            sip_call_id: "sip-call-7".into(),
            direction: CallDirection::Inbound,
            state,
            code: ended.and_then(|e| e.code),
            ended,
            disposition: None,
            account: Some("acc-a".into()),
            elapsed_ms,
        }),
    }
}

// ---------------------------------------------------------------------------
// 1. Idempotency: one answer per command, a repeat answered as a duplicate.

#[test]
fn reply_to_is_answered_once_and_a_repeated_id_is_answered_as_duplicate() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let payload = register("r1", "acc-a", Some("dialer:reply:x"));
    a.receive(r.now, Source::Instance, &payload, None);
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["r1"]);
    let (channel, first) = r.result("r1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(first["ok"], true);
    assert_eq!(first["command"], "register");
    assert_eq!(first["instance"], "a");
    assert_eq!(first["boot"], "boot-a");
    assert_eq!(
        first["result"],
        json!({"account": "acc-a", "state": "registering"})
    );
    assert!(first.get("duplicate").is_none());
    assert!(first.get("seq").is_none());
    // Stored under the id for the dedup window.
    let stored: Value =
        serde_json::from_str(&r.string("dialer:cmd:r1").expect("stored")).expect("JSON");
    assert_eq!(stored["ok"], true);
    assert_eq!(r.ttl("dialer:cmd:r1"), Some(DEDUP_MS));

    r.advance(1_000);
    a.receive(r.now, Source::Instance, &payload, None);
    let ran = settle(&mut a, &mut r);
    assert!(ran.is_empty(), "a repeated id runs nothing: {ran:?}");
    let all = r.results_for("r1");
    assert_eq!(all.len(), 2);
    let (channel, again) = all[1].clone();
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["ok"], true);
    assert_eq!(again["result"], first["result"]);
    assert!(r.results().iter().all(|(c, _)| c != EVENTS));
    assert_eq!(a.stats().duplicates, 1);
    assert_eq!(a.stats().ok, 2);
    assert_eq!(a.in_flight(), 0);
}

#[test]
fn a_stored_error_is_answered_again_with_its_code() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let payload = register("r1", "acc-a", Some("dialer:reply:x"));
    a.receive(r.now, Source::Instance, &payload, None);
    let ran = settle_with(&mut a, &mut r, |c| {
        Err(failure(c, ErrorCode::Capacity, "too many calls"))
    });
    assert_eq!(ran.len(), 1);
    let (_, first) = r.result("r1");
    assert_eq!(first["ok"], false);
    assert_eq!(
        first["error"],
        json!({"code": "capacity", "message": "too many calls", "retryable": true})
    );
    a.receive(r.now, Source::Instance, &payload, None);
    assert!(settle(&mut a, &mut r).is_empty());
    let all = r.results_for("r1");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1["duplicate"], true);
    assert_eq!(all[1].1["error"], first["error"]);
    assert_eq!(all[1].1["command"], "register");
    assert_eq!(a.stats().failed, 2);
}

// 2. A repeat while the first still runs is answered when it finishes.

#[test]
fn duplicate_while_running_is_parked_and_answered_when_the_first_completes() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &register("r1", "acc-a", Some("dialer:reply:x")),
        None,
    );
    let jobs = drive(&mut a, &mut r);
    assert_eq!(jobs.len(), 1);
    // The same id again (another caller, from the stream) while it runs.
    a.receive(
        r.now,
        Source::Instance,
        &register("r1", "acc-a", Some("dialer:reply:y")),
        None,
    );
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "5-0", false),
        &register("r1", "acc-a", None),
        Some(r.now),
    );
    assert!(drive(&mut a, &mut r).is_empty(), "the repeat is not run");
    assert!(
        r.results().is_empty(),
        "nothing answered before it finishes"
    );
    assert!(!r.acked("dialer:a:cmdq", "5-0"));
    assert_eq!(a.in_flight(), 1);

    let job = jobs.into_iter().next().expect("job");
    a.completed(r.now, job.token, success(&job.command));
    assert!(drive(&mut a, &mut r).is_empty());
    let all = r.results_for("r1");
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0].0, "dialer:reply:x");
    assert!(all[0].1.get("duplicate").is_none());
    assert_eq!(all[1].0, "dialer:reply:y");
    assert_eq!(all[1].1["duplicate"], true);
    assert_eq!(all[1].1["result"], all[0].1["result"]);
    assert_eq!(all[2].0, EVENTS);
    assert_eq!(all[2].1["duplicate"], true);
    assert!(r.acked("dialer:a:cmdq", "5-0"));
    assert_eq!(a.in_flight(), 0);
    assert_eq!(a.stats().duplicates, 2);
}

#[test]
fn two_copies_in_one_batch_run_once_and_are_both_answered() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let payload = register("r1", "acc-a", Some("dialer:reply:x"));
    a.receive(r.now, Source::Instance, &payload, None);
    a.receive(r.now, Source::Instance, &payload, None);
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["r1"]);
    let all = r.results_for("r1");
    assert_eq!(all.len(), 2);
    assert!(all[0].1.get("duplicate").is_none());
    assert_eq!(all[1].1["duplicate"], true);
    assert_eq!(all[1].1["result"], all[0].1["result"]);
}

#[test]
fn duplicate_whose_claim_check_crosses_the_first_completion_is_not_run_again() {
    // The repeat's SET NX is answered nil while the first runs; the first
    // completes before the repeat's next step: the repeat must not run a
    // second time (a second originate would even overwrite the stored
    // result with duplicate_destination).
    let mut r = Fake::new();
    let mut a = machine_a();
    let payload = cmd(
        "o1",
        "originate",
        json!({"account": "acc-a", "to": "sip:1002@pbx"}),
        json!({"reply_to": "dialer:reply:x"}),
    );
    a.receive(r.now, Source::Instance, &payload, None);
    let first = drive(&mut a, &mut r);
    assert_eq!(first.len(), 1);
    a.receive(r.now, Source::Instance, &payload, None);
    assert!(step(&mut a, &mut r), "the repeat's claim");
    let job = first.into_iter().next().expect("job");
    a.completed(r.now, job.token, success(&job.command));
    let again = drive(&mut a, &mut r);
    assert!(again.is_empty(), "ran again: {again:?}");
    let all = r.results_for("o1");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].1["ok"], true);
    assert_eq!(all[1].1["ok"], true, "{:?}", all[1].1);
    assert_eq!(all[1].1["duplicate"], true);
    let stored: Value =
        serde_json::from_str(&r.string("dialer:cmd:o1").expect("stored")).expect("JSON");
    assert_eq!(stored["ok"], true);
    assert_eq!(a.in_flight(), 0);
}

// 3. Instance commands on the broadcast channel: one answer per instance.

#[test]
fn broadcast_ping_is_answered_once_by_each_instance() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    let payload = ping("p1", Some("dialer:reply:ops"));
    a.receive(r.now, Source::Broadcast, &payload, None);
    b.receive(r.now, Source::Broadcast, &payload, None);
    let ran_a = settle(&mut a, &mut r);
    let ran_b = settle(&mut b, &mut r);
    assert_eq!((ran_a.len(), ran_b.len()), (1, 1));
    let all = r.results_for("p1");
    assert_eq!(all.len(), 2);
    let instances: BTreeSet<&str> = all
        .iter()
        .map(|(c, v)| {
            assert_eq!(c, "dialer:reply:ops");
            assert_eq!(v["result"], json!({"pong": true}));
            v["instance"].as_str().expect("instance")
        })
        .collect();
    assert_eq!(instances, BTreeSet::from(["a", "b"]));
    assert!(r.string("dialer:a:cmd:p1").is_some());
    assert!(r.string("dialer:b:cmd:p1").is_some());
    assert!(r.string("dialer:cmd:p1").is_none());

    // The same broadcast again: each answers its own duplicate.
    a.receive(r.now, Source::Broadcast, &payload, None);
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert!(settle(&mut a, &mut r).is_empty());
    assert!(settle(&mut b, &mut r).is_empty());
    let all = r.results_for("p1");
    assert_eq!(all.len(), 4);
    assert!(all[2..].iter().all(|(_, v)| v["duplicate"] == true));
}

// 4. Account commands on the broadcast channel.

#[test]
fn broadcast_account_command_runs_only_on_the_instance_that_has_it() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.heartbeat(json!({"instance": {"id": "a"}}).to_string(), 15_000);
    drive(&mut a, &mut r);
    assert_eq!(r.string("dialer:account:acc-a").as_deref(), Some("a"));

    let payload = register("r1", "acc-a", Some("dialer:reply:x"));
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert!(settle(&mut b, &mut r).is_empty(), "b does not have acc-a");
    assert!(r.results().is_empty(), "b leaves it to a");
    assert!(r.string("dialer:cmd:r1").is_none(), "b does not claim it");
    a.receive(r.now, Source::Broadcast, &payload, None);
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["r1"]);
    let (_, result) = r.result("r1");
    assert_eq!(result["instance"], "a");
    assert_eq!(result["ok"], true);

    // And when a has already answered before b reads it.
    let payload = register("r2", "acc-a", None);
    a.receive(r.now, Source::Broadcast, &payload, None);
    assert_eq!(settle(&mut a, &mut r).len(), 1);
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert!(settle(&mut b, &mut r).is_empty());
    assert_eq!(r.result("r2").1["instance"], "a");
}

#[test]
fn broadcast_account_command_before_the_owner_key_is_written_is_still_answered_once() {
    // b reads it while acc-a has no owner key yet: b tries to claim it to
    // answer unknown_account, but a claimed it first.
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    let payload = register("r1", "acc-a", None);
    a.receive(r.now, Source::Broadcast, &payload, None);
    let jobs = drive(&mut a, &mut r);
    assert_eq!(jobs.len(), 1);
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert!(settle(&mut b, &mut r).is_empty());
    assert!(r.results().is_empty(), "b says nothing: {:?}", r.results());
    for job in jobs {
        a.completed(r.now, job.token, success(&job.command));
    }
    drive(&mut a, &mut r);
    let (_, result) = r.result("r1");
    assert_eq!(
        (result["instance"].as_str(), result["ok"].as_bool()),
        (Some("a"), Some(true))
    );
}

#[test]
fn broadcast_for_an_account_nobody_has_is_answered_unknown_account_once() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.heartbeat("{}".into(), 15_000);
    b.heartbeat("{}".into(), 15_000);
    drive(&mut a, &mut r);
    drive(&mut b, &mut r);
    let payload = register("r9", "acc-nobody", Some("dialer:reply:x"));
    a.receive(r.now, Source::Broadcast, &payload, None);
    b.receive(r.now, Source::Broadcast, &payload, None);
    // Interleaved, batch by batch.
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    let (channel, result) = r.result("r9");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "unknown_account");
    assert_eq!(result["error"]["retryable"], false);
    assert_eq!(result["command"], "register");
    // Stored, so a repeat is answered (once) the same way.
    b.receive(r.now, Source::Broadcast, &payload, None);
    a.receive(r.now, Source::Broadcast, &payload, None);
    settle(&mut b, &mut r);
    settle(&mut a, &mut r);
    assert_eq!(
        r.results_for("r9").len(),
        1,
        "a broadcast repeat is left to whoever answered"
    );
    b.receive(r.now, Source::Instance, &payload, None);
    settle(&mut b, &mut r);
    let all = r.results_for("r9");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1["duplicate"], true);
    assert_eq!(error_code(&all[1].1), "unknown_account");
}

#[test]
fn account_of_another_instance_on_the_instance_channel_is_answered_naming_it() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.heartbeat("{}".into(), 15_000);
    drive(&mut a, &mut r);
    b.receive(
        r.now,
        Source::Instance,
        &register("r1", "acc-a", Some("dialer:reply:x")),
        None,
    );
    assert!(settle(&mut b, &mut r).is_empty());
    let (channel, result) = r.result("r1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(result["instance"], "b");
    assert_eq!(error_code(&result), "unknown_account");
    let message = result["error"]["message"].as_str().expect("message");
    assert!(message.contains("\"a\""), "{message}");
}

#[test]
fn shared_stream_account_command_is_forwarded_to_the_owner_stream() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.heartbeat("{}".into(), 15_000);
    drive(&mut a, &mut r);
    let payload = cmd(
        "o1",
        "originate",
        json!({"account": "acc-a", "to": "sip:1002@pbx", "headers": {"X-Job": "7"}, "ring_timeout_secs": 20}),
        json!({"reply_to": "dialer:reply:x", "not_after": T0 + 50_000}),
    );
    b.receive(
        r.now,
        stream_source("dialer:cmdq", "1-0", true),
        &payload,
        Some(r.now),
    );
    assert!(settle(&mut b, &mut r).is_empty());
    assert!(r.results().is_empty(), "forwarded, not answered");
    assert!(r.acked("dialer:cmdq", "1-0"));
    let forwarded = r.stream("dialer:a:cmdq");
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].field, "cmd");
    let original = command::parse(&payload, "dialer").expect("original");
    let copy = command::parse(forwarded[0].payload.as_bytes(), "dialer").expect("forwarded");
    assert_eq!(copy, original);
    // The add to a's stream comes before the ack of the shared one.
    let add =
        r.position(|op| matches!(op, RedisOp::XAdd { stream, .. } if stream == "dialer:a:cmdq"));
    let ack = r.position(|op| matches!(op, RedisOp::XAck { .. }));
    assert!(add < ack);

    // a reads it from its own stream and runs it.
    let entry = forwarded[0].id.clone();
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", &entry, false),
        forwarded[0].payload.as_bytes(),
        Some(r.now),
    );
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["o1"]);
    let (channel, result) = r.result("o1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(result["result"], json!({"call_id": "o1", "instance": "a"}));
    assert!(r.acked("dialer:a:cmdq", &entry));
}

#[test]
fn shared_stream_command_for_an_account_nobody_has_is_answered_and_acked() {
    let mut r = Fake::new();
    let mut b = machine_b();
    b.receive(
        r.now,
        stream_source("dialer:cmdq", "1-0", true),
        &register("r1", "acc-x", None),
        Some(r.now),
    );
    assert!(settle(&mut b, &mut r).is_empty());
    let (channel, result) = r.result("r1");
    assert_eq!(channel, EVENTS);
    assert_eq!(error_code(&result), "unknown_account");
    assert!(r.acked("dialer:cmdq", "1-0"));
    assert!(r.stream("dialer:a:cmdq").is_empty());
}

// 5. Parse errors.

#[test]
fn parse_error_with_a_valid_reply_to_is_answered_there() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let bad = cmd(
        "bad1",
        "nope",
        json!({}),
        json!({"reply_to": "dialer:reply:z"}),
    );
    a.receive(r.now, Source::Instance, &bad, None);
    let bad_args = cmd(
        "bad2",
        "register",
        json!({"account": "acc-a", "extra": 1}),
        json!({"reply_to": "dialer:reply:z"}),
    );
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "3-0", false),
        &bad_args,
        Some(r.now),
    );
    let bad_broadcast = cmd(
        "bad3",
        "ping",
        json!({"x": 1}),
        json!({"reply_to": "dialer:reply:z"}),
    );
    a.receive(r.now, Source::Broadcast, &bad_broadcast, None);
    assert!(settle(&mut a, &mut r).is_empty());
    for (id, code, command) in [
        ("bad1", "unknown_type", "nope"),
        ("bad2", "bad_field", "register"),
        ("bad3", "bad_field", "ping"),
    ] {
        let (channel, result) = r.result(id);
        assert_eq!(channel, "dialer:reply:z", "{id}");
        assert_eq!(error_code(&result), code, "{id}: {result}");
        assert_eq!(result["command"], command);
        assert_eq!(result["ok"], false);
    }
    assert!(r.acked("dialer:a:cmdq", "3-0"));
    assert!(
        r.published.iter().all(|(c, _)| c != EVENTS),
        "nothing on events"
    );
    // A reply_to outside the prefix is not used.
    let foreign = cmd(
        "bad4",
        "nope",
        json!({}),
        json!({"reply_to": "other:reply"}),
    );
    a.receive(r.now, Source::Instance, &foreign, None);
    settle(&mut a, &mut r);
    assert_eq!(r.result("bad4").0, EVENTS);
}

#[test]
fn broadcast_parse_error_with_an_id_is_answered_by_one_instance() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    let bad = cmd(
        "bad1",
        "nope",
        json!({}),
        json!({"reply_to": "dialer:reply:z"}),
    );
    a.receive(r.now, Source::Broadcast, &bad, None);
    b.receive(r.now, Source::Broadcast, &bad, None);
    settle(&mut a, &mut r);
    settle(&mut b, &mut r);
    let (channel, result) = r.result("bad1");
    assert_eq!(channel, "dialer:reply:z");
    assert_eq!(error_code(&result), "unknown_type");
    // Interleaved: still one.
    let bad = cmd("bad2", "nope", json!({}), json!({}));
    a.receive(r.now, Source::Broadcast, &bad, None);
    b.receive(r.now, Source::Broadcast, &bad, None);
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    assert_eq!(error_code(&r.result("bad2").1), "unknown_type");
}

#[test]
fn broadcast_parse_error_without_an_id_is_answered_by_every_instance() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.receive(r.now, Source::Broadcast, b"{not json", None);
    b.receive(r.now, Source::Broadcast, b"{not json", None);
    settle(&mut a, &mut r);
    settle(&mut b, &mut r);
    let all = r.results();
    assert_eq!(all.len(), 2);
    for (channel, result) in all {
        assert_eq!(channel, EVENTS);
        assert_eq!(error_code(&result), "bad_json");
        assert!(result.get("id").is_none_or(Value::is_null));
        assert!(result.get("command").is_none_or(Value::is_null));
    }
}

// 6. Results carry no seq; events count from 1 without gaps.

#[test]
fn events_have_gap_free_seq_and_results_have_none() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.connected(r.now, 0, 0);
    a.event(r.now, "daemon.started", json!({"version": "test"}));
    a.receive(
        r.now,
        Source::Instance,
        &ping("p1", Some("dialer:reply:x")),
        None,
    );
    settle(&mut a, &mut r);
    a.core_event(Stamped {
        at_ms: r.now,
        event: CoreEvent::Note(crate::call::CallNote {
            name: Arc::from("c1"),
            kind: crate::call::NoteKind::Dtmf {
                digit: '5',
                duration_ms: 100,
            },
        }),
    });
    a.receive(r.now, Source::Instance, &ping("p2", None), None);
    settle(&mut a, &mut r);
    a.core_event(call_event("c2", CallState::Ringing, None, 10));
    a.event(r.now, "daemon.draining", json!({}));
    a.receive(
        r.now,
        Source::Instance,
        &cmd("bad", "nope", json!({}), json!({})),
        None,
    );
    settle(&mut a, &mut r);

    let events = r.events();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        [
            "channel.connected",
            "daemon.started",
            "call.dtmf",
            "call.ringing",
            "daemon.draining"
        ]
    );
    for e in &events {
        assert_eq!(e["boot"], "boot-a");
        assert_eq!(e["instance"], "a");
        assert_eq!(e["v"], 1);
    }
    assert_eq!(events[2]["digit"], "5");
    let results = r.results();
    assert_eq!(results.len(), 3);
    for (_, result) in &results {
        assert!(result.get("seq").is_none(), "{result}");
        assert_eq!(result["boot"], "boot-a");
    }
    // The events stream has every event and every result, in order.
    let stream: Vec<Value> = r
        .stream(EVENTS_STREAM)
        .iter()
        .map(|e| {
            assert_eq!(e.field, "event");
            serde_json::from_str(&e.payload).expect("JSON")
        })
        .collect();
    assert_eq!(stream.len(), 8);
    let stream_seqs: Vec<u64> = stream.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(stream_seqs, seqs);
}

// 7. Expiry.

#[test]
fn command_past_not_after_is_answered_expired_and_not_run() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let late = cmd(
        "r1",
        "register",
        json!({"account": "acc-a"}),
        json!({"not_after": T0 - 1, "reply_to": "dialer:reply:x"}),
    );
    a.receive(r.now, Source::Instance, &late, None);
    let just_in_time = cmd(
        "r2",
        "register",
        json!({"account": "acc-a"}),
        json!({"not_after": T0}),
    );
    a.receive(r.now, Source::Instance, &just_in_time, None);
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["r2"]);
    let (channel, result) = r.result("r1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "expired");
    assert_eq!(result["error"]["retryable"], false);
    assert!(
        r.string("dialer:cmd:r1").is_none(),
        "an expired command claims nothing"
    );
}

#[test]
fn expired_broadcast_is_answered_once_per_executor() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    // An account command: one answer across the instances.
    let late = cmd(
        "r1",
        "register",
        json!({"account": "acc-a"}),
        json!({"not_after": T0 - 1, "reply_to": "dialer:reply:x"}),
    );
    a.receive(r.now, Source::Broadcast, &late, None);
    b.receive(r.now, Source::Broadcast, &late, None);
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    let (channel, result) = r.result("r1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "expired");
    // An instance command: one answer per instance, as if it had run.
    let late = cmd("p1", "ping", json!({}), json!({"not_after": T0 - 1}));
    a.receive(r.now, Source::Broadcast, &late, None);
    b.receive(r.now, Source::Broadcast, &late, None);
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    let all = r.results_for("p1");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, v)| error_code(v) == "expired"));
}

#[test]
fn stream_entry_older_than_the_max_age_is_expired_and_acked() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let src = stream_source("dialer:cmdq", "7-0", true);
    let old = originate("o1", "acc-a", "sip:1@pbx", json!({}));
    a.receive(r.now, src, &old, Some(r.now - MAX_AGE_MS - 1));
    let src = stream_source("dialer:cmdq", "8-0", true);
    let edge = originate("o2", "acc-a", "sip:2@pbx", json!({}));
    a.receive(r.now, src, &edge, Some(r.now - MAX_AGE_MS));
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["o2"], "an entry exactly max age old still runs");
    assert_eq!(error_code(&r.result("o1").1), "expired");
    assert!(r.acked("dialer:cmdq", "7-0"));
    assert!(r.acked("dialer:cmdq", "8-0"));
    assert!(
        r.hash("dialer:call:o1").is_empty(),
        "no record for an expired originate"
    );
    assert!(r.string("dialer:dest:sip:1@pbx").is_none());
}

// 8. Originate: record, destination window, call id reuse, failures.

#[test]
fn originate_records_the_call_before_its_job_is_handed_out() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1002@pbx", json!({})),
        None,
    );
    let job = drive_until_job(&mut a, &mut r);
    assert_eq!(job.command.id, "o1");
    let record = r.hash("dialer:call:o1");
    assert_eq!(record.get("instance").map(String::as_str), Some("a"));
    assert_eq!(
        record.get("state").map(String::as_str),
        Some("created"),
        "{record:?}"
    );
    assert_eq!(record.get("boot").map(String::as_str), Some("boot-a"));
    assert_eq!(record.get("command_id").map(String::as_str), Some("o1"));
    assert_eq!(record.get("to").map(String::as_str), Some("sip:1002@pbx"));
    assert_eq!(record.get("account").map(String::as_str), Some("acc-a"));
    assert_eq!(
        r.ttl("dialer:call:o1"),
        Some(RECORD_TTL_MS + MAX_DURATION_MS)
    );
    assert!(r.members("dialer:a:calls").contains("o1"));
    assert_eq!(r.string("dialer:dest:sip:1002@pbx").as_deref(), Some("o1"));
    assert_eq!(r.ttl("dialer:dest:sip:1002@pbx"), Some(DEST_MS));
    // The HSETNX of the record comes before the HSET of its fields.
    let hsetnx = r.position(|op| matches!(op, RedisOp::HSetNx { key, field: "instance", .. } if key == "dialer:call:o1"));
    let hset = r.position(|op| matches!(op, RedisOp::HSet { key, .. } if key == "dialer:call:o1"));
    assert!(hsetnx < hset);

    a.completed(r.now, job.token, success(&job.command));
    drive(&mut a, &mut r);
    let (_, result) = r.result("o1");
    assert_eq!(result["result"], json!({"call_id": "o1", "instance": "a"}));
}

#[test]
fn originate_record_write_lost_with_the_connection_still_hands_out_one_job() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    // Claim, destination, HSETNX.
    for _ in 0..3 {
        assert!(step(&mut a, &mut r));
        assert!(a.poll_job().is_none());
    }
    // The batch with the record's fields and the live set is lost with
    // the connection, after Redis ran it.
    let batch = a.take_batch(512);
    assert!(
        batch
            .iter()
            .any(|op| matches!(&op.op, RedisOp::SAdd { .. }) && op.waits())
    );
    for op in &batch {
        r.apply(&op.op);
    }
    assert!(
        a.poll_job().is_none(),
        "no job before the write is confirmed"
    );
    a.requeue(r.now, batch);
    let jobs = drive(&mut a, &mut r);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        r.hash("dialer:call:o1").get("state").map(String::as_str),
        Some("created")
    );
    assert!(r.members("dialer:a:calls").contains("o1"));
}

#[test]
fn originate_whose_live_set_write_is_refused_is_not_placed() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    loop {
        let batch = a.take_batch(512);
        if batch.is_empty() {
            break;
        }
        for op in &batch {
            let reply = match &op.op {
                RedisOp::SAdd { .. } => Reply::Error("OOM command not allowed".into()),
                other => r.apply(other),
            };
            a.on_reply(r.now, op, reply);
        }
    }
    assert!(a.poll_job().is_none(), "not placed");
    let (_, result) = r.result("o1");
    assert_eq!(error_code(&result), "unavailable");
    assert_eq!(result["error"]["retryable"], true);
    let record = r.hash("dialer:call:o1");
    assert_eq!(record.get("state").map(String::as_str), Some("ended"));
    assert_eq!(record.get("cause").map(String::as_str), Some("not_placed"));
    assert!(r.string("dialer:dest:sip:1@pbx").is_none());
    assert_eq!(a.in_flight(), 0);
}

#[test]
fn originate_to_a_destination_dialed_within_the_window_is_refused_unless_forced() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = Machine::new(config("b", "boot-b", &["acc-a"]));
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1002@pbx", json!({})),
        None,
    );
    assert_eq!(settle(&mut a, &mut r).len(), 1);
    r.advance(1_000);
    // Same destination, here and on another instance.
    a.receive(
        r.now,
        Source::Instance,
        &originate("o2", "acc-a", "sip:1002@pbx", json!({})),
        None,
    );
    b.receive(
        r.now,
        Source::Instance,
        &originate("o3", "acc-a", "sip:1002@pbx", json!({})),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert!(settle(&mut b, &mut r).is_empty());
    for id in ["o2", "o3"] {
        let (_, result) = r.result(id);
        assert_eq!(error_code(&result), "duplicate_destination", "{id}");
        assert_eq!(result["error"]["retryable"], false);
        assert!(
            r.hash(&format!("dialer:call:{id}")).is_empty(),
            "{id} has no record"
        );
    }
    assert_eq!(r.string("dialer:dest:sip:1002@pbx").as_deref(), Some("o1"));
    assert!(!r.members("dialer:a:calls").contains("o2"));
    // force: dialed anyway.
    a.receive(
        r.now,
        Source::Instance,
        &originate("o4", "acc-a", "sip:1002@pbx", json!({"force": true})),
        None,
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o4"]);
    assert_eq!(r.result("o4").1["ok"], true);
    // Once the window has passed, dialed again.
    r.advance(DEST_MS);
    a.receive(
        r.now,
        Source::Instance,
        &originate("o5", "acc-a", "sip:1002@pbx", json!({})),
        None,
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o5"]);
    assert_eq!(r.string("dialer:dest:sip:1002@pbx").as_deref(), Some("o5"));
}

#[test]
fn originate_with_a_call_id_that_has_a_record_is_refused_call_id_in_use() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    assert_eq!(settle(&mut a, &mut r).len(), 1);
    let before = r.hash("dialer:call:o1");
    a.receive(
        r.now,
        Source::Instance,
        &originate("o2", "acc-a", "sip:2@pbx", json!({"call_id": "o1"})),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    let (_, result) = r.result("o2");
    assert_eq!(error_code(&result), "call_id_in_use");
    assert_eq!(
        r.hash("dialer:call:o1"),
        before,
        "the existing record is left alone"
    );
    assert!(r.members("dialer:a:calls").contains("o1"));
    assert!(
        r.string("dialer:dest:sip:2@pbx").is_none(),
        "its destination is freed"
    );
    // A record of another instance counts too.
    r.seed_hash(
        "dialer:call:elsewhere",
        &[("instance", "b"), ("state", "answered")],
    );
    a.receive(
        r.now,
        Source::Instance,
        &originate("o3", "acc-a", "sip:3@pbx", json!({"call_id": "elsewhere"})),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert_eq!(error_code(&r.result("o3").1), "call_id_in_use");
    assert_eq!(
        r.hash("dialer:call:elsewhere")
            .get("state")
            .map(String::as_str),
        Some("answered")
    );
}

#[test]
fn originate_repeated_after_its_result_was_lost_is_not_dialed_again() {
    // A previous run created the record (the call id is the command id)
    // and died before storing the result.
    let mut r = Fake::new();
    let mut a = machine_a();
    r.seed_hash(
        "dialer:call:o1",
        &[
            ("instance", "a"),
            ("boot", "boot-old"),
            ("command_id", "o1"),
            ("state", "dialing"),
        ],
    );
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty(), "not dialed twice");
    let (_, result) = r.result("o1");
    assert_eq!(result["ok"], true);
    assert_eq!(result["result"]["call_id"], "o1");
    assert_eq!(result["result"]["instance"], "a");
    assert_eq!(result["result"]["placed_before"], true);
    assert_eq!(
        r.string("dialer:dest:sip:1@pbx").as_deref(),
        Some("o1"),
        "the destination stays taken: it was dialed"
    );
    // The run that placed it is gone: its record is closed.
    let record = r.hash("dialer:call:o1");
    assert_eq!(record.get("state").map(String::as_str), Some("ended"));
    assert_eq!(
        record.get("cause").map(String::as_str),
        Some("daemon_restart")
    );
    assert!(
        r.events()
            .iter()
            .any(|e| e["type"] == "call.ended" && e["call_id"] == "o1")
    );
}

#[test]
fn originate_whose_previous_run_died_before_its_invite_is_placed_now() {
    // The previous run claimed the record (HSETNX) and died before writing
    // its fields and the live set, so before any INVITE: placed now. Its
    // destination key holds this very call: not a duplicate.
    let mut r = Fake::new();
    let mut a = machine_a();
    r.seed_hash("dialer:call:o1", &[("instance", "a")]);
    r.seed_string("dialer:dest:sip:1@pbx", "o1");
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    let jobs = settle(&mut a, &mut r);
    assert_eq!(jobs.len(), 1, "dialed once, now");
    let record = r.hash("dialer:call:o1");
    assert_eq!(record.get("command_id").map(String::as_str), Some("o1"));
    assert!(r.members("dialer:a:calls").contains("o1"));
}

#[test]
fn originate_whose_job_fails_closes_its_record_and_frees_the_destination() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &cmd(
            "o1",
            "originate",
            json!({"account": "acc-a", "to": "sip:1@pbx"}),
            json!({"reply_to": "dialer:reply:x"}),
        ),
        None,
    );
    let ran = settle_with(&mut a, &mut r, |c| {
        Err(failure(
            c,
            ErrorCode::Capacity,
            "the instance is at 10 calls",
        ))
    });
    assert_eq!(ran.len(), 1);
    let (channel, result) = r.result("o1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "capacity");
    assert_eq!(result["error"]["retryable"], true);
    let record = r.hash("dialer:call:o1");
    assert_eq!(record.get("state").map(String::as_str), Some("ended"));
    assert_eq!(record.get("cause").map(String::as_str), Some("not_placed"));
    assert_eq!(record.get("side").map(String::as_str), Some("local"));
    assert_eq!(
        record.get("reason").map(String::as_str),
        Some("the instance is at 10 calls")
    );
    assert_eq!(record.get("instance").map(String::as_str), Some("a"));
    assert_eq!(r.ttl("dialer:call:o1"), Some(RECORD_TTL_MS));
    assert!(r.members("dialer:a:calls").is_empty());
    assert!(r.string("dialer:dest:sip:1@pbx").is_none());
    // The destination can be dialed again at once.
    a.receive(
        r.now,
        Source::Instance,
        &originate("o2", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o2"]);
    assert_eq!(r.result("o2").1["ok"], true);
    // A hangup of the closed call is refused: it has ended.
    a.receive(r.now, Source::Instance, &hangup("h1", "o1", None), None);
    assert!(settle(&mut a, &mut r).is_empty());
    assert_eq!(error_code(&r.result("h1").1), "call_ended");
}

#[test]
fn originate_with_a_bad_or_unsupported_media_endpoint_leaves_nothing_behind() {
    let mut r = Fake::new();
    let mut a = machine_a();
    for (id, media, code) in [
        ("o1", json!({"rtp": "10.0.0.1:4000"}), "bad_field"),
        (
            "o2",
            json!({"type": "sctp", "host": "10.0.0.1", "port": 4000}),
            "not_supported",
        ),
        (
            "o4",
            json!({"type": "websocket", "host": "10.0.0.1", "port": 4000}),
            "bad_field",
        ),
        (
            "o5",
            json!({"type": "websocket", "url": "wss://agent.example/ws",
                   "headers": {"Host": "evil"}}),
            "bad_field",
        ),
        (
            "o6",
            json!({"type": "websocket", "url": "wss://agent.example/ws",
                   "headers": {"X-Token": "a\r\nInjected: 1"}}),
            "bad_field",
        ),
        (
            "o7",
            json!({"type": "websocket", "url": "https://agent.example/ws"}),
            "bad_field",
        ),
        (
            "o8",
            json!({"type": "websocket", "url": "ws://a/ws", "protocol": "l16", "sample_rate": 44100}),
            "bad_field",
        ),
        (
            "o3",
            json!({"type": "rtp", "host": "10.0.0.1", "port": 4000, "codec": "opus"}),
            "bad_field",
        ),
    ] {
        a.receive(
            r.now,
            Source::Instance,
            &originate(id, "acc-a", "sip:1@pbx", json!({ "media": media })),
            None,
        );
        assert!(settle(&mut a, &mut r).is_empty());
        assert_eq!(error_code(&r.result(id).1), code, "{id}");
        assert!(r.hash(&format!("dialer:call:{id}")).is_empty());
    }
    assert!(r.string("dialer:dest:sip:1@pbx").is_none());
}

#[test]
fn originate_without_destination_window_sets_no_destination_key() {
    let mut r = Fake::new();
    let mut cfg = config("a", "boot-a", &["acc-a"]);
    cfg.destination_window_ms = 0;
    let mut a = Machine::new(cfg);
    for id in ["o1", "o2"] {
        a.receive(
            r.now,
            Source::Instance,
            &originate(id, "acc-a", "sip:1@pbx", json!({})),
            None,
        );
    }
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o1", "o2"]);
    assert!(r.string("dialer:dest:sip:1@pbx").is_none());
}

// 8b. Campaign gate: read after the claim, before the destination window.

const GATE: &str = "dialer:campaign:c1:gated";

/// The GETs of campaign gate flags run so far.
fn gate_reads(r: &Fake) -> usize {
    r.log
        .iter()
        .filter(|op| matches!(op, RedisOp::Get { key } if key.contains(":campaign:")))
        .count()
}

/// Asserts that the refused originate `id` to `to` left nothing behind.
fn assert_nothing_left(a: &Machine, r: &Fake, id: &str, to: &str) {
    assert!(r.hash(&format!("dialer:call:{id}")).is_empty(), "no record");
    assert!(!r.members("dialer:a:calls").contains(id), "not live");
    assert!(
        r.string(&format!("dialer:dest:{to}")).is_none(),
        "no destination key"
    );
    assert!(
        !r.log.iter().any(|op| matches!(op, RedisOp::HSetNx { .. })),
        "no record write was even tried"
    );
    assert_eq!(a.in_flight(), 0);
}

#[test]
fn originate_of_an_open_campaign_reads_its_gate_then_is_placed() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({"campaign": "c1"})),
        None,
    );
    let job = drive_until_job(&mut a, &mut r);
    assert_eq!(job.command.id, "o1");
    assert_eq!(gate_reads(&r), 1);
    // Claim, then the gate, then the destination window, then the record.
    let claim = r.position(|op| matches!(op, RedisOp::SetNx { key, .. } if key == "dialer:cmd:o1"));
    let gate = r.position(|op| matches!(op, RedisOp::Get { key } if key == GATE));
    let dest =
        r.position(|op| matches!(op, RedisOp::SetNx { key, .. } if key == "dialer:dest:sip:1@pbx"));
    let record = r.position(|op| matches!(op, RedisOp::HSetNx { .. }));
    assert!(claim < gate && gate < dest && dest < record, "{:#?}", r.log);
    assert_eq!(r.string("dialer:dest:sip:1@pbx").as_deref(), Some("o1"));
    assert_eq!(
        r.hash("dialer:call:o1").get("state").map(String::as_str),
        Some("created")
    );
    a.completed(r.now, job.token, success(&job.command));
    drive(&mut a, &mut r);
    assert_eq!(r.result("o1").1["ok"], true);
}

#[test]
fn originate_of_a_gated_campaign_is_refused_campaign_gated_and_leaves_nothing() {
    let mut r = Fake::new();
    let mut a = machine_a();
    r.seed_string(GATE, "1");
    a.receive(
        r.now,
        Source::Instance,
        &cmd(
            "o1",
            "originate",
            json!({"account": "acc-a", "to": "sip:1@pbx", "campaign": "c1"}),
            json!({"reply_to": "dialer:reply:x"}),
        ),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty(), "no job");
    let (channel, result) = r.result("o1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "campaign_gated");
    assert_eq!(result["error"]["retryable"], false);
    let message = result["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"c1\"") && message.contains(GATE),
        "{message}"
    );
    // The result is stored under the id (a repeat is not run).
    assert!(
        r.string("dialer:cmd:o1")
            .is_some_and(|s| s.contains("campaign_gated"))
    );
    assert_nothing_left(&a, &r, "o1", "sip:1@pbx");
    assert!(r.events_of("call.created").is_empty());

    // Once the flag is gone, a new command to the same destination is
    // placed: the refusal held no destination key.
    r.remove(GATE);
    a.receive(
        r.now,
        Source::Instance,
        &originate("o2", "acc-a", "sip:1@pbx", json!({"campaign": "c1"})),
        None,
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o2"]);
    assert_eq!(r.result("o2").1["ok"], true);
}

#[test]
fn originate_whose_gate_cannot_be_read_is_refused_fail_closed() {
    let mut r = Fake::new();
    let mut a = machine_a();
    // A hash under the flag's key: GET answers WRONGTYPE.
    r.seed_hash(GATE, &[("a", "b")]);
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({"campaign": "c1"})),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty(), "no job");
    let (_, result) = r.result("o1");
    assert_eq!(error_code(&result), "campaign_gated");
    let message = result["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fail closed"), "{message}");
    assert_nothing_left(&a, &r, "o1", "sip:1@pbx");

    // Any error reply (here from a stream, which is answered and acked,
    // not retried): refused the same way.
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "1-0", false),
        &originate("o2", "acc-a", "sip:2@pbx", json!({"campaign": "c1"})),
        Some(r.now),
    );
    let mut jobs = 0;
    loop {
        let batch = a.take_batch(512);
        if batch.is_empty() {
            break;
        }
        for op in &batch {
            let reply = match &op.op {
                RedisOp::Get { key } if key == GATE => {
                    Reply::Error("NOAUTH Authentication required.".into())
                }
                other => r.apply(other),
            };
            a.on_reply(r.now, op, reply);
        }
        jobs += std::iter::from_fn(|| a.poll_job()).count();
    }
    assert_eq!(jobs, 0);
    let (_, result) = r.result("o2");
    assert_eq!(error_code(&result), "campaign_gated");
    assert!(r.acked("dialer:a:cmdq", "1-0"));
    assert_nothing_left(&a, &r, "o2", "sip:2@pbx");
}

#[test]
fn originate_without_a_campaign_reads_no_gate() {
    let mut r = Fake::new();
    let mut a = machine_a();
    r.seed_string(GATE, "1");
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["o1"]);
    assert_eq!(r.result("o1").1["ok"], true);
    assert_eq!(gate_reads(&r), 0);
    assert!(
        !r.log.iter().any(|op| matches!(op, RedisOp::Get { .. })),
        "{:#?}",
        r.log
    );
}

#[test]
fn gate_read_lost_with_the_connection_refuses_the_originate_fail_closed() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({"campaign": "c1"})),
        None,
    );
    assert!(step(&mut a, &mut r), "the claim");
    // The batch with the gate's GET goes with the connection: the shell
    // puts it back; the gate is open, but it was not read in time.
    let batch = a.take_batch(512);
    assert!(
        batch
            .iter()
            .any(|op| matches!(&op.op, RedisOp::Get { key } if key == GATE) && op.waits()),
        "{batch:#?}"
    );
    a.requeue(r.now, batch);
    let again = a.take_batch(512);
    assert!(
        !again
            .iter()
            .any(|op| matches!(&op.op, RedisOp::Get { key } if key == GATE)),
        "the gate is not read after the reconnection: {again:#?}"
    );
    a.requeue(r.now, again);
    a.connected(r.now, 1, 500);
    assert!(settle(&mut a, &mut r).is_empty(), "no job");
    let result = r.result("o1").1;
    assert_eq!(error_code(&result), "campaign_gated");
    assert!(result.to_string().contains("could not be read"), "{result}");
    assert_nothing_left(&a, &r, "o1", "sip:1@pbx");
}

#[test]
fn shared_stream_originate_keeps_its_campaign_when_forwarded_and_is_gated_at_the_owner() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.heartbeat("{}".into(), 15_000);
    drive(&mut a, &mut r);
    let payload = originate(
        "o1",
        "acc-a",
        "sip:1@pbx",
        json!({"campaign": "c1", "campaign_max_calls": 3, "srtp": "optional"}),
    );
    b.receive(
        r.now,
        stream_source("dialer:cmdq", "1-0", true),
        &payload,
        Some(r.now),
    );
    assert!(settle(&mut b, &mut r).is_empty());
    assert_eq!(gate_reads(&r), 0, "read by the owner, not the forwarder");
    let forwarded = r.stream("dialer:a:cmdq");
    assert_eq!(forwarded.len(), 1);
    let original = command::parse(&payload, "dialer").expect("original");
    let copy = command::parse(forwarded[0].payload.as_bytes(), "dialer").expect("forwarded");
    // The copy also carries the entry's deadline as not_after.
    assert_eq!(copy.kind, original.kind);

    r.seed_string(GATE, "1");
    let entry = forwarded[0].id.clone();
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", &entry, false),
        forwarded[0].payload.as_bytes(),
        Some(r.now),
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert_eq!(error_code(&r.result("o1").1), "campaign_gated");
    assert!(r.acked("dialer:a:cmdq", &entry));
}

// 9. Streams: ack after the stored result; ids claimed elsewhere.

#[test]
fn stream_command_is_acked_after_its_result_is_stored_and_published() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "9-0", false),
        &register("r1", "acc-a", Some("dialer:reply:x")),
        Some(r.now),
    );
    let jobs = drive(&mut a, &mut r);
    assert_eq!(jobs.len(), 1);
    assert!(!r.acked("dialer:a:cmdq", "9-0"), "not acked while it runs");
    for job in jobs {
        a.completed(r.now, job.token, success(&job.command));
    }
    drive(&mut a, &mut r);
    assert!(r.acked("dialer:a:cmdq", "9-0"));
    let set = r.position(|op| matches!(op, RedisOp::Set { key, .. } if key == "dialer:cmd:r1"));
    let publish = r.position(
        |op| matches!(op, RedisOp::Publish { channel, .. } if channel == "dialer:reply:x"),
    );
    let add =
        r.position(|op| matches!(op, RedisOp::XAdd { stream, .. } if stream == EVENTS_STREAM));
    let ack = r.position(|op| matches!(op, RedisOp::XAck { .. }));
    assert!(set < ack && publish < ack && add < ack, "{:#?}", r.log);
    assert_eq!(r.result("r1").1["ok"], true);
}

#[test]
fn id_claimed_by_another_instance_is_left_pending_on_a_stream_and_in_progress_on_pubsub() {
    let mut r = Fake::new();
    let mut a = machine_a();
    r.set_string("dialer:cmd:r1", "pending:b:boot-b", LEASE_MS);
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "4-0", false),
        &register("r1", "acc-a", None),
        Some(r.now),
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert!(r.results().is_empty(), "no answer from the stream");
    assert!(!r.acked("dialer:a:cmdq", "4-0"), "left pending");
    assert_eq!(a.in_flight(), 0);

    a.receive(
        r.now,
        Source::Instance,
        &register("r1", "acc-a", Some("dialer:reply:x")),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    let (channel, result) = r.result("r1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "in_progress");
    assert_eq!(result["error"]["retryable"], true);

    // On the broadcast channel the claimer answers: nothing here.
    a.receive(
        r.now,
        Source::Broadcast,
        &register("r1", "acc-a", None),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert_eq!(r.results_for("r1").len(), 1);

    // The claim of b lapses (b died): the entry, claimed again, runs.
    r.advance(LEASE_MS);
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "4-0", false),
        &register("r1", "acc-a", None),
        Some(r.now - LEASE_MS),
    );
    assert_eq!(ids(&settle(&mut a, &mut r)), ["r1"]);
    assert!(r.acked("dialer:a:cmdq", "4-0"));
}

#[test]
fn duplicate_from_a_stream_is_answered_and_acked() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &register("r1", "acc-a", None),
        None,
    );
    settle(&mut a, &mut r);
    a.receive(
        r.now,
        stream_source("dialer:cmdq", "2-0", true),
        &register("r1", "acc-a", None),
        Some(r.now),
    );
    assert!(settle(&mut a, &mut r).is_empty());
    let all = r.results_for("r1");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1["duplicate"], true);
    assert!(r.acked("dialer:cmdq", "2-0"));
}

#[test]
fn claim_that_vanishes_before_it_is_read_is_tried_again() {
    // SET NX answered nil, then the GET finds nothing (the lease lapsed in
    // between): the machine claims again.
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(r.now, Source::Instance, &ping("p1", None), None);
    let batch = a.take_batch(512);
    assert_eq!(batch.len(), 1);
    assert!(matches!(&batch[0].op, RedisOp::SetNx { key, .. } if key == "dialer:a:cmd:p1"));
    assert!(batch[0].waits());
    a.on_reply(r.now, &batch[0], Reply::Nil);
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["p1"]);
    assert_eq!(r.result("p1").1["ok"], true);
}

#[test]
fn redis_refusing_the_claim_is_unavailable_on_pubsub_and_retried_from_a_stream() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &ping("p1", Some("dialer:reply:x")),
        None,
    );
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "1-0", false),
        &ping("p2", None),
        Some(r.now),
    );
    let batch = a.take_batch(512);
    assert_eq!(batch.len(), 2);
    for op in &batch {
        a.on_reply(r.now, op, Reply::Error("READONLY".into()));
    }
    assert!(settle(&mut a, &mut r).is_empty());
    let (_, result) = r.result("p1");
    assert_eq!(error_code(&result), "unavailable");
    assert_eq!(result["error"]["retryable"], true);
    assert!(r.results_for("p2").is_empty());
    assert!(!r.acked("dialer:a:cmdq", "1-0"));
    assert_eq!(a.in_flight(), 0);
}

// 10. Requeue and the event buffer.

#[test]
fn requeued_batch_is_taken_again_in_the_same_order() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.event(r.now, "daemon.started", json!({"version": "test"}));
    // A stream command without reply_to (its result goes to the events
    // channel) and one with, both finished; then events.
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "1-0", false),
        &ping("p1", None),
        Some(r.now),
    );
    a.receive(
        r.now,
        Source::Instance,
        &ping("p2", Some("dialer:reply:x")),
        None,
    );
    let job = drive_until_job(&mut a, &mut r);
    a.completed(r.now, job.token, success(&job.command));
    for job in std::iter::from_fn(|| a.poll_job()).collect::<Vec<_>>() {
        a.completed(r.now, job.token, success(&job.command));
    }
    a.event(r.now, "daemon.draining", json!({}));
    a.receive(r.now, Source::Instance, &ping("p3", None), None);

    let first = a.take_batch(512);
    assert_eq!(first.len(), 10, "{first:#?}");
    a.requeue(r.now, first.clone());
    let again = a.take_batch(512);
    assert_eq!(again, first);

    // Partly taken, partly failed: the failed part comes back first.
    a.requeue(r.now, again);
    let head = a.take_batch(5);
    let tail = a.take_batch(512);
    a.requeue(r.now, head.clone());
    let again: Vec<Op> = a.take_batch(512);
    assert_eq!(again, head);
    let mut whole = head;
    whole.extend(tail.clone());
    assert_eq!(whole, first);
    a.requeue(r.now, tail);
    a.requeue(r.now, again);
    assert_eq!(a.take_batch(512), first);

    // And it still works after all that.
    a.requeue(r.now, first);
    settle(&mut a, &mut r);
    for id in ["p1", "p2", "p3"] {
        assert_eq!(r.result(id).1["ok"], true, "{id}");
    }
    assert!(r.acked("dialer:a:cmdq", "1-0"));
    let seqs: Vec<u64> = r
        .events()
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn event_buffer_overflow_drops_the_oldest_and_is_reported_on_connection() {
    let mut r = Fake::new();
    let mut cfg = config("a", "boot-a", &[]);
    cfg.event_buffer = 6; // three events (a publish and a stream entry each)
    let mut a = Machine::new(cfg);
    for n in 1..=5 {
        a.event(r.now, "test.event", json!({"n": n}));
    }
    assert_eq!(a.stats().events_dropped, 2);
    assert_eq!(a.backlog(), 6);
    a.connected(r.now, 1, 5_000);
    drive(&mut a, &mut r);
    let events = r.events();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let dropped = r.events_of("events.dropped");
    assert_eq!(dropped.len(), 1, "{events:#?}");
    let report = &dropped[0];
    let report_seq = report["seq"].as_u64().expect("seq");
    // Every seq below the report that is not there is in its count.
    let missing = (1..report_seq).filter(|s| !seqs.contains(s)).count() as u64;
    assert_eq!(report["count"].as_u64(), Some(missing), "seqs {seqs:?}");
    assert_eq!(a.stats().events_dropped, missing);
    // The newest are kept, in order.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seqs.last(), Some(&report_seq));
    let connected = r.events_of("channel.connected");
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["reconnects"], 1);
    assert_eq!(connected[0]["outage_ms"], 5_000);
    // Reported once: the next connection says nothing about it.
    a.connected(r.now, 2, 100);
    drive(&mut a, &mut r);
    assert_eq!(r.events_of("events.dropped").len(), 1);
}

#[test]
fn events_dropped_counts_exactly_the_missing_seqs() {
    let mut r = Fake::new();
    let mut cfg = config("a", "boot-a", &[]);
    cfg.event_buffer = 20; // ten events
    let mut a = Machine::new(cfg);
    for n in 1..=12 {
        a.event(r.now, "test.event", json!({"n": n}));
    }
    assert_eq!(a.stats().events_dropped, 2);
    // Three of them written before the connection came back.
    for op in a.take_batch(6) {
        let reply = r.apply(&op.op);
        a.on_reply(r.now, &op, reply);
    }
    a.connected(r.now, 1, 10);
    drive(&mut a, &mut r);
    let seqs: Vec<u64> = r
        .events()
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (3..=14).collect::<Vec<_>>());
    let report = r.events_of("events.dropped");
    assert_eq!(report.len(), 1);
    assert_eq!(report[0]["count"], 2);
    assert_eq!(report[0]["seq"], 14);
}

// 11. Restart recovery.

#[test]
fn restart_closes_the_calls_the_previous_run_left_open() {
    let mut r = Fake::new();
    let old = [
        ("call_id", "old1"),
        ("instance", "a"),
        ("boot", "boot-old"),
        ("direction", "outbound"),
        ("account", "acc-a"),
        ("to", "sip:1@pbx"),
        ("from", "2001"),
        ("sip_call_id", "sip-1"),
        ("state", "answered"),
        ("created_ms", "1795299990000"),
        ("answered_ms", "1795299995000"),
    ];
    r.seed_hash("dialer:call:old1", &old);
    let same = [("instance", "a"), ("boot", "boot-a2"), ("state", "ringing")];
    r.seed_hash("dialer:call:same1", &same);
    let ended = [
        ("instance", "a"),
        ("boot", "boot-old"),
        ("state", "ended"),
        ("cause", "normal"),
    ];
    r.seed_hash("dialer:call:ended1", &ended);
    for call in ["old1", "same1", "ended1", "gone1"] {
        r.sets
            .entry("dialer:a:calls".into())
            .or_default()
            .insert(call.into());
    }
    let mut a = Machine::new(config("a", "boot-a2", &["acc-a"]));
    a.connected(r.now, 0, 0);
    drive(&mut a, &mut r);

    let closed = r.hash("dialer:call:old1");
    assert_eq!(closed.get("state").map(String::as_str), Some("ended"));
    assert_eq!(
        closed.get("cause").map(String::as_str),
        Some("daemon_restart")
    );
    assert_eq!(closed.get("side").map(String::as_str), Some("local"));
    assert_eq!(closed.get("ended_ms"), Some(&T0.to_string()));
    assert_eq!(
        closed.get("duration_ms"),
        Some(&(T0 - 1_795_299_995_000).to_string())
    );
    assert_eq!(
        closed.get("boot").map(String::as_str),
        Some("boot-old"),
        "fields kept"
    );
    assert_eq!(r.ttl("dialer:call:old1"), Some(RECORD_TTL_MS));

    let events = r.events_of("call.ended");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["call_id"], "old1");
    assert_eq!(e["cause"], "daemon_restart");
    assert_eq!(e["side"], "local");
    assert_eq!(e["boot"], "boot-a2");
    assert_eq!(e["previous_boot"], "boot-old");
    assert_eq!(e["account"], "acc-a");
    assert_eq!(e["answered_ms"], 1_795_299_995_000_u64);
    assert_eq!(e["ended_ms"], T0);
    assert_eq!(e["seq"], 2, "after channel.connected");

    // Records of this run and ended records are not touched.
    let untouched = |fields: &[(&str, &str)]| -> BTreeMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(r.hash("dialer:call:same1"), untouched(&same));
    assert_eq!(r.hash("dialer:call:ended1"), untouched(&ended));
    assert!(
        !r.log
            .iter()
            .any(|op| matches!(op, RedisOp::HSet { key, .. } if key != "dialer:call:old1"))
    );
    assert_eq!(
        r.members("dialer:a:calls"),
        BTreeSet::from(["same1".to_owned()]),
        "closed, ended and vanished calls leave the live set"
    );

    // Once per run: a reconnection does not recover again.
    a.connected(r.now, 1, 10);
    drive(&mut a, &mut r);
    let smembers = r
        .log
        .iter()
        .filter(|op| matches!(op, RedisOp::SMembers { .. }))
        .count();
    assert_eq!(smembers, 1);
    assert_eq!(r.events_of("call.ended").len(), 1);
}

#[test]
fn restart_does_not_close_calls_already_live_in_this_run() {
    let mut r = Fake::new();
    r.seed_hash(
        "dialer:call:c1",
        &[
            ("instance", "a"),
            ("boot", "boot-old"),
            ("state", "dialing"),
        ],
    );
    r.sets
        .entry("dialer:a:calls".into())
        .or_default()
        .insert("c1".into());
    let mut a = machine_a();
    // The call is live here before the connection is up (its event came).
    a.core_event(call_event("c1", CallState::Answered, None, 2_000));
    a.connected(r.now, 0, 0);
    drive(&mut a, &mut r);
    assert!(r.events_of("call.ended").is_empty());
    assert_eq!(
        r.hash("dialer:call:c1").get("state").map(String::as_str),
        Some("answered")
    );
    assert!(r.members("dialer:a:calls").contains("c1"));
}

// 12. Call commands.

#[test]
fn call_command_for_a_call_of_another_instance() {
    let mut r = Fake::new();
    let mut a = machine_a();
    r.seed_hash(
        "dialer:call:c1",
        &[
            ("call_id", "c1"),
            ("instance", "b"),
            ("boot", "boot-b"),
            ("state", "answered"),
        ],
    );
    // On a's own channel: unknown_call naming b.
    a.receive(
        r.now,
        Source::Instance,
        &hangup("h1", "c1", Some("dialer:reply:x")),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    let (channel, result) = r.result("h1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "unknown_call");
    let message = result["error"]["message"].as_str().expect("message");
    assert!(message.contains("\"b\""), "{message}");
    assert!(
        r.string("dialer:cmd:h1").is_none(),
        "not claimed: b may still run it"
    );

    // On the shared stream: forwarded to b's stream, and acked.
    let payload = hangup("h2", "c1", Some("dialer:reply:x"));
    a.receive(
        r.now,
        stream_source("dialer:cmdq", "3-0", true),
        &payload,
        Some(r.now),
    );
    assert!(settle(&mut a, &mut r).is_empty());
    assert!(r.results_for("h2").is_empty());
    assert!(r.acked("dialer:cmdq", "3-0"));
    let forwarded = r.stream("dialer:b:cmdq");
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].field, "cmd");
    // The copy is the command, with the original entry's deadline.
    let mut expected = command::parse(&payload, "dialer").expect("command");
    expected.not_after = Some(r.now + a.config().stream_max_age_ms);
    assert_eq!(
        command::parse(forwarded[0].payload.as_bytes(), "dialer").expect("command"),
        expected
    );

    // On a's own stream: answered unknown_call and acked.
    a.receive(
        r.now,
        stream_source("dialer:a:cmdq", "4-0", false),
        &hangup("h3", "c1", None),
        Some(r.now),
    );
    settle(&mut a, &mut r);
    assert_eq!(error_code(&r.result("h3").1), "unknown_call");
    assert!(r.acked("dialer:a:cmdq", "4-0"));

    // On the broadcast channel: left to b.
    a.receive(r.now, Source::Broadcast, &hangup("h4", "c1", None), None);
    assert!(settle(&mut a, &mut r).is_empty());
    assert!(r.results_for("h4").is_empty());
    assert_eq!(r.stream("dialer:b:cmdq").len(), 1, "nothing else forwarded");
}

#[test]
fn call_command_for_an_ended_call_of_this_instance_is_call_ended() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    r.seed_hash(
        "dialer:call:c1",
        &[
            ("call_id", "c1"),
            ("instance", "a"),
            ("state", "ended"),
            ("cause", "normal"),
        ],
    );
    a.receive(
        r.now,
        Source::Instance,
        &hangup("h1", "c1", Some("dialer:reply:x")),
        None,
    );
    assert!(settle(&mut a, &mut r).is_empty());
    let (channel, result) = r.result("h1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(error_code(&result), "call_ended");
    // On the broadcast channel, one answer (a's; b leaves it to a).
    let payload = hangup("h2", "c1", None);
    a.receive(r.now, Source::Broadcast, &payload, None);
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    let (_, result) = r.result("h2");
    assert_eq!(error_code(&result), "call_ended");
    assert_eq!(result["instance"], "a");
}

#[test]
fn call_command_for_no_known_call_is_unknown_call_once() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    let payload = cmd(
        "d1",
        "dtmf",
        json!({"call_id": "zz", "digits": "12"}),
        json!({}),
    );
    a.receive(r.now, Source::Broadcast, &payload, None);
    b.receive(r.now, Source::Broadcast, &payload, None);
    assert_eq!(drive_pair(&mut a, &mut b, &mut r), 0);
    assert!(a.poll_job().is_none() && b.poll_job().is_none());
    let (_, result) = r.result("d1");
    assert_eq!(error_code(&result), "unknown_call");
    assert_eq!(result["command"], "dtmf");
}

#[test]
fn call_command_for_a_live_call_runs_here() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    settle(&mut a, &mut r);
    let reads = r.log.len();
    a.receive(
        r.now,
        Source::Instance,
        &hangup("h1", "o1", Some("dialer:reply:x")),
        None,
    );
    let ran = settle(&mut a, &mut r);
    assert_eq!(ids(&ran), ["h1"]);
    assert_eq!(
        ran[0].kind,
        CommandKind::Hangup {
            call_id: "o1".into()
        }
    );
    assert!(
        !r.log[reads..]
            .iter()
            .any(|op| matches!(op, RedisOp::HGetAll { .. })),
        "a live call needs no record lookup"
    );
    assert_eq!(r.result("h1").1["result"]["call_id"], "o1");
    // A call of this instance whose events have not come yet (a record
    // that says "a", not ended) runs here too.
    r.seed_hash("dialer:call:c9", &[("instance", "a"), ("state", "created")]);
    a.receive(r.now, Source::Instance, &hangup("h2", "c9", None), None);
    assert_eq!(ids(&settle(&mut a, &mut r)), ["h2"]);
}

#[test]
fn call_status_is_answered_from_the_record_by_any_instance() {
    let mut r = Fake::new();
    let mut a = machine_a();
    let mut b = machine_b();
    a.receive(
        r.now,
        Source::Instance,
        &originate("o1", "acc-a", "sip:1@pbx", json!({})),
        None,
    );
    settle(&mut a, &mut r);
    let payload = cmd(
        "s1",
        "call_status",
        json!({"call_id": "o1"}),
        json!({"reply_to": "dialer:reply:x"}),
    );
    b.receive(r.now, Source::Broadcast, &payload, None);
    a.receive(r.now, Source::Broadcast, &payload, None);
    assert!(settle(&mut b, &mut r).is_empty());
    assert!(settle(&mut a, &mut r).is_empty());
    let (channel, result) = r.result("s1");
    assert_eq!(channel, "dialer:reply:x");
    assert_eq!(result["instance"], "b");
    let record = &result["result"];
    assert_eq!(record["call_id"], "o1");
    assert_eq!(record["instance"], "a");
    assert_eq!(record["state"], "created");
    assert_eq!(record["created_ms"], T0);
    // No record: unknown_call.
    b.receive(
        r.now,
        Source::Instance,
        &cmd("s2", "call_status", json!({"call_id": "nope"}), json!({})),
        None,
    );
    settle(&mut b, &mut r);
    assert_eq!(error_code(&r.result("s2").1), "unknown_call");
}

// Core events, heartbeat, stop.

#[test]
fn call_transitions_write_the_record_and_the_live_set() {
    let mut r = Fake::new();
    let mut a = machine_a();
    a.core_event(call_event("c1", CallState::Ringing, None, 100));
    drive(&mut a, &mut r);
    let record = r.hash("dialer:call:c1");
    assert_eq!(record.get("state").map(String::as_str), Some("ringing"));
    assert_eq!(record.get("instance").map(String::as_str), Some("a"));
    assert_eq!(record.get("boot").map(String::as_str), Some("boot-a"));
    assert_eq!(record.get("direction").map(String::as_str), Some("inbound"));
    assert_eq!(
        r.ttl("dialer:call:c1"),
        Some(RECORD_TTL_MS + MAX_DURATION_MS)
    );
    assert!(r.members("dialer:a:calls").contains("c1"));
    a.core_event(call_event(
        "c1",
        CallState::Ended,
        Some(Ended::remote(EndCause::Normal, None)),
        5_000,
    ));
    drive(&mut a, &mut r);
    let record = r.hash("dialer:call:c1");
    assert_eq!(record.get("state").map(String::as_str), Some("ended"));
    assert_eq!(record.get("cause").map(String::as_str), Some("normal"));
    assert_eq!(record.get("side").map(String::as_str), Some("remote"));
    assert_eq!(r.ttl("dialer:call:c1"), Some(RECORD_TTL_MS));
    assert!(r.members("dialer:a:calls").is_empty());
    let kinds: Vec<Value> = r.events().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds, [json!("call.ringing"), json!("call.ended")]);
    let ended = &r.events()[1];
    assert_eq!(ended["duration_ms"], 4_000);
    // An ended call is no longer live here: a hangup reads its record.
    a.receive(r.now, Source::Instance, &hangup("h1", "c1", None), None);
    assert!(settle(&mut a, &mut r).is_empty());
    assert_eq!(error_code(&r.result("h1").1), "call_ended");
}

#[test]
fn heartbeat_writes_and_stopping_removes_this_instance_keys() {
    let mut r = Fake::new();
    let mut a = Machine::new(config("a", "boot-a", &["acc-a", "acc-a2"]));
    let mut b = machine_b();
    let snap_a = json!({"instance": {"id": "a"}}).to_string();
    let snap_b = json!({"instance": {"id": "b"}}).to_string();
    a.heartbeat(snap_a.clone(), 15_000);
    drive(&mut a, &mut r);
    assert_eq!(r.string("dialer:a:status"), Some(snap_a.clone()));
    assert_eq!(r.string("dialer:sip_status"), Some(snap_a.clone()));
    assert_eq!(r.ttl("dialer:a:status"), Some(15_000));
    assert_eq!(r.string("dialer:account:acc-a").as_deref(), Some("a"));
    assert_eq!(r.string("dialer:account:acc-a2").as_deref(), Some("a"));
    assert_eq!(r.ttl("dialer:account:acc-a"), Some(15_000));
    // Expire without renewal.
    r.advance(15_000);
    assert!(r.string("dialer:account:acc-a").is_none());
    a.heartbeat(snap_a.clone(), 15_000);
    b.heartbeat(snap_b.clone(), 15_000);
    drive(&mut a, &mut r);
    drive(&mut b, &mut r);
    a.stopping(r.now, json!({"phase": "stopping"}));
    drive(&mut a, &mut r);
    assert!(r.string("dialer:a:status").is_none());
    assert_eq!(
        r.string("dialer:sip_status"),
        Some(snap_b),
        "b wrote last: kept"
    );
    assert!(r.string("dialer:account:acc-a").is_none());
    assert!(r.string("dialer:account:acc-a2").is_none());
    assert_eq!(r.string("dialer:account:acc-b").as_deref(), Some("b"));
    let stopping = r.events_of("daemon.stopping");
    assert_eq!(stopping.len(), 1);
    assert_eq!(
        stopping[0]["status"]["phase"], "stopping",
        "the final status goes with it: {}",
        stopping[0]
    );
    b.stopping(r.now, json!({"phase": "stopping"}));
    drive(&mut b, &mut r);
    assert!(r.string("dialer:sip_status").is_none());
}

#[test]
fn writes_waiting_for_redis_are_bounded_and_the_drops_counted() {
    let mut cfg = config("a", "boot-a", &["acct"]);
    cfg.event_buffer = 4;
    let mut m = Machine::new(cfg);
    // Redis is away: heartbeats keep queueing status writes.
    for _ in 0..100 {
        m.heartbeat("{}".into(), 1000);
    }
    assert!(m.backlog() <= 16 + 4, "bounded: {}", m.backlog());
    assert!(m.stats().ops_dropped > 0);
}
