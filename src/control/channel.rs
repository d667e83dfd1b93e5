//! The control-channel task: two Redis connections (publishing and keys;
//! subscribed to the command channels), a PING keepalive on the subscribed
//! one, reconnection with backoff and jitter, an ordered bounded buffer of
//! events, idempotent command execution and the heartbeat status keys.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    Value as RedisValue,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::command::{self, Command, CommandError, CommandKind, ErrorCode};
use crate::config::{RedisSettings, Secret};
use crate::events::{CoreEvent, EventReceiver};
use crate::lifecycle::Phase;
use crate::registration::Registrations;
use crate::status::Shared;

/// Events kept while Redis is away.
pub const EVENT_BUFFER: usize = 1000;
/// First reconnect delay; doubles up to [`RECONNECT_MAX`] (±20 % jitter).
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long a duplicate command waits for the first execution to finish.
const DUPLICATE_WAIT: Duration = Duration::from_secs(5);

/// The channel's state, in `/status`, `/metrics` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    /// Both connections up and subscribed.
    pub connected: bool,
    /// Last PONG on the subscribed connection, Unix milliseconds.
    pub last_pong_unix_ms: Option<u64>,
    /// Reconnections since start.
    pub reconnects: u64,
    /// Events lost to a full buffer since start.
    pub events_dropped: u64,
    /// The last connection problem.
    pub last_error: Option<String>,
}

/// What the channel needs to know.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Redis settings.
    pub redis: RedisSettings,
    /// Instance id.
    pub instance: String,
    /// Dedup window for command ids.
    pub dedup_window: Duration,
}

impl ChannelConfig {
    fn keepalive(&self) -> Duration {
        Duration::from_secs(u64::from(self.redis.keepalive_secs))
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.redis.prefix)
    }

    /// The broadcast command channel.
    pub fn broadcast_channel(&self) -> String {
        self.name("cmd")
    }

    /// This instance's command channel.
    pub fn instance_channel(&self) -> String {
        self.name(&format!("{}:cmd", self.instance))
    }

    /// The events channel.
    pub fn events_channel(&self) -> String {
        self.name("events")
    }
}

/// Handle to stop the task.
#[derive(Debug)]
pub struct ControlChannel {
    stop: mpsc::Sender<()>,
}

impl ControlChannel {
    /// Publishes `daemon.stopping`, removes this instance's status key and
    /// stops (best effort, bounded by `limit`).
    pub async fn stop(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.stop.send(())).await;
        let _ = tokio::time::timeout(limit, self.stop.closed()).await;
    }
}

/// Two connections to Redis and the pushes of the subscribed one.
struct Link {
    publisher: MultiplexedConnection,
    subscriber: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

/// Opens a RESP3 connection (with a push sender when `pushes` is given).
pub async fn connect_one(
    redis: &RedisSettings,
    timeout: Duration,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
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
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    if let Some(tx) = pushes {
        config = config.set_push_sender(tx);
    }
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

async fn open_link(cfg: &ChannelConfig) -> Result<Link, String> {
    let timeout = cfg.keepalive();
    let publisher = connect_one(&cfg.redis, timeout, None).await?;
    let (tx, pushes) = mpsc::unbounded_channel();
    let mut subscriber = connect_one(&cfg.redis, timeout, Some(tx)).await?;
    for channel in [cfg.broadcast_channel(), cfg.instance_channel()] {
        subscriber.subscribe(&channel).await.map_err(describe)?;
    }
    Ok(Link {
        publisher,
        subscriber,
        pushes,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Events with the instance, a gap-free sequence and a timestamp.
struct Events {
    instance: String,
    seq: u64,
    buffer: VecDeque<(String, String)>,
    dropped_since_report: u64,
    channel: String,
}

impl Events {
    /// Queues an event of `kind` with `fields` for `channel` (default: the events channel).
    fn push(
        &mut self,
        kind: &str,
        fields: Value,
        channel: Option<&str>,
        status: &watch::Sender<ChannelStatus>,
    ) {
        self.seq += 1;
        let mut event = json!({"v": 1, "type": kind, "instance": self.instance, "seq": self.seq, "ts_ms": now_ms()});
        if let (Value::Object(e), Value::Object(f)) = (&mut event, fields) {
            e.extend(f);
        }
        if self.buffer.len() >= EVENT_BUFFER {
            self.buffer.pop_front();
            self.dropped_since_report += 1;
            status.send_modify(|s| s.events_dropped += 1);
        }
        let target = channel.unwrap_or(&self.channel).to_owned();
        self.buffer.push_back((target, event.to_string()));
    }
}

/// Starts the task.
pub fn spawn(
    cfg: ChannelConfig,
    shared: Arc<Shared>,
    registrations: Registrations,
    feed: EventReceiver,
) -> (ControlChannel, JoinHandle<()>) {
    let (stop, stop_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(cfg, shared, registrations, feed, stop_rx));
    (ControlChannel { stop }, task)
}

async fn run(
    cfg: ChannelConfig,
    shared: Arc<Shared>,
    registrations: Registrations,
    mut feed: EventReceiver,
    mut stop: mpsc::Receiver<()>,
) {
    let status = &shared.redis;
    let mut events = Events {
        instance: cfg.instance.clone(),
        seq: 0,
        buffer: VecDeque::new(),
        dropped_since_report: 0,
        channel: cfg.events_channel(),
    };
    let mut phase_rx = shared.lifecycle.subscribe();
    let mut last_phase = Phase::Starting;
    let mut link: Option<Link> = None;
    let mut backoff = RECONNECT_INITIAL;
    let mut next_connect = tokio::time::Instant::now();
    let mut down_since: Option<Instant> = None;
    let mut ever_connected = false;
    let mut tick = tokio::time::interval(cfg.keepalive());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    diff_phase(
        *phase_rx.borrow_and_update(),
        &mut last_phase,
        &mut events,
        status,
    );
    loop {
        if let Some(l) = link.as_mut()
            && let Err(e) = flush(l, &mut events).await
        {
            drop_link(&mut link, &mut down_since, status, e);
        }
        tokio::select! {
            _ = stop.recv() => {
                events.push("daemon.stopping", json!({}), None, status);
                if let Some(l) = link.as_mut() {
                    let _ = flush(l, &mut events).await;
                    let key = format!("{}:{}:status", cfg.redis.prefix, cfg.instance);
                    let _ = redis::cmd("DEL").arg(&key).query_async::<i64>(&mut l.publisher).await;
                }
                return;
            }
            () = tokio::time::sleep_until(next_connect), if link.is_none() => {
                match open_link(&cfg).await {
                    Ok(l) => {
                        link = Some(l);
                        backoff = RECONNECT_INITIAL;
                        let outage = down_since.take().map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
                        if ever_connected {
                            status.send_modify(|s| s.reconnects += 1);
                        }
                        ever_connected = true;
                        status.send_modify(|s| {
                            s.connected = true;
                            s.last_pong_unix_ms = Some(now_ms());
                            s.last_error = None;
                        });
                        let reconnects = status.borrow().reconnects;
                        tracing::info!(reconnects, outage_ms = outage, "control channel connected");
                        events.push("channel.connected", json!({"reconnects": reconnects, "outage_ms": outage}), None, status);
                        if events.dropped_since_report > 0 {
                            let count = std::mem::take(&mut events.dropped_since_report);
                            events.push("events.dropped", json!({"count": count}), None, status);
                        }
                        if let Some(l) = link.as_mut() {
                            heartbeat(l, &cfg, &shared).await.unwrap_or_else(|e| tracing::debug!(error = %e, "status write failed"));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control channel: cannot connect to Redis");
                        down_since.get_or_insert_with(Instant::now);
                        status.send_modify(|s| s.last_error = Some(e));
                        next_connect = tokio::time::Instant::now() + jitter(backoff);
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                    }
                }
            }
            push = next_push(&mut link) => match push {
                Some(p) if p.kind == PushKind::Message => {
                    if let Some(payload) = message_payload(&p) {
                        let outcome = execute(&payload, &cfg, &shared, &registrations, link.as_mut()).await;
                        publish_result(outcome, &mut events, status);
                    }
                }
                Some(p) if p.kind == PushKind::Disconnection => {
                    drop_link(&mut link, &mut down_since, status, "connection closed".into());
                    next_connect = tokio::time::Instant::now();
                }
                Some(_) => {}
                None => {
                    drop_link(&mut link, &mut down_since, status, "connection closed".into());
                    next_connect = tokio::time::Instant::now();
                }
            },
            _ = tick.tick() => {
                if let Some(l) = link.as_mut() {
                    let pong = redis::cmd("PING").query_async::<String>(&mut l.subscriber).await;
                    match pong {
                        Ok(_) => status.send_modify(|s| s.last_pong_unix_ms = Some(now_ms())),
                        Err(e) => {
                            let why = format!("keepalive PING failed: {}", describe(e));
                            drop_link(&mut link, &mut down_since, status, why);
                            next_connect = tokio::time::Instant::now();
                            continue;
                        }
                    }
                    if let Some(l) = link.as_mut()
                        && let Err(e) = heartbeat(l, &cfg, &shared).await
                    {
                        drop_link(&mut link, &mut down_since, status, e);
                        next_connect = tokio::time::Instant::now();
                    }
                }
            }
            Some(event) = feed.recv() => publish_transition(event, &mut events, status),
            Ok(()) = phase_rx.changed() => {
                diff_phase(*phase_rx.borrow_and_update(), &mut last_phase, &mut events, status);
            }
        }
    }
}

fn drop_link(
    link: &mut Option<Link>,
    down_since: &mut Option<Instant>,
    status: &watch::Sender<ChannelStatus>,
    why: String,
) {
    if link.take().is_some() {
        tracing::warn!(error = %why, "control channel lost; reconnecting");
    }
    down_since.get_or_insert_with(Instant::now);
    status.send_modify(|s| {
        s.connected = false;
        s.last_error = Some(why);
    });
}

async fn next_push(link: &mut Option<Link>) -> Option<PushInfo> {
    match link {
        Some(l) => l.pushes.recv().await,
        None => std::future::pending().await,
    }
}

fn message_payload(p: &PushInfo) -> Option<Vec<u8>> {
    // data: [channel, payload]
    match p.data.get(1)? {
        RedisValue::BulkString(b) => Some(b.clone()),
        RedisValue::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

async fn flush(link: &mut Link, events: &mut Events) -> Result<(), String> {
    while let Some((channel, payload)) = events.buffer.front() {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut link.publisher)
            .await
            .map_err(describe)?;
        events.buffer.pop_front();
    }
    Ok(())
}

async fn heartbeat(link: &mut Link, cfg: &ChannelConfig, shared: &Shared) -> Result<(), String> {
    let snapshot = serde_json::to_string(&shared.snapshot()).map_err(|e| e.to_string())?;
    let ttl = u64::try_from((cfg.keepalive() * 3).as_millis()).unwrap_or(u64::MAX);
    for key in [
        format!("{}:{}:status", cfg.redis.prefix, cfg.instance),
        format!("{}:sip_status", cfg.redis.prefix),
    ] {
        redis::cmd("SET")
            .arg(&key)
            .arg(&snapshot)
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(&mut link.publisher)
            .await
            .map_err(describe)?;
    }
    Ok(())
}

/// Queues one transition from the SIP core as its event.
fn publish_transition(
    event: CoreEvent,
    events: &mut Events,
    status: &watch::Sender<ChannelStatus>,
) {
    match event {
        CoreEvent::Registration(a) => events.push(
            "registration.state",
            json!({
                "account": a.name, "state": a.state, "code": a.code, "reason": a.last_error,
                "expires_at_ms": a.expires_at_unix_ms, "retry_at_ms": a.retry_at_unix_ms,
            }),
            None,
            status,
        ),
        CoreEvent::Call(c) => {
            let kind = match c.state {
                crate::call::CallState::Created => "call.created",
                crate::call::CallState::Dialing => "call.dialing",
                crate::call::CallState::Ringing => "call.ringing",
                crate::call::CallState::EarlyMedia => "call.early_media",
                crate::call::CallState::Answered => "call.answered",
                crate::call::CallState::Bridged => "call.bridged",
                crate::call::CallState::Ending => "call.ending",
                crate::call::CallState::Ended => "call.ended",
            };
            events.push(
                kind,
                json!({
                    "call": c.call.0, "sip_call_id": c.sip_call_id, "direction": c.direction,
                    "account": c.account, "code": c.code, "elapsed_ms": c.elapsed_ms,
                    "cause": c.ended.map(|e| e.cause.label()),
                    "side": c.ended.map(|e| e.side.label()),
                }),
                None,
                status,
            );
        }
    }
}

fn diff_phase(
    phase: Phase,
    last: &mut Phase,
    events: &mut Events,
    status: &watch::Sender<ChannelStatus>,
) {
    if phase == *last {
        return;
    }
    *last = phase;
    match phase {
        Phase::Running => events.push(
            "daemon.started",
            json!({"version": env!("CARGO_PKG_VERSION")}),
            None,
            status,
        ),
        Phase::Draining => events.push("daemon.draining", json!({}), None, status),
        Phase::Stopping | Phase::Starting => {}
    }
}

/// The outcome of one received payload: which channel answers, and what.
struct Outcome {
    reply_to: Option<String>,
    id: Option<String>,
    command: Option<String>,
    result: Result<Value, CommandError>,
}

fn publish_result(outcome: Outcome, events: &mut Events, status: &watch::Sender<ChannelStatus>) {
    let mut fields =
        json!({"id": outcome.id, "command": outcome.command, "ok": outcome.result.is_ok()});
    let (key, value) = match outcome.result {
        Ok(v) => ("result", v),
        Err(e) => (
            "error",
            json!({"code": e.code.as_str(), "message": e.message}),
        ),
    };
    if let Some(object) = fields.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
    events.push(
        "command.result",
        fields,
        outcome.reply_to.as_deref(),
        status,
    );
}

async fn execute(
    payload: &[u8],
    cfg: &ChannelConfig,
    shared: &Shared,
    registrations: &Registrations,
    link: Option<&mut Link>,
) -> Outcome {
    let cmd = match command::parse(payload, &cfg.redis.prefix) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                reply_to: None,
                id: e.id.clone(),
                command: e.command.clone(),
                result: Err(e),
            };
        }
    };
    let outcome = |result| Outcome {
        reply_to: cmd.reply_to.clone(),
        id: Some(cmd.id.clone()),
        command: Some(cmd.kind.name().to_owned()),
        result,
    };
    let Some(link) = link else {
        return outcome(Err(internal(&cmd, "Redis connection lost")));
    };
    let key = format!("{}:cmd:{}", cfg.redis.prefix, cmd.id);
    let window = u64::try_from(cfg.dedup_window.as_millis()).unwrap_or(u64::MAX);
    let claimed: Result<Option<String>, _> = redis::cmd("SET")
        .arg(&key)
        .arg("pending")
        .arg("NX")
        .arg("PX")
        .arg(window)
        .query_async(&mut link.publisher)
        .await;
    match claimed {
        Err(e) => return outcome(Err(internal(&cmd, &describe(e)))),
        Ok(None) => return outcome(duplicate(&key, &cmd, link).await),
        Ok(Some(_)) => {}
    }
    let result = run_command(&cmd, shared, registrations).await;
    let stored = match &result {
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": {"code": e.code.as_str(), "message": e.message}}),
    };
    let _ = redis::cmd("SET")
        .arg(&key)
        .arg(stored.to_string())
        .arg("XX")
        .arg("PX")
        .arg(window)
        .query_async::<Option<String>>(&mut link.publisher)
        .await;
    outcome(result)
}

/// The stored result of a command already executed (or being executed).
async fn duplicate(key: &str, cmd: &Command, link: &mut Link) -> Result<Value, CommandError> {
    let until = Instant::now() + DUPLICATE_WAIT;
    loop {
        let stored: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut link.publisher)
            .await
            .map_err(|e| internal(cmd, &describe(e)))?;
        match stored.as_deref() {
            Some("pending") if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Some("pending") => {
                return Err(internal(cmd, "a command with this id is still running"));
            }
            None => {
                return Err(internal(
                    cmd,
                    "the record of this command id expired meanwhile",
                ));
            }
            Some(text) => {
                let v: Value =
                    serde_json::from_str(text).map_err(|e| internal(cmd, &e.to_string()))?;
                let error = v.get("error");
                let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
                return if v.get("ok") == Some(&Value::Bool(true)) {
                    Ok(v.get("result").cloned().unwrap_or(Value::Null))
                } else {
                    let code = match field("code") {
                        Some("unknown_account") => ErrorCode::UnknownAccount,
                        Some("draining") => ErrorCode::Draining,
                        _ => ErrorCode::Internal,
                    };
                    Err(CommandError {
                        code,
                        message: field("message").unwrap_or_default().to_owned(),
                        id: Some(cmd.id.clone()),
                        command: Some(cmd.kind.name().to_owned()),
                    })
                };
            }
        }
    }
}

fn internal(cmd: &Command, message: &str) -> CommandError {
    CommandError {
        code: ErrorCode::Internal,
        message: message.to_owned(),
        id: Some(cmd.id.clone()),
        command: Some(cmd.kind.name().to_owned()),
    }
}

async fn run_command(
    cmd: &Command,
    shared: &Shared,
    registrations: &Registrations,
) -> Result<Value, CommandError> {
    let error = |code, message: String| CommandError {
        code,
        message,
        id: Some(cmd.id.clone()),
        command: Some(cmd.kind.name().to_owned()),
    };
    if cmd.kind.starts_work() && shared.lifecycle.phase() != Phase::Running {
        return Err(error(
            ErrorCode::Draining,
            "the instance is draining; no new work".into(),
        ));
    }
    match &cmd.kind {
        CommandKind::Ping => Ok(json!({"pong": true})),
        CommandKind::Status => serde_json::to_value(shared.snapshot())
            .map_err(|e| error(ErrorCode::Internal, e.to_string())),
        CommandKind::Drain => Ok(json!({"phase": shared.lifecycle.drain()})),
        CommandKind::SipTrace { on } => match shared.sip.get() {
            Some(sip) if sip.set_trace(*on).await => Ok(json!({"sip_trace": on})),
            _ => Err(error(
                ErrorCode::Internal,
                "the SIP core is not running".into(),
            )),
        },
        CommandKind::Register { account } | CommandKind::Unregister { account } => {
            let register = matches!(cmd.kind, CommandKind::Register { .. });
            match registrations.control(account, register).await {
                Some(state) => Ok(json!({"account": account, "state": state})),
                None => Err(error(
                    ErrorCode::UnknownAccount,
                    format!("no account named {account:?}"),
                )),
            }
        }
    }
}

/// ±20 % random spread.
fn jitter(d: Duration) -> Duration {
    let unit = (crate::sip::ids::random_u64() % 401) as f64 / 1000.0;
    d.mul_f64(0.8 + unit)
}
