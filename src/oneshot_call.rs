//! `dialerd call`: one test call from the command line. It starts its own
//! SIP core (ephemeral ports, so a running daemon is undisturbed), registers
//! the chosen account first when one is named, places the call, holds it,
//! hangs up and reports the outcome with its timings and cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::call::{CallState, EndCause, Side};
use crate::config::Settings;
use crate::engine::{CallAction, CoreConfig, PlaceCall, PlaceError, Publish, SipCore};
use crate::media::player::{Clip, Source, Tone};
use crate::metrics::{RegistrationMetrics, SipMetrics};

/// How long a named account may take to register before the call.
const REGISTER_WAIT: Duration = Duration::from_secs(15);

/// What to call and how.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The callee's URI.
    pub uri: String,
    /// Call through this account (registered first); direct to the URI's
    /// host when `None`.
    pub account: Option<String>,
    /// From user part.
    pub from: Option<String>,
    /// From display name.
    pub display: Option<String>,
    /// `X-` headers.
    pub headers: Vec<(String, String)>,
    /// How long to stay connected after the answer.
    pub hold: Duration,
    /// How long to ring (default from the configuration).
    pub ring_timeout: Option<Duration>,
    /// What to play to the callee once answered; media runs only then.
    pub play: Option<Play>,
}

/// What `dialerd call` plays.
#[derive(Debug, Clone, PartialEq)]
pub enum Play {
    /// A WAV file.
    File(std::path::PathBuf),
    /// A tone of this frequency, Hz.
    Tone(f32),
}

/// The outcome, printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The call's SIP Call-ID.
    pub sip_call_id: String,
    /// Whether it was answered.
    pub answered: bool,
    /// Why it ended.
    pub cause: EndCause,
    /// The SIP status involved.
    pub code: Option<u16>,
    /// Who ended it.
    pub ended_by: Side,
    /// Milliseconds from the INVITE to the first ringing or early media.
    pub ringing_ms: Option<u64>,
    /// Milliseconds from the INVITE to the answer.
    pub answered_ms: Option<u64>,
    /// Milliseconds from the INVITE to the end.
    pub total_ms: u64,
    /// The call's RTP totals just before our hangup (with `--play` or
    /// `--tone`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<crate::media::LegStats>,
}

/// Why the call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CallCliError {
    /// The SIP core did not start.
    #[error("cannot start SIP: {0}")]
    Start(String),
    /// The account did not register.
    #[error("account {account:?} did not register: {reason}")]
    Register {
        /// The account.
        account: String,
        /// Its last error or state.
        reason: String,
    },
    /// The call could not be placed.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The call's events stopped before it ended.
    #[error("the call's events stopped before it ended")]
    Lost,
}

/// Settings for the one-off core: only the named account, ephemeral
/// listeners on the configured addresses, no TLS listener.
fn one_off(settings: &Settings, account: Option<&str>) -> Settings {
    let mut s = settings.clone();
    s.accounts.retain(|a| Some(a.name.as_str()) == account);
    s.sip.udp_listen = s
        .sip
        .udp_listen
        .iter()
        .map(|a| std::net::SocketAddr::new(a.ip(), 0))
        .collect();
    s.sip.udp_listen.dedup();
    if s.sip.udp_listen.is_empty() {
        s.sip.udp_listen = vec![std::net::SocketAddr::from(([0, 0, 0, 0], 0))];
    }
    s.sip.tcp_listen = Vec::new();
    s.sip.tls_listen = Vec::new();
    s.log.sip_trace = false;
    s
}

/// Places the call and reports how it went.
pub async fn call(settings: &Settings, opts: &CallOptions) -> Result<Outcome, CallCliError> {
    let settings = one_off(settings, opts.account.as_deref());
    if let Some(name) = &opts.account
        && settings.accounts.is_empty()
    {
        return Err(CallCliError::Register {
            account: name.clone(),
            reason: "no such account in the configuration".into(),
        });
    }
    crate::sip::transport::tls::install_default_provider();
    let config = CoreConfig::from_settings(&settings, settings.instance.public_address.address)
        .map_err(|e| CallCliError::Start(e.to_string()))?;
    let status = tokio::sync::watch::channel(Vec::new()).0;
    let mut accounts = status.subscribe();
    let source = match &opts.play {
        Some(play) => Some(source_of(play)?),
        None => None,
    };
    let (media, media_events) = match source {
        None => (crate::media::Media::none(), None),
        Some(_) => {
            let bind = settings
                .sip
                .udp_listen
                .first()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            let config = crate::media::MediaConfig {
                bind,
                shards: 1,
                relay: crate::media::RelayConfig::default(),
                event_depth: 1024,
                batch_wait: Duration::from_micros(u64::from(settings.media.batch_wait_us)),
                identity: None,
            };
            let (media, events, _threads) = crate::media::Media::start(
                &config,
                crate::media::ShardCounters::default(),
                crate::sip::ids::random_u64(),
            )
            .map_err(|e| CallCliError::Start(format!("media: {e}")))?;
            (media, Some(events))
        }
    };
    let reader = media.reader();
    let publish = Publish {
        status,
        registration: Arc::new(RegistrationMetrics::default()),
        sip: Arc::new(SipMetrics::default()),
        events: crate::events::EventSender::unheard(),
        media,
        media_events,
    };
    let (core, task) = SipCore::start(config, &settings, publish)
        .await
        .map_err(|e| CallCliError::Start(e.to_string()))?;
    let result = async {
        if let Some(name) = &opts.account {
            wait_registered(&mut accounts, name).await?;
        }
        place(&core, opts, source, &reader).await
    }
    .await;
    if opts.account.is_some() {
        core.stop(Duration::from_secs(5)).await;
    }
    core.shutdown().await;
    let _ = task.await;
    result
}

async fn wait_registered(
    accounts: &mut tokio::sync::watch::Receiver<Vec<crate::registration::AccountStatus>>,
    name: &str,
) -> Result<(), CallCliError> {
    let deadline = tokio::time::Instant::now() + REGISTER_WAIT;
    loop {
        let (state, error) = accounts
            .borrow_and_update()
            .iter()
            .find(|a| a.name == name)
            .map(|a| (a.state, a.last_error.clone()))
            .unwrap_or(("unknown", None));
        if state == "registered" {
            return Ok(());
        }
        let changed = tokio::time::timeout_at(deadline, accounts.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Err(CallCliError::Register {
                account: name.to_owned(),
                reason: error.unwrap_or_else(|| format!("still {state} after {REGISTER_WAIT:?}")),
            });
        }
    }
}

/// The player source for `play`.
fn source_of(play: &Play) -> Result<Box<Source>, CallCliError> {
    match play {
        Play::Tone(hz) => Ok(Box::new(Source::tone(Tone::new(
            &[*hz],
            -13.0,
            u32::MAX,
            0,
            None,
        )))),
        Play::File(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| CallCliError::Start(format!("--play {}: {e}", path.display())))?;
            let clip = Clip::from_wav(&bytes)
                .map_err(|e| CallCliError::Start(format!("--play {}: {e}", path.display())))?;
            Ok(Box::new(Source::clip(clip, true)))
        }
    }
}

async fn place(
    core: &SipCore,
    opts: &CallOptions,
    mut source: Option<Box<Source>>,
    reader: &crate::media::MediaReader,
) -> Result<Outcome, CallCliError> {
    let mut media = Vec::new();
    let started = Instant::now();
    let ms =
        |at: Instant| u64::try_from(at.duration_since(started).as_millis()).unwrap_or(u64::MAX);
    let (id, mut events) = core
        .originate(PlaceCall {
            to: opts.uri.clone(),
            account: opts.account.clone(),
            from_user: opts.from.clone(),
            display: opts.display.clone(),
            asserted_identity: None,
            headers: opts.headers.clone(),
            ring_timeout: opts.ring_timeout,
            ..PlaceCall::default()
        })
        .await?;
    let mut ringing_ms = None;
    let mut answered_ms = None;
    let mut hangup_at: Option<tokio::time::Instant> = None;
    loop {
        let event = match hangup_at {
            Some(at) => match tokio::time::timeout_at(at, events.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    hangup_at = None;
                    media = reader.stats(Duration::from_secs(1)).await;
                    if let Err(e) = core.hangup(id).await {
                        tracing::debug!(error = %e, "hangup");
                    }
                    continue;
                }
            },
            None => events.recv().await,
        };
        let Some(event) = event else {
            return Err(CallCliError::Lost);
        };
        let now = Instant::now();
        match event.state {
            CallState::Ringing | CallState::EarlyMedia if ringing_ms.is_none() => {
                ringing_ms = Some(ms(now));
            }
            CallState::Answered => {
                answered_ms = Some(ms(now));
                if let Some(source) = source.take() {
                    match core.act(&event.name, CallAction::Play(Some(source))).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "nothing played"),
                        None => return Err(CallCliError::Lost),
                    }
                }
                hangup_at = Some(tokio::time::Instant::now() + opts.hold);
            }
            CallState::Ended => {
                let ended = event.ended.ok_or(CallCliError::Lost)?;
                return Ok(Outcome {
                    sip_call_id: event.sip_call_id,
                    answered: answered_ms.is_some(),
                    cause: ended.cause,
                    code: ended.code,
                    ended_by: ended.side,
                    ringing_ms,
                    answered_ms,
                    total_ms: ms(now),
                    media,
                });
            }
            _ => {}
        }
    }
}
