//! dialerd's AI-agent media bridge under `benches/agent_load.sh`, driven
//! through its library API (no SIP): one shard thread bridging N phone legs
//! to N voice agents over WebSocket (Twilio Media Streams).
//!
//!   dialerd_agent --streams N --base-port P --addrs FILE --ports FILE
//!
//! Starts `dialerd::media::Media` with one shard (bind 127.0.0.1, latching
//! to any source address, no inactivity timeout, the relay's other settings
//! at their defaults), prints `READY`, then waits for the load's `--addrs`
//! file (one stream a line: `PHONE_ADDR AGENT_ADDR`, as `agent_load` writes
//! it). For each stream `s` it opens the phone's leg (`s + 1`) on the next
//! even port from `P` on whose pair (RTP and RTCP) is free on 127.0.0.1,
//! gives it the spec the SIP core would after an offer/answer of PCMU
//! (payload type 0, 20 ms, sendrecv, the phone's address as the signalled
//! remote, not watched), then opens its agent leg (`(s + 1) | ENDPOINT_BIT`)
//! next to it as the SIP core's `attach_agent` does: the spec of
//! `engine::media::agent_spec` (PCMU/0, 20 ms, "from" the agent's address)
//! and an `AgentSpec` for `ws://AGENT_ADDR/ws`, Twilio protocol, the
//! stream's index in `customParameters` (`stream`), connect timeout 30 s,
//! pings every 20 s, messages up to 2 MiB, 60 s of queue, 512 KiB of
//! backlog, `on_end: continue` with no prompt; and connects the two legs.
//! Commands go in batches of 250 streams, each followed by a round trip to
//! the shard (its totals), so its command queue never overflows. Once every
//! leg is there and no port failed to bind, it writes `--ports` (one stream
//! a line: `127.0.0.1:PORT`, written whole and renamed into place), prints
//! `SETUP` and bridges until it is killed.
//!
//! A thread of its own drains the shard's reports: it prints `STARTED N`
//! once every stream is up, the first 50 other reports (not `latched`) as
//! `EVENT {json}`, and once a second, when they changed, `COUNTS {json}`:
//! reports by kind and the shard's counters. When the file `--ports` +
//! `.done` appears (the load writes it after its window), the main thread
//! prints `STATS {json}`: the legs' totals summed by side (phone, agent),
//! and writes them to `--ports` + `.stats` (the load waits for it).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialerd::agent::stream::{Protocol, StreamConfig};
use dialerd::agent::twilio::StreamIds;
use dialerd::media::agent_conn::AgentSpec;
use dialerd::media::{
    ENDPOINT_BIT, Media, MediaConfig, MediaEventKind, RelayConfig, ShardCounters,
};
use serde_json::json;

/// Streams set up between two round trips to the shard.
const BATCH: usize = 250;
/// Reports printed one by one (the rest are only counted).
const EVENT_LINES: usize = 50;

#[path = "common/setup.rs"]
mod setup;
use setup::{fail, free_pair, pcmu, wait_pairs};

fn usage() -> ! {
    eprintln!("usage: dialerd_agent --streams N --base-port P --addrs FILE --ports FILE");
    std::process::exit(1);
}

/// Random-ish bytes (no RNG crate here): a hash of the time, the process
/// and a counter.
fn random16(counter: u64) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(counter);
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// What the shard needs to stream stream `s` to the agent at `address`.
fn agent_spec(s: usize, address: SocketAddr) -> AgentSpec {
    let nonce = random16(s as u64);
    let mut call = [0u8; 16];
    call[..8].copy_from_slice(&(s as u64).to_be_bytes());
    AgentSpec {
        address,
        tls: None,
        stream: StreamConfig {
            host: address.to_string(),
            path: "/ws".into(),
            headers: Vec::new(),
            protocol: Protocol::Twilio,
            ids: StreamIds {
                account_sid: StreamIds::sid("AC", &[0xab; 16]),
                call_sid: StreamIds::sid("CA", &call),
                stream_sid: StreamIds::sid("MZ", &random16(!(s as u64))),
            },
            custom_parameters: vec![("stream".into(), s.to_string())],
            connect_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(20),
            max_message: 2 * 1024 * 1024,
            max_queue: 480_000,
            max_backlog: 512 * 1024,
            nonce,
        },
        hang_up_on_end: false,
        on_end_prompt: None,
    }
}

/// The name of a report's kind (its serde tag).
fn kind_name(kind: &MediaEventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let mut streams = None;
    let mut base = None;
    let mut addrs = None;
    let mut ports = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--streams" => streams = value.parse::<usize>().ok(),
            "--base-port" => base = value.parse::<u16>().ok(),
            "--addrs" => addrs = Some(value),
            "--ports" => ports = Some(value),
            _ => usage(),
        }
    }
    let (Some(streams), Some(base), Some(addrs), Some(ports)) = (streams, base, addrs, ports)
    else {
        usage()
    };
    if base % 2 == 1 {
        usage();
    }

    let config = MediaConfig {
        bind: [127, 0, 0, 1].into(),
        shards: 1,
        relay: RelayConfig {
            latch_any: true,
            inactivity: None,
            ..Default::default()
        },
        event_depth: 65536,
        // As `media.batch_wait_us` configures it (default 100);
        // DIALERD_BATCH_WAIT_US overrides it for a comparison.
        batch_wait: Duration::from_micros(
            std::env::var("DIALERD_BATCH_WAIT_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100),
        ),
        identity: None,
    };
    let counters = ShardCounters::default();
    let (mut media, mut events, _threads) = Media::start(&config, counters.clone(), 0x5EED)
        .unwrap_or_else(|e| fail(format!("media: {e}")));
    let report_counters = counters.clone();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
            let mut printed = 0usize;
            let mut started = 0usize;
            let mut last_counts = String::new();
            let mut last_print = Instant::now();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("events runtime");
            loop {
                let next = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(1), events.recv()).await
                });
                match next {
                    Ok(Some(event)) => {
                        let kind = kind_name(&event.kind);
                        *by_kind.entry(kind.clone()).or_default() += 1;
                        match &event.kind {
                            MediaEventKind::AgentStarted { .. } => {
                                started += 1;
                                if started == streams {
                                    println!("STARTED {started}");
                                }
                            }
                            MediaEventKind::Latched { .. } => {}
                            _ if printed < EVENT_LINES => {
                                printed += 1;
                                println!(
                                    "EVENT {}",
                                    json!({"leg": event.leg, "name": &*event.name, "event": event.kind})
                                );
                            }
                            _ => {}
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {}
                }
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    let c = &report_counters;
                    let counts = json!({
                        "events": by_kind,
                        "shard": {
                            "received": c.received.get(), "sent": c.sent.get(),
                            "send_failed": c.send_failed.get(), "events_dropped": c.events_dropped.get(),
                            "commands_dropped": c.commands_dropped.get(),
                        },
                    })
                    .to_string();
                    if counts != last_counts {
                        println!("COUNTS {counts}");
                        last_counts = counts;
                    }
                }
                let _ = std::io::stdout().flush();
            }
        })
        .unwrap_or_else(|e| fail(format!("spawn: {e}")));
    // Only for the round trips to the shard (its totals come on a oneshot).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    let reader = media.reader();
    let stats_now = || runtime.block_on(reader.stats(Duration::from_secs(30)));
    println!("READY");
    let _ = std::io::stdout().flush();

    let pairs = wait_pairs(&addrs, Duration::from_secs(120)).unwrap_or_else(|e| fail(e));
    if pairs.len() != streams {
        fail(format!(
            "{addrs}: {} streams, expected {streams}",
            pairs.len()
        ));
    }
    let mut text = String::with_capacity(streams * 20);
    let mut next = base;
    for (s, (phone, agent)) in pairs.iter().enumerate() {
        let port = free_pair(&mut next).unwrap_or_else(|| fail("no free port pair left"));
        let leg = s as u64 + 1;
        let agent_leg = leg | ENDPOINT_BIT;
        let name: Arc<str> = format!("agent-bench-{s}").into();
        media.open(leg, name.clone(), port, None);
        media.spec(leg, pcmu(*phone), None, None);
        media.open_agent(
            agent_leg,
            name,
            leg,
            pcmu(*agent),
            Box::new(agent_spec(s, *agent)),
        );
        media.connect(leg, agent_leg);
        text.push_str(&format!("127.0.0.1:{port}\n"));
        if (s + 1) % BATCH == 0 {
            stats_now();
        }
    }
    let legs = stats_now().len();
    let (bind_failed, dropped) = (counters.bind_failed.get(), counters.commands_dropped.get());
    if legs != 2 * streams || bind_failed != 0 || dropped != 0 {
        fail(format!(
            "{legs} legs of {}, {bind_failed} ports not bound, {dropped} commands dropped",
            2 * streams
        ));
    }
    let tmp = format!("{ports}.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &ports)) {
        fail(format!("{ports}: {e}"));
    }
    println!("SETUP");
    let _ = std::io::stdout().flush();

    // The shard bridges on its own thread; here only the end-of-run totals.
    let done = format!("{ports}.done");
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if std::path::Path::new(&done).exists() {
            break;
        }
    }
    let mut sums: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for l in stats_now() {
        let side = if l.leg & ENDPOINT_BIT != 0 {
            "agent"
        } else {
            "phone"
        };
        let e = sums.entry(side).or_default();
        for (k, v) in [
            ("legs", 1),
            ("rx_packets", l.rx_packets),
            ("rx_lost", l.rx_lost),
            ("tx_packets", l.tx_packets),
            ("generated_packets", l.generated_packets),
            ("dropped_packets", l.dropped_packets),
            ("send_failed", l.send_failed),
        ] {
            *e.entry(k).or_default() += v;
        }
    }
    println!("STATS {}", json!(sums));
    let _ = std::fs::write(format!("{ports}.stats"), json!(sums).to_string());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
