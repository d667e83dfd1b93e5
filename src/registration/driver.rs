//! The task that runs every account's registration machine over the SIP
//! stack: resolves registrars, sends, feeds back outcomes, flow losses and
//! time, and publishes each account's state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::machine::{Backoff, Failure, RegConfig, RegOutput, RegState, Registration};
use crate::config::{AccountSettings, RegistrationSettings, Transport, parse_fingerprint};
use crate::metrics::RegistrationMetrics;
use crate::sip::message::{Host, OutMessage, Uri};
use crate::sip::stack::{Request, RequestError, Stack, StackEvent, TlsClient};
use crate::sip::target::Target;
use crate::sip::transport::tls::{self, Trust};

/// Longest a registrar name lookup may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Published state of one account (in `/status`, and later on Redis).
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
}

enum Command {
    Stop(oneshot::Sender<()>),
    Control {
        account: String,
        register: bool,
        reply: oneshot::Sender<Option<&'static str>>,
    },
}

/// Handle to the registration task.
#[derive(Debug, Clone)]
pub struct Registrations {
    commands: mpsc::Sender<Command>,
}

impl Registrations {
    /// Registers (`register`) or unregisters one account; returns its state
    /// afterwards, or `None` for an unknown account.
    pub async fn control(&self, account: &str, register: bool) -> Option<&'static str> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Control {
            account: account.to_owned(),
            register,
            reply,
        };
        self.commands.send(command).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Unregisters every account and waits until all are done, or `limit`
    /// passes (a registrar that does not answer must not hold up shutdown);
    /// returns whether every unREGISTER finished.
    pub async fn stop(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_err() {
            return true;
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(
                    ?limit,
                    "unregistering did not finish in time; stopping anyway"
                );
                false
            }
        }
    }
}

/// One account's static parts.
struct Account {
    settings: AccountSettings,
    transport: Transport,
    registrars: Vec<String>,
    proxy: Option<String>,
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    keepalive: Option<Duration>,
    machine: Registration,
    target: Option<Target>,
}

struct Outcome {
    account: usize,
    attempt: u64,
    target: Option<Target>,
    result: Result<crate::sip::message::Message, Failure>,
}

/// What the driver reports to, besides its own log.
pub struct Publish {
    /// Account states, for `/status`, `/metrics` and `/readyz`.
    pub status: watch::Sender<Vec<AccountStatus>>,
    /// Counters.
    pub metrics: Arc<RegistrationMetrics>,
}

/// Starts the task: every account registers at once.
pub fn spawn(
    accounts: &[AccountSettings],
    policy: &RegistrationSettings,
    user_agent: &str,
    instance_id: &str,
    stack: Stack,
    events: mpsc::Receiver<StackEvent>,
    publish: Publish,
) -> (Registrations, JoinHandle<()>) {
    let backoff = Backoff {
        initial: Duration::from_millis(policy.backoff_initial_ms),
        max: Duration::from_millis(policy.backoff_max_ms),
        forbidden: Duration::from_secs(policy.forbidden_retry_secs),
    };
    let accounts: Vec<Account> = accounts
        .iter()
        .map(|a| account(a, backoff, user_agent, instance_id, &stack))
        .collect();
    let started = (Instant::now(), SystemTime::now());
    // Published before the task runs, so readiness never sees an empty list.
    publish
        .status
        .send_replace(accounts.iter().map(|a| status(a, started)).collect());
    let (commands, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(accounts, stack, events, rx, publish, started));
    (Registrations { commands }, task)
}

fn account(
    a: &AccountSettings,
    backoff: Backoff,
    user_agent: &str,
    instance_id: &str,
    stack: &Stack,
) -> Account {
    let transport = a.transport.unwrap_or(Transport::Udp);
    let mut registrars = vec![a.registrar.clone()];
    registrars.extend(a.failover_registrars.iter().cloned());
    let host = uri_host(&a.registrar).unwrap_or_else(|| "invalid".into());
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
    // A stable +sip.instance per instance and account (RFC 5626 §4.1).
    let digest = Sha256::digest(format!("dialerd:{instance_id}:{}", a.name));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let instance = format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    // The Contact address is that of the first registrar's direction; the
    // port is the listener's for this transport.
    let toward = uri_host(&a.registrar)
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .map_or_else(
            || SocketAddr::from(([192, 0, 2, 1], 5060)),
            |ip| SocketAddr::new(ip, 5060),
        );
    let contact_addr = stack.contact_addr(transport, toward);
    let param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    let contact = format!("sip:{}@{contact_addr}{param}", a.username);
    let config = RegConfig {
        aor: format!("sip:{}@{host}", a.username),
        registrars: registrars.clone(),
        contact,
        auth_username: a
            .auth_username
            .clone()
            .unwrap_or_else(|| a.username.clone()),
        password: a.password.clone(),
        expires: a.expires_secs.unwrap_or(3600),
        outbound: a.outbound.unwrap_or(false),
        instance,
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
        machine: Registration::new(config, Box::new(crate::sip::ids::OsEntropy::new())),
        target: None,
        settings: a.clone(),
    }
}

fn uri_host(uri: &str) -> Option<String> {
    match Uri::parse(uri).ok()? {
        Uri::Sip(s) => Some(match s.host {
            Host::Domain(d) => d.to_owned(),
            Host::V4(a) => a.to_string(),
            Host::V6(a) => a.to_string(),
        }),
        _ => None,
    }
}

async fn run(
    mut accounts: Vec<Account>,
    stack: Stack,
    mut events: mpsc::Receiver<StackEvent>,
    mut commands: mpsc::Receiver<Command>,
    publish: Publish,
    started: (Instant, SystemTime),
) {
    let (results_tx, mut results) = mpsc::channel::<Outcome>(64);
    let mut stopping: Option<oneshot::Sender<()>> = None;
    let now = Instant::now();
    for a in &mut accounts {
        a.machine.start(now);
    }
    loop {
        for (i, a) in accounts.iter_mut().enumerate() {
            drain(i, a, &stack, &results_tx, &publish.metrics);
        }
        publish
            .status
            .send_replace(accounts.iter().map(|a| status(a, started)).collect());
        if let Some(done) = stopping.take() {
            if accounts.iter().all(|a| a.machine.is_stopped()) {
                let _ = done.send(());
                return;
            }
            stopping = Some(done);
        }
        let next = accounts
            .iter()
            .filter_map(|a| a.machine.poll_timeout())
            .min();
        tokio::select! {
            Some(outcome) = results.recv() => {
                let now = Instant::now();
                if let Some(a) = accounts.get_mut(outcome.account) {
                    if outcome.target.is_some() {
                        a.target = outcome.target;
                    }
                    a.machine.on_result(now, outcome.attempt, outcome.result);
                }
            }
            Some(event) = events.recv() => match event {
                StackEvent::FlowClosed { flow, transport, remote, reason } => {
                    tracing::info!(%flow, %transport, %remote, reason = reason.label(), "SIP connection closed");
                    let now = Instant::now();
                    for a in &mut accounts {
                        if a.target.is_some_and(|t| t.transport == transport && t.addr == remote) {
                            tracing::info!(account = %a.settings.name, "registration flow lost; registering again");
                            a.machine.flow_closed(now);
                        }
                    }
                }
                StackEvent::FlowOpened { flow, transport, remote, outbound } => {
                    tracing::debug!(%flow, %transport, %remote, outbound, "SIP connection opened");
                }
            },
            command = commands.recv() => match command {
                Some(Command::Control { account, register, reply }) => {
                    let now = Instant::now();
                    let found = accounts.iter_mut().find(|a| a.settings.name == account);
                    let state = found.map(|a| {
                        if register {
                            a.machine.start(now);
                        } else {
                            a.machine.stop(now);
                        }
                        a.machine.state().name()
                    });
                    let _ = reply.send(state);
                }
                Some(Command::Stop(done)) => {
                    let now = Instant::now();
                    for a in &mut accounts {
                        a.machine.stop(now);
                    }
                    stopping = Some(done);
                }
                None => return,
            },
            () = sleep_until(next) => {
                let now = Instant::now();
                for a in &mut accounts {
                    a.machine.handle_timeout(now);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn drain(
    index: usize,
    a: &mut Account,
    stack: &Stack,
    results: &mpsc::Sender<Outcome>,
    metrics: &RegistrationMetrics,
) {
    while let Some(output) = a.machine.poll_output() {
        match output {
            RegOutput::State(state) => log_state(&a.settings.name, &state),
            RegOutput::Send {
                attempt,
                registrar,
                request,
            } => {
                metrics.request(&a.settings.name);
                let uri = a
                    .proxy
                    .clone()
                    .unwrap_or_else(|| a.registrars[registrar].clone());
                let job = Job {
                    account: index,
                    attempt,
                    uri,
                    transport: a.transport,
                    tls: a.tls.clone(),
                    keepalive: a.keepalive,
                    request,
                };
                tokio::spawn(job.run(stack.clone(), results.clone()));
            }
        }
    }
}

/// One REGISTER on its way: resolve, send, report.
struct Job {
    account: usize,
    attempt: u64,
    uri: String,
    transport: Transport,
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    keepalive: Option<Duration>,
    request: OutMessage,
}

impl Job {
    async fn run(self, stack: Stack, results: mpsc::Sender<Outcome>) {
        let (target, result) = match self.send(&stack).await {
            Ok((target, response)) => (Some(target), Ok(response)),
            Err((target, failure)) => (target, Err(failure)),
        };
        let _ = results
            .send(Outcome {
                account: self.account,
                attempt: self.attempt,
                target,
                result,
            })
            .await;
    }

    async fn send(
        &self,
        stack: &Stack,
    ) -> Result<(Target, crate::sip::message::Message), (Option<Target>, Failure)> {
        let fail = |why: String| (None, Failure::Transport(why));
        let host =
            uri_host(&self.uri).ok_or_else(|| fail(format!("{}: not a SIP URI", self.uri)))?;
        let port = Uri::parse(&self.uri)
            .ok()
            .and_then(|u| u.as_sip().and_then(|s| s.port))
            .unwrap_or(if self.transport == Transport::Tls {
                5061
            } else {
                5060
            });
        let lookup =
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| {
                    fail(format!(
                        "cannot resolve {host}: no answer within {DNS_TIMEOUT:?}"
                    ))
                })?;
        let addr = lookup
            .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("cannot resolve {host}: no address")))?;
        let target = Target::new(self.transport, addr);
        let tls = match &self.tls {
            Err(e) => return Err((Some(target), Failure::Transport(e.clone()))),
            Ok(None) => None,
            Ok(Some(config)) => Some(TlsClient {
                config: config.clone(),
                name: tls::server_name(&host).map_err(|e| (Some(target), Failure::Transport(e)))?,
            }),
        };
        let request = Request {
            message: self.request.clone(),
            target,
            tls,
            keepalive: self.keepalive,
        };
        match stack.request(request).await {
            Ok(response) => Ok((target, response)),
            Err(RequestError::Timeout) => Err((Some(target), Failure::Timeout)),
            Err(e) => Err((Some(target), Failure::Transport(e.to_string()))),
        }
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
        RegState::Backoff { until, last_error } => {
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

fn status(a: &Account, started: (Instant, SystemTime)) -> AccountStatus {
    let state = a.machine.state();
    let (expires, retry, code, error) = match state {
        RegState::Registered { expires_at } => (unix_ms(*expires_at, started), None, None, None),
        RegState::Backoff { until, last_error } => (
            None,
            unix_ms(*until, started),
            None,
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
        registrar: a.registrars[a.machine.registrar()].clone(),
        transport: a.transport,
        required: a.settings.required.unwrap_or(true),
        expires_at_unix_ms: expires,
        retry_at_unix_ms: retry,
        code,
        last_error: error,
    }
}
