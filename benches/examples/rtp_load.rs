//! An RTP load of bridged G.711 calls through a relay, for
//! `benches/relay_load.sh`: relayed packets, loss, and the latency the relay
//! adds, with the relay's CPU and memory over the measured window.
//!
//!   rtp_load --calls N --addrs FILE (--relay FILE | --direct) [--warmup S] [--secs S]
//!
//! Per call it binds two UDP sockets on 127.0.0.1 (side A and side B, ports
//! chosen by the kernel) and writes their addresses to `--addrs`, one call a
//! line: `A_ADDR B_ADDR` (written whole, then renamed into place). Then it
//! waits (at most `--setup-timeout`, 120 s by default) for the `--relay`
//! file, one call a line: `PA PB`, the relay's address for that call's A
//! side and B side. A sends to PA, B to PB; the relay sends A's packets out
//! of PB to B and B's out of PA to A (symmetric RTP: each socket is
//! connected to its relay port and takes only what comes from it). With
//! With `RTP_LOAD_PAYLOAD=tone` the rest of the payload is a 1 kHz tone
//! instead of µ-law silence (for relays that analyse the audio). With
//! `--direct` there is no relay: A sends straight to B and B to A (the cost
//! of loopback and of this process, which a relay's latency is compared
//! with).
//!
//! Each side sends one 172-byte RTP packet every 20 ms (version 2, PT 0,
//! sequence + 1, timestamp + 160, an SSRC per stream); the first 16 bytes of
//! its 160-byte payload are the send time (nanoseconds since this process's
//! monotonic origin, taken just before `send`) and the stream's index
//! (`2 * call + side`). The 2N streams start at phases spread evenly over
//! the 20 ms, so the load is even. One thread does it all and never
//! sleeps (so it takes a core): each turn it sends every packet that is due
//! (at most 32), then polls every socket without waiting (mio, zero
//! timeout) and drains the ready ones. Busy polling keeps the sends on
//! schedule and the receive times exact, and the relay never has to wake
//! this process up (as it would not have to wake a remote host). It checks
//! that each packet came on the socket of its stream's other side and takes
//! `now - stamp` as its latency (same clock). `generator_busy_percent` is
//! the part of the window spent in turns that sent or received something:
//! the load's own headroom (near 100 %, or sends late by more than 1 ms,
//! means the generator is the limit); `generator_stalls_over_1ms` counts the
//! turns that began more than 1 ms after the one before (the thread was
//! preempted), and `over_1ms_by_second` the packets slower than 1 ms by
//! second of the window.
//!
//! Timeline: sends start 100 ms after setup; `--warmup` seconds (3 by
//! default) are not counted; the `--secs` (10) after that are measured:
//! packets whose send stamp falls in the window count as sent, and as
//! received when they arrive (at most 500 ms after the window, when the
//! load stops). Lost = sent - received; seq gaps and reorders are
//! counted per stream as well (a packet whose sequence is behind the last
//! one of its stream counts as reordered).
//!
//! CPU and memory: `CPU_PIDS="name=PID ..."` (environment) names processes
//! whose utime + stime (`/proc/PID/stat`), on-CPU time
//! (`/proc/PID/task/*/schedstat`, first field) and voluntary context
//! switches (`/proc/PID/task/*/status`: sleeps, each ended by a wake-up) are
//! read at the start and the end of the window, with this process's own
//! (the load thread never sleeps, so its CPU is the whole window); their VmRSS
//! (`/proc/PID/status`) is read before the addresses are written (before
//! the relay sets the calls up), once the relay file is there, and at the
//! end of the window. The machine's UDP error counters (`/proc/net/snmp`)
//! and each CPU's busy, softirq and steal time (`/proc/stat`) over the
//! window are printed too.
//!
//! Output: `READY` once the addresses are written, `RUNNING` when sends
//! start, then one line `RESULT {json}`. Exit 1 on bad arguments or when the
//! relay file does not come in time.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};

/// The packetization interval.
const PERIOD_NS: u64 = 20_000_000;
/// RTP header + 20 ms of G.711.
const PACKET: usize = 172;
/// Samples per packet (RTP timestamp step).
const SAMPLES: u32 = 160;
/// Where the send stamp and the stream index sit (start of the payload).
const STAMP_AT: usize = 12;
const STREAM_AT: usize = 20;
/// Sends at most this many packets between two polls of the sockets.
const SEND_BURST: usize = 32;
/// How long the load goes on receiving after the window.
const DRAIN: Duration = Duration::from_millis(500);
/// Latency histogram: 100 ns buckets up to 100 ms, then 100 µs buckets up
/// to 10 s; later than that goes to `overflow`.
const FINE_NS: u64 = 100;
const FINE_UNTIL_NS: u64 = 100_000_000;
const COARSE_NS: u64 = 100_000;
const BUCKETS: usize =
    (FINE_UNTIL_NS / FINE_NS + (10_000_000_000 - FINE_UNTIL_NS) / COARSE_NS) as usize;

/// The histogram bucket of a latency, if below 10 s.
fn bucket(ns: u64) -> usize {
    if ns < FINE_UNTIL_NS {
        (ns / FINE_NS) as usize
    } else {
        (FINE_UNTIL_NS / FINE_NS + (ns - FINE_UNTIL_NS) / COARSE_NS) as usize
    }
}

/// The upper edge of bucket `i`, nanoseconds.
fn bucket_top(i: usize) -> u64 {
    let fine = (FINE_UNTIL_NS / FINE_NS) as usize;
    if i < fine {
        (i as u64 + 1) * FINE_NS
    } else {
        FINE_UNTIL_NS + ((i - fine) as u64 + 1) * COARSE_NS
    }
}

struct Args {
    calls: usize,
    addrs: String,
    relay: Option<String>,
    warmup: Duration,
    secs: Duration,
    setup_timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: rtp_load --calls N --addrs FILE (--relay FILE | --direct) [--warmup SECS] [--secs SECS] \
         [--setup-timeout SECS]"
    );
    std::process::exit(1);
}

fn parse_args() -> Args {
    let mut calls = None;
    let mut addrs = None;
    let mut relay = None;
    let mut direct = false;
    let mut warmup = 3.0;
    let mut secs = 10.0;
    let mut setup_timeout = 120.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--direct" {
            direct = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        let secs_of = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--calls" => {
                calls = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--addrs" => addrs = Some(value),
            "--relay" => relay = Some(value),
            "--warmup" => warmup = secs_of(&value),
            "--secs" => secs = secs_of(&value),
            "--setup-timeout" => setup_timeout = secs_of(&value),
            _ => usage(),
        }
    }
    let (Some(calls), Some(addrs)) = (calls, addrs) else {
        usage()
    };
    if direct == relay.is_some() {
        usage();
    }
    Args {
        calls,
        addrs,
        relay,
        warmup: Duration::from_secs_f64(warmup),
        secs: Duration::from_secs_f64(secs),
        setup_timeout: Duration::from_secs_f64(setup_timeout),
    }
}

/// Writes `text` to `path` whole: a reader never sees half of it.
fn write_whole(path: &str, text: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Reads the relay file once it is there: one `PA PB` line per call.
fn wait_relay(
    path: &str,
    calls: usize,
    limit: Duration,
) -> Result<Vec<(SocketAddr, SocketAddr)>, String> {
    let deadline = Instant::now() + limit;
    let text = loop {
        match std::fs::read_to_string(path) {
            Ok(text) => break text,
            Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("{path}: {e}")),
        }
    };
    let mut out = Vec::with_capacity(calls);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(a), Some(b)) = (words.next(), words.next()) else {
            return Err(format!("{path}: bad line {line:?}"));
        };
        let a = a.parse().map_err(|e| format!("{path}: {a}: {e}"))?;
        let b = b.parse().map_err(|e| format!("{path}: {b}: {e}"))?;
        out.push((a, b));
    }
    if out.len() != calls {
        return Err(format!("{path}: {} calls, expected {calls}", out.len()));
    }
    Ok(out)
}

/// What was sent.
#[derive(Default)]
struct Sent {
    total: u64,
    in_window: u64,
    errors: u64,
    /// Sends more than 1 ms after they were due, in the window.
    late_over_1ms: u64,
    /// The latest send in the window, nanoseconds after it was due.
    late_max_ns: u64,
}

/// What was received.
struct Received {
    in_window: u64,
    total: u64,
    seq_gaps: u64,
    reordered: u64,
    /// A stream's packet on a socket that is not its other side's.
    misrouted: u64,
    /// Not one of ours (too short, not RTP, no valid stamp): e.g. a relay's
    /// own silence; and those of them that came in the window.
    foreign: u64,
    foreign_in_window: u64,
    errors: u64,
    histogram: Vec<u32>,
    /// Packets slower than 1 ms, by second of the window (of their send).
    slow_by_second: Vec<u64>,
    overflow: u64,
    max_ns: u64,
    sum_ns: u128,
}

impl Received {
    fn new() -> Received {
        Received {
            in_window: 0,
            total: 0,
            seq_gaps: 0,
            reordered: 0,
            misrouted: 0,
            foreign: 0,
            foreign_in_window: 0,
            errors: 0,
            histogram: vec![0; BUCKETS],
            slow_by_second: Vec::new(),
            overflow: 0,
            max_ns: 0,
            sum_ns: 0,
        }
    }
}

/// The run's timeline, in nanoseconds since the origin.
#[derive(Clone, Copy)]
struct Timeline {
    origin: Instant,
    /// The first send.
    start: Instant,
    /// The measured window: sends stamped in `[from, to)` count.
    from: u64,
    to: u64,
    /// No send from here on.
    end: Instant,
    /// The loop stops here.
    stop: Instant,
}

/// What the load loop did.
struct Load {
    sent: Sent,
    received: Received,
    /// Time in the window spent in loop turns that sent or received
    /// something (the rest was polling an idle socket set).
    busy_ns: u64,
    /// Turns in the window that began more than 1 ms after the previous
    /// one (the thread was preempted, or a call took that long), and the
    /// longest such gap.
    stalls_over_1ms: u64,
    stall_max_ns: u64,
}

/// The whole load on one thread that never sleeps: each turn sends every
/// packet that is due (at most `SEND_BURST`), then polls every socket
/// without waiting (`epoll_wait` with a zero timeout) and drains the ready
/// ones. Stream `s` sends at `start + round * 20 ms + s * 20 ms / streams`.
/// Busy polling keeps the send times on schedule and the receive times
/// exact (a sleeping thread would see both late by its wake-up), and the
/// relay never has to wake this process up, as it would not have to wake a
/// remote host.
fn load_loop(mut sockets: Vec<mio::net::UdpSocket>, t: Timeline) -> std::io::Result<Load> {
    let mut poll = Poll::new()?;
    for (i, socket) in sockets.iter_mut().enumerate() {
        poll.registry()
            .register(socket, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let streams = sockets.len();
    let n = streams as u64;
    let mut seq: Vec<u16> = (0..n).map(|s| (s as u16).wrapping_mul(7919)).collect();
    let mut next_seq: Vec<Option<u16>> = vec![None; streams];
    let mut packet = [0xFFu8; PACKET]; // µ-law silence after the stamp
    if std::env::var("RTP_LOAD_PAYLOAD").as_deref() == Ok("tone") {
        // A 1 kHz tone at about -10 dBm0 (20 whole cycles a frame, so the
        // same frame repeats seamlessly), for relays that analyse audio.
        for (i, b) in packet.iter_mut().enumerate().skip(12) {
            let t = (i - 12) as f64 / 8000.0;
            *b = ulaw((8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16);
        }
    }
    packet[0] = 0x80;
    packet[1] = 0;
    let mut buf = [0u8; 2048];
    let mut sent = Sent::default();
    let mut r = Received::new();
    let mut busy_ns = 0u64;
    let (mut stalls_over_1ms, mut stall_max_ns) = (0u64, 0u64);
    let mut last_turn = Instant::now();
    let due_of = |k: u64| {
        let s = k % n;
        t.start + Duration::from_nanos((k / n) * PERIOD_NS + s * PERIOD_NS / n)
    };
    let mut k: u64 = 0;
    let mut due = due_of(0);
    loop {
        let turn = Instant::now();
        if turn >= t.stop {
            break;
        }
        let at = turn.duration_since(t.origin).as_nanos() as u64;
        if at >= t.from && at < t.to {
            let gap = turn.duration_since(last_turn).as_nanos() as u64;
            stall_max_ns = stall_max_ns.max(gap);
            stalls_over_1ms += u64::from(gap > 1_000_000);
        }
        last_turn = turn;
        let mut worked = false;
        let mut burst = 0;
        while due <= turn && due < t.end && burst < SEND_BURST {
            let s = (k % n) as usize;
            let seq_s = seq[s];
            seq[s] = seq_s.wrapping_add(1);
            let ts = u32::from(seq_s)
                .wrapping_mul(SAMPLES)
                .wrapping_add(s as u32 * 1_000_003);
            packet[2..4].copy_from_slice(&seq_s.to_be_bytes());
            packet[4..8].copy_from_slice(&ts.to_be_bytes());
            packet[8..12].copy_from_slice(&(0x5EED_0000u32 ^ s as u32).to_be_bytes());
            packet[STREAM_AT..STREAM_AT + 8].copy_from_slice(&(s as u64).to_be_bytes());
            let now = Instant::now();
            let stamp = now.duration_since(t.origin).as_nanos() as u64;
            packet[STAMP_AT..STAMP_AT + 8].copy_from_slice(&stamp.to_be_bytes());
            let counted = stamp >= t.from && stamp < t.to;
            if sockets[s].send(&packet).is_ok() {
                sent.total += 1;
                sent.in_window += u64::from(counted);
            } else {
                sent.errors += 1;
            }
            if counted {
                let late = now.saturating_duration_since(due).as_nanos() as u64;
                sent.late_max_ns = sent.late_max_ns.max(late);
                sent.late_over_1ms += u64::from(late > 1_000_000);
            }
            k += 1;
            due = due_of(k);
            burst += 1;
            worked = true;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::ZERO))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
        for event in events.iter() {
            let j = event.token().0;
            let socket = &sockets[j];
            loop {
                let len = match socket.recv(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        r.errors += 1;
                        break;
                    }
                };
                worked = true;
                let now = t.origin.elapsed().as_nanos() as u64;
                record(&mut r, &mut next_seq, j, &buf[..len], now, (t.from, t.to));
            }
        }
        if worked && at >= t.from && at < t.to {
            busy_ns += turn.elapsed().as_nanos() as u64;
        }
    }
    Ok(Load {
        sent,
        received: r,
        busy_ns,
        stalls_over_1ms,
        stall_max_ns,
    })
}

/// Counts a packet that came in on socket `j` at `now`.
fn record(
    r: &mut Received,
    next_seq: &mut [Option<u16>],
    j: usize,
    packet: &[u8],
    now: u64,
    window: (u64, u64),
) {
    let word = |at: usize| {
        packet
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(u64::MAX, u64::from_be_bytes)
    };
    let stream = word(STREAM_AT);
    let stamp = word(STAMP_AT);
    if packet.len() < STREAM_AT + 8
        || packet[0] >> 6 != 2
        || stream >= next_seq.len() as u64
        || stamp > now
    {
        r.foreign += 1;
        r.foreign_in_window += u64::from(now >= window.0 && now < window.1);
        return;
    }
    // The packet of stream s comes out on the other side's socket.
    if stream as usize != j ^ 1 {
        r.misrouted += 1;
        return;
    }
    r.total += 1;
    let counted = stamp >= window.0 && stamp < window.1;
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let next = &mut next_seq[j];
    match *next {
        Some(expected) if seq != expected => {
            let ahead = seq.wrapping_sub(expected);
            if ahead < 0x8000 {
                if counted {
                    r.seq_gaps += u64::from(ahead);
                }
                *next = Some(seq.wrapping_add(1));
            } else if counted {
                r.reordered += 1;
            }
        }
        _ => *next = Some(seq.wrapping_add(1)),
    }
    if counted {
        let latency = now - stamp;
        r.in_window += 1;
        r.sum_ns += u128::from(latency);
        r.max_ns = r.max_ns.max(latency);
        if latency > 1_000_000 {
            let second = ((stamp - window.0) / 1_000_000_000) as usize;
            if r.slow_by_second.len() <= second {
                r.slow_by_second.resize(second + 1, 0);
            }
            r.slow_by_second[second] += 1;
        }
        match r.histogram.get_mut(bucket(latency)) {
            Some(b) => *b += 1,
            None => r.overflow += 1,
        }
    }
}

/// The latency under which a fraction `q` of the samples lie, microseconds
/// (the upper edge of its bucket, 100 ns wide below 100 ms and 100 µs above,
/// or the maximum if lower; the maximum beyond 10 s).
fn quantile_us(r: &Received, q: f64) -> Option<f64> {
    let total = r.in_window;
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, count) in r.histogram.iter().enumerate() {
        seen += u64::from(*count);
        if seen >= rank {
            return Some(round1(bucket_top(i).min(r.max_ns) as f64 / 1000.0));
        }
    }
    Some(round1(r.max_ns as f64 / 1000.0))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One process's CPU and memory readings.
#[derive(Default, Clone, Copy)]
struct ProcSample {
    ticks: u64,
    runtime_ns: u64,
    wait_ns: u64,
    sleeps: u64,
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses): state first, utime and stime
    // at 11 and 12 (fields 14 and 15 of the line).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(get(11)? + get(12)?)
}

/// Of a process's live threads: on-CPU and run-queue time, nanoseconds
/// (`/proc/PID/task/*/schedstat`, first and second fields), and voluntary
/// context switches (`/proc/PID/task/*/status`: each is a sleep, and the
/// wake-up after it).
fn task_sums(pid: &str) -> (u64, u64, u64) {
    let mut sums = (0, 0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return sums;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let mut fields = stat
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        sums.0 += fields.next().unwrap_or(0);
        sums.1 += fields.next().unwrap_or(0);
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        sums.2 += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sums
}

fn sample(pid: &str) -> ProcSample {
    let (runtime_ns, wait_ns, sleeps) = task_sums(pid);
    ProcSample {
        ticks: cpu_ticks(pid).unwrap_or(0),
        runtime_ns,
        wait_ns,
        sleeps,
    }
}

/// VmRSS of a process, kB.
fn rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The machine's UDP counters (`/proc/net/snmp`, the `Udp:` lines).
fn udp_counters() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
    let mut out = BTreeMap::new();
    if let [names, values] = lines.as_slice() {
        for (name, value) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = value.parse() {
                out.insert(name.to_owned(), v);
            }
        }
    }
    out
}

/// Each CPU's times (`/proc/stat`, the `cpuN` lines), in clock ticks.
fn cpu_times() -> BTreeMap<String, Vec<u64>> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?.to_owned();
            Some((name, fields.map(|f| f.parse().unwrap_or(0)).collect()))
        })
        .collect()
}

/// Per CPU over the window: busy (all but idle and iowait), of which system
/// and softirq, and steal, in percent of the CPU's time.
fn cpu_use(start: &BTreeMap<String, Vec<u64>>, end: &BTreeMap<String, Vec<u64>>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, b) in end {
        let Some(a) = start.get(name) else { continue };
        let d: Vec<f64> = b
            .iter()
            .zip(a)
            .map(|(b, a)| b.saturating_sub(*a) as f64)
            .collect();
        // user nice system idle iowait irq softirq steal
        let whole: f64 = d.iter().take(8).sum::<f64>().max(1.0);
        let at = |i: usize| d.get(i).copied().unwrap_or(0.0);
        out.insert(
            name.clone(),
            json!({
                "busy_percent": round1(100.0 * (whole - at(3) - at(4)) / whole),
                "system_percent": round1(100.0 * at(2) / whole),
                "softirq_percent": round1(100.0 * at(6) / whole),
                "steal_percent": round1(100.0 * at(7) / whole),
            }),
        );
    }
    Value::Object(out)
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// G.711 µ-law of a linear sample (the payload of `RTP_LOAD_PAYLOAD=tone`).
fn ulaw(sample: i16) -> u8 {
    dialerd::media::g711::Law::Mu.encode(sample)
}

fn main() {
    let args = parse_args();
    let origin = Instant::now();
    let mut pids: Vec<(String, String)> = std::env::var("CPU_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(n, p)| (n.to_owned(), p.to_owned())))
        .collect();
    pids.push(("rtp_load".to_owned(), std::process::id().to_string()));

    let streams = args.calls * 2;
    let mut std_sockets = Vec::with_capacity(streams);
    for _ in 0..streams {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| {
            eprintln!("bind: {e}");
            std::process::exit(1)
        });
        socket.set_nonblocking(true).unwrap_or_else(|e| {
            eprintln!("nonblocking: {e}");
            std::process::exit(1)
        });
        std_sockets.push(socket);
    }
    let locals: Vec<SocketAddr> = std_sockets
        .iter()
        .map(|s| s.local_addr().expect("bound socket has an address"))
        .collect();
    let rss_before: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();
    let mut text = String::with_capacity(streams * 20);
    for pair in locals.chunks(2) {
        text.push_str(&format!("{} {}\n", pair[0], pair[1]));
    }
    if let Err(e) = write_whole(&args.addrs, &text) {
        eprintln!("{}: {e}", args.addrs);
        std::process::exit(1);
    }
    println!("READY");

    let targets: Vec<SocketAddr> = match &args.relay {
        None => (0..streams).map(|s| locals[s ^ 1]).collect(),
        Some(path) => match wait_relay(path, args.calls, args.setup_timeout) {
            Ok(pairs) => pairs.iter().flat_map(|(a, b)| [*a, *b]).collect(),
            Err(e) => {
                eprintln!("relay file: {e}");
                std::process::exit(1);
            }
        },
    };
    let setup_secs = origin.elapsed().as_secs_f64();
    let rss_setup: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();

    // Connected: a send skips the route lookup, and a socket takes only what
    // comes from its relay port (a relay answers from the port it was sent to).
    for (socket, target) in std_sockets.iter().zip(&targets) {
        if let Err(e) = socket.connect(target) {
            eprintln!("connect {target}: {e}");
            std::process::exit(1);
        }
    }
    let sockets: Vec<mio::net::UdpSocket> = std_sockets
        .into_iter()
        .map(mio::net::UdpSocket::from_std)
        .collect();
    let start = Instant::now() + Duration::from_millis(100);
    let warm = start + args.warmup;
    let end = warm + args.secs;
    let timeline = Timeline {
        origin,
        start,
        from: warm.duration_since(origin).as_nanos() as u64,
        to: end.duration_since(origin).as_nanos() as u64,
        end,
        stop: end + DRAIN,
    };
    let load = std::thread::Builder::new()
        .name("load".into())
        .spawn(move || load_loop(sockets, timeline))
        .expect("spawn the load thread");
    println!("RUNNING");
    let _ = std::io::stdout().flush();

    sleep_until(warm);
    let cpu_start: Vec<ProcSample> = pids.iter().map(|(_, p)| sample(p)).collect();
    let udp_start = udp_counters();
    let cpus_start = cpu_times();
    let measured_from = Instant::now();
    sleep_until(end);
    let cpu_end: Vec<ProcSample> = pids.iter().map(|(_, p)| sample(p)).collect();
    let udp_end = udp_counters();
    let cpus_end = cpu_times();
    let measured = measured_from.elapsed().as_secs_f64();
    let rss_end: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();

    let Load {
        sent,
        received,
        busy_ns,
        stalls_over_1ms,
        stall_max_ns,
    } = match load.join().expect("the load thread panicked") {
        Ok(load) => load,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
    };

    let hz = clock_ticks_per_sec() as f64;
    let relayed = received.in_window.max(1) as f64;
    let mut cpu = serde_json::Map::new();
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (a, b) = (cpu_start[i], cpu_end[i]);
        let secs = b.ticks.saturating_sub(a.ticks) as f64 / hz;
        let runtime = b.runtime_ns.saturating_sub(a.runtime_ns) as f64 / 1e9;
        cpu.insert(
            name.clone(),
            json!({
                "pid": pid,
                "cpu_s": round3(secs),
                "us_per_packet": round3(secs * 1e6 / relayed),
                "core_percent": round1(100.0 * secs / measured),
                "schedstat_cpu_s": round3(runtime),
                "schedstat_us_per_packet": round3(runtime * 1e6 / relayed),
                "runqueue_wait_ms": round1(b.wait_ns.saturating_sub(a.wait_ns) as f64 / 1e6),
                "sleeps_per_packet": round3(b.sleeps.saturating_sub(a.sleeps) as f64 / relayed),
                "rss_kb": {"before_setup": rss_before[i], "after_setup": rss_setup[i], "end": rss_end[i]},
            }),
        );
    }
    let udp: BTreeMap<&String, i64> = udp_end
        .iter()
        .map(|(k, v)| (k, v - udp_start.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| *v != 0 && k.contains("Err"))
        .collect();
    let expected = (streams as u64) * (args.secs.as_nanos() as u64 / PERIOD_NS);
    let result: Value = json!({
        "calls": args.calls,
        "direct": args.relay.is_none(),
        "window_s": round3(measured),
        "setup_s": round3(setup_secs),
        "packets_expected": expected,
        "packets_sent": sent.in_window,
        "packets_received": received.in_window,
        "lost": sent.in_window.saturating_sub(received.in_window),
        "relayed_pps": round1(received.in_window as f64 / args.secs.as_secs_f64()),
        "seq_gaps": received.seq_gaps,
        "reordered": received.reordered,
        "misrouted": received.misrouted,
        "foreign": received.foreign,
        "foreign_in_window": received.foreign_in_window,
        "send_errors": sent.errors,
        "recv_errors": received.errors,
        "sent_total": sent.total,
        "received_total": received.total,
        "send_late_max_us": round1(sent.late_max_ns as f64 / 1000.0),
        "send_late_over_1ms": sent.late_over_1ms,
        "generator_busy_percent": round1(100.0 * busy_ns as f64 / 1e9 / args.secs.as_secs_f64()),
        "generator_stalls_over_1ms": stalls_over_1ms,
        "generator_stall_max_us": round1(stall_max_ns as f64 / 1000.0),
        "over_1ms_by_second": received.slow_by_second,
        "p50_us": quantile_us(&received, 0.50),
        "p90_us": quantile_us(&received, 0.90),
        "p99_us": quantile_us(&received, 0.99),
        "p999_us": quantile_us(&received, 0.999),
        "max_us": round1(received.max_ns as f64 / 1000.0),
        "mean_us": round1(received.sum_ns as f64 / relayed / 1000.0),
        "over_10s": received.overflow,
        "cpu": cpu,
        "udp_errors": udp,
        "cpus": cpu_use(&cpus_start, &cpus_end),
    });
    println!("RESULT {result}");
}
