//! The SIP core's calls: settings converted at the edge, the commands that
//! place, answer and end calls, and the inbound policy.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::call::{
    CallConfig, CallError, CallEvent, CallId, CallSummary, Calls, Credentials, Inbound,
    InboundAction, Live, Originate, PortPool,
};
use crate::config::{InboundPolicy, Settings};
use crate::sdp::Codec;
use crate::sip::message::{Message, Uri};
use crate::sip::target::{Target, Transport};
use crate::sip::transaction::TxnId;

/// Events a caller of [`super::SipCore::originate`] may fall behind by.
pub const WATCH_DEPTH: usize = 32;

/// The call table's settings, from `[calls]`, `[media]` and `[limits]`.
pub fn call_config(settings: &Settings, media_address: std::net::IpAddr) -> CallConfig {
    let c = &settings.calls;
    CallConfig {
        ring_timeout: Duration::from_secs(c.ring_timeout_secs),
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

/// A new call table for `settings`.
pub fn call_table(settings: &Settings, media_address: std::net::IpAddr) -> Calls {
    let range = settings.media.rtp_port_range;
    let mut calls = Calls::new(
        call_config(settings, media_address),
        PortPool::new(range.start, range.end),
        usize::try_from(settings.limits.max_concurrent_calls).unwrap_or(usize::MAX),
        Box::new(crate::sip::ids::OsEntropy::new()),
    );
    calls.limit_rate(settings.limits.calls_per_second);
    calls
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
        reply: oneshot::Sender<Result<CallId, PlaceError>>,
        /// The call's transitions.
        events: mpsc::Sender<CallEvent>,
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
                let result = self.place(now, *place, direct);
                if let Ok(id) = &result {
                    self.watchers.insert(*id, events);
                }
                let _ = reply.send(result);
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
                Originate {
                    from_uri: format!("sip:{user}@{}", route.domain),
                    next_hop: route.next_hop,
                    route: route.route.clone(),
                    credentials: route
                        .credentials
                        .map(|(username, password)| Credentials { username, password }),
                    account: Some(route.name),
                    contact_user: route.user,
                    ..origin_of(&place)
                }
            }
        };
        Ok(self.calls.originate(now, &mut self.ep, origin)?)
    }

    /// A new INVITE: the call table takes it with the policy of the
    /// account it is for.
    pub(super) fn on_invite(&mut self, now: Instant, txn: TxnId, request: Message, source: Target) {
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
        let inbound = Inbound {
            action,
            account: account.as_ref().map(|a| a.name.clone()),
            contact_user: account.map_or(user, |a| a.user),
        };
        self.calls
            .incoming(now, &mut self.ep, txn, request, source, inbound);
    }

    /// Publishes the call table's transitions and counts the ended calls.
    pub(super) fn publish_calls(&mut self) {
        for change in self.calls.take_port_changes() {
            self.publish.media.send(change);
        }
        for event in self.calls.take_events() {
            if let Some(ended) = &event.ended {
                self.publish.sip.call_ended(ended.cause.label());
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
    }
}
