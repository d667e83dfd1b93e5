//! Two endpoints on a simulated network with a fake clock, like quinn's
//! test `Pair` and str0m's `progress(l, r)`: every transmission crosses a
//! wire that can lose, duplicate, delay and so reorder datagrams. Nothing
//! sleeps; the clock jumps to the next deadline or delivery.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Endpoint, EndpointConfig, Event, Input, Output};
use crate::sip::ids::{Entropy, SeededEntropy};
use crate::sip::message::Message;
use crate::sip::target::{FlowId, Target, Transport};
use crate::sip::transaction::Timers;

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The first endpoint (usually the client).
    A,
    /// The second endpoint.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What the wire does to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    /// Probability of loss.
    pub loss: f64,
    /// Probability of a duplicate.
    pub duplicate: f64,
    /// Least one-way delay.
    pub delay_min: Duration,
    /// Most one-way delay (a spread reorders).
    pub delay_max: Duration,
}

impl Wire {
    /// No loss, 10 ms each way.
    pub fn perfect() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_millis(10),
            delay_max: Duration::from_millis(10),
        }
    }

    /// `loss` of datagrams lost, 5 % duplicated, 5-80 ms delay (reordering).
    pub fn lossy(loss: f64) -> Self {
        Self {
            loss,
            duplicate: 0.05,
            delay_min: Duration::from_millis(5),
            delay_max: Duration::from_millis(80),
        }
    }
}

/// One endpoint of the pair.
pub struct Node {
    /// The endpoint.
    pub ep: Endpoint,
    /// Its address.
    pub addr: SocketAddr,
    flow: FlowId,
    /// Events not yet taken.
    pub events: VecDeque<Event>,
}

/// A message delivered by the wire, for assertions.
#[derive(Debug, Clone)]
#[allow(dead_code)] // `at` is for debugging failed runs
pub struct Delivered {
    /// When.
    pub at: Instant,
    /// To whom.
    pub to: Side,
    /// The message.
    pub message: Message,
}

/// Two endpoints, a wire and a clock.
pub struct Pair {
    /// Endpoint A.
    pub a: Node,
    /// Endpoint B.
    pub b: Node,
    /// The fake clock.
    pub now: Instant,
    /// The wire.
    pub wire: Wire,
    rng: SeededEntropy,
    seq: u64,
    in_flight: BinaryHeap<Reverse<(Instant, u64, Side, Bytes)>>,
    /// Every message the wire delivered, in order.
    pub delivered: Vec<Delivered>,
}

/// Timers of the pair's endpoints (RFC 3261 defaults).
pub fn timers() -> Timers {
    Timers::default()
}

fn node(seed: u64, addr: SocketAddr) -> Node {
    let config = EndpointConfig {
        timers: timers(),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(
        config,
        RandomState::new(),
        Box::new(SeededEntropy::new(seed)),
    );
    let flow = FlowId(1);
    ep.add_udp(flow, addr);
    Node {
        ep,
        addr,
        flow,
        events: VecDeque::new(),
    }
}

impl Pair {
    /// A pair over `wire`, reproducible from `seed`.
    pub fn new(seed: u64, wire: Wire) -> Self {
        Self {
            a: node(
                seed ^ 0xA,
                "192.0.2.1:5060".parse().unwrap_or_else(|_| unreachable!()),
            ),
            b: node(
                seed ^ 0xB,
                "192.0.2.2:5060".parse().unwrap_or_else(|_| unreachable!()),
            ),
            now: Instant::now(),
            wire,
            rng: SeededEntropy::new(seed),
            seq: 0,
            in_flight: BinaryHeap::new(),
            delivered: Vec::new(),
        }
    }

    /// One side.
    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The target that reaches `side` over UDP.
    pub fn target(&self, side: Side) -> Target {
        let addr = match side {
            Side::A => self.a.addr,
            Side::B => self.b.addr,
        };
        Target::new(Transport::Udp, addr)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p
    }

    fn delay(&mut self) -> Duration {
        let spread = self.wire.delay_max.saturating_sub(self.wire.delay_min);
        let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        let extra = if nanos == 0 {
            0
        } else {
            self.rng.next_u64() % nanos
        };
        self.wire.delay_min + Duration::from_nanos(extra)
    }

    /// Puts bytes on the wire from `from` toward the other side (a
    /// scripted peer, e.g. a forking proxy's second 2xx).
    pub fn send_raw(&mut self, from: Side, data: Bytes) {
        if self.chance(self.wire.loss) {
            return;
        }
        let copies = if self.chance(self.wire.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.delay();
            self.seq += 1;
            self.in_flight
                .push(Reverse((at, self.seq, from.other(), data.clone())));
        }
    }

    /// Moves every pending output of both endpoints onto the wire or into
    /// the event queues.
    pub fn flush(&mut self) {
        for side in [Side::A, Side::B] {
            while let Some(out) = self.node(side).ep.poll_output() {
                match out {
                    Output::Transmit(t) => self.send_raw(side, t.data),
                    Output::Event(e) => self.node(side).events.push_back(e),
                    Output::Connect { .. } => {}
                }
            }
        }
    }

    /// Advances to the next delivery or deadline and handles it; false when
    /// nothing is pending.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next_delivery = self.in_flight.peek().map(|Reverse((at, ..))| *at);
        let next_timer = [self.a.ep.poll_timeout(), self.b.ep.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = [next_delivery, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(at);
        let now = self.now;
        if next_delivery == Some(at)
            && let Some(Reverse((_, _, to, data))) = self.in_flight.pop()
        {
            let source = {
                let from = self.node(to.other()).addr;
                let flow = self.node(to).flow;
                Target {
                    transport: Transport::Udp,
                    addr: from,
                    flow: Some(flow),
                }
            };
            if let Ok(message) = Message::parse_datagram(data.clone()) {
                self.delivered.push(Delivered {
                    at: now,
                    to,
                    message,
                });
            }
            self.node(to)
                .ep
                .handle_input(now, Input::Message { data, source });
        } else {
            self.a.ep.handle_timeout(now);
            self.b.ep.handle_timeout(now);
        }
        self.flush();
        true
    }

    /// The next event of `side`, stepping the network for at most `within`.
    pub fn next_event(&mut self, side: Side, within: Duration) -> Option<Event> {
        let deadline = self.now + within;
        loop {
            self.flush();
            if let Some(e) = self.node(side).events.pop_front() {
                return Some(e);
            }
            if self.now >= deadline || !self.step() {
                return None;
            }
        }
    }

    /// When the next delivery or endpoint deadline is due.
    pub fn next_at(&self) -> Option<Instant> {
        [
            self.in_flight.peek().map(|Reverse((at, ..))| *at),
            self.a.ep.poll_timeout(),
            self.b.ep.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Steps until `now` reaches `until` or nothing is pending.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.flush();
            let next = [
                self.in_flight.peek().map(|Reverse((at, ..))| *at),
                self.a.ep.poll_timeout(),
                self.b.ep.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(at) if at <= until => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
    }

    /// Messages delivered to `to` that match `f`.
    pub fn count(&self, to: Side, f: impl Fn(&Message) -> bool) -> usize {
        self.delivered
            .iter()
            .filter(|d| d.to == to && f(&d.message))
            .count()
    }
}
