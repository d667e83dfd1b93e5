//! The AI agent media bridge against real peers: a call placed through a
//! SIPp PBX whose audio dialerd streams to a Pipecat bot (its own
//! FastAPIWebsocketTransport and TwilioFrameSerializer, unchanged, an echo
//! pipeline with no cloud services), and agents that fail.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::media::{Events, command_ok, dialerd, local_port, media_pbx};
use crate::support::g711::{ulaw_decode, ulaw_encode};
use crate::support::redis::RedisServer;
use crate::support::repo_root;
use crate::support::scratch::Scratch;

/// The Python of the agent tools' virtualenv (scripts/setup.sh makes it).
fn agent_python() -> Option<PathBuf> {
    let venv = std::env::var_os("DIALERD_AGENT_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("dialerd-agent"))
        })?;
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

/// A running Pipecat bot and the port it listens on.
struct Bot {
    child: Child,
    port: u16,
}

impl Bot {
    fn start(python: &PathBuf, extra: &[&str]) -> Bot {
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/agent/pipecat_bot.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--sample-rate",
                "8000",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Pipecat bot");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .find_map(|l| l.ok()?.strip_prefix("listening ")?.trim().parse().ok())
            .expect("the bot says where it listens");
        // Keep draining its stdout so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        Bot { child, port }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 20 ms of a 1 kHz tone at about -10 dBm0, µ-law, starting at sample `n`.
fn tone_frame(n: usize) -> Vec<u8> {
    (0..160)
        .map(|i| {
            let t = (n + i) as f64 / 8000.0;
            ulaw_encode((8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i32)
        })
        .collect()
}

/// The power of `samples` at 1 kHz relative to their whole power (0..1).
fn tone_share(samples: &[i32]) -> f64 {
    let w = 2.0 * std::f64::consts::PI * 1000.0 / 8000.0;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let at_tone = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if total == 0.0 {
        0.0
    } else {
        2.0 * at_tone / (samples.len() as f64 * total)
    }
}

/// Plays `seconds` of tone at 20 ms from `phone` to `to`; returns the µ-law
/// payloads that came back meanwhile.
fn play_and_listen(phone: &UdpSocket, to: std::net::SocketAddr, seconds: u64) -> Vec<Vec<u8>> {
    phone
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let start = Instant::now();
    let mut back = Vec::new();
    let mut buf = [0u8; 2048];
    let frames = (seconds * 50) as usize;
    for k in 0..frames {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        packet[2..4].copy_from_slice(&(k as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&((k * 160) as u32).to_be_bytes());
        packet.extend(tone_frame(k * 160));
        phone.send_to(&packet, to).unwrap();
        let due = start + Duration::from_millis(20 * (k as u64 + 1));
        while Instant::now() < due {
            if let Ok((n, _)) = phone.recv_from(&mut buf)
                && n > 12
            {
                back.push(buf[12..n].to_vec());
            }
        }
    }
    back
}

/// Waits for `call`'s `call.ended`; returns it.
fn ended(events: &mut Events, call: &str, within: Duration) -> Value {
    events.until(within, |e| {
        e["type"] == "call.ended" && e["call_id"] == call
    })
}

#[test]
fn agent_pipecat_echoes_a_real_calls_audio_and_its_end_of_call_hangs_up() {
    let Some(python) = agent_python() else {
        eprintln!(
            "skipped: the agent tools' virtualenv (pipecat-ai) is missing and could not be \
             installed by scripts/setup.sh"
        );
        return;
    };
    let bot = Bot::start(&python, &["--end-after", "6", "--end-silence-secs", "0"]);
    let redis = RedisServer::start(&[]);
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx = media_pbx(phone.local_addr().unwrap().port(), "0", "PCMU");
    let dir = Scratch::new("agent-pipecat");
    let (d, _sip) = dialerd(&redis, &pbx, "ring", "", 23600, &dir);
    let mut events = Events::new(&redis);
    let to = format!("sip:bob@{}", pbx.local_addr());
    let url = format!("ws://127.0.0.1:{}/ws", bot.port);
    command_ok(
        &mut events,
        &redis,
        "agent-1",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60,
               "media": {"type": "websocket", "url": url,
                         "custom_parameters": {"campaign": "spring"}}}),
    );
    events.until(Duration::from_secs(15), |e| {
        e["type"] == "call.answered" && e["call_id"] == "agent-1"
    });
    let started = events.until(Duration::from_secs(15), |e| {
        e["type"] == "call.media" && e["call_id"] == "agent-1" && e["report"] == "agent_started"
    });
    assert!(
        started["stream_sid"]
            .as_str()
            .is_some_and(|s| s.len() == 34 && s.starts_with("MZ")),
        "{started}"
    );
    let port = local_port(&mut events, "agent-1");
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 3);
    let toned = back
        .iter()
        .filter(|p| {
            let samples: Vec<i32> = p.iter().map(|&b| ulaw_decode(b)).collect();
            tone_share(&samples) > 0.8
        })
        .count();
    assert!(
        back.len() >= 100,
        "a frame every 20 ms came back: {} in 3 s\n{}",
        back.len(),
        d.log()
    );
    assert!(
        toned >= 75,
        "the bot's echo of the tone reached the phone: {toned} of {} frames carry it\n{}",
        back.len(),
        d.log()
    );
    // The bot ends the call the Pipecat way (EndFrame closes its socket).
    let end = ended(&mut events, "agent-1", Duration::from_secs(20));
    assert_eq!(end["cause"], "agent_hangup", "{end}\n{}", d.log());
    drop(bot);
}

#[test]
fn agent_refused_ends_the_call_by_default_and_continue_keeps_it_on_silence() {
    let redis = RedisServer::start(&[]);
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx = media_pbx(phone.local_addr().unwrap().port(), "0", "PCMU");
    let dir = Scratch::new("agent-refused");
    let (d, _sip) = dialerd(&redis, &pbx, "ring", "", 23700, &dir);
    let mut events = Events::new(&redis);
    // Nobody listens on this port.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", closed.local_addr().unwrap().port());
    let to = format!("sip:bob@{}", pbx.local_addr());
    // Answered first, then streamed (the `stream` command).
    let answered = |events: &mut Events, id: &str| {
        events.until(Duration::from_secs(15), |e| {
            e["type"] == "call.answered" && e["call_id"] == id
        });
    };
    command_ok(
        &mut events,
        &redis,
        "agent-2",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60}),
    );
    answered(&mut events, "agent-2");
    command_ok(
        &mut events,
        &redis,
        "stream-2",
        "stream",
        json!({"call_id": "agent-2", "media": {"type": "websocket", "url": url}}),
    );
    let failed = events.until(Duration::from_secs(15), |e| {
        e["type"] == "call.media" && e["call_id"] == "agent-2" && e["report"] == "agent_ended"
    });
    assert_eq!(failed["reason"], "connect_failed", "{failed}");
    let end = ended(&mut events, "agent-2", Duration::from_secs(15));
    assert_eq!(end["cause"], "agent_failed", "{end}\n{}", d.log());

    command_ok(
        &mut events,
        &redis,
        "agent-3",
        "originate",
        json!({"account": "acct-a", "to": to, "max_duration_secs": 60}),
    );
    answered(&mut events, "agent-3");
    command_ok(
        &mut events,
        &redis,
        "stream-3",
        "stream",
        json!({"call_id": "agent-3",
               "media": {"type": "websocket", "url": url, "on_end": "continue"}}),
    );
    events.until(Duration::from_secs(15), |e| {
        e["type"] == "call.media" && e["call_id"] == "agent-3" && e["report"] == "agent_ended"
    });
    let port = local_port(&mut events, "agent-3");
    let back = play_and_listen(&phone, ([127, 0, 0, 1], port).into(), 2);
    assert!(
        back.len() >= 60,
        "the phone stays fed with silence: {} frames in 2 s",
        back.len()
    );
    assert!(
        back.iter().flatten().all(|&b| ulaw_decode(b).abs() < 64),
        "silence"
    );
    command_ok(
        &mut events,
        &redis,
        "hu-3",
        "hangup",
        json!({"call_id": "agent-3"}),
    );
    let end = ended(&mut events, "agent-3", Duration::from_secs(15));
    assert_ne!(end["cause"], "agent_failed", "{end}");
    assert!(
        crate::support::http::get(d.http(), "/healthz")
            .unwrap()
            .status
            == 200,
        "dialerd stays healthy"
    );
}
