//! The media ports of live calls, until the media relay lands: each port
//! the call table allocates is bound here, and what arrives on it is
//! counted and discarded (so a peer's RTP is not answered with ICMP port
//! unreachable, and ops can see media arriving). The relay replaces this
//! with per-core shards that forward packets between legs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

/// Port changes the sink can fall behind by before they are dropped.
pub const COMMAND_DEPTH: usize = 4096;

pub use crate::call::PortChange;

/// What the sink counts.
#[derive(Debug, Clone, Default)]
pub struct SinkCounters {
    /// Packets received and discarded.
    pub packets: Counter,
    /// Ports that could not be bound.
    pub bind_failed: Counter,
    /// Port changes dropped because the sink's queue was full.
    pub changes_dropped: Counter,
}

/// The SIP core's end: sends port changes without waiting.
#[derive(Debug, Clone)]
pub struct MediaPorts {
    tx: Option<mpsc::Sender<PortChange>>,
    counters: SinkCounters,
}

impl MediaPorts {
    /// A handle that binds nothing (tools such as `dialerd call`).
    pub fn none() -> Self {
        Self {
            tx: None,
            counters: SinkCounters::default(),
        }
    }

    /// Queues a change; a full queue drops it, counted.
    pub fn send(&self, change: PortChange) {
        if let Some(tx) = &self.tx
            && let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(change)
        {
            self.counters.changes_dropped.inc();
            tracing::warn!(?change, "media port queue full; change dropped");
        }
    }
}

/// Starts the discard sink binding ports on `ip`.
pub fn spawn_sink(ip: IpAddr, counters: SinkCounters) -> (MediaPorts, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_DEPTH);
    let task = tokio::spawn(run(ip, rx, counters.clone()));
    (
        MediaPorts {
            tx: Some(tx),
            counters,
        },
        task,
    )
}

async fn run(ip: IpAddr, mut rx: mpsc::Receiver<PortChange>, counters: SinkCounters) {
    let mut readers: JoinSet<()> = JoinSet::new();
    let mut bound: HashMap<u16, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            change = rx.recv() => match change {
                Some(PortChange::Open(port)) => {
                    match std::net::UdpSocket::bind(SocketAddr::new(ip, port))
                        .and_then(|s| s.set_nonblocking(true).map(|()| s))
                        .and_then(UdpSocket::from_std)
                    {
                        Ok(socket) => {
                            let packets = counters.packets.clone();
                            let handle = readers.spawn(discard(socket, packets));
                            if let Some(old) = bound.insert(port, handle) {
                                old.abort();
                            }
                        }
                        Err(e) => {
                            counters.bind_failed.inc();
                            tracing::warn!(port, error = %e, "media port not bound");
                        }
                    }
                }
                Some(PortChange::Close(port)) => {
                    if let Some(handle) = bound.remove(&port) {
                        handle.abort();
                    }
                }
                None => return,
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

async fn discard(socket: UdpSocket, packets: Counter) {
    // A datagram longer than the buffer is truncated, which is all a
    // discard needs; a small buffer keeps each port's task small.
    let mut buf = [0u8; 16];
    while socket.recv_from(&mut buf).await.is_ok() {
        packets.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    #[tokio::test]
    async fn an_open_port_counts_what_arrives_and_a_closed_one_is_free_again() {
        let counters = SinkCounters::default();
        let (ports, _task) = spawn_sink(IpAddr::from([127, 0, 0, 1]), counters.clone());
        let port = free_port();
        ports.send(PortChange::Open(port));
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut arrived = false;
        for _ in 0..200 {
            let _ = peer.send_to(b"rtp", ("127.0.0.1", port));
            tokio::time::sleep(Duration::from_millis(10)).await;
            if counters.packets.get() > 0 {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "packets counted");
        ports.send(PortChange::Close(port));
        let mut free = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                free = true;
                break;
            }
        }
        assert!(free, "the port is released");
        assert_eq!(counters.bind_failed.get(), 0);
    }
}
