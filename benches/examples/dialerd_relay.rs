//! dialerd's media relay under `benches/relay_load.sh`, driven through its
//! library API (no SIP): one shard thread relaying N bridged G.711 calls.
//!
//!   dialerd_relay --calls N --base-port P --addrs FILE --ports FILE
//!
//! Starts `dialerd::media::Media` with one shard (bind 127.0.0.1, latching
//! to any source address, no inactivity timeout, the relay's other settings
//! at their defaults), prints `READY`, then waits for the load generator's
//! `--addrs` file (one call a line: `A_ADDR B_ADDR`, as `rtp_load` writes
//! it). For each call it opens leg A and leg B, each on the next even port
//! from `P` on whose pair (RTP and the RTCP port after it, which the leg
//! binds too) is free on 127.0.0.1 (so ports other programs hold are
//! skipped; in a free range call `c` gets `P + 4c` and `P + 4c + 2`),
//! gives each the spec the SIP core would after an offer/answer of PCMU
//! (payload type 0, 20 ms, sendrecv, the generator's side as the signalled
//! remote, not watched) and connects them, as a bridged call. Commands go in
//! batches of 250 calls, each followed by a round trip to the shard (its
//! totals), so its command queue never overflows. Once every leg is there
//! and no port failed to bind, it writes `--ports` (one call a line:
//! `127.0.0.1:PA 127.0.0.1:PB`, written whole and renamed into place),
//! prints `SETUP` and relays until it is killed. The relay's reports are
//! drained by a thread of their own. With `DIALERD_AMD` set, leg A of every
//! call also runs answering-machine detection (held undecided, so every
//! frame goes through both stages) on what its peer sends.

use std::sync::Arc;
use std::time::Duration;

use dialerd::cpa::analyzer::AnalysisConfig;
use dialerd::media::{Media, MediaConfig, RelayConfig, ShardCounters};

/// Calls set up between two round trips to the shard.
const BATCH: usize = 250;

#[path = "common/setup.rs"]
mod setup;
use setup::{fail, free_pair, pcmu, wait_pairs};

fn usage() -> ! {
    eprintln!("usage: dialerd_relay --calls N --base-port P --addrs FILE --ports FILE");
    std::process::exit(1);
}

/// Answering-machine detection that never decides while the bench runs
/// (every limit two minutes): both stages analyse every frame, the
/// costliest stretch of a real call's analysis.
fn held_analysis() -> AnalysisConfig {
    let mut c = AnalysisConfig::default();
    let long = 120_000;
    c.cadence.initial_silence = long;
    c.cadence.greeting = long;
    c.cadence.total_analysis = long;
    c.cadence.max_word = long;
    c.cadence.max_words = 1000;
    c.cadence.after_greeting_silence = long;
    c.machine_end_silence = long;
    c.machine_end_timeout = long;
    c
}

fn main() {
    let mut calls = None;
    let mut base = None;
    let mut addrs = None;
    let mut ports = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--calls" => calls = value.parse::<usize>().ok(),
            "--base-port" => base = value.parse::<u16>().ok(),
            "--addrs" => addrs = Some(value),
            "--ports" => ports = Some(value),
            _ => usage(),
        }
    }
    let (Some(calls), Some(base), Some(addrs), Some(ports)) = (calls, base, addrs, ports) else {
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
        batch_wait: std::time::Duration::from_micros(
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
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || while events.blocking_recv().is_some() {})
        .unwrap_or_else(|e| fail(format!("spawn: {e}")));
    // Only for the round trips to the shard (its totals come on a oneshot).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    let reader = media.reader();
    let legs_now = || {
        runtime
            .block_on(reader.stats(Duration::from_secs(30)))
            .len()
    };
    println!("READY");

    let pairs = wait_pairs(&addrs, Duration::from_secs(120)).unwrap_or_else(|e| fail(e));
    if pairs.len() != calls {
        fail(format!("{addrs}: {} calls, expected {calls}", pairs.len()));
    }
    let analysis = (std::env::var("DIALERD_AMD").as_deref() == Ok("1")).then(held_analysis);
    let mut text = String::with_capacity(calls * 32);
    let mut next = base;
    for (c, (gen_a, gen_b)) in pairs.iter().enumerate() {
        let port_a = free_pair(&mut next).unwrap_or_else(|| fail("no free port pair left"));
        let port_b = free_pair(&mut next).unwrap_or_else(|| fail("no free port pair left"));
        let (a, b) = (2 * c as u64 + 1, 2 * c as u64 + 2);
        let name: Arc<str> = format!("bench-{c}").into();
        media.open(a, name.clone(), port_a, None);
        media.open(b, name, port_b, Some(a));
        media.spec(a, pcmu(*gen_a), None, None);
        media.spec(b, pcmu(*gen_b), None, None);
        media.connect(a, b);
        if let Some(config) = analysis {
            media.analyse(a, Some((config, true, 0)));
        }
        text.push_str(&format!("127.0.0.1:{port_a} 127.0.0.1:{port_b}\n"));
        if (c + 1) % BATCH == 0 {
            legs_now();
        }
    }
    let legs = legs_now();
    let (bind_failed, dropped) = (counters.bind_failed.get(), counters.commands_dropped.get());
    if legs != 2 * calls || bind_failed != 0 || dropped != 0 {
        fail(format!(
            "{legs} legs of {}, {bind_failed} ports not bound, {dropped} commands dropped",
            2 * calls
        ));
    }
    let tmp = format!("{ports}.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &ports)) {
        fail(format!("{ports}: {e}"));
    }
    println!("SETUP");
    // The shard relays on its own thread until the process is killed.
    loop {
        std::thread::park();
    }
}
