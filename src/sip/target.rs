//! Where a message came from or goes to: a transport, an address, and for
//! connection-oriented transports the flow (connection) that carries it.

use std::fmt;
use std::net::SocketAddr;

pub use crate::config::Transport;

/// Identifies one transport flow: a UDP socket or one TCP/TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flow-{}", self.0)
    }
}

/// A peer address on a transport, optionally pinned to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Transport.
    pub transport: Transport,
    /// Peer address.
    pub addr: SocketAddr,
    /// The flow to use (for requests that arrived on a connection, or a
    /// connection already open toward the peer).
    pub flow: Option<FlowId>,
}

impl Target {
    /// A target without a pinned flow.
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Self {
            transport,
            addr,
            flow: None,
        }
    }

    /// Whether the transport delivers reliably (no SIP retransmissions).
    pub fn is_reliable(&self) -> bool {
        self.transport != Transport::Udp
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}
