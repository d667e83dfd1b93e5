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

use redis::{PushInfo, PushKind, Value as RedisValue};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::command::{CommandError, ErrorCode};
use super::machine::{Machine, MachineConfig, Op, Source};
use crate::config::RedisSettings;
use crate::engine::SipCore;

pub mod agent;
mod connect;
mod jobs;
mod pipeline;
pub mod progress;
mod streams;

use crate::events::{EventReceiver, unix_ms};
use crate::lifecycle::Phase;
use crate::status::Shared;
pub use connect::connect_one;
use connect::{Link, describe, open_link};
use jobs::{execute, failure};
use pipeline::{Flight, Ping, fly, reply_of};
use streams::{Entry, bytes, entry_ms, string};

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
    /// Writes (records, results) dropped because too many waited for Redis.
    pub writes_dropped: u64,
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
        self.refresh_held();
        let ttl = u64::try_from((self.cfg.keepalive() * 3).as_millis()).unwrap_or(u64::MAX);
        match serde_json::to_string(&self.shared.snapshot()) {
            Ok(snapshot) => self.machine.heartbeat(snapshot, ttl),
            Err(e) => tracing::debug!(error = %e, "status snapshot not serialized"),
        }
    }

    /// With leases, the accounts held (registered here) are the ones this
    /// instance runs account commands for and advertises.
    fn refresh_held(&mut self) {
        let accounts = self.shared.accounts.borrow();
        if accounts.iter().any(|a| a.role.is_some()) {
            let held = accounts
                .iter()
                .filter(|a| a.role == Some("active"))
                .map(|a| a.name.clone())
                .collect();
            self.machine.set_held(held);
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
                self.machine.requeue(unix_ms(), batch);
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
                stats.ops_dropped,
                backlog,
            );
            let now = (
                s.events_dropped,
                s.commands_ok,
                s.commands_failed,
                s.commands_dropped,
                s.writes_dropped,
                s.backlog,
            );
            if next == now {
                return false;
            }
            if stats.ops_dropped > s.writes_dropped || dropped > s.commands_dropped {
                tracing::warn!(
                    writes_dropped = stats.ops_dropped,
                    commands_dropped = dropped,
                    "control channel queues full; dropped and counted"
                );
            }
            s.writes_dropped = stats.ops_dropped;
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
                    shell.machine.requeue(unix_ms(), batch);
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
                            shell.machine.requeue(unix_ms(), batch);
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
            Some(event) = feed.recv() => {
                let registration = matches!(event.event, crate::events::CoreEvent::Registration(_));
                shell.machine.core_event(event);
                if registration {
                    shell.refresh_held();
                }
            }
            Ok(()) = phase_rx.changed() => {
                diff_phase(*phase_rx.borrow_and_update(), &mut last_phase, &mut shell.machine);
            }
        }
    }
}

fn requeue_kept(shell: &mut Shell, kept: &mut Option<Vec<Op>>) {
    shell.flight = None;
    if let Some(batch) = kept.take() {
        shell.machine.requeue(unix_ms(), batch);
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
    let status = serde_json::to_value(shell.shared.snapshot()).unwrap_or_default();
    shell.machine.stopping(unix_ms(), status);
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

/// ±20 % random spread.
fn jitter(d: Duration) -> Duration {
    let unit = (crate::sip::ids::random_u64() % 401) as f64 / 1000.0;
    d.mul_f64(0.8 + unit)
}
