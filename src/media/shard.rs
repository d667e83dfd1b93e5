//! A media shard: one OS thread owning the sockets of its legs and a
//! [`Relay`], driven by one `epoll` instance (mio).
//!
//! Each wake-up takes the time once, drains every ready socket until it
//! would block, hands each datagram to the relay and sends what it returns
//! from the peer leg's socket, then runs the relay's deadlines. While packets
//! flow it sleeps `batch_wait` between polls, so that one poll finds many
//! ready sockets (a wake-up per packet costs more than the packet). The buffer
//! is the shard's own; the packet path allocates nothing and takes no lock.
//! Commands come from the SIP core over a bounded channel with a waker;
//! reports go back over a bounded channel; a full one is a counted drop.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::dtls::{DtlsSetup, Identity};
use super::leg::{LegId, LegSpec, LegStats};
use super::player::Source;
use super::relay::RelayError;
use super::relay::{Channel, DetachedLeg, MediaEvent, MediaEventKind, Relay, RelayConfig};
use super::srtp::SrtpKeys;

/// Commands a shard can fall behind by before they are dropped.
pub const COMMAND_DEPTH: usize = 8192;
/// The waker's token.
const WAKER: Token = Token(usize::MAX);
/// Largest datagram relayed.
const BUFFER: usize = 2048;
/// Commands for a leg still moving here are kept this long.
const ORPHAN_LIFETIME: Duration = Duration::from_secs(2);
/// At most this many such commands are kept.
const ORPHAN_LIMIT: usize = 1024;

/// What the shards count (shared by all of them).
#[derive(Debug, Clone)]
pub struct ShardCounters {
    /// Datagrams received.
    pub received: Counter,
    /// Datagrams sent.
    pub sent: Counter,
    /// Sends that failed or would have blocked.
    pub send_failed: Counter,
    /// Ports that could not be bound.
    pub bind_failed: Counter,
    /// Commands dropped because a shard's queue was full.
    pub commands_dropped: Counter,
    /// Reports dropped because the SIP core's queue was full.
    pub events_dropped: Counter,
    /// RTP packets lost on the way in, summed over closed legs.
    pub lost: Counter,
    /// Packets generated (silence, prompts, DTMF), summed over closed legs.
    pub generated: Counter,
    /// Each closed leg's interarrival jitter, milliseconds.
    pub jitter_ms: Histogram,
    /// Legs that ended their call for lack of RTP.
    pub timeouts: Counter,
}

impl Default for ShardCounters {
    fn default() -> Self {
        Self {
            received: Counter::default(),
            sent: Counter::default(),
            send_failed: Counter::default(),
            bind_failed: Counter::default(),
            commands_dropped: Counter::default(),
            events_dropped: Counter::default(),
            lost: Counter::default(),
            generated: Counter::default(),
            jitter_ms: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            timeouts: Counter::default(),
        }
    }
}

/// A command to a shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// A new leg on `port` (and `port + 1` for RTCP): its sockets, bound
    /// when the port was claimed, or bound here on `ip`.
    Open {
        /// The leg.
        leg: LegId,
        /// Its call's name.
        name: Arc<str>,
        /// The address to bind.
        ip: IpAddr,
        /// The even RTP port.
        port: u16,
        /// Its sockets, if already bound.
        sockets: Option<Sockets>,
    },
    /// What was negotiated for a leg.
    Spec {
        /// The leg.
        leg: LegId,
        /// The negotiated media.
        spec: LegSpec,
        /// Its SRTP keys, if encrypted with SDES.
        keys: Option<Box<SrtpKeys>>,
        /// Its DTLS-SRTP role and peer fingerprint, if keyed by DTLS.
        dtls: Option<Box<DtlsSetup>>,
    },
    /// Relay between two legs of this shard.
    Connect {
        /// One leg.
        a: LegId,
        /// The other.
        b: LegId,
    },
    /// Stop relaying for a leg.
    Disconnect {
        /// The leg.
        leg: LegId,
    },
    /// Play a source to a leg's peer (`None` stops it).
    Play {
        /// The leg.
        leg: LegId,
        /// The prompt or tone.
        source: Option<Box<Source>>,
    },
    /// Send DTMF digits as telephone-events.
    Dtmf {
        /// The leg.
        leg: LegId,
        /// The digits.
        digits: String,
        /// Each digit's duration.
        duration: Duration,
    },
    /// Close a leg and its sockets; its totals are reported.
    Close {
        /// The leg.
        leg: LegId,
    },
    /// Move a leg to another shard, then connect it to `connect` there.
    Detach {
        /// The leg.
        leg: LegId,
        /// The shard it moves to.
        to: ShardSender,
        /// The leg there it relays with.
        connect: LegId,
    },
    /// A leg moved here from another shard.
    Attach {
        /// The leg's state.
        leg: DetachedLeg,
        /// Its RTP and RTCP sockets.
        sockets: Sockets,
        /// The leg here it relays with.
        connect: LegId,
    },
    /// The totals of every leg.
    Stats {
        /// Where to answer.
        reply: tokio::sync::oneshot::Sender<Vec<LegStats>>,
    },
    /// End the shard.
    Stop,
}

/// A leg's sockets.
#[derive(Debug)]
pub struct Sockets {
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
}

/// The sending end of a shard's command queue.
#[derive(Debug, Clone)]
pub struct ShardSender {
    tx: SyncSender<ShardCommand>,
    waker: Arc<Waker>,
    counters: ShardCounters,
}

impl ShardSender {
    /// Queues `command` and wakes the shard; a full queue drops it, counted.
    pub fn send(&self, command: ShardCommand) -> bool {
        let sent = match self.tx.try_send(command) {
            Ok(()) => true,
            Err(TrySendError::Full(command)) => {
                self.counters.commands_dropped.inc();
                tracing::warn!(?command, "media shard queue full; command dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if sent && let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "media shard not woken");
        }
        sent
    }
}

/// Starts a shard thread; reports go to `events`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    index: usize,
    config: RelayConfig,
    identity: Option<Identity>,
    batch_wait: Duration,
    seed: u64,
    events: tokio::sync::mpsc::Sender<MediaEvent>,
    counters: ShardCounters,
) -> std::io::Result<(ShardSender, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = sync_channel(COMMAND_DEPTH);
    let mut relay = Relay::new(config, seed);
    relay.set_identity(identity);
    let shard = Shard {
        poll,
        relay,
        sockets: Vec::new(),
        rx,
        events,
        counters: counters.clone(),
        orphans: VecDeque::new(),
        batch_wait,
    };
    let thread = std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || shard.run())?;
    Ok((
        ShardSender {
            tx,
            waker,
            counters,
        },
        thread,
    ))
}

struct Shard {
    poll: Poll,
    relay: Relay,
    sockets: Vec<Option<Sockets>>,
    rx: Receiver<ShardCommand>,
    events: tokio::sync::mpsc::Sender<MediaEvent>,
    counters: ShardCounters,
    orphans: VecDeque<(Instant, ShardCommand)>,
    batch_wait: Duration,
}

fn token(slot: usize, channel: Channel) -> Token {
    Token(slot * 2 + usize::from(channel == Channel::Rtcp))
}

impl Shard {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; BUFFER];
        let mut flowing = false;
        loop {
            let timeout = if flowing {
                // Packets are flowing: let a batch gather instead of waking
                // for each packet (a wake-up costs far more than a read),
                // then take what is there without sleeping in the poll.
                std::thread::sleep(self.batch_wait);
                Some(Duration::ZERO)
            } else {
                self.relay
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "media shard poll failed; the shard stops");
                return;
            }
            let now = Instant::now();
            flowing = !self.batch_wait.is_zero() && !events.is_empty();
            for event in events.iter() {
                if event.token() == WAKER {
                    if !self.commands(now) {
                        return;
                    }
                    continue;
                }
                let slot = event.token().0 / 2;
                let channel = if event.token().0 % 2 == 1 {
                    Channel::Rtcp
                } else {
                    Channel::Rtp
                };
                self.receive(now, slot, channel, &mut buf);
            }
            while let Some(t) = self.relay.poll_transmit(now, &mut buf) {
                self.send(t, &buf);
            }
            self.flush_events();
        }
    }

    /// Reads `slot`'s socket until it would block.
    fn receive(&mut self, now: Instant, slot: usize, channel: Channel, buf: &mut [u8]) {
        loop {
            let Some(socket) = self.socket(slot, channel) else {
                return;
            };
            match socket.recv_from(buf) {
                Ok((len, from)) => {
                    self.counters.received.inc();
                    if let Some(t) = self
                        .relay
                        .handle_datagram(now, slot, channel, from, buf, len)
                    {
                        self.send(t, buf);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ICMP errors of earlier sends surface here; they say
                // nothing about this socket.
                Err(_) => {}
            }
        }
    }

    fn socket(&self, slot: usize, channel: Channel) -> Option<&UdpSocket> {
        let s = self.sockets.get(slot)?.as_ref()?;
        match channel {
            Channel::Rtp => Some(&s.rtp),
            Channel::Rtcp => s.rtcp.as_ref(),
        }
    }

    fn send(&mut self, t: super::relay::Transmit, buf: &[u8]) {
        let Some(socket) = self.socket(t.slot, t.channel) else {
            return;
        };
        let Some(bytes) = buf.get(..t.len) else {
            return;
        };
        match socket.send_to(bytes, t.to) {
            Ok(_) => {
                self.counters.sent.inc();
            }
            Err(_) => {
                self.counters.send_failed.inc();
                if t.channel == Channel::Rtp && !super::rtp::is_rtcp(bytes) {
                    self.relay.send_failed(t.slot, t.len);
                }
            }
        }
    }

    fn flush_events(&mut self) {
        while let Some(event) = self.relay.poll_event() {
            match &event.kind {
                MediaEventKind::Closed { stats } => {
                    self.counters.lost.inc_by(stats.rx_lost);
                    self.counters.generated.inc_by(stats.generated_packets);
                    if stats.rx_packets > 0 {
                        self.counters.jitter_ms.observe(stats.jitter_ms);
                    }
                }
                MediaEventKind::Timeout => {
                    self.counters.timeouts.inc();
                }
                _ => {}
            }
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => {
                    self.counters.events_dropped.inc();
                    tracing::warn!(?event, "media report queue full; report dropped");
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Carries out every queued command; false when the shard must stop.
    fn commands(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(ShardCommand::Stop) | Err(TryRecvError::Disconnected) => return false,
                Ok(command) => self.command(now, command),
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn command(&mut self, now: Instant, command: ShardCommand) {
        let result = match command {
            ShardCommand::Open {
                leg,
                name,
                ip,
                port,
                sockets,
            } => {
                self.open(now, leg, name, ip, port, sockets);
                Ok(())
            }
            ShardCommand::Spec {
                leg,
                spec,
                keys,
                dtls,
            } => {
                if self.relay.slot(leg).is_none() {
                    return self.orphan(
                        now,
                        ShardCommand::Spec {
                            leg,
                            spec,
                            keys,
                            dtls,
                        },
                    );
                }
                let secured = match dtls {
                    // The handshake goes to the negotiated address: spec first.
                    Some(setup) => self
                        .relay
                        .set_spec(now, leg, spec)
                        .and_then(|()| self.relay.set_dtls(now, leg, *setup)),
                    None => self
                        .relay
                        .set_keys(leg, keys.as_deref())
                        .and_then(|()| self.relay.set_spec(now, leg, spec)),
                };
                if let Err(e) = &secured
                    && let Some(slot) = self.relay.slot(leg)
                {
                    let reason = e.to_string();
                    let kind = match e {
                        RelayError::Dtls(..) => MediaEventKind::DtlsFailed { reason },
                        _ => MediaEventKind::SrtpFailed { reason },
                    };
                    self.relay.report(slot, kind);
                }
                secured
            }
            ShardCommand::Connect { a, b } => self.relay.connect(now, a, b),
            ShardCommand::Disconnect { leg } => self.relay.disconnect(leg),
            ShardCommand::Play { leg, source } => {
                if self.relay.slot(leg).is_none() {
                    return self.orphan(now, ShardCommand::Play { leg, source });
                }
                self.relay.play(now, leg, source.map(|s| *s))
            }
            ShardCommand::Dtmf {
                leg,
                digits,
                duration,
            } => {
                if self.relay.slot(leg).is_none() {
                    return self.orphan(
                        now,
                        ShardCommand::Dtmf {
                            leg,
                            digits,
                            duration,
                        },
                    );
                }
                self.relay.send_dtmf(now, leg, &digits, duration)
            }
            ShardCommand::Close { leg } => {
                if self.relay.slot(leg).is_none() {
                    return self.orphan(now, ShardCommand::Close { leg });
                }
                if let Some(slot) = self.relay.remove(now, leg) {
                    self.close_sockets(slot);
                }
                Ok(())
            }
            ShardCommand::Detach { leg, to, connect } => {
                match self.relay.detach(leg) {
                    Some((slot, state)) => {
                        if let Some(sockets) = self.take_sockets(slot) {
                            to.send(ShardCommand::Attach {
                                leg: state,
                                sockets,
                                connect,
                            });
                        }
                    }
                    None => tracing::warn!(leg, "media leg to move is not here"),
                }
                Ok(())
            }
            ShardCommand::Attach {
                leg,
                sockets,
                connect,
            } => {
                let id = leg.id();
                let slot = self.relay.attach(now, leg);
                self.register(slot, sockets);
                let result = self.relay.connect(now, id, connect);
                self.replay_orphans(now, id);
                result
            }
            ShardCommand::Stats { reply } => {
                let _ = reply.send(self.relay.all_stats(now));
                Ok(())
            }
            ShardCommand::Stop => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "media command not carried out");
        }
    }

    fn open(
        &mut self,
        now: Instant,
        leg: LegId,
        name: Arc<str>,
        ip: IpAddr,
        port: u16,
        sockets: Option<Sockets>,
    ) {
        let slot = self.relay.insert(now, leg, name, port);
        let bound = match sockets {
            Some(s) => Ok(s),
            None => bind(ip, port),
        };
        match bound {
            Ok(sockets) => self.register(slot, sockets),
            Err(e) => {
                self.counters.bind_failed.inc();
                tracing::warn!(port, error = %e, "media port not bound");
                self.relay.report(slot, MediaEventKind::BindFailed { port });
                if let Some(slot) = self.relay.remove(now, leg) {
                    self.close_sockets(slot);
                }
            }
        }
        self.replay_orphans(now, leg);
    }

    fn register(&mut self, slot: usize, mut sockets: Sockets) {
        let registry = self.poll.registry();
        let mut ok = registry
            .register(
                &mut sockets.rtp,
                token(slot, Channel::Rtp),
                Interest::READABLE,
            )
            .is_ok();
        if let Some(rtcp) = sockets.rtcp.as_mut() {
            ok &= registry
                .register(rtcp, token(slot, Channel::Rtcp), Interest::READABLE)
                .is_ok();
        }
        if !ok {
            tracing::warn!(slot, "media socket not registered");
        }
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        if let Some(entry) = self.sockets.get_mut(slot) {
            *entry = Some(sockets);
        }
    }

    fn take_sockets(&mut self, slot: usize) -> Option<Sockets> {
        let mut sockets = self.sockets.get_mut(slot)?.take()?;
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut sockets.rtp);
        if let Some(rtcp) = sockets.rtcp.as_mut() {
            let _ = registry.deregister(rtcp);
        }
        Some(sockets)
    }

    fn close_sockets(&mut self, slot: usize) {
        drop(self.take_sockets(slot));
    }

    /// Keeps a command for a leg that is on its way here.
    fn orphan(&mut self, now: Instant, command: ShardCommand) {
        while self
            .orphans
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ORPHAN_LIFETIME)
        {
            self.orphans.pop_front();
        }
        if self.orphans.len() >= ORPHAN_LIMIT {
            self.counters.commands_dropped.inc();
            return;
        }
        self.orphans.push_back((now, command));
    }

    fn replay_orphans(&mut self, now: Instant, leg: LegId) {
        if self.orphans.is_empty() {
            return;
        }
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|(_, c)| command_leg(c) == Some(leg));
        self.orphans = rest;
        for (_, command) in mine {
            self.command(now, command);
        }
    }
}

fn command_leg(command: &ShardCommand) -> Option<LegId> {
    match command {
        ShardCommand::Spec { leg, .. }
        | ShardCommand::Play { leg, .. }
        | ShardCommand::Dtmf { leg, .. }
        | ShardCommand::Close { leg } => Some(*leg),
        _ => None,
    }
}

/// Binds a leg's RTP port and the RTCP port after it.
pub fn bind(ip: IpAddr, port: u16) -> std::io::Result<Sockets> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = match port.checked_add(1) {
        Some(p) => Some(UdpSocket::bind(SocketAddr::new(ip, p))?),
        None => None,
    };
    Ok(Sockets { rtp, rtcp })
}
