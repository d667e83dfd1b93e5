//! The transaction layer (RFC 3261 §17, with the Accepted states of
//! RFC 6026), sans-IO: the owner feeds it messages, timeouts and transport
//! errors with the current time, and drains transmissions and events.
//!
//! All transactions share one timer heap; [`Transactions::poll_timeout`]
//! tells the driver when to call [`Transactions::handle_timeout`] next.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::{Key, KeyRef, request_key, response_key};
use crate::sip::message::{
    FrameError, Framing, HeaderError, HeaderName, Limits, Message, Method, OutMessage, Via,
};
use crate::sip::target::Target;

/// The base timers, from configuration (`sip.t1_ms` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// Identifies a transaction for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(u64);

/// The four machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// INVITE client transaction.
    InviteClient,
    /// Non-INVITE client transaction.
    NonInviteClient,
    /// INVITE server transaction.
    InviteServer,
    /// Non-INVITE server transaction.
    NonInviteServer,
}

/// Transaction states (RFC 3261 §17 figures 5–8, RFC 6026 figures 5–6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// INVITE client: request sent, nothing heard.
    Calling,
    /// Non-INVITE: request sent (client) or received (server), no response.
    Trying,
    /// A provisional response was received (client) or sent (server).
    Proceeding,
    /// A final non-2xx response (or any final for non-INVITE) was handled.
    Completed,
    /// INVITE: a 2xx was received or sent (RFC 6026).
    Accepted,
    /// INVITE server: the ACK for a non-2xx arrived.
    Confirmed,
}

/// RFC 3261 timer names (L and M from RFC 6026).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// INVITE request retransmit.
    A,
    /// INVITE transaction timeout.
    B,
    /// Wait for response retransmissions (INVITE client, Completed).
    D,
    /// Non-INVITE request retransmit.
    E,
    /// Non-INVITE transaction timeout.
    F,
    /// INVITE final response retransmit.
    G,
    /// Wait for ACK.
    H,
    /// Wait for ACK retransmissions.
    I,
    /// Wait for non-INVITE request retransmissions.
    J,
    /// Wait for non-INVITE response retransmissions.
    K,
    /// INVITE server, Accepted: wait for INVITE retransmissions.
    L,
    /// INVITE client, Accepted: wait for 2xx retransmissions.
    M,
}

const TIMER_COUNT: usize = 12;

impl Timer {
    fn index(self) -> usize {
        self as usize
    }
}

/// What the layer asks its owner to do.
#[derive(Debug)]
pub enum Output {
    /// Send `data` to `target`.
    Transmit {
        /// The transaction sending, if any (to report transport errors).
        txn: Option<TxnId>,
        /// Where to.
        target: Target,
        /// The bytes.
        data: Bytes,
    },
    /// Something for the transaction user.
    Event(Event),
}

/// Events for the transaction user.
#[derive(Debug)]
pub enum Event {
    /// A new request created a server transaction.
    Request {
        /// The server transaction to respond on.
        txn: TxnId,
        /// The request.
        request: Message,
        /// Where it came from.
        source: Target,
    },
    /// A response for a client transaction.
    Response {
        /// The client transaction.
        txn: TxnId,
        /// The response.
        response: Message,
    },
    /// An ACK that no transaction absorbed (the ACK for a 2xx).
    Ack {
        /// The ACK.
        request: Message,
        /// Where it came from.
        source: Target,
    },
    /// A response that matches no transaction.
    StrayResponse {
        /// The response.
        response: Message,
        /// Where it came from.
        source: Target,
    },
    /// Timer B or F (no final response), or H (no ACK for a final response).
    Timeout {
        /// The transaction.
        txn: TxnId,
        /// Which timer fired.
        timer: Timer,
    },
    /// The transport could not send for the transaction.
    TransportError {
        /// The transaction.
        txn: TxnId,
    },
    /// The transaction ended and is forgotten.
    Terminated {
        /// The transaction.
        txn: TxnId,
    },
}

/// Why a call into the layer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// The bytes to send do not parse.
    #[error("outgoing message does not parse: {0}")]
    Parse(#[from] FrameError),
    /// A header the layer needs is missing or malformed.
    #[error("outgoing message header: {0}")]
    Header(#[from] HeaderError),
    /// `send_request` was given a response, or an ACK (sent without a transaction).
    #[error("not a request that opens a client transaction")]
    NotTransactional,
    /// A transaction with the same key exists.
    #[error("a transaction with this branch already exists")]
    Exists,
    /// No such transaction (it may have terminated).
    #[error("no such transaction")]
    Unknown,
    /// The response is not allowed in the transaction's state.
    #[error("status {code} not allowed in state {state:?}")]
    BadState {
        /// The response code.
        code: u16,
        /// The state.
        state: State,
    },
}

struct Txn {
    kind: Kind,
    state: State,
    hash: u64,
    key: Key,
    target: Target,
    /// Client: our request (for retransmission and the ACK of a non-2xx).
    request: Option<Message>,
    /// Server: the last response sent; INVITE client: the ACK sent.
    last: Option<Bytes>,
    interval: Duration,
    armed: [Option<Instant>; TIMER_COUNT],
}

/// Every transaction of one endpoint.
pub struct Transactions {
    timers: Timers,
    seed: RandomState,
    next_id: u64,
    by_key: HashMap<u64, TxnId>,
    txns: HashMap<TxnId, Txn>,
    heap: BinaryHeap<Reverse<(Instant, TxnId, Timer)>>,
    out: VecDeque<Output>,
    legacy: String,
    limits: Limits,
}

impl Transactions {
    /// An empty layer with the given timers.
    pub fn new(timers: Timers) -> Self {
        Self {
            timers,
            seed: RandomState::new(),
            next_id: 1,
            by_key: HashMap::new(),
            txns: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            legacy: String::new(),
            limits: Limits::default(),
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// State of a live transaction.
    pub fn state(&self, txn: TxnId) -> Option<State> {
        self.txns.get(&txn).map(|t| t.state)
    }

    /// Kind of a live transaction.
    pub fn kind(&self, txn: TxnId) -> Option<Kind> {
        self.txns.get(&txn).map(|t| t.kind)
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest armed timer (possibly one since disarmed: calling
    /// [`Transactions::handle_timeout`] then does nothing).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Sends a request in a new client transaction. `data` is the complete
    /// request, with a top Via whose branch starts with `z9hG4bK`.
    pub fn send_request(
        &mut self,
        now: Instant,
        data: Bytes,
        target: Target,
    ) -> Result<TxnId, TxnError> {
        let request = Message::parse(data, Framing::Datagram, &self.limits)?;
        let method = request.method().ok_or(TxnError::NotTransactional)?;
        if method == Method::Ack {
            return Err(TxnError::NotTransactional);
        }
        let via = request.top_via()?;
        let branch = via.branch().ok_or(HeaderError::Missing)?;
        let method_str = request.method_str().ok_or(TxnError::NotTransactional)?;
        let key = KeyRef::Client {
            branch,
            method: method_str,
        };
        let hash = key.hash_with(&self.seed);
        if self.by_key.contains_key(&hash) {
            return Err(TxnError::Exists);
        }
        let owned = key.to_owned_key();
        let invite = method == Method::Invite;
        let id = self.insert(Txn {
            kind: if invite {
                Kind::InviteClient
            } else {
                Kind::NonInviteClient
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            hash,
            key: owned,
            target,
            request: None,
            last: None,
            interval: self.timers.t1,
            armed: [None; TIMER_COUNT],
        });
        let data = request.raw().clone();
        if let Some(t) = self.txns.get_mut(&id) {
            t.request = Some(request);
        }
        self.transmit(Some(id), target, data);
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        if !target.is_reliable() {
            self.arm(id, retransmit, now + self.timers.t1);
        }
        self.arm(id, timeout, now + self.timers.t1x64());
        Ok(id)
    }

    /// Sends a message outside any transaction (an ACK for a 2xx, a
    /// stateless response).
    pub fn send_stateless(&mut self, target: Target, data: Bytes) {
        self.transmit(None, target, data);
    }

    /// Sends a response `code` (with `data` its complete bytes) on a server
    /// transaction.
    pub fn respond(
        &mut self,
        now: Instant,
        txn: TxnId,
        code: u16,
        data: Bytes,
    ) -> Result<(), TxnError> {
        let t = self.txns.get_mut(&txn).ok_or(TxnError::Unknown)?;
        let state = t.state;
        let bad = TxnError::BadState { code, state };
        let target = t.target;
        let reliable = target.is_reliable();
        match (t.kind, state) {
            (Kind::InviteServer, State::Proceeding) => {
                t.last = Some(data.clone());
                self.transmit(Some(txn), target, data);
                match code {
                    100..=199 => {}
                    200..=299 => {
                        self.enter(txn, State::Accepted);
                        self.arm(txn, Timer::L, now + self.timers.t1x64());
                    }
                    _ => {
                        self.enter(txn, State::Completed);
                        if !reliable {
                            self.arm(txn, Timer::G, now + self.timers.t1);
                        }
                        self.arm(txn, Timer::H, now + self.timers.t1x64());
                    }
                }
            }
            // RFC 6026 §7.1: the TU retransmits its 2xx through the transaction.
            (Kind::InviteServer, State::Accepted) if (200..=299).contains(&code) => {
                self.transmit(Some(txn), target, data);
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                t.last = Some(data.clone());
                self.transmit(Some(txn), target, data);
                if code < 200 {
                    self.enter(txn, State::Proceeding);
                } else {
                    self.enter(txn, State::Completed);
                    self.wait_or_end(txn, Timer::J, now, reliable, self.timers.t1x64());
                }
            }
            _ => return Err(bad),
        }
        Ok(())
    }

    /// Feeds a received, validated message.
    pub fn handle(&mut self, now: Instant, msg: Message, source: Target) {
        if msg.is_request() {
            self.handle_request(now, msg, source);
        } else {
            self.handle_response(now, msg, source);
        }
    }

    /// Reports that sending for `txn` failed (RFC 3261 §17.1.4, §17.2.4).
    pub fn transport_error(&mut self, txn: TxnId) {
        if self.txns.contains_key(&txn) {
            self.event(Event::TransportError { txn });
            self.terminate(txn);
        }
    }

    /// The INVITE server transaction a CANCEL refers to (RFC 3261 §9.2).
    pub fn cancelled_invite(&mut self, cancel: &Message) -> Option<TxnId> {
        let mut legacy = std::mem::take(&mut self.legacy);
        let found = match request_key(cancel, &mut legacy) {
            Ok(KeyRef::Server {
                branch, sent_by, ..
            }) => self.lookup(KeyRef::Server {
                branch,
                sent_by,
                method: "INVITE",
            }),
            Ok(KeyRef::Legacy(_)) => {
                // The legacy identity ends with "CANCEL\n<via>\n"; the INVITE's
                // has "INVITE" in that place.
                let text = legacy.replacen("\nCANCEL\n", "\nINVITE\n", 1);
                self.lookup(KeyRef::Legacy(&text))
            }
            _ => None,
        };
        self.legacy = legacy;
        found.filter(|id| self.kind(*id) == Some(Kind::InviteServer))
    }

    /// The transaction a message belongs to, without acting on it (the
    /// matching step of [`Transactions::handle`]).
    pub fn matching(&mut self, msg: &Message) -> Option<TxnId> {
        if msg.is_request() {
            let mut legacy = std::mem::take(&mut self.legacy);
            let found = request_key(msg, &mut legacy)
                .ok()
                .and_then(|k| self.lookup(k));
            self.legacy = legacy;
            found
        } else {
            response_key(msg).ok().and_then(|k| self.lookup(k))
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id, timer))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(t) = self.txns.get_mut(&id) else {
                continue;
            };
            if t.armed[timer.index()] != Some(at) {
                continue;
            }
            t.armed[timer.index()] = None;
            self.fire(now, id, timer);
        }
    }

    fn fire(&mut self, now: Instant, id: TxnId, timer: Timer) {
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        match timer {
            Timer::A | Timer::E => {
                let Some(data) = t.request.as_ref().map(|r| r.raw().clone()) else {
                    return;
                };
                let next = if timer == Timer::A {
                    t.interval * 2
                } else if t.state == State::Proceeding {
                    self.timers.t2
                } else {
                    (t.interval * 2).min(self.timers.t2)
                };
                t.interval = next;
                let target = t.target;
                self.transmit(Some(id), target, data);
                self.arm(id, timer, now + next);
            }
            Timer::G => {
                let Some(data) = t.last.clone() else {
                    return;
                };
                t.interval = (t.interval * 2).min(self.timers.t2);
                let (target, next) = (t.target, t.interval);
                self.transmit(Some(id), target, data);
                self.arm(id, Timer::G, now + next);
            }
            Timer::B | Timer::F | Timer::H => {
                self.event(Event::Timeout { txn: id, timer });
                self.terminate(id);
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::L | Timer::M => self.terminate(id),
        }
    }

    fn handle_response(&mut self, now: Instant, response: Message, source: Target) {
        let Some(code) = response.status() else {
            return;
        };
        let id = match response_key(&response) {
            Ok(key) => self.lookup(key),
            Err(_) => None,
        };
        let Some(id) = id else {
            self.event(Event::StrayResponse { response, source });
            return;
        };
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        let (kind, state, reliable) = (t.kind, t.state, t.target.is_reliable());
        match (kind, state) {
            (Kind::InviteClient, State::Calling | State::Proceeding) => match code {
                100..=199 => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.enter(id, State::Proceeding);
                    self.event(Event::Response { txn: id, response });
                }
                200..=299 => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.enter(id, State::Accepted);
                    self.arm(id, Timer::M, now + self.timers.t1x64());
                    self.event(Event::Response { txn: id, response });
                }
                _ => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.enter(id, State::Completed);
                    self.send_ack(id, &response);
                    self.event(Event::Response { txn: id, response });
                    self.wait_or_end(id, Timer::D, now, reliable, Duration::from_secs(32));
                }
            },
            (Kind::InviteClient, State::Completed) if code >= 300 => {
                if let Some((target, ack)) = self
                    .txns
                    .get(&id)
                    .and_then(|t| Some((t.target, t.last.clone()?)))
                {
                    self.transmit(Some(id), target, ack);
                }
            }
            (Kind::InviteClient, State::Accepted) if (200..=299).contains(&code) => {
                self.event(Event::Response { txn: id, response });
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                if code < 200 {
                    self.enter(id, State::Proceeding);
                    self.event(Event::Response { txn: id, response });
                } else {
                    self.disarm(id, Timer::E);
                    self.disarm(id, Timer::F);
                    self.enter(id, State::Completed);
                    self.event(Event::Response { txn: id, response });
                    self.wait_or_end(id, Timer::K, now, reliable, self.timers.t4);
                }
            }
            // Retransmissions absorbed in Completed, and anything else.
            _ => {}
        }
    }

    fn handle_request(&mut self, now: Instant, request: Message, source: Target) {
        let mut legacy = std::mem::take(&mut self.legacy);
        // The owned key is built only for a new transaction, so matching a
        // retransmission allocates nothing.
        let lookup = request_key(&request, &mut legacy).map(|key| {
            let hash = key.hash_with(&self.seed);
            match self.lookup_hashed(hash, key) {
                Some(id) => (hash, Ok(id)),
                None => (hash, Err(key.to_owned_key())),
            }
        });
        self.legacy = legacy;
        let Ok((hash, found)) = lookup else {
            return;
        };
        let is_ack = request.method() == Some(Method::Ack);
        match found {
            Ok(id) if is_ack => self.ack_received(now, id, request, source),
            Ok(id) => self.retransmission(id),
            Err(_) if is_ack => self.event(Event::Ack { request, source }),
            Err(key) => self.new_server(hash, key, request, source),
        }
    }

    fn ack_received(&mut self, now: Instant, id: TxnId, request: Message, source: Target) {
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        let reliable = t.target.is_reliable();
        match t.state {
            State::Completed => {
                self.disarm(id, Timer::G);
                self.disarm(id, Timer::H);
                self.enter(id, State::Confirmed);
                self.wait_or_end(id, Timer::I, now, reliable, self.timers.t4);
            }
            State::Accepted => self.event(Event::Ack { request, source }),
            _ => {}
        }
    }

    fn retransmission(&mut self, id: TxnId) {
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        // RFC 6026 §7.1: in Accepted the INVITE is absorbed; the TU
        // retransmits its 2xx on its own schedule.
        if t.state == State::Accepted || t.state == State::Confirmed {
            return;
        }
        if let Some(data) = t.last.clone() {
            let target = t.target;
            self.transmit(Some(id), target, data);
        }
    }

    fn new_server(&mut self, hash: u64, key: Key, request: Message, source: Target) {
        let invite = request.method() == Some(Method::Invite);
        let target = response_target(&request, source);
        let id = self.insert(Txn {
            kind: if invite {
                Kind::InviteServer
            } else {
                Kind::NonInviteServer
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            hash,
            key,
            target,
            request: None,
            last: None,
            interval: self.timers.t1,
            armed: [None; TIMER_COUNT],
        });
        if invite {
            // RFC 3261 §17.2.1: 100 Trying at once, so the client stops
            // retransmitting while the TU decides.
            let trying =
                OutMessage::response_to(&request, 100, "Trying", None, Some(source.addr)).encode();
            if let Some(t) = self.txns.get_mut(&id) {
                t.last = Some(trying.clone());
            }
            self.transmit(Some(id), target, trying);
        }
        self.event(Event::Request {
            txn: id,
            request,
            source,
        });
    }

    /// Builds and sends the ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
    fn send_ack(&mut self, id: TxnId, response: &Message) {
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        let Some(request) = &t.request else {
            return;
        };
        let Ok(cseq) = request.cseq() else {
            return;
        };
        let mut ack = OutMessage::request("ACK", request.request_uri().unwrap_or_default());
        if let Some(via) = request.value(HeaderName::Via) {
            let top = crate::sip::message::lex::split_list(via)
                .next()
                .unwrap_or(via);
            ack.push("Via", top);
        }
        for h in request.headers() {
            match h.name {
                HeaderName::Route => ack.push("Route", h.value()),
                HeaderName::From => ack.push("From", h.value()),
                HeaderName::CallId => ack.push("Call-ID", h.value()),
                _ => {}
            }
        }
        if let Some(to) = response.value(HeaderName::To) {
            ack.push("To", to);
        }
        ack.push("CSeq", format!("{} ACK", cseq.seq));
        ack.push("Max-Forwards", "70");
        let data = ack.encode();
        t.last = Some(data.clone());
        let target = t.target;
        self.transmit(Some(id), target, data);
    }

    fn insert(&mut self, txn: Txn) -> TxnId {
        let id = TxnId(self.next_id);
        self.next_id += 1;
        self.by_key.insert(txn.hash, id);
        self.txns.insert(id, txn);
        id
    }

    fn lookup(&self, key: KeyRef<'_>) -> Option<TxnId> {
        self.lookup_hashed(key.hash_with(&self.seed), key)
    }

    fn lookup_hashed(&self, hash: u64, key: KeyRef<'_>) -> Option<TxnId> {
        let id = *self.by_key.get(&hash)?;
        let t = self.txns.get(&id)?;
        key.matches(&t.key).then_some(id)
    }

    fn enter(&mut self, id: TxnId, state: State) {
        if let Some(t) = self.txns.get_mut(&id) {
            t.state = state;
        }
    }

    fn arm(&mut self, id: TxnId, timer: Timer, at: Instant) {
        if let Some(t) = self.txns.get_mut(&id) {
            t.armed[timer.index()] = Some(at);
            self.heap.push(Reverse((at, id, timer)));
        }
    }

    fn disarm(&mut self, id: TxnId, timer: Timer) {
        if let Some(t) = self.txns.get_mut(&id) {
            t.armed[timer.index()] = None;
        }
    }

    /// Arms `timer` for `wait` on unreliable transports; on reliable ones
    /// the wait is zero and the transaction ends now.
    fn wait_or_end(
        &mut self,
        id: TxnId,
        timer: Timer,
        now: Instant,
        reliable: bool,
        wait: Duration,
    ) {
        if reliable {
            self.terminate(id);
        } else {
            self.arm(id, timer, now + wait);
        }
    }

    fn terminate(&mut self, id: TxnId) {
        if let Some(t) = self.txns.remove(&id) {
            if self.by_key.get(&t.hash) == Some(&id) {
                self.by_key.remove(&t.hash);
            }
            self.event(Event::Terminated { txn: id });
        }
    }

    fn transmit(&mut self, txn: Option<TxnId>, target: Target, data: Bytes) {
        self.out.push_back(Output::Transmit { txn, target, data });
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }
}

/// Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4): back
/// over the connection for reliable transports; over UDP to the source
/// address, and to the sent-by port when the client did not ask for rport.
pub fn response_target(request: &Message, source: Target) -> Target {
    if source.is_reliable() {
        return source;
    }
    let top = request
        .value(HeaderName::Via)
        .and_then(|v| crate::sip::message::lex::split_list(v).next())
        .and_then(|v| Via::parse(v).ok());
    match top {
        Some(via) if via.rport().is_none() => {
            let port = via.port.unwrap_or(5060);
            Target {
                addr: std::net::SocketAddr::new(source.addr.ip(), port),
                ..source
            }
        }
        _ => source,
    }
}
