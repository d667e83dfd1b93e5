//! The SIP core task: one task owns the sans-IO endpoint, the I/O driver,
//! the clock and every owner that lives next to the endpoint (the account
//! registrations today, calls next). Inputs come from the transport tasks
//! and a bounded command channel; outputs go to sockets without waiting.
//! Configuration is converted to SIP types here, at the edge.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

mod calls;
mod media;
pub mod progress;
pub use media::{Attached, RtpEndpoint};

pub use calls::{CallAction, CallCommand, PlaceCall, PlaceError, Placed, direct_target};

use crate::call::{CallError, CallEvent, CallId, CallSummary, Calls, Live};
use crate::config::{InboundPolicy, Settings, Untrusted};
use crate::events::{CoreEvent, EventSender};
use crate::metrics::{RegistrationMetrics, SipMetrics};
use crate::registration::{AccountStatus, Accounts};
use crate::sip::driver::{self, Driver, DriverConfig, DriverError};
use crate::sip::endpoint::{
    ALLOW, Endpoint, EndpointConfig, Event, Failure, Input, OutRequest, Output, OwnerId,
    PeerOptions, Reply,
};
use crate::sip::ids::{Entropy, OsEntropy};
use crate::sip::message::{Message, Method};
use crate::sip::target::{Target, Transport};
use crate::sip::trace::{Direction, Tracer};
use crate::sip::transaction::{Timers, TxnId};
use crate::sip::transport::{Gate, Inbound, TransportLimits, tls};

/// Depth of the command channel.
const COMMAND_DEPTH: usize = 256;
/// Most inbound messages taken per turn before timers and commands run.
const BATCH: usize = 64;
/// Bytes the transport tasks may queue toward the core.
const INBOUND_BUDGET: usize = 8 * 1024 * 1024;
/// Longest a registrar name lookup may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most SIP messages logged per second by `sip_trace`.
const TRACE_RATE: u32 = 200;
/// One-shot requests' owner ids start here.
const ONESHOT_BASE: u64 = 1 << 56;

/// How the core is set up.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Sockets and listeners.
    pub driver: DriverConfig,
    /// The endpoint (its listeners and fallback addresses are filled in
    /// once bound).
    pub endpoint: EndpointConfig,
    /// Log every SIP message.
    pub sip_trace: bool,
    /// Panic after this long (the `DIALERD_TEST_FAULT=sip-core-panic:MS`
    /// test hook for supervision).
    pub panic_after: Option<Duration>,
    /// Prefix of the names made up for calls (the daemon uses its boot id,
    /// so names are unique across runs and instances).
    pub call_name_prefix: String,
    /// Accounts register only under a lease (`lease.enabled`).
    pub leases: bool,
}

impl CoreConfig {
    /// The core of `dialerd run`, from the `[sip]` and `[log]` settings.
    pub fn from_settings(
        settings: &Settings,
        advertised: Option<std::net::IpAddr>,
    ) -> Result<Self, tls::TlsConfigError> {
        let sip = &settings.sip;
        let tls_server = match (&sip.tls.cert_file, &sip.tls.key_file) {
            (Some(cert), Some(key)) if !sip.tls_listen.is_empty() => {
                Some(tls::server_config(cert, key)?)
            }
            _ => None,
        };
        let limits = TransportLimits {
            max_connections: sip.max_connections,
            max_connections_per_source: sip.max_connections_per_source,
            idle_timeout: Duration::from_secs(sip.idle_timeout_secs),
            reserved_connections: (sip.max_connections / 16).clamp(1, 64),
            ..TransportLimits::default()
        };
        let nets = sip.allowed_peers.clone();
        let allowed = Arc::new(move |ip| nets.is_empty() || nets.iter().any(|n| n.contains(ip)));
        let timers = Timers {
            t1: Duration::from_millis(sip.t1_ms),
            t2: Duration::from_millis(sip.t2_ms),
            t4: Duration::from_millis(sip.t4_ms),
        };
        Ok(Self {
            driver: DriverConfig {
                udp: sip.udp_listen.clone(),
                tcp: sip.tcp_listen.clone(),
                tls: sip.tls_listen.clone(),
                tls_server,
                limits,
                gate: Gate::new(allowed, sip.untrusted == Untrusted::Reject, INBOUND_BUDGET),
            },
            endpoint: EndpointConfig {
                timers,
                user_agent: sip.user_agent.clone(),
                listeners: Vec::new(),
                advertised,
                fallback_ips: Vec::new(),
                max_connections: sip.max_connections,
            },
            sip_trace: settings.log.sip_trace,
            panic_after: test_fault(),
            call_name_prefix: "call-".to_owned(),
            leases: settings.lease.enabled,
        })
    }
}

/// The supervision test hook: `DIALERD_TEST_FAULT=sip-core-panic:MS`.
fn test_fault() -> Option<Duration> {
    let value = std::env::var("DIALERD_TEST_FAULT").ok()?;
    let ms = value.strip_prefix("sip-core-panic:")?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// What the core publishes.
pub struct Publish {
    /// Account states, for `/status`, `/metrics` and `/readyz`.
    pub status: watch::Sender<Vec<AccountStatus>>,
    /// Registration counters.
    pub registration: Arc<RegistrationMetrics>,
    /// SIP counters.
    pub sip: Arc<SipMetrics>,
    /// State transitions, for the control channel to publish.
    pub events: EventSender,
    /// The media shards that bind calls' ports and relay their RTP.
    pub media: crate::media::Media,
    /// The shards' reports.
    pub media_events: Option<mpsc::Receiver<crate::media::MediaEvent>>,
}

enum Command {
    Register {
        account: String,
        register: bool,
        reply: oneshot::Sender<Option<&'static str>>,
    },
    Unregister(oneshot::Sender<()>),
    Trace(bool),
    Request {
        request: Box<OutRequest>,
        target: Target,
        options: Option<PeerOptions>,
        reply: oneshot::Sender<Result<Message, RequestError>>,
    },
    Shutdown(oneshot::Sender<()>),
    Call(CallCommand),
    /// An account lease's permit (`None`: revoked).
    Lease {
        account: String,
        permit: Option<crate::lease::Permit>,
    },
    /// Refuse new inbound calls (503 with Retry-After).
    Drain,
    /// Unregister every account, leaving the calls up; answered when done.
    StopRegistering(oneshot::Sender<()>),
}

/// Why a one-shot request got no final response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The endpoint refused to send it.
    #[error("request refused: {0}")]
    Refused(String),
    /// It was sent but got no final response.
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The SIP core stopped.
    #[error("SIP core stopped")]
    Stopped,
}

/// Handle to the SIP core task.
#[derive(Debug, Clone)]
pub struct SipCore {
    commands: mpsc::Sender<Command>,
    locals: Arc<Vec<(Transport, SocketAddr)>>,
}

impl SipCore {
    /// Binds the sockets and starts the core with `accounts` registering
    /// at once.
    pub async fn start(
        config: CoreConfig,
        settings: &Settings,
        publish: Publish,
    ) -> Result<(SipCore, JoinHandle<()>), DriverError> {
        let (driver, inbound) = Driver::bind(config.driver.clone()).await?;
        let mut endpoint_config = config.endpoint.clone();
        endpoint_config.listeners = driver.listeners().to_vec();
        endpoint_config.fallback_ips = driver::fallback_ips();
        let contact_ip = endpoint_config
            .advertised
            .or_else(|| endpoint_config.fallback_ips.first().copied())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let mut ep = Endpoint::new(
            endpoint_config,
            RandomState::new(),
            Box::new(OsEntropy::new()),
        );
        for (flow, local) in driver.udp() {
            ep.add_udp(*flow, *local);
        }
        let mut rng = || -> Box<dyn Entropy> { Box::new(OsEntropy::new()) };
        let mut accounts = Accounts::new(
            &settings.accounts,
            &settings.registration,
            &settings.sip.user_agent,
            &settings.instance.id,
            contact_ip,
            &mut rng,
            publish.registration.clone(),
        );
        if config.leases {
            accounts.coordinate();
        }
        publish.status.send_replace(accounts.statuses());
        // Media is advertised at the public address, else at the address
        // the UDP listener is bound to, else at the host's own address.
        let media_ip = config
            .endpoint
            .advertised
            .or_else(|| {
                driver
                    .udp()
                    .iter()
                    .map(|(_, a)| a.ip())
                    .find(|ip| !ip.is_unspecified())
            })
            .unwrap_or(contact_ip);
        let mut calls = calls::call_table(settings, media_ip, &config.call_name_prefix);
        if let Some(claim) = publish.media.port_claim() {
            calls.set_port_claim(claim);
        }
        calls.set_dtls_fingerprint(publish.media.dtls_fingerprint().map(<[u8]>::to_vec));
        let locals = Arc::new(driver.locals());
        let (commands, rx) = mpsc::channel(COMMAND_DEPTH);
        let (dns_tx, dns_rx) = mpsc::channel(64);
        let counters = Counters::new(publish.sip.clone());
        let core = Core {
            gate: config.driver.gate.clone(),
            peers: std::collections::HashSet::new(),
            ep,
            driver,
            accounts,
            tracer: Tracer::new(config.sip_trace, TRACE_RATE),
            counters,
            publish,
            oneshots: HashMap::new(),
            next_oneshot: ONESHOT_BASE,
            unregistering: Vec::new(),
            deregistering: Vec::new(),
            draining: false,
            dns: dns_tx,
            trace_suppressed: 0,
            accounts_touched: true,
            calls,
            watchers: HashMap::new(),
            inbound_policy: settings.calls.inbound,
            default_srtp: calls::srtp_policy(settings.media.srtp),
            inbound_reject_code: settings.calls.inbound_reject_code,
            progress: progress::Progress::default(),
            capture_dir: settings.media.amd_capture_dir.clone(),
        };
        let task = tokio::spawn(core.run(inbound, rx, dns_rx, config.panic_after));
        Ok((SipCore { commands, locals }, task))
    }

    /// The bound addresses, by transport.
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.locals
    }

    /// Registers (`register`) or unregisters one account; its state after,
    /// or `None` for an unknown account.
    pub async fn control(&self, account: &str, register: bool) -> Option<&'static str> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Register {
            account: account.to_owned(),
            register,
            reply,
        };
        self.commands.send(command).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Hands an account lease's permit to the registrations (`None`:
    /// revoked).
    pub async fn lease(&self, account: String, permit: Option<crate::lease::Permit>) {
        let _ = self.commands.send(Command::Lease { account, permit }).await;
    }

    /// Starts draining: inbound INVITEs are answered 503 with Retry-After.
    pub async fn drain(&self) {
        let _ = self.commands.send(Command::Drain).await;
    }

    /// Unregisters every account, leaving the calls up; waits until done
    /// or `limit` passes.
    pub async fn stop_registering(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::StopRegistering(tx))
            .await
            .is_err()
        {
            return true;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// Unregisters every account and waits until all are done or `limit`
    /// passes; returns whether every unREGISTER finished.
    pub async fn stop(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Unregister(tx)).await.is_err() {
            return true;
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    ?limit,
                    "unregistering did not finish in time; stopping anyway"
                );
                false
            }
        }
    }

    /// Switches SIP message logging.
    pub async fn set_trace(&self, on: bool) -> bool {
        self.commands.send(Command::Trace(on)).await.is_ok()
    }

    /// Sends one request and waits for its final response.
    pub async fn request(
        &self,
        request: OutRequest,
        target: Target,
        options: Option<PeerOptions>,
    ) -> Result<Message, RequestError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Request {
            request: Box::new(request),
            target,
            options,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| RequestError::Stopped)?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Places a call; its transitions arrive on the receiver, the last one
    /// `ended`.
    pub async fn originate(
        &self,
        place: PlaceCall,
    ) -> Result<(CallId, mpsc::Receiver<CallEvent>), PlaceError> {
        let direct = match &place.account {
            Some(_) => None,
            None => {
                let (transport, host, port) = direct_target(&place.to)?;
                let addr = resolve(&host, port).await.map_err(PlaceError::Resolve)?;
                Some(Target::new(transport, addr))
            }
        };
        let (events, rx) = mpsc::channel(calls::WATCH_DEPTH);
        let placed = self.send_place(place, direct, Some(events)).await?;
        Ok((placed.id, rx))
    }

    /// Places a call through an account; its transitions go only to the
    /// event feed.
    pub async fn place(&self, place: PlaceCall) -> Result<Placed, PlaceError> {
        self.send_place(place, None, None).await
    }

    async fn send_place(
        &self,
        place: PlaceCall,
        direct: Option<Target>,
        events: Option<mpsc::Sender<CallEvent>>,
    ) -> Result<Placed, PlaceError> {
        let (reply, result) = oneshot::channel();
        let command = Command::Call(CallCommand::Originate {
            place: Box::new(place),
            direct,
            reply,
            events,
        });
        self.commands
            .send(command)
            .await
            .map_err(|_| PlaceError::Stopped)?;
        result.await.map_err(|_| PlaceError::Stopped)?
    }

    /// Acts on the live call named `name`; `None` when the core stopped.
    pub async fn act(
        &self,
        name: &str,
        action: CallAction,
    ) -> Option<Result<Option<Attached>, CallError>> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Call(CallCommand::ByName {
            name: name.to_owned(),
            action,
            reply,
        });
        self.commands.send(command).await.ok()?;
        rx.await.ok()
    }

    async fn call_command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> CallCommand,
        id: CallId,
    ) -> Result<T, CallError> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Call(make(reply)))
            .await
            .is_err()
        {
            return Err(CallError::Unknown(id));
        }
        rx.await.unwrap_or(Err(CallError::Unknown(id)))
    }

    /// Hangs a call up.
    pub async fn hangup(&self, id: CallId) -> Result<(), CallError> {
        self.call_command(|r| CallCommand::Hangup(id, r), id).await
    }

    /// Answers a ringing inbound call.
    pub async fn answer(&self, id: CallId) -> Result<(), CallError> {
        self.call_command(|r| CallCommand::Answer(id, r), id).await
    }

    /// Rejects a ringing inbound call with `code`.
    pub async fn reject(&self, id: CallId, code: u16) -> Result<(), CallError> {
        self.call_command(|r| CallCommand::Reject(id, code, r), id)
            .await
    }

    /// Joins two legs (see [`Calls::bridge`]).
    pub async fn bridge(&self, a: CallId, b: CallId) -> Result<(), CallError> {
        self.call_command(|r| CallCommand::Bridge(a, b, r), a).await
    }

    /// Puts a call on hold (`true`) or takes it off, by re-INVITE.
    pub async fn hold(&self, id: CallId, on: bool) -> Result<(), CallError> {
        self.call_command(|r| CallCommand::Hold(id, on, r), id)
            .await
    }

    /// The live call table: counts by state and one page of calls.
    pub async fn calls(&self, offset: usize, limit: usize) -> Option<(Live, Vec<CallSummary>)> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Call(CallCommand::List {
            offset,
            limit,
            reply,
        });
        self.commands.send(command).await.ok()?;
        rx.await.ok()
    }

    /// Stops the core: closes every connection and the listeners.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Metric handles, made once (no label allocation per message).
struct Counters {
    metrics: Arc<SipMetrics>,
    received: HashMap<(Transport, bool), Counter>,
    sent: HashMap<Transport, Counter>,
    dropped: HashMap<&'static str, Counter>,
    closed: HashMap<&'static str, Counter>,
}

impl Counters {
    fn new(metrics: Arc<SipMetrics>) -> Self {
        let mut received = HashMap::new();
        let mut sent = HashMap::new();
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            for request in [true, false] {
                received.insert((t, request), metrics.received_counter(t, request));
            }
            sent.insert(t, metrics.sent_counter(t));
        }
        Self {
            metrics,
            received,
            sent,
            dropped: HashMap::new(),
            closed: HashMap::new(),
        }
    }

    fn received(&self, transport: Transport, data: &[u8]) {
        let request = !data.starts_with(b"SIP/");
        if let Some(c) = self.received.get(&(transport, request)) {
            c.inc();
        }
    }

    fn sent(&self, transport: Transport) {
        if let Some(c) = self.sent.get(&transport) {
            c.inc();
        }
    }

    fn dropped(&mut self, reason: &'static str) {
        let metrics = &self.metrics;
        self.dropped
            .entry(reason)
            .or_insert_with(|| metrics.dropped_counter(reason))
            .inc();
    }

    fn closed(&mut self, reason: &'static str) {
        let metrics = &self.metrics;
        self.closed
            .entry(reason)
            .or_insert_with(|| metrics.closed_counter(reason))
            .inc();
    }
}

type DnsResult = (usize, u64, Result<SocketAddr, String>);

struct Core {
    /// The transport tasks' gate, told which addresses are configured peers.
    gate: Gate,
    peers: std::collections::HashSet<std::net::IpAddr>,
    ep: Endpoint,
    driver: Driver,
    accounts: Accounts,
    tracer: Tracer,
    counters: Counters,
    publish: Publish,
    oneshots: HashMap<OwnerId, (TxnId, oneshot::Sender<Result<Message, RequestError>>)>,
    next_oneshot: u64,
    unregistering: Vec<oneshot::Sender<()>>,
    /// Waiting for every account to be unregistered (calls may stay up).
    deregistering: Vec<oneshot::Sender<()>>,
    /// Draining: new inbound calls are refused.
    draining: bool,
    dns: mpsc::Sender<DnsResult>,
    /// What the tracer had suppressed when last counted.
    trace_suppressed: u64,
    /// The accounts were fed something this turn (their status may change).
    accounts_touched: bool,
    /// The live call table.
    calls: Calls,
    /// Who placed a call and follows its transitions.
    watchers: HashMap<CallId, mpsc::Sender<CallEvent>>,
    /// Inbound policy for INVITEs to no account with its own.
    inbound_policy: InboundPolicy,
    /// SRTP policy of calls with no account or command policy.
    default_srtp: crate::sdp::SrtpPolicy,
    /// The status the `reject` policy answers with.
    inbound_reject_code: u16,
    /// Outbound calls' progress: analysis verdicts, abandon guard.
    progress: progress::Progress,
    /// Where captured callee audio is written (`media.amd_capture_dir`).
    capture_dir: Option<std::path::PathBuf>,
}

/// The next media report, or never when media does not run.
async fn next_media(
    rx: &mut Option<mpsc::Receiver<crate::media::MediaEvent>>,
) -> Option<crate::media::MediaEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Core {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        mut dns: mpsc::Receiver<DnsResult>,
        panic_after: Option<Duration>,
    ) {
        let started = Instant::now();
        self.accounts.start_all(started);
        self.settle(started);
        let fault_at = panic_after.map(|d| tokio::time::Instant::from_std(started + d));
        let mut media_events = self.publish.media_events.take();
        loop {
            let deadline = [
                self.ep.poll_timeout(),
                self.accounts.poll_timeout(),
                self.calls.poll_timeout(),
                self.progress.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(item) = inbound.recv() => {
                    let now = Instant::now();
                    self.on_inbound(now, item);
                    for _ in 1..BATCH {
                        match inbound.try_recv() {
                            Ok(item) => self.on_inbound(now, item),
                            Err(_) => break,
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.ep.shutdown();
                        self.driver.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => {
                        self.accounts_touched = true;
                        self.on_command(Instant::now(), command);
                    }
                    None => return,
                },
                Some(event) = next_media(&mut media_events) => {
                    let now = Instant::now();
                    self.on_media(now, event);
                    for _ in 1..BATCH {
                        match media_events.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(event)) => self.on_media(now, event),
                            _ => break,
                        }
                    }
                }
                Some((account, attempt, result)) = dns.recv() => {
                    self.accounts_touched = true;
                    self.accounts.resolved(Instant::now(), &mut self.ep, account, attempt, result);
                }
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    self.ep.handle_timeout(now);
                    self.accounts.handle_timeout(now);
                    self.calls.handle_timeout(now, &mut self.ep);
                    let actions = self.progress.handle_timeout(now);
                    self.apply_progress(now, actions);
                    self.accounts_touched = true;
                }
                () = sleep_until(fault_at) => {
                    panic!("DIALERD_TEST_FAULT: the SIP core panics as asked");
                }
            }
            self.settle(Instant::now());
        }
    }

    fn on_inbound(&mut self, now: Instant, item: Inbound) {
        if let Inbound::Message { data, source, .. } = &item {
            self.counters.received(source.transport, data);
        }
        if let Inbound::Message { data, source, .. } = &item
            && self.tracer.is_on()
        {
            let local = self.local_of(*source);
            self.tracer.log(
                now,
                Direction::In,
                source.transport,
                source.flow,
                source.addr,
                local,
                data,
            );
        }
        match self.driver.input(item) {
            Ok(input) => self.ep.handle_input(now, input),
            Err(reason) => self.counters.dropped(reason),
        }
    }

    fn local_of(&self, target: Target) -> Option<SocketAddr> {
        let flow = target.flow?;
        if target.transport == Transport::Udp {
            return self
                .driver
                .udp()
                .iter()
                .find(|(f, _)| *f == flow)
                .map(|(_, a)| *a);
        }
        self.ep.flows().conn(flow).map(|c| c.local)
    }

    fn on_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Register {
                account,
                register,
                reply,
            } => {
                let _ = reply.send(self.accounts.control(now, &account, register));
            }
            Command::Unregister(done) => {
                self.calls.hangup_all(now, &mut self.ep);
                self.accounts.stop_all(now);
                self.unregistering.push(done);
            }
            Command::Trace(on) => self.tracer.set(on),
            Command::Lease { account, permit } => {
                self.accounts.set_permit(now, &account, permit);
            }
            Command::Drain => self.draining = true,
            Command::StopRegistering(done) => {
                self.accounts.stop_all(now);
                self.deregistering.push(done);
            }
            Command::Request {
                request,
                target,
                options,
                reply,
            } => {
                if let Some(options) = options {
                    self.ep
                        .configure_peer((target.transport, target.addr), options);
                }
                let owner = OwnerId(self.next_oneshot);
                self.next_oneshot += 1;
                match self.ep.send_request(now, owner, *request, target) {
                    Ok(txn) => {
                        self.oneshots.insert(owner, (txn, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RequestError::Refused(e.to_string())));
                    }
                }
            }
            Command::Shutdown(_) => {}
            Command::Call(command) => self.on_call_command(now, command),
        }
    }

    /// Runs until nothing is left to do: outputs of the endpoint carried
    /// out, events dispatched to their owners, the owners' requests sent.
    fn settle(&mut self, now: Instant) {
        let mut accounts_changed = std::mem::take(&mut self.accounts_touched);
        loop {
            let mut busy = false;
            while let Some(output) = self.ep.poll_output() {
                busy = true;
                match output {
                    Output::Transmit(t) => {
                        self.counters.sent(t.transport);
                        if self.tracer.is_on() {
                            let local = self.local_of(Target {
                                transport: t.transport,
                                addr: t.remote,
                                flow: Some(t.flow),
                            });
                            self.tracer.log(
                                now,
                                Direction::Out,
                                t.transport,
                                Some(t.flow),
                                t.remote,
                                local,
                                &t.data,
                            );
                        }
                        if let Err(e) = self.driver.transmit(&t) {
                            self.counters.dropped(e.label());
                            let input = Input::SendFailed {
                                txn: t.txn,
                                error: e.to_string(),
                            };
                            self.ep.handle_input(now, input);
                        }
                    }
                    Output::Connect {
                        transport,
                        remote,
                        options,
                    } => self.driver.connect(transport, remote, options),
                    Output::Event(event) => self.dispatch(now, event),
                }
            }
            let flushed = self.accounts.flush(now, &mut self.ep);
            for transition in self.accounts.take_transitions() {
                self.publish
                    .events
                    .emit(CoreEvent::Registration(transition));
            }
            accounts_changed |= flushed || std::mem::take(&mut self.accounts_touched);
            busy |= flushed;
            for lookup in self.accounts.take_lookups() {
                let tx = self.dns.clone();
                tokio::spawn(async move {
                    let result = resolve(&lookup.host, lookup.port).await;
                    let _ = tx.send((lookup.account, lookup.attempt, result)).await;
                });
            }
            if !busy {
                break;
            }
        }
        // Account states and targets change only with a machine's outputs
        // (a state change, a request): nothing to republish otherwise.
        if accounts_changed {
            for ip in self.accounts.peer_ips() {
                if self.peers.insert(ip) {
                    self.gate.add_peer(ip);
                }
            }
            self.publish.status.send_if_modified(|current| {
                let now = self.accounts.statuses();
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
        self.publish
            .sip
            .flows
            .set(i64::try_from(self.ep.flows().connections()).unwrap_or(i64::MAX));
        let suppressed = self.tracer.suppressed();
        if suppressed > self.trace_suppressed {
            self.publish
                .sip
                .trace_suppressed
                .inc_by(suppressed - self.trace_suppressed);
            self.trace_suppressed = suppressed;
        }
        self.publish_calls();
        // Stopping waits for the calls' BYEs and CANCELs as well.
        if self.accounts.all_stopped() && self.calls.is_empty() {
            for done in self.unregistering.drain(..) {
                let _ = done.send(());
            }
        }
        if self.accounts.all_stopped() {
            for done in self.deregistering.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn dispatch(&mut self, now: Instant, event: Event) {
        let Some(event) = self.calls.handle_event(now, &mut self.ep, event) else {
            return;
        };
        let owner = match &event {
            Event::Response { owner, .. }
            | Event::RequestFailed { owner, .. }
            | Event::FlowLost { owner, .. } => Some(*owner),
            _ => None,
        };
        if let Some(owner) = owner {
            if self.accounts.owns(owner).is_some() {
                self.accounts_touched = true;
                self.accounts.on_event(now, &self.ep, event);
            } else {
                self.oneshot(owner, event);
            }
            return;
        }
        match event {
            Event::NewRequest {
                txn,
                request,
                source,
            } => {
                if request.method() == Some(Method::Invite) {
                    self.on_invite(now, txn, request, source);
                } else {
                    let reply = Reply::code(405, "Method Not Allowed").header("Allow", ALLOW);
                    if let Err(e) = self.ep.respond(now, txn, reply) {
                        tracing::debug!(error = %e, "could not refuse a request");
                    }
                }
            }
            Event::InDialog { txn: Some(txn), .. } => {
                let reply = Reply::code(481, "Call/Transaction Does Not Exist");
                let _ = self.ep.respond(now, txn, reply);
            }
            Event::FlowOpened { flow, conn } => {
                if conn.outbound {
                    tracing::info!(%flow, transport = %conn.transport, remote = %conn.remote, local = %conn.local, "SIP connection established");
                } else {
                    tracing::debug!(%flow, transport = %conn.transport, remote = %conn.remote, "SIP connection accepted");
                }
            }
            Event::FlowClosed { flow, conn, reason } => {
                self.counters.closed(reason.label());
                if conn.outbound {
                    tracing::info!(%flow, transport = %conn.transport, remote = %conn.remote, reason = reason.label(), "SIP connection lost");
                } else {
                    tracing::debug!(%flow, transport = %conn.transport, remote = %conn.remote, reason = reason.label(), "SIP connection closed");
                }
            }
            Event::Dropped { reason } => self.counters.dropped(reason),
            _ => {}
        }
    }

    fn oneshot(&mut self, owner: OwnerId, event: Event) {
        let result = match event {
            Event::Response { txn, response, .. } if response.status().unwrap_or(0) >= 200 => {
                (txn, Ok(response))
            }
            Event::RequestFailed { txn, failure, .. } => (txn, Err(RequestError::Failed(failure))),
            _ => return,
        };
        if let Some((expected, _)) = self.oneshots.get(&owner)
            && *expected == result.0
            && let Some((_, reply)) = self.oneshots.remove(&owner)
        {
            let _ = reply.send(result.1);
            self.ep.release(owner);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let lookup = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("cannot resolve {host}: no answer within {DNS_TIMEOUT:?}"))?;
    lookup
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}: no address"))
}
