//! Connections to Redis: RESP3 with TLS and ACL credentials, TCP keepalive,
//! a reply deadline on every request; the three of the control channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, Value as RedisValue,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::streams::{Entry, read_streams};
use super::{ChannelConfig, ENTRY_DEPTH, PUSH_DEPTH, STREAM_BLOCK};
use crate::config::{RedisSettings, Secret};
use crate::control::machine::GROUP;

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

pub(super) async fn connect_with(
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
pub(super) fn describe(e: redis::RedisError) -> String {
    e.to_string()
}

/// The connections to Redis.
pub(super) struct Link {
    pub(super) writer: MultiplexedConnection,
    pub(super) subscriber: MultiplexedConnection,
    pub(super) reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(super) type Opened = (
    Link,
    mpsc::Receiver<PushInfo>,
    mpsc::Receiver<Result<Entry, String>>,
);

pub(super) async fn open_link(
    cfg: &ChannelConfig,
    dropped: Arc<AtomicU64>,
) -> Result<Opened, String> {
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
