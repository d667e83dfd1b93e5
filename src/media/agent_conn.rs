//! The connection of one agent stream, owned by the media shard that owns
//! the call's RTP: a non-blocking TCP socket in the shard's `epoll`, TLS by
//! rustls when the URL is `wss:`, and the sans-IO [`AgentStream`] it feeds.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::agent::stream::{AgentStream, StreamConfig, StreamEvent};

/// Plaintext rustls buffers before the stream's own backlog holds the rest.
const TLS_BUFFER: usize = 64 * 1024;

/// TLS toward the agent.
#[derive(Clone)]
pub struct AgentTls {
    /// The client configuration (its trust: system roots, a CA file or a
    /// pinned certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry (SNI).
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Everything a shard needs to stream a call to an agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's address, resolved at the edge.
    pub address: SocketAddr,
    /// TLS, for `wss:`.
    pub tls: Option<AgentTls>,
    /// The stream.
    pub stream: StreamConfig,
    /// Whether the stream's end (other than our own stop) hangs the call up.
    pub hang_up_on_end: bool,
    /// Otherwise, what to play to the caller when it ends (else silence).
    pub on_end_prompt: Option<Box<super::player::Source>>,
}

/// One agent connection.
pub(super) struct AgentConn {
    pub(super) socket: TcpStream,
    tls: Option<ClientConnection>,
    pub(super) stream: AgentStream,
    tcp_up: bool,
    shut: bool,
    pub(super) hang_up_on_end: bool,
    pub(super) on_end_prompt: Option<Box<super::player::Source>>,
}

impl AgentConn {
    /// Starts connecting; a connection that fails at once is reported by the
    /// stream.
    pub(super) fn connect(now: Instant, spec: AgentSpec) -> std::io::Result<AgentConn> {
        let socket = TcpStream::connect(spec.address)?;
        let _ = socket.set_nodelay(true);
        let tls = match spec.tls {
            Some(t) => {
                let mut c = ClientConnection::new(t.config, t.server_name)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                c.set_buffer_limit(Some(TLS_BUFFER));
                Some(c)
            }
            None => None,
        };
        Ok(AgentConn {
            socket,
            tls,
            stream: AgentStream::new(now, spec.stream),
            tcp_up: false,
            shut: false,
            hang_up_on_end: spec.hang_up_on_end,
            on_end_prompt: spec.on_end_prompt,
        })
    }

    /// Whether the socket can go: the stream is over and nothing is left
    /// to write.
    pub(super) fn finished(&mut self) -> bool {
        self.shut
            || (self.stream.is_done()
                && (!self.tcp_up
                    || (self.stream.outgoing().is_empty()
                        && self.tls.as_ref().is_none_or(|t| !t.wants_write()))))
    }

    /// The socket is readable or writable (or the connect completed).
    pub(super) fn ready(&mut self, now: Instant, buf: &mut [u8]) {
        if self.shut {
            return;
        }
        if !self.tcp_up {
            match self.socket.take_error() {
                Ok(Some(e)) | Err(e) => return self.lost(e.to_string()),
                Ok(None) => {}
            }
            match self.socket.peer_addr() {
                Ok(_) => {
                    self.tcp_up = true;
                    self.stream.connected(now);
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.lost(e.to_string()),
            }
        }
        self.read(now, buf);
        self.flush();
    }

    /// Closes the socket (it stays registered nowhere); the stream keeps
    /// yielding silence frames until its leg closes.
    pub(super) fn shut_down(&mut self, registry: &mio::Registry) {
        if !self.shut {
            let _ = registry.deregister(&mut self.socket);
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
            self.shut = true;
        }
    }

    /// Whether the socket was closed.
    pub(super) fn is_shut(&self) -> bool {
        self.shut
    }

    fn lost(&mut self, reason: String) {
        self.stream.transport_failed(reason);
        self.shut = true;
    }

    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        loop {
            if self.shut {
                return;
            }
            let result = match self.tls.as_mut() {
                Some(tls) => tls.read_tls(&mut self.socket),
                None => self.socket.read(buf),
            };
            match result {
                Ok(0) => return self.lost("the agent closed the connection".into()),
                Ok(n) => match self.tls.as_mut() {
                    Some(tls) => {
                        if let Err(e) = tls.process_new_packets() {
                            return self.lost(format!("TLS: {e}"));
                        }
                        loop {
                            match tls.reader().read(buf) {
                                Ok(0) => break,
                                Ok(m) => self.stream.receive(now, buf.get(..m).unwrap_or_default()),
                                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                Err(e) => return self.lost(format!("TLS: {e}")),
                            }
                        }
                    }
                    None => self.stream.receive(now, buf.get(..n).unwrap_or_default()),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.lost(e.to_string()),
            }
        }
    }

    /// Writes what the stream has for the agent, as far as the socket takes
    /// it; the rest waits for the next writable event.
    pub(super) fn flush(&mut self) {
        if self.shut || !self.tcp_up {
            return;
        }
        let outgoing = self.stream.outgoing();
        let result = match self.tls.as_mut() {
            Some(tls) => {
                let taken = tls.writer().write(outgoing).unwrap_or(0);
                outgoing.drain(..taken);
                let mut result = Ok(());
                while tls.wants_write() {
                    match tls.write_tls(&mut self.socket) {
                        Ok(_) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                result
            }
            None => {
                let mut result = Ok(());
                while !outgoing.is_empty() {
                    match self.socket.write(outgoing) {
                        Ok(n) => {
                            outgoing.drain(..n);
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                result
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => self.lost(e.to_string()),
        }
    }

    /// The stream's next report.
    pub(super) fn poll_event(&mut self) -> Option<StreamEvent> {
        self.stream.poll_event()
    }
}
