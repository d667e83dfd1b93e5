//! The live call table: every call, its deadline, its transitions.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Disposition;
use super::media::{MediaError, MediaOp, PortPool};
use super::{
    CallConfig, CallDirection, CallEvent, CallId, CallNote, CallState, EndCause, Ended, KeySource,
    Originate, Side,
};
use crate::sdp::{
    self, Direction, LocalKeys, LocalMedia, Negotiated, Origin, SessionDescription, SrtpPolicy,
};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::{Endpoint, Event, OutRequest, OwnerId, Reply};
use crate::sip::ids::{self, Entropy};
use crate::sip::message::Message;
use crate::sip::target::{Target, Transport};
use crate::sip::transaction::TxnId;

/// Owner ids of calls on the endpoint start here (accounts use `1<<48`,
/// one-shot requests `1<<56`).
pub const CALL_BASE: u64 = 1 << 40;

/// Why a call request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No such live call.
    #[error("no live call {0}")]
    Unknown(CallId),
    /// The call is not in a state that allows this.
    #[error("{call} is {state}; cannot {action}", state = .state.label())]
    WrongState {
        /// The call.
        call: CallId,
        /// Its state.
        state: CallState,
        /// What was asked.
        action: &'static str,
    },
    /// A header name other than `X-...` was given.
    #[error("header {0:?} is not an X- header")]
    Header(String),
    /// The request could not be sent.
    #[error("could not send: {0}")]
    Send(String),
    /// No media port is free.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// The table is at its configured size.
    #[error("{0} calls are live, the most allowed")]
    Full(usize),
    /// New outbound calls come faster than the configured rate.
    #[error("more than {0} new calls per second")]
    RateLimited(f64),
    /// A live call already has this name.
    #[error("a live call is named {0:?}")]
    NameInUse(String),
    /// The account has as many live calls as it may.
    #[error("account {account:?} has {max} live calls, the most allowed")]
    AccountFull {
        /// The account.
        account: String,
        /// Its limit.
        max: usize,
    },
    /// New calls of the account come faster than its rate.
    #[error("account {account:?}: more than {rate} new calls per second")]
    AccountRateLimited {
        /// The account.
        account: String,
        /// Its rate.
        rate: f64,
    },
    /// No live call has this name.
    #[error("no live call named {0:?}")]
    NotFound(String),
    /// The call has no dialog to send in (not answered yet).
    #[error("{0} has no dialog yet")]
    NoDialog(CallId),
    /// SRTP was asked for and no key material (or, for DTLS-SRTP, no
    /// certificate) could be had.
    #[error("SRTP asked for and no key material or certificate is available")]
    NoKeySource,
    /// Media is not running (no media shards), so nothing can be streamed.
    #[error("media is not running in this dialer")]
    NoMedia,
    /// The campaign has as many live calls here as it may.
    #[error("campaign {campaign:?} has {max} live calls, the most allowed")]
    CampaignFull {
        /// The campaign.
        campaign: String,
        /// Its limit.
        max: usize,
    },
    /// The ring timeout asked for is below the configured floor.
    #[error(
        "a ring timeout of {asked_secs} s is below the {floor_secs} s floor ([calls].min_ring_secs)"
    )]
    RingBelowFloor {
        /// What was asked, seconds.
        asked_secs: u64,
        /// The floor, seconds.
        floor_secs: u64,
    },
}

/// An account's own call limits.
#[derive(Debug, Clone)]
pub struct AccountLimit {
    max_calls: usize,
    admission: Admission,
    live: usize,
}

impl AccountLimit {
    /// At most `max_calls` live calls (0: no limit) and `per_second` new
    /// outbound calls (0 or less: no limit).
    pub fn new(max_calls: usize, per_second: f64) -> Self {
        Self {
            max_calls: if max_calls == 0 {
                usize::MAX
            } else {
                max_calls
            },
            admission: Admission::new(per_second),
            live: 0,
        }
    }
}

/// A token bucket for new outbound calls: `rate` per second, bursts of up
/// to one second's worth.
#[derive(Debug, Clone)]
pub(super) struct Admission {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Admission {
    pub(super) fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            at: None,
        }
    }

    /// Takes a token if one is there.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return true;
        }
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate.max(1.0));
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which deadline a call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// Outbound: the ring timeout.
    Ring,
    /// Outbound: Timer C (no provisional for too long).
    TimerC,
    /// Inbound `Ring`: nobody asked to answer.
    Answer,
    /// After the answer: the maximum duration.
    MaxDuration,
    /// BYE or CANCEL sent, no completion.
    Ending,
    /// Our session refresh is due.
    SessionRefresh,
    /// The peer's session refresh did not come.
    SessionExpired,
    /// Send a re-INVITE again after a 491.
    Glare,
}

/// One call.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) id: CallId,
    /// Its name: the id the control channel and call records use.
    pub(super) name: Arc<str>,
    pub(super) direction: CallDirection,
    pub(super) state: CallState,
    pub(super) created: Instant,
    pub(super) answered: Option<Instant>,
    pub(super) account: Option<String>,
    pub(super) sip_call_id: String,
    pub(super) local_tag: String,
    /// The INVITE transaction: client (outbound) or server (inbound).
    pub(super) invite: Option<TxnId>,
    pub(super) invite_cseq: u32,
    /// Outbound: what was asked for (to answer a challenge).
    pub(super) origin: Option<Originate>,
    /// Outbound: the nonce already answered (a second challenge with it
    /// means the credentials are wrong).
    pub(super) answered_nonce: Option<String>,
    pub(super) nc: u32,
    pub(super) dialog: Option<Dialog>,
    pub(super) next_hop: Target,
    pub(super) deadline: Option<(Instant, Deadline)>,
    pub(super) ring_deadline: Option<Instant>,
    /// How the call ends once what is in flight completes (a CANCEL or BYE
    /// sent).
    pub(super) pending_end: Option<Ended>,
    pub(super) bye: Option<TxnId>,
    pub(super) local_sdp: Option<SessionDescription>,
    pub(super) negotiated: Option<Negotiated>,
    /// SRTP policy and our SDES keys, for every offer and answer of the call.
    pub(super) srtp: SrtpPolicy,
    pub(super) keys: LocalKeys,
    pub(super) media_port: Option<u16>,
    /// The port of an external media endpoint's leg.
    pub(super) endpoint_port: Option<u16>,
    pub(super) contact_user: String,
    /// Inbound: where the INVITE came from.
    pub(super) source: Option<Target>,
    /// Inbound: the INVITE, until the final response.
    pub(super) request: Option<Message>,
    /// The peers as they appear in From and To.
    pub(super) from: Arc<str>,
    pub(super) to: Arc<str>,
    /// After the answer: when the maximum duration passes.
    pub(super) max_at: Option<Instant>,
    /// The session timer, when one was negotiated.
    pub(super) session: Option<super::session::SessionTimer>,
    /// Our re-INVITE in flight.
    pub(super) reinvite: Option<super::session::ReInvite>,
    /// The offer of that re-INVITE.
    pub(super) offered: Option<SessionDescription>,
    /// A re-INVITE to send again after a 491, and when.
    pub(super) glare_retry: Option<(Instant, super::session::Purpose)>,
    /// Whether we put the call on hold.
    pub(super) held: bool,
    /// Outbound: the session interval a 422 asked for at least.
    pub(super) min_se_asked: Option<Duration>,
    /// Inbound: its key in the merged-request index.
    pub(super) inbound_key: Option<(String, String, u32)>,
    /// The other leg of its bridge.
    pub(super) bridge: Option<CallId>,
    /// Longest call after the answer.
    pub(super) max_duration: Duration,
    /// DTMF digits still to send, and the INFO in flight.
    pub(super) dtmf: VecDeque<char>,
    pub(super) info: Option<TxnId>,
}

impl Call {
    /// A call in `Created` with nothing negotiated or sent yet.
    pub(super) fn new(
        id: CallId,
        direction: CallDirection,
        created: Instant,
        sip_call_id: String,
        local_tag: String,
        next_hop: Target,
    ) -> Self {
        Self {
            id,
            name: Arc::from(""),
            direction,
            state: CallState::Created,
            created,
            answered: None,
            account: None,
            sip_call_id,
            local_tag,
            invite: None,
            invite_cseq: 0,
            origin: None,
            answered_nonce: None,
            nc: 0,
            dialog: None,
            next_hop,
            deadline: None,
            ring_deadline: None,
            pending_end: None,
            bye: None,
            local_sdp: None,
            negotiated: None,
            srtp: SrtpPolicy::Off,
            keys: LocalKeys::default(),
            media_port: None,
            endpoint_port: None,
            contact_user: String::new(),
            source: None,
            request: None,
            from: Arc::from(""),
            to: Arc::from(""),
            max_at: None,
            session: None,
            reinvite: None,
            offered: None,
            glare_retry: None,
            held: false,
            min_se_asked: None,
            inbound_key: None,
            bridge: None,
            max_duration: Duration::ZERO,
            dtmf: VecDeque::new(),
            info: None,
        }
    }
}

/// A live call as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    /// The call.
    pub id: CallId,
    /// Its name (the call id on the control channel).
    pub name: Arc<str>,
    /// Its SIP Call-ID.
    pub sip_call_id: String,
    /// Which way.
    pub direction: CallDirection,
    /// Its state.
    pub state: &'static str,
    /// Its account.
    pub account: Option<String>,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Seconds since the answer.
    pub talk_secs: Option<u64>,
    /// The negotiated codec.
    pub codec: Option<String>,
    /// Our media port.
    pub media_port: Option<u16>,
}

/// Counts derived from the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Live {
    /// Calls by state label.
    pub by_state: Vec<(&'static str, usize)>,
    /// Calls in all.
    pub total: usize,
    /// Media ports in use.
    pub media_ports: usize,
}

/// The live call table.
#[derive(Debug)]
pub struct Calls {
    pub(super) config: CallConfig,
    pub(super) calls: HashMap<CallId, Call>,
    deadlines: BTreeSet<(Instant, CallId)>,
    next_id: u64,
    pub(super) events: Vec<CallEvent>,
    pub(super) rng: Box<dyn Entropy>,
    pub(super) ports: PortPool,
    max_calls: usize,
    pub(super) admission: Admission,
    /// Inbound calls by Call-ID, From tag and INVITE CSeq: a second INVITE
    /// with the same key is a merged or looped request (482).
    pub(super) inbound_keys: HashMap<(String, String, u32), CallId>,
    /// Live calls by name.
    names: HashMap<Arc<str>, CallId>,
    /// Accounts with their own limits.
    account_limits: HashMap<String, AccountLimit>,
    /// What calls reported besides transitions.
    pub(super) notes: Vec<CallNote>,
    /// What the media layer is asked to do, in order.
    pub(super) media_ops: Vec<MediaOp>,
    /// Where SDES keys come from; none: calls cannot use SRTP.
    key_source: Option<Box<dyn KeySource>>,
}

impl Calls {
    /// An empty table; `ports` hands out media ports; at most `max_calls`
    /// live at once.
    pub fn new(
        config: CallConfig,
        ports: PortPool,
        max_calls: usize,
        rng: Box<dyn Entropy>,
    ) -> Self {
        Self {
            config,
            calls: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 1,
            events: Vec::new(),
            rng,
            ports,
            max_calls,
            admission: Admission::new(f64::INFINITY),
            inbound_keys: HashMap::new(),
            names: HashMap::new(),
            account_limits: HashMap::new(),
            notes: Vec::new(),
            media_ops: Vec::new(),
            key_source: None,
        }
    }

    /// Makes SDES keys with `source` (a CSPRNG).
    pub fn with_key_source(mut self, source: Box<dyn KeySource>) -> Self {
        self.key_source = Some(source);
        self
    }

    /// Fresh SDES keys for a call with `policy`; none when it is off.
    pub(super) fn call_keys(&mut self, policy: SrtpPolicy) -> Result<LocalKeys, CallError> {
        if policy == SrtpPolicy::Off {
            return Ok(LocalKeys::default());
        }
        if policy == SrtpPolicy::Dtls && self.config.dtls_fingerprint.is_none() {
            return Err(CallError::NoKeySource);
        }
        let source = self.key_source.as_mut().ok_or(CallError::NoKeySource)?;
        LocalKeys::generate(|out| source.fill(out)).ok_or(CallError::NoKeySource)
    }

    /// Gives `account` its own limits.
    pub fn limit_account(&mut self, account: &str, limit: AccountLimit) {
        self.account_limits.insert(account.to_owned(), limit);
    }

    /// The live call named `name`.
    pub fn find(&self, name: &str) -> Option<CallId> {
        self.names.get(name).copied()
    }

    /// The name of live call `id`.
    pub fn name_of(&self, id: CallId) -> Option<Arc<str>> {
        self.calls.get(&id).map(|c| c.name.clone())
    }

    /// What calls reported besides transitions since the last call.
    pub fn take_notes(&mut self) -> std::vec::Drain<'_, CallNote> {
        self.notes.drain(..)
    }

    /// Checks an outbound call against the table's and its account's
    /// limits and name, taking a token from each rate.
    pub(super) fn admit_outbound(
        &mut self,
        now: Instant,
        account: Option<&str>,
        name: Option<&str>,
        campaign: Option<&super::Campaign>,
    ) -> Result<(), CallError> {
        if let Some(c) = campaign
            && c.max_calls > 0
        {
            // Counted from the table itself, never by hand.
            let live = self
                .calls
                .values()
                .filter(|call| {
                    call.origin
                        .as_ref()
                        .and_then(|o| o.campaign.as_ref())
                        .is_some_and(|o| o.tag == c.tag)
                })
                .count();
            if live >= c.max_calls {
                return Err(CallError::CampaignFull {
                    campaign: c.tag.to_string(),
                    max: c.max_calls,
                });
            }
        }
        if let Some(name) = name
            && self.names.contains_key(name)
        {
            return Err(CallError::NameInUse(name.to_owned()));
        }
        if self.calls.len() >= self.max_calls {
            return Err(CallError::Full(self.calls.len()));
        }
        if let Some(account) = account
            && let Some(limit) = self.account_limits.get_mut(account)
        {
            if limit.live >= limit.max_calls {
                return Err(CallError::AccountFull {
                    account: account.to_owned(),
                    max: limit.max_calls,
                });
            }
            if !limit.admission.take(now) {
                return Err(CallError::AccountRateLimited {
                    account: account.to_owned(),
                    rate: limit.admission.rate,
                });
            }
        }
        if !self.admission.take(now) {
            return Err(CallError::RateLimited(self.admission_rate()));
        }
        Ok(())
    }

    /// Puts `call` in the table under its name (made up when empty).
    pub(super) fn insert(&mut self, mut call: Call) {
        if call.name.is_empty() {
            call.name = Arc::from(format!("{}{}", self.config.name_prefix, call.id.0));
        }
        if call.max_duration.is_zero() {
            call.max_duration = self.config.max_duration;
        }
        if let Some(limit) = call
            .account
            .as_deref()
            .and_then(|a| self.account_limits.get_mut(a))
        {
            limit.live += 1;
        }
        self.names.insert(call.name.clone(), call.id);
        self.calls.insert(call.id, call);
    }

    /// The owner id of `call` on the endpoint.
    pub fn owner(call: CallId) -> OwnerId {
        OwnerId(CALL_BASE + call.0)
    }

    /// The call an owner id names, if it names one.
    pub fn call_of(owner: OwnerId) -> Option<CallId> {
        (CALL_BASE..CALL_BASE << 1)
            .contains(&owner.0)
            .then(|| CallId(owner.0 - CALL_BASE))
    }

    pub(super) fn admission_rate(&self) -> f64 {
        self.admission.rate
    }

    /// Limits new outbound calls to `per_second` (0 or less: no limit).
    pub fn limit_rate(&mut self, per_second: f64) {
        self.admission = Admission::new(per_second);
    }

    /// The configuration.
    pub fn config(&self) -> &CallConfig {
        &self.config
    }

    /// Live calls.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// No live call.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// A call's state.
    pub fn state(&self, call: CallId) -> Option<CallState> {
        self.calls.get(&call).map(|c| c.state)
    }

    /// Takes each media port with `claim` before it is advertised.
    pub fn set_port_claim(&mut self, claim: Box<dyn super::PortClaim>) {
        self.ports.set_claim(claim);
    }

    /// Offers and answers DTLS-SRTP with the certificate of this SHA-256
    /// digest (the media layer's); `None` turns DTLS-SRTP off.
    pub fn set_dtls_fingerprint(&mut self, digest: Option<Vec<u8>>) {
        self.config.dtls_fingerprint = digest;
    }

    /// What the media layer was asked to do since the last call, in order.
    pub fn take_media_ops(&mut self) -> std::vec::Drain<'_, MediaOp> {
        self.media_ops.drain(..)
    }

    /// What was negotiated for `id`.
    pub fn negotiated(&self, id: CallId) -> Option<Negotiated> {
        self.calls.get(&id).and_then(|c| c.negotiated.clone())
    }

    /// The address SDP advertises for media.
    pub fn media_address(&self) -> std::net::IpAddr {
        self.config.media_address
    }

    /// A port for an external media endpoint of `id` (one per call).
    pub fn endpoint_port(&mut self, now: Instant, id: CallId) -> Result<u16, CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        if c.endpoint_port.is_some() || c.bridge.is_some() {
            return Err(CallError::WrongState {
                call: id,
                state: c.state,
                action: "attach a media endpoint (it has one, or is bridged)",
            });
        }
        let port = self.ports.allocate(now)?;
        if let Some(c) = self.calls.get_mut(&id) {
            c.endpoint_port = Some(port);
        }
        Ok(port)
    }

    /// Fails unless `id` is answered.
    pub fn check_answered(&self, id: CallId, action: &'static str) -> Result<(), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        if matches!(c.state, CallState::Answered | CallState::Bridged) {
            Ok(())
        } else {
            Err(CallError::WrongState {
                call: id,
                state: c.state,
                action,
            })
        }
    }

    /// Asks the media layer to use what was negotiated for `id`.
    pub(super) fn media_negotiated(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let Some(media) = c.negotiated.clone() else {
            return;
        };
        if c.media_port.is_none() {
            return;
        }
        let answered = matches!(c.state, CallState::Answered | CallState::Bridged);
        let sending =
            answered || (c.state == CallState::EarlyMedia && c.direction == CallDirection::Inbound);
        self.media_ops.push(MediaOp::Negotiated {
            call: id,
            media,
            sending,
            answered,
        });
    }

    /// Ends `id` with `cause` (BYE, CANCEL or a final response as its state
    /// needs): the media layer's verdicts (`media_timeout`, `media_error`).
    pub fn end_with(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        cause: EndCause,
    ) -> Result<(), CallError> {
        let c = self.calls.get_mut(&id).ok_or(CallError::Unknown(id))?;
        if c.pending_end.is_none() {
            c.pending_end = Some(Ended::local(cause, None));
        }
        match (c.direction, c.state) {
            (CallDirection::Inbound, s)
                if !matches!(
                    s,
                    CallState::Answered | CallState::Bridged | CallState::Ending
                ) =>
            {
                self.respond_final(now, ep, id, 500, "Server Internal Error");
                self.finish(now, ep, id, Ended::local(cause, Some(500)));
                Ok(())
            }
            _ => self.hangup(now, ep, id),
        }
    }

    /// The transitions since the last call, in order.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, CallEvent> {
        self.events.drain(..)
    }

    /// Counts by state, derived from the table.
    pub fn live(&self) -> Live {
        let mut by_state: Vec<(&'static str, usize)> =
            CallState::ALL.iter().map(|s| (s.label(), 0)).collect();
        for call in self.calls.values() {
            if let Some(slot) = by_state.iter_mut().find(|(l, _)| *l == call.state.label()) {
                slot.1 += 1;
            }
        }
        Live {
            by_state,
            total: self.calls.len(),
            media_ports: self.ports.in_use(),
        }
    }

    /// One page of live calls, oldest first.
    pub fn page(&self, now: Instant, offset: usize, limit: usize) -> Vec<CallSummary> {
        if limit == 0 {
            // A scrape of /metrics asks for the counts only.
            return Vec::new();
        }
        let mut ids: Vec<&Call> = self.calls.values().collect();
        ids.sort_by_key(|c| (c.created, c.id));
        ids.into_iter()
            .skip(offset)
            .take(limit)
            .map(|c| CallSummary {
                id: c.id,
                name: c.name.clone(),
                sip_call_id: c.sip_call_id.clone(),
                direction: c.direction,
                state: c.state.label(),
                account: c.account.clone(),
                from: c.from.to_string(),
                to: c.to.to_string(),
                age_secs: now.saturating_duration_since(c.created).as_secs(),
                talk_secs: c
                    .answered
                    .map(|a| now.saturating_duration_since(a).as_secs()),
                codec: c.negotiated.as_ref().map(|n| format!("{:?}", n.codec)),
                media_port: c.media_port,
            })
            .collect()
    }

    /// The earliest deadline of any call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Acts on every deadline that passed.
    pub fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, id));
            let Some(kind) = self.calls.get_mut(&id).and_then(|c| {
                let (_, kind) = c.deadline.take()?;
                Some(kind)
            }) else {
                continue;
            };
            self.expired(now, ep, id, kind);
        }
    }

    fn expired(&mut self, now: Instant, ep: &mut Endpoint, id: CallId, kind: Deadline) {
        match kind {
            Deadline::Ring => {
                self.cancel_invite(now, ep, id, Ended::local(EndCause::NoAnswer, None))
            }
            Deadline::TimerC => {
                self.cancel_invite(now, ep, id, Ended::local(EndCause::Timeout, Some(408)));
            }
            Deadline::Answer => {
                self.respond_final(now, ep, id, 480, "Temporarily Unavailable");
                self.finish(now, ep, id, Ended::local(EndCause::NoAnswer, Some(480)));
            }
            Deadline::MaxDuration => {
                self.bye(now, ep, id, Ended::local(EndCause::MaxDuration, None))
            }
            Deadline::SessionRefresh | Deadline::SessionExpired | Deadline::Glare => {
                self.session_due(now, ep, id, kind);
            }
            Deadline::Ending => {
                let ended = self
                    .calls
                    .get(&id)
                    .and_then(|c| c.pending_end)
                    .unwrap_or(Ended::local(EndCause::Timeout, None));
                self.finish(now, ep, id, ended);
            }
        }
    }

    /// Sets `call`'s one deadline.
    pub(super) fn set_deadline(&mut self, id: CallId, at: Instant, kind: Deadline) {
        if let Some(c) = self.calls.get_mut(&id) {
            if let Some((old, _)) = c.deadline.replace((at, kind)) {
                self.deadlines.remove(&(old, id));
            }
            self.deadlines.insert((at, id));
        }
    }

    /// A new call id and its table slot; refused when the table is full.
    pub(super) fn admit(&mut self) -> Result<CallId, CallError> {
        if self.calls.len() >= self.max_calls {
            return Err(CallError::Full(self.calls.len()));
        }
        let id = CallId(self.next_id);
        self.next_id += 1;
        Ok(id)
    }

    /// Moves `call` to `state` and records the transition.
    pub(super) fn transition(
        &mut self,
        now: Instant,
        id: CallId,
        state: CallState,
        code: Option<u16>,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.state == state {
            return;
        }
        c.state = state;
        if state == CallState::Answered && c.answered.is_none() {
            c.answered = Some(now);
        }
        let other = c
            .bridge
            .and_then(|b| self.calls.get(&b))
            .map(|b| b.name.clone());
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let mut event = event(c, now, code, None);
        event.other = other;
        self.events.push(event);
        if matches!(
            state,
            CallState::EarlyMedia | CallState::Answered | CallState::Bridged
        ) {
            self.media_negotiated(id);
        }
        if state == CallState::Answered {
            self.note_media(id);
        }
    }

    /// Reports the negotiated media of `id`.
    pub(super) fn note_media(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let Some(n) = &c.negotiated else {
            return;
        };
        self.notes.push(CallNote {
            name: c.name.clone(),
            kind: super::NoteKind::Media {
                codec: n.codec.encoding_name().to_owned(),
                local_port: c.media_port,
                remote: Some(n.remote.to_string()),
            },
        });
    }

    /// Records `call`'s current state as a transition (its first).
    pub(super) fn record_current(&mut self, now: Instant, id: CallId) {
        if let Some(c) = self.calls.get(&id) {
            let event = event(c, now, None, None);
            self.events.push(event);
        }
    }

    /// Ends `call`: out of the table, its dialog unbound, its port back,
    /// the end recorded.
    pub(super) fn finish(&mut self, now: Instant, ep: &mut Endpoint, id: CallId, ended: Ended) {
        let Some(mut c) = self.calls.remove(&id) else {
            return;
        };
        if let Some((at, _)) = c.deadline.take() {
            self.deadlines.remove(&(at, id));
        }
        if let Some(d) = &c.dialog {
            ep.unbind_dialog(&d.key());
        }
        if let Some(port) = c.endpoint_port.take() {
            self.ports.release(now, port);
        }
        if let Some(port) = c.media_port.take() {
            self.ports.release(now, port);
            self.media_ops.push(MediaOp::Close { call: id });
        }
        if let Some(key) = c.inbound_key.take() {
            self.inbound_keys.remove(&key);
        }
        self.names.remove(&c.name);
        if let Some(limit) = c
            .account
            .as_deref()
            .and_then(|a| self.account_limits.get_mut(a))
        {
            limit.live = limit.live.saturating_sub(1);
        }
        ep.release(Self::owner(id));
        c.state = CallState::Ended;
        tracing::debug!(call = %id, cause = %ended.cause, code = ?ended.code, side = ?ended.side, "call ended");
        let event = event(&c, now, ended.code, Some(ended));
        self.events.push(event);
        if let Some(peer) = c.bridge.take() {
            self.end_bridge_peer(now, ep, peer, ended);
        }
    }

    /// Hangs up: CANCEL before the answer (outbound), a final response
    /// (inbound, unanswered), BYE after.
    pub fn hangup(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) -> Result<(), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        match (c.direction, c.state) {
            (_, CallState::Ending) => Ok(()),
            (_, CallState::Answered | CallState::Bridged) => {
                self.bye(now, ep, id, Ended::local(EndCause::Normal, None));
                Ok(())
            }
            (CallDirection::Outbound, _) => {
                self.cancel_invite(now, ep, id, Ended::local(EndCause::Cancelled, Some(487)));
                Ok(())
            }
            (CallDirection::Inbound, _) => {
                self.respond_final(now, ep, id, 480, "Temporarily Unavailable");
                self.finish(now, ep, id, Ended::local(EndCause::Cancelled, Some(480)));
                Ok(())
            }
        }
    }

    /// Ends every call (shutdown).
    pub fn hangup_all(&mut self, now: Instant, ep: &mut Endpoint) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id)
                && c.pending_end.is_none()
            {
                c.pending_end = Some(Ended::local(EndCause::Shutdown, None));
            }
            let _ = self.hangup(now, ep, id);
        }
    }

    /// Sends a BYE in the call's dialog; the call ends with `ended` when
    /// it completes.
    pub(super) fn bye(&mut self, now: Instant, ep: &mut Endpoint, id: CallId, ended: Ended) {
        let user_agent = self.config.user_agent.clone();
        let ending = self.config.ending;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let ended = *c.pending_end.get_or_insert(ended);
        let Some(d) = c.dialog.as_mut() else {
            self.finish(now, ep, id, ended);
            return;
        };
        let mut bye = d.request("BYE");
        bye.push("User-Agent", &user_agent);
        let hop = d.next_hop;
        match ep.send_request(now, Self::owner(id), OutRequest::new(bye), hop) {
            Ok(txn) => {
                c.bye = Some(txn);
                self.transition(now, id, CallState::Ending, None);
                self.set_deadline(id, now + ending, Deadline::Ending);
            }
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "BYE not sent");
                self.finish(now, ep, id, ended);
            }
        }
    }

    /// Takes an endpoint event; gives back what is not for a call.
    pub fn handle_event(&mut self, now: Instant, ep: &mut Endpoint, event: Event) -> Option<Event> {
        match event {
            Event::Response {
                owner,
                txn,
                response,
                acked_again,
            } => match Self::call_of(owner) {
                Some(id) => {
                    if !acked_again {
                        self.on_response(now, ep, id, txn, &response);
                        if self.bridged_with(id).is_some() {
                            self.bridge_progress(now, ep, id);
                        }
                    }
                    None
                }
                None => Some(Event::Response {
                    owner,
                    txn,
                    response,
                    acked_again,
                }),
            },
            Event::RequestFailed {
                owner,
                txn,
                failure,
            } => match Self::call_of(owner) {
                Some(id) => {
                    self.on_failure(now, ep, id, txn, &failure);
                    None
                }
                None => Some(Event::RequestFailed {
                    owner,
                    txn,
                    failure,
                }),
            },
            Event::InDialog {
                owner,
                txn,
                request,
                source,
            } => match Self::call_of(owner) {
                Some(id) => {
                    self.on_in_dialog(now, ep, id, txn, &request, source);
                    None
                }
                None => Some(Event::InDialog {
                    owner,
                    txn,
                    request,
                    source,
                }),
            },
            Event::Cancelled { owner, invite } => match Self::call_of(owner) {
                Some(id) => {
                    if self
                        .calls
                        .get(&id)
                        .is_some_and(|c| c.invite == Some(invite))
                    {
                        self.respond_final(now, ep, id, 487, "Request Terminated");
                        self.finish(now, ep, id, Ended::remote(EndCause::Cancelled, Some(487)));
                    }
                    None
                }
                None => Some(Event::Cancelled { owner, invite }),
            },
            Event::AckTimeout { owner, invite } => match Self::call_of(owner) {
                Some(id) => {
                    self.bye(now, ep, id, Ended::local(EndCause::AckTimeout, None));
                    None
                }
                None => Some(Event::AckTimeout { owner, invite }),
            },
            Event::FlowLost {
                owner,
                flow,
                transport,
                remote,
                reason,
            } => match Self::call_of(owner) {
                Some(id) => {
                    tracing::info!(call = %id, %flow, %remote, reason = reason.label(), "connection of a call lost");
                    self.finish(now, ep, id, Ended::local(EndCause::Transport, None));
                    None
                }
                None => Some(Event::FlowLost {
                    owner,
                    flow,
                    transport,
                    remote,
                    reason,
                }),
            },
            other => Some(other),
        }
    }

    fn on_failure(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: TxnId,
        failure: &crate::sip::endpoint::Failure,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if c.reinvite.is_some_and(|r| r.txn == txn) {
            self.on_reinvite_failed(now, ep, id);
            return;
        }
        if self.on_info_failed(id, txn) {
            return;
        }
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if c.bye == Some(txn) || c.invite == Some(txn) {
            let fallback = match failure {
                crate::sip::endpoint::Failure::Timeout => {
                    if c.bye == Some(txn) {
                        Ended::local(EndCause::Normal, None)
                    } else {
                        Ended::local(EndCause::Timeout, Some(408))
                    }
                }
                crate::sip::endpoint::Failure::Transport(_) => {
                    Ended::local(EndCause::Transport, None)
                }
                crate::sip::endpoint::Failure::Cancelled => Ended::local(EndCause::Cancelled, None),
            };
            let ended = c.pending_end.unwrap_or(fallback);
            self.finish(now, ep, id, ended);
        }
    }

    /// Builds a reply for an INVITE or in-dialog request of `call`, with its
    /// Contact and (for dialog-creating responses) the Record-Route.
    pub(super) fn reply_for(
        ep: &Endpoint,
        contact_user: &str,
        request: &Message,
        source: Target,
        code: u16,
        reason: &str,
    ) -> Reply {
        let mut reply = Reply::code(code, reason);
        if (101..300).contains(&code) {
            if request.method() == Some(crate::sip::message::Method::Invite) {
                for rr in request.values(crate::sip::message::HeaderName::RecordRoute) {
                    reply = reply.header("Record-Route", rr);
                }
            }
            if let Some(addr) = ep.contact_addr(source) {
                reply = reply.header("Contact", contact(contact_user, addr, source.transport));
            }
        }
        if (200..300).contains(&code) {
            reply = reply.header("Allow", crate::sip::endpoint::ALLOW);
        }
        reply
    }

    /// Inbound: the final response to the INVITE, if not yet sent.
    pub(super) fn respond_final(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        code: u16,
        reason: &str,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.direction != CallDirection::Inbound {
            return;
        }
        let (Some(txn), Some(request), Some(source)) = (c.invite, c.request.take(), c.source)
        else {
            return;
        };
        let reply = Self::reply_for(ep, &c.contact_user, &request, source, code, reason);
        if let Err(e) = ep.respond(now, txn, reply) {
            tracing::debug!(call = %id, code, error = %e, "final response not sent");
        }
    }

    /// A local media description for a new call: a port from the pool.
    pub(super) fn local_media(
        &mut self,
        now: Instant,
        direction: Direction,
    ) -> Result<LocalMedia, MediaError> {
        let port = self.ports.allocate(now)?;
        Ok(self.media_at(port, direction))
    }

    /// Our media description on `port`, without SRTP.
    pub(super) fn media_at(&self, port: u16, direction: Direction) -> LocalMedia {
        let mut media =
            LocalMedia::new(self.config.media_address, port, self.config.codecs.clone());
        media.ptime_ms = self.config.ptime_ms;
        media.direction = direction;
        media.fingerprint = self
            .config
            .dtls_fingerprint
            .clone()
            .map(sdp::Fingerprint::sha256);
        media
    }

    /// Our media description for call `id` on `port`: its SRTP policy and keys.
    pub(super) fn call_media(&self, id: CallId, port: u16, direction: Direction) -> LocalMedia {
        let media = self.media_at(port, direction);
        match self.calls.get(&id) {
            Some(c) => media.with_srtp(c.srtp, c.keys.clone()),
            None => media,
        }
    }

    /// A fresh SDP origin.
    pub(super) fn origin(&mut self) -> Origin {
        let id = self.rng.next_u64() >> 1;
        Origin::new("dialerd", id, 1, self.config.media_address)
    }

    /// A fresh tag.
    pub(super) fn token(&mut self) -> String {
        ids::token_from(self.rng.as_mut())
    }

    /// Outbound or inbound responses and in-dialog requests need the body
    /// read as SDP.
    pub(super) fn sdp_of(msg: &Message) -> Option<SessionDescription> {
        if msg.body().is_empty() {
            return None;
        }
        let text = std::str::from_utf8(msg.body()).ok()?;
        sdp::parse(text).ok()
    }

    /// Whether every live call has a deadline (the table's invariant:
    /// no state lasts for ever).
    pub fn deadlines_cover_every_call(&self) -> bool {
        self.calls.values().all(|c| c.deadline.is_some())
    }

    /// The ring deadline of an outbound call (its `Ring` deadline).
    pub(super) fn ring_or_timer_c(&mut self, now: Instant, id: CallId) {
        let timer_c = now + self.config.timer_c;
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        match c.ring_deadline {
            Some(ring) if ring <= timer_c => self.set_deadline(id, ring, Deadline::Ring),
            _ => self.set_deadline(id, timer_c, Deadline::TimerC),
        }
    }
}

/// `<sip:user@addr;transport=..>`.
pub(super) fn contact(user: &str, addr: std::net::SocketAddr, transport: Transport) -> String {
    let param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    if user.is_empty() {
        format!("<sip:{addr}{param}>")
    } else {
        format!("<sip:{user}@{addr}{param}>")
    }
}

fn event(c: &Call, now: Instant, code: Option<u16>, ended: Option<Ended>) -> CallEvent {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    CallEvent {
        call: c.id,
        name: c.name.clone(),
        from: c.from.clone(),
        to: c.to.clone(),
        answered_ms: c
            .answered
            .map(|a| ms(a.saturating_duration_since(c.created))),
        other: None,
        sip_call_id: c.sip_call_id.clone(),
        direction: c.direction,
        state: c.state,
        code,
        disposition: ended.as_ref().map(|e| {
            if c.answered.is_some() {
                Disposition::Answered
            } else {
                Disposition::unanswered(e)
            }
        }),
        ended,
        account: c.account.clone(),
        elapsed_ms: u64::try_from(now.saturating_duration_since(c.created).as_millis())
            .unwrap_or(u64::MAX),
    }
}

impl Side {
    /// The side's label.
    pub fn label(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}
