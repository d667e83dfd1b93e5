//! SIP transports: UDP sockets, TCP and TLS connections. Tasks here only
//! move bytes; every decision is made by the stack's core task, which they
//! report to over one bounded channel.

pub mod framer;
pub mod tls;

mod conn;
mod listen;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use conn::ConnOptions;
pub use listen::{SourceLimits, accept_loop, connect};
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
            CloseReason::Shutdown => "shutdown",
        }
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
        }
    }
}
