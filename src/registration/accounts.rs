//! Every account's registration machine as an owner on the SIP endpoint,
//! run inside the SIP core task (no task per REGISTER): sends what the
//! machines emit, feeds back responses, failures, flow losses and time,
//! and reports each account's state. Names that need DNS are looked up by
//! the core task and handed back with [`Accounts::resolved`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::machine::{Backoff, Failure, RegConfig, RegOutput, RegState, Registration};
use crate::config::{AccountSettings, RegistrationSettings, Transport, parse_fingerprint};
use crate::lease::Permit;
use crate::metrics::RegistrationMetrics;
use crate::sip::endpoint::{
    self, ContactSpec, Endpoint, Event, OutRequest, OwnerId, PeerOptions, TlsClient,
};
use crate::sip::ids::Entropy;
use crate::sip::message::{Host, OutMessage, Uri};
use crate::sip::target::Target;
use crate::sip::transaction::TxnId;
use crate::sip::transport::tls::{self, Trust};

/// Owner ids of accounts start here (account `i` is `BASE + i`).
const BASE: u64 = 1 << 48;

/// Published state of one account (in `/status`, and on Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountStatus {
    /// Account name.
    pub name: String,
    /// `unregistered`, `registering`, `registered`, `backoff`, `failed`, `unregistering`.
    pub state: &'static str,
    /// Registrar URI in use.
    pub registrar: String,
    /// Transport.
    pub transport: Transport,
    /// Whether readiness waits for it.
    pub required: bool,
    /// When the binding lapses (registered), Unix milliseconds.
    pub expires_at_unix_ms: Option<u64>,
    /// Next attempt (backoff, failed), Unix milliseconds.
    pub retry_at_unix_ms: Option<u64>,
    /// SIP status of a definitive rejection.
    pub code: Option<u16>,
    /// The last error (a TLS or transport problem, a SIP status).
    pub last_error: Option<String>,
    /// The Contact registered (registered).
    pub contact: Option<String>,
    /// With account leases: `active` (this instance holds the lease and
    /// registers the account) or `standby`.
    pub role: Option<&'static str>,
}

/// What a call through an account needs.
#[derive(Debug, Clone)]
pub struct AccountRoute {
    /// The account's name.
    pub name: String,
    /// Its registrar or proxy, resolved, on the account's transport (its
    /// registered connection when that transport is TCP or TLS).
    pub next_hop: Target,
    /// Its address of record (the From URI).
    pub aor: String,
    /// The domain calls are addressed in.
    pub domain: String,
    /// Digest user name and password.
    pub credentials: Option<(String, String)>,
    /// A Route to preload (the outbound proxy).
    pub route: Option<String>,
    /// Contact user part.
    pub user: String,
    /// Inbound policy, if the account has its own.
    pub inbound: Option<crate::config::InboundPolicy>,
    /// SRTP policy, if the account has its own.
    pub srtp: Option<crate::config::SrtpMode>,
}

/// A name the core task is to resolve for an account's attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The account.
    pub account: usize,
    /// The attempt waiting for it.
    pub attempt: u64,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

struct Account {
    settings: AccountSettings,
    transport: Transport,
    registrars: Vec<String>,
    proxy: Option<String>,
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    keepalive: Option<Duration>,
    machine: Registration,
    target: Option<Target>,
    in_flight: Option<(TxnId, u64)>,
    waiting_dns: Option<(u64, String, OutMessage, bool)>,
    /// With leases: what the lease allows, and the highest fence token seen.
    permit: Option<Permit>,
    fence: u64,
}

impl Account {
    /// Whether a REGISTER may leave now.
    fn permitted(&self, coordinated: bool, now: Instant) -> bool {
        !coordinated || self.permit.as_ref().is_some_and(|p| p.until > now)
    }
}

/// Every account.
pub struct Accounts {
    list: Vec<Account>,
    started: (Instant, SystemTime),
    lookups: Vec<Lookup>,
    metrics: Arc<RegistrationMetrics>,
    transitions: Vec<AccountStatus>,
    coordinated: bool,
}

impl Accounts {
    /// Machines for `accounts`; `contact_ip` is the address their Contact
    /// starts with (the endpoint writes the real one per flow); `rng` makes
    /// each machine's randomness.
    pub fn new(
        accounts: &[AccountSettings],
        policy: &RegistrationSettings,
        user_agent: &str,
        instance_id: &str,
        contact_ip: std::net::IpAddr,
        rng: &mut dyn FnMut() -> Box<dyn Entropy>,
        metrics: Arc<RegistrationMetrics>,
    ) -> Self {
        let backoff = Backoff {
            initial: Duration::from_millis(policy.backoff_initial_ms),
            max: Duration::from_millis(policy.backoff_max_ms),
            forbidden: Duration::from_secs(policy.forbidden_retry_secs),
        };
        let list = accounts
            .iter()
            .map(|a| account(a, backoff, user_agent, instance_id, contact_ip, rng()))
            .collect::<Vec<_>>();
        let started = (Instant::now(), SystemTime::now());
        // Each account's first state is its first transition.
        let transitions = list.iter().map(|a| status(a, false, started)).collect();
        Self {
            list,
            started,
            lookups: Vec::new(),
            metrics,
            transitions,
            coordinated: false,
        }
    }

    /// Accounts registered only under a lease ([`Accounts::set_permit`]):
    /// none starts on its own.
    pub fn coordinate(&mut self) {
        self.coordinated = true;
        self.transitions = self.statuses();
    }

    /// A lease's permit for account `name` (`None`: revoked). A permit with
    /// a lower fence token than one already seen is stale and ignored; a
    /// fresh one starts the registration (removing the binding the previous
    /// holder left, if any); a revocation unregisters the account.
    pub fn set_permit(&mut self, now: Instant, name: &str, permit: Option<Permit>) {
        let Some(a) = self.list.iter_mut().find(|a| a.settings.name == name) else {
            return;
        };
        match permit {
            Some(mut p) => {
                if p.token < a.fence {
                    tracing::warn!(
                        account = name,
                        token = p.token,
                        fence = a.fence,
                        "ignored a stale lease permit"
                    );
                    return;
                }
                a.fence = p.token;
                let retire = p.retire.take();
                let fresh = a.permit.is_none();
                a.permit = Some(p);
                if fresh {
                    if let Some(contact) = retire {
                        a.machine.retire(contact);
                    }
                    a.machine.start(now);
                }
            }
            None => {
                if a.permit.take().is_some() {
                    a.machine.stop(now);
                }
            }
        }
    }

    /// The owner id of account `i` on the endpoint.
    pub fn owner(i: usize) -> OwnerId {
        OwnerId(BASE + i as u64)
    }

    /// The account an owner id names.
    pub fn owns(&self, owner: OwnerId) -> Option<usize> {
        let i = usize::try_from(owner.0.checked_sub(BASE)?).ok()?;
        (i < self.list.len()).then_some(i)
    }

    /// Starts every account (with leases, the ones permitted).
    pub fn start_all(&mut self, now: Instant) {
        let coordinated = self.coordinated;
        for a in &mut self.list {
            if a.permitted(coordinated, now) {
                a.machine.start(now);
            }
        }
    }

    /// Registers or unregisters one account; its state after, or `None`
    /// when there is no such account.
    pub fn control(&mut self, now: Instant, name: &str, register: bool) -> Option<&'static str> {
        let a = self.list.iter_mut().find(|a| a.settings.name == name)?;
        if register && !a.permitted(self.coordinated, now) {
            return Some("standby");
        }
        if register {
            a.machine.start(now);
        } else {
            a.machine.stop(now);
        }
        Some(a.machine.state().name())
    }

    /// Unregisters every account.
    pub fn stop_all(&mut self, now: Instant) {
        for a in &mut self.list {
            a.machine.stop(now);
        }
    }

    /// Whether every account is unregistered.
    pub fn all_stopped(&self) -> bool {
        self.list.iter().all(|a| a.machine.is_stopped())
    }

    /// When [`Accounts::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let permits = self
            .list
            .iter()
            .filter_map(|a| a.permit.as_ref().map(|p| p.until));
        self.list
            .iter()
            .filter_map(|a| a.machine.poll_timeout())
            .chain(permits)
            .min()
    }

    /// Runs due refreshes and retries; unregisters accounts whose permit
    /// ran out (the lease was not renewed in time).
    pub fn handle_timeout(&mut self, now: Instant) {
        for a in &mut self.list {
            if a.permit.as_ref().is_some_and(|p| p.until <= now) {
                tracing::warn!(account = %a.settings.name, "account lease permit ran out; unregistering");
                a.permit = None;
                a.machine.stop(now);
            }
            a.machine.handle_timeout(now);
        }
    }

    /// Names to resolve, taken.
    pub fn take_lookups(&mut self) -> Vec<Lookup> {
        std::mem::take(&mut self.lookups)
    }

    /// An endpoint event for one of the accounts.
    pub fn on_event(&mut self, now: Instant, ep: &Endpoint, event: Event) {
        match event {
            Event::Response {
                owner,
                txn,
                response,
                ..
            } => {
                let Some(a) = self.owns(owner).and_then(|i| self.list.get_mut(i)) else {
                    return;
                };
                let Some((expected, attempt)) = a.in_flight else {
                    return;
                };
                if expected != txn || response.status().is_none_or(|c| c < 200) {
                    return;
                }
                a.in_flight = None;
                if let Some(addr) = a.target.and_then(|t| ep.contact_addr(t)) {
                    a.machine
                        .set_contact(contact_uri(&a.settings.username, addr, a.transport));
                }
                a.machine.on_result(now, attempt, Ok(response));
            }
            Event::RequestFailed {
                owner,
                txn,
                failure,
            } => {
                let Some(a) = self.owns(owner).and_then(|i| self.list.get_mut(i)) else {
                    return;
                };
                if let Some((expected, attempt)) = a.in_flight
                    && expected == txn
                {
                    a.in_flight = None;
                    let failure = match failure {
                        endpoint::Failure::Timeout => Failure::Timeout,
                        endpoint::Failure::Transport(why) => Failure::Transport(why),
                        other @ endpoint::Failure::Cancelled => {
                            Failure::Transport(other.to_string())
                        }
                    };
                    a.machine.on_result(now, attempt, Err(failure));
                }
            }
            Event::FlowLost {
                owner,
                flow,
                transport,
                remote,
                reason,
            } => {
                let Some(a) = self.owns(owner).and_then(|i| self.list.get_mut(i)) else {
                    return;
                };
                tracing::info!(account = %a.settings.name, %flow, %transport, %remote, reason = reason.label(), "registration flow lost; registering again");
                a.machine.flow_closed(now);
            }
            _ => {}
        }
    }

    /// Sends what the machines emitted; true when anything happened (the
    /// caller loops until quiet).
    pub fn flush(&mut self, now: Instant, ep: &mut Endpoint) -> bool {
        let mut any = false;
        for i in 0..self.list.len() {
            while let Some(output) = self.list.get_mut(i).and_then(|a| a.machine.poll_output()) {
                any = true;
                let Some(a) = self.list.get_mut(i) else {
                    break;
                };
                match output {
                    RegOutput::State(state) => {
                        log_state(&a.settings.name, &state);
                        let now_status = status_in(a, &state, self.coordinated, self.started);
                        self.transitions.push(now_status);
                    }
                    RegOutput::Send {
                        attempt,
                        registrar,
                        request,
                        contact_as_is,
                    } => {
                        // The fence: no REGISTER leaves without a live
                        // permit (an unREGISTER always may).
                        if binds(&request) && !a.permitted(self.coordinated, now) {
                            tracing::warn!(account = %a.settings.name, "no account lease; not registering");
                            a.permit = None;
                            a.machine.stop(now);
                            continue;
                        }
                        self.metrics.request(&a.settings.name);
                        let uri = a.proxy.clone().unwrap_or_else(|| {
                            a.registrars.get(registrar).cloned().unwrap_or_default()
                        });
                        self.route(now, ep, i, attempt, &uri, request, contact_as_is);
                    }
                }
            }
        }
        any
    }

    /// A name looked up for `account`'s `attempt`.
    pub fn resolved(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        account: usize,
        attempt: u64,
        result: Result<SocketAddr, String>,
    ) {
        let Some(a) = self.list.get_mut(account) else {
            return;
        };
        // A stale answer (for an attempt the machine has moved past) must
        // not take the current attempt's request.
        if a.waiting_dns.as_ref().is_none_or(|(w, ..)| *w != attempt) {
            return;
        }
        let Some((_, host, request, as_is)) = a.waiting_dns.take() else {
            return;
        };
        // The fence again: the permit may have run out during the lookup.
        if binds(&request) && !a.permitted(self.coordinated, now) {
            tracing::warn!(account = %a.settings.name, "account lease ran out during the registrar lookup; not registering");
            a.permit = None;
            a.machine.stop(now);
            return;
        }
        match result {
            Ok(addr) => self.send(now, ep, account, attempt, &host, addr, request, as_is),
            Err(why) => a
                .machine
                .on_result(now, attempt, Err(Failure::Transport(why))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        i: usize,
        attempt: u64,
        uri: &str,
        request: OutMessage,
        as_is: bool,
    ) {
        let Some(a) = self.list.get_mut(i) else {
            return;
        };
        let parsed = Uri::parse(uri).ok();
        let Some(sip) = parsed.as_ref().and_then(Uri::as_sip) else {
            let why = format!("{uri}: not a SIP URI");
            a.machine
                .on_result(now, attempt, Err(Failure::Transport(why)));
            return;
        };
        let port = sip.port.unwrap_or(if a.transport == Transport::Tls {
            5061
        } else {
            5060
        });
        let host = host_text(&sip.host);
        match sip.host.ip() {
            Some(ip) => self.send(
                now,
                ep,
                i,
                attempt,
                &host,
                SocketAddr::new(ip, port),
                request,
                as_is,
            ),
            None => {
                a.waiting_dns = Some((attempt, host.clone(), request, as_is));
                self.lookups.push(Lookup {
                    account: i,
                    attempt,
                    host,
                    port,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        i: usize,
        attempt: u64,
        host: &str,
        addr: SocketAddr,
        mut request: OutMessage,
        as_is: bool,
    ) {
        let Some(a) = self.list.get_mut(i) else {
            return;
        };
        let target = Target::new(a.transport, addr);
        a.target = Some(target);
        let tls = match &a.tls {
            Err(e) => {
                a.machine
                    .on_result(now, attempt, Err(Failure::Transport(e.clone())));
                return;
            }
            Ok(None) => None,
            Ok(Some(config)) => match tls::server_name(host) {
                Ok(name) => Some(TlsClient {
                    config: config.clone(),
                    name,
                }),
                Err(e) => {
                    a.machine
                        .on_result(now, attempt, Err(Failure::Transport(e)));
                    return;
                }
            },
        };
        if a.transport != Transport::Udp {
            ep.configure_peer(
                (a.transport, addr),
                PeerOptions {
                    keepalive: a.keepalive,
                    tls,
                },
            );
        }
        // The endpoint writes the Contact with the address of the flow the
        // REGISTER leaves on; the machine's parameters are kept. Another
        // binding's Contact (being removed) is sent as it is.
        let out = if as_is {
            OutRequest::new(request)
        } else {
            let params = request
                .remove_header("Contact")
                .and_then(|c| c.split_once('>').map(|(_, p)| p.to_owned()))
                .unwrap_or_default();
            OutRequest::new(request).with_contact(ContactSpec {
                user: a.settings.username.clone(),
                params,
            })
        };
        match ep.send_request(now, Self::owner(i), out, target) {
            Ok(txn) => a.in_flight = Some((txn, attempt)),
            Err(e) => a
                .machine
                .on_result(now, attempt, Err(Failure::Transport(e.to_string()))),
        }
    }

    /// The addresses of the registrars and proxies in use.
    pub fn peer_ips(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.list
            .iter()
            .filter_map(|a| a.target.map(|t| t.addr.ip()))
    }

    /// What a call through account `name` (the first account when `None`)
    /// needs; `Err` says why there is none.
    pub fn call_route(&self, name: Option<&str>) -> Result<AccountRoute, String> {
        let a = match name {
            Some(n) => self
                .list
                .iter()
                .find(|a| a.settings.name == n)
                .ok_or_else(|| format!("no account named {n:?}"))?,
            None => self.list.first().ok_or("no account configured")?,
        };
        let next_hop = a.target.ok_or_else(|| {
            format!(
                "account {:?} has not resolved its registrar yet",
                a.settings.name
            )
        })?;
        let domain = Uri::parse(&a.settings.registrar)
            .ok()
            .and_then(|u| u.as_sip().map(|s| host_text(&s.host)))
            .unwrap_or_default();
        Ok(AccountRoute {
            name: a.settings.name.clone(),
            next_hop,
            aor: format!("sip:{}@{domain}", a.settings.username),
            domain,
            credentials: a.settings.password.as_ref().map(|p| {
                (
                    a.settings
                        .auth_username
                        .clone()
                        .unwrap_or_else(|| a.settings.username.clone()),
                    p.expose().to_owned(),
                )
            }),
            route: a.proxy.as_ref().map(|p| format!("<{p};lr>")),
            user: a.settings.username.clone(),
            inbound: a.settings.inbound,
            srtp: a.settings.srtp,
        })
    }

    /// The account an inbound request for `user` is for: the one whose
    /// user name it is.
    pub fn for_user(&self, user: &str) -> Option<AccountRoute> {
        let a = self.list.iter().find(|a| a.settings.username == user)?;
        self.call_route(Some(&a.settings.name)).ok().or_else(|| {
            Some(AccountRoute {
                name: a.settings.name.clone(),
                next_hop: Target::new(a.transport, SocketAddr::from(([0, 0, 0, 0], 0))),
                aor: String::new(),
                domain: String::new(),
                credentials: None,
                route: None,
                user: a.settings.username.clone(),
                inbound: a.settings.inbound,
                srtp: a.settings.srtp,
            })
        })
    }

    /// Every account's state.
    pub fn statuses(&self) -> Vec<AccountStatus> {
        self.list
            .iter()
            .map(|a| status(a, self.coordinated, self.started))
            .collect()
    }

    /// The state transitions since the last call, in order: each account's
    /// status as it was when its machine changed state.
    pub fn take_transitions(&mut self) -> std::vec::Drain<'_, AccountStatus> {
        self.transitions.drain(..)
    }
}

fn account(
    a: &AccountSettings,
    backoff: Backoff,
    user_agent: &str,
    instance_id: &str,
    contact_ip: std::net::IpAddr,
    rng: Box<dyn Entropy>,
) -> Account {
    let transport = a.transport.unwrap_or(Transport::Udp);
    let mut registrars = vec![a.registrar.clone()];
    registrars.extend(a.failover_registrars.iter().cloned());
    let host = Uri::parse(&a.registrar)
        .ok()
        .and_then(|u| u.as_sip().map(|s| host_text(&s.host)))
        .unwrap_or_else(|| "invalid".into());
    let tls = if transport == Transport::Tls {
        let trust = match (&a.tls_fingerprint_sha256, &a.tls_ca_file) {
            (Some(fp), _) => parse_fingerprint(fp).map(Trust::Pinned),
            (None, Some(ca)) => Ok(Trust::CaFile(ca.clone())),
            (None, None) => Ok(Trust::System),
        };
        trust
            .and_then(|t| tls::client_config(&t).map_err(|e| e.to_string()))
            .map(Some)
            .map_err(|e| format!("TLS trust: {e}"))
    } else {
        Ok(None)
    };
    let config = RegConfig {
        aor: format!("sip:{}@{host}", a.username),
        registrars: registrars.clone(),
        contact: contact_uri(&a.username, SocketAddr::new(contact_ip, 0), transport),
        auth_username: a
            .auth_username
            .clone()
            .unwrap_or_else(|| a.username.clone()),
        password: a.password.clone(),
        expires: a.expires_secs.unwrap_or(3600),
        outbound: a.outbound.unwrap_or(false),
        instance: instance_urn(instance_id, &a.name),
        route: a.outbound_proxy.as_ref().map(|p| format!("<{p};lr>")),
        user_agent: user_agent.to_owned(),
        backoff,
    };
    Account {
        transport,
        registrars,
        proxy: a.outbound_proxy.clone(),
        tls,
        keepalive: a
            .keepalive_secs
            .filter(|k| *k > 0 && transport != Transport::Udp)
            .map(|k| Duration::from_secs(u64::from(k))),
        machine: Registration::new(config, rng),
        target: None,
        in_flight: None,
        waiting_dns: None,
        permit: None,
        fence: 0,
        settings: a.clone(),
    }
}

/// Whether a REGISTER creates or refreshes a binding (Expires not 0).
fn binds(request: &OutMessage) -> bool {
    request
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("Expires"))
        .is_some_and(|(_, e)| e.trim() != "0")
}

/// A stable `+sip.instance` per instance and account (RFC 5626 §4.1).
fn instance_urn(instance_id: &str, account: &str) -> String {
    let digest = Sha256::digest(format!("dialerd:{instance_id}:{account}"));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let part = |from: usize, to: usize| hex.get(from..to).unwrap_or_default();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

/// The Contact URI the endpoint writes for `user` at `addr`.
fn contact_uri(user: &str, addr: SocketAddr, transport: Transport) -> String {
    let param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    format!("sip:{user}@{addr}{param}")
}

fn host_text(host: &Host<'_>) -> String {
    match host {
        Host::Domain(d) => (*d).to_owned(),
        Host::V4(a) => a.to_string(),
        Host::V6(a) => a.to_string(),
    }
}

fn log_state(account: &str, state: &RegState) {
    match state {
        RegState::Registered { expires_at } => {
            let secs = expires_at
                .saturating_duration_since(Instant::now())
                .as_secs();
            tracing::info!(account, expires_in_secs = secs, "registered");
        }
        RegState::Backoff {
            until, last_error, ..
        } => {
            let secs = until
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            tracing::warn!(account, error = %last_error, retry_in_secs = secs, "registration failed; backing off");
        }
        RegState::Failed {
            code,
            reason,
            retry_at,
        } => {
            let secs = retry_at.saturating_duration_since(Instant::now()).as_secs();
            tracing::error!(account, code, %reason, retry_in_secs = secs, "registration refused");
        }
        RegState::Unregistered => tracing::info!(account, "unregistered"),
        other => tracing::debug!(account, state = other.name(), "registration state"),
    }
}

fn unix_ms(at: Instant, started: (Instant, SystemTime)) -> Option<u64> {
    let wall = if at >= started.0 {
        started.1 + (at - started.0)
    } else {
        started.1 - (started.0 - at)
    };
    wall.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
}

fn status(a: &Account, coordinated: bool, started: (Instant, SystemTime)) -> AccountStatus {
    status_in(a, a.machine.state(), coordinated, started)
}

/// `a`'s status with its machine in `state`.
fn status_in(
    a: &Account,
    state: &RegState,
    coordinated: bool,
    started: (Instant, SystemTime),
) -> AccountStatus {
    let (expires, retry, code, error) = match state {
        RegState::Registered { expires_at } => {
            (unix_ms(*expires_at, started), None, Some(200), None)
        }
        RegState::Backoff {
            until,
            last_error,
            code,
        } => (
            None,
            unix_ms(*until, started),
            *code,
            Some(last_error.clone()),
        ),
        RegState::Failed {
            code,
            reason,
            retry_at,
        } => (
            None,
            unix_ms(*retry_at, started),
            Some(*code),
            Some(reason.clone()),
        ),
        _ => (None, None, None, None),
    };
    AccountStatus {
        name: a.settings.name.clone(),
        state: state.name(),
        registrar: a
            .registrars
            .get(a.machine.registrar())
            .cloned()
            .unwrap_or_default(),
        transport: a.transport,
        required: a.settings.required.unwrap_or(true),
        expires_at_unix_ms: expires,
        retry_at_unix_ms: retry,
        code,
        last_error: error,
        contact: matches!(state, RegState::Registered { .. })
            .then(|| a.machine.contact().to_owned()),
        role: coordinated.then_some(if a.permit.is_some() {
            "active"
        } else {
            "standby"
        }),
    }
}
