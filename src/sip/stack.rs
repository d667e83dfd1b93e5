//! The SIP stack: binds the listeners and runs one core task that owns the
//! transaction layer, the flow table and the out-of-dialog endpoint. Every
//! transport task reports to the core over one bounded channel; the core is
//! the only writer of its state, so nothing on the packet path is locked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::endpoint;
use super::ids;
use super::message::{Framing, Limits, Message, Method, OutMessage, Via};
use super::target::{FlowId, Target, Transport};
use super::transaction::{Event, Output, Timers, Transactions, TxnId, response_target};
use super::transport::{self, CloseReason, FlowIds, Inbound, SourceLimits, TransportLimits};
use crate::config::IpNet;
pub use crate::config::Untrusted;
use crate::metrics::SipMetrics;

/// Depth of the channel from transport tasks to the core.
const INBOUND_DEPTH: usize = 4096;
/// Depth of the command channel.
const COMMAND_DEPTH: usize = 1024;
/// Depth of the event channel to the stack's user.
const EVENT_DEPTH: usize = 1024;

/// How the stack is set up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// UDP sockets to bind.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners to bind.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners to bind (need `tls_server`).
    pub tls: Vec<SocketAddr>,
    /// Certificate and key for inbound TLS.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Transaction timers.
    pub timers: Timers,
    /// Allowed request sources; empty allows any.
    pub allowed_peers: Vec<IpNet>,
    /// What to do with others.
    pub untrusted: Untrusted,
    /// Address advertised in Via (the public address); default: the
    /// socket's own.
    pub advertised: Option<IpAddr>,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// Transport limits.
    pub limits: TransportLimits,
}

impl StackConfig {
    /// The stack of `dialerd run`, from the `[sip]` settings.
    pub fn from_settings(
        settings: &crate::config::Settings,
        advertised: Option<IpAddr>,
    ) -> Result<Self, super::transport::tls::TlsConfigError> {
        let sip = &settings.sip;
        let tls_server = match (&sip.tls.cert_file, &sip.tls.key_file) {
            (Some(cert), Some(key)) if !sip.tls_listen.is_empty() => {
                Some(super::transport::tls::server_config(cert, key)?)
            }
            _ => None,
        };
        Ok(Self {
            udp: sip.udp_listen.clone(),
            tcp: sip.tcp_listen.clone(),
            tls: sip.tls_listen.clone(),
            tls_server,
            timers: Timers {
                t1: Duration::from_millis(sip.t1_ms),
                t2: Duration::from_millis(sip.t2_ms),
                t4: Duration::from_millis(sip.t4_ms),
            },
            allowed_peers: sip.allowed_peers.clone(),
            untrusted: sip.untrusted,
            advertised,
            user_agent: sip.user_agent.clone(),
            limits: TransportLimits {
                max_connections: sip.max_connections,
                max_connections_per_source: sip.max_connections_per_source,
                idle_timeout: Duration::from_secs(sip.idle_timeout_secs),
                ..TransportLimits::default()
            },
        })
    }
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_server: None,
            timers: Timers::default(),
            allowed_peers: Vec::new(),
            untrusted: Untrusted::Drop,
            advertised: None,
            user_agent: concat!("dialerd/", env!("CARGO_PKG_VERSION")).to_owned(),
            limits: TransportLimits::default(),
        }
    }
}

/// Why the stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A listener could not be bound.
    #[error("cannot bind {transport} {addr}: {source}")]
    Bind {
        /// Transport.
        transport: Transport,
        /// Address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS listeners without a server certificate.
    #[error("TLS listeners need a certificate and key (sip.tls.cert_file, sip.tls.key_file)")]
    NoTlsCertificate,
}

/// Why a request got no final response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No final response before the transaction timer ran out.
    #[error("no final response (transaction timeout)")]
    Timeout,
    /// The transport could not deliver it.
    #[error("transport error: {0}")]
    Transport(String),
    /// The request could not be sent as built.
    #[error("request refused: {0}")]
    Refused(String),
    /// The stack stopped.
    #[error("SIP stack stopped")]
    Stopped,
}

/// TLS parameters for connections dialerd opens toward a peer.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The client configuration (trust).
    pub config: Arc<rustls::ClientConfig>,
    /// The name to verify.
    pub name: ServerName<'static>,
}

/// A request for the stack to send.
#[derive(Debug)]
pub struct Request {
    /// The request without Via (the stack adds its own with a new branch).
    pub message: OutMessage,
    /// Where to send it.
    pub target: Target,
    /// TLS parameters when `target` is TLS and no connection exists yet.
    pub tls: Option<TlsClient>,
    /// CRLF keepalive interval for a connection opened for this request.
    pub keepalive: Option<Duration>,
}

/// Something the stack tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackEvent {
    /// A connection opened.
    FlowOpened {
        /// Flow id.
        flow: FlowId,
        /// TCP or TLS.
        transport: Transport,
        /// Peer.
        remote: SocketAddr,
        /// Whether dialerd opened it.
        outbound: bool,
    },
    /// A connection closed (a dead registration flow needs a new one).
    FlowClosed {
        /// Flow id.
        flow: FlowId,
        /// TCP or TLS.
        transport: Transport,
        /// Peer.
        remote: SocketAddr,
        /// Why.
        reason: CloseReason,
    },
}

enum Command {
    Send {
        request: Request,
        reply: oneshot::Sender<Result<Message, RequestError>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running stack.
#[derive(Debug, Clone)]
pub struct Stack {
    commands: mpsc::Sender<Command>,
    locals: Arc<Vec<(Transport, SocketAddr)>>,
    advertised: Option<IpAddr>,
}

impl Stack {
    /// Binds every listener and starts the core task. Returns the handle,
    /// the event stream, and the core task.
    pub async fn start(
        config: StackConfig,
        metrics: Arc<SipMetrics>,
    ) -> Result<(Stack, mpsc::Receiver<StackEvent>, JoinHandle<()>), StackError> {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_DEPTH);
        let (command_tx, command_rx) = mpsc::channel(COMMAND_DEPTH);
        let (event_tx, event_rx) = mpsc::channel(EVENT_DEPTH);
        let ids = Arc::new(FlowIds::default());
        let sources = SourceLimits::default();
        let mut locals = Vec::new();
        let mut udp = Vec::new();
        let mut tasks = Vec::new();
        for addr in &config.udp {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| StackError::Bind {
                    transport: Transport::Udp,
                    addr: *addr,
                    source,
                })?;
            let socket = Arc::new(socket);
            let local = socket.local_addr().unwrap_or(*addr);
            let flow = ids.next();
            locals.push((Transport::Udp, local));
            tasks.push(tokio::spawn(transport::receive_loop(
                socket.clone(),
                flow,
                inbound_tx.clone(),
                config.limits.max_message,
            )));
            udp.push(UdpEntry {
                flow,
                local,
                socket,
            });
        }
        if !config.tls.is_empty() && config.tls_server.is_none() {
            return Err(StackError::NoTlsCertificate);
        }
        let streams = config
            .tcp
            .iter()
            .map(|a| (Transport::Tcp, *a))
            .chain(config.tls.iter().map(|a| (Transport::Tls, *a)));
        for (transport, addr) in streams {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StackError::Bind {
                    transport,
                    addr,
                    source,
                })?;
            locals.push((transport, listener.local_addr().unwrap_or(addr)));
            let acceptor = match transport {
                Transport::Tls => config
                    .tls_server
                    .clone()
                    .map(tokio_rustls::TlsAcceptor::from),
                _ => None,
            };
            tasks.push(tokio::spawn(transport::accept_loop(
                listener,
                acceptor,
                ids.clone(),
                inbound_tx.clone(),
                config.limits,
                sources.clone(),
            )));
        }
        let locals = Arc::new(locals);
        let advertised = config.advertised;
        let core = Core {
            txns: Transactions::new(
                config.timers,
                std::collections::hash_map::RandomState::new(),
            ),
            udp,
            flows: HashMap::new(),
            by_remote: HashMap::new(),
            connecting: HashMap::new(),
            tls_for: HashMap::new(),
            keepalive: HashMap::new(),
            pending: HashMap::new(),
            pending_flow: HashMap::new(),
            failures: HashMap::new(),
            locals: locals.clone(),
            ids,
            inbound_tx,
            events: event_tx,
            metrics,
            config,
            limits: Limits::default(),
        };
        let handle = tokio::spawn(core.run(inbound_rx, command_rx, tasks));
        Ok((
            Stack {
                commands: command_tx,
                locals,
                advertised,
            },
            event_rx,
            handle,
        ))
    }

    /// The bound addresses, by transport.
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.locals
    }

    /// The first bound address of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.locals
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| *a)
    }

    /// The address to put in a Contact for requests sent over `transport`
    /// toward `toward`: the advertised (public) address, else the bound one,
    /// with the port of the matching listener (5060, or 5061 for TLS, when
    /// there is none: replies then come back over the connection itself).
    pub fn contact_addr(&self, transport: Transport, toward: SocketAddr) -> SocketAddr {
        let local = self
            .locals
            .iter()
            .find(|(t, a)| *t == transport && a.is_ipv4() == toward.is_ipv4())
            .map(|(_, a)| *a);
        let port = local.map_or(
            if transport == Transport::Tls {
                5061
            } else {
                5060
            },
            |a| a.port(),
        );
        let ip = self
            .advertised
            .or_else(|| local.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()))
            .unwrap_or_else(|| local_ip_toward(toward));
        SocketAddr::new(ip, port)
    }

    /// Sends a request and waits for its final response.
    pub async fn request(&self, request: Request) -> Result<Message, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Send { request, reply })
            .await
            .map_err(|_| RequestError::Stopped)?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Stops the core: closes every connection and stops the listeners.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A peer on a connection-oriented transport.
type PeerKey = (Transport, SocketAddr);
/// A message waiting for its connection, with the transaction sending it.
type Queued = (Option<TxnId>, Bytes);

struct UdpEntry {
    flow: FlowId,
    local: SocketAddr,
    socket: Arc<UdpSocket>,
}

struct FlowEntry {
    transport: Transport,
    remote: SocketAddr,
    outbox: mpsc::Sender<Bytes>,
}

struct Core {
    txns: Transactions,
    udp: Vec<UdpEntry>,
    flows: HashMap<FlowId, FlowEntry>,
    by_remote: HashMap<(Transport, SocketAddr), FlowId>,
    connecting: HashMap<PeerKey, Vec<Queued>>,
    tls_for: HashMap<SocketAddr, TlsClient>,
    keepalive: HashMap<PeerKey, Option<Duration>>,
    pending: HashMap<TxnId, oneshot::Sender<Result<Message, RequestError>>>,
    pending_flow: HashMap<TxnId, FlowId>,
    failures: HashMap<TxnId, String>,
    locals: Arc<Vec<(Transport, SocketAddr)>>,
    ids: Arc<FlowIds>,
    inbound_tx: mpsc::Sender<Inbound>,
    events: mpsc::Sender<StackEvent>,
    metrics: Arc<SipMetrics>,
    config: StackConfig,
    limits: Limits,
}

impl Core {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        tasks: Vec<JoinHandle<()>>,
    ) {
        loop {
            let deadline = self.txns.poll_timeout().map(Instant::from_std);
            tokio::select! {
                Some(item) = inbound.recv() => self.on_inbound(item),
                command = commands.recv() => match command {
                    Some(Command::Send { request, reply }) => self.on_send(request, reply),
                    Some(Command::Shutdown(done)) => {
                        self.flows.clear();
                        for task in &tasks {
                            task.abort();
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        for task in &tasks {
                            task.abort();
                        }
                        return;
                    }
                },
                () = sleep_until_opt(deadline) => {
                    self.txns.handle_timeout(std::time::Instant::now());
                }
            }
            self.drain().await;
        }
    }

    fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message { data, source } => self.on_message(data, source),
            Inbound::Opened {
                flow,
                transport,
                remote,
                local: _,
                outbox,
                outbound,
            } => {
                self.flows.insert(
                    flow,
                    FlowEntry {
                        transport,
                        remote,
                        outbox,
                    },
                );
                self.by_remote.insert((transport, remote), flow);
                self.metrics
                    .flows
                    .set(i64::try_from(self.flows.len()).unwrap_or(i64::MAX));
                if let Some(queued) = self.connecting.remove(&(transport, remote)) {
                    for (txn, data) in queued {
                        self.write_flow(flow, txn, data);
                    }
                }
                let _ = self.events.try_send(StackEvent::FlowOpened {
                    flow,
                    transport,
                    remote,
                    outbound,
                });
            }
            Inbound::Closed { flow, reason } => {
                // Requests still waiting on this connection fail now rather
                // than at Timer F: nothing will come back over it.
                let stranded: Vec<TxnId> = self
                    .pending_flow
                    .iter()
                    .filter(|(_, f)| **f == flow)
                    .map(|(t, _)| *t)
                    .collect();
                for txn in stranded {
                    self.pending_flow.remove(&txn);
                    self.send_failed(Some(txn), format!("connection closed ({})", reason.label()));
                }
                if let Some(entry) = self.flows.remove(&flow) {
                    if self.by_remote.get(&(entry.transport, entry.remote)) == Some(&flow) {
                        self.by_remote.remove(&(entry.transport, entry.remote));
                    }
                    self.metrics
                        .flows
                        .set(i64::try_from(self.flows.len()).unwrap_or(i64::MAX));
                    self.metrics.flow_closed(reason.label());
                    let _ = self.events.try_send(StackEvent::FlowClosed {
                        flow,
                        transport: entry.transport,
                        remote: entry.remote,
                        reason,
                    });
                }
            }
            Inbound::ConnectFailed {
                transport,
                remote,
                error,
            } => {
                tracing::warn!(%transport, %remote, %error, "connection failed");
                self.metrics.dropped("connect_failed");
                for (txn, _) in self
                    .connecting
                    .remove(&(transport, remote))
                    .unwrap_or_default()
                {
                    if let Some(txn) = txn {
                        self.failures.insert(txn, error.clone());
                        self.txns.transport_error(txn);
                    }
                }
            }
            Inbound::Dropped { reason } => self.metrics.dropped(reason),
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.config.allowed_peers.is_empty()
            || self.config.allowed_peers.iter().any(|n| n.contains(ip))
    }

    fn on_message(&mut self, data: Bytes, source: Target) {
        let framing = if source.transport == Transport::Udp {
            Framing::Datagram
        } else {
            Framing::Stream
        };
        let msg = match Message::parse(data, framing, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%source, error = %e, "unparsable message dropped");
                self.metrics.dropped("unparsable");
                return;
            }
        };
        let kind = if msg.is_request() {
            "request"
        } else {
            "response"
        };
        self.metrics.received(source.transport, kind);
        if !self.allowed(source.addr.ip()) {
            self.metrics.dropped("untrusted_source");
            if msg.is_request()
                && self.config.untrusted == Untrusted::Reject
                && msg.method() != Some(Method::Ack)
            {
                tracing::info!(%source, "request from a source outside sip.allowed_peers refused");
                self.reply_stateless(&msg, source, 403, "Forbidden");
            } else {
                tracing::debug!(%source, "message from a source outside sip.allowed_peers dropped");
            }
            return;
        }
        if let Err(invalid) = msg.validate() {
            self.metrics.dropped("invalid");
            if msg.is_request() && msg.method() != Some(Method::Ack) {
                tracing::info!(%source, problem = %invalid, "invalid request answered");
                self.reply_stateless(&msg, source, invalid.status(), &invalid.reason());
            } else {
                tracing::debug!(%source, problem = %invalid, "invalid response dropped");
            }
            return;
        }
        self.txns.handle(std::time::Instant::now(), msg, source);
    }

    /// Answers a request outside any transaction (RFC 3261 §8.2.1).
    fn reply_stateless(&mut self, request: &Message, source: Target, code: u16, reason: &str) {
        // A response is routed by the top Via; without one it cannot be sent.
        let has_via = request
            .value(super::message::HeaderName::Via)
            .and_then(|v| super::message::lex::split_list(v).next())
            .is_some_and(|v| Via::parse(v).is_ok());
        if !has_via {
            self.metrics.dropped("unanswerable");
            return;
        }
        let tag = ids::token();
        let mut response =
            OutMessage::response_to(request, code, reason, Some(&tag), Some(source.addr));
        response.push("Server", &self.config.user_agent);
        let target = response_target(request, source);
        self.txns.send_stateless(target, response.encode());
    }

    fn on_send(&mut self, request: Request, reply: oneshot::Sender<Result<Message, RequestError>>) {
        let Request {
            mut message,
            target,
            tls,
            keepalive,
        } = request;
        self.keepalive
            .insert((target.transport, target.addr), keepalive);
        if let Some(tls) = tls {
            self.tls_for.insert(target.addr, tls);
        }
        let Some(sent_by) = self.sent_by(target) else {
            let _ = reply.send(Err(RequestError::Refused(format!(
                "no {} socket for {}",
                target.transport, target.addr
            ))));
            return;
        };
        let proto = match target.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        message.prepend(
            "Via",
            format!(
                "SIP/2.0/{proto} {sent_by};branch=z9hG4bK{};rport",
                ids::token()
            ),
        );
        match self
            .txns
            .send_request(std::time::Instant::now(), message.encode(), target)
        {
            Ok(txn) => {
                self.pending.insert(txn, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(RequestError::Refused(e.to_string())));
            }
        }
    }

    /// The Via sent-by for a request to `target`.
    fn sent_by(&self, target: Target) -> Option<String> {
        let local = match target.transport {
            Transport::Udp => self.udp_for(target).map(|u| u.local)?,
            t => self
                .locals
                .iter()
                .find(|(lt, a)| *lt == t && a.is_ipv4() == target.addr.is_ipv4())
                .map(|(_, a)| *a)
                .unwrap_or_else(|| {
                    let unspecified: IpAddr = if target.addr.is_ipv4() {
                        IpAddr::from([0, 0, 0, 0])
                    } else {
                        IpAddr::from([0u16; 8])
                    };
                    SocketAddr::new(unspecified, if t == Transport::Tls { 5061 } else { 5060 })
                }),
        };
        let ip = self
            .config
            .advertised
            .or_else(|| (!local.ip().is_unspecified()).then(|| local.ip()))
            .unwrap_or_else(|| local_ip_toward(target.addr));
        Some(SocketAddr::new(ip, local.port()).to_string())
    }

    fn udp_for(&self, target: Target) -> Option<&UdpEntry> {
        if let Some(flow) = target.flow
            && let Some(u) = self.udp.iter().find(|u| u.flow == flow)
        {
            return Some(u);
        }
        self.udp
            .iter()
            .find(|u| u.local.is_ipv4() == target.addr.is_ipv4())
    }

    async fn drain(&mut self) {
        while let Some(output) = self.txns.poll_output() {
            match output {
                Output::Transmit { txn, target, data } => self.transmit(txn, target, data).await,
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    async fn transmit(&mut self, txn: Option<TxnId>, target: Target, data: Bytes) {
        self.metrics.sent(target.transport);
        if target.transport == Transport::Udp {
            let Some(socket) = self.udp_for(target).map(|u| u.socket.clone()) else {
                self.send_failed(txn, format!("no UDP socket for {}", target.addr));
                return;
            };
            if let Err(e) = socket.send_to(&data, target.addr).await {
                self.send_failed(txn, format!("UDP send to {}: {e}", target.addr));
            }
            return;
        }
        if let Some(flow) = target.flow {
            // Pinned to a connection (a response, or a request on a peer's
            // flow): never dial the peer's ephemeral port when it is gone.
            if self.flows.contains_key(&flow) {
                self.write_flow(flow, txn, data);
            } else {
                self.send_failed(txn, format!("{flow} to {} is closed", target.addr));
            }
            return;
        }
        if let Some(flow) = self
            .by_remote
            .get(&(target.transport, target.addr))
            .copied()
        {
            self.write_flow(flow, txn, data);
            return;
        }
        let key = (target.transport, target.addr);
        if let Some(queue) = self.connecting.get_mut(&key) {
            queue.push((txn, data));
            return;
        }
        let tls = if target.transport == Transport::Tls {
            match self.tls_for.get(&target.addr) {
                Some(t) => Some((t.config.clone(), t.name.clone())),
                None => {
                    self.send_failed(txn, format!("no TLS trust configured for {}", target.addr));
                    return;
                }
            }
        } else {
            None
        };
        if self.flows.len() + self.connecting.len() >= self.config.limits.max_connections {
            self.send_failed(
                txn,
                format!(
                    "connection limit reached; not connecting to {}",
                    target.addr
                ),
            );
            return;
        }
        self.connecting.insert(key, vec![(txn, data)]);
        tokio::spawn(transport::connect(
            target.transport,
            target.addr,
            tls,
            self.ids.clone(),
            self.inbound_tx.clone(),
            self.config.limits,
            self.keepalive.get(&key).copied().flatten(),
        ));
    }

    fn write_flow(&mut self, flow: FlowId, txn: Option<TxnId>, data: Bytes) {
        let Some(entry) = self.flows.get(&flow) else {
            self.send_failed(txn, format!("{flow} is closed"));
            return;
        };
        if let Some(txn) = txn.filter(|t| self.pending.contains_key(t)) {
            self.pending_flow.insert(txn, flow);
        }
        if let Err(e) = entry.outbox.try_send(data) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "write queue full",
                mpsc::error::TrySendError::Closed(_) => "connection closed",
            };
            let remote = entry.remote;
            self.send_failed(txn, format!("{} to {remote}: {why}", entry.transport));
        }
    }

    fn send_failed(&mut self, txn: Option<TxnId>, error: String) {
        tracing::debug!(%error, "send failed");
        self.metrics.dropped("send_failed");
        if let Some(txn) = txn.filter(|t| self.txns.state(*t).is_some()) {
            self.failures.insert(txn, error);
            self.txns.transport_error(txn);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Request {
                txn,
                request,
                source,
            } => self.answer(txn, &request, source),
            Event::Response { txn, response } => {
                if response.status().is_some_and(|c| c >= 200)
                    && let Some(reply) = self.pending.remove(&txn)
                {
                    self.pending_flow.remove(&txn);
                    let _ = reply.send(Ok(response));
                }
            }
            Event::Timeout { txn, .. } => self.fail(txn, RequestError::Timeout),
            Event::TransportError { txn } => {
                let why = self
                    .failures
                    .remove(&txn)
                    .unwrap_or_else(|| "send failed".to_owned());
                self.fail(txn, RequestError::Transport(why));
            }
            Event::Terminated { txn } => {
                self.failures.remove(&txn);
                self.fail(txn, RequestError::Timeout);
            }
            Event::Ack { .. } | Event::CancelSent { .. } => {}
            Event::StrayResponse { response, source } => {
                tracing::debug!(%source, status = ?response.status(), "response without a transaction dropped");
                self.metrics.dropped("stray_response");
            }
        }
    }

    fn fail(&mut self, txn: TxnId, error: RequestError) {
        self.pending_flow.remove(&txn);
        if let Some(reply) = self.pending.remove(&txn) {
            let _ = reply.send(Err(error));
        }
    }

    fn answer(&mut self, txn: TxnId, request: &Message, source: Target) {
        // The transaction may already have ended (its connection failed
        // while the request event was queued): nothing to answer on.
        if self.txns.state(txn).is_none() {
            return;
        }
        let now = std::time::Instant::now();
        let decided = if request.method() == Some(Method::Cancel) {
            match self.txns.cancelled_invite(request) {
                Some(_) => Some(endpoint::Answer {
                    code: 200,
                    reason: "OK",
                    headers: Vec::new(),
                }),
                None => endpoint::answer(request),
            }
        } else {
            endpoint::answer(request)
        };
        let Some(answer) = decided else {
            return;
        };
        let tag = ids::token();
        let mut response = OutMessage::response_to(
            request,
            answer.code,
            answer.reason,
            Some(&tag),
            Some(source.addr),
        );
        for (name, value) in &answer.headers {
            response.push(name, value);
        }
        response.push("Server", &self.config.user_agent);
        if let Err(e) = self.txns.respond(now, txn, answer.code, response.encode()) {
            tracing::warn!(error = %e, "could not respond");
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The local address the system would use toward `remote`.
pub fn local_ip_toward(remote: SocketAddr) -> IpAddr {
    let any: SocketAddr = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(remote)?;
            s.local_addr()
        })
        .map_or(any.ip(), |a| a.ip())
}
