//! The SIP core's calls: settings converted at the edge, the commands that
//! place, answer and end calls, and the inbound policy.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::progress::Mode;
use crate::call::{
    AccountLimit, CallConfig, CallError, CallEvent, CallId, CallState, CallSummary, Calls,
    Credentials, Inbound, InboundAction, Live, Originate, PortPool,
};
use crate::config::{InboundPolicy, Settings};
use crate::sdp::{Codec, SrtpPolicy};
use crate::sip::endpoint::Reply;
use crate::sip::message::{Message, Uri};
use crate::sip::target::{Target, Transport};
use crate::sip::transaction::TxnId;

/// Retry-After of the 503 that refuses inbound calls while draining: the
/// PBX tries another contact (the replica that took the account over).
const DRAIN_RETRY_AFTER_SECS: u32 = 30;

/// Events a caller of [`super::SipCore::originate`] may fall behind by.
pub const WATCH_DEPTH: usize = 32;

/// The call table's settings, from `[calls]`, `[media]` and `[limits]`.
pub fn call_config(settings: &Settings, media_address: std::net::IpAddr) -> CallConfig {
    let c = &settings.calls;
    CallConfig {
        ring_timeout: Duration::from_secs(c.ring_timeout_secs),
        min_ring: Duration::from_secs(c.min_ring_secs),
        answer_timeout: Duration::from_secs(c.answer_timeout_secs),
        max_duration: Duration::from_secs(c.max_duration_secs),
        media_address,
        codecs: c
            .codecs
            .iter()
            .filter_map(|n| Codec::from_name(n))
            .collect(),
        ptime_ms: (c.ptime_ms > 0).then_some(c.ptime_ms),
        session_expires: (c.session_expires_secs > 0)
            .then(|| Duration::from_secs(c.session_expires_secs)),
        min_se: Duration::from_secs(c.min_se_secs),
        early_media: c.early_media,
        user_agent: settings.sip.user_agent.clone(),
        ..CallConfig::default()
    }
}

/// A new call table for `settings`; calls without a name get one starting
/// with `name_prefix`.
pub fn call_table(
    settings: &Settings,
    media_address: std::net::IpAddr,
    name_prefix: &str,
) -> Calls {
    let range = settings.media.rtp_port_range;
    let mut calls = Calls::new(
        CallConfig {
            name_prefix: name_prefix.to_owned(),
            ..call_config(settings, media_address)
        },
        PortPool::new(range.start, range.end)
            .with_drain(Duration::from_millis(u64::from(
                settings.media.port_drain_ms,
            )))
            .starting_at(crate::sip::ids::random_u64()),
        usize::try_from(settings.limits.max_concurrent_calls).unwrap_or(usize::MAX),
        Box::new(crate::sip::ids::OsEntropy::new()),
    );
    match OsKeys::new() {
        Ok(keys) => calls = calls.with_key_source(Box::new(keys)),
        Err(e) => tracing::error!(error = %e, "no SRTP key source; SRTP calls will be refused"),
    }
    calls.limit_rate(settings.limits.calls_per_second);
    for account in &settings.accounts {
        let max = account.max_concurrent_calls.unwrap_or(0);
        let rate = account.calls_per_second.unwrap_or(0.0);
        if max > 0 || rate > 0.0 {
            calls.limit_account(
                &account.name,
                AccountLimit::new(usize::try_from(max).unwrap_or(usize::MAX), rate),
            );
        }
    }
    calls
}

/// SDES key material from the operating system's CSPRNG (ring's
/// `SystemRandom`, through the SRTP crypto provider).
struct OsKeys(std::sync::Arc<dyn rtc_srtp::crypto::RTCCryptoProvider>);

impl OsKeys {
    fn new() -> Result<OsKeys, crate::media::srtp::SrtpError> {
        crate::media::srtp::provider().map(OsKeys)
    }
}

impl std::fmt::Debug for OsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OsKeys")
    }
}

impl crate::call::KeySource for OsKeys {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        self.0.random().fill(out).is_ok()
    }
}

/// The SDP layer's policy for a configured SRTP mode.
pub fn srtp_policy(mode: crate::config::SrtpMode) -> SrtpPolicy {
    match mode {
        crate::config::SrtpMode::Off => SrtpPolicy::Off,
        crate::config::SrtpMode::Optional => SrtpPolicy::Optional,
        crate::config::SrtpMode::Required => SrtpPolicy::Required,
        crate::config::SrtpMode::Dtls => SrtpPolicy::Dtls,
    }
}

/// A call to place.
#[derive(Debug, Clone, Default)]
pub struct PlaceCall {
    /// The callee's URI.
    pub to: String,
    /// The account to call through (its registrar or proxy, its identity
    /// and credentials); `None` calls the URI's host directly.
    pub account: Option<String>,
    /// From user part (default: the account's user, or `dialerd`).
    pub from_user: Option<String>,
    /// From display name.
    pub display: Option<String>,
    /// P-Asserted-Identity.
    pub asserted_identity: Option<String>,
    /// `X-` headers.
    pub headers: Vec<(String, String)>,
    /// Ring timeout (default `[calls].ring_timeout_secs`).
    pub ring_timeout: Option<Duration>,
    /// Longest talk time (default `[calls].max_duration_secs`).
    pub max_duration: Option<Duration>,
    /// The call's name (default: made up).
    pub name: Option<String>,
    /// A live call to bridge the new one with.
    pub bridge_to: Option<String>,
    /// An external RTP endpoint to relay the call's audio with.
    pub endpoint: Option<super::RtpEndpoint>,
    /// A voice agent to stream the call's audio with.
    pub agent: Option<Box<crate::media::agent_conn::AgentSpec>>,
    /// SRTP policy (default: the account's, else `[media].srtp`).
    pub srtp: Option<SrtpPolicy>,
    /// The campaign it belongs to (its limit of live calls here).
    pub campaign: Option<crate::call::Campaign>,
    /// Answering-machine detection and the abandon guard, if asked for.
    pub progress: Option<Box<super::progress::Plan>>,
}

/// A call placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its id in the table.
    pub id: CallId,
    /// Its name.
    pub name: Arc<str>,
    /// Where an external RTP endpoint must send its audio.
    pub endpoint: Option<super::Attached>,
}

/// What to do with a live call found by name.
#[derive(Debug, Clone)]
pub enum CallAction {
    /// Hang up.
    Hangup,
    /// Answer (inbound, ringing).
    Answer,
    /// Reject with a status (inbound, ringing).
    Reject(u16),
    /// Bridge with the call of this name.
    Bridge(String),
    /// Hold (`true`) or unhold.
    Hold(bool),
    /// Send DTMF digits.
    Dtmf(String),
    /// Relay the call's audio with an external RTP endpoint.
    Attach(super::RtpEndpoint),
    /// Stream the call's audio with a voice agent; `None` stops it.
    Stream(Option<Box<crate::media::agent_conn::AgentSpec>>),
    /// Play a prompt or tone to the call's peer; `None` stops it.
    Play(Option<Box<crate::media::player::Source>>),
}

/// Why a call could not be placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaceError {
    /// The URI is not a SIP URI with a host.
    #[error("not a SIP URI: {0}")]
    Uri(String),
    /// The account cannot carry calls now.
    #[error("{0}")]
    Account(String),
    /// The host does not resolve.
    #[error("{0}")]
    Resolve(String),
    /// The call table refused it.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The call to bridge with is not live.
    #[error("no live call named {0:?} to bridge with")]
    BridgeTo(String),
    /// The SIP core stopped.
    #[error("SIP core stopped")]
    Stopped,
}

/// Call commands for the core task.
pub enum CallCommand {
    /// Place a call; its events go to `events`.
    Originate {
        /// What to call.
        place: Box<PlaceCall>,
        /// The callee's address, resolved at the edge (direct calls).
        direct: Option<Target>,
        /// Its id, or why not.
        reply: oneshot::Sender<Result<Placed, PlaceError>>,
        /// The call's transitions, besides the event feed.
        events: Option<mpsc::Sender<CallEvent>>,
    },
    /// Act on the live call of a name.
    ByName {
        /// The call's name.
        name: String,
        /// What to do.
        action: CallAction,
        /// Done (with an attached endpoint's address), or why not.
        reply: oneshot::Sender<Result<Option<super::Attached>, CallError>>,
    },
    /// Hang a call up.
    Hangup(CallId, oneshot::Sender<Result<(), CallError>>),
    /// Answer a ringing inbound call.
    Answer(CallId, oneshot::Sender<Result<(), CallError>>),
    /// Reject a ringing inbound call.
    Reject(CallId, u16, oneshot::Sender<Result<(), CallError>>),
    /// Join two legs.
    Bridge(CallId, CallId, oneshot::Sender<Result<(), CallError>>),
    /// Put a call on hold (`true`) or take it off.
    Hold(CallId, bool, oneshot::Sender<Result<(), CallError>>),
    /// The live table: counts and one page.
    List {
        /// Calls to skip.
        offset: usize,
        /// Most calls to list.
        limit: usize,
        /// The answer.
        reply: oneshot::Sender<(Live, Vec<CallSummary>)>,
    },
}

/// The target a direct call's URI names: its host and port, its transport.
pub fn direct_target(uri: &str) -> Result<(Transport, String, u16), PlaceError> {
    let parsed = Uri::parse(uri).map_err(|e| PlaceError::Uri(format!("{uri}: {e}")))?;
    let sip = parsed
        .as_sip()
        .ok_or_else(|| PlaceError::Uri(uri.to_owned()))?;
    let transport = match sip.transport().map(str::to_ascii_lowercase).as_deref() {
        Some("tcp") => Transport::Tcp,
        Some("tls") => Transport::Tls,
        _ if sip.secure => Transport::Tls,
        _ => Transport::Udp,
    };
    let default_port = if transport == Transport::Tls {
        5061
    } else {
        5060
    };
    let host = match &sip.host {
        crate::sip::message::Host::Domain(d) => (*d).to_owned(),
        crate::sip::message::Host::V4(a) => a.to_string(),
        crate::sip::message::Host::V6(a) => a.to_string(),
    };
    Ok((transport, host, sip.port.unwrap_or(default_port)))
}

impl super::Core {
    pub(super) fn on_call_command(&mut self, now: Instant, command: CallCommand) {
        match command {
            CallCommand::Originate {
                place,
                direct,
                reply,
                events,
            } => {
                let bridge_to = place.bridge_to.clone();
                let endpoint = place.endpoint;
                let mut place = place;
                let mut plan = place.progress.take();
                // In sync mode the agent is connected only after `human`.
                let agent = match plan.as_mut() {
                    Some(p) if p.amd.as_ref().is_some_and(|a| a.mode == Mode::Sync) => {
                        p.held_agent = place.agent.take();
                        None
                    }
                    _ => place.agent.clone(),
                };
                let result = self.place(now, *place, direct);
                if let Err(e) = &result {
                    self.publish.sip.call_refused(refusal(e));
                }
                let result = result.and_then(|id| {
                    if let Some(other) = bridge_to {
                        self.bridge_new(now, id, &other)?;
                    }
                    let attached = match endpoint {
                        Some(e) => match self.attach_endpoint(id, e) {
                            Ok(a) => Some(a),
                            Err(err) => {
                                let _ = self.calls.hangup(now, &mut self.ep, id);
                                return Err(err.into());
                            }
                        },
                        None => None,
                    };
                    if let Some(agent) = agent
                        && let Err(err) = self.attach_agent(id, agent)
                    {
                        let _ = self.calls.hangup(now, &mut self.ep, id);
                        return Err(err.into());
                    }
                    Ok((id, attached))
                });
                let placed = result.map(|(id, endpoint)| {
                    if let Some(events) = events {
                        self.watchers.insert(id, events);
                    }
                    if let (Some(plan), Some(name)) = (plan, self.calls.name_of(id)) {
                        self.progress.track(id, name, *plan);
                    }
                    Placed {
                        id,
                        name: self.calls.name_of(id).unwrap_or_else(|| Arc::from("")),
                        endpoint,
                    }
                });
                let _ = reply.send(placed);
            }
            CallCommand::ByName {
                name,
                action,
                reply,
            } => {
                let _ = reply.send(self.act(now, &name, action));
            }
            CallCommand::Hangup(id, reply) => {
                let _ = reply.send(self.calls.hangup(now, &mut self.ep, id));
            }
            CallCommand::Answer(id, reply) => {
                let _ = reply.send(self.calls.answer(now, &mut self.ep, id));
            }
            CallCommand::Reject(id, code, reply) => {
                let _ = reply.send(self.calls.reject(now, &mut self.ep, id, code));
            }
            CallCommand::Bridge(a, b, reply) => {
                let _ = reply.send(self.calls.bridge(now, &mut self.ep, a, b));
            }
            CallCommand::Hold(id, on, reply) => {
                let _ = reply.send(self.calls.hold(now, &mut self.ep, id, on));
            }
            CallCommand::List {
                offset,
                limit,
                reply,
            } => {
                let _ = reply.send((self.calls.live(), self.calls.page(now, offset, limit)));
            }
        }
    }

    /// Bridges the new call `id` with `other`; hangs `id` up if it cannot.
    fn bridge_new(&mut self, now: Instant, id: CallId, other: &str) -> Result<(), PlaceError> {
        let joined = match self.calls.find(other) {
            Some(b) => self
                .calls
                .bridge(now, &mut self.ep, b, id)
                .map_err(PlaceError::from),
            None => Err(PlaceError::BridgeTo(other.to_owned())),
        };
        if joined.is_err() {
            let _ = self.calls.hangup(now, &mut self.ep, id);
        }
        joined
    }

    fn act(
        &mut self,
        now: Instant,
        name: &str,
        action: CallAction,
    ) -> Result<Option<super::Attached>, CallError> {
        let id = self
            .calls
            .find(name)
            .ok_or_else(|| CallError::NotFound(name.to_owned()))?;
        let ep = &mut self.ep;
        match action {
            CallAction::Hangup => self.calls.hangup(now, ep, id),
            CallAction::Answer => self.calls.answer(now, ep, id),
            CallAction::Reject(code) => self.calls.reject(now, ep, id, code),
            CallAction::Bridge(other) => {
                let b = self.calls.find(&other).ok_or(CallError::NotFound(other))?;
                self.calls.bridge(now, ep, id, b)
            }
            CallAction::Hold(on) => self.calls.hold(now, ep, id, on),
            CallAction::Dtmf(digits) => self.dtmf(now, id, &digits),
            CallAction::Attach(endpoint) => return self.attach_endpoint(id, endpoint).map(Some),
            CallAction::Stream(Some(agent)) => self.attach_agent(id, agent),
            CallAction::Stream(None) => {
                self.publish.media.close(id.0 | crate::media::ENDPOINT_BIT);
                Ok(())
            }
            CallAction::Play(source) => {
                self.calls.check_answered(id, "play")?;
                self.publish.media.play(id.0, source.map(|s| *s));
                Ok(())
            }
        }
        .map(|()| None)
    }

    fn place(
        &mut self,
        now: Instant,
        place: PlaceCall,
        direct: Option<Target>,
    ) -> Result<CallId, PlaceError> {
        let origin = match (&place.account, direct) {
            (None, Some(next_hop)) => {
                let user = place.from_user.clone().unwrap_or_else(|| "dialerd".into());
                let host = self
                    .ep
                    .contact_addr(next_hop)
                    .map_or_else(|| next_hop.addr.ip().to_string(), |a| a.ip().to_string());
                Originate {
                    from_uri: format!("sip:{user}@{host}"),
                    next_hop,
                    route: None,
                    credentials: None,
                    account: None,
                    contact_user: user,
                    srtp: place.srtp.unwrap_or(self.default_srtp),
                    ..origin_of(&place)
                }
            }
            (account, _) => {
                let route = self
                    .accounts
                    .call_route(account.as_deref())
                    .map_err(PlaceError::Account)?;
                let user = place
                    .from_user
                    .clone()
                    .unwrap_or_else(|| route.user.clone());
                let to = if place.to.contains(':') {
                    place.to.clone()
                } else {
                    format!("sip:{}@{}", place.to, route.domain)
                };
                Originate {
                    to,
                    from_uri: format!("sip:{user}@{}", route.domain),
                    next_hop: route.next_hop,
                    route: route.route.clone(),
                    credentials: route
                        .credentials
                        .map(|(username, password)| Credentials { username, password }),
                    account: Some(route.name),
                    contact_user: route.user,
                    srtp: place
                        .srtp
                        .or(route.srtp.map(srtp_policy))
                        .unwrap_or(self.default_srtp),
                    ..origin_of(&place)
                }
            }
        };
        Ok(self.calls.originate(now, &mut self.ep, origin)?)
    }

    /// A new INVITE: the call table takes it with the policy of the
    /// account it is for.
    pub(super) fn on_invite(&mut self, now: Instant, txn: TxnId, request: Message, source: Target) {
        if self.draining {
            tracing::info!(
                call_id = request.call_id().unwrap_or_default(),
                "refused an inbound call while draining"
            );
            let reply = Reply::code(503, "Service Unavailable")
                .header("Retry-After", DRAIN_RETRY_AFTER_SECS.to_string());
            if let Err(e) = self.ep.respond(now, txn, reply) {
                tracing::debug!(error = %e, "could not refuse an inbound call");
            }
            return;
        }
        let user = request
            .request_uri()
            .and_then(|u| {
                Uri::parse(u)
                    .ok()
                    .and_then(|u| u.as_sip().and_then(|s| s.user.map(str::to_owned)))
            })
            .unwrap_or_default();
        let account = self.accounts.for_user(&user);
        let policy = account
            .as_ref()
            .and_then(|a| a.inbound)
            .unwrap_or(self.inbound_policy);
        let action = match policy {
            InboundPolicy::Reject => InboundAction::Reject(self.inbound_reject_code),
            InboundPolicy::Answer => InboundAction::Answer,
            InboundPolicy::Ring => InboundAction::Ring,
        };
        let srtp = account
            .as_ref()
            .and_then(|a| a.srtp)
            .map_or(self.default_srtp, srtp_policy);
        let inbound = Inbound {
            action,
            srtp,
            account: account.as_ref().map(|a| a.name.clone()),
            contact_user: account.map_or(user, |a| a.user),
        };
        self.calls
            .incoming(now, &mut self.ep, txn, request, source, inbound);
    }

    /// Publishes the call table's transitions and notes and counts the
    /// ended calls.
    pub(super) fn publish_calls(&mut self) {
        self.apply_media_ops();
        let now = Instant::now();
        let events: Vec<CallEvent> = self.calls.take_events().collect();
        for mut event in events {
            if self.progress.tracks(event.call) {
                let actions = match event.state {
                    CallState::EarlyMedia => self.progress.early_media(event.call),
                    CallState::Answered => self.progress.answered(now, event.call),
                    _ => Vec::new(),
                };
                self.apply_progress(now, actions);
            }
            if let Some(ended) = &event.ended {
                self.publish.sip.call_ended(ended.cause.label());
                if let Some(d) =
                    self.progress
                        .finish(event.call, ended, event.answered_ms.is_some())
                {
                    event.disposition = Some(d);
                }
            }
            if let Some(watcher) = self.watchers.get(&event.call) {
                let _ = watcher.try_send(event.clone());
            }
            if event.ended.is_some() {
                self.watchers.remove(&event.call);
            }
            self.publish
                .events
                .emit(crate::events::CoreEvent::Call(event));
        }
        for note in self.calls.take_notes() {
            self.publish
                .events
                .emit(crate::events::CoreEvent::Note(note));
        }
    }
}

/// The `reason` label of a refused call.
fn refusal(e: &PlaceError) -> &'static str {
    match e {
        PlaceError::Call(CallError::Full(_) | CallError::AccountFull { .. }) => "capacity",
        PlaceError::Call(CallError::RateLimited(_) | CallError::AccountRateLimited { .. }) => {
            "rate_limited"
        }
        PlaceError::Call(CallError::Media(_)) => "media_ports_exhausted",
        PlaceError::Call(CallError::NameInUse(_)) => "name_in_use",
        PlaceError::Account(_) => "account",
        PlaceError::Resolve(_) => "resolve",
        PlaceError::Uri(_) => "uri",
        _ => "other",
    }
}

fn origin_of(place: &PlaceCall) -> Originate {
    Originate {
        to: place.to.clone(),
        from_uri: String::new(),
        display: place.display.clone(),
        asserted_identity: place.asserted_identity.clone(),
        headers: place.headers.clone(),
        next_hop: Target::new(
            Transport::Udp,
            std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        ),
        route: None,
        credentials: None,
        account: None,
        contact_user: String::new(),
        ring_timeout: place.ring_timeout,
        max_duration: place.max_duration,
        name: place.name.clone(),
        srtp: place.srtp.unwrap_or_default(),
        campaign: place.campaign.clone(),
    }
}
