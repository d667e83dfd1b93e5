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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::agent_conn::{AgentConn, AgentSpec};
use super::dtls::{DtlsSetup, Identity};
use super::leg::{ENDPOINT_BIT, LegId, LegSpec, LegStats};
use super::player::Source;
use super::relay::RelayError;
use super::relay::{Channel, DetachedLeg, MediaEvent, MediaEventKind, Relay, RelayConfig};
use super::srtp::SrtpKeys;
use crate::agent::stream::StreamEvent;

/// Commands a shard can fall behind by before they are dropped.
pub const COMMAND_DEPTH: usize = 8192;
/// The waker's token.
const WAKER: Token = Token(usize::MAX);
/// Agent connections' tokens start here (legs' sockets are below).
const AGENT_TOKENS: usize = 1 << 40;
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
    /// A new leg whose peer is a voice agent over a WebSocket: no socket
    /// of its own, its packets come from and go to the agent's stream.
    OpenAgent {
        /// The leg.
        leg: LegId,
        /// Its call's name.
        name: Arc<str>,
        /// Its media (µ-law at 20 ms, from the agent's address).
        spec: LegSpec,
        /// The stream.
        agent: Box<AgentSpec>,
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
    /// Analyse what the leg's peer sends (call progress); `None` stops.
    Analyse {
        /// The leg.
        leg: LegId,
        /// The rules, whether the call is answered, and the capture length
        /// (ms).
        analysis: Option<(crate::cpa::analyzer::AnalysisConfig, bool, u32)>,
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
        agents: Agents::default(),
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
    agents: Agents,
}

/// The agent streams of a shard.
#[derive(Default)]
struct Agents {
    entries: Vec<Option<AgentEntry>>,
    by_slot: HashMap<usize, usize>,
    by_leg: HashMap<LegId, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    generations: u64,
}

/// One agent stream and the relay leg it feeds.
struct AgentEntry {
    conn: AgentConn,
    leg: LegId,
    /// The relay slot, until the leg closes.
    slot: Option<usize>,
    generation: u64,
    scheduled: Option<Instant>,
    /// The agent's address: where its packets come from, to the relay.
    remote: SocketAddr,
    seq: u16,
    ts: u32,
    ssrc: u32,
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
                let relay = self.relay.poll_timeout();
                let agents = self.agents.timers.peek().map(|Reverse((at, ..))| *at);
                let next = match (relay, agents) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|at| at.saturating_duration_since(Instant::now()))
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
                if event.token().0 >= AGENT_TOKENS {
                    self.agent_ready(now, event.token().0 - AGENT_TOKENS, &mut buf);
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
            self.agents_due(now, &mut buf);
            while let Some(t) = self.relay.poll_transmit(now, &mut buf) {
                self.send(t, &buf);
            }
            self.flush_events(now);
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
            if let Some(&index) = self.agents.by_slot.get(&t.slot) {
                self.deliver_to_agent(index, t, buf);
            }
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

    fn flush_events(&mut self, now: Instant) {
        while let Some(event) = self.relay.poll_event() {
            match &event.kind {
                MediaEventKind::Dtmf { digit, .. } => {
                    // The caller's digit also goes to an agent streaming the call.
                    if let Some(&index) = self.agents.by_leg.get(&(event.leg | ENDPOINT_BIT))
                        && let Some(Some(entry)) = self.agents.entries.get_mut(index)
                    {
                        entry.conn.stream.dtmf(*digit);
                        entry.conn.flush();
                        self.agent_schedule(now, index);
                    }
                }
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
                    tracing::warn!(
                        leg = event.leg,
                        call = %event.name,
                        "media report queue full; report dropped"
                    );
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
            ShardCommand::OpenAgent {
                leg,
                name,
                spec,
                agent,
            } => {
                self.open_agent(now, leg, name, spec, *agent);
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
            ShardCommand::Analyse { leg, analysis } => {
                if self.relay.slot(leg).is_none() {
                    return self.orphan(now, ShardCommand::Analyse { leg, analysis });
                }
                self.relay.analyse(now, leg, analysis)
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
                    self.close_agent(now, slot);
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

    /// Opens an agent leg: a relay leg with no socket, and the connection
    /// to the agent in this shard's poll.
    fn open_agent(
        &mut self,
        now: Instant,
        leg: LegId,
        name: Arc<str>,
        spec: LegSpec,
        agent: AgentSpec,
    ) {
        let slot = self.relay.insert(now, leg, name, 0);
        let remote = spec.remote;
        if let Err(e) = self.relay.set_spec(now, leg, spec) {
            tracing::warn!(leg, error = %e, "agent leg not set up");
        }
        let hang_up = agent.hang_up_on_end;
        let mut conn = match AgentConn::connect(now, agent) {
            Ok(conn) => conn,
            Err(e) => {
                self.relay.report(
                    slot,
                    MediaEventKind::AgentEnded {
                        reason: "connect_failed",
                        detail: e.to_string(),
                        hang_up,
                    },
                );
                self.replay_orphans(now, leg);
                return;
            }
        };
        let index = match self.agents.entries.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.agents.entries.push(None);
                self.agents.entries.len() - 1
            }
        };
        let token = Token(AGENT_TOKENS + index);
        if let Err(e) = self.poll.registry().register(
            &mut conn.socket,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(leg, error = %e, "agent socket not registered");
        }
        self.agents.generations += 1;
        let seed = self.agents.generations.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ leg;
        if let Some(entry) = self.agents.entries.get_mut(index) {
            *entry = Some(AgentEntry {
                conn,
                leg,
                slot: Some(slot),
                generation: self.agents.generations,
                scheduled: None,
                remote,
                seq: seed as u16,
                ts: (seed >> 16) as u32,
                ssrc: (seed >> 32) as u32,
            });
        }
        self.agents.by_slot.insert(slot, index);
        self.agents.by_leg.insert(leg, index);
        self.agent_schedule(now, index);
        self.replay_orphans(now, leg);
    }

    /// The agent connection `index` is readable or writable.
    fn agent_ready(&mut self, now: Instant, index: usize, buf: &mut [u8]) {
        let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
            return;
        };
        entry.conn.ready(now, buf);
        self.agent_after(now, index);
    }

    /// Runs every agent deadline due at `now`: frames toward the call,
    /// pings, connect and close deadlines.
    fn agents_due(&mut self, now: Instant, buf: &mut [u8]) {
        while let Some(Reverse((at, index, generation))) = self.agents.timers.peek().copied() {
            if at > now {
                return;
            }
            self.agents.timers.pop();
            let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
                continue;
            };
            if entry.generation != generation || entry.scheduled != Some(at) {
                continue;
            }
            entry.scheduled = None;
            entry.conn.stream.handle_timeout(now);
            let mut frame = [0u8; crate::agent::playout::FRAME];
            while let Some(Some(entry)) = self.agents.entries.get_mut(index) {
                if !entry.conn.stream.next_frame(now, &mut frame) {
                    entry.conn.flush();
                    break;
                }
                let Some(slot) = entry.slot else {
                    continue;
                };
                entry.seq = entry.seq.wrapping_add(1);
                entry.ts = entry.ts.wrapping_add(frame.len() as u32);
                let len = super::rtp::HEADER_LEN + frame.len();
                let Some(packet) = buf.get_mut(..len) else {
                    break;
                };
                let (head, body) = packet.split_at_mut(super::rtp::HEADER_LEN);
                let _ = super::rtp::write_header(head, false, 0, entry.seq, entry.ts, entry.ssrc);
                body.copy_from_slice(&frame);
                let remote = entry.remote;
                if let Some(t) =
                    self.relay
                        .handle_datagram(now, slot, Channel::Rtp, remote, buf, len)
                {
                    self.send(t, buf);
                }
            }
            self.agent_after(now, index);
        }
    }

    /// The call's audio toward agent `index`: the RTP payload goes on.
    fn deliver_to_agent(&mut self, index: usize, t: super::relay::Transmit, buf: &[u8]) {
        if t.channel != Channel::Rtp {
            return;
        }
        let Some(packet) = buf.get(..t.len) else {
            return;
        };
        let Ok(h) = super::rtp::parse(packet) else {
            return;
        };
        let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
            return;
        };
        let payload = packet
            .get(h.payload_start..h.payload_end)
            .unwrap_or_default();
        entry.conn.stream.audio(payload, h.timestamp);
        entry.conn.flush();
        // Its reports and the end of a stream are handled with its next
        // deadline, at most a frame away.
    }

    /// After agent `index` did something: its reports, its socket closed
    /// once the stream is over, its next deadline.
    fn agent_after(&mut self, now: Instant, index: usize) {
        let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
            return;
        };
        while let Some(event) = entry.conn.poll_event() {
            let kind = match event {
                StreamEvent::Started => {
                    let ids = entry.conn.stream.ids();
                    MediaEventKind::AgentStarted {
                        stream_sid: ids.stream_sid.clone(),
                        call_sid: ids.call_sid.clone(),
                    }
                }
                StreamEvent::BadMessage(reason) => MediaEventKind::AgentBadMessage { reason },
                StreamEvent::Overflow { dropped_ms } => {
                    MediaEventKind::AgentOverflow { dropped_ms }
                }
                StreamEvent::Ended(end) => {
                    if !entry.conn.hang_up_on_end
                        && let Some(prompt) = entry.conn.on_end_prompt.take()
                    {
                        // on_end continue: the caller hears the prompt.
                        let call_leg = entry.leg & !ENDPOINT_BIT;
                        if let Err(e) = self.relay.play(now, call_leg, Some(*prompt)) {
                            tracing::debug!(error = %e, "agent fallback prompt not played");
                        }
                    }
                    MediaEventKind::AgentEnded {
                        reason: end.as_str(),
                        detail: end.to_string(),
                        hang_up: entry.conn.hang_up_on_end,
                    }
                }
            };
            if let Some(slot) = entry.slot {
                self.relay.report(slot, kind);
            }
        }
        if !entry.conn.is_shut() && entry.conn.finished() {
            entry.conn.shut_down(self.poll.registry());
        }
        if entry.slot.is_none() && entry.conn.is_shut() {
            self.agents.by_leg.remove(&entry.leg);
            if let Some(e) = self.agents.entries.get_mut(index) {
                *e = None;
            }
            return;
        }
        self.agent_schedule(now, index);
    }

    /// Puts agent `index`'s next deadline on the timer heap.
    fn agent_schedule(&mut self, now: Instant, index: usize) {
        let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
            return;
        };
        let Some(at) = entry.conn.stream.poll_timeout() else {
            return;
        };
        let at = at.max(now);
        if entry.scheduled.is_some_and(|s| s <= at) {
            return;
        }
        entry.scheduled = Some(at);
        self.agents
            .timers
            .push(Reverse((at, index, entry.generation)));
    }

    /// The relay leg in `slot` closed: its agent stream (if any) sends
    /// `stop` and closes, and goes once that is written.
    fn close_agent(&mut self, now: Instant, slot: usize) {
        let Some(index) = self.agents.by_slot.remove(&slot) else {
            return;
        };
        let Some(Some(entry)) = self.agents.entries.get_mut(index) else {
            return;
        };
        entry.slot = None;
        entry.conn.stream.stop(now);
        entry.conn.flush();
        self.agent_after(now, index);
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
        | ShardCommand::Analyse { leg, .. }
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
