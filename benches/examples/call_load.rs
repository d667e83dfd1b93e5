//! A fixed-rate outbound call load from one dialerd SIP core, for
//! `benches/sipp_calls.sh` (dialerd as UAC against a SIPp UAS).
//!
//! It starts a `dialerd::engine::SipCore` the way `dialerd run` does (the
//! settings come from `--profile local` and the `DIALERD__*` environment;
//! calls' media ports are bound by dialerd's media shards, which send
//! silence toward the callee as they do for a quiet call), then places `RATE`
//! calls a second for `SECS` seconds to `URI`, hangs each up `HOLD_MS`
//! after its answer, waits for every call to end (bounded) and prints one
//! line `RESULT {json}` with the outcomes.
//!
//!   call_load URI RATE SECS HOLD_MS
//!
//! For the script's CPU measurement of this process (`/proc/PID/stat`) it
//! prints `READY <its UDP port>` and waits one second before the first call, and after
//! `RESULT` it lingers (at most 30 s) so the script can read its CPU time
//! before it stops it. It also prints its own CPU ticks over the load phase
//! (`cpu_ticks_load`, from `/proc/self/stat`) as a cross-check.
//!
//! After `RESULT` come the SIP core's counters, one `METRIC name value` a
//! line (messages sent, received, dropped by reason, calls ended by cause).
//!
//! A call counts as successful when it was answered and ended with cause
//! `normal` by our own hangup; everything else is a failure, by cause.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialerd::call::{CallState, EndCause, Side};
use dialerd::config::{Settings, Sources};
use dialerd::engine::{CoreConfig, PlaceCall, Publish, SipCore};
use dialerd::events::EventSender;
use dialerd::media::{Media, MediaConfig, RelayConfig, ShardCounters};
use dialerd::metrics::{RegistrationMetrics, SipMetrics};
use tokio::time::Instant;

/// How long after the last INVITE the calls may take to end (a BYE or an
/// INVITE that gets no answer ends after 64 x T1 = 32 s).
const DRAIN: Duration = Duration::from_secs(40);
/// How long to wait, after `RESULT`, for the script to read our CPU time.
const LINGER: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Stats {
    placed: AtomicU64,
    place_errors: AtomicU64,
    answered: AtomicU64,
    succeeded: AtomicU64,
    ended: AtomicU64,
    lost: AtomicU64,
    hangup_errors: AtomicU64,
    finished: AtomicU64,
    /// Microseconds from the originate request to the INVITE sent, the
    /// latest one (when the last call of the load went out).
    last_placed_us: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    setup_us: Mutex<Vec<u64>>,
}

impl Stats {
    fn fail(&self, what: String) {
        *self
            .failures
            .lock()
            .expect("not poisoned")
            .entry(what)
            .or_default() += 1;
    }
}

fn usage() -> ! {
    eprintln!("usage: call_load URI RATE SECS HOLD_MS");
    std::process::exit(2);
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13
    // after the name (state is the first).
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        usage();
    }
    let uri = args[0].clone();
    let rate: u64 = args[1].parse().unwrap_or_else(|_| usage());
    let secs: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let hold = Duration::from_millis(args[3].parse().unwrap_or_else(|_| usage()));
    if rate == 0 || secs == 0 {
        usage();
    }
    let sources = Sources {
        config_file: None,
        profile: Some("local".into()),
        profile_dirs: vec!["sip-profiles".into()],
        env: std::env::vars().collect(),
    };
    let settings = match dialerd::config::load(&sources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = dialerd::logging::init(settings.log.format, &settings.log.level) {
        eprintln!("logging: {e}");
    }
    // The same runtime as `dialerd run`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dialerd")
        .build()
        .expect("a runtime");
    runtime.block_on(load(settings, uri, rate, secs, hold));
}

async fn load(settings: Settings, uri: String, rate: u64, secs: u64, hold: Duration) {
    dialerd::sip::transport::tls::install_default_provider();
    let config = CoreConfig::from_settings(&settings, settings.instance.public_address.address)
        .expect("a core configuration");
    let sip = Arc::new(SipMetrics::default());
    // Media runs as in `dialerd run`: shards binding ports on the first UDP
    // listener's address.
    let media_ip = settings
        .sip
        .udp_listen
        .first()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let media_counters = ShardCounters::default();
    let media_config = MediaConfig {
        bind: media_ip,
        shards: settings.media.shards,
        relay: RelayConfig {
            inactivity: None,
            ..RelayConfig::default()
        },
        event_depth: 16384,
        batch_wait: Duration::from_micros(u64::from(settings.media.batch_wait_us)),
    };
    let (media, media_events, _threads) =
        Media::start(&media_config, media_counters.clone(), 1).expect("media shards start");
    let publish = Publish {
        status: tokio::sync::watch::channel(Vec::new()).0,
        registration: Arc::new(RegistrationMetrics::default()),
        sip: sip.clone(),
        events: EventSender::unheard(),
        media,
        media_events: Some(media_events),
    };
    let (core, task) = SipCore::start(config, &settings, publish)
        .await
        .expect("the SIP core starts");
    let udp_port = core
        .local_addrs()
        .iter()
        .find(|(t, _)| *t == dialerd::sip::target::Transport::Udp)
        .map_or(0, |(_, a)| a.port());
    println!("READY {udp_port}");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let total = rate * secs;
    let stats = Arc::new(Stats::default());
    let cpu_before = cpu_ticks();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut spawned = 0u64;
    while spawned < total {
        tick.tick().await;
        let due = (u128::from(rate) * start.elapsed().as_micros() / 1_000_000)
            .min(u128::from(total)) as u64;
        while spawned < due {
            spawned += 1;
            tokio::spawn(one_call(
                core.clone(),
                uri.clone(),
                hold,
                stats.clone(),
                start,
            ));
        }
    }
    let spawn_secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + hold + DRAIN;
    while stats.finished.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let cpu_load = cpu_ticks() - cpu_before;
    let unfinished = total - stats.finished.load(Ordering::Relaxed);

    let mut setup = std::mem::take(&mut *stats.setup_us.lock().expect("not poisoned"));
    setup.sort_unstable();
    let pct = |p: f64| -> u64 {
        if setup.is_empty() {
            return 0;
        }
        let i = ((setup.len() as f64 - 1.0) * p).round() as usize;
        setup[i.min(setup.len() - 1)]
    };
    let failures = stats.failures.lock().expect("not poisoned").clone();
    let failed = total - stats.succeeded.load(Ordering::Relaxed);
    let failures_json = failures
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "RESULT {{\"rate\":{rate},\"secs\":{secs},\"hold_ms\":{},\"attempted\":{total},\
         \"placed\":{},\"place_errors\":{},\"answered\":{},\"succeeded\":{},\"failed\":{failed},\
         \"unfinished\":{unfinished},\"events_lost\":{},\"hangup_errors\":{},\"failures\":{{{failures_json}}},\
         \"spawn_secs\":{spawn_secs:.3},\"last_placed_secs\":{:.3},\"total_secs\":{total_secs:.3},\
         \"setup_ms_p50\":{:.2},\"setup_ms_p99\":{:.2},\"setup_ms_max\":{:.2},\
         \"cpu_ticks_load\":{cpu_load}}}",
        hold.as_millis(),
        stats.placed.load(Ordering::Relaxed),
        stats.place_errors.load(Ordering::Relaxed),
        stats.answered.load(Ordering::Relaxed),
        stats.succeeded.load(Ordering::Relaxed),
        stats.lost.load(Ordering::Relaxed),
        stats.hangup_errors.load(Ordering::Relaxed),
        stats.last_placed_us.load(Ordering::Relaxed) as f64 / 1e6,
        pct(0.5) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        setup.last().copied().unwrap_or(0) as f64 / 1e3,
    );
    // The SIP core's own counters, as /metrics shows them for `dialerd run`.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("dialerd_sip_sent", "", sip.sent_total.clone());
    registry.register("dialerd_sip_received", "", sip.received_total.clone());
    registry.register("dialerd_sip_dropped", "", sip.dropped_total.clone());
    registry.register("dialerd_calls_ended", "", sip.calls_ended_total.clone());
    registry.register(
        "dialerd_media_bind_failed",
        "",
        media_counters.bind_failed.clone(),
    );
    registry.register(
        "dialerd_media_commands_dropped",
        "",
        media_counters.commands_dropped.clone(),
    );
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            println!("METRIC {line}");
        }
    }
    let _ = std::io::stdout().flush();
    // Let the script read our CPU time; it stops us with SIGTERM.
    tokio::time::sleep(LINGER).await;
    core.shutdown().await;
    let _ = task.await;
}

/// One call: originate, hang up `hold` after the answer, record the end.
async fn one_call(core: SipCore, to: String, hold: Duration, stats: Arc<Stats>, epoch: Instant) {
    let asked = Instant::now();
    let placed = core
        .originate(PlaceCall {
            to,
            from_user: Some("load".into()),
            ..PlaceCall::default()
        })
        .await;
    let (id, mut events) = match placed {
        Ok(p) => p,
        Err(e) => {
            stats.place_errors.fetch_add(1, Ordering::Relaxed);
            stats.fail(format!("place: {e}"));
            stats.finished.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    stats.placed.fetch_add(1, Ordering::Relaxed);
    stats.last_placed_us.fetch_max(
        u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let mut answered = false;
    let mut hangup_at: Option<Instant> = None;
    loop {
        let event = match hangup_at {
            Some(at) => match tokio::time::timeout_at(at, events.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    hangup_at = None;
                    if core.hangup(id).await.is_err() {
                        // Ended meanwhile: its end event says how.
                        stats.hangup_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            },
            None => events.recv().await,
        };
        let Some(event) = event else {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            stats.fail("events lost".into());
            break;
        };
        match event.state {
            CallState::Answered if !answered => {
                answered = true;
                stats.answered.fetch_add(1, Ordering::Relaxed);
                let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.setup_us.lock().expect("not poisoned").push(us);
                hangup_at = Some(Instant::now() + hold);
            }
            CallState::Ended => {
                stats.ended.fetch_add(1, Ordering::Relaxed);
                match event.ended {
                    Some(e) if answered && e.cause == EndCause::Normal && e.side == Side::Local => {
                        stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) => stats.fail(format!(
                        "{}{}{}",
                        e.cause.label(),
                        e.code.map(|c| format!(" {c}")).unwrap_or_default(),
                        if answered { " after answer" } else { "" }
                    )),
                    None => stats.fail("ended without a cause".into()),
                }
                break;
            }
            _ => {}
        }
    }
    stats.finished.fetch_add(1, Ordering::Relaxed);
}
