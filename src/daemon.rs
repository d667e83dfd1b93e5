//! Wiring and lifecycle of `dialerd run`: start, serve, drain, shut down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::engine::{CoreConfig, Publish, SipCore};
use crate::lifecycle::{DeadlineExceeded, ShutdownSteps, Signals, StopSignal};
use crate::public_address::{self, PublicAddressError};
use crate::sip::driver::DriverError;
use crate::sip::transport::tls::TlsConfigError;
use crate::status::Shared;

/// How long the status server keeps answering (with readiness false) after
/// a critical task ended, before the process exits.
const FAILURE_GRACE: Duration = Duration::from_secs(2);
/// What stopping takes after the drain's calls: ending the calls left and
/// unregistering (5 s), releasing leases (5 s), the control channel's last
/// words (2 s), the servers.
const STOP_ALLOWANCE: Duration = Duration::from_secs(20);
/// Longest the hand-over of leased accounts at a drain's start may take
/// (their unREGISTERs).
const HANDOVER_LIMIT: Duration = Duration::from_secs(5);
/// How often the drain looks at the call table.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// Why the daemon stopped without a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The public address could not be resolved.
    #[error("instance.public_address: {0}")]
    PublicAddress(#[from] PublicAddressError),
    /// The HTTP listener could not be bound.
    #[error("http.bind {addr}: {source}")]
    HttpBind {
        /// Address from configuration.
        addr: std::net::SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The SIP TLS certificate or key could not be loaded.
    #[error("sip.tls: {0}")]
    SipTls(#[from] TlsConfigError),
    /// A SIP listener could not be bound.
    #[error("sip: {0}")]
    Sip(#[from] DriverError),
    /// The media shard threads could not be started.
    #[error("media shards: {0}")]
    Media(std::io::Error),
    /// A task the daemon cannot run without ended.
    #[error("critical task {task} ended: {cause}")]
    TaskEnded {
        /// Which.
        task: &'static str,
        /// How (a panic message, or an unexpected return).
        cause: String,
    },
    /// Graceful shutdown took too long.
    #[error(transparent)]
    Deadline(#[from] DeadlineExceeded),
    /// A second signal arrived during shutdown.
    #[error("shutdown interrupted by a second {0:?} signal")]
    Forced(StopSignal),
}

/// Runs the daemon until a signal stops it. `env` is the process
/// environment (for `env` public-address sources).
pub async fn run(settings: Settings, env: HashMap<String, String>) -> Result<(), DaemonError> {
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;

    let source = &settings.instance.public_address;
    let public_address = public_address::resolve(source, &env).await?;
    let shared = Arc::new(Shared::new(
        settings.instance.id.clone(),
        public_address,
        source.source.as_str(),
    ));
    shared
        .readiness
        .set("config", true, "configuration loaded and valid");
    shared
        .readiness
        .set("http_listener", false, "not bound yet");

    let heartbeat = {
        let shared = shared.clone();
        tokio::spawn(async move { shared.heartbeat.run().await })
    };

    let bind = settings.http.bind;
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| DaemonError::HttpBind { addr: bind, source })?;
    let local = listener.local_addr().unwrap_or(bind);
    shared
        .readiness
        .set("http_listener", true, format!("listening on {local}"));
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let access = crate::http::Access::new(settings.http.token.as_ref());
    let http = tokio::spawn(crate::http::serve(
        listener,
        shared.clone(),
        access,
        async move {
            // Either an explicit stop or the sender being dropped ends serving.
            let _ = http_stopped.await;
        },
    ));

    shared
        .readiness
        .set("sip_listeners", false, "not bound yet");
    crate::sip::transport::tls::install_default_provider();
    // This run's id: call names and event sequences are unique per run.
    let boot = format!("{:08x}", crate::sip::ids::random_u64() as u32);
    let mut core_config = CoreConfig::from_settings(&settings, shared.public_address)?;
    core_config.call_name_prefix = format!("{boot}-");
    let (events, feed) = if settings.redis.enabled {
        let (tx, rx) = crate::events::feed(
            crate::events::FEED_DEPTH,
            shared.metrics.core_events_dropped.clone(),
        );
        (tx, Some(rx))
    } else {
        (crate::events::EventSender::unheard(), None)
    };
    // Calls' media ports are bound on the first UDP listener's address.
    let media_ip = settings
        .sip
        .udp_listen
        .first()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let (media, media_events, media_threads) = crate::media::Media::start(
        &media_config(&settings.media, media_ip),
        shared.metrics.media.clone(),
        crate::sip::ids::random_u64(),
    )
    .map_err(DaemonError::Media)?;
    shared.set_media(media.reader());
    shared.agent_hangup_api.store(
        settings.http.agent_hangup_api,
        std::sync::atomic::Ordering::Relaxed,
    );
    let _ = shared
        .progress
        .set(crate::control::channel::progress::ProgressDefaults {
            abandon_ms: settings.calls.abandon_ms,
            safe_harbor: settings.calls.safe_harbor.clone(),
            campaign_max_calls: settings.calls.campaign_max_calls,
            capture: settings.media.amd_capture_dir.is_some(),
        });
    if let Some(dir) = &settings.media.prompt_dir {
        let _ = shared.prompt_dir.set(dir.clone());
    }
    let publish = Publish {
        status: shared.accounts.clone(),
        registration: shared.metrics.registration.clone(),
        sip: shared.metrics.sip.clone(),
        events,
        media,
        media_events: Some(media_events),
    };
    let (sip, mut sip_task) = SipCore::start(core_config, &settings, publish).await?;
    shared.set_sip(sip.clone());
    let bound: Vec<String> = sip
        .local_addrs()
        .iter()
        .map(|(t, a)| format!("{t} {a}"))
        .collect();
    shared.readiness.set(
        "sip_listeners",
        true,
        format!("listening on {}", bound.join(", ")),
    );
    let registrations = sip.clone();
    let control = feed.map(|feed| {
        shared
            .redis_enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        crate::control::spawn(
            crate::control::ChannelConfig {
                redis: settings.redis.clone(),
                machine: machine_config(&settings, &boot),
            },
            shared.clone(),
            registrations.clone(),
            feed,
        )
    });
    let leases = (settings.lease.enabled && settings.redis.enabled).then(|| {
        crate::lease::shell::spawn(
            crate::lease::LeaseShellConfig {
                machine: crate::lease::LeaseConfig {
                    instance: settings.instance.id.clone(),
                    accounts: settings.accounts.iter().map(|a| a.name.clone()).collect(),
                    ttl: Duration::from_secs(settings.lease.ttl_secs),
                },
                prefix: settings.redis.prefix.clone(),
                redis: settings.redis.clone(),
            },
            shared.clone(),
            sip.clone(),
        )
    });
    let (lease_handle, mut lease_task) = match leases {
        Some((handle, task)) => (Some(handle), Some(task)),
        None => (None, None),
    };
    shared.lifecycle.started();
    tracing::info!(
        instance = %shared.instance_id,
        http = %local,
        sip = %bound.join(", "),
        public_address = ?shared.public_address,
        version = env!("CARGO_PKG_VERSION"),
        "dialerd running"
    );

    // Supervision: a signal stops the daemon gracefully; the end of a task
    // it cannot run without stops it with an error (exit 1, and Kubernetes
    // restarts the pod) after readiness turns false.
    let (mut control, control_task) = match control {
        Some((channel, task)) => (Some(channel), Some(task)),
        None => (None, None),
    };
    let mut control_task = control_task;
    let mut phase = shared.lifecycle.subscribe();
    let mut signalled = false;
    let failure = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(?signal, "stop requested; draining");
            signalled = true;
            None
        }
        () = drain_requested(&mut phase) => {
            tracing::info!("drain requested; draining");
            None
        }
        ended = &mut sip_task => Some(("sip_core", describe_end(ended))),
        ended = wait_opt(&mut control_task) => Some(("control_channel", describe_end(ended))),
        ended = wait_opt(&mut lease_task) => Some(("account_leases", describe_end(ended))),
        index = shard_ended(&media_threads) => Some((
            "media_shards",
            format!("media shard {index} stopped (see the log for its panic)"),
        )),
    };
    if let Some((task, cause)) = failure {
        shared.readiness.set(task, false, format!("ended: {cause}"));
        shared.lifecycle.stopping();
        tracing::error!(task, %cause, "a critical task ended; exiting");
        if let Some(channel) = control.take() {
            channel.stop(Duration::from_secs(2)).await;
        }
        if let Some(t) = control_task {
            t.abort();
        }
        if let Some(t) = lease_task {
            t.abort();
        }
        sip.shutdown().await;
        sip_task.abort();
        // Probes see the failure (readiness 503) before the process goes.
        tokio::time::sleep(FAILURE_GRACE).await;
        let _ = http_stop.send(());
        heartbeat.abort();
        return Err(DaemonError::TaskEnded { task, cause });
    }
    // The drain: not ready, no new calls, leased accounts handed over at
    // once, the calls up go on until they end or the deadline passes.
    shared.lifecycle.drain();
    sip.drain().await;
    let deadline = Duration::from_secs(settings.shutdown.deadline_secs);
    let drained = drain_calls(sip.clone(), lease_handle.clone(), deadline);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            () = &mut drained => break,
            second = signals.recv() => {
                if signalled {
                    heartbeat.abort();
                    return Err(DaemonError::Forced(second));
                }
                // The drain asked over HTTP or Redis; the signal is the
                // pod stopping: the same drain goes on.
                tracing::info!(signal = ?second, "stop signal during the drain; still draining");
                signalled = true;
            }
        }
    }
    shared.lifecycle.stopping();

    let mut steps = ShutdownSteps::default();
    // The calls left are ended (cause `shutdown`) and every account
    // unregistered, within 5 s; then the leases are released.
    steps.add("unregister", async move {
        registrations.stop(Duration::from_secs(5)).await;
    });
    if let Some(handle) = lease_handle {
        steps.add("release_leases", async move {
            handle.release_all(Duration::from_secs(5)).await;
        });
    }
    steps.add("control_channel", async move {
        if let Some(channel) = control {
            channel.stop(Duration::from_secs(2)).await;
        }
        if let Some(task) = control_task {
            task.abort();
        }
    });
    steps.add("sip_core", async move {
        sip.shutdown().await;
        let _ = sip_task.await;
    });
    steps.add("http_server", async move {
        let _ = http_stop.send(());
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
    });
    let outcome = tokio::select! {
        done = steps.run(STOP_ALLOWANCE) => done.map_err(DaemonError::from),
        second = signals.recv() => Err(DaemonError::Forced(second)),
    };
    heartbeat.abort();
    if outcome.is_ok() {
        tracing::info!("shutdown complete");
    }
    outcome
}

/// Resolves when the phase turns to draining (POST /drain, the `drain`
/// command).
async fn drain_requested(phase: &mut tokio::sync::watch::Receiver<crate::lifecycle::Phase>) {
    loop {
        if *phase.borrow_and_update() == crate::lifecycle::Phase::Draining {
            return;
        }
        if phase.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The drain proper: leased accounts handed over at once (unREGISTER, then
/// the leases released, so a standby replica takes them), then the calls
/// waited for until none is left or `deadline` passes.
async fn drain_calls(
    sip: crate::engine::SipCore,
    leases: Option<crate::lease::LeaseHandle>,
    deadline: Duration,
) {
    let end = tokio::time::Instant::now() + deadline;
    if let Some(leases) = &leases {
        if !sip.stop_registering(HANDOVER_LIMIT).await {
            tracing::warn!(
                "the accounts' unREGISTERs did not finish in time; releasing the leases anyway"
            );
        }
        leases.release_all(HANDOVER_LIMIT).await;
    }
    loop {
        let live = sip.calls(0, 0).await.map_or(0, |(live, _)| live.total);
        if live == 0 {
            tracing::info!("drained: no call left");
            return;
        }
        if tokio::time::Instant::now() >= end {
            tracing::info!(
                calls = live,
                ?deadline,
                "drain deadline passed; ending the calls left"
            );
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Resolves when a media shard thread has ended (they run until the
/// daemon stops), with its index; checked once a second.
async fn shard_ended(threads: &[std::thread::JoinHandle<()>]) -> usize {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(index) = threads
            .iter()
            .position(std::thread::JoinHandle::is_finished)
        {
            return index;
        }
    }
}

/// The media shards' settings, from `[media]`.
fn media_config(
    m: &crate::config::MediaSettings,
    bind: std::net::IpAddr,
) -> crate::media::MediaConfig {
    let ms = |v: u32| std::time::Duration::from_millis(u64::from(v));
    crate::media::MediaConfig {
        bind,
        shards: m.shards,
        relay: crate::media::RelayConfig {
            fill_after: ms(m.fill_after_ms),
            quiet_after: ms(m.quiet_report_ms),
            inactivity: (m.inactivity_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(u64::from(m.inactivity_timeout_secs))),
            relatch_pause: std::time::Duration::from_millis(500),
            latch_any: m.latch_any_address,
        },
        event_depth: 16384,
        batch_wait: std::time::Duration::from_micros(u64::from(m.batch_wait_us)),
        // One certificate per process for DTLS-SRTP legs; without one, DTLS
        // offers are refused (488) and `dtls` calls are not placed.
        identity: match crate::media::dtls::Identity::generate() {
            Ok(identity) => {
                tracing::info!(
                    fingerprint = %crate::sdp::Fingerprint::sha256(identity.fingerprint().to_vec()),
                    "DTLS-SRTP certificate made"
                );
                Some(identity)
            }
            Err(e) => {
                tracing::error!(error = %e, "no DTLS certificate; DTLS-SRTP is off");
                None
            }
        },
    }
}

fn machine_config(settings: &Settings, boot: &str) -> crate::control::machine::MachineConfig {
    let r = &settings.redis;
    let ms = |secs: u64| secs.saturating_mul(1000);
    crate::control::machine::MachineConfig {
        prefix: r.prefix.clone(),
        instance: settings.instance.id.clone(),
        boot: boot.to_owned(),
        dedup_window_ms: ms(r.dedup_window_secs),
        lease_ms: ms(r.command_lease_secs),
        stream_max_age_ms: ms(r.stream_max_age_secs),
        destination_window_ms: ms(settings.calls.destination_window_secs),
        record_ttl_ms: ms(settings.calls.record_ttl_secs),
        max_duration_ms: ms(settings.calls.max_duration_secs),
        events_maxlen: r.events_stream_maxlen,
        event_buffer: r.event_buffer,
        accounts: settings.accounts.iter().map(|a| a.name.clone()).collect(),
    }
}

async fn wait_opt(
    task: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

fn describe_end(ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => "returned unexpectedly".to_owned(),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            format!("panicked: {text}")
        }
        Err(e) => e.to_string(),
    }
}
