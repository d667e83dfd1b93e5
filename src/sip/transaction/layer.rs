//! The transaction layer (RFC 3261 §17, with the Accepted states of
//! RFC 6026), sans-IO: the owner feeds it messages, timeouts and transport
//! errors with the current time, and drains transmissions and events.
//!
//! All transactions share one ordered timer set that holds exactly the
//! armed timers (disarming removes the entry, so its size tracks live
//! timers); [`Transactions::poll_timeout`] tells the driver when to call
//! [`Transactions::handle_timeout`] next.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::ClientRequest;
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
    /// INVITE client after CANCEL: the transaction ends 64×T1 after the
    /// CANCEL when no final response arrives (RFC 3261 §9.1).
    Cancel,
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
    /// A CANCEL went out for an INVITE client transaction, in its own
    /// non-INVITE client transaction (at once, or when the first
    /// provisional response arrived).
    CancelSent {
        /// The INVITE transaction.
        invite: TxnId,
        /// The CANCEL's transaction.
        cancel: TxnId,
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
    /// CANCEL asked of something that is not an INVITE client transaction
    /// waiting for its final response.
    #[error("not an INVITE client transaction waiting for a final response")]
    NotCancellable,
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
    /// Client: our request's bytes (retransmissions) while it can be
    /// retransmitted.
    request: Option<Bytes>,
    /// INVITE client: what the ACK of a non-2xx and a CANCEL are built from.
    invite: Option<Box<ClientRequest>>,
    /// Server: the last response sent; INVITE client: the ACK sent.
    last: Option<Bytes>,
    /// INVITE client: a CANCEL was asked for before any provisional
    /// response; it goes out with the first one.
    cancel_pending: bool,
    interval: Duration,
    armed: Armed,
}

/// The timers a transaction has armed: never more than three at once (A, B
/// and the CANCEL guard of an INVITE client), so four slots, not one per
/// timer kind.
#[derive(Debug, Clone, Copy, Default)]
struct Armed([Option<(Timer, Instant)>; 4]);

impl Armed {
    fn get(&self, timer: Timer) -> Option<Instant> {
        self.0
            .iter()
            .flatten()
            .find(|(t, _)| *t == timer)
            .map(|(_, at)| *at)
    }

    /// Arms `timer` at `at`; returns the instant it was armed at before.
    fn set(&mut self, timer: Timer, at: Instant) -> Option<Instant> {
        if let Some(slot) = self.0.iter_mut().flatten().find(|(t, _)| *t == timer) {
            return Some(std::mem::replace(&mut slot.1, at));
        }
        match self.0.iter_mut().find(|s| s.is_none()) {
            Some(free) => *free = Some((timer, at)),
            None => tracing::error!(?timer, "more timers than a transaction can arm; dropped"),
        }
        None
    }

    fn take(&mut self, timer: Timer) -> Option<Instant> {
        let slot = self
            .0
            .iter_mut()
            .find(|s| s.is_some_and(|(t, _)| t == timer))?;
        slot.take().map(|(_, at)| at)
    }

    fn iter(&self) -> impl Iterator<Item = (Timer, Instant)> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// Transactions sharing a key hash (distinct keys may collide; each hit is
/// verified against the full key, so a collision never replaces an entry).
#[derive(Debug)]
enum Bucket {
    One(TxnId),
    Many(Vec<TxnId>),
}

impl Bucket {
    fn ids(&self) -> &[TxnId] {
        match self {
            Bucket::One(id) => std::slice::from_ref(id),
            Bucket::Many(ids) => ids,
        }
    }
}

/// Every transaction of one endpoint.
pub struct Transactions {
    timers: Timers,
    seed: RandomState,
    next_id: u64,
    by_key: HashMap<u64, Bucket>,
    txns: HashMap<TxnId, Txn>,
    deadlines: BTreeSet<(Instant, TxnId, Timer)>,
    out: VecDeque<Output>,
    legacy: String,
    limits: Limits,
}

impl Transactions {
    /// An empty layer with the given timers. `seed` keys the hash of
    /// transaction keys: give a randomly seeded one (the daemon's comes from
    /// the OS) so that peers cannot aim for collisions.
    pub fn new(timers: Timers, seed: RandomState) -> Self {
        Self {
            timers,
            seed,
            next_id: 1,
            by_key: HashMap::new(),
            txns: HashMap::new(),
            deadlines: BTreeSet::new(),
            out: VecDeque::new(),
            legacy: String::new(),
            limits: Limits::default(),
        }
    }

    /// Armed timers in all (every one belongs to a live transaction).
    pub fn armed_timers(&self) -> usize {
        self.deadlines.len()
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

    /// The earliest armed timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _, _)| *at)
    }

    /// Sends a request given as complete bytes (parsed once to find its
    /// key): a top Via whose branch starts with `z9hG4bK`. Requests the
    /// endpoint builds go through [`Transactions::start_client`] unparsed.
    pub fn send_request(
        &mut self,
        now: Instant,
        data: Bytes,
        target: Target,
    ) -> Result<TxnId, TxnError> {
        let request = Message::parse(data, Framing::Datagram, &self.limits)?;
        let client = ClientRequest::from_message(&request)?;
        self.start_client(now, client, target)
    }

    /// A fresh id for a client transaction started later with
    /// [`Transactions::start_reserved`] (a request waiting for its
    /// connection already has the id its sender was given).
    pub fn reserve(&mut self) -> TxnId {
        let id = TxnId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Starts a client transaction for a request built by the caller.
    pub fn start_client(
        &mut self,
        now: Instant,
        request: ClientRequest,
        target: Target,
    ) -> Result<TxnId, TxnError> {
        let id = self.reserve();
        self.start_reserved(now, id, request, target)
    }

    /// [`Transactions::start_client`] under an id from
    /// [`Transactions::reserve`].
    pub fn start_reserved(
        &mut self,
        now: Instant,
        id: TxnId,
        request: ClientRequest,
        target: Target,
    ) -> Result<TxnId, TxnError> {
        if self.txns.contains_key(&id) {
            return Err(TxnError::Exists);
        }
        if request.method == Method::Ack {
            return Err(TxnError::NotTransactional);
        }
        let key = KeyRef::Client {
            branch: &request.branch,
            method: &request.method_name,
        };
        let hash = key.hash_with(&self.seed);
        if self.lookup_hashed(hash, key).is_some() {
            return Err(TxnError::Exists);
        }
        let owned = key.to_owned_key();
        let invite = request.method == Method::Invite;
        let data = request.data.clone();
        let id = self.insert_as(
            id,
            Txn {
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
                request: Some(data.clone()),
                invite: invite.then(|| Box::new(request)),
                last: None,
                cancel_pending: false,
                interval: self.timers.t1,
                armed: Armed::default(),
            },
        );
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
                // A 2xx is retransmitted by the transaction user (RFC 6026
                // §7.1): nothing is kept in Accepted.
                t.last = (!(200..300).contains(&code)).then(|| data.clone());
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

    /// Cancels an INVITE client transaction (RFC 3261 §9.1): the CANCEL is
    /// built from the stored INVITE (same Request-URI, Call-ID, From, To,
    /// CSeq number, Route and top Via, so the same branch) and sent in its
    /// own transaction, reported by [`Event::CancelSent`]. Before any
    /// provisional response it waits for the first one. If no final
    /// response arrives within 64×T1, the INVITE transaction ends with a
    /// timeout.
    pub fn cancel(&mut self, now: Instant, txn: TxnId) -> Result<(), TxnError> {
        let t = self.txns.get_mut(&txn).ok_or(TxnError::Unknown)?;
        let cancelled = t.armed.get(Timer::Cancel).is_some() || t.cancel_pending;
        if t.kind != Kind::InviteClient || t.invite.is_none() || cancelled {
            return Err(TxnError::NotCancellable);
        }
        match t.state {
            // Sent with the first provisional response; Timer B bounds the
            // wait for one.
            State::Calling => t.cancel_pending = true,
            State::Proceeding => self.send_cancel(now, txn)?,
            _ => return Err(TxnError::NotCancellable),
        }
        Ok(())
    }

    /// Forgets a transaction without sending anything more (the transaction
    /// user gave up on it); reports [`Event::Terminated`].
    pub fn abandon(&mut self, txn: TxnId) {
        self.terminate(txn);
    }

    fn send_cancel(&mut self, now: Instant, invite: TxnId) -> Result<(), TxnError> {
        let Some(t) = self.txns.get_mut(&invite) else {
            return Err(TxnError::Unknown);
        };
        t.cancel_pending = false;
        let target = t.target;
        let cancel = t
            .invite
            .as_ref()
            .and_then(|i| i.cancel())
            .ok_or(TxnError::NotCancellable)?;
        let id = self.start_client(now, cancel, target)?;
        // RFC 3261 §9.1: 64×T1 from the CANCEL's sending.
        self.arm(invite, Timer::Cancel, now + self.timers.t1x64());
        self.event(Event::CancelSent { invite, cancel: id });
        Ok(())
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
        while let Some(&(at, id, timer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(t) = self.txns.get_mut(&id) {
                t.armed.take(timer);
                self.fire(now, id, timer);
            }
        }
    }

    fn fire(&mut self, now: Instant, id: TxnId, timer: Timer) {
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        match timer {
            Timer::A | Timer::E => {
                let Some(data) = t.request.clone() else {
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
            Timer::B | Timer::F | Timer::H | Timer::Cancel => {
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
                    if self.txns.get(&id).is_some_and(|t| t.cancel_pending)
                        && let Err(e) = self.send_cancel(now, id)
                    {
                        tracing::debug!(error = %e, "deferred CANCEL not sent");
                    }
                }
                200..=299 => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.disarm(id, Timer::Cancel);
                    self.enter(id, State::Accepted);
                    if let Some(t) = self.txns.get_mut(&id) {
                        // Nothing is retransmitted or cancelled from here.
                        t.request = None;
                        t.invite = None;
                        t.cancel_pending = false;
                    }
                    self.arm(id, Timer::M, now + self.timers.t1x64());
                    self.event(Event::Response { txn: id, response });
                }
                _ => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.disarm(id, Timer::Cancel);
                    self.enter(id, State::Completed);
                    self.send_ack(id, &response);
                    if let Some(t) = self.txns.get_mut(&id) {
                        t.request = None;
                        t.invite = None;
                        t.cancel_pending = false;
                    }
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
                    if let Some(t) = self.txns.get_mut(&id) {
                        t.request = None;
                    }
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
            invite: None,
            last: None,
            cancel_pending: false,
            interval: self.timers.t1,
            armed: Armed::default(),
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
        let Some(invite) = &t.invite else {
            return;
        };
        let data = invite.ack_for(response.value(HeaderName::To).unwrap_or_default());
        t.last = Some(data.clone());
        let target = t.target;
        self.transmit(Some(id), target, data);
    }

    fn insert(&mut self, txn: Txn) -> TxnId {
        let id = self.reserve();
        self.insert_as(id, txn)
    }

    fn insert_as(&mut self, id: TxnId, txn: Txn) -> TxnId {
        match self.by_key.get_mut(&txn.hash) {
            None => {
                self.by_key.insert(txn.hash, Bucket::One(id));
            }
            Some(bucket) => {
                let mut ids = bucket.ids().to_vec();
                ids.push(id);
                *bucket = Bucket::Many(ids);
            }
        }
        self.txns.insert(id, txn);
        id
    }

    fn lookup(&self, key: KeyRef<'_>) -> Option<TxnId> {
        self.lookup_hashed(key.hash_with(&self.seed), key)
    }

    fn lookup_hashed(&self, hash: u64, key: KeyRef<'_>) -> Option<TxnId> {
        self.by_key
            .get(&hash)?
            .ids()
            .iter()
            .copied()
            .find(|id| self.txns.get(id).is_some_and(|t| key.matches(&t.key)))
    }

    fn enter(&mut self, id: TxnId, state: State) {
        if let Some(t) = self.txns.get_mut(&id) {
            t.state = state;
        }
    }

    fn arm(&mut self, id: TxnId, timer: Timer, at: Instant) {
        if let Some(t) = self.txns.get_mut(&id) {
            if let Some(old) = t.armed.set(timer, at) {
                self.deadlines.remove(&(old, id, timer));
            }
            self.deadlines.insert((at, id, timer));
        }
    }

    fn disarm(&mut self, id: TxnId, timer: Timer) {
        if let Some(old) = self.txns.get_mut(&id).and_then(|t| t.armed.take(timer)) {
            self.deadlines.remove(&(old, id, timer));
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
        let Some(t) = self.txns.remove(&id) else {
            return;
        };
        for (timer, at) in t.armed.iter() {
            self.deadlines.remove(&(at, id, timer));
        }
        let emptied = match self.by_key.get_mut(&t.hash) {
            Some(Bucket::One(one)) => *one == id,
            Some(Bucket::Many(ids)) => {
                ids.retain(|x| *x != id);
                if let [only] = ids[..] {
                    self.by_key.insert(t.hash, Bucket::One(only));
                }
                false
            }
            None => false,
        };
        if emptied {
            self.by_key.remove(&t.hash);
        }
        self.event(Event::Terminated { txn: id });
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
