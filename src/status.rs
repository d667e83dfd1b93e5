//! The shared daemon state read by the HTTP layer (and later by the Redis
//! status publisher), and the status snapshot built from it.

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::control::ChannelStatus;
use crate::health::{Check, Heartbeat, Readiness};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics::Metrics;
use crate::registration::AccountStatus;

/// State shared by the daemon's components. Each field has one writer.
#[derive(Debug)]
pub struct Shared {
    /// Instance id from configuration.
    pub instance_id: String,
    /// Resolved public address, if one is configured.
    pub public_address: Option<IpAddr>,
    /// Where the public address came from (`local`, `static`, `env`, `do_metadata`).
    pub public_address_source: &'static str,
    /// Wall-clock start time.
    pub started_at: SystemTime,
    /// Monotonic start time.
    pub started: Instant,
    /// Current phase.
    pub lifecycle: Lifecycle,
    /// Readiness checks.
    pub readiness: Readiness,
    /// Event-loop heartbeat.
    pub heartbeat: Heartbeat,
    /// Exported metrics.
    pub metrics: Metrics,
    /// Account registration states; the registration task is the one writer.
    pub accounts: tokio::sync::watch::Sender<Vec<AccountStatus>>,
    /// Account leases (with `lease.enabled`); the lease task is the one
    /// writer.
    pub leases: tokio::sync::watch::Sender<Vec<crate::lease::LeaseStatus>>,
    /// Control-channel state; the control task is the one writer.
    pub redis: tokio::sync::watch::Sender<ChannelStatus>,
    /// Whether the control channel runs (`redis.enabled`).
    pub redis_enabled: std::sync::atomic::AtomicBool,
    /// The SIP core, once started (for run-time switches such as
    /// `sip_trace`).
    pub sip: std::sync::OnceLock<crate::engine::SipCore>,
    /// Reads the media legs' totals, once the shards run.
    pub media: std::sync::OnceLock<crate::media::MediaReader>,
    /// Whether the Twilio-shaped call hang-up route is served
    /// (`http.agent_hangup_api`).
    pub agent_hangup_api: std::sync::atomic::AtomicBool,
    /// Where `play` finds its WAV files (`media.prompt_dir`).
    pub prompt_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// What originates' campaign, AMD and abandon-guard fields fall back on.
    pub progress: std::sync::OnceLock<crate::control::channel::progress::ProgressDefaults>,
}

impl Shared {
    /// Fresh state at start-up.
    pub fn new(
        instance_id: String,
        public_address: Option<IpAddr>,
        public_address_source: &'static str,
    ) -> Self {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let start_secs = started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            instance_id,
            public_address,
            public_address_source,
            started_at,
            started,
            lifecycle: Lifecycle::default(),
            readiness: Readiness::default(),
            heartbeat: Heartbeat::new(started),
            metrics: Metrics::new(start_secs),
            accounts: tokio::sync::watch::Sender::new(Vec::new()),
            leases: tokio::sync::watch::Sender::new(Vec::new()),
            redis: tokio::sync::watch::Sender::new(ChannelStatus::default()),
            redis_enabled: std::sync::atomic::AtomicBool::new(false),
            sip: std::sync::OnceLock::new(),
            media: std::sync::OnceLock::new(),
            prompt_dir: std::sync::OnceLock::new(),
            progress: std::sync::OnceLock::new(),
            agent_hangup_api: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn redis_on(&self) -> bool {
        self.redis_enabled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the media shards' reader.
    pub fn set_media(&self, media: crate::media::MediaReader) {
        let _ = self.media.set(media);
    }

    /// Records the SIP core's handle.
    pub fn set_sip(&self, sip: crate::engine::SipCore) {
        let _ = self.sip.set(sip);
    }

    /// Every readiness check: the stored ones and `accounts`, derived from
    /// the published account states.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = self.readiness.checks();
        let accounts = self.accounts.borrow();
        let required: Vec<&AccountStatus> = accounts.iter().filter(|a| a.required).collect();
        let missing: Vec<&str> = required
            .iter()
            // A standby account (another replica holds its lease) is
            // registered elsewhere.
            .filter(|a| a.state != "registered" && a.role != Some("standby"))
            .map(|a| a.name.as_str())
            .collect();
        let detail = if accounts.is_empty() {
            "no accounts configured".to_owned()
        } else if missing.is_empty() {
            format!(
                "{} of {} required accounts registered",
                required.len(),
                required.len()
            )
        } else {
            format!("not registered: {}", missing.join(", "))
        };
        checks.push(Check {
            name: "accounts",
            ok: missing.is_empty(),
            detail,
        });
        if self.redis_on() {
            let redis = self.redis.borrow();
            checks.push(Check {
                name: "redis",
                ok: redis.connected,
                detail: if redis.connected {
                    "control channel connected".to_owned()
                } else {
                    format!(
                        "control channel not connected: {}",
                        redis.last_error.as_deref().unwrap_or("connecting")
                    )
                },
            });
        }
        checks.sort_by_key(|c| c.name);
        checks
    }

    /// Ready: running (not starting, draining or stopping) and every check holds.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.phase() == Phase::Running
            && self.readiness.all_ok()
            && self.checks().iter().all(|c| c.ok)
    }

    /// The status snapshot served at `/status`.
    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            instance: InstanceStatus {
                id: self.instance_id.clone(),
                public_address: self.public_address,
                public_address_source: self.public_address_source,
            },
            version: env!("CARGO_PKG_VERSION"),
            started_at_unix_ms: self
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            uptime_secs: self.started.elapsed().as_secs(),
            phase: self.lifecycle.phase(),
            ready: self.is_ready(),
            checks: self.checks(),
            accounts: self.accounts.borrow().clone(),
            leases: {
                let leases = self.leases.borrow();
                (!leases.is_empty()).then(|| leases.clone())
            },
            redis: self.redis_on().then(|| self.redis.borrow().clone()),
        }
    }
}

/// `GET /status` body.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// Who this instance is.
    pub instance: InstanceStatus,
    /// dialerd version.
    pub version: &'static str,
    /// Start time, Unix milliseconds.
    pub started_at_unix_ms: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Current phase.
    pub phase: Phase,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Readiness checks.
    pub checks: Vec<Check>,
    /// Every account's registration state.
    pub accounts: Vec<AccountStatus>,
    /// Every account's lease (active here, or standby with its holder),
    /// with `lease.enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<crate::lease::LeaseStatus>>,
    /// The control channel's state, when it runs.
    pub redis: Option<ChannelStatus>,
}

/// The `instance` section of the status.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Advertised public address, if any.
    pub public_address: Option<IpAddr>,
    /// Where it came from.
    pub public_address_source: &'static str,
}
