//! The thin I/O driver under the sans-IO [`Endpoint`](super::endpoint::Endpoint):
//! binds sockets and listeners, opens connections (TCP, TLS), writes what
//! the endpoint transmits and turns what transport tasks report into
//! endpoint inputs. It decides nothing. Writes never wait: a full socket
//! buffer or connection queue is a counted drop reported back to the
//! endpoint, so one stuck peer cannot stall the core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

use super::endpoint::{Conn, Input, PeerOptions, Transmit};
use super::target::{FlowId, Transport};
use super::transport::{self, FlowIds, Gate, Inbound, SourceLimits, TransportLimits};

/// Depth of the channel from transport tasks to the core (its bytes are
/// bounded separately by the [`Gate`]).
const INBOUND_DEPTH: usize = 8192;

/// What the driver binds.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// UDP sockets.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners (need `tls_server`).
    pub tls: Vec<SocketAddr>,
    /// Certificate and key for inbound TLS.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Transport limits.
    pub limits: TransportLimits,
    /// Allow-list and inbound byte budget.
    pub gate: Gate,
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
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

/// Why a transmit was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The socket's send buffer is full.
    #[error("socket send buffer full")]
    SocketFull,
    /// The connection's write queue is full.
    #[error("connection write queue full")]
    QueueFull,
    /// No such socket or connection.
    #[error("{0} is closed")]
    Closed(FlowId),
    /// The OS refused the datagram.
    #[error("send to {addr}: {error}")]
    Io {
        /// Destination.
        addr: SocketAddr,
        /// The OS error.
        error: String,
    },
}

impl SendError {
    /// A short metric label.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::SocketFull => "socket_full",
            SendError::QueueFull => "write_queue_full",
            SendError::Closed(_) => "flow_closed",
            SendError::Io { .. } => "send_error",
        }
    }
}

/// Sockets, connections and transport tasks.
pub struct Driver {
    /// A non-blocking clone of each UDP socket for sending: a send is tried
    /// at once (tokio's `try_send_to` waits for a readiness event first).
    udp: HashMap<FlowId, std::net::UdpSocket>,
    udp_locals: Vec<(FlowId, SocketAddr)>,
    listeners: Vec<(Transport, SocketAddr)>,
    conns: HashMap<FlowId, mpsc::Sender<Bytes>>,
    ids: Arc<FlowIds>,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    gate: Gate,
    tasks: Vec<JoinHandle<()>>,
}

impl Driver {
    /// Binds every socket and listener and starts their tasks.
    pub async fn bind(
        config: DriverConfig,
    ) -> Result<(Driver, mpsc::Receiver<Inbound>), DriverError> {
        if !config.tls.is_empty() && config.tls_server.is_none() {
            return Err(DriverError::NoTlsCertificate);
        }
        let (inbound, rx) = mpsc::channel(INBOUND_DEPTH);
        let ids = Arc::new(FlowIds::default());
        let mut driver = Driver {
            udp: HashMap::new(),
            udp_locals: Vec::new(),
            listeners: Vec::new(),
            conns: HashMap::new(),
            ids,
            inbound,
            limits: config.limits,
            gate: config.gate.clone(),
            tasks: Vec::new(),
        };
        for addr in &config.udp {
            let bind_error = |source| DriverError::Bind {
                transport: Transport::Udp,
                addr: *addr,
                source,
            };
            let std_socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
            std_socket.set_nonblocking(true).map_err(bind_error)?;
            size_buffers(&std_socket, *addr);
            let sender = std_socket.try_clone().map_err(bind_error)?;
            let socket = Arc::new(UdpSocket::from_std(std_socket).map_err(bind_error)?);
            let local = socket.local_addr().unwrap_or(*addr);
            let flow = driver.ids.next();
            driver.tasks.push(tokio::spawn(transport::receive_loop(
                socket.clone(),
                flow,
                driver.inbound.clone(),
                config.limits.max_message,
                config.gate.clone(),
            )));
            driver.udp.insert(flow, sender);
            driver.udp_locals.push((flow, local));
        }
        let sources = SourceLimits::default();
        let streams = config
            .tcp
            .iter()
            .map(|a| (Transport::Tcp, *a))
            .chain(config.tls.iter().map(|a| (Transport::Tls, *a)));
        for (transport, addr) in streams {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| DriverError::Bind {
                    transport,
                    addr,
                    source,
                })?;
            driver
                .listeners
                .push((transport, listener.local_addr().unwrap_or(addr)));
            let acceptor = match transport {
                Transport::Tls => config
                    .tls_server
                    .clone()
                    .map(tokio_rustls::TlsAcceptor::from),
                _ => None,
            };
            driver.tasks.push(tokio::spawn(transport::accept_loop(
                listener,
                acceptor,
                driver.ids.clone(),
                driver.inbound.clone(),
                config.limits,
                sources.clone(),
                config.gate.clone(),
            )));
        }
        Ok((driver, rx))
    }

    /// The UDP sockets.
    pub fn udp(&self) -> &[(FlowId, SocketAddr)] {
        &self.udp_locals
    }

    /// The TCP and TLS listeners.
    pub fn listeners(&self) -> &[(Transport, SocketAddr)] {
        &self.listeners
    }

    /// Every bound address, by transport.
    pub fn locals(&self) -> Vec<(Transport, SocketAddr)> {
        self.udp_locals
            .iter()
            .map(|(_, a)| (Transport::Udp, *a))
            .chain(self.listeners.iter().copied())
            .collect()
    }

    /// Turns a transport report into an endpoint input; `Err` carries the
    /// label of something dropped before the core.
    pub fn input(&mut self, item: Inbound) -> Result<Input, &'static str> {
        Ok(match item {
            Inbound::Message { data, source, .. } => Input::Message { data, source },
            Inbound::Refused { data, source } => Input::Refuse { data, source },
            Inbound::Opened {
                flow,
                transport,
                remote,
                local,
                outbox,
                outbound,
            } => {
                self.conns.insert(flow, outbox);
                Input::FlowOpened {
                    flow,
                    conn: Conn {
                        transport,
                        remote,
                        local,
                        outbound,
                    },
                }
            }
            Inbound::Closed { flow, reason } => {
                self.conns.remove(&flow);
                Input::FlowClosed { flow, reason }
            }
            Inbound::ConnectFailed {
                transport,
                remote,
                error,
            } => Input::ConnectFailed {
                transport,
                remote,
                error,
            },
            Inbound::Dropped { reason } => return Err(reason),
        })
    }

    /// Writes without waiting.
    pub fn transmit(&mut self, t: &Transmit) -> Result<(), SendError> {
        if t.transport == Transport::Udp {
            let socket = self.udp.get(&t.flow).ok_or(SendError::Closed(t.flow))?;
            return match socket.send_to(&t.data, t.remote) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(SendError::SocketFull),
                Err(e) => Err(SendError::Io {
                    addr: t.remote,
                    error: e.to_string(),
                }),
            };
        }
        let outbox = self.conns.get(&t.flow).ok_or(SendError::Closed(t.flow))?;
        outbox.try_send(t.data.clone()).map_err(|e| match e {
            TrySendError::Full(_) => SendError::QueueFull,
            TrySendError::Closed(_) => SendError::Closed(t.flow),
        })
    }

    /// Opens a connection in its own task; it reports back as an input.
    pub fn connect(&mut self, transport: Transport, remote: SocketAddr, options: PeerOptions) {
        let tls = options.tls.map(|t| (t.config, t.name));
        tokio::spawn(transport::connect(
            transport,
            remote,
            tls,
            self.ids.clone(),
            self.inbound.clone(),
            self.limits,
            options.keepalive,
            self.gate.clone(),
        ));
    }

    /// Closes every connection and stops the listeners.
    pub fn shutdown(&mut self) {
        self.conns.clear();
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The local address the system would use toward `remote` (a syscall:
/// called once per address family at start, never per message).
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

/// Socket buffers asked for on SIP's UDP sockets: at the kernel default
/// (about 208 KiB) a stall of a few milliseconds under load overflows the
/// receive buffer and the kernel drops datagrams no counter of ours sees.
/// The kernel caps the size at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

fn size_buffers(socket: &std::net::UdpSocket, addr: SocketAddr) {
    let s = socket2::SockRef::from(socket);
    for (what, result) in [
        ("receive", s.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", s.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            tracing::warn!(%addr, error = %e, "cannot size the UDP {what} buffer");
        }
    }
    tracing::debug!(
        %addr,
        receive = s.recv_buffer_size().unwrap_or(0),
        send = s.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
}

/// The address per family for sockets bound to an unspecified address,
/// found once.
pub fn fallback_ips() -> Vec<IpAddr> {
    let v4 = local_ip_toward(SocketAddr::from(([192, 0, 2, 1], 5060)));
    let v6 = local_ip_toward(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 5060)));
    [v4, v6]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect()
}
