//! One TCP or TLS connection: frames what it reads, writes what the core
//! queues, answers and sends CRLF keepalives, closes when idle or dead.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framer::{Frame, Framer};
use super::{CloseReason, Inbound};
use crate::sip::target::{FlowId, Target, Transport};

/// Per-connection behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnOptions {
    /// Largest message accepted.
    pub max_message: usize,
    /// Close after this long without traffic.
    pub idle_timeout: Duration,
    /// Send a CRLF CRLF ping this often and require a pong before the next
    /// one (a dead flow is found within two intervals); `None` sends none.
    pub keepalive: Option<Duration>,
}

impl ConnOptions {
    /// Options for a connection under `limits`, with `keepalive` if any.
    pub fn new(limits: &super::TransportLimits, keepalive: Option<Duration>) -> Self {
        Self {
            max_message: limits.max_message,
            idle_timeout: limits.idle_timeout,
            keepalive,
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
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = serve(stream, flow, transport, remote, outbox, &inbound, opts).await;
    tracing::debug!(%flow, %remote, %transport, reason = reason.label(), "connection closed");
    let _ = inbound.send(Inbound::Closed { flow, reason }).await;
}

async fn serve<S>(
    mut stream: S,
    flow: FlowId,
    transport: Transport,
    remote: SocketAddr,
    mut outbox: mpsc::Receiver<Bytes>,
    inbound: &mpsc::Sender<Inbound>,
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
    let keepalive = opts.keepalive.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut next_ping = Instant::now() + keepalive;
    loop {
        let idle_deadline = last_activity + opts.idle_timeout;
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return CloseReason::PeerClosed,
                    Ok(n) => n,
                    Err(e) => return CloseReason::Io(e.to_string()),
                };
                last_activity = Instant::now();
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Message(data))) => {
                            if inbound.send(Inbound::Message { data, source }).await.is_err() {
                                return CloseReason::Shutdown;
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            if let Err(e) = stream.write_all(b"\r\n").await {
                                return CloseReason::Io(e.to_string());
                            }
                        }
                        Ok(Some(Frame::Pong)) => ping_outstanding = false,
                        Err(e) => return CloseReason::Framing(e),
                    }
                }
            }
            queued = outbox.recv() => {
                let Some(data) = queued else {
                    let _ = stream.shutdown().await;
                    return CloseReason::Shutdown;
                };
                if let Err(e) = stream.write_all(&data).await {
                    return CloseReason::Io(e.to_string());
                }
                last_activity = Instant::now();
            }
            () = tokio::time::sleep_until(next_ping), if opts.keepalive.is_some() => {
                if ping_outstanding {
                    return CloseReason::KeepaliveTimeout;
                }
                if let Err(e) = stream.write_all(b"\r\n\r\n").await {
                    return CloseReason::Io(e.to_string());
                }
                ping_outstanding = true;
                framer.expect_pong(true);
                next_ping = Instant::now() + keepalive;
            }
            // Recomputed from the last activity on every turn: firing means idle.
            () = tokio::time::sleep_until(idle_deadline) => return CloseReason::Idle,
        }
    }
}
