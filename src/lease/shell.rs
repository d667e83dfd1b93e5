//! The lease machine's I/O shell: one Redis connection running the
//! machine's operations as atomic scripts, the SIP core told of permits
//! and revocations, the core's account states fed back, and the leases
//! published for `/status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::machine::{LeaseConfig, LeaseOp, LeaseOutput, LeaseReply, Leases, Observed};
use crate::config::RedisSettings;
use crate::engine::SipCore;
use crate::status::Shared;

/// Shortest wait before reconnecting to Redis.
const RECONNECT: Duration = Duration::from_secs(1);

/// Renews this instance's membership, renews its leases where they are
/// still its own, and reads every lease and fence counter.
/// KEYS: members, then (lease, fence) per account.
/// ARGV: instance, membership ms (a lease TTL), lease ms, then this instance's value per
/// account ('' when it holds none).
const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local out = {redis.call('ZRANGE', KEYS[1], 0, -1)}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local lease = KEYS[2 * i]
  local mine = ARGV[3 + i]
  local v = redis.call('GET', lease)
  if v and mine ~= '' and v == mine then
    redis.call('PEXPIRE', lease, ARGV[3])
  end
  out[#out + 1] = v or ''
  out[#out + 1] = redis.call('EXISTS', KEYS[2 * i + 1])
end
return out
";

/// Takes a free lease: SET NX PX with a new fence token, above the highest
/// the caller has seen (the counter may have been lost with Redis's data).
/// KEYS: lease, fence, contact. ARGV: instance, lease ms, floor.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
local value = ARGV[1] .. ' ' .. token
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1]) or ''}
end
return {1, value, redis.call('GET', KEYS[3]) or ''}
";

/// Deletes a lease (and its recorded Contact) if it is still ours.
/// KEYS: lease, contact. ARGV: value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
";

/// Records the holder's registered Contact if the lease is still ours.
/// KEYS: lease, contact. ARGV: value, contact ('' deletes it).
const SAVE_CONTACT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
";

/// What the shell needs.
#[derive(Debug, Clone)]
pub struct LeaseShellConfig {
    /// The machine's settings.
    pub machine: LeaseConfig,
    /// `redis.prefix`.
    pub prefix: String,
    /// How to reach Redis.
    pub redis: RedisSettings,
}

impl LeaseShellConfig {
    fn members_key(&self) -> String {
        format!("{}:lease:members", self.prefix)
    }

    fn lease_key(&self, account: &str) -> String {
        format!("{}:lease:{account}", self.prefix)
    }

    fn fence_key(&self, account: &str) -> String {
        format!("{}:lease:{account}:fence", self.prefix)
    }

    fn contact_key(&self, account: &str) -> String {
        format!("{}:lease:{account}:contact", self.prefix)
    }
}

/// Hands accounts over at a drain.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    release: mpsc::Sender<oneshot::Sender<()>>,
}

impl LeaseHandle {
    /// Releases every lease this instance holds (after the SIP core has
    /// unregistered the accounts) and stops acquiring; waits at most
    /// `limit`.
    pub async fn release_all(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.release.send(tx).await.is_ok() && tokio::time::timeout(limit, rx).await.is_err() {
            tracing::warn!(
                ?limit,
                "account leases not released in time; they run out on their own"
            );
        }
    }
}

/// Starts the lease task.
pub fn spawn(
    cfg: LeaseShellConfig,
    shared: Arc<Shared>,
    sip: SipCore,
) -> (LeaseHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(cfg, shared, sip, rx));
    (LeaseHandle { release: tx }, task)
}

async fn run(
    cfg: LeaseShellConfig,
    shared: Arc<Shared>,
    sip: SipCore,
    mut release: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut machine = Leases::new(cfg.machine.clone());
    let mut accounts = shared.accounts.subscribe();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_connect = Instant::now();
    let mut released: Vec<oneshot::Sender<()>> = Vec::new();
    let timeout = Duration::from_secs(u64::from(cfg.redis.response_timeout_secs.max(1)));
    loop {
        let now = Instant::now();
        machine.handle_timeout(now);
        while let Some(op) = machine.poll_op(Instant::now()) {
            if conn.is_none() && Instant::now() >= next_connect {
                match crate::control::channel::connect_one(&cfg.redis, timeout, None).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "account leases: cannot reach Redis");
                        next_connect = Instant::now() + RECONNECT;
                    }
                }
            }
            let reply = match conn.as_mut() {
                Some(c) => match execute(&cfg, c, &op).await {
                    Ok(reply) => Some(reply),
                    Err(e) => {
                        tracing::warn!(error = %e, "account leases: Redis operation failed");
                        conn = None;
                        next_connect = Instant::now() + RECONNECT;
                        None
                    }
                },
                None => None,
            };
            machine.on_reply(Instant::now(), reply);
            forward(&mut machine, &sip).await;
        }
        forward(&mut machine, &sip).await;
        shared.leases.send_replace(machine.statuses(Instant::now()));
        if !released.is_empty() && machine.released() {
            for done in released.drain(..) {
                let _ = done.send(());
            }
        }
        let wake = machine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            () = sleep_until(wake) => {}
            changed = accounts.changed() => {
                if changed.is_err() {
                    return;
                }
                let states = accounts.borrow_and_update().clone();
                for a in states {
                    match a.state {
                        "unregistered" => machine.core_stopped(&a.name),
                        "registered" => machine.core_registered(&a.name, a.contact.as_deref()),
                        _ => {}
                    }
                }
            }
            asked = release.recv() => match asked {
                Some(done) => {
                    machine.release_all();
                    released.push(done);
                }
                None => return,
            },
        }
    }
}

/// Tells the SIP core what the machine decided.
async fn forward(machine: &mut Leases, sip: &SipCore) {
    while let Some(output) = machine.poll_output() {
        match output {
            LeaseOutput::Permit { account, permit } => sip.lease(account, Some(permit)).await,
            LeaseOutput::Revoke { account } => sip.lease(account, None).await,
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one operation as its script.
async fn execute(
    cfg: &LeaseShellConfig,
    conn: &mut MultiplexedConnection,
    op: &LeaseOp,
) -> Result<LeaseReply, String> {
    let ttl_ms = u64::try_from(cfg.machine.ttl.as_millis()).unwrap_or(u64::MAX);
    match op {
        LeaseOp::Sync { renew } => {
            let accounts = &cfg.machine.accounts;
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SYNC).arg(1 + 2 * accounts.len());
            cmd.arg(cfg.members_key());
            for a in accounts {
                cmd.arg(cfg.lease_key(a)).arg(cfg.fence_key(a));
            }
            cmd.arg(&cfg.machine.instance)
                .arg(ttl_ms) // membership lasts a lease TTL
                .arg(ttl_ms);
            for a in accounts {
                let mine = renew
                    .iter()
                    .find(|(name, _)| name == a)
                    .map_or("", |(_, v)| v.as_str());
                cmd.arg(mine);
            }
            let reply: Value = cmd.query_async(conn).await.map_err(describe)?;
            parse_synced(reply, accounts.len())
        }
        LeaseOp::Acquire { account, floor } => {
            let reply: Value = redis::cmd("EVAL")
                .arg(ACQUIRE)
                .arg(3)
                .arg(cfg.lease_key(account))
                .arg(cfg.fence_key(account))
                .arg(cfg.contact_key(account))
                .arg(&cfg.machine.instance)
                .arg(ttl_ms)
                .arg(*floor)
                .query_async(conn)
                .await
                .map_err(describe)?;
            parse_acquired(reply)
        }
        LeaseOp::Release { account, value } => {
            let done = fenced_write(cfg, conn, RELEASE, account, &[value]).await?;
            tracing::info!(account, released = done, "account lease released");
            Ok(LeaseReply::Done(done))
        }
        LeaseOp::Leave => {
            let _: i64 = redis::cmd("ZREM")
                .arg(cfg.members_key())
                .arg(&cfg.machine.instance)
                .query_async(conn)
                .await
                .map_err(describe)?;
            Ok(LeaseReply::Done(true))
        }
        LeaseOp::SaveContact {
            account,
            value,
            contact,
        } => {
            let done = fenced_write(cfg, conn, SAVE_CONTACT, account, &[value, contact]).await?;
            Ok(LeaseReply::Done(done))
        }
    }
}

/// Runs `script` over an account's lease and Contact keys with `args`;
/// whether it found the lease still ours.
async fn fenced_write(
    cfg: &LeaseShellConfig,
    conn: &mut MultiplexedConnection,
    script: &str,
    account: &str,
    args: &[&String],
) -> Result<bool, String> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script)
        .arg(2)
        .arg(cfg.lease_key(account))
        .arg(cfg.contact_key(account));
    for a in args {
        cmd.arg(a.as_str());
    }
    let done: i64 = cmd.query_async(conn).await.map_err(describe)?;
    Ok(done == 1)
}

fn describe(e: redis::RedisError) -> String {
    e.to_string()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn parse_synced(reply: Value, accounts: usize) -> Result<LeaseReply, String> {
    let Value::Array(items) = reply else {
        return Err("unexpected reply to the lease sync".into());
    };
    let mut items = items.into_iter();
    let members = match items.next() {
        Some(Value::Array(m)) => m.iter().filter_map(text).collect(),
        _ => return Err("lease sync reply without members".into()),
    };
    let mut observed = Vec::with_capacity(accounts);
    for _ in 0..accounts {
        let value = items
            .next()
            .as_ref()
            .and_then(text)
            .filter(|v| !v.is_empty());
        let fenced = items.next().as_ref().and_then(int).unwrap_or(0) == 1;
        observed.push(Observed { value, fenced });
    }
    Ok(LeaseReply::Synced {
        members,
        accounts: observed,
    })
}

fn parse_acquired(reply: Value) -> Result<LeaseReply, String> {
    let Value::Array(items) = reply else {
        return Err("unexpected reply to a lease acquisition".into());
    };
    let won = items.first().and_then(int).unwrap_or(0) == 1;
    let value = items.get(1).and_then(text).unwrap_or_default();
    if won {
        let contact = items.get(2).and_then(text).filter(|c| !c.is_empty());
        Ok(LeaseReply::Acquired { value, contact })
    } else {
        Ok(LeaseReply::Held { value })
    }
}
