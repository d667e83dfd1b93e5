//! SIP transports: UDP sockets, TCP and TLS connections. Tasks here only
//! move bytes; every decision is made by the stack's core task, which they
//! report to over one bounded channel.

pub mod framer;
pub mod tls;

mod conn;
mod listen;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use conn::ConnOptions;
pub use listen::{Slot, SourceLimits, accept_loop, connect};
pub use udp::receive_loop;

use super::target::{FlowId, Target, Transport};
use framer::FramerError;

/// What transport tasks report to the core.
#[derive(Debug)]
pub enum Inbound {
    /// A datagram or a framed stream message.
    Message {
        /// The bytes.
        data: Bytes,
        /// Where it came from (with the flow it came over).
        source: Target,
        /// Its share of the inbound byte budget, returned when dropped.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// A UDP request from a source outside the allow-list, to be refused
    /// with 403 (`sip.untrusted = reject`).
    Refused {
        /// The bytes.
        data: Bytes,
        /// Where it came from.
        source: Target,
    },
    /// A connection is open; send to it through `outbox`.
    Opened {
        /// Its flow id.
        flow: FlowId,
        /// TCP or TLS.
        transport: Transport,
        /// Peer address.
        remote: SocketAddr,
        /// Our address.
        local: SocketAddr,
        /// Queue of bytes to write.
        outbox: mpsc::Sender<Bytes>,
        /// Whether dialerd opened it.
        outbound: bool,
    },
    /// A connection closed.
    Closed {
        /// Its flow id.
        flow: FlowId,
        /// Why.
        reason: CloseReason,
    },
    /// An outbound connection could not be opened.
    ConnectFailed {
        /// TCP or TLS.
        transport: Transport,
        /// Peer address.
        remote: SocketAddr,
        /// What went wrong (TLS errors name the certificate problem).
        error: String,
    },
    /// Something was dropped before it reached the core.
    Dropped {
        /// Why (a metric label).
        reason: &'static str,
    },
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it.
    PeerClosed,
    /// A read or write failed.
    Io(String),
    /// The stream could not be framed.
    Framing(FramerError),
    /// A peer that answers pings missed a pong for one keepalive interval.
    KeepaliveTimeout,
    /// No traffic for the idle timeout.
    Idle,
    /// A message did not arrive whole within the message timeout.
    SlowSender,
    /// At the connection cap, a newer connection took the slot of this one,
    /// which had not delivered a whole message.
    Evicted,
    /// The core asked it to close.
    Shutdown,
}

impl CloseReason {
    /// A short metric label.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Io(_) => "io_error",
            CloseReason::Framing(_) => "framing_error",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::Idle => "idle",
            CloseReason::SlowSender => "slow_sender",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What every receiving task checks before anything reaches the core: the
/// source allow-list, and the byte budget of the inbound queue.
#[derive(Clone)]
pub struct Gate {
    allowed: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    peers: Arc<std::sync::RwLock<std::collections::HashSet<IpAddr>>>,
    reject: bool,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("reject", &self.reject)
            .field("budget_bytes", &self.budget_bytes)
            .finish()
    }
}

/// What the gate says of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Allowed.
    Allowed,
    /// Outside the allow-list: answer requests with 403.
    Refuse,
    /// Outside the allow-list: drop silently.
    Drop,
}

impl Gate {
    /// A gate admitting sources for which `allowed` holds (the others are
    /// refused with 403 when `reject`, else dropped) into a queue of at most
    /// `budget_bytes` of messages.
    pub fn new(
        allowed: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
        reject: bool,
        budget_bytes: usize,
    ) -> Self {
        Self {
            allowed,
            peers: Arc::default(),
            reject,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }

    /// A gate that admits everyone (one-shot commands).
    pub fn open(budget_bytes: usize) -> Self {
        Self::new(Arc::new(|_| true), false, budget_bytes)
    }

    /// Marks `ip` as a configured peer (a registrar or proxy an account
    /// uses): its connections may use the slots kept for such peers and are
    /// never given up to a newcomer.
    pub fn add_peer(&self, ip: IpAddr) {
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
    }

    /// Whether `ip` is a configured peer (looked up on accept only).
    pub fn is_peer(&self, ip: IpAddr) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&ip)
    }

    /// Whether `ip` may send.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        if (self.allowed)(ip) {
            Admission::Allowed
        } else if self.reject {
            Admission::Refuse
        } else {
            Admission::Drop
        }
    }

    /// Takes `len` bytes of budget at once, or `None` when the queue is full.
    pub fn try_reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len.max(1)).ok()?;
        self.budget.clone().try_acquire_many_owned(n).ok()
    }

    /// Takes `len` bytes of budget, waiting for the core to drain (a
    /// connection's reader, which must not lose a framed message).
    pub async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len.max(1).min(self.budget_bytes)).ok()?;
        self.budget.clone().acquire_many_owned(n).await.ok()
    }
}

/// Allocates flow ids.
#[derive(Debug, Default)]
pub struct FlowIds(AtomicU64);

impl FlowIds {
    /// The next id.
    pub fn next(&self) -> FlowId {
        FlowId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Limits shared by every transport task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest message accepted on any transport.
    pub max_message: usize,
    /// Most open connections in all.
    pub max_connections: usize,
    /// Most inbound connections from one source address.
    pub max_connections_per_source: usize,
    /// A connection without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Longest TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Longest a single write may block.
    pub write_timeout: Duration,
    /// Longest a message may take to arrive whole (and a peer's new
    /// connection to deliver its first one).
    pub message_timeout: Duration,
    /// Connection slots kept for configured peers (registrars, proxies):
    /// other sources may use only `max_connections - reserved`.
    pub reserved_connections: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_message: 65_535,
            max_connections: 1024,
            max_connections_per_source: 32,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(8),
            reserved_connections: 64,
        }
    }
}
