//! The flow table (sans-IO): which flow carries a message toward a target,
//! connections being opened and what waits for them, the options of
//! configured peers, and the owners to tell when a flow is lost. Every map
//! is pruned when its flow closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::OwnerId;
use crate::sip::target::{FlowId, Target, Transport};

/// TLS parameters for connections dialerd opens toward a peer.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The client configuration (trust).
    pub config: Arc<rustls::ClientConfig>,
    /// The name to verify.
    pub name: ServerName<'static>,
}

/// How connections toward a configured peer (a registrar, an outbound
/// proxy) are opened and kept: they belong to the peer, not to a request.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// CRLF keepalive interval on connections dialerd opens to the peer.
    pub keepalive: Option<Duration>,
    /// TLS trust, for TLS peers.
    pub tls: Option<TlsClient>,
}

/// A peer on a connection-oriented transport.
pub type PeerKey = (Transport, SocketAddr);

/// An open TCP or TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// TCP or TLS.
    pub transport: Transport,
    /// The peer.
    pub remote: SocketAddr,
    /// Our end.
    pub local: SocketAddr,
    /// Whether dialerd opened it.
    pub outbound: bool,
}

/// Where a message toward a target goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Over this flow, whose local address is given.
    Flow(FlowId, SocketAddr),
    /// A connection is being opened: wait for it.
    Wait,
    /// Open a connection first.
    Connect,
}

/// Why nothing can carry a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No UDP socket of the target's address family.
    #[error("no UDP socket for {0}")]
    NoSocket(SocketAddr),
    /// The pinned connection is gone (never re-dialled: it may be a peer's
    /// ephemeral port).
    #[error("{flow} to {remote} is closed")]
    Closed {
        /// The flow.
        flow: FlowId,
        /// Its peer.
        remote: SocketAddr,
    },
}

/// Every flow of one endpoint.
#[derive(Debug, Default)]
pub struct Flows {
    udp: Vec<(FlowId, SocketAddr)>,
    conns: HashMap<FlowId, Conn>,
    by_peer: HashMap<PeerKey, FlowId>,
    connecting: HashMap<PeerKey, ()>,
    peers: HashMap<PeerKey, PeerOptions>,
    owners: HashMap<FlowId, Vec<OwnerId>>,
}

impl Flows {
    /// Adds a bound UDP socket.
    pub fn add_udp(&mut self, flow: FlowId, local: SocketAddr) {
        self.udp.push((flow, local));
    }

    /// The UDP sockets.
    pub fn udp(&self) -> &[(FlowId, SocketAddr)] {
        &self.udp
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open connections dialerd opened.
    pub fn outbound_connections(&self) -> usize {
        self.conns.values().filter(|c| c.outbound).count()
    }

    /// Connections being opened.
    pub fn connecting(&self) -> usize {
        self.connecting.len()
    }

    /// A connection by id.
    pub fn conn(&self, flow: FlowId) -> Option<&Conn> {
        self.conns.get(&flow)
    }

    /// Sets the options of a peer.
    pub fn configure(&mut self, peer: PeerKey, options: PeerOptions) {
        self.peers.insert(peer, options);
    }

    /// The options of a peer.
    pub fn options(&self, peer: &PeerKey) -> Option<&PeerOptions> {
        self.peers.get(peer)
    }

    /// How to reach `target` now.
    pub fn route(&self, target: Target) -> Result<Route, RouteError> {
        if target.transport == Transport::Udp {
            let pinned = target
                .flow
                .and_then(|f| self.udp.iter().find(|(id, _)| *id == f));
            let any = || {
                self.udp
                    .iter()
                    .find(|(_, local)| local.is_ipv4() == target.addr.is_ipv4())
            };
            return pinned
                .or_else(any)
                .map(|(id, local)| Route::Flow(*id, *local))
                .ok_or(RouteError::NoSocket(target.addr));
        }
        if let Some(flow) = target.flow {
            return self
                .conns
                .get(&flow)
                .map(|c| Route::Flow(flow, c.local))
                .ok_or(RouteError::Closed {
                    flow,
                    remote: target.addr,
                });
        }
        let key = (target.transport, target.addr);
        if let Some(flow) = self.by_peer.get(&key)
            && let Some(c) = self.conns.get(flow)
        {
            return Ok(Route::Flow(*flow, c.local));
        }
        if self.connecting.contains_key(&key) {
            return Ok(Route::Wait);
        }
        Ok(Route::Connect)
    }

    /// Notes that a connection to `peer` is being opened.
    pub fn start_connect(&mut self, peer: PeerKey) {
        self.connecting.insert(peer, ());
    }

    /// A connection opened (ours or a peer's).
    pub fn opened(&mut self, flow: FlowId, conn: Conn) {
        let key = (conn.transport, conn.remote);
        self.connecting.remove(&key);
        self.by_peer.insert(key, flow);
        self.conns.insert(flow, conn);
    }

    /// A connection attempt failed.
    pub fn connect_failed(&mut self, peer: PeerKey) {
        self.connecting.remove(&peer);
    }

    /// A connection closed: forgets it; returns it and the owners bound to
    /// it.
    pub fn closed(&mut self, flow: FlowId) -> Option<(Conn, Vec<OwnerId>)> {
        let conn = self.conns.remove(&flow)?;
        let key = (conn.transport, conn.remote);
        if self.by_peer.get(&key) == Some(&flow) {
            self.by_peer.remove(&key);
        }
        let owners = self.owners.remove(&flow).unwrap_or_default();
        Some((conn, owners))
    }

    /// Binds `owner` to a connection: it is told when the flow is lost.
    pub fn bind(&mut self, flow: FlowId, owner: OwnerId) {
        if !self.conns.contains_key(&flow) {
            return;
        }
        let owners = self.owners.entry(flow).or_default();
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }

    /// Unbinds `owner` from every flow.
    pub fn release(&mut self, owner: OwnerId) {
        self.owners.retain(|_, owners| {
            owners.retain(|o| *o != owner);
            !owners.is_empty()
        });
    }

    /// Forgets every connection (shutdown).
    pub fn clear(&mut self) {
        self.conns.clear();
        self.by_peer.clear();
        self.connecting.clear();
        self.owners.clear();
    }
}
