//! The control channel's I/O shell around the sans-IO [`Machine`]: three
//! Redis connections (writes and keys; subscribed to the command channels;
//! blocking reads of the command streams), a PING keepalive with a short
//! deadline, reconnection with backoff and jitter, the machine's operations
//! run as ordered pipelines one batch at a time, and its jobs run by their
//! owners (the SIP core, the status) a bounded number at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    Value as RedisValue,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::command::{CommandError, CommandKind, ErrorCode};
use super::machine::{GROUP, Job, Machine, MachineConfig, Op, RedisOp, Reply, Source};
use crate::call::CallError;
use crate::config::{RedisSettings, Secret};
use crate::engine::{CallAction, PlaceCall, PlaceError, SipCore};
use crate::events::{EventReceiver, unix_ms};
use crate::lifecycle::Phase;
use crate::status::Shared;

/// First reconnect delay; doubles up to [`RECONNECT_MAX`] (±20 % jitter).
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Most operations in one pipeline.
const BATCH: usize = 512;
/// Most commands executing at once; beyond it, no more are read.
const MAX_JOBS: usize = 256;
/// Pushes (commands) the subscribed connection may queue; more are dropped
/// and counted.
const PUSH_DEPTH: usize = 4096;
/// Stream entries read ahead.
const ENTRY_DEPTH: usize = 256;
/// How long one blocking stream read waits.
const STREAM_BLOCK: Duration = Duration::from_millis(1000);
/// Longest a command may take in its owner before it is answered `internal`.
const JOB_DEADLINE: Duration = Duration::from_secs(10);

/// The channel's state, in `/status`, `/metrics` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    /// All connections up and subscribed.
    pub connected: bool,
    /// Last PONG on the subscribed connection, Unix milliseconds.
    pub last_pong_unix_ms: Option<u64>,
    /// Reconnections since start.
    pub reconnects: u64,
    /// Events lost to a full buffer since start.
    pub events_dropped: u64,
    /// Commands answered successfully since start.
    pub commands_ok: u64,
    /// Commands answered with an error since start.
    pub commands_failed: u64,
    /// Commands dropped because the push queue was full.
    pub commands_dropped: u64,
    /// Operations and events waiting for Redis.
    pub backlog: usize,
    /// The last connection problem.
    pub last_error: Option<String>,
}

/// What the channel needs to know.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Redis settings.
    pub redis: RedisSettings,
    /// The control core's settings.
    pub machine: MachineConfig,
}

impl ChannelConfig {
    fn keepalive(&self) -> Duration {
        Duration::from_secs(u64::from(self.redis.keepalive_secs.max(1)))
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.redis.response_timeout_secs.max(1)))
    }
}

/// Handle to stop the task.
#[derive(Debug)]
pub struct ControlChannel {
    stop: mpsc::Sender<()>,
}

impl ControlChannel {
    /// Publishes `daemon.stopping`, removes this instance's keys, writes
    /// what is queued and stops (best effort, bounded by `limit`).
    pub async fn stop(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.stop.send(())).await;
        let _ = tokio::time::timeout(limit, self.stop.closed()).await;
    }
}

/// Opens a RESP3 connection (with a push sender when `pushes` is given).
pub async fn connect_one(
    redis: &RedisSettings,
    timeout: Duration,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<MultiplexedConnection, String> {
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    if let Some(tx) = pushes {
        config = config.set_push_sender(tx);
    }
    connect_with(redis, timeout, config).await
}

async fn connect_with(
    redis: &RedisSettings,
    timeout: Duration,
    config: AsyncConnectionConfig,
) -> Result<MultiplexedConnection, String> {
    let info = redis
        .url
        .expose()
        .into_connection_info()
        .map_err(|e| format!("redis.url: {}", e.category()))?;
    let mut settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    if let Some(user) = &redis.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = redis.password.as_ref().map(Secret::expose) {
        settings = settings.set_password(password);
    }
    // TCP keepalive probes as well, so the kernel also notices a dead peer.
    let probes = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(timeout)
        .with_interval(timeout);
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(probes);
    let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
    let client = match &redis.tls_ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("redis.tls_ca_file {}: {e}", ca.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => redis::Client::open(info),
    }
    .map_err(describe)?;
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(describe)
}

/// A Redis error as text (connection and server errors carry no URL, so no
/// password).
fn describe(e: redis::RedisError) -> String {
    e.to_string()
}

/// One command stream entry.
#[derive(Debug)]
struct Entry {
    stream: String,
    id: String,
    payload: Vec<u8>,
}

/// The connections to Redis.
struct Link {
    writer: MultiplexedConnection,
    subscriber: MultiplexedConnection,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type Opened = (
    Link,
    mpsc::Receiver<PushInfo>,
    mpsc::Receiver<Result<Entry, String>>,
);

async fn open_link(cfg: &ChannelConfig, dropped: Arc<AtomicU64>) -> Result<Opened, String> {
    let timeout = cfg.response_timeout();
    let writer = connect_one(&cfg.redis, timeout, None).await?;
    let (tx, pushes) = mpsc::channel(PUSH_DEPTH);
    let sender = move |p: PushInfo| -> Result<(), ()> {
        tx.try_send(p).map_err(|_| {
            dropped.fetch_add(1, Ordering::Relaxed);
        })
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(sender);
    let mut subscriber = connect_with(&cfg.redis, timeout, config).await?;
    for channel in [
        cfg.machine.broadcast_channel(),
        cfg.machine.instance_channel(),
    ] {
        subscriber.subscribe(&channel).await.map_err(describe)?;
    }
    // The stream reader blocks, so it has its own connection.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout + STREAM_BLOCK));
    let mut streams = connect_with(&cfg.redis, timeout, config).await?;
    for stream in [cfg.machine.shared_stream(), cfg.machine.instance_stream()] {
        let created: Result<RedisValue, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut streams)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(describe(e));
        }
    }
    let (entries_tx, entries) = mpsc::channel(ENTRY_DEPTH);
    let reader = tokio::spawn(read_streams(
        streams,
        cfg.machine.clone(),
        Duration::from_secs(cfg.redis.stream_claim_idle_secs.max(1)),
        entries_tx,
    ));
    Ok((
        Link {
            writer,
            subscriber,
            reader,
        },
        pushes,
        entries,
    ))
}

/// Reads the two command streams: this consumer's pending entries first
/// (a restart), then new ones, and now and then entries another consumer
/// left pending longer than `idle` (XAUTOCLAIM).
async fn read_streams(
    mut conn: MultiplexedConnection,
    cfg: MachineConfig,
    idle: Duration,
    tx: mpsc::Sender<Result<Entry, String>>,
) {
    let streams = [cfg.shared_stream(), cfg.instance_stream()];
    let claim_every = (idle / 2).max(Duration::from_millis(500));
    let mut last_claim = Instant::now();
    let mut start = true;
    loop {
        let mut entries = Vec::new();
        if start || last_claim.elapsed() >= claim_every {
            for stream in &streams {
                let claimed: Result<RedisValue, _> = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(&cfg.instance)
                    .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut conn)
                    .await;
                match claimed {
                    Ok(RedisValue::Array(parts)) => {
                        if let Some(list) = parts.get(1) {
                            entries.extend(stream_entries(stream, list));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(describe(e))).await;
                        return;
                    }
                }
            }
            last_claim = Instant::now();
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&cfg.instance)
            .arg("COUNT")
            .arg(100);
        if !start {
            read.arg("BLOCK")
                .arg(u64::try_from(STREAM_BLOCK.as_millis()).unwrap_or(1000));
        }
        read.arg("STREAMS").arg(&streams[0]).arg(&streams[1]);
        let from = if start { "0" } else { ">" };
        read.arg(from).arg(from);
        start = false;
        match read.query_async::<RedisValue>(&mut conn).await {
            Ok(v) => entries.extend(read_reply(&v)),
            Err(e) => {
                let _ = tx.send(Err(describe(e))).await;
                return;
            }
        }
        for entry in entries {
            if tx.send(Ok(entry)).await.is_err() {
                return;
            }
        }
    }
}

/// Entries of an XREADGROUP reply (a map, or pairs, of stream → entries).
fn read_reply(v: &RedisValue) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut add = |name: &RedisValue, list: &RedisValue| {
        if let Some(stream) = string(name) {
            out.extend(stream_entries(&stream, list));
        }
    };
    match v {
        RedisValue::Map(pairs) => pairs.iter().for_each(|(k, l)| add(k, l)),
        RedisValue::Array(items) => {
            for item in items {
                if let RedisValue::Array(pair) = item
                    && let [name, list] = pair.as_slice()
                {
                    add(name, list);
                }
            }
        }
        _ => {}
    }
    out
}

/// `[[id, [field, value, ...]], ...]` → entries (a deleted entry's fields
/// are nil: its payload is empty and it is answered `bad_json`).
fn stream_entries(stream: &str, list: &RedisValue) -> Vec<Entry> {
    let RedisValue::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let RedisValue::Array(parts) = item else {
                return None;
            };
            let id = string(parts.first()?)?;
            let mut payload = Vec::new();
            if let Some(RedisValue::Array(fields)) = parts.get(1) {
                for kv in fields.chunks_exact(2) {
                    if string(&kv[0]).as_deref() == Some("cmd") {
                        payload = bytes(&kv[1]).unwrap_or_default();
                    }
                }
            }
            Some(Entry {
                stream: stream.to_owned(),
                id,
                payload,
            })
        })
        .collect()
}

fn bytes(v: &RedisValue) -> Option<Vec<u8>> {
    match v {
        RedisValue::BulkString(b) => Some(b.clone()),
        RedisValue::SimpleString(s) => Some(s.clone().into_bytes()),
        RedisValue::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        _ => None,
    }
}

fn string(v: &RedisValue) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// The time part of a stream entry id, Unix ms.
fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// A Redis reply as the machine reads it.
fn reply_of(v: RedisValue) -> Reply {
    match v {
        RedisValue::Nil => Reply::Nil,
        RedisValue::Int(i) => Reply::Int(i),
        RedisValue::Okay => Reply::Text("OK".into()),
        RedisValue::ServerError(e) => Reply::Error(e.to_string()),
        RedisValue::Map(pairs) => Reply::List(
            pairs
                .iter()
                .flat_map(|(k, v)| [string(k).unwrap_or_default(), string(v).unwrap_or_default()])
                .collect(),
        ),
        RedisValue::Array(items) | RedisValue::Set(items) => {
            Reply::List(items.iter().filter_map(string).collect())
        }
        other => string(&other).map_or(Reply::Nil, Reply::Text),
    }
}

/// Adds `op` to `pipe`; the number of commands it took.
fn encode(op: &RedisOp, pipe: &mut redis::Pipeline) -> usize {
    match op {
        RedisOp::Publish { channel, payload } => {
            pipe.cmd("PUBLISH").arg(channel).arg(&**payload);
            1
        }
        RedisOp::XAdd {
            stream,
            maxlen,
            field,
            payload,
        } => {
            let cmd = pipe.cmd("XADD").arg(stream);
            if *maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(*maxlen);
            }
            cmd.arg("*").arg(*field).arg(&**payload);
            1
        }
        RedisOp::SetNx { key, value, ms } => {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg((*ms).max(1));
            1
        }
        RedisOp::Set { key, value, ms } => {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg((*ms).max(1));
            1
        }
        RedisOp::Get { key } => {
            pipe.cmd("GET").arg(key);
            1
        }
        RedisOp::Del { key } => {
            pipe.cmd("DEL").arg(key);
            1
        }
        RedisOp::HSetNx { key, field, value } => {
            pipe.cmd("HSETNX").arg(key).arg(*field).arg(value);
            1
        }
        RedisOp::HSet { key, fields, ms } => {
            let cmd = pipe.cmd("HSET").arg(key);
            for (f, v) in fields {
                cmd.arg(*f).arg(v);
            }
            pipe.cmd("PEXPIRE").arg(key).arg((*ms).max(1));
            2
        }
        RedisOp::HGetAll { key } => {
            pipe.cmd("HGETALL").arg(key);
            1
        }
        RedisOp::SAdd { key, member } => {
            pipe.cmd("SADD").arg(key).arg(member);
            1
        }
        RedisOp::SRem { key, member } => {
            pipe.cmd("SREM").arg(key).arg(member);
            1
        }
        RedisOp::SMembers { key } => {
            pipe.cmd("SMEMBERS").arg(key);
            1
        }
        RedisOp::XAck { stream, entry } => {
            pipe.cmd("XACK").arg(stream).arg(GROUP).arg(entry);
            1
        }
        RedisOp::DelIfInstance { key, instance } => {
            pipe.cmd("EVAL")
                .arg(DEL_IF_INSTANCE)
                .arg(1)
                .arg(key)
                .arg(instance);
            1
        }
    }
}

/// Deletes a status snapshot only if this instance wrote it.
const DEL_IF_INSTANCE: &str = "local v = redis.call('GET', KEYS[1]) \
if v then local ok, s = pcall(cjson.decode, v) \
if ok and s.instance and s.instance.id == ARGV[1] then return redis.call('DEL', KEYS[1]) end end \
return 0";

type Flight = Pin<Box<dyn Future<Output = (Vec<Op>, Result<Vec<RedisValue>, String>)> + Send>>;
type Ping = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs `batch` as one pipeline.
fn fly(mut conn: MultiplexedConnection, batch: Vec<Op>) -> Flight {
    Box::pin(async move {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut firsts = Vec::with_capacity(batch.len());
        let mut n = 0;
        for op in &batch {
            firsts.push(n);
            n += encode(&op.op, &mut pipe);
        }
        let result = pipe
            .query_async::<Vec<RedisValue>>(&mut conn)
            .await
            .map_err(describe)
            .map(|values| {
                firsts
                    .iter()
                    .map(|&i| values.get(i).cloned().unwrap_or(RedisValue::Nil))
                    .collect()
            });
        (batch, result)
    })
}

/// Starts the task.
pub fn spawn(
    cfg: ChannelConfig,
    shared: Arc<Shared>,
    sip: SipCore,
    feed: EventReceiver,
) -> (ControlChannel, JoinHandle<()>) {
    let (stop, stop_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(cfg, shared, sip, feed, stop_rx));
    (ControlChannel { stop }, task)
}

async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn land<T>(f: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

struct Shell {
    cfg: ChannelConfig,
    shared: Arc<Shared>,
    machine: Machine,
    link: Option<Link>,
    pushes: Option<mpsc::Receiver<PushInfo>>,
    entries: Option<mpsc::Receiver<Result<Entry, String>>>,
    flight: Option<Flight>,
    ping: Option<Ping>,
    down_since: Option<Instant>,
    next_connect: tokio::time::Instant,
    backoff: Duration,
    ever_connected: bool,
    pushes_dropped: Arc<AtomicU64>,
}

impl Shell {
    fn status(&self) -> &watch::Sender<ChannelStatus> {
        &self.shared.redis
    }

    fn drop_link(&mut self, why: String) {
        if self.link.take().is_some() {
            tracing::warn!(error = %why, "control channel lost; reconnecting");
        }
        self.pushes = None;
        self.entries = None;
        self.ping = None;
        // The batch in flight goes with the connection; its copy is
        // requeued by the caller (`kept`).
        self.flight = None;
        self.down_since.get_or_insert_with(Instant::now);
        self.next_connect = tokio::time::Instant::now() + jitter(self.backoff);
        self.status().send_modify(|s| {
            s.connected = false;
            s.last_error = Some(why);
        });
    }

    async fn connect(&mut self) {
        match open_link(&self.cfg, self.pushes_dropped.clone()).await {
            Ok((link, pushes, entries)) => {
                self.link = Some(link);
                self.pushes = Some(pushes);
                self.entries = Some(entries);
                self.backoff = RECONNECT_INITIAL;
                let outage = self.down_since.take().map_or(0, |t| {
                    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
                });
                if self.ever_connected {
                    self.status().send_modify(|s| s.reconnects += 1);
                }
                self.ever_connected = true;
                self.status().send_modify(|s| {
                    s.connected = true;
                    s.last_pong_unix_ms = Some(unix_ms());
                    s.last_error = None;
                });
                let reconnects = self.status().borrow().reconnects;
                tracing::info!(reconnects, outage_ms = outage, "control channel connected");
                self.machine.connected(unix_ms(), reconnects, outage);
                self.heartbeat();
            }
            Err(e) => {
                tracing::warn!(error = %e, "control channel: cannot connect to Redis");
                self.down_since.get_or_insert_with(Instant::now);
                self.status().send_modify(|s| s.last_error = Some(e));
                self.next_connect = tokio::time::Instant::now() + jitter(self.backoff);
                self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
            }
        }
    }

    fn heartbeat(&mut self) {
        let ttl = u64::try_from((self.cfg.keepalive() * 3).as_millis()).unwrap_or(u64::MAX);
        match serde_json::to_string(&self.shared.snapshot()) {
            Ok(snapshot) => self.machine.heartbeat(snapshot, ttl),
            Err(e) => tracing::debug!(error = %e, "status snapshot not serialized"),
        }
    }

    /// Starts the next batch when none is in flight.
    fn launch(&mut self, kept: &mut Option<Vec<Op>>) {
        if self.flight.is_some() {
            return;
        }
        let Some(link) = &self.link else {
            return;
        };
        let batch = self.machine.take_batch(BATCH);
        if batch.is_empty() {
            return;
        }
        // A copy stays here so that a lost connection requeues it.
        *kept = Some(batch.clone());
        self.flight = Some(fly(link.writer.clone(), batch));
    }

    fn landed(
        &mut self,
        batch: Vec<Op>,
        result: Result<Vec<RedisValue>, String>,
        kept: &mut Option<Vec<Op>>,
    ) {
        *kept = None;
        match result {
            Ok(values) => {
                let now = unix_ms();
                for (op, v) in batch.iter().zip(values) {
                    self.machine.on_reply(now, op, reply_of(v));
                }
            }
            Err(e) => {
                self.machine.requeue(batch);
                self.drop_link(format!("write failed: {e}"));
            }
        }
    }

    fn publish_stats(&self) {
        let stats = self.machine.stats().clone();
        let backlog = self.machine.backlog();
        let dropped = self.pushes_dropped.load(Ordering::Relaxed);
        self.status().send_if_modified(|s| {
            let next = (
                stats.events_dropped,
                stats.ok,
                stats.failed,
                dropped,
                backlog,
            );
            let now = (
                s.events_dropped,
                s.commands_ok,
                s.commands_failed,
                s.commands_dropped,
                s.backlog,
            );
            if next == now {
                return false;
            }
            s.events_dropped = stats.events_dropped;
            s.commands_ok = stats.ok;
            s.commands_failed = stats.failed;
            s.commands_dropped = dropped;
            s.backlog = backlog;
            true
        });
    }
}

async fn run(
    cfg: ChannelConfig,
    shared: Arc<Shared>,
    sip: SipCore,
    mut feed: EventReceiver,
    mut stop: mpsc::Receiver<()>,
) {
    let keepalive = cfg.keepalive();
    let response_timeout = cfg.response_timeout();
    let mut shell = Shell {
        machine: Machine::new(cfg.machine.clone()),
        cfg,
        shared: shared.clone(),
        link: None,
        pushes: None,
        entries: None,
        flight: None,
        ping: None,
        down_since: None,
        next_connect: tokio::time::Instant::now(),
        backoff: RECONNECT_INITIAL,
        ever_connected: false,
        pushes_dropped: Arc::new(AtomicU64::new(0)),
    };
    let mut phase_rx = shared.lifecycle.subscribe();
    let mut last_phase = Phase::Starting;
    let mut jobs: JoinSet<(u64, Result<Value, CommandError>)> = JoinSet::new();
    let mut kept: Option<Vec<Op>> = None;
    let mut tick = tokio::time::interval(keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    diff_phase(
        *phase_rx.borrow_and_update(),
        &mut last_phase,
        &mut shell.machine,
    );
    loop {
        while jobs.len() < MAX_JOBS {
            let Some(job) = shell.machine.poll_job() else {
                break;
            };
            let (shared, sip) = (shared.clone(), sip.clone());
            jobs.spawn(async move {
                let token = job.token;
                let command = job.command.clone();
                let result = tokio::time::timeout(JOB_DEADLINE, execute(job, &shared, &sip))
                    .await
                    .unwrap_or_else(|_| {
                        Err(failure(
                            &command.kind,
                            ErrorCode::Internal,
                            "the command took too long",
                        ))
                    });
                (token, result)
            });
        }
        shell.launch(&mut kept);
        shell.publish_stats();
        let room = jobs.len() < MAX_JOBS;
        tokio::select! {
            _ = stop.recv() => {
                stop_cleanly(&mut shell, &mut kept).await;
                return;
            }
            () = tokio::time::sleep_until(shell.next_connect), if shell.link.is_none() => {
                if let Some(batch) = kept.take() {
                    shell.machine.requeue(batch);
                }
                shell.flight = None;
                shell.connect().await;
            }
            (batch, result) = land(&mut shell.flight) => {
                shell.flight = None;
                shell.landed(batch, result, &mut kept);
            }
            pong = land(&mut shell.ping) => {
                shell.ping = None;
                match pong {
                    Ok(()) => shell.status().send_modify(|s| s.last_pong_unix_ms = Some(unix_ms())),
                    Err(e) => {
                        if let Some(batch) = kept.take() {
                            shell.machine.requeue(batch);
                        }
                        shell.flight = None;
                        shell.drop_link(format!("keepalive PING failed: {e}"));
                    }
                }
            }
            push = next(&mut shell.pushes), if room => match push {
                Some(p) if p.kind == PushKind::Message => {
                    if let Some((channel, payload)) = message(&p) {
                        let source = if channel == shell.cfg.machine.instance_channel() {
                            Source::Instance
                        } else {
                            Source::Broadcast
                        };
                        shell.machine.receive(unix_ms(), source, &payload, None);
                    }
                }
                Some(p) if p.kind == PushKind::Disconnection => {
                    requeue_kept(&mut shell, &mut kept);
                    shell.drop_link("connection closed".into());
                }
                Some(_) => {}
                None => {
                    requeue_kept(&mut shell, &mut kept);
                    shell.drop_link("connection closed".into());
                }
            },
            entry = next(&mut shell.entries), if room => match entry {
                Some(Ok(e)) => {
                    let shared_stream = e.stream == shell.cfg.machine.shared_stream();
                    let at = entry_ms(&e.id);
                    let source = Source::Stream { stream: e.stream, entry: e.id, shared: shared_stream };
                    shell.machine.receive(unix_ms(), source, &e.payload, at);
                }
                Some(Err(why)) => {
                    requeue_kept(&mut shell, &mut kept);
                    shell.drop_link(format!("stream read failed: {why}"));
                }
                None => {
                    requeue_kept(&mut shell, &mut kept);
                    shell.drop_link("stream reader ended".into());
                }
            },
            Some(done) = jobs.join_next(), if !jobs.is_empty() => match done {
                Ok((token, result)) => shell.machine.completed(unix_ms(), token, result),
                Err(e) => tracing::error!(error = %e, "a control command task failed"),
            },
            _ = tick.tick() => {
                if let Some(link) = &shell.link && shell.ping.is_none() {
                    let mut conn = link.subscriber.clone();
                    shell.ping = Some(Box::pin(async move {
                        match tokio::time::timeout(response_timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(describe(e)),
                            Err(_) => Err(format!("no PONG within {response_timeout:?}")),
                        }
                    }));
                    shell.heartbeat();
                }
            }
            Some(event) = feed.recv() => shell.machine.core_event(event),
            Ok(()) = phase_rx.changed() => {
                diff_phase(*phase_rx.borrow_and_update(), &mut last_phase, &mut shell.machine);
            }
        }
    }
}

fn requeue_kept(shell: &mut Shell, kept: &mut Option<Vec<Op>>) {
    shell.flight = None;
    if let Some(batch) = kept.take() {
        shell.machine.requeue(batch);
    }
}

/// `daemon.stopping`, this instance's keys removed, the queue written
/// (bounded by the caller's limit).
async fn stop_cleanly(shell: &mut Shell, kept: &mut Option<Vec<Op>>) {
    if let Some((batch, result)) = match shell.flight.take() {
        Some(f) => Some(f.await),
        None => None,
    } {
        shell.landed(batch, result, kept);
    }
    shell.machine.stopping(unix_ms());
    while let Some(link) = &shell.link {
        let batch = shell.machine.take_batch(BATCH);
        if batch.is_empty() {
            break;
        }
        let (batch, result) = fly(link.writer.clone(), batch).await;
        if result.is_err() {
            break;
        }
        let _ = batch;
    }
}

fn message(p: &PushInfo) -> Option<(String, Vec<u8>)> {
    // data: [channel, payload]
    Some((string(p.data.first()?)?, bytes(p.data.get(1)?)?))
}

fn diff_phase(phase: Phase, last: &mut Phase, machine: &mut Machine) {
    if phase == *last {
        return;
    }
    *last = phase;
    match phase {
        Phase::Running => machine.event(
            unix_ms(),
            "daemon.started",
            json!({"version": env!("CARGO_PKG_VERSION")}),
        ),
        Phase::Draining => machine.event(unix_ms(), "daemon.draining", json!({})),
        Phase::Stopping | Phase::Starting => {}
    }
}

fn failure(kind: &CommandKind, code: ErrorCode, message: &str) -> CommandError {
    CommandError {
        code,
        message: message.to_owned(),
        id: None,
        command: Some(kind.name().to_owned()),
        reply_to: None,
    }
}

/// Executes a command in its owner.
async fn execute(job: Job, shared: &Shared, sip: &SipCore) -> Result<Value, CommandError> {
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
            };
            match sip.place(place).await {
                Ok(placed) => Ok(json!({"call_id": &*placed.name})),
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
        CommandKind::Hangup { call_id }
        | CommandKind::Answer { call_id }
        | CommandKind::Reject { call_id, .. }
        | CommandKind::Bridge { call_id, .. }
        | CommandKind::Dtmf { call_id, .. } => {
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
            let mut result = json!({"call_id": call_id});
            match kind {
                CommandKind::Bridge { other_call_id, .. } => {
                    result["other_call_id"] = Value::String(other_call_id.clone());
                }
                CommandKind::Dtmf { digits, .. } => {
                    result["digits"] = Value::String(digits.clone());
                }
                _ => {}
            }
            match sip.act(call_id, action).await {
                Some(Ok(())) => Ok(result),
                Some(Err(e)) => Err(call_error(kind, e)),
                None => Err(fail(
                    ErrorCode::Unavailable,
                    "the SIP core is not running".into(),
                )),
            }
        }
    }
}

fn call_error(kind: &CommandKind, e: CallError) -> CommandError {
    let code = match &e {
        CallError::Unknown(_) | CallError::NotFound(_) => ErrorCode::CallEnded,
        CallError::WrongState { .. } | CallError::NoDialog(_) => ErrorCode::WrongState,
        CallError::Header(_) => ErrorCode::BadField,
        CallError::Full(_) | CallError::AccountFull { .. } | CallError::Media(_) => {
            ErrorCode::Capacity
        }
        CallError::RateLimited(_) | CallError::AccountRateLimited { .. } => ErrorCode::RateLimited,
        CallError::NameInUse(_) => ErrorCode::CallIdInUse,
        CallError::Send(_) => ErrorCode::Unavailable,
    };
    failure(kind, code, &e.to_string())
}

fn place_error(kind: &CommandKind, e: PlaceError) -> CommandError {
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

/// ±20 % random spread.
fn jitter(d: Duration) -> Duration {
    let unit = (crate::sip::ids::random_u64() % 401) as f64 / 1000.0;
    d.mul_f64(0.8 + unit)
}
