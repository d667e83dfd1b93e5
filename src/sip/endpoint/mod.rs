//! The SIP endpoint, sans-IO: the transaction layer, the flow table and the
//! transaction-user interface in one machine, in the shape of quinn-proto's
//! `Endpoint` and str0m's `Rtc`. The driver feeds it [`Input`]s and the
//! clock and carries out its [`Output`]s; owners (registrations, calls)
//! send requests and responses through it and get [`Event`]s back.
//!
//! Routing: every response (each 1xx, each 2xx, forked and retransmitted
//! ones included) goes to the owner of its client transaction; in-dialog
//! requests (and the ACK of a 2xx) to the owner of the dialog; new
//! out-of-dialog INVITEs are [`Event::NewRequest`]s; OPTIONS and what
//! nobody serves are answered here; a CANCEL is answered here and its
//! INVITE's owner told; in-dialog requests nobody owns get 481.

mod answer;
mod flows;
mod reply;
mod uas;

#[cfg(test)]
pub(crate) mod pair;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;

pub use answer::{ACCEPT, ALLOW, Answer, SUPPORTED, answer};
pub use flows::{Conn, Flows, PeerKey, PeerOptions, Route, RouteError, TlsClient};
pub use reply::{BadStatus, ContactSpec, OutRequest, Reply, Status};

use super::ids::{self, Entropy};
use super::message::{Framing, HeaderName, Limits, Message, Method, OutMessage, lex};
use super::target::{FlowId, Target, Transport};
use super::transaction::{
    self, ClientRequest, State, Timers, Transactions, TxnError, TxnId, response_target,
};
use super::transport::CloseReason;
use uas::Unacked;

/// Who a transaction or dialog belongs to: chosen by the user of the
/// endpoint (a registration, a call), opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// A dialog as the endpoint routes it (RFC 3261 §12): Call-ID, our tag and
/// the peer's tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogKey {
    /// Call-ID.
    pub call_id: Box<str>,
    /// Our tag.
    pub local_tag: Box<str>,
    /// The peer's tag.
    pub remote_tag: Box<str>,
}

/// How the endpoint is set up.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Transaction timers.
    pub timers: Timers,
    /// Server header value.
    pub user_agent: String,
    /// TCP and TLS listeners (their ports go into Via and Contact).
    pub listeners: Vec<(Transport, SocketAddr)>,
    /// The public address to advertise, if any.
    pub advertised: Option<IpAddr>,
    /// The local address per family for sockets bound to an unspecified
    /// address (found once by the driver).
    pub fallback_ips: Vec<IpAddr>,
    /// Most connections in all (outbound ones count).
    pub max_connections: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            timers: Timers::default(),
            user_agent: concat!("dialerd/", env!("CARGO_PKG_VERSION")).to_owned(),
            listeners: Vec::new(),
            advertised: None,
            fallback_ips: Vec::new(),
            max_connections: 1024,
        }
    }
}

/// What the driver feeds in.
#[derive(Debug)]
pub enum Input {
    /// A datagram or a framed stream message, from an allowed source.
    Message {
        /// The bytes.
        data: Bytes,
        /// Where it came from, with its flow.
        source: Target,
    },
    /// A message from a source outside the allow-list that is to be
    /// refused with 403 (requests only; everything else is dropped).
    Refuse {
        /// The bytes.
        data: Bytes,
        /// Where it came from.
        source: Target,
    },
    /// A connection opened.
    FlowOpened {
        /// Its flow.
        flow: FlowId,
        /// What it is.
        conn: Conn,
    },
    /// A connection closed.
    FlowClosed {
        /// Its flow.
        flow: FlowId,
        /// Why.
        reason: CloseReason,
    },
    /// A connection could not be opened.
    ConnectFailed {
        /// TCP or TLS.
        transport: Transport,
        /// The peer.
        remote: SocketAddr,
        /// What went wrong.
        error: String,
    },
    /// A [`Transmit`] could not be carried out.
    SendFailed {
        /// Its transaction.
        txn: Option<TxnId>,
        /// What went wrong.
        error: String,
    },
}

/// Bytes to write.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The UDP socket or connection to write on.
    pub flow: FlowId,
    /// Its transport.
    pub transport: Transport,
    /// The destination (for UDP; the connection's peer otherwise).
    pub remote: SocketAddr,
    /// The message.
    pub data: Bytes,
    /// The transaction sending, to report a failure with.
    pub txn: Option<TxnId>,
}

/// What the endpoint asks its driver to do, or tells its users.
#[derive(Debug)]
pub enum Output {
    /// Write bytes.
    Transmit(Transmit),
    /// Open a connection.
    Connect {
        /// TCP or TLS.
        transport: Transport,
        /// The peer.
        remote: SocketAddr,
        /// The peer's options (keepalive, TLS trust).
        options: PeerOptions,
    },
    /// Something for a user.
    Event(Event),
}

/// Why a request got no final response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No final response in time (Timer B or F, or 64×T1 after CANCEL).
    #[error("no final response (transaction timeout)")]
    Timeout,
    /// The transport could not deliver it (the text names the problem,
    /// e.g. a TLS certificate error).
    #[error("transport error: {0}")]
    Transport(String),
    /// Cancelled while it waited for its connection: never sent.
    #[error("cancelled before it was sent")]
    Cancelled,
}

/// Events for the endpoint's users.
#[derive(Debug)]
pub enum Event {
    /// A response on a client transaction (every 1xx and 2xx, each forked
    /// 2xx, each retransmitted 2xx).
    Response {
        /// The owner.
        owner: OwnerId,
        /// The client transaction.
        txn: TxnId,
        /// The response.
        response: Message,
        /// A 2xx already acknowledged with [`Endpoint::send_ack`]: the
        /// endpoint sent the same ACK again.
        acked_again: bool,
    },
    /// A client transaction ended without a final response.
    RequestFailed {
        /// The owner.
        owner: OwnerId,
        /// The client transaction.
        txn: TxnId,
        /// Why.
        failure: Failure,
    },
    /// A new out-of-dialog request for whoever serves it (an INVITE);
    /// answer with [`Endpoint::respond`] after [`Endpoint::adopt`].
    NewRequest {
        /// The server transaction.
        txn: TxnId,
        /// The request.
        request: Message,
        /// Where it came from.
        source: Target,
    },
    /// A request inside a dialog the owner bound (BYE, re-INVITE, UPDATE,
    /// INFO), or the ACK of a 2xx (no transaction).
    InDialog {
        /// The dialog's owner.
        owner: OwnerId,
        /// The server transaction (`None` for an ACK).
        txn: Option<TxnId>,
        /// The request.
        request: Message,
        /// Where it came from.
        source: Target,
    },
    /// A CANCEL matched an INVITE server transaction still waiting for its
    /// final response; the CANCEL got its 200. The owner answers the INVITE
    /// (487).
    Cancelled {
        /// The INVITE's owner.
        owner: OwnerId,
        /// The INVITE server transaction.
        invite: TxnId,
    },
    /// No ACK came for a 2xx within 64×T1 (RFC 3261 §13.3.1.4).
    AckTimeout {
        /// The INVITE's owner.
        owner: OwnerId,
        /// The INVITE server transaction.
        invite: TxnId,
    },
    /// A connection the owner used was lost.
    FlowLost {
        /// The owner.
        owner: OwnerId,
        /// The flow.
        flow: FlowId,
        /// Its transport.
        transport: Transport,
        /// Its peer.
        remote: SocketAddr,
        /// Why.
        reason: CloseReason,
    },
    /// A connection opened (for logs and metrics).
    FlowOpened {
        /// Its flow.
        flow: FlowId,
        /// What it is.
        conn: Conn,
    },
    /// A connection closed (for logs and metrics).
    FlowClosed {
        /// Its flow.
        flow: FlowId,
        /// What it was.
        conn: Conn,
        /// Why.
        reason: CloseReason,
    },
    /// Something was dropped (a metric label).
    Dropped {
        /// Why.
        reason: &'static str,
    },
}

/// Why a call into the endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Nothing can carry the message.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A TLS peer without configured trust.
    #[error("no TLS trust configured for {0}")]
    NoTlsTrust(SocketAddr),
    /// The connection limit is reached.
    #[error("connection limit reached; not connecting to {0}")]
    ConnectionLimit(SocketAddr),
    /// The transaction layer refused.
    #[error(transparent)]
    Transaction(#[from] TxnError),
    /// No such server transaction, or it has its final response.
    #[error("no server transaction waiting for a response")]
    NotWaiting,
    /// The request is not a request (no method or URI).
    #[error("not a request")]
    NotARequest,
}

/// Live entries of every table, for gauges and leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Live {
    /// Transactions.
    pub transactions: usize,
    /// Armed transaction timers.
    pub timers: usize,
    /// Client transactions with an owner.
    pub clients: usize,
    /// Server transactions waiting for a response.
    pub servers: usize,
    /// Bound dialogs.
    pub dialogs: usize,
    /// 2xx waiting for their ACK.
    pub unacked: usize,
    /// Cached ACKs of 2xx.
    pub acks: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
    /// Open connections.
    pub connections: usize,
    /// Connections being opened.
    pub connecting: usize,
}

struct Client {
    owner: OwnerId,
    flow: Option<FlowId>,
}

struct Server {
    owner: Option<OwnerId>,
    /// Until the final response.
    request: Option<Message>,
    source: Target,
    tag: Box<str>,
}

enum Waiting {
    Request {
        txn: TxnId,
        owner: OwnerId,
        request: OutRequest,
        target: Target,
    },
    Ack {
        invite: TxnId,
        to_tag: Box<str>,
        request: OutRequest,
        target: Target,
    },
}

/// The endpoint.
pub struct Endpoint {
    config: EndpointConfig,
    txns: Transactions,
    flows: Flows,
    rng: Box<dyn Entropy>,
    clients: HashMap<TxnId, Client>,
    servers: HashMap<TxnId, Server>,
    dialogs: HashMap<DialogKey, OwnerId>,
    /// The To tag of INVITE server transactions after their final response.
    invite_tags: HashMap<TxnId, Box<str>>,
    unacked: Unacked,
    /// The ACKs sent for 2xx, by INVITE transaction and To tag (a forked
    /// INVITE has several), dropped when the transaction ends.
    acks: HashMap<TxnId, Vec<(Box<str>, Transmit)>>,
    waiting: HashMap<PeerKey, Vec<Waiting>>,
    failures: HashMap<TxnId, String>,
    out: VecDeque<Output>,
    limits: Limits,
}

impl Endpoint {
    /// A new endpoint. `seed` keys the transaction-key hash; `rng` makes
    /// branches and tags.
    pub fn new(config: EndpointConfig, seed: RandomState, rng: Box<dyn Entropy>) -> Self {
        Self {
            txns: Transactions::new(config.timers, seed),
            unacked: Unacked::new(config.timers),
            config,
            flows: Flows::default(),
            rng,
            clients: HashMap::new(),
            servers: HashMap::new(),
            dialogs: HashMap::new(),
            invite_tags: HashMap::new(),
            acks: HashMap::new(),
            waiting: HashMap::new(),
            failures: HashMap::new(),
            out: VecDeque::new(),
            limits: Limits::default(),
        }
    }

    /// Adds a bound UDP socket.
    pub fn add_udp(&mut self, flow: FlowId, local: SocketAddr) {
        self.flows.add_udp(flow, local);
    }

    /// Sets how connections to a peer are opened and kept.
    pub fn configure_peer(&mut self, peer: PeerKey, options: PeerOptions) {
        self.flows.configure(peer, options);
    }

    /// The flow table.
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// Live entries of every table.
    pub fn live(&self) -> Live {
        Live {
            transactions: self.txns.len(),
            timers: self.txns.armed_timers(),
            clients: self.clients.len(),
            servers: self.servers.len(),
            dialogs: self.dialogs.len(),
            unacked: self.unacked.len(),
            acks: self.acks.values().map(Vec::len).sum(),
            waiting: self.waiting.values().map(Vec::len).sum(),
            connections: self.flows.connections(),
            connecting: self.flows.connecting(),
        }
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.txns.poll_timeout(), self.unacked.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.txns.handle_timeout(now);
        self.pump(now);
        for due in self.unacked.due(now) {
            match due {
                uas::Due::Retransmit { invite, data } => {
                    if self.txns.respond(now, invite, 200, data).is_err() {
                        self.unacked.remove_txn(invite);
                    }
                }
                uas::Due::GiveUp { invite, owner } => {
                    tracing::info!(?invite, "no ACK for a 2xx within 64×T1");
                    if let Some(owner) = owner {
                        self.event(Event::AckTimeout { owner, invite });
                    }
                }
            }
        }
        self.pump(now);
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Message { data, source } => self.on_message(now, data, source),
            Input::Refuse { data, source } => self.on_refused(data, source),
            Input::FlowOpened { flow, conn } => self.on_opened(now, flow, conn),
            Input::FlowClosed { flow, reason } => self.on_closed(flow, reason),
            Input::ConnectFailed {
                transport,
                remote,
                error,
            } => self.on_connect_failed((transport, remote), &error),
            Input::SendFailed { txn, error } => {
                tracing::debug!(%error, "send failed");
                self.event(Event::Dropped {
                    reason: "send_failed",
                });
                if let Some(txn) = txn.filter(|t| self.txns.state(*t).is_some()) {
                    self.failures.insert(txn, error);
                    self.txns.transport_error(txn);
                }
            }
        }
        self.pump(now);
    }

    /// Sends a request in a new client transaction owned by `owner`: now if
    /// its flow is open, else when the connection opens (Via, and Contact
    /// when asked for, then carry the connection's real local address).
    pub fn send_request(
        &mut self,
        now: Instant,
        owner: OwnerId,
        request: OutRequest,
        target: Target,
    ) -> Result<TxnId, EndpointError> {
        if request.message.method().is_none() {
            return Err(EndpointError::NotARequest);
        }
        let txn = self.txns.reserve();
        match self.flows.route(target)? {
            Route::Flow(flow, local) => {
                self.start_request(now, txn, owner, request, target, flow, local)?;
            }
            route => {
                self.await_connection(route, target)?;
                self.waiting
                    .entry((target.transport, target.addr))
                    .or_default()
                    .push(Waiting::Request {
                        txn,
                        owner,
                        request,
                        target,
                    });
            }
        }
        self.pump(now);
        Ok(txn)
    }

    /// Sends the ACK of a 2xx (a new request outside any transaction,
    /// RFC 3261 §13.2.2.4) for the INVITE `invite`, whose dialog has the
    /// peer tag `to_tag`; a retransmission of that 2xx is acknowledged
    /// again with the same bytes, by the endpoint.
    pub fn send_ack(
        &mut self,
        now: Instant,
        _owner: OwnerId,
        invite: TxnId,
        to_tag: &str,
        request: OutRequest,
        target: Target,
    ) -> Result<(), EndpointError> {
        match self.flows.route(target)? {
            Route::Flow(flow, local) => {
                self.start_ack(invite, to_tag.into(), request, target, flow, local);
            }
            route => {
                self.await_connection(route, target)?;
                self.waiting
                    .entry((target.transport, target.addr))
                    .or_default()
                    .push(Waiting::Ack {
                        invite,
                        to_tag: to_tag.into(),
                        request,
                        target,
                    });
            }
        }
        self.pump(now);
        Ok(())
    }

    /// Cancels an INVITE client transaction (RFC 3261 §9.1); the CANCEL's
    /// responses reach the same owner.
    pub fn cancel(&mut self, now: Instant, invite: TxnId) -> Result<(), EndpointError> {
        // Still waiting for its connection: it is never sent.
        if let Some(owner) = self.unqueue(invite) {
            self.event(Event::RequestFailed {
                owner,
                txn: invite,
                failure: Failure::Cancelled,
            });
            return Ok(());
        }
        self.txns.cancel(now, invite)?;
        self.pump(now);
        Ok(())
    }

    /// Gives up a client transaction without sending anything more (one
    /// still waiting for its connection is never sent).
    pub fn abandon(&mut self, now: Instant, txn: TxnId) {
        if self.unqueue(txn).is_none() {
            self.txns.abandon(txn);
        }
        self.pump(now);
    }

    /// Takes a request out of the connection wait lists; its owner.
    fn unqueue(&mut self, txn: TxnId) -> Option<OwnerId> {
        let mut found = None;
        for list in self.waiting.values_mut() {
            list.retain(|w| match w {
                Waiting::Request { txn: t, owner, .. } if *t == txn => {
                    found = Some(*owner);
                    false
                }
                _ => true,
            });
        }
        found
    }

    /// Makes `owner` the owner of a server transaction from
    /// [`Event::NewRequest`] (it will hear of a CANCEL and a missing ACK).
    pub fn adopt(&mut self, txn: TxnId, owner: OwnerId) {
        if let Some(s) = self.servers.get_mut(&txn) {
            s.owner = Some(owner);
        }
    }

    /// The To tag the endpoint gives responses on server transaction `txn`.
    pub fn local_tag(&self, txn: TxnId) -> Option<&str> {
        self.servers.get(&txn).map(|s| &*s.tag)
    }

    /// Responds on a server transaction. A 2xx to an INVITE is
    /// retransmitted until its ACK arrives (or 64×T1 passes:
    /// [`Event::AckTimeout`]).
    pub fn respond(&mut self, now: Instant, txn: TxnId, reply: Reply) -> Result<(), EndpointError> {
        let mut server = self.servers.remove(&txn).ok_or(EndpointError::NotWaiting)?;
        let Some(request) = server.request.take() else {
            return Err(EndpointError::NotWaiting);
        };
        let provisional = reply.status.is_provisional();
        let sent = self.send_response(
            now,
            txn,
            &request,
            server.source,
            &server.tag,
            server.owner,
            reply,
        );
        if provisional || sent.is_err() {
            // Still waiting for a final response.
            server.request = Some(request);
            self.servers.insert(txn, server);
        } else if request.method() == Some(Method::Invite) {
            // A late CANCEL's 200 carries the same To tag (RFC 3261 §9.2).
            self.invite_tags.insert(txn, server.tag);
        }
        sent
    }

    /// Builds and sends a response to `request` on its server transaction.
    #[allow(clippy::too_many_arguments)]
    fn send_response(
        &mut self,
        now: Instant,
        txn: TxnId,
        request: &Message,
        source: Target,
        tag: &str,
        owner: Option<OwnerId>,
        reply: Reply,
    ) -> Result<(), EndpointError> {
        let code = reply.status.code();
        let mut out =
            OutMessage::response_to(request, code, &reply.reason, Some(tag), Some(source.addr));
        for (name, value) in &reply.headers {
            out.push(name, value);
        }
        out.push("Server", &self.config.user_agent);
        let out = match reply.body {
            Some((content_type, body)) => out.body(&content_type, body),
            None => out,
        };
        let data = out.encode();
        let invite_2xx = request.method() == Some(Method::Invite) && reply.status.is_success();
        let ack_key = invite_2xx
            .then(|| {
                let seq = request.cseq().ok()?.seq;
                Some((
                    Box::<str>::from(request.call_id()?),
                    seq,
                    Box::<str>::from(tag),
                ))
            })
            .flatten();
        let reliable = source.is_reliable();
        if let Some(key) = ack_key {
            self.txns.respond(now, txn, code, data.clone())?;
            self.unacked
                .insert(now, key, txn, owner, (!reliable).then_some(data));
        } else {
            self.txns.respond(now, txn, code, data)?;
        }
        self.pump(now);
        Ok(())
    }

    /// Answers a request the endpoint serves itself.
    fn answer_here(
        &mut self,
        now: Instant,
        txn: TxnId,
        request: &Message,
        source: Target,
        reply: Reply,
    ) {
        let code = reply.status.code();
        let tag = ids::token_from(self.rng.as_mut());
        if let Err(e) = self.send_response(now, txn, request, source, &tag, None, reply) {
            tracing::debug!(code, error = %e, "could not respond");
        }
    }

    /// Routes in-dialog requests with `key` to `owner`.
    pub fn bind_dialog(&mut self, key: DialogKey, owner: OwnerId) {
        self.dialogs.insert(key, owner);
    }

    /// Stops routing a dialog.
    pub fn unbind_dialog(&mut self, key: &DialogKey) {
        self.dialogs.remove(key);
    }

    /// Forgets `owner` everywhere it is bound (flows); its dialogs are
    /// unbound by key.
    pub fn release(&mut self, owner: OwnerId) {
        self.flows.release(owner);
    }

    /// The address Via and Contact carry for a message toward `target`
    /// now, or `None` while that depends on a connection not yet open.
    pub fn contact_addr(&self, target: Target) -> Option<SocketAddr> {
        match self.flows.route(target).ok()? {
            Route::Flow(_, local) => Some(self.advertised(target.transport, local)),
            _ => self
                .listener(target.transport, target.addr.is_ipv4())
                .map(|l| {
                    let ip = self.public_ip(l.ip(), target.addr.is_ipv4());
                    SocketAddr::new(ip, l.port())
                }),
        }
    }

    /// Forgets every connection and what waits for one (shutdown).
    pub fn shutdown(&mut self) {
        self.flows.clear();
        self.waiting.clear();
    }

    // --- inputs -------------------------------------------------------------

    fn on_message(&mut self, now: Instant, data: Bytes, source: Target) {
        let framing = if source.transport == Transport::Udp {
            Framing::Datagram
        } else {
            Framing::Stream
        };
        let msg = match Message::parse(data.clone(), framing, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                if !self.answer_unparsable(&data, source, &e.to_string()) {
                    tracing::debug!(%source, error = %e, "unparsable message dropped");
                    self.event(Event::Dropped {
                        reason: "unparsable",
                    });
                }
                return;
            }
        };
        if let Err(invalid) = msg.validate() {
            self.event(Event::Dropped { reason: "invalid" });
            if msg.is_request() && msg.method() != Some(Method::Ack) {
                if self.reply_stateless(&msg, source, invalid.status(), &invalid.reason()) {
                    tracing::info!(%source, problem = %invalid, code = invalid.status(), "invalid request answered");
                } else {
                    tracing::info!(%source, problem = %invalid, "invalid request without a usable Via dropped");
                }
            } else {
                tracing::debug!(%source, problem = %invalid, "invalid message dropped");
            }
            return;
        }
        self.txns.handle(now, msg, source);
    }

    fn on_refused(&mut self, data: Bytes, source: Target) {
        self.event(Event::Dropped {
            reason: "untrusted_source",
        });
        let framing = if source.transport == Transport::Udp {
            Framing::Datagram
        } else {
            Framing::Stream
        };
        if let Ok(msg) = Message::parse(data, framing, &self.limits)
            && msg.is_request()
            && msg.method() != Some(Method::Ack)
            && self.reply_stateless(&msg, source, 403, "Forbidden")
        {
            tracing::info!(%source, "request from a source outside sip.allowed_peers refused");
        }
    }

    fn on_opened(&mut self, now: Instant, flow: FlowId, conn: Conn) {
        self.flows.opened(flow, conn);
        self.event(Event::FlowOpened { flow, conn });
        let Some(waiting) = self.waiting.remove(&(conn.transport, conn.remote)) else {
            return;
        };
        for w in waiting {
            match w {
                Waiting::Request {
                    txn,
                    owner,
                    request,
                    target,
                } => {
                    if let Err(e) =
                        self.start_request(now, txn, owner, request, target, flow, conn.local)
                    {
                        self.event(Event::RequestFailed {
                            owner,
                            txn,
                            failure: Failure::Transport(e.to_string()),
                        });
                    }
                }
                Waiting::Ack {
                    invite,
                    to_tag,
                    request,
                    target,
                    ..
                } => self.start_ack(invite, to_tag, request, target, flow, conn.local),
            }
        }
    }

    fn on_closed(&mut self, flow: FlowId, reason: CloseReason) {
        let Some((conn, owners)) = self.flows.closed(flow) else {
            return;
        };
        for owner in owners {
            self.event(Event::FlowLost {
                owner,
                flow,
                transport: conn.transport,
                remote: conn.remote,
                reason: reason.clone(),
            });
        }
        // Transactions that already have their final response just end on
        // their timers; only those still waiting for one fail.
        let stranded: Vec<TxnId> = self
            .clients
            .iter()
            .filter(|(t, c)| {
                c.flow == Some(flow)
                    && !matches!(
                        self.txns.state(**t),
                        Some(State::Accepted | State::Completed) | None
                    )
            })
            .map(|(t, _)| *t)
            .collect();
        for txn in stranded {
            self.failures
                .insert(txn, format!("connection closed ({})", reason.label()));
            self.txns.transport_error(txn);
        }
        self.event(Event::FlowClosed { flow, conn, reason });
    }

    fn on_connect_failed(&mut self, peer: PeerKey, error: &str) {
        tracing::warn!(transport = %peer.0, remote = %peer.1, %error, "connection failed");
        self.flows.connect_failed(peer);
        self.event(Event::Dropped {
            reason: "connect_failed",
        });
        for w in self.waiting.remove(&peer).unwrap_or_default() {
            if let Waiting::Request { txn, owner, .. } = w {
                self.event(Event::RequestFailed {
                    owner,
                    txn,
                    failure: Failure::Transport(error.to_owned()),
                });
            }
        }
    }

    // --- sending ------------------------------------------------------------

    fn await_connection(&mut self, route: Route, target: Target) -> Result<(), EndpointError> {
        if route != Route::Connect {
            return Ok(());
        }
        let peer = (target.transport, target.addr);
        let options = self.flows.options(&peer).cloned().unwrap_or_default();
        if target.transport == Transport::Tls && options.tls.is_none() {
            return Err(EndpointError::NoTlsTrust(target.addr));
        }
        // Connections peers open are limited where they are accepted; a flood
        // of those must not keep dialerd from reaching its registrar.
        if self.flows.outbound_connections() + self.flows.connecting()
            >= self.config.max_connections
        {
            return Err(EndpointError::ConnectionLimit(target.addr));
        }
        self.flows.start_connect(peer);
        self.out.push_back(Output::Connect {
            transport: target.transport,
            remote: target.addr,
            options,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start_request(
        &mut self,
        now: Instant,
        txn: TxnId,
        owner: OwnerId,
        request: OutRequest,
        target: Target,
        flow: FlowId,
        local: SocketAddr,
    ) -> Result<(), EndpointError> {
        let (message, _) = self.stamp(request, target.transport, local);
        let method = message
            .method()
            .ok_or(EndpointError::NotARequest)?
            .to_owned();
        let uri = message.request_uri().unwrap_or_default().to_owned();
        let data = message.encode();
        let client = ClientRequest::from_out(&message, &method, &uri, data)?;
        let pinned = Target {
            flow: Some(flow),
            ..target
        };
        self.txns.start_reserved(now, txn, client, pinned)?;
        let reliable = target.is_reliable();
        self.clients.insert(
            txn,
            Client {
                owner,
                flow: reliable.then_some(flow),
            },
        );
        if reliable {
            self.flows.bind(flow, owner);
        }
        Ok(())
    }

    fn start_ack(
        &mut self,
        invite: TxnId,
        to_tag: Box<str>,
        request: OutRequest,
        target: Target,
        flow: FlowId,
        local: SocketAddr,
    ) {
        let (message, _) = self.stamp(request, target.transport, local);
        let transmit = Transmit {
            flow,
            transport: target.transport,
            remote: target.addr,
            data: message.encode(),
            txn: None,
        };
        if self.txns.state(invite) == Some(State::Accepted) {
            let sent = self.acks.entry(invite).or_default();
            sent.retain(|(tag, _)| *tag != to_tag);
            sent.push((to_tag, transmit.clone()));
        }
        self.out.push_back(Output::Transmit(transmit));
    }

    /// Adds our Via (fresh branch) and the Contact asked for.
    fn stamp(
        &mut self,
        request: OutRequest,
        transport: Transport,
        local: SocketAddr,
    ) -> (OutMessage, String) {
        let OutRequest {
            mut message,
            contact,
        } = request;
        let addr = self.advertised(transport, local);
        let branch = ids::branch_from(self.rng.as_mut());
        let proto = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        message.prepend(
            "Via",
            format!("SIP/2.0/{proto} {addr};branch={branch};rport"),
        );
        if let Some(spec) = contact {
            let mut value = format!("<sip:{}@{addr}", spec.user);
            match transport {
                Transport::Udp => {}
                Transport::Tcp => value.push_str(";transport=tcp"),
                Transport::Tls => value.push_str(";transport=tls"),
            }
            let _ = write!(value, ">{}", spec.params);
            message.push("Contact", value);
        }
        (message, branch)
    }

    fn listener(&self, transport: Transport, v4: bool) -> Option<SocketAddr> {
        self.config
            .listeners
            .iter()
            .find(|(t, a)| *t == transport && a.is_ipv4() == v4)
            .map(|(_, a)| *a)
    }

    /// The address we are reached at for a flow whose local end is
    /// `local`: the public address or the socket's own, with the listener's
    /// port for connection transports that have a listener, else the flow's
    /// own port.
    fn advertised(&self, transport: Transport, local: SocketAddr) -> SocketAddr {
        let v4 = local.is_ipv4();
        let port = match transport {
            Transport::Udp => local.port(),
            t => self.listener(t, v4).map_or(local.port(), |l| l.port()),
        };
        SocketAddr::new(self.public_ip(local.ip(), v4), port)
    }

    fn public_ip(&self, local: IpAddr, v4: bool) -> IpAddr {
        if let Some(ip) = self.config.advertised.filter(|ip| ip.is_ipv4() == v4) {
            return ip;
        }
        if !local.is_unspecified() {
            return local;
        }
        self.config
            .fallback_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == v4)
            .unwrap_or(local)
    }

    // --- the transaction layer's outputs ------------------------------------

    fn pump(&mut self, now: Instant) {
        while let Some(output) = self.txns.poll_output() {
            match output {
                transaction::Output::Transmit { txn, target, data } => {
                    self.transmit(txn, target, data);
                }
                transaction::Output::Event(event) => self.on_txn_event(now, event),
            }
        }
    }

    fn transmit(&mut self, txn: Option<TxnId>, target: Target, data: Bytes) {
        match self.flows.route(target) {
            Ok(Route::Flow(flow, _)) => self.out.push_back(Output::Transmit(Transmit {
                flow,
                transport: target.transport,
                remote: target.addr,
                data,
                txn,
            })),
            Ok(_) | Err(_) => {
                let why = match self.flows.route(target) {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("no open connection to {target}"),
                };
                tracing::debug!(%target, error = %why, "cannot transmit");
                self.event(Event::Dropped {
                    reason: "send_failed",
                });
                if let Some(txn) = txn {
                    self.failures.insert(txn, why);
                    self.txns.transport_error(txn);
                }
            }
        }
    }

    fn on_txn_event(&mut self, now: Instant, event: transaction::Event) {
        use transaction::Event as E;
        match event {
            E::Request {
                txn,
                request,
                source,
            } => self.on_request(now, txn, request, source),
            E::Response { txn, response } => self.on_response(txn, response),
            E::Ack { request, source } => self.on_ack(request, source),
            E::StrayResponse { response, source } => {
                tracing::debug!(%source, status = ?response.status(), "response without a transaction dropped");
                self.event(Event::Dropped {
                    reason: "stray_response",
                });
            }
            E::Timeout { txn, .. } => {
                if let Some(c) = self.clients.get(&txn) {
                    let owner = c.owner;
                    self.event(Event::RequestFailed {
                        owner,
                        txn,
                        failure: Failure::Timeout,
                    });
                }
            }
            E::TransportError { txn } => {
                let why = self
                    .failures
                    .remove(&txn)
                    .unwrap_or_else(|| "send failed".to_owned());
                if let Some(c) = self.clients.get(&txn) {
                    let owner = c.owner;
                    self.event(Event::RequestFailed {
                        owner,
                        txn,
                        failure: Failure::Transport(why),
                    });
                }
            }
            E::Terminated { txn } => {
                self.clients.remove(&txn);
                self.servers.remove(&txn);
                self.invite_tags.remove(&txn);
                self.failures.remove(&txn);
                self.acks.remove(&txn);
            }
            E::CancelSent { invite, cancel } => {
                if let Some(c) = self.clients.get(&invite) {
                    let (owner, flow) = (c.owner, c.flow);
                    self.clients.insert(cancel, Client { owner, flow });
                }
            }
        }
    }

    fn on_response(&mut self, txn: TxnId, response: Message) {
        let Some(owner) = self.clients.get(&txn).map(|c| c.owner) else {
            return;
        };
        let mut acked_again = false;
        if response.status().is_some_and(|c| (200..300).contains(&c))
            && let Some(tag) = response.to_header().ok().and_then(|t| t.tag())
            && let Some((_, ack)) = self
                .acks
                .get(&txn)
                .and_then(|sent| sent.iter().find(|(t, _)| &**t == tag))
        {
            acked_again = true;
            self.out.push_back(Output::Transmit(ack.clone()));
        }
        self.event(Event::Response {
            owner,
            txn,
            response,
            acked_again,
        });
    }

    fn on_request(&mut self, now: Instant, txn: TxnId, request: Message, source: Target) {
        let method = request.method();
        if method == Some(Method::Cancel) {
            self.on_cancel(now, txn, &request, source);
            return;
        }
        let dialog = request
            .to_header()
            .ok()
            .and_then(|t| t.tag().map(Box::<str>::from));
        if let Some(local_tag) = dialog {
            let owner =
                dialog_key(&request, local_tag.clone()).and_then(|k| self.dialogs.get(&k).copied());
            match owner {
                Some(owner) => {
                    self.keep_server(txn, &request, source, local_tag, Some(owner));
                    self.event(Event::InDialog {
                        owner,
                        txn: Some(txn),
                        request,
                        source,
                    });
                }
                None => self.answer_here(
                    now,
                    txn,
                    &request,
                    source,
                    Reply::code(481, "Call/Transaction Does Not Exist"),
                ),
            }
            return;
        }
        match answer(&request) {
            Some(a) => {
                let mut reply = Reply::code(a.code, a.reason);
                for (name, value) in a.headers {
                    reply = reply.header(name, value);
                }
                self.answer_here(now, txn, &request, source, reply);
            }
            None => {
                let tag = ids::token_from(self.rng.as_mut()).into();
                self.keep_server(txn, &request, source, tag, None);
                self.event(Event::NewRequest {
                    txn,
                    request,
                    source,
                });
            }
        }
    }

    /// Keeps what a response to a request passed to an owner is built from.
    fn keep_server(
        &mut self,
        txn: TxnId,
        request: &Message,
        source: Target,
        tag: Box<str>,
        owner: Option<OwnerId>,
    ) {
        self.servers.insert(
            txn,
            Server {
                owner,
                request: Some(request.clone()),
                source,
                tag,
            },
        );
    }

    fn on_cancel(&mut self, now: Instant, txn: TxnId, cancel: &Message, source: Target) {
        let Some(invite) = self.txns.cancelled_invite(cancel) else {
            self.answer_here(
                now,
                txn,
                cancel,
                source,
                Reply::code(481, "Call/Transaction Does Not Exist"),
            );
            return;
        };
        // RFC 3261 §9.2: the 200 carries the To tag of the INVITE's responses.
        let tag = self
            .servers
            .get(&invite)
            .map(|s| s.tag.to_string())
            .or_else(|| self.invite_tags.get(&invite).map(ToString::to_string))
            .unwrap_or_else(|| ids::token_from(self.rng.as_mut()));
        if let Err(e) =
            self.send_response(now, txn, cancel, source, &tag, None, Reply::code(200, "OK"))
        {
            tracing::debug!(error = %e, "could not answer a CANCEL");
        }
        if self.txns.state(invite) != Some(State::Proceeding) {
            return; // already answered: the CANCEL has no effect
        }
        match self.servers.get(&invite).and_then(|s| s.owner) {
            Some(owner) => self.event(Event::Cancelled { owner, invite }),
            None => self.respond_or_log(now, invite, Reply::code(487, "Request Terminated")),
        }
    }

    fn on_ack(&mut self, request: Message, source: Target) {
        let to_tag = request
            .to_header()
            .ok()
            .and_then(|t| t.tag().map(Box::<str>::from));
        let key = request
            .call_id()
            .zip(request.cseq().ok().map(|c| c.seq))
            .zip(to_tag)
            .map(|((c, s), t)| (Box::<str>::from(c), s, t));
        if let Some(key) = &key {
            self.unacked.acked(key);
        }
        let owner = request
            .to_header()
            .ok()
            .and_then(|t| t.tag().map(Box::<str>::from))
            .and_then(|tag| dialog_key(&request, tag))
            .and_then(|k| self.dialogs.get(&k).copied());
        match owner {
            Some(owner) => self.event(Event::InDialog {
                owner,
                txn: None,
                request,
                source,
            }),
            None => self.event(Event::Dropped {
                reason: "stray_ack",
            }),
        }
    }

    fn respond_or_log(&mut self, now: Instant, txn: TxnId, reply: Reply) {
        let code = reply.status.code();
        if let Err(e) = self.respond(now, txn, reply) {
            tracing::debug!(code, error = %e, "could not respond");
        }
    }

    /// Answers a request outside any transaction (RFC 3261 §8.2.1): along
    /// its top Via, or, when the Via is there but unreadable (RFC 4475
    /// badinv01), straight back to the source address. False when it has no
    /// Via at all.
    fn reply_stateless(
        &mut self,
        request: &Message,
        source: Target,
        code: u16,
        reason: &str,
    ) -> bool {
        let Some(via) = request.value(HeaderName::Via) else {
            self.event(Event::Dropped {
                reason: "unanswerable",
            });
            return false;
        };
        let readable = lex::split_list(via)
            .next()
            .is_some_and(|v| super::message::Via::parse(v).is_ok());
        let tag = ids::token_from(self.rng.as_mut());
        let mut response =
            OutMessage::response_to(request, code, reason, Some(&tag), Some(source.addr));
        response.push("Server", &self.config.user_agent);
        let target = if readable {
            response_target(request, source)
        } else {
            source
        };
        self.transmit(None, target, response.encode());
        true
    }

    /// A request whose start line does not parse but whose Via does gets a
    /// 400 naming the problem (RFC 3261 §8.2, §21.4.1).
    fn answer_unparsable(&mut self, data: &[u8], source: Target, problem: &str) -> bool {
        let Some(out) = salvage::bad_request(data, source, problem, &self.config.user_agent) else {
            return false;
        };
        tracing::info!(%source, %problem, "unparsable request answered with 400");
        self.event(Event::Dropped {
            reason: "unparsable",
        });
        self.transmit(None, out.0, out.1);
        true
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }
}

/// The dialog of a request we received: its To tag is ours.
fn dialog_key(request: &Message, local_tag: Box<str>) -> Option<DialogKey> {
    let from = request.from_header().ok()?;
    Some(DialogKey {
        call_id: request.call_id()?.into(),
        local_tag,
        remote_tag: from.tag()?.into(),
    })
}

mod salvage;
