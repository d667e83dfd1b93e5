//! One TCP or TLS connection: frames what it reads, writes what the core
//! queues, answers and sends CRLF keepalives, closes when idle or dead.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framer::{Frame, Framer};
use super::{CloseReason, Gate, Inbound};
use crate::sip::target::{FlowId, Target, Transport};

/// Per-connection behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnOptions {
    /// Largest message accepted.
    pub max_message: usize,
    /// Close after this long without traffic.
    pub idle_timeout: Duration,
    /// Send a CRLF CRLF ping this often; once the peer has answered a ping,
    /// require a pong before the next one (a dead flow is then found within
    /// two intervals). A peer that never answers pings (no RFC 5626 support)
    /// keeps getting them as NAT keepalives. `None` sends none.
    pub keepalive: Option<Duration>,
    /// Longest a single write may block (a peer that stops reading).
    pub write_timeout: Duration,
    /// Longest a message may take to arrive whole, from its first byte (and
    /// on a connection a peer opened, from the accept to its first
    /// message): a slow sender cannot hold a slot for long.
    pub message_timeout: Duration,
}

impl ConnOptions {
    /// Options for a connection under `limits`, with `keepalive` if any.
    pub fn new(limits: &super::TransportLimits, keepalive: Option<Duration>) -> Self {
        Self {
            max_message: limits.max_message,
            idle_timeout: limits.idle_timeout,
            keepalive,
            write_timeout: limits.write_timeout,
            message_timeout: limits.message_timeout,
        }
    }
}

/// Runs the connection until it closes, then reports [`Inbound::Closed`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<S>(
    stream: S,
    flow: FlowId,
    transport: Transport,
    remote: SocketAddr,
    outbox: mpsc::Receiver<Bytes>,
    inbound: mpsc::Sender<Inbound>,
    opts: ConnOptions,
    gate: Gate,
    slot: Option<std::sync::Arc<super::listen::Slot>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = Io {
        inbound: &inbound,
        gate: &gate,
        slot: slot.as_deref(),
    };
    let reason = serve(stream, flow, transport, remote, outbox, io, opts).await;
    tracing::debug!(%flow, %remote, %transport, reason = reason.label(), "connection closed");
    let _ = inbound.send(Inbound::Closed { flow, reason }).await;
}

struct Io<'a> {
    inbound: &'a mpsc::Sender<Inbound>,
    gate: &'a Gate,
    /// The slot of a connection a peer opened (`None` for ours).
    slot: Option<&'a super::listen::Slot>,
}

#[allow(clippy::too_many_arguments)]
async fn serve<S>(
    mut stream: S,
    flow: FlowId,
    transport: Transport,
    remote: SocketAddr,
    mut outbox: mpsc::Receiver<Bytes>,
    io: Io<'_>,
    opts: ConnOptions,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let source = Target {
        transport,
        addr: remote,
        flow: Some(flow),
    };
    let mut framer = Framer::new(opts.max_message);
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_activity = Instant::now();
    let mut ping_outstanding = false;
    let mut pong_seen = false;
    let keepalive = opts.keepalive.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut next_ping = Instant::now() + keepalive;
    // A connection a peer opened must deliver its first message in time; then
    // every message must arrive whole within the limit of its first byte.
    let mut message_started: Option<Instant> = io.slot.is_some().then(Instant::now);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let idle_deadline = last_activity + opts.idle_timeout;
        let message_deadline = message_started.map_or(far, |t| t + opts.message_timeout);
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return CloseReason::PeerClosed,
                    Ok(n) => n,
                    Err(e) => return CloseReason::Io(e.to_string()),
                };
                last_activity = Instant::now();
                if message_started.is_none() {
                    message_started = Some(last_activity);
                }
                framer.push(buf.get(..n).unwrap_or_default());
                loop {
                    match framer.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Message(data))) => {
                            let permit = io.gate.reserve(data.len()).await;
                            let message = Inbound::Message { data, source, permit };
                            if io.inbound.send(message).await.is_err() {
                                return CloseReason::Shutdown;
                            }
                            message_started = None;
                            if let Some(slot) = io.slot {
                                slot.prove();
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            if let Err(e) = write(&mut stream, b"\r\n", opts.write_timeout).await {
                                return e;
                            }
                        }
                        Ok(Some(Frame::Pong)) => {
                            ping_outstanding = false;
                            pong_seen = true;
                        }
                        Err(e) => return CloseReason::Framing(e),
                    }
                }
                if framer.buffered() == 0 {
                    message_started = None;
                } else if message_started.is_none() {
                    message_started = Some(last_activity);
                }
            }
            queued = outbox.recv() => {
                let Some(data) = queued else {
                    let _ = tokio::time::timeout(opts.write_timeout, stream.shutdown()).await;
                    return CloseReason::Shutdown;
                };
                if let Err(e) = write(&mut stream, &data, opts.write_timeout).await {
                    return e;
                }
                last_activity = Instant::now();
            }
            () = tokio::time::sleep_until(next_ping), if opts.keepalive.is_some() => {
                if ping_outstanding && pong_seen {
                    return CloseReason::KeepaliveTimeout;
                }
                if let Err(e) = write(&mut stream, b"\r\n\r\n", opts.write_timeout).await {
                    return e;
                }
                ping_outstanding = true;
                // Our own keepalive keeps the flow from idling out: a peer
                // without RFC 5626 pongs still gets NAT keepalives.
                last_activity = Instant::now();
                framer.expect_pong(true);
                next_ping = Instant::now() + keepalive;
            }
            // Recomputed from the last activity on every turn: firing means idle.
            () = tokio::time::sleep_until(idle_deadline) => return CloseReason::Idle,
            () = tokio::time::sleep_until(message_deadline), if message_started.is_some() => {
                return CloseReason::SlowSender;
            }
            () = evicted(io.slot) => return CloseReason::Evicted,
        }
    }
}

/// Writes everything within `limit`.
async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
    limit: Duration,
) -> Result<(), CloseReason> {
    match tokio::time::timeout(limit, stream.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CloseReason::Io(e.to_string())),
        Err(_) => Err(CloseReason::Io(format!("write blocked for {limit:?}"))),
    }
}

async fn evicted(slot: Option<&super::listen::Slot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}
