//! Accepting TCP/TLS connections with limits, and opening outbound ones.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::conn::{self, ConnOptions};
use super::{Admission, FlowIds, Gate, Inbound, TransportLimits};
use crate::sip::target::Transport;

/// Queue depth of one connection's writer.
const OUTBOX_DEPTH: usize = 256;

/// Inbound connections by source address, shared by the accept loops and
/// the connection tasks (touched on accept and close only, never per
/// message). At the cap, a new connection takes the slot of the oldest one
/// that has not delivered a whole message yet (a slow sender), so a flood
/// of those cannot keep real peers out.
#[derive(Debug, Default, Clone)]
pub struct SourceLimits {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    counts: HashMap<IpAddr, usize>,
    total: usize,
    order: std::collections::VecDeque<Arc<Slot>>,
}

/// One inbound connection's slot.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    priority: bool,
    proven: AtomicBool,
    released: AtomicBool,
    evict: Notify,
}

impl Slot {
    /// The connection delivered a whole message.
    pub fn prove(&self) {
        self.proven.store(true, Ordering::Relaxed);
    }

    /// Resolves when the slot was given to a newer connection.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

struct SlotGuard {
    limits: SourceLimits,
    slot: Arc<Slot>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerSource,
    Full,
}

impl SourceLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open inbound connections in all.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// A slot for a connection from `ip`; a `priority` source (a configured
    /// peer) may also take the slots kept for such peers.
    fn admit(
        &self,
        ip: IpAddr,
        limits: &TransportLimits,
        priority: bool,
    ) -> Result<SlotGuard, Refusal> {
        let mut inner = self.lock();
        let from_ip = inner.counts.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.max_connections_per_source {
            return Err(Refusal::PerSource);
        }
        let cap = if priority {
            limits.max_connections
        } else {
            limits
                .max_connections
                .saturating_sub(limits.reserved_connections)
        };
        if inner.total >= cap {
            inner.order.retain(|s| !s.released.load(Ordering::Relaxed));
            let victim = inner
                .order
                .iter()
                .position(|s| !s.priority && !s.proven.load(Ordering::Relaxed));
            let Some(victim) = victim.and_then(|i| inner.order.remove(i)) else {
                return Err(Refusal::Full);
            };
            release(&mut inner, &victim);
            victim.evict.notify_one();
        }
        // Released slots leave the accept-order list in batches, so it stays
        // within twice the open connections.
        if inner.order.len() > 2 * inner.total + 64 {
            inner.order.retain(|s| !s.released.load(Ordering::Relaxed));
        }
        inner.total += 1;
        *inner.counts.entry(ip).or_insert(0) += 1;
        let slot = Arc::new(Slot {
            ip,
            priority,
            proven: AtomicBool::new(false),
            released: AtomicBool::new(false),
            evict: Notify::new(),
        });
        inner.order.push_back(slot.clone());
        Ok(SlotGuard {
            limits: self.clone(),
            slot,
        })
    }
}

/// Gives a slot back once.
fn release(inner: &mut Inner, slot: &Slot) {
    if slot.released.swap(true, Ordering::Relaxed) {
        return;
    }
    inner.total = inner.total.saturating_sub(1);
    if let Some(n) = inner.counts.get_mut(&slot.ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            inner.counts.remove(&slot.ip);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut inner = self.limits.lock();
        release(&mut inner, &self.slot);
    }
}

/// Accepts connections on `listener` (TLS when `tls` is given) until the
/// core goes away.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ids: Arc<FlowIds>,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    sources: SourceLimits,
    gate: Gate,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut refusals = Refusals::default();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, %transport, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if inbound.is_closed() {
            return;
        }
        if gate.admit(remote.ip()) != Admission::Allowed {
            drop(stream);
            refusals.note(remote, transport, "source outside sip.allowed_peers");
            let _ = inbound.try_send(Inbound::Dropped {
                reason: "untrusted_source",
            });
            continue;
        }
        let priority = gate.is_peer(remote.ip());
        let guard = match sources.admit(remote.ip(), &limits, priority) {
            Ok(guard) => guard,
            Err(refusal) => {
                drop(stream);
                let (why, reason) = match refusal {
                    Refusal::PerSource => ("per-source connection limit reached", "source_limit"),
                    Refusal::Full => ("connection limit reached", "connection_limit"),
                };
                refusals.note(remote, transport, why);
                let _ = inbound.try_send(Inbound::Dropped { reason });
                continue;
            }
        };
        let local = stream.local_addr().unwrap_or(remote);
        let _ = stream.set_nodelay(true);
        let (ids, inbound, tls, gate) = (ids.clone(), inbound.clone(), tls.clone(), gate.clone());
        tokio::spawn(async move {
            let slot = Some(guard.slot.clone());
            let _guard = guard;
            let setup = Setup {
                remote,
                local,
                outbound: false,
                ids,
                inbound: inbound.clone(),
                opts: ConnOptions::new(&limits, None),
                gate,
                slot,
            };
            match tls {
                None => start(stream, Transport::Tcp, setup).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.connect_timeout, acceptor.accept(stream));
                    // A connection whose slot was given to a newer one ends
                    // here too, not only once it runs.
                    let slot = setup.slot.clone();
                    let outcome = tokio::select! {
                        outcome = handshake => outcome,
                        () = evicted(slot.as_deref()) => return,
                    };
                    match outcome {
                        Ok(Ok(s)) => start(s, Transport::Tls, setup).await,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "inbound TLS handshake failed");
                            let _ = inbound.try_send(Inbound::Dropped {
                                reason: "tls_handshake",
                            });
                        }
                        Err(_) => {
                            tracing::info!(%remote, "inbound TLS handshake timed out");
                            let _ = inbound.try_send(Inbound::Dropped {
                                reason: "tls_handshake",
                            });
                        }
                    }
                }
            }
        });
    }
}

/// Resolves when `slot` (if any) was given to a newer connection.
async fn evicted(slot: Option<&Slot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

/// What a connection task starts with, whatever its transport.
struct Setup {
    remote: SocketAddr,
    local: SocketAddr,
    outbound: bool,
    ids: Arc<FlowIds>,
    inbound: mpsc::Sender<Inbound>,
    opts: ConnOptions,
    gate: Gate,
    slot: Option<Arc<Slot>>,
}

/// Reports the connection open and runs it.
async fn start<S>(stream: S, transport: Transport, setup: Setup)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Setup {
        remote,
        local,
        outbound,
        ids,
        inbound,
        opts,
        gate,
        slot,
    } = setup;
    let flow = ids.next();
    let (outbox, queue) = mpsc::channel::<Bytes>(OUTBOX_DEPTH);
    let opened = Inbound::Opened {
        flow,
        transport,
        remote,
        local,
        outbox,
        outbound,
    };
    if inbound.send(opened).await.is_err() {
        return;
    }
    conn::run(
        stream, flow, transport, remote, queue, inbound, opts, gate, slot,
    )
    .await;
}

/// Opens a TCP (or TLS, with `tls`) connection to `remote` and runs it;
/// reports [`Inbound::Opened`] or [`Inbound::ConnectFailed`].
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    transport: Transport,
    remote: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ids: Arc<FlowIds>,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    keepalive: Option<Duration>,
    gate: Gate,
) {
    let fail = |error: String| Inbound::ConnectFailed {
        transport,
        remote,
        error,
    };
    let opts = ConnOptions::new(&limits, keepalive);
    let stream =
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(remote)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = inbound
                    .send(fail(format!("TCP connect to {remote}: {e}")))
                    .await;
                return;
            }
            Err(_) => {
                let _ = inbound
                    .send(fail(format!(
                        "TCP connect to {remote}: no answer within {:?}",
                        limits.connect_timeout
                    )))
                    .await;
                return;
            }
        };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(remote);
    let setup = Setup {
        remote,
        local,
        outbound: true,
        ids,
        inbound: inbound.clone(),
        opts,
        gate,
        slot: None,
    };
    match tls {
        None => start(stream, Transport::Tcp, setup).await,
        Some((config, name)) => {
            let connector = TlsConnector::from(config);
            match tokio::time::timeout(limits.connect_timeout, connector.connect(name, stream))
                .await
            {
                Ok(Ok(s)) => start(s, Transport::Tls, setup).await,
                Ok(Err(e)) => {
                    let _ = inbound
                        .send(fail(format!(
                            "TLS handshake with {remote}: {}",
                            describe_tls_error(&e)
                        )))
                        .await;
                }
                Err(_) => {
                    let _ = inbound
                        .send(fail(format!(
                            "TLS handshake with {remote}: no answer within {:?}",
                            limits.connect_timeout
                        )))
                        .await;
                }
            }
        }
    }
}

/// A TLS handshake error as text; certificate problems raised by our own
/// verifier (a fingerprint mismatch) are shown by their message.
fn describe_tls_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => e.to_string(),
    }
}

/// Warnings about refused connections, at most one per interval with the
/// count of those not logged.
#[derive(Debug, Default)]
struct Refusals {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Refusals {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn note(&mut self, remote: SocketAddr, transport: Transport, why: &str) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < Self::INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%remote, %transport, reason = why, suppressed_since_last = self.suppressed, "connection refused");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_order_list_stays_bounded_without_reaching_the_cap() {
        let sources = SourceLimits::default();
        let limits = TransportLimits::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10_000 {
            let guard = sources.admit(ip, &limits, false).unwrap();
            drop(guard);
        }
        let inner = sources.lock();
        assert_eq!(inner.total, 0);
        assert!(inner.order.len() <= 65, "{}", inner.order.len());
    }

    #[test]
    fn at_the_cap_a_newcomer_displaces_the_oldest_silent_connection() {
        let sources = SourceLimits::default();
        let limits = TransportLimits {
            max_connections: 3,
            reserved_connections: 1,
            ..TransportLimits::default()
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = sources.admit(a, &limits, false).unwrap();
        let second = sources.admit(a, &limits, false).unwrap();
        second.slot.prove();
        // Cap for non-peers is 2: the silent first one gives way.
        let third = sources.admit(a, &limits, false).unwrap();
        assert!(first.slot.released.load(Ordering::Relaxed));
        assert!(!second.slot.released.load(Ordering::Relaxed));
        // A configured peer may use the kept slot.
        let peer = sources.admit("192.0.2.9".parse().unwrap(), &limits, true);
        assert!(peer.is_ok());
        assert_eq!(sources.total(), 3);
        drop((first, second, third, peer));
        assert_eq!(sources.total(), 0);
    }
}
