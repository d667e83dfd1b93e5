//! The media relay against real peers: SIPp callers and callees (some
//! playing the pcaps Debian's sip-tester ships), sockets the test owns as
//! a leg's far end, a real redis-server for commands and events, and the
//! dialerd binary. Relayed packet counts, PCMA to PCMU transcoding with
//! latching, RFC 4733 DTMF both ways, the inactivity timeout and silence
//! fill.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::g711::{alaw_decode, alaw_encode, ulaw_decode};
use crate::support::redis::{RedisServer, Resp, RespClient};
use crate::support::scratch::Scratch;
use crate::support::sipp::{Sipp, SippRun, scenario};
use crate::support::{ports, wait_for};

const PCAPS: &str = "/usr/share/sip-tester";

/// A subscriber to `dialer:events` and a reply channel that keeps
/// everything it read.
pub(crate) struct Events {
    client: RespClient,
    pub(crate) all: Vec<Value>,
}

impl Events {
    pub(crate) fn new(redis: &RedisServer) -> Self {
        let mut client = redis.client().unwrap();
        for channel in ["dialer:events", "dialer:reply:media"] {
            let ack = client.command(&["SUBSCRIBE", channel]).unwrap();
            assert!(matches!(ack, Resp::Array(Some(_))), "{ack:?}");
        }
        client.set_read_timeout(Duration::from_millis(200)).unwrap();
        Self {
            client,
            all: Vec::new(),
        }
    }

    fn next(&mut self, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match self.client.read() {
                Ok(Resp::Array(Some(parts))) if parts.len() == 3 => {
                    let body = parts[2].text()?;
                    let v: Value = serde_json::from_str(&body).ok()?;
                    self.all.push(v.clone());
                    return Some(v);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Reads until `done` holds for one message (returned), within `limit`.
    pub(crate) fn until(&mut self, limit: Duration, done: impl FnMut(&Value) -> bool) -> Value {
        self.try_until(limit, done)
            .unwrap_or_else(|| panic!("condition not met within {limit:?}; saw {:#?}", self.all))
    }

    /// [`Events::until`], `None` when `limit` passes first.
    pub(crate) fn try_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let end = Instant::now() + limit;
        while let Some(v) = self.next(end.saturating_duration_since(Instant::now())) {
            if done(&v) {
                return Some(v);
            }
        }
        None
    }

    /// Events of `call` of type `kind` seen so far.
    pub(crate) fn of(&self, call: &str, kind: &str) -> Vec<Value> {
        self.all
            .iter()
            .filter(|e| e["call_id"] == call && e["type"] == kind)
            .cloned()
            .collect()
    }

    /// The closing totals of `call`'s own leg, waiting up to `limit`.
    pub(crate) fn totals(&mut self, call: &str, limit: Duration) -> Value {
        let is_totals = |e: &Value| {
            e["type"] == "call.media"
                && e["call_id"] == call
                && e["report"] == "totals"
                && e["leg"] == "call"
        };
        if let Some(t) = self.all.iter().find(|e| is_totals(e)) {
            return t["totals"].clone();
        }
        self.until(limit, is_totals)["totals"].clone()
    }
}

pub(crate) fn command(redis: &RedisServer, id: &str, kind: &str, args: Value) {
    let c = json!({"v": 1, "id": id, "type": kind, "args": args, "reply_to": "dialer:reply:media"});
    let mut client = redis.client().unwrap();
    client
        .command(&["PUBLISH", "dialer:a:cmd", &c.to_string()])
        .unwrap();
}

/// Sends a command and waits for its successful result.
pub(crate) fn command_ok(
    events: &mut Events,
    redis: &RedisServer,
    id: &str,
    kind: &str,
    args: Value,
) {
    command(redis, id, kind, args);
    let result = events.until(Duration::from_secs(10), |e| {
        e["type"] == "command.result" && e["id"] == id
    });
    assert_eq!(result["ok"], true, "{id}: {result}\n{:#?}", events.all);
}

/// A PBX like [`pbx`] whose callee answers with only `codec` (payload
/// type `pt`) and media at 127.0.0.1:`rtp_port`.
pub(crate) fn media_pbx(rtp_port: u16, pt: &str, codec: &str) -> SippRun {
    media_pbx_of("media_pbx.xml", rtp_port, pt, codec)
}

/// [`media_pbx`] running scenario `file` (one of its variants).
pub(crate) fn media_pbx_of(file: &str, rtp_port: u16, pt: &str, codec: &str) -> SippRun {
    Sipp::server(&scenario(file))
        .key("expires", "60")
        .key("rtp_port", &rtp_port.to_string())
        .key("pt", pt)
        .key("codec", codec)
        .calls(100_000)
        .timeout(Duration::from_secs(600))
        .args(&["-deadcall_wait", "0"])
        .spawn()
}

/// The quick start's SIPp PBX, the registrar of the account.
fn pbx() -> SippRun {
    Sipp::server(&scenario("quickstart_pbx.xml"))
        .key("expires", "60")
        .calls(100_000)
        .timeout(Duration::from_secs(600))
        .args(&["-deadcall_wait", "0"])
        .spawn()
}

/// A dialerd on `redis`, instance `a`, account `acct-a` (user 1001)
/// registered with `pbx`, inbound policy `inbound`, `extra` more TOML,
/// RTP ports from `rtp_base` (100 of them: each test its own block, away
/// from the default range that the other tests' daemons share); returns it
/// with its SIP (UDP) address.
pub(crate) fn dialerd(
    redis: &RedisServer,
    pbx: &SippRun,
    inbound: &str,
    extra: &str,
    rtp_base: u16,
    dir: &Scratch,
) -> (Daemon, SocketAddr) {
    let sip = SocketAddr::from(([127, 0, 0, 1], ports::free_udp_tcp_port()));
    let config = dir.write(
        "a.toml",
        &format!(
            "[instance]\nid = \"a\"\n[redis]\nenabled = true\nurl = \"{}\"\n\
             [calls]\ninbound = \"{inbound}\"\ndestination_window_secs = 0\n{extra}\n\
             [[accounts]]\nname = \"acct-a\"\nregistrar = \"sip:{}\"\nusername = \"1001\"\n\
             password = \"local-test-only\"\ntransport = \"udp\"\n",
            redis.url(),
            pbx.local_addr()
        ),
    );
    let listen = sip.to_string();
    let (start, end) = (rtp_base.to_string(), (rtp_base + 99).to_string());
    let d = Daemon::start(
        &["--config", config.to_str().unwrap()],
        &[
            ("DIALERD__REDIS__ENABLED", "true"),
            ("DIALERD__SIP__UDP_LISTEN", &listen),
            ("DIALERD__MEDIA__RTP_PORT_RANGE__START", &start),
            ("DIALERD__MEDIA__RTP_PORT_RANGE__END", &end),
        ],
    );
    let ready = wait_for(Duration::from_secs(15), || {
        crate::support::http::get(d.http(), "/readyz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(ready.is_some(), "dialerd not ready:\n{}", d.log());
    (d, sip)
}

/// A media port for a SIPp that plays a pcap, in the test's block above
/// its dialerd's RTP range `rtp_base..rtp_base + 99` (ports outside the
/// kernel's ephemeral range and every other test's): SIPp binds it and
/// the port two above (video), and fails when either is taken.
fn sipp_media_port(rtp_base: u16) -> u16 {
    rtp_base + 150
}

/// A SIPp caller of `scenario` to dialerd's user 1001, RTP port `rtp_port`
/// in its offer.
fn caller(name: &str, sip: SocketAddr, rtp_port: u16) -> Sipp {
    Sipp::client(&scenario(name), sip)
        .key("callee", "1001")
        .key("rtp_port", &rtp_port.to_string())
        .timeout(Duration::from_secs(60))
}

/// The id of the first `call.created` read from now on, placed by `caller`.
pub(crate) fn next_created(events: &mut Events, caller: &SippRun, d: &Daemon) -> String {
    let created = events
        .try_until(Duration::from_secs(15), |e| e["type"] == "call.created")
        .unwrap_or_else(|| panic!("no call from SIPp: {}\n{}", caller.diagnostics(), d.log()));
    created["call_id"].as_str().unwrap().to_owned()
}

/// The `local_port` dialerd announced for `call`'s media.
pub(crate) fn local_port(events: &mut Events, call: &str) -> u16 {
    let has_port =
        |e: &Value| e["type"] == "call.media" && e["call_id"] == call && e["local_port"].is_u64();
    let e = match events.all.iter().find(|e| has_port(e)) {
        Some(e) => e.clone(),
        None => events.until(Duration::from_secs(10), has_port),
    };
    u16::try_from(e["local_port"].as_u64().unwrap()).unwrap()
}

/// Datagrams with their arrival times.
type Datagrams = Vec<(Instant, Vec<u8>)>;

/// A UDP socket on loopback collecting every datagram in a thread.
pub(crate) struct Collector {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Datagrams>>,
}

impl Collector {
    pub(crate) fn bind() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    got.push((Instant::now(), buf[..n].to_vec()));
                }
            }
            got
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn finish(mut self) -> Datagrams {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One RTP packet.
#[derive(Debug, Clone)]
struct Rtp {
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

fn parse_rtp(b: &[u8]) -> Option<Rtp> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let mut start = 12 + 4 * usize::from(b[0] & 0x0f);
    if b[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([*b.get(start + 2)?, *b.get(start + 3)?]));
        start += 4 + 4 * words;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*b.last()?))?;
    }
    Some(Rtp {
        pt: b[1] & 0x7f,
        marker: b[1] & 0x80 != 0,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b.get(start..end)?.to_vec(),
    })
}

fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The distinct µ-law levels, ascending.
fn ulaw_levels() -> Vec<i32> {
    let mut l: Vec<i32> = (0..=255u8).map(ulaw_decode).collect();
    l.sort_unstable();
    l.dedup();
    l
}

/// How many quantization steps of µ-law separate `got` from the level
/// nearest to `want`.
fn ulaw_steps(levels: &[i32], want: i32, got: i32) -> usize {
    let nearest = (0..levels.len())
        .min_by_key(|i| (levels[*i] - want).abs())
        .unwrap();
    let at = levels
        .iter()
        .position(|l| *l == got)
        .expect("a µ-law level");
    nearest.abs_diff(at)
}

/// UDP datagrams in a pcap file (Ethernet, Linux cooked or raw IPv4).
fn pcap_udp_packets(path: &Path) -> usize {
    let d = std::fs::read(path).unwrap();
    let magic = u32::from_le_bytes(d[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => panic!("{}: not a pcap file ({other:#x})", path.display()),
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = d[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link_offset = match u32_at(20) {
        1 => 14,
        113 => 16,
        101 | 228 => 0,
        other => panic!("{}: link type {other}", path.display()),
    };
    let mut count = 0;
    let mut at = 24;
    while at + 16 <= d.len() {
        let caplen = u32_at(at + 8) as usize;
        let frame = &d[at + 16..(at + 16 + caplen).min(d.len())];
        at += 16 + caplen;
        let Some(ip) = frame.get(link_offset..) else {
            continue;
        };
        if ip.len() >= 20 && ip[0] >> 4 == 4 && ip[9] == 17 {
            count += 1;
        }
    }
    count
}

/// The PBX's callee got the BYE of the bridged call.
/// An inbound call from a SIPp caller (`media_uac_hold.xml`, offering `codec`
/// as payload type `pt`, its media port a test [`Collector`]) that dialerd
/// auto-answers; returned once `call.answered` was seen.
struct Answered {
    redis: RedisServer,
    pbx: SippRun,
    dir: Scratch,
    d: Daemon,
    events: Events,
    peer: Collector,
    uac: SippRun,
    call: String,
}

impl Answered {
    fn start(tag: &str, extra: &str, rtp_base: u16, pt: &str, codec: &str) -> Self {
        let redis = RedisServer::start(&[]);
        let pbx = pbx();
        let dir = Scratch::new(tag);
        let (d, sip) = dialerd(&redis, &pbx, "answer", extra, rtp_base, &dir);
        let mut events = Events::new(&redis);
        let peer = Collector::bind();
        let uac = caller("media_uac_hold.xml", sip, peer.port())
            .key("pt", pt)
            .key("codec", codec)
            .spawn();
        let call = next_created(&mut events, &uac, &d);
        events.until(Duration::from_secs(10), |e| {
            e["type"] == "call.answered" && e["call_id"] == call.as_str()
        });
        Self {
            redis,
            pbx,
            dir,
            d,
            events,
            peer,
            uac,
            call,
        }
    }
}

fn assert_callee_hung_up(pbx: SippRun) {
    let seen = crate::support::sipp::logged(&pbx.stop().messages);
    assert!(
        seen.iter()
            .any(|m| m.received && m.first_line().starts_with("BYE ")),
        "the callee was hung up: {seen:#?}"
    );
}

pub(crate) fn as_u64(totals: &Value, field: &str) -> u64 {
    totals[field]
        .as_u64()
        .unwrap_or_else(|| panic!("totals.{field}: {totals}"))
}

#[test]
fn media_pcma_played_by_a_caller_is_relayed_packet_for_packet_to_the_bridged_callee() {
    let expected = pcap_udp_packets(&Path::new(PCAPS).join("g711a.pcap")) as u64;
    assert_eq!(expected, 236, "the pcap has RTP to play");
    let redis = RedisServer::start(&[]);
    let sink = Collector::bind();
    let pbx = media_pbx(sink.port(), "8", "PCMA");
    let dir = Scratch::new("media-relay");
    let (d, sip) = dialerd(&redis, &pbx, "ring", "", 22000, &dir);
    let mut events = Events::new(&redis);
    let media_port = sipp_media_port(22000);
    let uac = caller("media_uac_play.xml", sip, media_port)
        .args(&["-mp", &media_port.to_string()])
        .spawn();
    let inbound = next_created(&mut events, &uac, &d);
    events.until(Duration::from_secs(10), |e| {
        e["type"] == "call.ringing" && e["call_id"] == inbound.as_str()
    });
    let to = format!("sip:bob@{}", pbx.local_addr());
    command_ok(
        &mut events,
        &redis,
        "out-1",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 120, "bridge_to": inbound}),
    );
    let caller_result = uac.wait();
    assert_eq!(
        caller_result.exit_code,
        Some(0),
        "{}\n{}\n{}",
        caller_result.errors,
        caller_result.messages,
        d.log()
    );
    let rx = events.totals(&inbound, Duration::from_secs(15));
    let tx = events.totals("out-1", Duration::from_secs(15));
    assert_callee_hung_up(pbx);
    let received = sink.finish();
    assert!(
        rx["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("pcma")),
        "{rx}"
    );
    assert!(
        tx["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("pcma")),
        "{tx}"
    );
    assert_eq!(as_u64(&rx, "rx_packets"), expected, "inbound {rx}");
    assert_eq!(as_u64(&rx, "rx_lost"), 0, "inbound {rx}");
    // SIPp's play_pcap_audio writes its packets on a raw socket with source
    // port 0 (sip-tester 3.6.1): they are taken from the signalled IP but
    // never latched on, and what goes back to the caller keeps going to its
    // signalled port, every packet of it sent.
    assert!(rx["latched"].is_null(), "inbound latched on port 0: {rx}");
    assert_eq!(as_u64(&rx, "send_failed"), 0, "inbound {rx}");
    let relayed = as_u64(&tx, "tx_packets") - as_u64(&tx, "generated_packets");
    assert_eq!(relayed, expected, "outbound {tx}");
    // Every packet the outbound leg counted as sent reached the callee.
    assert_eq!(
        received.len() as u64,
        as_u64(&tx, "tx_packets"),
        "outbound {tx}"
    );
    // The relayed ones carry the caller's 30 ms frames unchanged in size.
    let full = received
        .iter()
        .filter_map(|(_, b)| parse_rtp(b))
        .filter(|p| p.pt == 8 && p.payload.len() == 240)
        .count() as u64;
    assert_eq!(full, expected, "relayed 240-byte PCMA frames");
    let reports = events.of(&inbound, "call.media");
    assert!(
        !reports.iter().any(|e| e["report"] == "latched"),
        "no latch on a port-0 source: {reports:#?}"
    );
}

#[test]
fn media_pcma_from_an_unsignalled_port_is_latched_and_transcoded_to_pcmu() {
    let redis = RedisServer::start(&[]);
    // The caller's signalled media socket (silence goes there), the one it
    // actually sends from, one on another loopback IP, and the callee's.
    let signalled = Collector::bind();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let foreign = UdpSocket::bind("127.0.0.2:0").unwrap();
    let callee_media = Collector::bind();
    let pbx = media_pbx(callee_media.port(), "0", "PCMU");
    let dir = Scratch::new("media-transcode");
    let (d, sip) = dialerd(&redis, &pbx, "ring", "", 22200, &dir);
    let mut events = Events::new(&redis);
    let uac = caller("media_uac_hold.xml", sip, signalled.port())
        .key("pt", "8")
        .key("codec", "PCMA")
        .spawn();
    let inbound = next_created(&mut events, &uac, &d);
    let to = format!("sip:bob@{}", pbx.local_addr());
    command_ok(
        &mut events,
        &redis,
        "out-2",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 120, "bridge_to": inbound}),
    );
    let mut bridged = 0;
    events.until(Duration::from_secs(15), |e| {
        bridged += usize::from(e["type"] == "call.bridged");
        bridged == 2
    });
    let port = local_port(&mut events, &inbound);
    let leg = SocketAddr::from(([127, 0, 0, 1], port));
    // From another IP: dropped, and not latched on.
    for n in 0..3u16 {
        let p = rtp_packet(8, false, 500 + n, 0, 0xdead, &[0xd5; 160]);
        foreign.send_to(&p, leg).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // A 400 Hz sine, amplitude 8000, in 50 A-law packets of 20 ms.
    let frames = 50u16;
    let sent: Vec<u8> = (0..usize::from(frames) * 160)
        .map(|n| {
            let x = 8000.0 * (2.0 * std::f64::consts::PI * 400.0 * n as f64 / 8000.0).sin();
            alaw_encode(x.round() as i32)
        })
        .collect();
    for (n, chunk) in sent.chunks(160).enumerate() {
        let n = u16::try_from(n).unwrap();
        let p = rtp_packet(8, n == 0, 1000 + n, 160 * u32::from(n), 0x1234_5678, chunk);
        sender.send_to(&p, leg).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    command_ok(
        &mut events,
        &redis,
        "hu-2",
        "hangup",
        json!({"call_id": inbound}),
    );
    let rx = events.totals(&inbound, Duration::from_secs(15));
    let tx = events.totals("out-2", Duration::from_secs(15));
    let caller_result = uac.wait();
    assert_eq!(caller_result.exit_code, Some(0), "{}", caller_result.errors);
    assert_callee_hung_up(pbx);
    drop(signalled.finish());
    let got: Vec<Rtp> = callee_media
        .finish()
        .iter()
        .filter_map(|(_, b)| parse_rtp(b))
        .collect();
    let expected_address = sender.local_addr().unwrap().to_string();
    let latched: Vec<Value> = events
        .of(&inbound, "call.media")
        .into_iter()
        .filter(|e| e["report"] == "latched")
        .collect();
    assert_eq!(latched.len(), 1, "{latched:#?}");
    assert_eq!(latched[0]["address"], expected_address.as_str());
    assert_eq!(as_u64(&rx, "rx_packets"), u64::from(frames), "inbound {rx}");
    assert!(as_u64(&rx, "dropped_packets") >= 3, "inbound {rx}");
    assert!(
        rx["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("pcma")),
        "{rx}"
    );
    assert!(
        tx["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("pcmu")),
        "{tx}"
    );
    assert!(!got.is_empty(), "the callee got media\n{}", d.log());
    let pts: std::collections::BTreeSet<u8> = got.iter().map(|p| p.pt).collect();
    assert_eq!(pts.into_iter().collect::<Vec<_>>(), [0], "only PCMU");
    // The relayed frames are the loud ones (silence fill decodes to 0).
    let loud: Vec<&Rtp> = got
        .iter()
        .filter(|p| p.payload.iter().any(|c| ulaw_decode(*c).abs() > 1000))
        .collect();
    assert_eq!(loud.len(), usize::from(frames), "relayed frames");
    let levels = ulaw_levels();
    let heard: Vec<i32> = loud
        .iter()
        .flat_map(|p| p.payload.iter().map(|c| ulaw_decode(*c)))
        .collect();
    assert_eq!(heard.len(), sent.len());
    let worst = sent
        .iter()
        .zip(&heard)
        .enumerate()
        .map(|(n, (a, u))| (ulaw_steps(&levels, alaw_decode(*a), *u), n))
        .max()
        .unwrap();
    assert!(
        worst.0 <= 1,
        "sample {} differs by {} µ-law steps: sent {} heard {}",
        worst.1,
        worst.0,
        alaw_decode(sent[worst.1]),
        heard[worst.1]
    );
}

#[test]
fn media_telephone_events_from_the_caller_are_published_once_per_digit() {
    let redis = RedisServer::start(&[]);
    let pbx = pbx();
    let dir = Scratch::new("media-dtmf-in");
    let (d, sip) = dialerd(&redis, &pbx, "answer", "", 22400, &dir);
    let mut events = Events::new(&redis);
    let media_port = sipp_media_port(22400);
    let uac = caller("media_uac_dtmf.xml", sip, media_port)
        .args(&["-mp", &media_port.to_string()])
        .spawn();
    let call = next_created(&mut events, &uac, &d);
    let result = uac.wait();
    assert_eq!(
        result.exit_code,
        Some(0),
        "{}\n{}\n{}",
        result.errors,
        result.messages,
        d.log()
    );
    events.until(Duration::from_secs(15), |e| {
        e["type"] == "call.ended" && e["call_id"] == call.as_str()
    });
    events.totals(&call, Duration::from_secs(10));
    let digits: Vec<(String, String)> = events
        .of(&call, "call.dtmf")
        .iter()
        .map(|e| {
            (
                e["digit"].as_str().unwrap_or_default().to_owned(),
                e["via"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = [("1", "rtp"), ("2", "rtp")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(digits, want, "{:#?}", events.of(&call, "call.dtmf"));
}

#[test]
fn media_the_dtmf_command_sends_telephone_events_to_the_peer() {
    let Answered {
        redis,
        pbx: _pbx,
        dir: _dir,
        d,
        mut events,
        peer,
        uac,
        call,
    } = Answered::start("media-dtmf-out", "", 22600, "8", "PCMA");
    command_ok(
        &mut events,
        &redis,
        "dtmf-1",
        "dtmf",
        json!({"call_id": call, "digits": "12"}),
    );
    std::thread::sleep(Duration::from_secs(2));
    command_ok(
        &mut events,
        &redis,
        "hu-3",
        "hangup",
        json!({"call_id": call}),
    );
    let result = uac.wait();
    assert_eq!(
        result.exit_code,
        Some(0),
        "no INFO, only the BYE: {}\n{}\n{}",
        result.errors,
        result.messages,
        d.log()
    );
    let got: Vec<Rtp> = peer
        .finish()
        .iter()
        .filter_map(|(_, b)| parse_rtp(b))
        .filter(|p| p.pt == 101)
        .collect();
    assert!(!got.is_empty(), "telephone-events arrived\n{}", d.log());
    // Events in order of their timestamps; one timestamp per event.
    let mut by_event: Vec<(u32, Vec<&Rtp>)> = Vec::new();
    for p in &got {
        match by_event.iter_mut().find(|(ts, _)| *ts == p.ts) {
            Some((_, ps)) => ps.push(p),
            None => by_event.push((p.ts, vec![p])),
        }
    }
    let codes: Vec<u8> = by_event.iter().map(|(_, ps)| ps[0].payload[0]).collect();
    assert_eq!(codes, [1, 2], "{got:#?}");
    for (ts, ps) in &by_event {
        assert!(ps.len() >= 4, "{ts}: {ps:#?}");
        assert!(ps.iter().all(|p| p.payload.len() == 4), "{ps:#?}");
        assert!(
            ps.iter().all(|p| p.payload[0] == ps[0].payload[0]),
            "{ps:#?}"
        );
        assert!(ps[0].marker, "the first packet of an event is marked");
        let ends: Vec<bool> = ps.iter().map(|p| p.payload[1] & 0x80 != 0).collect();
        let n = ends.len();
        assert!(
            ends[..n - 3].iter().all(|e| !e) && ends[n - 3..].iter().all(|e| *e),
            "end bit on the last three only: {ends:?}"
        );
        let durations: Vec<u16> = ps
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert!(
            durations.windows(2).all(|w| w[1] >= w[0]) && durations[0] > 0,
            "{durations:?}"
        );
        assert_eq!(durations[n - 1], durations[n - 2], "{durations:?}");
    }
}

#[test]
fn media_an_answered_call_whose_peer_sends_nothing_ends_with_media_timeout() {
    let Answered {
        redis: _redis,
        pbx: _pbx,
        dir: _dir,
        d,
        mut events,
        peer,
        uac,
        call,
    } = Answered::start(
        "media-timeout",
        "[media]\ninactivity_timeout_secs = 3\n",
        23000,
        "0",
        "PCMU",
    );
    let answered = Instant::now();
    let ended = events.until(Duration::from_secs(3 + 20), |e| {
        e["type"] == "call.ended" && e["call_id"] == call.as_str()
    });
    let after = answered.elapsed();
    assert_eq!(ended["cause"], "media_timeout", "{ended}\n{}", d.log());
    assert!(
        after >= Duration::from_millis(2500),
        "not before the timeout: {after:?}"
    );
    let result = uac.wait();
    assert_eq!(result.exit_code, Some(0), "BYE sent: {}", result.errors);
    let totals = events.totals(&call, Duration::from_secs(10));
    assert_eq!(as_u64(&totals, "rx_packets"), 0, "{totals}");
    let reports: Vec<Value> = events
        .of(&call, "call.media")
        .iter()
        .map(|e| e["report"].clone())
        .collect();
    assert!(reports.contains(&json!("timeout")), "{reports:?}");
    drop(peer.finish());
}

#[test]
fn media_a_one_sided_call_gets_silence_at_the_negotiated_ptime() {
    let Answered {
        redis,
        pbx: _pbx,
        dir: _dir,
        d,
        mut events,
        peer,
        uac,
        call,
    } = Answered::start("media-silence", "", 22800, "8", "PCMA");
    std::thread::sleep(Duration::from_millis(3000));
    command_ok(
        &mut events,
        &redis,
        "hu-5",
        "hangup",
        json!({"call_id": call}),
    );
    let result = uac.wait();
    assert_eq!(result.exit_code, Some(0), "{}", result.errors);
    let totals = events.totals(&call, Duration::from_secs(10));
    let got: Vec<(Instant, Rtp)> = peer
        .finish()
        .into_iter()
        .filter_map(|(at, b)| Some((at, parse_rtp(&b)?)))
        .collect();
    assert!(
        got.len() > 10,
        "silence arrived: {}\n{}",
        got.len(),
        d.log()
    );
    // A 2 s window from the first packet.
    let start = got[0].0;
    let window: Vec<&Rtp> = got
        .iter()
        .filter(|(at, _)| at.duration_since(start) < Duration::from_secs(2))
        .map(|(_, p)| p)
        .collect();
    assert!(
        (70..=130).contains(&window.len()),
        "about 100 packets in 2 s: {}",
        window.len()
    );
    let ssrcs: std::collections::BTreeSet<u32> = got.iter().map(|(_, p)| p.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "one SSRC: {ssrcs:?}");
    for w in got.windows(2) {
        let (a, b) = (&w[0].1, &w[1].1);
        assert_eq!(b.seq, a.seq.wrapping_add(1), "{a:?} then {b:?}");
        assert_eq!(b.ts, a.ts.wrapping_add(160), "{a:?} then {b:?}");
    }
    for (_, p) in &got {
        assert_eq!(p.pt, 8, "PCMA as negotiated");
        assert_eq!(p.payload.len(), 160, "20 ms");
        assert!(
            p.payload.iter().all(|c| alaw_decode(*c).abs() <= 16),
            "silence: {:?}",
            p.payload
        );
    }
    assert!(
        as_u64(&totals, "generated_packets") >= got.len() as u64,
        "{totals}"
    );
}
