//! One account's registration, sans-IO: the owner sends the requests it
//! emits, feeds back their outcome, flow losses and the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::sip::auth::{self, Attempt, Challenge};
use crate::sip::ids::{self, Entropy};
use crate::sip::message::{Contacts, Message, OutMessage, Uri};

/// Retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First retry after a transient failure.
    pub initial: Duration,
    /// Longest retry interval.
    pub max: Duration,
    /// Retry interval after a definitive rejection (403, bad credentials).
    pub forbidden: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            forbidden: Duration::from_secs(600),
        }
    }
}

/// Everything the machine needs to build its REGISTERs.
#[derive(Debug, Clone)]
pub struct RegConfig {
    /// Address of record, `sip:user@domain`.
    pub aor: String,
    /// Request-URIs of the registrars, primary first.
    pub registrars: Vec<String>,
    /// Contact URI (advertised address, transport parameter).
    pub contact: String,
    /// Digest user name.
    pub auth_username: String,
    /// Digest password.
    pub password: Option<Secret>,
    /// Registration lifetime asked for.
    pub expires: u32,
    /// RFC 5626 outbound.
    pub outbound: bool,
    /// `+sip.instance` URN for outbound.
    pub instance: String,
    /// Route header value for an outbound proxy (`<sip:proxy;lr>`).
    pub route: Option<String>,
    /// User-Agent value.
    pub user_agent: String,
    /// Retry policy.
    pub backoff: Backoff,
}

/// Where the account stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// Not registered and not trying (before start, after unregister).
    Unregistered,
    /// A REGISTER is on its way.
    Registering,
    /// Registered until `expires_at`.
    Registered {
        /// When the binding lapses.
        expires_at: Instant,
    },
    /// A transient failure; the next attempt is at `until`.
    Backoff {
        /// Next attempt.
        until: Instant,
        /// What went wrong.
        last_error: String,
        /// The SIP status behind it, if a response said so.
        code: Option<u16>,
    },
    /// A definitive rejection (403, credentials refused, no usable
    /// challenge); retried at the longer forbidden interval.
    Failed {
        /// SIP status code, 0 when none.
        code: u16,
        /// What went wrong.
        reason: String,
        /// Next attempt.
        retry_at: Instant,
    },
    /// An unREGISTER is on its way.
    Unregistering,
}

impl RegState {
    /// Short name for status and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            RegState::Unregistered => "unregistered",
            RegState::Registering => "registering",
            RegState::Registered { .. } => "registered",
            RegState::Backoff { .. } => "backoff",
            RegState::Failed { .. } => "failed",
            RegState::Unregistering => "unregistering",
        }
    }
}

/// Why a request got no final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No final response in time.
    Timeout,
    /// Transport error (the text names it, e.g. a TLS certificate problem).
    Transport(String),
}

/// What the machine asks its owner to do.
#[derive(Debug, Clone)]
pub enum RegOutput {
    /// Send `request` to registrar number `registrar`; report the outcome
    /// with `attempt`.
    Send {
        /// Identifies this request's outcome.
        attempt: u64,
        /// Index into [`RegConfig::registrars`].
        registrar: usize,
        /// The REGISTER (without Via).
        request: OutMessage,
        /// The Contact is another binding's, to be sent as it is (not
        /// rewritten with this flow's address).
        contact_as_is: bool,
    },
    /// The state changed.
    State(RegState),
}

/// One account's registration machine.
#[derive(Debug)]
pub struct Registration {
    config: RegConfig,
    state: RegState,
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires: u32,
    outbound: bool,
    registrar: usize,
    attempt: u64,
    in_flight: Option<InFlight>,
    challenge: Option<Challenge>,
    nc: u32,
    challenge_rounds: u32,
    failures: u32,
    refresh_at: Option<Instant>,
    retry_at: Option<Instant>,
    registered_at: Option<Instant>,
    stopping: bool,
    retire: Option<String>,
    out: VecDeque<RegOutput>,
    rng: Box<dyn Entropy>,
}

#[derive(Debug, Clone)]
struct InFlight {
    attempt: u64,
    /// The nonce the request's credentials answered, if it carried any.
    answered_nonce: Option<String>,
    unregister: bool,
    /// Removes another holder's binding (see [`Registration::retire`]).
    retire: bool,
}

/// Least time between a registration and the re-REGISTER a lost flow
/// triggers, so a registrar that closes every connection cannot cause a
/// storm.
const MIN_REREGISTER_GAP: Duration = Duration::from_secs(1);

/// Challenge rounds in a row (without a final answer) before giving up.
const MAX_CHALLENGE_ROUNDS: u32 = 3;

impl Registration {
    /// A machine in [`RegState::Unregistered`], drawing its Call-ID, tags,
    /// cnonces and backoff jitter from `rng`.
    pub fn new(config: RegConfig, mut rng: Box<dyn Entropy>) -> Self {
        let host = config
            .contact
            .rsplit('@')
            .next()
            .unwrap_or("dialerd")
            .split([';', '>'])
            .next()
            .unwrap_or("dialerd")
            .to_owned();
        Self {
            expires: config.expires,
            outbound: config.outbound,
            call_id: ids::call_id_from(rng.as_mut(), &host),
            from_tag: ids::token_from(rng.as_mut()),
            rng,
            config,
            state: RegState::Unregistered,
            cseq: 0,
            registrar: 0,
            attempt: 0,
            in_flight: None,
            challenge: None,
            nc: 0,
            challenge_rounds: 0,
            failures: 0,
            refresh_at: None,
            retry_at: None,
            registered_at: None,
            stopping: false,
            retire: None,
            out: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// The Contact URI registered (as the last response's flow carried it).
    pub fn contact(&self) -> &str {
        self.contact_uri()
    }

    /// Index of the registrar in use.
    pub fn registrar(&self) -> usize {
        self.registrar
    }

    /// Whether an unREGISTER finished (or nothing was registered) after [`Registration::stop`].
    pub fn is_stopped(&self) -> bool {
        self.stopping && self.state == RegState::Unregistered
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<RegOutput> {
        self.out.pop_front()
    }

    /// The Contact URI the REGISTERs actually carried (the transport layer
    /// fills in the flow's address); bindings in responses are matched
    /// against it.
    pub fn set_contact(&mut self, contact: String) {
        self.config.contact = contact;
    }

    /// When [`Registration::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        match (self.refresh_at, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts registering.
    pub fn start(&mut self, now: Instant) {
        self.stopping = false;
        if self.in_flight.is_none() && !matches!(self.state, RegState::Registered { .. }) {
            if self.retire.is_some() {
                self.send_as(now, true, true);
            } else {
                self.send(now, false);
            }
        }
    }

    /// Before the next registration, removes the binding `contact` that
    /// another instance left behind (a REGISTER with that Contact and
    /// `expires=0`); the registration follows whatever its outcome.
    pub fn retire(&mut self, contact: String) {
        self.retire = Some(contact);
    }

    /// Unregisters (Expires: 0); [`Registration::is_stopped`] turns true when done.
    pub fn stop(&mut self, now: Instant) {
        if self.state == RegState::Unregistering {
            return; // already on its way
        }
        self.stopping = true;
        self.refresh_at = None;
        self.retry_at = None;
        let registered = matches!(
            self.state,
            RegState::Registered { .. } | RegState::Registering
        );
        if registered {
            self.send(now, true);
        } else {
            self.in_flight = None;
            self.set_state(RegState::Unregistered);
        }
    }

    /// The connection the registration used is gone: register again at once
    /// over a new one (unless an attempt or a backoff is already under way).
    pub fn flow_closed(&mut self, now: Instant) {
        if self.stopping
            || self.in_flight.is_some()
            || !matches!(self.state, RegState::Registered { .. })
        {
            return;
        }
        let earliest = self.registered_at.map_or(now, |t| t + MIN_REREGISTER_GAP);
        if now >= earliest {
            self.send(now, false);
        } else {
            self.refresh_at = None;
            self.retry_at = Some(earliest);
        }
    }

    /// Runs due refreshes and retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.in_flight.is_some() || self.stopping {
            return;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.refresh_at) || due(self.retry_at) {
            self.send(now, false);
        }
    }

    /// The outcome of request `attempt`.
    pub fn on_result(&mut self, now: Instant, attempt: u64, result: Result<Message, Failure>) {
        let Some(flight) = self.in_flight.take_if(|f| f.attempt == attempt) else {
            return; // an outcome that no longer matters
        };
        if flight.retire {
            let challenged = matches!(&result, Ok(r) if matches!(r.status(), Some(401 | 407)));
            if challenged && let Ok(response) = &result {
                self.challenged(now, response, &flight);
                if self.in_flight.is_some() {
                    return;
                }
            }
            // Removed, refused or unanswered: the registration goes ahead.
            if let Some(old) = self.retire.take() {
                tracing::info!(contact = %old, outcome = ?result.as_ref().map(|r| r.status()).map_err(|e| format!("{e:?}")), "removed the binding the previous holder left");
            }
            self.send(now, false);
            return;
        }
        let response = match result {
            Ok(r) => r,
            Err(failure) => {
                if flight.unregister {
                    self.set_state(RegState::Unregistered);
                    return;
                }
                let why = match failure {
                    Failure::Timeout => "no response from the registrar".to_owned(),
                    Failure::Transport(e) => e,
                };
                self.transient_failure(now, why, None, None);
                return;
            }
        };
        let code = response.status().unwrap_or(0);
        let reason = response.reason().unwrap_or_default().to_owned();
        if !matches!(code, 401 | 407) {
            self.challenge_rounds = 0;
        }
        match code {
            200..=299 if flight.unregister => self.set_state(RegState::Unregistered),
            200..=299 => self.registered(now, &response),
            401 | 407 => self.challenged(now, &response, &flight),
            423 => match response.min_expires() {
                Ok(min) if min > self.expires => {
                    self.expires = min;
                    self.send(now, flight.unregister);
                }
                _ => self.transient_failure(
                    now,
                    format!("423 {reason} without a usable Min-Expires"),
                    None,
                    Some(423),
                ),
            },
            439 if self.outbound => {
                // RFC 5626 §11.6: the first hop does not do outbound; plain registration.
                self.outbound = false;
                self.send(now, flight.unregister);
            }
            _ if flight.unregister => self.set_state(RegState::Unregistered),
            403 | 404 => self.rejected(now, code, format!("{code} {reason}")),
            _ => {
                let retry_after = response
                    .retry_after()
                    .ok()
                    .map(|r| Duration::from_secs(u64::from(r.secs)));
                self.transient_failure(now, format!("{code} {reason}"), retry_after, Some(code));
            }
        }
    }

    fn challenged(&mut self, now: Instant, response: &Message, flight: &InFlight) {
        let challenge = match Challenge::best_of(response) {
            Ok(c) => c,
            Err(e) => {
                let code = response.status().unwrap_or(0);
                return self.finish_or_reject(now, flight, code, format!("{code}: {e}"));
            }
        };
        if self.config.password.is_none() {
            return self.finish_or_reject(
                now,
                flight,
                401,
                "challenged but no password is configured".into(),
            );
        }
        // Credentials refused for the very nonce they answered (and not
        // called stale) are wrong. A new nonce is a new challenge (refreshes
        // carry credentials for the previous one), but only so many rounds.
        self.challenge_rounds += 1;
        let refused =
            flight.answered_nonce.as_deref() == Some(challenge.nonce.as_str()) && !challenge.stale;
        if refused || self.challenge_rounds > MAX_CHALLENGE_ROUNDS {
            self.challenge_rounds = 0;
            let code = response.status().unwrap_or(401);
            return self.finish_or_reject(
                now,
                flight,
                code,
                format!("{code} credentials rejected"),
            );
        }
        self.challenge = Some(challenge);
        self.nc = 0;
        self.send_as(now, flight.unregister, flight.retire);
    }

    fn finish_or_reject(&mut self, now: Instant, flight: &InFlight, code: u16, reason: String) {
        if flight.retire {
            return;
        }
        if flight.unregister {
            self.set_state(RegState::Unregistered);
        } else {
            self.rejected(now, code, reason);
        }
    }

    fn registered(&mut self, now: Instant, response: &Message) {
        let granted = self.granted_expiry(response);
        if granted == 0 {
            return self.transient_failure(
                now,
                "200 OK without our binding".into(),
                None,
                Some(200),
            );
        }
        self.failures = 0;
        self.retry_at = None;
        self.registered_at = Some(now);
        let lifetime = Duration::from_secs(u64::from(granted));
        self.refresh_at = Some(now + lifetime - refresh_margin(lifetime));
        self.set_state(RegState::Registered {
            expires_at: now + lifetime,
        });
    }

    /// The expiry of our Contact in a 200, else Expires, else what we asked.
    fn granted_expiry(&self, response: &Message) -> u32 {
        let ours = Uri::parse(self.contact_uri()).ok();
        if let Ok(Contacts::List(list)) = response.contacts() {
            let mine = list.iter().find(|c| same_binding(ours.as_ref(), &c.uri));
            if let Some(exp) = mine.and_then(|c| c.params.get("expires").flatten()) {
                return crate::sip::message::parse_delta(exp).unwrap_or(self.expires);
            }
        }
        response.expires().unwrap_or(self.expires)
    }

    fn contact_uri(&self) -> &str {
        self.config
            .contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or(&self.config.contact)
    }

    fn transient_failure(
        &mut self,
        now: Instant,
        why: String,
        retry_after: Option<Duration>,
        code: Option<u16>,
    ) {
        self.failures = self.failures.saturating_add(1);
        self.rotate_registrar();
        let b = self.config.backoff;
        let exp = b
            .initial
            .saturating_mul(1u32 << (self.failures - 1).min(20))
            .min(b.max);
        // Retry-After is honoured, up to the longer of our two intervals.
        let cap = b.max.max(b.forbidden);
        let delay = jitter(exp, self.rng.next_u64()).max(retry_after.unwrap_or_default().min(cap));
        self.schedule_retry(now + delay);
        self.set_state(RegState::Backoff {
            until: now + delay,
            last_error: why,
            code,
        });
    }

    fn rejected(&mut self, now: Instant, code: u16, reason: String) {
        self.failures = self.failures.saturating_add(1);
        self.challenge = None;
        let at = now + self.config.backoff.forbidden;
        self.schedule_retry(at);
        self.set_state(RegState::Failed {
            code,
            reason,
            retry_at: at,
        });
    }

    fn schedule_retry(&mut self, at: Instant) {
        self.refresh_at = None;
        self.retry_at = Some(at);
    }

    fn rotate_registrar(&mut self) {
        if !self.config.registrars.is_empty() {
            self.registrar = (self.registrar + 1) % self.config.registrars.len();
        }
    }

    fn set_state(&mut self, state: RegState) {
        if self.state != state {
            self.state = state.clone();
            self.out.push_back(RegOutput::State(state));
        }
    }

    fn send(&mut self, now: Instant, unregister: bool) {
        self.send_as(now, unregister, false);
    }

    /// Sends a REGISTER; `retire` sends it for the binding in
    /// [`Registration::retire`] (with `unregister`).
    fn send_as(&mut self, _now: Instant, unregister: bool, retire: bool) {
        let retiring = self.retire.clone().filter(|_| retire);
        self.attempt += 1;
        self.cseq += 1;
        self.refresh_at = None;
        self.retry_at = None;
        let uri = self
            .config
            .registrars
            .get(self.registrar)
            .cloned()
            .unwrap_or_default();
        let mut contact = format!("<{}>", self.contact_uri());
        if self.outbound {
            contact.push_str(&format!(
                ";+sip.instance=\"<{}>\";reg-id=1",
                self.config.instance
            ));
        }
        if let Some(old) = &retiring {
            contact = format!("<{old}>");
        }
        if unregister {
            contact.push_str(";expires=0");
        }
        let mut req = OutMessage::request("REGISTER", &uri);
        if let Some(route) = &self.config.route {
            req.push("Route", route);
        }
        req.push("Max-Forwards", "70");
        req.push(
            "From",
            format!("<{}>;tag={}", self.config.aor, self.from_tag),
        );
        req.push("To", format!("<{}>", self.config.aor));
        req.push("Call-ID", &self.call_id);
        req.push("CSeq", format!("{} REGISTER", self.cseq));
        req.push("Contact", contact);
        req.push(
            "Expires",
            if unregister { 0 } else { self.expires }.to_string(),
        );
        if self.outbound {
            req.push("Supported", "outbound, path");
        }
        req.push("User-Agent", &self.config.user_agent);
        let answered_nonce = match (&self.challenge, &self.config.password) {
            (Some(ch), Some(password)) => {
                self.nc += 1;
                let cnonce = ids::token_from(self.rng.as_mut());
                let value = auth::credentials(
                    ch,
                    &Attempt {
                        username: &self.config.auth_username,
                        password: password.expose(),
                        method: "REGISTER",
                        uri: &uri,
                        body: b"",
                        nc: self.nc,
                        cnonce: &cnonce,
                    },
                );
                req.push(ch.answer_header(), value);
                Some(ch.nonce.clone())
            }
            _ => None,
        };
        self.in_flight = Some(InFlight {
            attempt: self.attempt,
            answered_nonce,
            unregister,
            retire: retiring.is_some(),
        });
        self.out.push_back(RegOutput::Send {
            attempt: self.attempt,
            registrar: self.registrar,
            request: req,
            contact_as_is: retiring.is_some(),
        });
        self.set_state(if unregister && retiring.is_none() {
            RegState::Unregistering
        } else {
            RegState::Registering
        });
    }
}

/// How long before expiry a binding is refreshed: a quarter of its
/// lifetime, at least 2 s and at most 60 s, never more than half.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 4)
        .clamp(Duration::from_secs(2), Duration::from_secs(60))
        .min(lifetime / 2)
}

/// ±20 % random spread, so many dialers do not retry in step.
fn jitter(d: Duration, random: u64) -> Duration {
    let unit = (random % 401) as f64 / 1000.0; // 0.0..=0.4
    d.mul_f64(0.8 + unit)
}

fn same_binding(ours: Option<&Uri<'_>>, theirs: &Uri<'_>) -> bool {
    match (ours.and_then(Uri::as_sip), theirs.as_sip()) {
        (Some(a), Some(b)) => {
            a.user == b.user
                && a.host.to_string().eq_ignore_ascii_case(&b.host.to_string())
                && a.port.unwrap_or(5060) == b.port.unwrap_or(5060)
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
