//! A fixed-rate load of `originate` commands over dialerd's Redis control
//! channel, for `benches/control_load.sh`: command-to-result latency, and
//! what the run published on `<p>:events`.
//!
//!   control_load MODE REDIS_URL PREFIX INSTANCE ACCOUNT SIPP_ADDR RATE SECS
//!
//! MODE is `pubsub` or `stream`:
//! - `pubsub`: each command is PUBLISHed on `<p>:<instance>:cmd` with a
//!   `reply_to` of a private channel (`<p>:reply:control-load-<run>`) this
//!   process subscribes to; the result's time is when its push arrives;
//! - `stream`: each command is XADDed to `<p>:<instance>:cmdq` (field `cmd`),
//!   without `reply_to`; results are read from `<p>:events:stream` (XREAD
//!   BLOCK on a connection of its own, from the last entry before the run)
//!   and matched by `id`. Such results are also published on `<p>:events`;
//!   their arrival there is reported apart (`events_channel_latency_ms`).
//!
//! Commands: `RATE` a second for `SECS` seconds (1 ms ticks, as
//! `call_load`), each with a unique id (`cl-<run>-<n>`) and a unique `to`
//! (`sip:b<n>.<run>@SIPP_ADDR`), `max_duration_secs` 1 (so every answered
//! call ends after a second) and `ring_timeout_secs` 10. Every send is its
//! own task on a multiplexed connection, so a slow reply never delays the
//! next send; the send time is taken just before the command is issued.
//!
//! Before the load, one `ping` goes the same way and must be answered (10 s),
//! so the path is known to work. After the last send it waits for every
//! result (at most 10 s) and then for the `call.ended` of every call that was
//! placed (at most 20 s more).
//!
//! A separate connection subscribes to `<p>:events` for the whole run and
//! counts what arrives: events (with `seq`) by type, `seq` gaps per
//! `(instance, boot)`, `events.dropped`, and the ends of this run's calls by
//! cause. `events_per_sec` is the events that arrived between the first and
//! the last send divided by that span (the steady state).
//!
//! CPU: `CPU_PIDS="name=PID name=PID ..."` (environment) names processes
//! whose utime + stime (`/proc/PID/stat`) are read just before the first send
//! and once the calls have ended; the difference per command is printed, with
//! this process's own, and how long each process's threads waited for a CPU
//! meanwhile (`runqueue_wait_ms`, from `/proc/PID/task/*/schedstat`).
//!
//! Output: `READY` once the ping is answered, then one line `RESULT {json}`;
//! exit 1 when the ping gets no answer, 2 on a Redis error before the load.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value as RedisValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// How long after the last send results may still come.
const RESULT_DRAIN: Duration = Duration::from_secs(10);
/// How long after the last result the placed calls may take to end (1 s
/// talk time, the BYE's transaction).
const CALL_DRAIN: Duration = Duration::from_secs(20);
/// How long the warm-up ping may take.
const PING_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    PubSub,
    Stream,
}

/// One command's fate.
#[derive(Clone, Default)]
struct Slot {
    sent: Option<Instant>,
    /// When its result arrived (on the reply channel or the events stream).
    result: Option<Instant>,
    /// When its result arrived on `<p>:events` (stream mode).
    on_channel: Option<Instant>,
    ok: bool,
    code: Option<String>,
    duplicate: bool,
}

/// The fields of an event or a result this load reads (the rest is
/// skipped, and nothing is copied unless escaped).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    ok: bool,
    duplicate: bool,
    error: Option<ErrorBody<'a>>,
    seq: Option<u64>,
    #[serde(borrow)]
    instance: Cow<'a, str>,
    #[serde(borrow)]
    boot: Cow<'a, str>,
    #[serde(borrow)]
    call_id: Cow<'a, str>,
    #[serde(borrow)]
    cause: Cow<'a, str>,
    code: Option<u64>,
    count: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    serde_json::from_slice(bytes).ok()
}

struct State {
    run: String,
    slots: Mutex<Vec<Slot>>,
    results: AtomicU64,
    ping_answered: Notify,
    ping_id: String,
    /// Events (with `seq`) seen on `<p>:events`, with when they arrived.
    event_times: Mutex<Vec<Instant>>,
    events_by_type: Mutex<BTreeMap<String, u64>>,
    /// Last `seq` per `(instance, boot)` and the gaps seen.
    seqs: Mutex<HashMap<(String, String), u64>>,
    seq_gaps: AtomicU64,
    seq_repeats: AtomicU64,
    events_dropped: AtomicU64,
    /// `call.ended` of this run's calls, by cause.
    ended_by_cause: Mutex<BTreeMap<String, u64>>,
    ended: AtomicU64,
    results_on_channel: AtomicU64,
    other_results: AtomicU64,
    send_errors: AtomicU64,
    /// PUBLISHes that reached no subscriber (dialerd was not subscribed).
    unheard: AtomicU64,
    /// Errors of the stream reader.
    read_errors: AtomicU64,
}

impl State {
    /// The slot index of a command id of this run (`cl-<run>-<n>`).
    fn index(&self, id: &str) -> Option<usize> {
        id.strip_prefix("cl-")?
            .strip_prefix(self.run.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// A `command.result`, arrived at `at`, on the results path
    /// (`primary`) or on `<p>:events`.
    fn result(&self, at: Instant, v: &Message<'_>, primary: bool) {
        let id = &*v.id;
        if id == self.ping_id {
            if primary {
                self.ping_answered.notify_one();
            }
            return;
        }
        let Some(i) = self.index(id) else {
            self.other_results.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut slots = self.slots.lock().expect("not poisoned");
        let Some(slot) = slots.get_mut(i) else {
            return;
        };
        if !primary {
            slot.on_channel.get_or_insert(at);
            return;
        }
        if slot.result.is_some() {
            return;
        }
        slot.result = Some(at);
        slot.ok = v.ok;
        slot.code = v.error.as_ref().map(|e| e.code.clone().into_owned());
        slot.duplicate = v.duplicate;
        drop(slots);
        self.results.fetch_add(1, Ordering::Relaxed);
    }

    /// Something that arrived on `<p>:events`.
    fn event(&self, at: Instant, v: &Message<'_>, mode: Mode) {
        let kind = &*v.kind;
        if kind == "command.result" {
            self.results_on_channel.fetch_add(1, Ordering::Relaxed);
            if mode == Mode::Stream {
                self.result(at, v, false);
            }
            return;
        }
        let Some(seq) = v.seq else {
            return;
        };
        self.event_times.lock().expect("not poisoned").push(at);
        *self
            .events_by_type
            .lock()
            .expect("not poisoned")
            .entry(kind.to_owned())
            .or_default() += 1;
        let key = (v.instance.clone().into_owned(), v.boot.clone().into_owned());
        {
            let mut seqs = self.seqs.lock().expect("not poisoned");
            match seqs.get(&key).copied() {
                Some(last) if seq <= last => {
                    self.seq_repeats.fetch_add(1, Ordering::Relaxed);
                }
                Some(last) => {
                    self.seq_gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
                    seqs.insert(key, seq);
                }
                None => {
                    seqs.insert(key, seq);
                }
            }
        }
        match kind {
            "events.dropped" => {
                self.events_dropped.fetch_add(v.count, Ordering::Relaxed);
            }
            "call.ended" if self.index(&v.call_id).is_some() => {
                self.ended.fetch_add(1, Ordering::Relaxed);
                let cause = &*v.cause;
                let code = v.code.map(|c| format!(" {c}")).unwrap_or_default();
                *self
                    .ended_by_cause
                    .lock()
                    .expect("not poisoned")
                    .entry(format!("{cause}{code}"))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: control_load pubsub|stream REDIS_URL PREFIX INSTANCE ACCOUNT SIPP_ADDR RATE SECS"
    );
    std::process::exit(2);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: state first,
    // then utime and stime at 12 and 13 (fields 14 and 15 of the line).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(get(11)? + get(12)?)
}

/// Time the threads of a process spent runnable but waiting for a CPU,
/// nanoseconds: the sum of the second field of `/proc/PID/task/*/schedstat`
/// (threads that ended meanwhile are not counted).
fn runqueue_wait_ns(pid: &str) -> Option<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        sum += stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(sum)
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        usage();
    }
    let mode = match args[0].as_str() {
        "pubsub" => Mode::PubSub,
        "stream" => Mode::Stream,
        _ => usage(),
    };
    let rate: u64 = args[6].parse().unwrap_or_else(|_| usage());
    let secs: u64 = args[7].parse().unwrap_or_else(|_| usage());
    if rate == 0 || secs == 0 {
        usage();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(load(
        mode,
        args[1].clone(),
        args[2].clone(),
        args[3].clone(),
        args[4].clone(),
        args[5].clone(),
        rate,
        secs,
    ));
    std::process::exit(code);
}

/// A RESP3 connection; pushes (with their arrival time) go to `pushes`.
async fn connect(
    url: &str,
    pushes: Option<mpsc::UnboundedSender<(Instant, PushInfo)>>,
    response_timeout: Option<Duration>,
) -> redis::RedisResult<MultiplexedConnection> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let client = redis::Client::open(format!("{url}{sep}protocol=resp3"))?;
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(response_timeout);
    if let Some(tx) = pushes {
        // Stamped where the connection parses the push, before any queue.
        config =
            config.set_push_sender(move |p: PushInfo| tx.send((Instant::now(), p)).map_err(|_| ()));
    }
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The payload of a pub/sub message push.
fn payload(p: &PushInfo) -> Option<&[u8]> {
    if p.kind != PushKind::Message {
        return None;
    }
    match p.data.get(1)? {
        RedisValue::BulkString(b) => Some(b),
        _ => None,
    }
}

fn text(v: &RedisValue) -> Option<&[u8]> {
    match v {
        RedisValue::BulkString(b) => Some(b),
        RedisValue::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The entries of an XREAD reply (RESP3 map or RESP2 pairs) as
/// `(entry id, event payload)`.
fn xread_entries(v: &RedisValue) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |list: &RedisValue| {
        let RedisValue::Array(entries) = list else {
            return;
        };
        for e in entries {
            let RedisValue::Array(parts) = e else {
                continue;
            };
            let (Some(id), Some(RedisValue::Array(fields))) =
                (parts.first().and_then(text), parts.get(1))
            else {
                continue;
            };
            let id = String::from_utf8_lossy(id).into_owned();
            let event = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text) == Some(b"event".as_slice()))
                .and_then(|kv| kv.get(1).and_then(text))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            out.push((id, event));
        }
    };
    match v {
        RedisValue::Map(pairs) => pairs.iter().for_each(|(_, list)| add(list)),
        RedisValue::Array(streams) => {
            for s in streams {
                if let RedisValue::Array(pair) = s
                    && let Some(list) = pair.get(1)
                {
                    add(list);
                }
            }
        }
        _ => {}
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn load(
    mode: Mode,
    url: String,
    prefix: String,
    instance: String,
    account: String,
    sipp: String,
    rate: u64,
    secs: u64,
) -> i32 {
    let run = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        % 1_000_000_000)
        .to_string();
    let total = usize::try_from(rate * secs).unwrap_or(usize::MAX);
    let state = Arc::new(State {
        ping_id: format!("cl-{run}-ping"),
        run: run.clone(),
        slots: Mutex::new(vec![Slot::default(); total]),
        results: AtomicU64::new(0),
        ping_answered: Notify::new(),
        event_times: Mutex::new(Vec::with_capacity(total * 8)),
        events_by_type: Mutex::default(),
        seqs: Mutex::default(),
        seq_gaps: AtomicU64::new(0),
        seq_repeats: AtomicU64::new(0),
        events_dropped: AtomicU64::new(0),
        ended_by_cause: Mutex::default(),
        ended: AtomicU64::new(0),
        results_on_channel: AtomicU64::new(0),
        other_results: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        unheard: AtomicU64::new(0),
        read_errors: AtomicU64::new(0),
    });
    let fail = |what: &str, e: redis::RedisError| {
        eprintln!("{what}: {e}");
        2
    };

    // <p>:events, for the whole run.
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut events_conn = match connect(&url, Some(events_tx), Some(Duration::from_secs(5))).await {
        Ok(c) => c,
        Err(e) => return fail("connect (events)", e),
    };
    let events_channel = format!("{prefix}:events");
    if let Err(e) = events_conn.subscribe(&events_channel).await {
        return fail("subscribe (events)", e);
    }
    let events_task = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some((at, p)) = events_rx.recv().await {
                if let Some(v) = payload(&p).and_then(parse) {
                    state.event(at, &v, mode);
                }
            }
        })
    };

    // The results path.
    let reply_channel = format!("{prefix}:reply:control-load-{run}");
    let mut _reply_conn = None;
    let stop_reader = Arc::new(Notify::new());
    let reader_task = match mode {
        Mode::PubSub => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut conn = match connect(&url, Some(tx), Some(Duration::from_secs(5))).await {
                Ok(c) => c,
                Err(e) => return fail("connect (replies)", e),
            };
            if let Err(e) = conn.subscribe(&reply_channel).await {
                return fail("subscribe (replies)", e);
            }
            _reply_conn = Some(conn);
            let state = state.clone();
            tokio::spawn(async move {
                while let Some((at, p)) = rx.recv().await {
                    if let Some(v) = payload(&p).and_then(parse) {
                        state.result(at, &v, true);
                    }
                }
            })
        }
        Mode::Stream => {
            let mut conn = match connect(&url, None, Some(Duration::from_secs(5))).await {
                Ok(c) => c,
                Err(e) => return fail("connect (stream reader)", e),
            };
            let stream = format!("{prefix}:events:stream");
            // From the last entry before the run.
            let last: RedisValue = match redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                Err(e) => return fail("XREVRANGE", e),
            };
            let mut from = match &last {
                RedisValue::Array(entries) => entries
                    .first()
                    .and_then(|e| match e {
                        RedisValue::Array(parts) => parts.first().and_then(text),
                        _ => None,
                    })
                    .map(|id| String::from_utf8_lossy(id).into_owned()),
                _ => None,
            }
            .unwrap_or_else(|| "0-0".into());
            let (state, stop) = (state.clone(), stop_reader.clone());
            tokio::spawn(async move {
                loop {
                    let mut xread = redis::cmd("XREAD");
                    xread
                        .arg("COUNT")
                        .arg(1000)
                        .arg("BLOCK")
                        .arg(200)
                        .arg("STREAMS")
                        .arg(&stream)
                        .arg(&from);
                    let read = xread.query_async::<RedisValue>(&mut conn);
                    let reply = tokio::select! {
                        () = stop.notified() => return,
                        r = read => r,
                    };
                    let at = Instant::now();
                    match reply {
                        Ok(v) => {
                            for (id, event) in xread_entries(&v) {
                                from = id;
                                // Only results are parsed here; events are
                                // counted on the channel.
                                if memchr_result(&event)
                                    && let Some(v) = parse(&event)
                                    && v.kind == "command.result"
                                {
                                    state.result(at, &v, true);
                                }
                            }
                        }
                        Err(e) => {
                            state.read_errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("XREAD: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        }
    };

    // The sending connection.
    let sender = match connect(&url, None, Some(Duration::from_secs(5))).await {
        Ok(c) => c,
        Err(e) => return fail("connect (sender)", e),
    };
    let (target, verb) = match mode {
        Mode::PubSub => (format!("{prefix}:{instance}:cmd"), "PUBLISH"),
        Mode::Stream => (format!("{prefix}:{instance}:cmdq"), "XADD"),
    };
    let command = |id: &str, kind: &str, args: Value| -> String {
        let mut c = json!({"v": 1, "id": id, "type": kind, "args": args});
        if mode == Mode::PubSub {
            c["reply_to"] = Value::String(reply_channel.clone());
        }
        c.to_string()
    };
    let send = |payload: String| {
        let mut conn = sender.clone();
        let state = state.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut cmd = redis::cmd(verb);
            cmd.arg(&target);
            if verb == "XADD" {
                cmd.arg("*").arg("cmd");
            }
            cmd.arg(payload);
            match cmd.query_async::<RedisValue>(&mut conn).await {
                Ok(RedisValue::Int(0)) => {
                    state.unheard.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    if state.send_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{verb}: {e}");
                    }
                }
            }
        });
    };

    // Warm-up: one ping the same way.
    let answered = state.ping_answered.notified();
    send(command(&state.ping_id, "ping", json!({})));
    if tokio::time::timeout(PING_LIMIT, answered).await.is_err() {
        eprintln!("no answer to the warm-up ping within {PING_LIMIT:?} ({verb} {target})");
        return 1;
    }
    println!("READY");
    let _ = std::io::stdout().flush();

    let pids: Vec<(String, String)> = std::env::var("CPU_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(n, p)| (n.to_owned(), p.to_owned())))
        .collect();
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ticks(p)).collect();
    let self_before = cpu_ticks("self");
    let wait_before: Vec<Option<u64>> = pids.iter().map(|(_, p)| runqueue_wait_ns(p)).collect();
    let self_wait_before = runqueue_wait_ns("self");

    // The load: RATE a second, on 1 ms ticks.
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0usize;
    let mut last_send = start;
    while n < total {
        tick.tick().await;
        let due = (u128::from(rate) * start.elapsed().as_micros() / 1_000_000).min(total as u128)
            as usize;
        while n < due {
            let id = format!("cl-{run}-{n}");
            let to = format!("sip:b{n}.{run}@{sipp}");
            let payload = command(
                &id,
                "originate",
                json!({"account": account, "to": to, "max_duration_secs": 1, "ring_timeout_secs": 10}),
            );
            let now = Instant::now();
            if let Some(slot) = state.slots.lock().expect("not poisoned").get_mut(n) {
                slot.sent = Some(now);
            }
            last_send = now;
            send(payload);
            n += 1;
        }
    }
    let send_span = last_send.duration_since(start).as_secs_f64();

    // Every result, then the end of every placed call.
    let deadline = Instant::now() + RESULT_DRAIN;
    while state.results.load(Ordering::Relaxed) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let results_done = start.elapsed().as_secs_f64();
    let placed = state
        .slots
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|s| s.ok && !s.duplicate)
        .count() as u64;
    let deadline = Instant::now() + CALL_DRAIN;
    while state.ended.load(Ordering::Relaxed) < placed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls_done = start.elapsed().as_secs_f64();
    let cpu_after: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ticks(p)).collect();
    let self_after = cpu_ticks("self");
    let wait_after: Vec<Option<u64>> = pids.iter().map(|(_, p)| runqueue_wait_ns(p)).collect();
    let self_wait_after = runqueue_wait_ns("self");
    // Late stragglers of the events channel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_reader.notify_one();
    // The pub/sub reader ends only with its connection: stop it.
    reader_task.abort();
    let _ = reader_task.await;
    events_task.abort();

    // Figures.
    let tick_us = 1e6 / clock_ticks() as f64;
    let mut cpu = serde_json::Map::new();
    let names = pids.iter().map(|(n, _)| n.as_str()).chain(["control_load"]);
    let befores = cpu_before
        .iter()
        .chain([&self_before])
        .zip(wait_before.iter().chain([&self_wait_before]));
    let afters = cpu_after
        .iter()
        .chain([&self_after])
        .zip(wait_after.iter().chain([&self_wait_after]));
    for ((name, (b, wb)), (a, wa)) in names.zip(befores).zip(afters) {
        if let (Some(b), Some(a)) = (b, a) {
            let wait_ms = match (wb, wa) {
                (Some(wb), Some(wa)) => json!(round2(wa.saturating_sub(*wb) as f64 / 1e6)),
                _ => Value::Null,
            };
            cpu.insert(
                name.to_owned(),
                json!({
                    "ticks": a - b,
                    "us_per_command": round2((a - b) as f64 * tick_us / total as f64),
                    "runqueue_wait_ms": wait_ms,
                }),
            );
        }
    }
    let slots = std::mem::take(&mut *state.slots.lock().expect("not poisoned"));
    let mut lat_us = Vec::with_capacity(total);
    let mut channel_us = Vec::new();
    let mut ok = 0u64;
    let mut duplicates = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut no_result = 0u64;
    // p99 of the commands sent in each second of the load.
    let mut by_second: Vec<Vec<u64>> = vec![Vec::new(); usize::try_from(secs).unwrap_or(0) + 1];
    for s in &slots {
        let (Some(sent), Some(got)) = (s.sent, s.result) else {
            no_result += 1;
            continue;
        };
        let us = u64::try_from(got.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        lat_us.push(us);
        let second = usize::try_from(sent.duration_since(start).as_secs()).unwrap_or(0);
        if let Some(v) = by_second.get_mut(second) {
            v.push(us);
        }
        if let Some(c) = s.on_channel {
            channel_us.push(
                u64::try_from(c.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX),
            );
        }
        if s.duplicate {
            duplicates += 1;
        }
        if s.ok {
            ok += 1;
        } else {
            *errors
                .entry(s.code.clone().unwrap_or_else(|| "?".into()))
                .or_default() += 1;
        }
    }
    let summary = |v: &mut Vec<u64>| -> Value {
        v.sort_unstable();
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            round2(v[i.min(v.len() - 1)] as f64 / 1e3)
        };
        json!({
            "n": v.len(),
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
            "max": round2(v.last().copied().unwrap_or(0) as f64 / 1e3),
        })
    };
    let p99_by_second: Vec<f64> = by_second
        .iter_mut()
        .filter(|v| !v.is_empty())
        .map(|v| summary(v)["p99"].as_f64().unwrap_or(0.0))
        .collect();
    let times = std::mem::take(&mut *state.event_times.lock().expect("not poisoned"));
    let in_window = times
        .iter()
        .filter(|t| **t >= start && **t <= last_send)
        .count();
    let events_total = times.len();
    let ended_by_cause = state.ended_by_cause.lock().expect("not poisoned").clone();
    let events_by_type = state.events_by_type.lock().expect("not poisoned").clone();
    let out = json!({
        "mode": match mode { Mode::PubSub => "pubsub", Mode::Stream => "stream" },
        "rate": rate,
        "secs": secs,
        "count": total,
        "results": lat_us.len(),
        "no_result": no_result,
        "ok": ok,
        "duplicates": duplicates,
        "errors": errors,
        "latency_ms": summary(&mut lat_us),
        "latency_p99_by_second_ms": p99_by_second,
        "events_channel_latency_ms": if mode == Mode::Stream { summary(&mut channel_us) } else { Value::Null },
        "achieved_rate": if send_span > 0.0 { round2((total as f64 - 1.0) / send_span) } else { 0.0 },
        "send_secs": round2(send_span),
        "results_done_secs": round2(results_done),
        "calls_done_secs": round2(calls_done),
        "events_in_send_window": in_window,
        "events_per_sec": if send_span > 0.0 { round2(in_window as f64 / send_span) } else { 0.0 },
        "events_total": events_total,
        "events_by_type": events_by_type,
        "results_on_events_channel": state.results_on_channel.load(Ordering::Relaxed),
        "other_results": state.other_results.load(Ordering::Relaxed),
        "seq_gaps": state.seq_gaps.load(Ordering::Relaxed),
        "seq_repeats": state.seq_repeats.load(Ordering::Relaxed),
        "events_dropped": state.events_dropped.load(Ordering::Relaxed),
        "calls_placed": placed,
        "calls_ended": state.ended.load(Ordering::Relaxed),
        "calls_ended_by_cause": ended_by_cause,
        "send_errors": state.send_errors.load(Ordering::Relaxed),
        "unheard": state.unheard.load(Ordering::Relaxed),
        "read_errors": state.read_errors.load(Ordering::Relaxed),
        "cpu": cpu,
    });
    println!("RESULT {out}");
    let _ = std::io::stdout().flush();
    0
}

/// Whether an events-stream payload may be a result (a cheap test before
/// parsing).
fn memchr_result(event: &[u8]) -> bool {
    event.windows(16).any(|w| w == b"\"command.result\"")
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
