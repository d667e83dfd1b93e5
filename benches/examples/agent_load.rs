//! The load of `benches/agent_load.sh`: N phones and their N voice agents
//! in one process, around dialerd's AI-agent media bridge: media messages
//! each way, loss, latency each way, with dialerd's CPU over the window.
//!
//!   agent_load --streams N --addrs FILE --ports FILE [--warmup S] [--secs S]
//!              [--setup-timeout S]
//!
//! It binds N UDP sockets (the phones) and one TCP listener (the agents'
//! WebSocket server) on 127.0.0.1, and writes `--addrs`, one stream a line:
//! `PHONE_ADDR AGENT_ADDR` (written whole, then renamed into place). Then,
//! on one thread: it accepts dialerd's connections and answers their
//! upgrades (a minimal RFC 6455 server: the request head read up to its
//! blank line, `101` with `Sec-WebSocket-Accept` from
//! `dialerd::agent::ws::accept_for`; client frames unmasked, fragments
//! joined; frames sent unmasked; pings answered, a close echoed), maps each
//! connection to its stream by the `stream` custom parameter of its `start`
//! message, and reads `--ports` (one stream a line: `127.0.0.1:PORT`, the
//! phone leg's port in dialerd) to connect each phone's socket to its leg.
//! Once every stream has started (at most `--setup-timeout`, 120 s) the
//! load starts 100 ms later:
//!
//! - each phone sends a 172-byte RTP packet (PT 0, 160-byte payload) every
//!   20 ms, the N streams at phases spread evenly over the 20 ms; the first
//!   16 payload bytes are the send time (ns since this process's monotonic
//!   origin, taken just before `send`) and the stream's index. dialerd sends
//!   each as a `media` message (the payload base64'd unchanged, PCMU) to the
//!   stream's agent, which takes arrival time − stamp as the RTP→WS latency;
//! - each agent sends a `media` message every 20 ms (the same spread, 10 ms
//!   after its phone), its 160-byte µ-law payload carrying its own stamp and
//!   index the same way. dialerd queues it and plays it to the phone as RTP
//!   at the stream's own 20 ms deadlines (playback starts once 60 ms are
//!   queued); the phone takes arrival − stamp as the WS→RTP latency. Its
//!   frames are whole messages (160 bytes in, 160 out), so the latency is
//!   the stream's constant pacing (the queue's depth, the phase of its
//!   deadlines) plus what dialerd and the machine add; `jitter added` is
//!   the distribution of latency − that stream's minimum latency over the
//!   window, which leaves the constant out. A frame with no stamp (silence,
//!   no agent audio queued) arriving in the window is an underrun.
//!   A late send of the agent's lowers that message's latency, and so the
//!   stream's minimum (which then shows up as jitter on all its other
//!   messages); `jitter_added_vs_schedule` takes the latency from the
//!   message's scheduled send time instead (payload bytes 16..24), which a
//!   late send does not move. `cadence_lateness` leaves the agents' send times out as well: per
//!   phone, each packet's arrival − (its RTP sequence's distance from the
//!   first in the window) × 20 ms, less the stream's smallest such offset:
//!   how late dialerd's frames arrive against the stream's best 20 ms grid.
//!
//! One thread does it all and never sleeps once the load runs: each turn it
//! sends what is due (at most 32 packets and messages), then polls every
//! socket without waiting (mio, zero timeout) and drains the ready ones.
//! `late` counts sends more than 1 ms after they were due; "generator busy"
//! is the part of the window spent in turns that sent or received
//! something; stalls are turns that began more than 1 ms after the previous
//! one. Sends are counted by stamp in the window (`--warmup`, 3 s, then
//! `--secs`, 10 s), received when they arrive (at most 500 ms after the
//! window, when the load stops); lost = sent − received.
//!
//! CPU: `CPU_PIDS="name=PID ..."` names processes whose utime + stime
//! (`/proc/PID/stat`, all threads), on-CPU and run-queue time
//! (`/proc/PID/task/*/schedstat`) and sleeps (voluntary context switches)
//! are read at the window's edges, and this process's own. CPU per message
//! divides by the messages arriving in the window both ways (media messages
//! at the agents, RTP at the phones, silence included).
//!
//! After the window it creates `--ports` + `.done` and waits (at most 3 s)
//! for `--ports` + `.stats` (dialerd_agent's legs' totals, read before the
//! connections close). Output: `READY`, `RUNNING` when the load starts,
//! then `RESULT {json}`. Exit 1 on bad arguments or a failed setup.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};

/// The packetization interval.
const PERIOD_NS: u64 = 20_000_000;
/// The agents send this long after their phones (same spread).
const AGENT_OFFSET_NS: u64 = PERIOD_NS / 2;
/// RTP header + 20 ms of G.711.
const PACKET: usize = 172;
const HEADER: usize = 12;
const PAYLOAD: usize = 160;
/// Samples per packet (RTP timestamp step).
const SAMPLES: u32 = 160;
/// Sends at most this many packets and messages between two polls.
const SEND_BURST: usize = 32;
/// How long the load goes on receiving after the window.
const DRAIN: Duration = Duration::from_millis(500);
/// A request head longer than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// The listener's token; connections follow it.
const LISTENER: usize = 1 << 30;

struct Args {
    streams: usize,
    addrs: String,
    ports: String,
    warmup: Duration,
    secs: Duration,
    setup_timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: agent_load --streams N --addrs FILE --ports FILE [--warmup SECS] [--secs SECS] \
         [--setup-timeout SECS]"
    );
    std::process::exit(1);
}

fn parse_args() -> Args {
    let mut streams = None;
    let mut addrs = None;
    let mut ports = None;
    let mut warmup = 3.0;
    let mut secs = 10.0;
    let mut setup_timeout = 120.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let secs_of = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--streams" => {
                streams = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--addrs" => addrs = Some(value),
            "--ports" => ports = Some(value),
            "--warmup" => warmup = secs_of(&value),
            "--secs" => secs = secs_of(&value),
            "--setup-timeout" => setup_timeout = secs_of(&value),
            _ => usage(),
        }
    }
    let (Some(streams), Some(addrs), Some(ports)) = (streams, addrs, ports) else {
        usage()
    };
    Args {
        streams,
        addrs,
        ports,
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

/// The ports file, if it is there and whole: one address per stream.
fn read_ports(path: &str, streams: usize) -> Result<Option<Vec<SocketAddr>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let out: Vec<SocketAddr> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().map_err(|e| format!("{path}: {l}: {e}")))
        .collect::<Result<_, _>>()?;
    if out.len() != streams {
        return Err(format!("{path}: {} streams, expected {streams}", out.len()));
    }
    Ok(Some(out))
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

/// One of dialerd's WebSocket connections.
struct Conn {
    socket: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    upgraded: bool,
    stream: Option<usize>,
    sid: String,
    /// A fragmented message being joined.
    fragments: Vec<u8>,
    closed: bool,
}

/// Everything counted.
#[derive(Default)]
struct Counts {
    // Phone -> dialerd -> agent.
    rtp_sent: u64,
    rtp_sent_in_window: u64,
    rtp_send_errors: u64,
    rtp_late_over_1ms: u64,
    rtp_late_max_ns: u64,
    media_received: u64,
    media_in_window: u64,
    media_arrived_in_window: u64,
    media_misrouted: u64,
    media_bad: u64,
    /// Media with no stamp of ours (all 0xFF: the relay's silence fill
    /// while the phone sends nothing), and those arriving in the window.
    media_silence: u64,
    media_silence_in_window: u64,
    media_odd_size: u64,
    up_ns: Vec<u32>,
    // Agent -> dialerd -> phone.
    ws_sent: u64,
    ws_sent_in_window: u64,
    ws_not_ready: u64,
    ws_late_over_1ms: u64,
    ws_late_max_ns: u64,
    ws_write_partial: u64,
    ws_out_max: usize,
    ws_write_errors: u64,
    rtp_received: u64,
    rtp_in_window: u64,
    rtp_arrived_in_window: u64,
    silence_in_window: u64,
    silence_total: u64,
    rtp_misrouted: u64,
    rtp_foreign: u64,
    seq_gaps: u64,
    reordered: u64,
    rtp_recv_errors: u64,
    down_ns: Vec<Vec<u32>>,
    /// The same against the agent's scheduled send time (its due time, in
    /// payload bytes 16..24), which a late send does not move.
    down_due_ns: Vec<Vec<u32>>,
    /// Per phone: arrival (ns) and RTP sequence number of every packet
    /// from dialerd arriving in the window, silence included.
    arrivals: Vec<Vec<(u64, u16)>>,
    // The connections.
    accepted: u64,
    started: usize,
    messages: BTreeMap<String, u64>,
    pings: u64,
    closed: u64,
    closed_in_window: u64,
    conn_errors: u64,
    // The generator.
    busy_ns: u64,
    stalls_over_1ms: u64,
    stall_max_ns: u64,
}

struct Load {
    streams: usize,
    origin: Instant,
    phones: Vec<UdpSocket>,
    listener: TcpListener,
    conns: Vec<Conn>,
    by_stream: Vec<Option<usize>>,
    next_seq: Vec<Option<u16>>,
    /// The window, ns since the origin; nothing counts before the timeline.
    window: (u64, u64),
    c: Counts,
    scratch: Vec<u8>,
    decoded: Vec<u8>,
}

fn ns_since(origin: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(origin).as_nanos() as u64
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// An unmasked server frame.
fn frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

impl Conn {
    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self, c: &mut Counts) {
        while !self.out.is_empty() && !self.closed {
            match self.socket.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.ws_write_errors += 1;
                    self.closed = true;
                }
            }
        }
    }
}

impl Load {
    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window.0 && ns < self.window.1
    }

    fn accept(&mut self, poll: &Poll) -> std::io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let index = self.conns.len();
                    poll.registry().register(
                        &mut socket,
                        Token(LISTENER + 1 + index),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    self.c.accepted += 1;
                    self.conns.push(Conn {
                        socket,
                        inbuf: Vec::with_capacity(4096),
                        out: Vec::new(),
                        upgraded: false,
                        stream: None,
                        sid: String::new(),
                        fragments: Vec::new(),
                        closed: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Connection `i` is ready: reads all there is and handles it, then
    /// writes what is queued. True if it read anything.
    fn conn_ready(&mut self, i: usize) -> bool {
        let mut worked = false;
        loop {
            let Some(conn) = self.conns.get_mut(i) else {
                return worked;
            };
            if conn.closed {
                return worked;
            }
            match conn.socket.read(&mut self.scratch) {
                Ok(0) => {
                    conn.closed = true;
                    self.c.closed += 1;
                    let now = ns_since(self.origin, Instant::now());
                    self.c.closed_in_window += u64::from(self.in_window(now));
                    return worked;
                }
                Ok(n) => {
                    worked = true;
                    let now = ns_since(self.origin, Instant::now());
                    let conn = &mut self.conns[i];
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    self.process(i, now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.closed = true;
                    self.c.conn_errors += 1;
                    return worked;
                }
            }
        }
        let conn = &mut self.conns[i];
        conn.flush(&mut self.c);
        worked
    }

    /// Handles what connection `i` has buffered.
    fn process(&mut self, i: usize, now: u64) {
        let mut inbuf = std::mem::take(&mut self.conns[i].inbuf);
        let mut used = 0;
        if !self.conns[i].upgraded {
            let Some(end) = find(&inbuf, b"\r\n\r\n") else {
                if inbuf.len() > MAX_HEAD {
                    self.conns[i].closed = true;
                    self.c.conn_errors += 1;
                }
                self.conns[i].inbuf = inbuf;
                return;
            };
            let head = String::from_utf8_lossy(&inbuf[..end]);
            let key = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            });
            let conn = &mut self.conns[i];
            match key {
                Some(key) => {
                    let accept = dialerd::agent::ws::accept_for(&key);
                    conn.out.extend_from_slice(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    conn.upgraded = true;
                }
                None => {
                    conn.out.extend_from_slice(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                    );
                    conn.closed = true;
                    self.c.conn_errors += 1;
                }
            }
            used = end + 4;
        }
        // Frames: FIN, opcode; MASK, length; extended length; mask; payload.
        loop {
            let rest = &mut inbuf[used..];
            if rest.len() < 2 {
                break;
            }
            let (b0, b1) = (rest[0], rest[1]);
            let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0F, b1 & 0x80 != 0);
            let (len, mut at) = match b1 & 0x7F {
                126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 if rest.len() >= 10 => (word(rest, 2).unwrap_or(u64::MAX), 10),
                126 | 127 => break,
                n => (u64::from(n), 2),
            };
            let mask_at = at;
            if masked {
                at += 4;
            }
            let Ok(len) = usize::try_from(len) else {
                self.conns[i].closed = true;
                self.c.conn_errors += 1;
                break;
            };
            if rest.len() < at + len {
                break;
            }
            if masked {
                let mask = [
                    rest[mask_at],
                    rest[mask_at + 1],
                    rest[mask_at + 2],
                    rest[mask_at + 3],
                ];
                for (k, b) in rest[at..at + len].iter_mut().enumerate() {
                    *b ^= mask[k & 3];
                }
            }
            let payload = &rest[at..at + len];
            match opcode {
                0x1 | 0x2 if fin => self.message(i, payload, now),
                0x1 | 0x2 => {
                    self.conns[i].fragments.clear();
                    self.conns[i].fragments.extend_from_slice(payload);
                }
                0x0 => {
                    self.conns[i].fragments.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.conns[i].fragments);
                        self.message(i, &whole, now);
                    }
                }
                0x8 => {
                    let conn = &mut self.conns[i];
                    let code = payload.get(..2).unwrap_or(&[0x03, 0xE8]).to_vec();
                    frame(0x8, &code, &mut conn.out);
                    conn.flush(&mut self.c);
                    conn.closed = true;
                    self.c.closed += 1;
                    self.c.closed_in_window += u64::from(self.in_window(now));
                    *self.c.messages.entry("close".into()).or_default() += 1;
                }
                0x9 => {
                    self.c.pings += 1;
                    let payload = payload.to_vec();
                    frame(0xA, &payload, &mut self.conns[i].out);
                }
                _ => {}
            }
            used += at + len;
            if self.conns[i].closed {
                break;
            }
        }
        inbuf.drain(..used);
        self.conns[i].inbuf = inbuf;
    }

    /// A whole message from dialerd on connection `i`.
    fn message(&mut self, i: usize, text: &[u8], now: u64) {
        const MEDIA: &[u8] = br#"{"event":"media""#;
        const PAYLOAD_KEY: &[u8] = br#""payload":""#;
        if text.starts_with(MEDIA) {
            self.c.media_received += 1;
            let arrived = self.in_window(now);
            self.c.media_arrived_in_window += u64::from(arrived);
            let Some(p) = find(text, PAYLOAD_KEY).map(|p| p + PAYLOAD_KEY.len()) else {
                self.c.media_bad += 1;
                return;
            };
            let b64 = &text[p..];
            let Some(len) = b64.iter().position(|&b| b == b'"') else {
                self.c.media_bad += 1;
                return;
            };
            // 160 bytes are 216 base64 characters; the first 24 hold the
            // stamp and the index (18 bytes).
            self.c.media_odd_size += u64::from(len != PAYLOAD.div_ceil(3) * 4);
            self.decoded.clear();
            let ok = len >= 24
                && std::str::from_utf8(&b64[..24])
                    .is_ok_and(|s| dialerd::base64::decode_into(s, &mut self.decoded));
            let (Some(stamp), Some(stream)) = (word(&self.decoded, 0), word(&self.decoded, 8))
            else {
                self.c.media_bad += 1;
                return;
            };
            if ok && stamp == u64::MAX && stream == u64::MAX {
                self.c.media_silence += 1;
                self.c.media_silence_in_window += u64::from(arrived);
                return;
            }
            if !ok || stamp > now || stream >= self.streams as u64 {
                self.c.media_bad += 1;
                return;
            }
            if self.conns[i].stream != Some(stream as usize) {
                self.c.media_misrouted += 1;
                return;
            }
            if self.in_window(stamp) {
                self.c.media_in_window += 1;
                self.c
                    .up_ns
                    .push(u32::try_from(now - stamp).unwrap_or(u32::MAX));
            }
            return;
        }
        let value: Value = serde_json::from_slice(text).unwrap_or(Value::Null);
        let event = value
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("unparsed")
            .to_owned();
        if event == "start" {
            let start = value.get("start").cloned().unwrap_or(Value::Null);
            let stream = start
                .pointer("/customParameters/stream")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|s| *s < self.streams);
            let sid = start
                .get("streamSid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match stream {
                Some(s) if self.by_stream[s].is_none() && self.conns[i].stream.is_none() => {
                    self.by_stream[s] = Some(i);
                    self.conns[i].stream = Some(s);
                    self.conns[i].sid = sid;
                    self.c.started += 1;
                }
                _ => self.c.conn_errors += 1,
            }
        }
        *self.c.messages.entry(event).or_default() += 1;
    }

    /// Drains phone `j`'s socket; true if it read anything.
    fn phone_ready(&mut self, j: usize, buf: &mut [u8]) -> bool {
        let mut worked = false;
        loop {
            let len = match self.phones[j].recv(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.c.rtp_recv_errors += 1;
                    break;
                }
            };
            worked = true;
            let now = ns_since(self.origin, Instant::now());
            self.record_rtp(j, &buf[..len], now);
        }
        worked
    }

    /// An RTP packet from dialerd at phone `j`.
    fn record_rtp(&mut self, j: usize, packet: &[u8], now: u64) {
        if packet.len() < HEADER + 16 || packet[0] >> 6 != 2 {
            self.c.rtp_foreign += 1;
            return;
        }
        let arrived = self.in_window(now);
        self.c.rtp_arrived_in_window += u64::from(arrived);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        if arrived {
            self.c.arrivals[j].push((now, seq));
        }
        let next = &mut self.next_seq[j];
        match *next {
            Some(expected) if seq != expected => {
                let ahead = seq.wrapping_sub(expected);
                if ahead < 0x8000 {
                    if arrived {
                        self.c.seq_gaps += u64::from(ahead);
                    }
                    *next = Some(seq.wrapping_add(1));
                } else if arrived {
                    self.c.reordered += 1;
                }
            }
            _ => *next = Some(seq.wrapping_add(1)),
        }
        let (stamp, stream) = (
            word(packet, HEADER).unwrap_or(u64::MAX),
            word(packet, HEADER + 8).unwrap_or(u64::MAX),
        );
        if stamp > now || stream >= self.streams as u64 {
            // No stamp of ours: silence (nothing queued), or foreign.
            self.c.silence_total += 1;
            self.c.silence_in_window += u64::from(arrived);
            return;
        }
        if stream as usize != j {
            self.c.rtp_misrouted += 1;
            return;
        }
        self.c.rtp_received += 1;
        if self.in_window(stamp) {
            self.c.rtp_in_window += 1;
            self.c.down_ns[j].push(u32::try_from(now - stamp).unwrap_or(u32::MAX));
            let due = word(packet, HEADER + 16).unwrap_or(stamp).min(now);
            self.c.down_due_ns[j].push(u32::try_from(now - due).unwrap_or(u32::MAX));
        }
    }
}

/// What the load thread hands back.
struct Done {
    c: Counts,
    setup_s: f64,
    /// The sockets, kept open until dialerd's totals are read.
    _keep: (Vec<Conn>, Vec<UdpSocket>, TcpListener),
}

/// The whole load on one thread: setup (accepting, upgrading, waiting for
/// every `start` and the ports file), then the timeline, sent to `ready`.
fn load_loop(
    args: &Args,
    origin: Instant,
    phones: Vec<UdpSocket>,
    listener: TcpListener,
    ready: mpsc::Sender<Result<Timeline, String>>,
) -> Result<Done, String> {
    let streams = args.streams;
    let io = |e: std::io::Error| e.to_string();
    let mut poll = Poll::new().map_err(io)?;
    let mut load = Load {
        streams,
        origin,
        phones,
        listener,
        conns: Vec::with_capacity(streams),
        by_stream: vec![None; streams],
        next_seq: vec![None; streams],
        window: (u64::MAX, u64::MAX),
        c: Counts {
            down_ns: vec![Vec::new(); streams],
            down_due_ns: vec![Vec::new(); streams],
            arrivals: vec![Vec::new(); streams],
            ..Counts::default()
        },
        scratch: vec![0u8; 64 * 1024],
        decoded: Vec::with_capacity(32),
    };
    for (i, phone) in load.phones.iter_mut().enumerate() {
        poll.registry()
            .register(phone, Token(i), Interest::READABLE)
            .map_err(io)?;
    }
    poll.registry()
        .register(&mut load.listener, Token(LISTENER), Interest::READABLE)
        .map_err(io)?;
    let mut events = Events::with_capacity(4096);
    let mut buf = [0u8; 2048];

    // Setup.
    let setup_until = Instant::now() + args.setup_timeout;
    let mut ports: Option<Vec<SocketAddr>> = None;
    let mut next_check = Instant::now();
    let t = loop {
        let now = Instant::now();
        if now >= setup_until {
            let why = format!(
                "setup timed out: ports file {}, {} connections, {} of {streams} streams started",
                if ports.is_some() { "read" } else { "missing" },
                load.c.accepted,
                load.c.started
            );
            let _ = ready.send(Err(why.clone()));
            return Err(why);
        }
        if ports.is_none() && now >= next_check {
            next_check = now + Duration::from_millis(20);
            match read_ports(&args.ports, streams) {
                Ok(Some(p)) => {
                    for (phone, to) in load.phones.iter().zip(&p) {
                        phone
                            .connect(*to)
                            .map_err(|e| format!("connect {to}: {e}"))?;
                    }
                    ports = Some(p);
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Err(e);
                }
            }
        }
        if ports.is_some() && load.c.started == streams {
            let start = Instant::now() + Duration::from_millis(100);
            let warm = start + args.warmup;
            let end = warm + args.secs;
            break Timeline {
                origin,
                start,
                from: ns_since(origin, warm),
                to: ns_since(origin, end),
                end,
                stop: end + DRAIN,
            };
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(5)))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e.to_string());
        }
        for event in events.iter() {
            match event.token().0 {
                LISTENER => load.accept(&poll).map_err(io)?,
                k if k > LISTENER => {
                    load.conn_ready(k - LISTENER - 1);
                }
                j => {
                    load.phone_ready(j, &mut buf);
                }
            }
        }
    };
    let setup_s = origin.elapsed().as_secs_f64();
    load.window = (t.from, t.to);
    let expected = (streams as u64) * (args.secs.as_nanos() as u64 / PERIOD_NS) + streams as u64;
    load.c.up_ns.reserve(expected as usize);
    let per_stream = (args.secs.as_nanos() as u64 / PERIOD_NS + 2) as usize;
    for v in &mut load.c.down_ns {
        v.reserve(per_stream);
    }
    for v in &mut load.c.down_due_ns {
        v.reserve(per_stream);
    }
    for v in &mut load.c.arrivals {
        v.reserve(per_stream);
    }
    let _ = ready.send(Ok(t));

    // The load.
    let n = streams as u64;
    let due_of = |k: u64, offset: u64| {
        let s = k % n;
        t.start + Duration::from_nanos((k / n) * PERIOD_NS + s * PERIOD_NS / n + offset)
    };
    let mut seq: Vec<u16> = (0..n).map(|s| (s as u16).wrapping_mul(7919)).collect();
    let mut packet = [0xFFu8; PACKET]; // µ-law silence after the stamp
    packet[0] = 0x80;
    packet[1] = 0;
    let mut audio = [0xFFu8; PAYLOAD];
    let mut b64 = String::with_capacity(256);
    let mut text: Vec<u8> = Vec::with_capacity(512);
    let (mut k_rtp, mut k_ws) = (0u64, 0u64);
    let (mut due_rtp, mut due_ws) = (due_of(0, 0), due_of(0, AGENT_OFFSET_NS));
    let mut last_turn = Instant::now();
    loop {
        let turn = Instant::now();
        if turn >= t.stop {
            break;
        }
        let at = ns_since(origin, turn);
        let counting = at >= t.from && at < t.to;
        if counting {
            let gap = turn.duration_since(last_turn).as_nanos() as u64;
            load.c.stall_max_ns = load.c.stall_max_ns.max(gap);
            load.c.stalls_over_1ms += u64::from(gap > 1_000_000);
        }
        last_turn = turn;
        let mut worked = false;
        let mut burst = 0;
        while burst < SEND_BURST {
            let rtp_next = due_rtp <= turn && due_rtp < t.end;
            let ws_next = due_ws <= turn && due_ws < t.end;
            if rtp_next && (!ws_next || due_rtp <= due_ws) {
                // A phone's packet.
                let s = (k_rtp % n) as usize;
                let seq_s = seq[s];
                seq[s] = seq_s.wrapping_add(1);
                let ts = u32::from(seq_s)
                    .wrapping_mul(SAMPLES)
                    .wrapping_add(s as u32 * 1_000_003);
                packet[2..4].copy_from_slice(&seq_s.to_be_bytes());
                packet[4..8].copy_from_slice(&ts.to_be_bytes());
                packet[8..12].copy_from_slice(&(0x5EED_0000u32 ^ s as u32).to_be_bytes());
                packet[HEADER + 8..HEADER + 16].copy_from_slice(&(s as u64).to_be_bytes());
                let now = Instant::now();
                let stamp = ns_since(origin, now);
                packet[HEADER..HEADER + 8].copy_from_slice(&stamp.to_be_bytes());
                let counted = stamp >= t.from && stamp < t.to;
                if load.phones[s].send(&packet).is_ok() {
                    load.c.rtp_sent += 1;
                    load.c.rtp_sent_in_window += u64::from(counted);
                } else {
                    load.c.rtp_send_errors += 1;
                }
                if counted {
                    let late = now.saturating_duration_since(due_rtp).as_nanos() as u64;
                    load.c.rtp_late_max_ns = load.c.rtp_late_max_ns.max(late);
                    load.c.rtp_late_over_1ms += u64::from(late > 1_000_000);
                }
                k_rtp += 1;
                due_rtp = due_of(k_rtp, 0);
            } else if ws_next {
                // An agent's message.
                let s = (k_ws % n) as usize;
                let now = Instant::now();
                let stamp = ns_since(origin, now);
                let counted = stamp >= t.from && stamp < t.to;
                match load.by_stream[s] {
                    Some(i) if !load.conns[i].closed => {
                        audio[..8].copy_from_slice(&stamp.to_be_bytes());
                        audio[8..16].copy_from_slice(&(s as u64).to_be_bytes());
                        audio[16..24].copy_from_slice(&ns_since(origin, due_ws).to_be_bytes());
                        b64.clear();
                        dialerd::base64::encode_into(&audio, &mut b64);
                        let conn = &mut load.conns[i];
                        text.clear();
                        text.extend_from_slice(br#"{"event":"media","streamSid":""#);
                        text.extend_from_slice(conn.sid.as_bytes());
                        text.extend_from_slice(br#"","media":{"payload":""#);
                        text.extend_from_slice(b64.as_bytes());
                        text.extend_from_slice(br#""}}"#);
                        let queued = !conn.out.is_empty();
                        frame(0x1, &text, &mut conn.out);
                        conn.flush(&mut load.c);
                        if !conn.out.is_empty() {
                            load.c.ws_write_partial += u64::from(!queued);
                            load.c.ws_out_max = load.c.ws_out_max.max(conn.out.len());
                        }
                        load.c.ws_sent += 1;
                        load.c.ws_sent_in_window += u64::from(counted);
                    }
                    _ => load.c.ws_not_ready += u64::from(counted),
                }
                if counted {
                    let late = now.saturating_duration_since(due_ws).as_nanos() as u64;
                    load.c.ws_late_max_ns = load.c.ws_late_max_ns.max(late);
                    load.c.ws_late_over_1ms += u64::from(late > 1_000_000);
                }
                k_ws += 1;
                due_ws = due_of(k_ws, AGENT_OFFSET_NS);
            } else {
                break;
            }
            burst += 1;
            worked = true;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::ZERO))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e.to_string());
        }
        for event in events.iter() {
            match event.token().0 {
                LISTENER => load.accept(&poll).map_err(io)?,
                k if k > LISTENER => {
                    let i = k - LISTENER - 1;
                    worked |= load.conn_ready(i);
                }
                j => worked |= load.phone_ready(j, &mut buf),
            }
        }
        if worked && counting {
            load.c.busy_ns += turn.elapsed().as_nanos() as u64;
        }
    }
    Ok(Done {
        c: load.c,
        setup_s,
        _keep: (load.conns, load.phones, load.listener),
    })
}

/// The `q` quantile of sorted `v` (ns), in µs.
fn quantile_us(v: &[u32], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    Some(round1(f64::from(v[rank - 1]) / 1000.0))
}

fn distribution(v: &mut [u32]) -> Value {
    v.sort_unstable();
    let mean = if v.is_empty() {
        None
    } else {
        Some(round1(
            v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64 / 1000.0,
        ))
    };
    json!({
        "p50_us": quantile_us(v, 0.50),
        "p90_us": quantile_us(v, 0.90),
        "p99_us": quantile_us(v, 0.99),
        "p999_us": quantile_us(v, 0.999),
        "max_us": v.last().map(|&x| round1(f64::from(x) / 1000.0)),
        "mean_us": mean,
        "samples": v.len(),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One process's CPU readings.
#[derive(Default, Clone, Copy)]
struct ProcSample {
    ticks: u64,
    runtime_ns: u64,
    wait_ns: u64,
    sleeps: u64,
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(get(11)? + get(12)?)
}

/// Of a process's live threads: on-CPU and run-queue time (ns) and
/// voluntary context switches.
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

/// The machine's UDP and TCP counters (`/proc/net/snmp`).
fn snmp_counters() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut out = BTreeMap::new();
    for proto in ["Udp: ", "Tcp: "] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(proto)).collect();
        if let [names, values] = lines.as_slice() {
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if let Ok(v) = value.parse() {
                    out.insert(format!("{}{name}", proto.trim_end_matches(": ")), v);
                }
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

/// Per CPU over the window: busy, softirq and steal, percent.
fn cpu_use(start: &BTreeMap<String, Vec<u64>>, end: &BTreeMap<String, Vec<u64>>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, b) in end {
        let Some(a) = start.get(name) else { continue };
        let d: Vec<f64> = b
            .iter()
            .zip(a)
            .map(|(b, a)| b.saturating_sub(*a) as f64)
            .collect();
        let whole: f64 = d.iter().take(8).sum::<f64>().max(1.0);
        let at = |i: usize| d.get(i).copied().unwrap_or(0.0);
        out.insert(
            name.clone(),
            json!({
                "busy_percent": round1(100.0 * (whole - at(3) - at(4)) / whole),
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

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("{what}");
    std::process::exit(1);
}

fn main() {
    let args = parse_args();
    let origin = Instant::now();
    let mut pids: Vec<(String, String)> = std::env::var("CPU_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(n, p)| (n.to_owned(), p.to_owned())))
        .collect();
    pids.push(("agent_load".to_owned(), std::process::id().to_string()));

    let mut phones = Vec::with_capacity(args.streams);
    let mut text = String::with_capacity(args.streams * 40);
    let listener = TcpListener::bind("127.0.0.1:0".parse().expect("an address"))
        .unwrap_or_else(|e| fail(format!("listen: {e}")));
    let ws = listener
        .local_addr()
        .unwrap_or_else(|e| fail(format!("listener: {e}")));
    for _ in 0..args.streams {
        let socket = UdpSocket::bind("127.0.0.1:0".parse().expect("an address"))
            .unwrap_or_else(|e| fail(format!("bind: {e}")));
        let local = socket
            .local_addr()
            .unwrap_or_else(|e| fail(format!("bind: {e}")));
        text.push_str(&format!("{local} {ws}\n"));
        phones.push(socket);
    }
    let rss_before: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();
    if let Err(e) = write_whole(&args.addrs, &text) {
        fail(format!("{}: {e}", args.addrs));
    }
    println!("READY");
    let _ = std::io::stdout().flush();

    let (tx, rx) = mpsc::channel();
    let args = std::sync::Arc::new(args);
    let thread_args = args.clone();
    let load = std::thread::Builder::new()
        .name("load".into())
        .spawn(move || load_loop(&thread_args, origin, phones, listener, tx))
        .unwrap_or_else(|e| fail(format!("spawn: {e}")));
    let t = match rx.recv() {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => fail(format!("setup: {e}")),
        Err(_) => fail(format!("setup: {:?}", load.join().map(|r| r.err()))),
    };
    let rss_setup: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();
    println!("RUNNING");
    let _ = std::io::stdout().flush();

    let warm = t.origin + Duration::from_nanos(t.from);
    let end = t.origin + Duration::from_nanos(t.to);
    sleep_until(warm);
    let cpu_start: Vec<ProcSample> = pids.iter().map(|(_, p)| sample(p)).collect();
    let snmp_start = snmp_counters();
    let cpus_start = cpu_times();
    let measured_from = Instant::now();
    sleep_until(end);
    let cpu_end: Vec<ProcSample> = pids.iter().map(|(_, p)| sample(p)).collect();
    let snmp_end = snmp_counters();
    let cpus_end = cpu_times();
    let measured = measured_from.elapsed().as_secs_f64();
    let rss_end: Vec<Option<u64>> = pids.iter().map(|(_, p)| rss_kb(p)).collect();

    let Done {
        mut c,
        setup_s,
        _keep,
    } = match load.join() {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => fail(format!("load: {e}")),
        Err(_) => fail("the load thread panicked"),
    };
    // dialerd_agent reads its legs' totals now, before this process's
    // connections close (at most 3 s).
    let _ = std::fs::write(format!("{}.done", args.ports), "");
    let stats = format!("{}.stats", args.ports);
    let wait_stats = Instant::now() + Duration::from_secs(3);
    while !std::path::Path::new(&stats).exists() && Instant::now() < wait_stats {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(_keep);

    let streams = args.streams;
    let secs = args.secs.as_secs_f64();
    let hz = clock_ticks_per_sec() as f64;
    let messages = (c.media_arrived_in_window + c.rtp_arrived_in_window).max(1) as f64;
    let mut cpu = serde_json::Map::new();
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (a, b) = (cpu_start[i], cpu_end[i]);
        let cpu_s = b.ticks.saturating_sub(a.ticks) as f64 / hz;
        let runtime = b.runtime_ns.saturating_sub(a.runtime_ns) as f64 / 1e9;
        cpu.insert(
            name.clone(),
            json!({
                "pid": pid,
                "cpu_s": round3(cpu_s),
                "core_percent": round1(100.0 * cpu_s / measured),
                "per_stream_core_percent": round3(100.0 * cpu_s / measured / streams as f64),
                "us_per_message": round3(cpu_s * 1e6 / messages),
                "schedstat_cpu_s": round3(runtime),
                "schedstat_us_per_message": round3(runtime * 1e6 / messages),
                "runqueue_wait_ms": round1(b.wait_ns.saturating_sub(a.wait_ns) as f64 / 1e6),
                "sleeps_per_message": round3(b.sleeps.saturating_sub(a.sleeps) as f64 / messages),
                "rss_kb": {"before_setup": rss_before[i], "after_setup": rss_setup[i], "end": rss_end[i]},
            }),
        );
    }
    let snmp: BTreeMap<&String, i64> = snmp_end
        .iter()
        .map(|(k, v)| (k, v - snmp_start.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| {
            *v != 0
                && (k.contains("Err")
                    || k.contains("Retrans")
                    || k.contains("Resets")
                    || k.contains("Fails"))
        })
        .collect();

    // WS -> RTP: per stream, the minimum and the rest above it.
    let mut minima: Vec<u32> = Vec::with_capacity(streams);
    let mut jitter: Vec<u32> = Vec::with_capacity(c.rtp_in_window as usize);
    let mut down_all: Vec<u32> = Vec::with_capacity(c.rtp_in_window as usize);
    for v in &c.down_ns {
        if let Some(&min) = v.iter().min() {
            minima.push(min);
            jitter.extend(v.iter().map(|&x| x - min));
            down_all.extend_from_slice(v);
        }
    }
    // dialerd's cadence toward each phone: arrival - (its sequence's
    // distance from the stream's first packet in the window) x 20 ms, less
    // the stream's smallest such offset: how late each packet left against
    // the stream's best 20 ms grid (the agent's send times play no part).
    let mut cadence: Vec<u32> = Vec::with_capacity(c.rtp_arrived_in_window as usize);
    for v in &c.arrivals {
        let Some(&(_, seq0)) = v.first() else {
            continue;
        };
        let (mut k, mut last) = (0i64, seq0);
        let offsets: Vec<i64> = v
            .iter()
            .map(|&(t, seq)| {
                k += i64::from(seq.wrapping_sub(last) as i16);
                last = seq;
                t as i64 - k * PERIOD_NS as i64
            })
            .collect();
        let min = offsets.iter().copied().min().unwrap_or(0);
        cadence.extend(
            offsets
                .iter()
                .map(|&o| u32::try_from(o - min).unwrap_or(u32::MAX)),
        );
    }
    let mut jitter_due: Vec<u32> = Vec::with_capacity(c.rtp_in_window as usize);
    for v in &c.down_due_ns {
        if let Some(&min) = v.iter().min() {
            jitter_due.extend(v.iter().map(|&x| x - min));
        }
    }
    let expected = (streams as u64) * (args.secs.as_nanos() as u64 / PERIOD_NS);
    let result = json!({
        "streams": streams,
        "window_s": round3(measured),
        "setup_s": round3(setup_s),
        "expected_each_way": expected,
        "rtp_to_ws": {
            "sent": c.rtp_sent_in_window,
            "received": c.media_in_window,
            "lost": c.rtp_sent_in_window.saturating_sub(c.media_in_window),
            "per_s": round1(c.media_in_window as f64 / secs),
            "latency": distribution(&mut c.up_ns),
            "misrouted": c.media_misrouted,
            "bad": c.media_bad,
            "silence": c.media_silence,
            "silence_in_window": c.media_silence_in_window,
            "odd_size": c.media_odd_size,
            "received_total": c.media_received,
            "sent_total": c.rtp_sent,
            "send_errors": c.rtp_send_errors,
            "late_over_1ms": c.rtp_late_over_1ms,
            "late_max_us": round1(c.rtp_late_max_ns as f64 / 1000.0),
        },
        "ws_to_rtp": {
            "sent": c.ws_sent_in_window,
            "received": c.rtp_in_window,
            "lost": c.ws_sent_in_window.saturating_sub(c.rtp_in_window),
            "per_s": round1(c.rtp_in_window as f64 / secs),
            "latency": distribution(&mut down_all),
            "jitter_added": distribution(&mut jitter),
            "jitter_added_vs_schedule": distribution(&mut jitter_due),
            "stream_minimum": distribution(&mut minima),
            "cadence_lateness": distribution(&mut cadence),
            "silence_in_window": c.silence_in_window,
            "silence_total": c.silence_total,
            "rtp_arrived_in_window": c.rtp_arrived_in_window,
            "seq_gaps": c.seq_gaps,
            "reordered": c.reordered,
            "misrouted": c.rtp_misrouted,
            "foreign": c.rtp_foreign,
            "recv_errors": c.rtp_recv_errors,
            "received_total": c.rtp_received,
            "sent_total": c.ws_sent,
            "not_ready": c.ws_not_ready,
            "late_over_1ms": c.ws_late_over_1ms,
            "late_max_us": round1(c.ws_late_max_ns as f64 / 1000.0),
            "writes_queued": c.ws_write_partial,
            "write_queue_max_bytes": c.ws_out_max,
            "write_errors": c.ws_write_errors,
        },
        "connections": {
            "accepted": c.accepted,
            "started": c.started,
            "messages": c.messages,
            "pings": c.pings,
            "closed": c.closed,
            "closed_in_window": c.closed_in_window,
            "errors": c.conn_errors,
        },
        "messages_in_window_both_ways": messages as u64,
        "generator_busy_percent": round1(100.0 * c.busy_ns as f64 / 1e9 / secs),
        "generator_stalls_over_1ms": c.stalls_over_1ms,
        "generator_stall_max_us": round1(c.stall_max_ns as f64 / 1000.0),
        "cpu": cpu,
        "net_errors": snmp,
        "cpus": cpu_use(&cpus_start, &cpus_end),
    });
    println!("RESULT {result}");
}
